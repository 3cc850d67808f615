"""Checking a batch against a signature: every problem names the feature and the first bad row.

This module holds the batch's side (its shape, the frame a predictor gets, failing fast or
setting bad rows aside); ``columns`` holds each feature's checks. Checks are per column and
vectorised, so their cost does not grow with a Python loop over rows (the exceptions are object
columns, where each value's type must be looked at). The returned batch owns its arrays: a
predictor may write into it without touching the caller's data.

Values outside a feature's observed range (the training data's, see ``Feature.range_policy``)
are refused like any bad value when its policy is ``refuse``; under ``warn`` they are predicted,
and :func:`out_of_range` finds them for the records. Each is one comparison of the validated
numeric columns as a block against vectors of bounds, per batch (for a signature of float64
features the refusing ranges join the declared ones in the block check, at no cost).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import SchemaError
from berth.registry.signature import Feature, Signature
from berth.runtime.codecs import InputBlock
from berth.runtime.columns import Array, Problems, check_column, describe, schema_error

if TYPE_CHECKING:
    import pyarrow as pa

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
    raises :class:`SchemaError`, naming the feature and the row (a value outside the observed
    range of a feature whose range policy is ``refuse`` is one).
    """
    rows, array = _prepare(signature, data)
    fast = _float_block(signature, array, rows)
    if fast is not None:
        return fast
    allow_unknown = signature.unknown_categories == "allow"
    columns: dict[str, Array] = {}
    for feature in signature.inputs:
        problems = Problems(rows)
        converted = check_column(feature, array(feature.name), allow_unknown, problems)
        if problems.found or converted is None:
            row, problem = problems.first()
            raise schema_error(feature, problem, row)
        columns[feature.name] = converted
    plan = _plans(signature).refusing
    if plan is not None:
        outside = plan.outside(columns)
        if outside is not None:
            j = int(np.flatnonzero(outside.any(axis=0))[0])
            row = int(np.flatnonzero(outside[:, j])[0])
            feature = plan.features[j]
            raise schema_error(feature, _outside(feature, columns[feature.name][row]), row)
    return _frame(columns, rows), columns


def out_of_range(signature: Signature, inputs: Any) -> OutOfRange | None:
    """The rows of validated ``inputs`` (columns, or an :class:`InputBlock`, as validation
    returns them) outside an observed range of a feature whose range policy is ``warn``; None
    when there are none (or no such feature). What the record producer lists in ``warnings``:
    the check is there, not in validation, so that it costs nothing when nothing is recorded."""
    plan = _plans(signature).warning
    if plan is None:
        return None
    if isinstance(inputs, InputBlock) and inputs.names == plan.signature_names:
        block = inputs.array if plan.every else inputs.array[:, plan.positions]
        outside = _outside_block(block, plan)
    else:
        outside = plan.outside(inputs)
    if outside is None:
        return None
    hit = np.asarray(outside.any(axis=0))
    if hit.all():
        return OutOfRange(plan.names, outside)
    return OutOfRange(
        tuple(n for n, h in zip(plan.names, list(hit), strict=True) if h), outside[:, hit]
    )


@dataclass(frozen=True)
class OutOfRange:
    """The rows of a batch with values outside an observed range, for features whose range
    policy is ``warn``: what the prediction records list in ``warnings``."""

    features: tuple[str, ...]
    rows: npt.NDArray[np.bool_]
    """One row per row of the batch, one column per feature: whether that value is outside."""

    PREFIX = "out_of_range:"
    """A warning is ``out_of_range:<feature>``."""

    def to_arrow(self) -> pa.Array:
        """A ``list<string>`` per row (``out_of_range:<feature>``, features in signature order),
        null for a row with none; built without a Python object per row."""
        import pyarrow as pa

        per_row = self.rows.sum(axis=1)
        offsets = np.zeros(len(per_row) + 1, dtype=np.int32)
        np.cumsum(per_row, out=offsets[1:])
        labels = np.array([self.PREFIX + name for name in self.features], dtype=object)
        values = pa.array(labels[np.nonzero(self.rows)[1]], type=pa.string())
        return pa.ListArray.from_arrays(
            pa.array(offsets), values, mask=pa.array(per_row == 0), type=pa.list_(pa.string())
        )


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
            refused.setdefault(row, describe(feature, problem))
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
            again = Problems(len(kept))
            converted = check_column(
                feature, _subset(array(feature.name), kept), allow_unknown, again
            )
            for row, problem in again.rows():
                refused.setdefault(int(kept[row]), describe(feature, problem))
            if converted is not None:
                columns[feature.name] = converted
    plan = _plans(signature).refusing
    if plan is not None and len(kept):
        kept, columns = _refuse_outside(plan, kept, columns, refused)
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


def _refuse_outside(
    plan: _RangePlan,
    kept: npt.NDArray[np.intp],
    columns: dict[str, Array],
    refused: dict[int, str],
) -> tuple[npt.NDArray[np.intp], dict[str, Array]]:
    """Rows outside an observed range whose policy is ``refuse`` join ``refused`` (their first
    such feature the reason) and leave ``kept`` and ``columns``."""
    outside = plan.outside(columns)
    if outside is None:
        return kept, columns
    bad = outside.any(axis=1)
    for row in np.flatnonzero(bad).tolist():
        feature = plan.features[int(np.argmax(outside[row]))]
        refused[int(kept[row])] = describe(feature, _outside(feature, columns[feature.name][row]))
    return kept[~bad], {name: values[~bad] for name, values in columns.items()}


def _outside(feature: Feature, value: Any) -> str:
    lo, hi = _bound(feature.observed_minimum), _bound(feature.observed_maximum)
    return (
        f"value {_bound(value)} is outside the range seen in training [{lo}, {hi}] "
        "(its range policy is 'refuse')"
    )


def _bound(value: Any) -> Any:
    """``18``, not ``18.0``; ``None`` for an open end."""
    if value is None:
        return None
    number = float(value)
    return int(number) if number.is_integer() else number


def _all_problems(
    feature: Feature, values: Array, allow_unknown: bool
) -> tuple[Array | None, list[tuple[int, str]]]:
    """Every bad row of one feature, with its first problem; the converted column when there
    are none. A value that fails a type check keeps the column from converting, so its later
    checks (ranges, categories) run again on the rows left, until a round finds nothing."""
    index = np.arange(len(values), dtype=np.intp)
    found: list[tuple[int, str]] = []
    while len(index):
        problems = Problems(len(index))
        subset = values if len(index) == len(values) else _subset(values, index)
        converted = check_column(feature, subset, allow_unknown, problems)
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
class _RangePlan:
    """The observed ranges of some of a signature's features (those of one policy), as
    vectors over them."""

    features: tuple[Feature, ...]
    names: tuple[str, ...]
    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]
    signature_names: tuple[str, ...]
    positions: npt.NDArray[np.intp]
    """Where the features are among the signature's."""
    every: bool
    """Whether they are all of the signature's features, in order."""

    def outside(self, columns: Any) -> npt.NDArray[np.bool_] | None:
        """Which values are outside, rows by features; None when none is (the common case).
        One comparison of the columns as one block: a comparison per feature would cost a few
        microseconds each on every request."""
        arrays = [columns[name] for name in self.names]
        if len(arrays) == 1:
            return _outside_block(arrays[0][:, None], self)
        block = np.empty((len(arrays[0]), len(arrays)))  # column_stack costs 3 us more a request
        for j, values in enumerate(arrays):
            block[:, j] = values
        return _outside_block(block, self)


def _outside_block(block: Array, plan: _RangePlan) -> npt.NDArray[np.bool_] | None:
    outside: npt.NDArray[np.bool_] = (block < plan.lo) | (block > plan.hi)
    return outside if outside.any() else None


def _range_plan(signature: Signature, policy: str) -> _RangePlan | None:
    chosen = [(i, f) for i, f in enumerate(signature.inputs) if f.observed]
    chosen = [(i, f) for i, f in chosen if f.range_policy == policy]
    if not chosen:
        return None
    features = tuple(f for _, f in chosen)
    positions = np.array([i for i, _ in chosen], dtype=np.intp)
    return _RangePlan(
        features=features,
        names=tuple(f.name for f in features),
        lo=np.array([_end(f.observed_minimum, -np.inf) for f in features]),
        hi=np.array([_end(f.observed_maximum, np.inf) for f in features]),
        signature_names=tuple(signature.names),
        positions=positions,
        every=len(features) == len(signature.inputs),
    )


def _end(value: float | None, open_end: float) -> float:
    return open_end if value is None else value


@dataclass(frozen=True)
class _FloatPlan:
    """What checking a signature of float64 features takes, as vectors over the features."""

    names: tuple[str, ...]
    required: npt.NDArray[np.bool_]
    """Features that may not be missing."""
    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]
    """The declared ranges, narrowed to the observed ones whose policy is ``refuse``."""
    bounded: bool


@dataclass(frozen=True)
class _Plans:
    block: _FloatPlan | None
    refusing: _RangePlan | None
    warning: _RangePlan | None


_PLANS: dict[int, tuple[weakref.ref[Signature], _Plans]] = {}
"""Plans by the signature object's identity: hashing a signature of 30 features (pydantic hashes
every field) cost 5 us, a third of what the plan saves."""


def _plans(signature: Signature) -> _Plans:
    found = _PLANS.get(id(signature))
    if found is not None and found[0]() is signature:
        return found[1]
    plans = _Plans(
        _make_plan(signature), _range_plan(signature, "refuse"), _range_plan(signature, "warn")
    )
    if len(_PLANS) > 1024:  # versions come and go in a long-lived server
        _PLANS.clear()
    _PLANS[id(signature)] = (weakref.ref(signature), plans)
    return plans


def _make_plan(signature: Signature) -> _FloatPlan | None:
    features = signature.inputs
    if len(features) < 2 or any(f.dtype != "float64" for f in features):
        return None
    lo = np.array([_end(f.minimum, -np.inf) for f in features])
    hi = np.array([_end(f.maximum, np.inf) for f in features])
    refuse = [f.observed and f.range_policy == "refuse" for f in features]
    olo = np.array(
        [
            _end(f.observed_minimum, -np.inf) if r else -np.inf
            for f, r in zip(features, refuse, strict=True)
        ]
    )
    ohi = np.array(
        [
            _end(f.observed_maximum, np.inf) if r else np.inf
            for f, r in zip(features, refuse, strict=True)
        ]
    )
    lo, hi = np.maximum(lo, olo), np.minimum(hi, ohi)
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
    unusual (a missing value where none may be, an infinity, a value out of a declared range or
    of a refusing observed one, a value that is not a number, an Arrow column) returns None: the
    feature-by-feature checks then find and name the first problem exactly as always."""
    plan = _plans(signature).block
    if plan is None:
        return None
    given = getattr(array, "block", None)
    if given is not None:  # decoded as one block already: its columns in plan order
        order = [given.names.index(name) for name in plan.names]
        arrays = [given.array[:, order] if order != list(range(len(order))) else given.array]
    else:
        arrays = [array(name) for name in plan.names]
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "iuf" for a in arrays):
        return None
    if given is not None:
        block = arrays[0].astype(np.float64, copy=False)
        if not block.flags.writeable:  # a binary tensor's view of the request: the frame owns
            block = block.copy()
    elif rows:
        block = np.column_stack(arrays).astype(np.float64, copy=False)
    else:
        block = np.empty((0, len(arrays)))
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


class _BlockColumns:
    """The column getter of an :class:`InputBlock`, which also hands the block itself to the
    float-block check."""

    def __init__(self, block: InputBlock) -> None:
        self.block = block

    def __call__(self, name: str) -> Array:
        return self.block.array[:, self.block.names.index(name)].copy()  # type: ignore[no-any-return]


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

    elif isinstance(data, InputBlock):
        labels = {name: name for name in data.names}
        if len(labels) != len(data.names):
            raise SchemaError("the input names a feature twice")
        rows = data.array.shape[0]
        array = _BlockColumns(data)

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
