"""Checking a batch against a signature: every problem names the feature and the first bad row.

Checks are per column and vectorised, so their cost does not grow with a Python loop over rows
(the exceptions are object columns, where each value's type must be looked at). The returned batch
owns its arrays: a predictor may write into it without touching the caller's data.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import SchemaError
from berth.registry.signature import NUMERIC, Feature, Signature

Array = npt.NDArray[Any]


Batch = Any
"""A DataFrame, a mapping of column arrays (see ``codecs.Columns``), or a pyarrow Table or
RecordBatch (typed columns: strings are checked in Arrow, far cheaper than as Python objects)."""


def validate(signature: Signature, data: Batch) -> pd.DataFrame:
    """Return a new frame with exactly the signature's columns; see :func:`validate_columns`."""
    return validate_columns(signature, data)[0]


def validate_columns(signature: Signature, data: Batch) -> tuple[pd.DataFrame, dict[str, Array]]:
    """Return a new frame with exactly the signature's columns, in order, dtypes coerced.

    ``data`` is a DataFrame (never modified) or decoded columns (see ``codecs.to_columns``),
    whose arrays the result may take over. A nullable integer feature with a missing value comes
    back as float64 with NaN (numpy integers hold no missing value); a nullable bool feature with a
    missing value as object with None. The column arrays come back too: the record writer
    keeps them, which is far cheaper than taking the frame apart again. The first bad value
    raises :class:`SchemaError`, naming the feature and the row.
    """
    rows, array = _prepare(signature, data)
    fast = _float_block(signature, array, rows)
    if fast is not None:
        return fast
    allow_unknown = signature.unknown_categories == "allow"
    columns: dict[str, Array] = {}
    for feature in signature.inputs:
        problems = _Problems(rows)
        converted = _column(feature, array(feature.name), allow_unknown, problems)
        if problems.found or converted is None:
            row, problem = problems.first()
            raise _bad(feature, problem, row)
        columns[feature.name] = converted
    return _frame(columns, rows), columns


@dataclass
class Checked:
    """A batch split into the rows that fit the signature and the rows that do not."""

    frame: pd.DataFrame
    """The good rows, validated as by :func:`validate_columns`, with a fresh 0..n-1 index."""
    columns: dict[str, Array]
    kept: npt.NDArray[np.intp]
    """Where each good row was in the input."""
    bad_rows: npt.NDArray[np.intp]
    """Where each bad row was in the input, ascending."""
    reasons: list[str]
    """Why each bad row was refused (its first problem, features in signature order)."""


def check_columns(signature: Signature, data: Batch) -> Checked:
    """Like :func:`validate_columns`, but a bad value refuses only its row, so that one bad record
    does not sink a batch job. Problems with the batch as a whole (a missing feature, an unknown
    one, columns of different lengths) still raise."""
    rows, array = _prepare(signature, data)
    allow_unknown = signature.unknown_categories == "allow"
    refused: dict[int, str] = {}
    columns: dict[str, Array] = {}
    for feature in signature.inputs:  # in order: a row's reason is its first feature's problem
        converted, found = _all_problems(feature, array(feature.name), allow_unknown)
        for row, problem in found:
            refused.setdefault(row, _describe(feature, problem))
        if converted is not None:
            columns[feature.name] = converted
    kept = np.arange(rows, dtype=np.intp)
    while refused and len(kept) != rows - len(refused):
        # The good rows' columns, converted again without the bad rows (a bad value can keep a
        # whole column from converting). Every check is row by row, so this finds nothing new;
        # the loop is there in case it ever does.
        kept = np.setdiff1d(kept, np.fromiter(refused, dtype=np.intp, count=len(refused)))
        kept = kept.astype(np.intp, copy=False)
        columns = {}
        for feature in signature.inputs:
            again = _Problems(len(kept))
            converted = _column(feature, _subset(array(feature.name), kept), allow_unknown, again)
            for row, problem in again.rows():
                refused.setdefault(int(kept[row]), _describe(feature, problem))
            if converted is not None:
                columns[feature.name] = converted
    if not len(kept):
        columns = {f.name: np.empty(0, dtype=object) for f in signature.inputs}
    bad_rows = np.array(sorted(refused), dtype=np.intp)
    return Checked(
        frame=_frame(columns, len(kept)),
        columns=columns,
        kept=kept,
        bad_rows=bad_rows,
        reasons=[refused[int(r)] for r in bad_rows],
    )


def _all_problems(
    feature: Feature, values: Array, allow_unknown: bool
) -> tuple[Array | None, list[tuple[int, str]]]:
    """Every bad row of one feature, with its first problem; the converted column when there
    are none. A value that fails a type check keeps the column from converting, so its later
    checks (ranges, categories) run again on the rows left, until a round finds nothing."""
    index = np.arange(len(values), dtype=np.intp)
    found: list[tuple[int, str]] = []
    while len(index):
        problems = _Problems(len(index))
        subset = values if len(index) == len(values) else _subset(values, index)
        converted = _column(feature, subset, allow_unknown, problems)
        if not problems.found:
            return (converted if not found else None), found
        found += [(int(index[row]), problem) for row, problem in problems.rows()]
        index = index[~problems.bad]
    return None, found


def _subset(values: Any, index: npt.NDArray[np.intp]) -> Any:
    return values[index] if isinstance(values, np.ndarray) else values.take(index)


def _frame(columns: dict[str, Array], rows: int) -> pd.DataFrame:
    arrays = list(columns.values())
    if len(arrays) > 1 and one_numeric_dtype(arrays):
        # One 2-D block: pandas builds it without splitting and consolidating a block per column
        # (30 float features, one row: 14 us against 121 us, on every request of such a model).
        block = np.column_stack(arrays) if rows else np.empty((0, len(arrays)), arrays[0].dtype)
        return pd.DataFrame(
            block, columns=_labels(tuple(columns)), index=pd.RangeIndex(rows), copy=False
        )
    # Object columns stay objects: pandas would otherwise convert strings to its Arrow string
    # dtype, which costs more than validating them and makes scikit-learn's encoders slower.
    return pd.DataFrame(
        {
            name: pd.Series(values, dtype=object, copy=False) if values.dtype == object else values
            for name, values in columns.items()
        },
        index=pd.RangeIndex(rows),
        copy=False,
    )


@dataclass(frozen=True)
class _FloatPlan:
    """What checking a signature of float64 features takes, as vectors over the features."""

    names: tuple[str, ...]
    required: npt.NDArray[np.bool_]
    """Features that may not be missing."""
    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]
    bounded: bool


_PLANS: dict[int, tuple[weakref.ref[Signature], _FloatPlan | None]] = {}
"""Plans by the signature object's identity: hashing a signature of 30 features (pydantic hashes
every field) cost 5 us, a third of what the plan saves."""


def _float_plan(signature: Signature) -> _FloatPlan | None:
    found = _PLANS.get(id(signature))
    if found is not None and found[0]() is signature:
        return found[1]
    plan = _make_plan(signature)
    if len(_PLANS) > 1024:  # versions come and go in a long-lived server
        _PLANS.clear()
    _PLANS[id(signature)] = (weakref.ref(signature), plan)
    return plan


def _make_plan(signature: Signature) -> _FloatPlan | None:
    features = signature.inputs
    if len(features) < 2 or any(f.dtype != "float64" for f in features):
        return None
    lo = np.array([-np.inf if f.minimum is None else f.minimum for f in features])
    hi = np.array([np.inf if f.maximum is None else f.maximum for f in features])
    return _FloatPlan(
        names=tuple(f.name for f in features),
        required=np.array([not f.nullable for f in features]),
        lo=lo,
        hi=hi,
        bounded=bool(np.isfinite(lo).any() or np.isfinite(hi).any()),
    )


def _float_block(
    signature: Signature, array: Callable[[str], Array], rows: int
) -> tuple[pd.DataFrame, dict[str, Array]] | None:
    """Features that are all float64 and numbers that are all fine, checked as one block in a
    few vector operations (30 features one by one cost about 0.1 ms a request). Anything
    unusual (a missing value where none may be, an infinity, a value out of range, a value that
    is not a number, an Arrow column) returns None: the feature-by-feature checks then find and
    name the first problem exactly as always."""
    plan = _float_plan(signature)
    if plan is None:
        return None
    arrays = [array(name) for name in plan.names]
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "iuf" for a in arrays):
        return None
    block = (
        np.column_stack(arrays).astype(np.float64, copy=False)
        if rows
        else np.empty((0, len(arrays)))
    )
    finite = np.isfinite(block)
    if not finite.all() and (np.isinf(block).any() or (~finite)[:, plan.required].any()):
        return None
    if plan.bounded and ((block < plan.lo) | (block > plan.hi)).any():
        return None
    frame = pd.DataFrame(block, columns=_labels(plan.names), index=pd.RangeIndex(rows), copy=False)
    return frame, {name: block[:, j] for j, name in enumerate(plan.names)}


def one_numeric_dtype(arrays: list[Array]) -> bool:
    """Whether validated columns make one 2-D block (every one of one numeric dtype)."""
    first = arrays[0].dtype
    return first.kind in "biuf" and all(a.dtype == first for a in arrays)


@functools.lru_cache(maxsize=256)
def _labels(names: tuple[str, ...]) -> pd.Index:
    """The column index of a signature's frame, built once (an Index of 30 names costs more
    than the block it labels)."""
    return pd.Index(names)


def _is_arrow(data: object) -> bool:
    return type(data).__module__.startswith("pyarrow") and hasattr(data, "column_names")


def _prepare(signature: Signature, data: Batch) -> tuple[int, Callable[[str], Array]]:
    """The row count and a getter for each feature's values, once the batch's shape is right."""
    if isinstance(data, pd.DataFrame):
        labels = {str(c): c for c in data.columns}
        if len(labels) != data.shape[1]:
            raise SchemaError("the input names a feature twice")
        rows = len(data)

        def array(name: str) -> Array:
            return data[labels[name]].to_numpy(copy=True)  # type: ignore[no-any-return]

    elif _is_arrow(data):
        table: Any = data
        labels = {name: name for name in table.column_names}
        if len(labels) != table.num_columns:
            raise SchemaError("the input names a feature twice")
        rows = table.num_rows

        def array(name: str) -> Array:
            column: Array = table.column(name)  # an Arrow column, checked in _arrow_column
            return column

    else:
        labels = {name: name for name in data}
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise SchemaError(f"input columns have different lengths: {sorted(lengths)}")
        rows = lengths.pop() if lengths else 0

        def array(name: str) -> Array:
            values: Array = data[name]
            return values

    if rows == 0 and not labels:
        raise SchemaError("the input has no rows")
    names = signature.names
    missing = [n for n in names if n not in labels]
    if missing:
        raise SchemaError(
            f"missing feature{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
            f"expected: {', '.join(names)}",
            feature=missing[0],
        )
    if rows == 0:
        raise SchemaError("the input has no rows")
    if len(labels) != len(names):
        unknown = [c for c in labels if c not in set(names)]
        raise SchemaError(
            f"unknown feature{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"expected: {', '.join(names)}",
            feature=unknown[0],
        )
    return rows, array


Describe = Callable[[int], str]


class _Problems:
    """The rows one feature fails on, in the order the checks ran, each row with its first
    problem. Checks add a mask of failing rows and how to describe one of them."""

    def __init__(self, rows: int) -> None:
        self.bad = np.zeros(rows, dtype=bool)
        self.groups: list[tuple[npt.NDArray[np.bool_], Describe]] = []

    def add(self, failing: npt.NDArray[np.bool_], describe: Describe) -> None:
        new = failing & ~self.bad
        if new.any():
            self.bad |= new
            self.groups.append((new, describe))

    @property
    def found(self) -> bool:
        return bool(self.groups)

    def first(self) -> tuple[int, str]:
        failing, describe = self.groups[0]
        row = int(np.flatnonzero(failing)[0])
        return row, describe(row)

    def rows(self) -> Iterator[tuple[int, str]]:
        for failing, describe in self.groups:
            for row in np.flatnonzero(failing).tolist():
                yield row, describe(row)


def _column(feature: Feature, values: Array, allow_unknown: bool, p: _Problems) -> Array | None:
    """The converted column, or None when a value could not be converted (``p`` says which)."""
    if not isinstance(values, np.ndarray):
        return _arrow_column(feature, values, allow_unknown, p)
    nulls = pd.isna(values) if values.dtype.kind in "fOUcmM" else None
    if nulls is not None and not nulls.any():
        nulls = None
    if nulls is not None and not feature.nullable:
        p.add(nulls, lambda _: "has a missing value")
    if feature.dtype in NUMERIC:
        converted = _numeric(feature, values, nulls, p)
    elif feature.dtype == "bool":
        converted = _bool(feature, values, nulls, p)
    else:
        converted = _string(feature, values, nulls, allow_unknown, p)
    return None if p.found else converted


def _arrow_column(feature: Feature, values: Any, allow_unknown: bool, p: _Problems) -> Array | None:
    """An Arrow column: strings for a string feature are checked in Arrow (their type is known
    from the schema, categories by a hash lookup); anything else goes on as numpy."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = values.type
    if pa.types.is_dictionary(kind):
        # Decoded first: numpy conversion of a dictionary column turns a null into the last
        # category (pandas' code -1), which would be scored as a real value.
        values = values.cast(kind.value_type)
        kind = values.type
    if feature.dtype != "string" or not (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    ):
        return _column(feature, values.to_numpy(zero_copy_only=False), allow_unknown, p)
    nulls = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
    if nulls is not None and not feature.nullable:
        p.add(nulls, lambda _: "has a missing value")
    if feature.categories is not None and not allow_unknown:
        known = pc.is_in(values, value_set=pa.array(feature.categories, type=kind))
        known = known.to_numpy(zero_copy_only=False)
        if nulls is not None:
            known |= nulls
        allowed = ", ".join(feature.categories[:20])
        p.add(
            ~known,
            lambda row: f"has unknown category {values[row].as_py()!r} (allowed: {allowed})",
        )
    return None if p.found else values.to_numpy(zero_copy_only=False)


def _bool(
    feature: Feature, values: Array, nulls: npt.NDArray[np.bool_] | None, p: _Problems
) -> Array | None:
    if values.dtype.kind == "b":
        return values
    if values.dtype.kind != "O":
        p.add(np.ones(len(values), dtype=bool), _type(feature, values))
        return None
    ok = _kinds(values, lambda v: isinstance(v, bool | np.bool_), clean="boolean")
    if nulls is not None:
        ok |= nulls
    p.add(~ok, _type(feature, values))
    if p.found:
        return None
    if nulls is not None:
        out = values.astype(object)
        out[nulls] = None
        return out
    return values.astype(bool)


def _numeric(
    feature: Feature, values: Array, nulls: npt.NDArray[np.bool_] | None, p: _Problems
) -> Array | None:
    target = np.dtype(feature.dtype)
    if values.dtype.kind == "O":
        objects = _numeric_objects(feature, values, nulls, target, p)
        if objects is None:
            return None
        values = objects
    elif values.dtype.kind not in "iuf":
        p.add(np.ones(len(values), dtype=bool), _type(feature, values))
        return None
    if target.kind in "iu":
        if nulls is not None:
            target = np.dtype(np.float64)  # a missing integer travels as NaN
        else:
            _check_integers(feature, values, target, p)
            if p.found:
                return None
    elif values.dtype.kind == "f" and target.itemsize < values.dtype.itemsize:
        limit = float(np.finfo(target).max)
        p.add(
            np.isfinite(values) & (np.abs(values) > limit),
            lambda row: f"value {values[row]!r} does not fit {feature.dtype}",
        )
        if p.found:
            return None
    converted = values.astype(target)
    if converted.dtype.kind == "f":
        p.add(
            np.isinf(converted),
            lambda row: f"has a non-finite value {_plain(converted[row])}",
        )
    if feature.minimum is not None or feature.maximum is not None:
        lo = -np.inf if feature.minimum is None else feature.minimum
        hi = np.inf if feature.maximum is None else feature.maximum
        p.add(
            (converted < lo) | (converted > hi),
            lambda row: f"value {_plain(converted[row])} is outside [{lo}, {hi}]",
        )
    return converted


def _numeric_objects(
    feature: Feature,
    values: Array,
    nulls: npt.NDArray[np.bool_] | None,
    target: np.dtype[Any],
    p: _Problems,
) -> Array | None:
    """Object columns come from records with mixed types; Python ints keep full precision."""
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    present = ~pd.isna(values)
    none = np.zeros(len(values), dtype=bool)
    if inferred == "integer":  # the common cases, answered in C (see _kinds)
        is_int, is_float = present, none
    elif inferred == "floating":
        is_int, is_float = none, present
    else:
        is_int = _kinds(
            values, lambda v: isinstance(v, int | np.integer) and not isinstance(v, bool)
        )
        is_float = _kinds(values, lambda v: isinstance(v, float | np.floating))
    ok = is_int | is_float if nulls is None else is_int | is_float | nulls
    p.add(~ok, _type(feature, values))
    if p.found:
        return None
    if is_int.all() and target.kind in "iu":
        info = np.iinfo(target)
        p.add(
            _kinds(values, lambda v: not info.min <= int(v) <= info.max),
            lambda row: f"value {values[row]} does not fit {feature.dtype}",
        )
        return None if p.found else np.array(values.tolist(), dtype=target)
    return np.array([np.nan if v is None else v for v in values.tolist()], dtype=np.float64)


def _check_integers(feature: Feature, values: Array, target: np.dtype[Any], p: _Problems) -> None:
    info = np.iinfo(target)
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.floor(values))
        p.add(~whole, lambda row: f"expects {feature.dtype}, got {_plain(values[row])}")
        # Bounds as exact powers of two: float(int64 max) rounds up to 2**63, which does not fit.
        outside = (values < float(info.min)) | (values >= float(info.max) + 1.0)
    else:
        outside = (values < info.min) | (values > info.max)
    p.add(outside, lambda row: f"value {_plain(values[row])} does not fit {feature.dtype}")


def _string(
    feature: Feature,
    values: Array,
    nulls: npt.NDArray[np.bool_] | None,
    allow_unknown: bool,
    p: _Problems,
) -> Array | None:
    if values.dtype.kind == "U":
        values = values.astype(object)
    elif values.dtype.kind != "O":
        p.add(np.ones(len(values), dtype=bool), _type(feature, values))
        return None
    is_str = _kinds(values, lambda v: isinstance(v, str), clean="string")
    p.add(~(is_str if nulls is None else is_str | nulls), _type(feature, values))
    if p.found:
        return None
    if feature.categories is not None and not allow_unknown:
        known = np.isin(values, np.asarray(feature.categories, dtype=object))
        if nulls is not None:
            known |= nulls
        allowed = ", ".join(feature.categories[:20])
        p.add(
            ~known,
            lambda row: f"has unknown category {values[row]!r} (allowed: {allowed})",
        )
    return values


def _kinds(values: Array, test: Any, *, clean: str | None = None) -> npt.NDArray[np.bool_]:
    """Which values pass ``test``. Given the ``clean`` kind, pandas' type inference (C, about
    100x faster than a Python loop) answers for the common case, a column whose non-missing
    values are all of that kind; the loop only runs for mixed columns."""
    if clean is not None and pd.api.types.infer_dtype(values, skipna=True) == clean:
        return ~pd.isna(values)  # type: ignore[no-any-return]
    return np.fromiter((test(v) for v in values), dtype=bool, count=len(values))


def _plain(value: Any) -> Any:
    """Python scalars in messages: ``1.5``, not ``np.float64(1.5)``."""
    return value.item() if isinstance(value, np.generic) else value


def _type(feature: Feature, values: Array) -> Describe:
    def describe(row: int) -> str:
        value = _plain(values[row])
        kind = "string" if isinstance(value, str) else type(value).__name__
        return f"expects {feature.dtype}, got {kind} {value!r}"

    return describe


def _describe(feature: Feature, problem: str) -> str:
    return f"feature {feature.name!r} {problem}"


def _bad(feature: Feature, problem: str, row: int) -> SchemaError:
    return SchemaError(f"{_describe(feature, problem)} at row {row}", feature=feature.name)
