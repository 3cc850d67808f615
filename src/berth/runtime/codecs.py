"""Decoding the shapes users send (records, columns, texts, arrays, Arrow) into named columns.
Transport formats (OIP tensors, CSV) build on these; outputs go back through ``outputs``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from berth.errors import InvalidInputError, SchemaError
from berth.registry.signature import TEXT_INPUT, Signature

Columns = dict[str, "np.ndarray[Any, Any]"]


class InputBlock(Mapping[str, Any]):
    """Columns of one numeric dtype as one 2-D array (rows x features). Decoded JSON records of
    numbers arrive so (one array instead of one per feature, which validation would stack
    again), and the records keep validated inputs so (one copy of the validated frame's block,
    taken before the prediction): the writer joins thousands of requests with one
    concatenate instead of one per feature (per-feature joins held the GIL long enough to show
    in the server's p99). Reads as a mapping of columns."""

    __slots__ = ("array", "names")

    def __init__(self, names: tuple[str, ...], array: Any) -> None:
        self.names = names
        self.array = array

    def __getitem__(self, name: str) -> Any:
        return self.array[:, self.names.index(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


"""Named 1-D arrays of equal length: a batch before it becomes a DataFrame. Small requests stay
in this form until validation builds the one DataFrame the model needs (building a DataFrame
costs more than validating it)."""


def to_frame(data: Any, signature: Signature) -> pd.DataFrame:
    """Accepts a DataFrame, a list of records, ``{"records": [...]}``, ``{"texts": [...]}``,
    a mapping of columns, a list of strings (text models), a 2-D array in signature order, or a
    pyarrow Table."""
    decoded = to_columns(data, signature)
    if isinstance(decoded, InputBlock):
        return pd.DataFrame(decoded.array, columns=list(decoded.names))
    return decoded if isinstance(decoded, pd.DataFrame) else pd.DataFrame(decoded)


def to_columns(data: Any, signature: Signature) -> pd.DataFrame | Columns | InputBlock:
    """Like :func:`to_frame`, but leaves decoded JSON-like input as columns (records of plain
    numbers for a model of float64 features as one block)."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, Mapping):
        if "records" in data and len(data) == 1:
            block = _number_block(data["records"], signature)
            return _records(data["records"]) if block is None else block
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


def _number_block(records: Any, signature: Signature) -> InputBlock | None:
    """Records that hold only ints and floats under the same keys, for a signature of float64
    features, as one float64 block: what the feature-by-feature columns would have become once
    validated, built in one call (a one-row request of 30 features went through 30 arrays and a
    stack). Anything else (a bool, a string, a missing key, keys in another order) is None and
    takes the column-by-column way, where validation names the problem."""
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        return None
    features = signature.inputs
    if len(features) < 2 or any(f.dtype != "float64" for f in features):
        return None
    keys = tuple(records[0])
    if len(keys) != len(features):
        return None
    rows = []
    for record in records:
        if not isinstance(record, dict) or tuple(record) != keys:
            return None
        rows.append(list(record.values()))
    kinds = {type(v) for row in rows for v in row}
    if not kinds <= {int, float}:  # bool is its own type here, never an int
        return None
    try:
        return InputBlock(keys, np.array(rows, dtype=np.float64))
    except OverflowError:  # an int beyond float64: the columns say which
        return None


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
        try:
            return np.array(values, dtype=np.float64)
        except OverflowError:  # an int beyond float64 (from Python, not JSON): validation names it
            pass
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
