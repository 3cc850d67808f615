"""Checking a batch against a signature: every problem names the feature and the first bad row.

Checks are per column and vectorised, so their cost does not grow with a Python loop over rows
(the exceptions are object columns, where each value's type must be looked at). The returned batch
owns its arrays: a predictor may write into it without touching the caller's data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import SchemaError
from berth.registry.signature import NUMERIC, Feature, Signature

Array = npt.NDArray[Any]


def validate(signature: Signature, data: pd.DataFrame | Mapping[str, Array]) -> pd.DataFrame:
    """Return a new frame with exactly the signature's columns; see :func:`validate_columns`."""
    return validate_columns(signature, data)[0]


def validate_columns(
    signature: Signature, data: pd.DataFrame | Mapping[str, Array]
) -> tuple[pd.DataFrame, dict[str, Array]]:
    """Return a new frame with exactly the signature's columns, in order, dtypes coerced.

    ``data`` is a DataFrame (never modified) or decoded columns (see ``codecs.to_columns``),
    whose arrays the result may take over. A nullable integer feature with a missing value comes
    back as float64 with NaN (numpy integers hold no missing value); a nullable bool feature with a
    missing value as object with None. The column arrays come back too: the record writer
    keeps them, which is far cheaper than taking the frame apart again.
    """
    if isinstance(data, pd.DataFrame):
        labels = {str(c): c for c in data.columns}
        if len(labels) != data.shape[1]:
            raise SchemaError("the input names a feature twice")
        rows = len(data)

        def array(name: str) -> Array:
            return data[labels[name]].to_numpy(copy=True)  # type: ignore[no-any-return]

    else:
        labels = {name: name for name in data}
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise SchemaError(f"input columns have different lengths: {sorted(lengths)}")
        rows = lengths.pop() if lengths else 0

        def array(name: str) -> Array:
            return data[name]

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
    allow_unknown = signature.unknown_categories == "allow"
    columns = {f.name: _column(f, array(f.name), allow_unknown) for f in signature.inputs}
    return pd.DataFrame(columns, index=pd.RangeIndex(rows), copy=False), columns


def _column(feature: Feature, values: Array, allow_unknown: bool) -> Array:
    nulls = pd.isna(values) if values.dtype.kind in "fOUcmM" else None
    if nulls is not None and not nulls.any():
        nulls = None
    if nulls is not None and not feature.nullable:
        raise _bad(feature, "has a missing value", int(np.flatnonzero(nulls)[0]))
    if feature.dtype in NUMERIC:
        return _numeric(feature, values, nulls)
    if feature.dtype == "bool":
        return _bool(feature, values, nulls)
    return _string(feature, values, nulls, allow_unknown)


def _bool(feature: Feature, values: Array, nulls: npt.NDArray[np.bool_] | None) -> Array:
    if values.dtype.kind == "b":
        return values
    if values.dtype.kind != "O":
        raise _type(feature, values, 0)
    ok = _kinds(values, lambda v: isinstance(v, bool | np.bool_))
    if nulls is not None:
        ok |= nulls
    _first_bad(feature, values, ok)
    if nulls is not None:
        out = values.astype(object)
        out[nulls] = None
        return out
    return values.astype(bool)


def _numeric(feature: Feature, values: Array, nulls: npt.NDArray[np.bool_] | None) -> Array:
    target = np.dtype(feature.dtype)
    if values.dtype.kind == "O":
        values = _numeric_objects(feature, values, nulls, target)
    elif values.dtype.kind not in "iuf":
        raise _type(feature, values, 0)
    if target.kind in "iu":
        if nulls is not None:
            target = np.dtype(np.float64)  # a missing integer travels as NaN
        else:
            _check_integers(feature, values, target)
    elif values.dtype.kind == "f" and target.itemsize < values.dtype.itemsize:
        limit = float(np.finfo(target).max)
        over = np.isfinite(values) & (np.abs(values) > limit)
        if over.any():
            row = int(np.flatnonzero(over)[0])
            raise _bad(feature, f"value {values[row]!r} does not fit {feature.dtype}", row)
    converted = values.astype(target)
    if converted.dtype.kind == "f":
        infinite = np.isinf(converted)
        if infinite.any():
            row = int(np.flatnonzero(infinite)[0])
            raise _bad(feature, f"has a non-finite value {_plain(converted[row])}", row)
    if feature.minimum is not None or feature.maximum is not None:
        lo = -np.inf if feature.minimum is None else feature.minimum
        hi = np.inf if feature.maximum is None else feature.maximum
        outside = (converted < lo) | (converted > hi)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise _bad(feature, f"value {_plain(converted[row])} is outside [{lo}, {hi}]", row)
    return converted


def _numeric_objects(
    feature: Feature, values: Array, nulls: npt.NDArray[np.bool_] | None, target: np.dtype[Any]
) -> Array:
    """Object columns come from records with mixed types; Python ints keep full precision."""
    is_int = _kinds(values, lambda v: isinstance(v, int | np.integer) and not isinstance(v, bool))
    is_float = _kinds(values, lambda v: isinstance(v, float | np.floating))
    ok = is_int | is_float if nulls is None else is_int | is_float | nulls
    _first_bad(feature, values, ok)
    if is_int.all() and target.kind in "iu":
        info = np.iinfo(target)
        outside = _kinds(values, lambda v: not info.min <= int(v) <= info.max)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise _bad(feature, f"value {values[row]} does not fit {feature.dtype}", row)
        return np.array(values.tolist(), dtype=target)
    return np.array([np.nan if v is None else v for v in values.tolist()], dtype=np.float64)


def _check_integers(feature: Feature, values: Array, target: np.dtype[Any]) -> None:
    info = np.iinfo(target)
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.floor(values))
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise _bad(feature, f"expects {feature.dtype}, got {_plain(values[row])}", row)
        # Bounds as exact powers of two: float(int64 max) rounds up to 2**63, which does not fit.
        outside = (values < float(info.min)) | (values >= float(info.max) + 1.0)
    else:
        outside = (values < info.min) | (values > info.max)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise _bad(feature, f"value {_plain(values[row])} does not fit {feature.dtype}", row)


def _string(
    feature: Feature,
    values: Array,
    nulls: npt.NDArray[np.bool_] | None,
    allow_unknown: bool,
) -> Array:
    if values.dtype.kind == "U":
        values = values.astype(object)
    elif values.dtype.kind != "O":
        raise _type(feature, values, 0)
    is_str = _kinds(values, lambda v: isinstance(v, str))
    _first_bad(feature, values, is_str if nulls is None else is_str | nulls)
    if feature.categories is not None and not allow_unknown:
        known = np.isin(values, np.asarray(feature.categories, dtype=object))
        if nulls is not None:
            known |= nulls
        if not known.all():
            row = int(np.flatnonzero(~known)[0])
            allowed = ", ".join(feature.categories[:20])
            raise _bad(feature, f"has unknown category {values[row]!r} (allowed: {allowed})", row)
    return values


def _kinds(values: Array, test: Any) -> npt.NDArray[np.bool_]:
    return np.fromiter((test(v) for v in values), dtype=bool, count=len(values))


def _first_bad(feature: Feature, values: Array, ok: npt.NDArray[np.bool_]) -> None:
    if not ok.all():
        raise _type(feature, values, int(np.flatnonzero(~ok)[0]))


def _plain(value: Any) -> Any:
    """Python scalars in messages: ``1.5``, not ``np.float64(1.5)``."""
    return value.item() if isinstance(value, np.generic) else value


def _type(feature: Feature, values: Array, row: int) -> SchemaError:
    value = _plain(values[row])
    kind = "string" if isinstance(value, str) else type(value).__name__
    return _bad(feature, f"expects {feature.dtype}, got {kind} {value!r}", row)


def _bad(feature: Feature, problem: str, row: int) -> SchemaError:
    return SchemaError(f"feature {feature.name!r} {problem} at row {row}", feature=feature.name)
