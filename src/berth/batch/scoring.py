"""One chunk of a batch job: its rows into the inference path, its output and error rows out.

Both engines (local threads, Ray workers) go through these functions and the path's
``validate`` and ``run_window``, which is why their outputs are the same. Prediction ids are the
job id and the input row number (``3f2a9c1b7d4e-1234``): unique, traceable to the input row, and
the same when a chunk is scored again after an interruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from berth.batch.sources import Chunk
from berth.errors import InvalidInputError
from berth.registry.signature import Signature
from berth.runtime.outputs import flat_names, to_flat_columns
from berth.runtime.path import Validated

if TYPE_CHECKING:
    from berth.runtime.path import InferencePath, Result
    from berth.runtime.routing import Target

ERROR_COLUMNS = ("row", "error")


@dataclass
class Prepared:
    """A chunk after validation, before prediction."""

    chunk: Chunk
    validated: Validated
    decodable: np.ndarray[Any, Any]
    """Rows of the chunk the reader could decode: what went to validation, in order."""
    kept: np.ndarray[Any, Any]
    """Rows of the chunk that are scored."""
    bad: np.ndarray[Any, Any]
    reasons: list[str]

    def prediction_ids(self, job_id: str) -> pa.Array:
        """One id per row that went to validation (the path keeps those of the scored rows)."""
        return prediction_ids(job_id, self.chunk.first_row + self.decodable)


@dataclass
class Scored:
    index: int
    output: pa.Table
    errors: pa.Table
    result: Result


def check_passthrough(signature: Signature, passthrough: tuple[str, ...]) -> None:
    clash = sorted(set(passthrough) & set(flat_names(signature)))
    if clash:
        raise InvalidInputError(
            f"--passthrough {', '.join(map(repr, clash))} would clash with the output's own "
            f"column{'s' if len(clash) > 1 else ''}; rename it in the input"
        )


def prepare(path: InferencePath, target: Target, chunk: Chunk) -> Prepared:
    """Validate a chunk, refusing bad rows (the reader's undecodable ones included)."""
    names = target.info.signature.names
    refused = dict(chunk.failed)
    decodable = np.arange(chunk.rows, dtype=np.intp)
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
    validated = (
        path.validate(target, features, bad_rows="refuse")
        if len(decodable)
        else Validated.nothing(target.info.signature)
    )
    for row, reason in zip(decodable[validated.bad_rows].tolist(), validated.reasons, strict=True):
        refused[row] = reason
    bad = np.array(sorted(refused), dtype=np.intp)
    kept = decodable if validated.kept is None else decodable[validated.kept]
    return Prepared(chunk, validated, decodable, kept, bad, [refused[int(r)] for r in bad])


def assemble(prepared: Prepared, result: Result, *, passthrough: tuple[str, ...]) -> Scored:
    """The chunk's output rows (passthrough columns, ids, flat outputs) and error rows."""
    chunk = prepared.chunk
    kept = prepared.kept
    n = len(kept)
    info = result.info
    columns: dict[str, Any] = {name: _take(chunk.data, name, kept) for name in passthrough}
    ids = result.prediction_ids
    columns["prediction_id"] = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
    columns["model"] = pa.repeat(pa.scalar(info.model, pa.string()), n)
    columns["version"] = pa.repeat(pa.scalar(info.version, pa.int32()), n)
    columns.update(to_flat_columns(result.outputs, info.signature, n))
    errors: dict[str, Any] = {
        "row": pa.array(chunk.first_row + prepared.bad, type=pa.int64()),
        "error": pa.array(prepared.reasons, type=pa.string()),
    }
    for name in passthrough:
        errors[name] = _take(chunk.data, name, prepared.bad)
    return Scored(chunk.index, pa.table(columns), pa.table(errors), result)


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
