"""Decoding the shapes users send (records, columns, texts, arrays, Arrow) into named columns.
Transport formats (OIP tensors, CSV) build on these; outputs go back through ``outputs``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from berth.errors import InvalidInputError, SchemaError
from berth.registry.signature import TEXT_INPUT, Signature

Columns = dict[str, "np.ndarray[Any, Any]"]
"""Named 1-D arrays of equal length: a batch before it becomes a DataFrame. Small requests stay
in this form until validation builds the one DataFrame the model needs (building a DataFrame
costs more than validating it)."""


def to_frame(data: Any, signature: Signature) -> pd.DataFrame:
    """Accepts a DataFrame, a list of records, ``{"records": [...]}``, ``{"texts": [...]}``,
    a mapping of columns, a list of strings (text models), a 2-D array in signature order, or a
    pyarrow Table."""
    decoded = to_columns(data, signature)
    return decoded if isinstance(decoded, pd.DataFrame) else pd.DataFrame(decoded)


def to_columns(data: Any, signature: Signature) -> pd.DataFrame | Columns:
    """Like :func:`to_frame`, but leaves decoded JSON-like input as columns."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, Mapping):
        if "records" in data and len(data) == 1:
            return _records(data["records"])
        if "texts" in data and len(data) == 1:
            return _texts(data["texts"], signature)
        if data and not any(_is_column(v) for v in data.values()):
            return _records([data])  # one record given on its own
        return _columns(data)
    if isinstance(data, str):
        return _texts([data], signature)
    if isinstance(data, np.ndarray):
        return _array(data, signature)
    if type(data).__module__.startswith("pyarrow") and hasattr(data, "to_pandas"):
        return data.to_pandas()  # type: ignore[no-any-return]
    if isinstance(data, Sequence):
        if all(isinstance(r, Mapping) for r in data):
            return _records(data)
        if all(isinstance(t, str) for t in data):
            return _texts(data, signature)
    raise InvalidInputError(
        f"cannot read input of type {type(data).__name__}: give records (a list of objects), "
        "columns (an object of lists), texts (a list of strings) or a DataFrame"
    )


def _is_column(value: Any) -> bool:
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str)


def _records(records: Any) -> Columns:
    if not isinstance(records, Sequence) or not all(isinstance(r, Mapping) for r in records):
        raise InvalidInputError("'records' must be a list of objects, one per row")
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(map(str, record)))
    if records and not names:
        raise SchemaError("the records are empty objects: they hold no features")
    return {name: column([r.get(name) for r in records]) for name in names}


def column(values: list[Any]) -> np.ndarray[Any, Any]:
    """A typed array for JSON values without silent coercion: ints stay exact, a bool among
    numbers keeps the column as objects so validation can name it."""
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        return np.array(values, dtype=bool)
    if kinds == {int}:
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            return np.array(values, dtype=object)
    if kinds <= {int, float} and kinds:
        return np.array(values, dtype=np.float64)
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _texts(texts: Any, signature: Signature) -> Columns:
    if signature.kind != "text":
        raise InvalidInputError(
            f"this model takes features, not texts; features: {', '.join(signature.names)}"
        )
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InvalidInputError("'texts' must be a list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"text at row {i} is a {type(text).__name__}, not a string")
    return {TEXT_INPUT: column(list(texts))}


def _columns(columns: Mapping[Any, Any]) -> Columns:
    lengths = set()
    for name, values in columns.items():
        if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray):
            raise InvalidInputError(f"column {name!r} must be a list of values")
        lengths.add(len(values))
    if len(lengths) > 1:
        raise InvalidInputError(f"columns have different lengths: {sorted(lengths)}")
    return {
        str(k): np.array(v, copy=True) if isinstance(v, np.ndarray) else column(list(v))
        for k, v in columns.items()
    }


def _array(array: np.ndarray[Any, Any], signature: Signature) -> Columns:
    if array.ndim == 1 and signature.kind == "text":
        return _texts(array.tolist(), signature)
    if array.ndim != 2 or array.shape[1] != len(signature.inputs):
        raise InvalidInputError(
            f"array of shape {array.shape} does not match the {len(signature.inputs)} features "
            f"({', '.join(signature.names)})"
        )
    return {name: array[:, i].copy() for i, name in enumerate(signature.names)}
