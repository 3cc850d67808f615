"""Checking a batch against a signature: every problem names the feature and the first bad row.

Checks are per column and vectorised, so their cost does not grow with a Python loop over rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import SchemaError
from berth.registry.signature import NUMERIC, Feature, Signature


def validate(signature: Signature, frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with exactly the signature's columns, in order, dtypes coerced."""
    if len(frame) == 0:
        raise SchemaError("the input has no rows")
    columns = [str(c) for c in frame.columns]
    names = signature.names
    missing = [n for n in names if n not in columns]
    if missing:
        raise SchemaError(
            f"missing feature{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
            f"expected: {', '.join(names)}",
            feature=missing[0],
        )
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise SchemaError(
            f"unknown feature{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"expected: {', '.join(names)}",
            feature=unknown[0],
        )
    if len(set(columns)) != len(columns):
        raise SchemaError("the input names a feature twice")
    position = {c: i for i, c in enumerate(columns)}
    allow_unknown = signature.unknown_categories == "allow"
    data = {
        f.name: _column(f, frame.iloc[:, position[f.name]], allow_unknown) for f in signature.inputs
    }
    return pd.DataFrame(data, index=pd.RangeIndex(len(frame)), copy=False)


def _column(feature: Feature, column: pd.Series, allow_unknown: bool) -> npt.NDArray[Any]:
    values = column.to_numpy()
    nulls = pd.isna(values) if values.dtype.kind in "fOUcmM" else None
    if nulls is not None and not feature.nullable and nulls.any():
        raise _bad(feature, "has a missing value", int(np.flatnonzero(nulls)[0]))
    if feature.dtype in NUMERIC:
        return _numeric(feature, values, nulls)
    if feature.dtype == "bool":
        if values.dtype.kind == "b":
            return values
        if values.dtype.kind == "O" and all(isinstance(v, bool | np.bool_) for v in values):
            return values.astype(bool)
        raise _type(feature, values)
    return _string(feature, values, nulls, allow_unknown)


def _numeric(
    feature: Feature, values: npt.NDArray[Any], nulls: npt.NDArray[np.bool_] | None
) -> npt.NDArray[Any]:
    if values.dtype.kind == "O":
        ok = np.fromiter(
            (isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values),
            dtype=bool,
            count=len(values),
        )
        if nulls is not None:
            ok |= nulls
        if not ok.all():
            raise _type(feature, values, int(np.flatnonzero(~ok)[0]))
        values = values.astype(np.float64)
    elif values.dtype.kind not in "iuf":
        raise _type(feature, values)
    target = np.dtype(feature.dtype)
    if target.kind in "iu" and values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.floor(values))
        if not whole.all():
            raise _bad(
                feature,
                f"expects {feature.dtype}, got {values[~whole][0]!r}",
                int(np.flatnonzero(~whole)[0]),
            )
    if target.kind in "iu":
        info = np.iinfo(target)
        outside = (values < info.min) | (values > info.max)
        if outside.any():
            raise _bad(
                feature,
                f"value {values[outside][0]} does not fit {feature.dtype}",
                int(np.flatnonzero(outside)[0]),
            )
    converted = values.astype(target, copy=False)
    if feature.minimum is not None or feature.maximum is not None:
        lo = -np.inf if feature.minimum is None else feature.minimum
        hi = np.inf if feature.maximum is None else feature.maximum
        outside = (converted < lo) | (converted > hi)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise _bad(feature, f"value {converted[row]} is outside [{lo}, {hi}]", row)
    return converted


def _string(
    feature: Feature,
    values: npt.NDArray[Any],
    nulls: npt.NDArray[np.bool_] | None,
    allow_unknown: bool,
) -> npt.NDArray[Any]:
    if values.dtype.kind == "U":
        values = values.astype(object)
    elif values.dtype.kind != "O":
        raise _type(feature, values)
    present = ~nulls if nulls is not None else np.ones(len(values), dtype=bool)
    is_str = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
    wrong = present & ~is_str
    if wrong.any():
        raise _type(feature, values, int(np.flatnonzero(wrong)[0]))
    if feature.categories is not None and not allow_unknown:
        known = np.isin(values, np.asarray(feature.categories, dtype=object)) | ~present
        if not known.all():
            row = int(np.flatnonzero(~known)[0])
            allowed = ", ".join(feature.categories[:20])
            raise _bad(feature, f"has unknown category {values[row]!r} (allowed: {allowed})", row)
    return values


def _type(feature: Feature, values: npt.NDArray[Any], row: int = 0) -> SchemaError:
    value = values[row]
    kind = "string" if isinstance(value, str) else type(value).__name__
    return _bad(feature, f"expects {feature.dtype}, got {kind} {value!r}", row)


def _bad(feature: Feature, problem: str, row: int) -> SchemaError:
    return SchemaError(f"feature {feature.name!r} {problem} at row {row}", feature=feature.name)
