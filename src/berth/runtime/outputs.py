"""The one output codec: a predictor's outputs as JSON rows, OIP tensors, flat Arrow columns
(files and tables: ``probabilities_<class>``), record columns, or columns that cross a process
boundary (Ray).

Every shape decision about outputs is made here, once; above all the rule that a 2-D output with
one column per declared class (a classifier's probabilities) is keyed by class.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt
    import pandas as pd
    import pyarrow as pa

    from berth.registry.signature import Output, Signature
    from berth.types import Outputs

META_COLUMNS = ("prediction_id", "model", "version")
"""The flat columns every scored row carries before its outputs."""
_SEP = "\x1f"


def per_class(output: Output | None, values: npt.NDArray[Any] | None = None) -> list[str] | None:
    """The class names keying a 2-D output with one column per declared class, else None."""
    if output is None or output.classes is None or len(output.shape) != 2:
        return None
    width = output.shape[1] if values is None else (values.shape[1] if values.ndim == 2 else -2)
    if width != len(output.classes):
        return None
    return [str(c) for c in output.classes]


def _declared(signature: Signature) -> dict[str, Output]:
    return {o.name: o for o in signature.outputs}


# -- JSON rows -------------------------------------------------------------------------------------


def to_rows(outputs: Outputs, signature: Signature) -> list[dict[str, Any]]:
    """One JSON-ready dict per row: the label, and probabilities keyed by class."""
    declared = _declared(signature)
    n = len(next(iter(outputs.values()))) if outputs else 0
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, values in outputs.items():
        keys = per_class(declared.get(name), values)
        if keys is not None:
            for row, vec in zip(rows, values.tolist(), strict=True):
                row[name] = dict(zip(keys, vec, strict=True))
        else:
            for row, value in zip(rows, values.tolist(), strict=True):
                row[name] = value
    return rows


# -- flat Arrow columns (batch outputs: Parquet, CSV, JSONL, SQL tables) ---------------------------


def flat_fields(signature: Signature) -> list[pa.Field]:
    """The typed flat columns of the outputs, after :data:`META_COLUMNS`: class probabilities
    become one column per class (``probabilities_1``), other 2-D outputs a list column."""
    import pyarrow as pa

    fields = [
        pa.field("prediction_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("version", pa.int32()),
    ]
    for out in signature.outputs:
        base = pa.string() if out.dtype == "string" else pa.from_numpy_dtype(np.dtype(out.dtype))
        keys = per_class(out)
        if keys is not None:
            fields += [pa.field(f"{out.name}_{c}", base) for c in keys]
        elif len(out.shape) == 2:
            fields.append(pa.field(out.name, pa.list_(base)))
        else:
            fields.append(pa.field(out.name, base))
    return fields


def flat_names(signature: Signature) -> list[str]:
    return [f.name for f in flat_fields(signature)]


def to_flat_columns(outputs: Outputs, signature: Signature, rows: int) -> dict[str, Any]:
    """The outputs as flat Arrow columns (empty, typed as declared, when nothing was scored)."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    if not rows:
        for field in flat_fields(signature)[len(META_COLUMNS) :]:
            columns[field.name] = pa.array([], type=field.type)
        return columns
    for out in signature.outputs:
        values = outputs[out.name]
        keys = per_class(out, values)
        if keys is not None:
            for i, key in enumerate(keys):
                columns[f"{out.name}_{key}"] = pa.array(values[:, i])
        elif values.ndim == 2:
            columns[out.name] = _fixed_list(values)
        else:
            columns[out.name] = pa.array(values.tolist() if values.dtype == object else values)
    return columns


def _fixed_list(values: npt.NDArray[Any]) -> pa.Array:
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


# -- prediction records ---------------------------------------------------------------------------


def to_record_columns(outputs: Outputs) -> dict[str, Any]:
    """``out.NAME`` columns: 2-D outputs as fixed-size lists, so a record keeps a row's whole
    vector whichever classes a version had."""
    from berth.runtime.arrow import to_arrow

    return {
        f"out.{name}": _fixed_list(values) if values.ndim == 2 else to_arrow(values)
        for name, values in outputs.items()
    }


# -- Open Inference Protocol tensors ---------------------------------------------------------------

TO_OIP = {
    "bool": "BOOL", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "float32": "FP32", "float64": "FP64", "string": "BYTES",
}  # fmt: skip
FROM_OIP = {v: k for k, v in TO_OIP.items()} | {"FP16": "float16"}


def to_tensor(
    name: str, values: npt.NDArray[Any], binary: bool
) -> tuple[dict[str, Any], bytes | None]:
    """One OIP output tensor; with ``binary``, its data as raw bytes to send after the JSON."""
    if values.dtype.kind in "OUS":
        datatype = "BYTES"
        flat = [str(v) for v in values.reshape(-1).tolist()]
    else:
        datatype = TO_OIP.get(values.dtype.name, "FP64")
        flat = None
    tensor: dict[str, Any] = {"name": name, "shape": list(values.shape), "datatype": datatype}
    if not binary:
        # orjson serialises C-contiguous arrays only (a column of a 2-D output is not one).
        tensor["data"] = flat if flat is not None else np.ascontiguousarray(values).reshape(-1)
        return tensor, None
    if flat is not None:
        blob = b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in flat))
    else:
        dtype = np.dtype(FROM_OIP[datatype]).newbyteorder("<")
        blob = np.ascontiguousarray(values, dtype=dtype).tobytes()
    tensor["parameters"] = {"binary_data_size": len(blob)}
    return tensor, blob


# -- across a process boundary (Ray Data blocks) ---------------------------------------------------


def to_plain_columns(outputs: Outputs) -> dict[str, Any]:
    """1-D columns only (what a DataFrame block carries): a 2-D output becomes one column per
    index, put together again by :func:`from_plain_columns`."""
    columns: dict[str, Any] = {}
    for name, values in outputs.items():
        if values.ndim == 2:
            for i in range(values.shape[1]):
                columns[f"{name}{_SEP}{i}"] = values[:, i]
        else:
            columns[name] = values
    return columns


def from_plain_columns(frame: pd.DataFrame) -> Outputs:
    outputs: dict[str, Any] = {}
    wide: dict[str, list[str]] = {}
    for column in frame.columns:
        name, sep, _ = str(column).partition(_SEP)
        if sep:
            wide.setdefault(name, []).append(str(column))
        else:
            outputs[name] = frame[column].to_numpy()
    for name, columns in wide.items():
        ordered = sorted(columns, key=lambda c: int(c.rsplit(_SEP, 1)[1]))
        outputs[name] = np.column_stack([frame[c].to_numpy() for c in ordered])
    return outputs
