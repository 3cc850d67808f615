"""Checking a batch against a signature: every problem names the feature and the first bad row.

This module holds the batch's side (its shape, the frame a predictor gets, failing fast or
setting bad rows aside); ``columns`` holds each feature's checks. Checks are per column and
vectorised, so their cost does not grow with a Python loop over rows (the exceptions are object
columns, where each value's type must be looked at). The returned batch owns its arrays: a
predictor may write into it without touching the caller's data.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import SchemaError
from berth.registry.signature import Feature, Signature
from berth.runtime.codecs import InputBlock
from berth.runtime.columns import Array, Problems, check_column, describe, schema_error

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
        problems = Problems(rows)
        converted = check_column(feature, array(feature.name), allow_unknown, problems)
        if problems.found or converted is None:
            row, problem = problems.first()
            raise schema_error(feature, problem, row)
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
