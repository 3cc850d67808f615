"""One feature's values checked against its declaration and converted to its dtype, vectorised:
every problem found with the row it is on (``Problems``), so that a batch can fail on the first
(``validation.validate_columns``) or set every bad row aside (``validation.check_columns``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import SchemaError
from berth.registry.signature import NUMERIC, Feature

Array = npt.NDArray[Any]


Describe = Callable[[int], str]


class Problems:
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


def check_column(feature: Feature, values: Array, allow_unknown: bool, p: Problems) -> Array | None:
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


def _arrow_column(feature: Feature, values: Any, allow_unknown: bool, p: Problems) -> Array | None:
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
        return check_column(feature, values.to_numpy(zero_copy_only=False), allow_unknown, p)
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
    feature: Feature, values: Array, nulls: npt.NDArray[np.bool_] | None, p: Problems
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
    feature: Feature, values: Array, nulls: npt.NDArray[np.bool_] | None, p: Problems
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
    p: Problems,
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
    # An integer past float64's range (JSON allows any) would raise OverflowError: a 500.
    p.add(
        _kinds(values, lambda v: isinstance(v, int) and not -_FLOAT_LIMIT < v < _FLOAT_LIMIT),
        lambda row: f"value {_int_size(values[row])} does not fit {feature.dtype}",
    )
    if p.found:
        return None
    return np.array([np.nan if v is None else v for v in values.tolist()], dtype=np.float64)


_FLOAT_LIMIT = 2**1024  # float64's largest finite value is just under it


def _int_size(value: int) -> str:
    """A huge integer named by its size: printing one of over 4,300 digits raises ValueError."""
    return f"an integer of {abs(value).bit_length():,} bits"


def _check_integers(feature: Feature, values: Array, target: np.dtype[Any], p: Problems) -> None:
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
    p: Problems,
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


def describe(feature: Feature, problem: str) -> str:
    return f"feature {feature.name!r} {problem}"


def schema_error(feature: Feature, problem: str, row: int) -> SchemaError:
    return SchemaError(f"{describe(feature, problem)} at row {row}", feature=feature.name)
