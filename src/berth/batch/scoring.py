"""One chunk through the inference path: validate, predict, and the output, error and record rows.

Both engines (local threads, Ray workers) score with these functions, which is why their outputs
are the same. Prediction ids are the job id and the input row number (``3f2a9c1b7d4e-1234``):
unique, traceable to the input row, and the same when a chunk is scored again after an
interruption.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from berth.batch.sources import Chunk
from berth.errors import InvalidInputError
from berth.registry.signature import Signature
from berth.runtime.records import RecordBatch
from berth.runtime.validation import Checked, check_columns

if TYPE_CHECKING:
    from berth.runtime.loading import LoadedModel
    from berth.types import Outputs

META_COLUMNS = ("prediction_id", "model", "version")
ERROR_COLUMNS = ("row", "error")


@dataclass
class Prepared:
    """A chunk after validation, before prediction."""

    chunk: Chunk
    checked: Checked
    kept: np.ndarray[Any, Any]
    """Rows of the chunk that are scored."""
    bad: np.ndarray[Any, Any]
    reasons: list[str]


@dataclass
class Scored:
    index: int
    output: pa.Table
    errors: pa.Table
    record: RecordBatch | None


def output_names(signature: Signature) -> list[str]:
    """The output's columns after the passthrough ones: ids, then each output flattened (class
    probabilities become one column per class, ``probabilities_1``)."""
    names = list(META_COLUMNS)
    for out in signature.outputs:
        if len(out.shape) == 2 and out.classes is not None and out.shape[1] == len(out.classes):
            names += [f"{out.name}_{c}" for c in out.classes]
        else:
            names.append(out.name)
    return names


def output_fields(signature: Signature) -> list[pa.Field]:
    """The typed fields of :func:`output_names`: what an output without rows still declares."""
    fields = [
        pa.field("prediction_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("version", pa.int32()),
    ]
    for out in signature.outputs:
        base = pa.string() if out.dtype == "string" else pa.from_numpy_dtype(np.dtype(out.dtype))
        if len(out.shape) == 2 and out.classes is not None and out.shape[1] == len(out.classes):
            fields += [pa.field(f"{out.name}_{c}", base) for c in out.classes]
        elif len(out.shape) == 2:
            fields.append(pa.field(out.name, pa.list_(base)))
        else:
            fields.append(pa.field(out.name, base))
    return fields


def check_passthrough(signature: Signature, passthrough: tuple[str, ...]) -> None:
    clash = sorted(set(passthrough) & set(output_names(signature)))
    if clash:
        raise InvalidInputError(
            f"--passthrough {', '.join(map(repr, clash))} would clash with the output's own "
            f"column{'s' if len(clash) > 1 else ''}; rename it in the input"
        )


def prepare(chunk: Chunk, signature: Signature) -> Prepared:
    rows = chunk.rows
    names = signature.names
    refused = {row: reason for row, reason in chunk.failed}
    decodable = np.arange(rows, dtype=np.intp)
    features: Any
    if refused:
        decodable = decodable[~np.isin(decodable, list(refused))]
    if isinstance(chunk.data, pa.Table):
        features = chunk.data.select(names)
        if refused:
            features = features.take(pa.array(decodable))
    else:
        features = {n: chunk.data[n] for n in names}
        if refused:
            features = {n: v[decodable] for n, v in features.items()}
    checked = check_columns(signature, features) if len(decodable) else _nothing()
    for row, reason in zip(decodable[checked.bad_rows].tolist(), checked.reasons, strict=True):
        refused[row] = reason
    bad = np.array(sorted(refused), dtype=np.intp)
    return Prepared(
        chunk,
        checked,
        kept=decodable[checked.kept],
        bad=bad,
        reasons=[refused[int(r)] for r in bad],
    )


def _nothing() -> Checked:
    import pandas as pd

    empty = np.empty(0, dtype=np.intp)
    return Checked(pd.DataFrame(), {}, empty, empty, [])


def predict(model: LoadedModel, prepared: Prepared) -> tuple[Outputs, float]:
    started = time.perf_counter()
    if not len(prepared.kept):
        return {}, 0.0
    outputs = model.predict_validated(prepared.checked.frame)
    return outputs, (time.perf_counter() - started) * 1000.0


def assemble(
    prepared: Prepared,
    outputs: Outputs,
    latency_ms: float,
    *,
    signature: Signature,
    passthrough: tuple[str, ...],
    job_id: str,
    model: str,
    version: int,
) -> Scored:
    chunk = prepared.chunk
    kept = prepared.kept
    n = len(kept)
    columns: dict[str, Any] = {name: _take(chunk.data, name, kept) for name in passthrough}
    ids = prediction_ids(job_id, chunk.first_row + kept)
    columns["prediction_id"] = ids
    columns["model"] = pa.repeat(pa.scalar(model, pa.string()), n)
    columns["version"] = pa.repeat(pa.scalar(version, pa.int32()), n)
    if not n:  # every row refused: the declared columns, empty
        for field in output_fields(signature)[len(META_COLUMNS) :]:
            columns[field.name] = pa.array([], type=field.type)
    for out in signature.outputs if n else ():
        values = outputs[out.name]
        classes = out.classes
        if len(out.shape) == 2 and classes is not None and out.shape[1] == len(classes):
            for i, cls in enumerate(classes):
                columns[f"{out.name}_{cls}"] = pa.array(values[:, i])
        elif values.ndim == 2:
            flat = pa.array(values.reshape(-1))
            columns[out.name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            columns[out.name] = pa.array(values.tolist() if values.dtype == object else values)
    errors: dict[str, Any] = {
        "row": pa.array(chunk.first_row + prepared.bad, type=pa.int64()),
        "error": pa.array(prepared.reasons, type=pa.string()),
    }
    for name in passthrough:
        errors[name] = _take(chunk.data, name, prepared.bad)
    record = None
    if n:
        inputs = _record_inputs(prepared, signature)
        record = RecordBatch(model, version, "batch", ids, inputs, outputs, latency_ms)
    return Scored(chunk.index, pa.table(columns), pa.table(errors), record)


def _record_inputs(prepared: Prepared, signature: Signature) -> dict[str, Any]:
    """The validated inputs for the records. Text columns of an Arrow chunk go as the Arrow
    arrays they came in (validation does not change a string): making Arrow strings again from
    Python ones would hold the GIL that prediction needs."""
    columns: dict[str, Any] = dict(prepared.checked.columns)
    data = prepared.chunk.data
    if not isinstance(data, pa.Table):
        return columns
    everything = len(prepared.kept) == prepared.chunk.rows
    rows = None if everything else pa.array(prepared.kept, type=pa.int64())
    for feature in signature.inputs:
        values = data.column(feature.name)
        if feature.dtype == "string" and _is_text(values.type):
            columns[feature.name] = values if rows is None else values.take(rows)
    return columns


def _is_text(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def prediction_ids(job_id: str, rows: np.ndarray[Any, Any]) -> pa.Array:
    numbers = pc.cast(pa.array(np.asarray(rows, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(pa.scalar(job_id), numbers, pa.scalar("-"))


def _take(data: pa.Table | dict[str, Any], name: str, rows: np.ndarray[Any, Any]) -> Any:
    if isinstance(data, pa.Table):
        if len(rows) == data.num_rows:  # every row kept (rows are ascending and unique)
            return data.column(name)
        return data.column(name).take(pa.array(rows, type=pa.int64()))
    values = data[name][rows]
    if values.dtype == object:
        try:
            return pa.array(values.tolist(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed JSON types: keep them as text
            return pa.array([None if v is None else str(v) for v in values.tolist()])
    return pa.array(values)
