"""Prediction records: one declared schema, one producer, a policy hook, two writers.

Every mode (realtime, batch, stream, edge forwarding, library calls that ask for it) records its
predictions through the one :class:`RecordProducer`, which the inference path calls after a
prediction; no adapter builds a record. A record is one row per prediction:

========================  =======================================================================
column                    meaning
========================  =======================================================================
``prediction_id``         unique; what feedback and explanations refer to
``time``                  when the prediction was made (UTC, microseconds)
``model``, ``version``    the version that answered
``mode``                  realtime, batch, stream, edge or library
``unit_id``               the unit of assignment (A/B analysis), when the request gave one
``request_id``            the caller's request id (OIP ``id``)
``deployment``            the deployment addressed, once deployments exist
``variant``               the experiment arm or canary side that served
``source_id``             where the inputs came from: a stream message id
``latency_ms``            time spent in the path for the request or chunk
``warnings``              what was odd about the row though it was predicted (null: nothing), as
                          ``out_of_range:<feature>`` for a value outside the feature's observed
                          range under the ``warn`` range policy
``in.<feature>``          the validated inputs, after the record policy
``out.<output>``          the outputs; 2-D ones as fixed-size lists
========================  =======================================================================

A :class:`RecordPolicy` sits between the request and the writers: it sees each batch of records
before anything is stored and may drop, mask or pseudonymise fields, or drop the batch. The
identity policy is the default; privacy policies plug in here and so hold in every mode.

Two writers share the file layout (``records/model=NAME/date=YYYY-MM-DD/*.parquet``): the
asynchronous bounded writer (server, stream: never blocks a prediction, counts what it drops) and
the keyed writer (batch chunks, stream redeliveries: a file named by its key, so writing the same
key again replaces its records instead of adding to them).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from berth.runtime.codecs import InputBlock
from berth.runtime.validation import out_of_range

if TYPE_CHECKING:
    import asyncio

    import pyarrow as pa

    from berth.registry.signature import Signature
    from berth.runtime.record_writers import KeyedRecordWriter, QueuedRecordWriter
    from berth.runtime.routing import Target
    from berth.runtime.validation import OutOfRange
    from berth.types import Outputs

MODES = ("realtime", "batch", "stream", "edge", "library")


def record_schema() -> pa.Schema:
    """The declared fixed columns, in order; ``in.*`` and ``out.*`` follow per version."""
    import pyarrow as pa

    return pa.schema(
        [
            ("prediction_id", pa.string()),
            ("time", pa.timestamp("us", tz="UTC")),
            ("model", pa.string()),
            ("version", pa.int32()),
            ("mode", pa.string()),
            ("unit_id", pa.string()),
            ("request_id", pa.string()),
            ("deployment", pa.string()),
            ("variant", pa.string()),
            ("source_id", pa.string()),
            ("latency_ms", pa.float32()),
            ("warnings", pa.list_(pa.string())),
        ]
    )


@dataclass(slots=True)
class RecordBatch:
    """The records of one request (or one chunk of a batch job), as the path saw them. Built by
    :class:`RecordProducer` only, one per request, and never changed after (a policy returns a
    copy: :meth:`with_inputs`). Not a frozen dataclass: its ``__init__`` sets each field through
    ``object.__setattr__``, 2 µs a request against 0.5 µs with slots."""

    model: str
    version: int
    mode: str
    prediction_ids: Sequence[str] | pa.Array
    """A list, or for big batches a pyarrow string array (made without a Python string per
    row)."""
    inputs: Mapping[str, Any]
    """The validated inputs: column arrays (numpy, or Arrow for a batch job's text), or an
    :class:`InputBlock`."""
    outputs: Outputs
    latency_ms: float
    unit_id: str | None = None
    request_id: str | None = None
    deployment: str | None = None
    variant: str | None = None
    source_id: str | None = None
    warnings: OutOfRange | None = None
    """The rows' warnings (one per row, or None when no row has any)."""
    ranges: Signature | None = None
    """Warnings still to find: the signature whose observed ranges the writer checks these
    (validated, unchanged) inputs against, for every batch of a flush in one comparison; one
    check per request cost more than the rest of its record."""
    at: float = field(default_factory=time.time)

    @property
    def rows(self) -> int:
        return len(self.prediction_ids)

    def with_inputs(self, inputs: Mapping[str, Any]) -> RecordBatch:
        """A copy with other inputs: what a policy returns after masking or dropping fields."""
        return replace(self, inputs=inputs)


class RecordPolicy(Protocol):
    """Applied to every batch of records before it is stored, in every mode. Returns the
    batch to store (the same, or changed with :meth:`RecordBatch.with_inputs`), or None to
    store nothing. Runs on the request path: keep it cheap and column-wise."""

    def apply(self, batch: RecordBatch) -> RecordBatch | None: ...


class KeepAll:
    """The identity policy: records keep the validated inputs as they are."""

    def apply(self, batch: RecordBatch) -> RecordBatch | None:
        return batch


class RecordProducer:
    """Builds each record batch once, applies the policy, and hands it to a writer."""

    def __init__(
        self,
        root: Path,
        *,
        queued: QueuedRecordWriter | None = None,
        keyed: KeyedRecordWriter | None = None,
        policy: RecordPolicy | None = None,
    ) -> None:
        from berth.runtime.record_writers import KeyedRecordWriter, QueuedRecordWriter

        self.root = root
        self.queued = queued or QueuedRecordWriter(root)
        self.keyed = keyed or KeyedRecordWriter(root)
        self.policy: RecordPolicy = policy or KeepAll()

    def start(self) -> None:
        self.queued.start()

    def close(self) -> None:
        self.queued.close()
        self.keyed.close()

    def produce(
        self,
        target: Target,
        *,
        mode: str,
        prediction_ids: Sequence[str] | pa.Array,
        inputs: Mapping[str, Any],
        outputs: Outputs,
        latency_ms: float,
        key: str | None = None,
    ) -> Future[None] | asyncio.Future[None] | None:
        """Record one request's or chunk's predictions. Without ``key`` the batch is queued
        (never blocking; dropped and counted when the queue is full) and None is returned; in
        durable mode it goes to the local log and the future returned (an asyncio one when
        called on an event loop) is done once it is on disk: the request is answered after
        that. With ``key`` it is written as the file ``key``, replacing an earlier one of the
        same key, in the keyed writer's thread; the future completes once the file is in
        place."""
        context = target.context
        batch: RecordBatch | None = RecordBatch(
            model=target.model,
            version=target.version,
            mode=mode,
            prediction_ids=prediction_ids,
            inputs=inputs,
            outputs=outputs,
            latency_ms=latency_ms,
            unit_id=context.unit_id,
            request_id=context.request_id,
            deployment=target.deployment or context.deployment,
            variant=target.variant,
            source_id=context.source_id,
            ranges=target.info.signature,
        )
        assert batch is not None
        batch = self.policy.apply(batch)
        if batch is not None and batch.ranges is not None and batch.inputs is not inputs:
            # The policy changed the inputs: their warnings are those of the validated ones.
            batch = replace(batch, warnings=out_of_range(batch.ranges, inputs), ranges=None)
        if key is not None:
            return self.keyed.submit(batch, key, target.model)
        if batch is None:
            return None
        queued = self.queued
        queued.start()  # a sync caller may never have started it: the first record does
        if queued.durable:
            return queued.commit(batch)
        queued.record(batch)
        return None

    def discard(self, model: str, key_prefix: str) -> int:
        """Remove the keyed files of ``model`` whose key starts with ``key_prefix`` (a batch job
        given up): how many were removed."""
        return self.keyed.remove(model, key_prefix)


_FIXED = ("prediction_id", "time", "warnings")
"""Columns built per row; every other declared column holds one value per batch."""


def to_table(group: list[RecordBatch]) -> pa.Table:
    """One Arrow table of the declared schema from batches of one model version's records.

    Built column by column in C wherever it can be: a writer flush joins thousands of one-row
    requests, and every Python object made per request here is GIL time taken from the event
    loop. A value shared by every batch (the model, the mode, an unset unit id) is one repeated
    scalar; one that differs is one Arrow array of a value per batch, spread over the rows by
    one ``take``."""
    import numpy as np
    import pyarrow as pa

    from berth.runtime.arrow import to_arrow
    from berth.runtime.outputs import to_record_columns

    schema = _declared()
    counts = [b.rows for b in group]
    total = sum(counts)
    spread: pa.Array | None = None  # batch index of each row, when batches hold several rows
    if len(group) > 1 and total != len(group):
        spread = pa.array(np.repeat(np.arange(len(group)), counts))

    def per_batch(values: list[Any], kind: pa.DataType) -> pa.Array:
        first = values[0]
        if values.count(first) == len(values):
            if first is None:
                return pa.nulls(total, type=kind)
            return pa.repeat(_scalar(first, kind), total)
        array = pa.array(values, type=kind)
        return array if spread is None else array.take(spread)

    at = np.array([b.at for b in group]) * 1e6
    micros = (at if total == len(group) else np.repeat(at, counts)).astype(np.int64)
    columns: dict[str, Any] = {
        "prediction_id": _prediction_ids(group),
        # From the buffer: pa.array's conversion to a zoned timestamp costs 4x as much.
        "time": pa.Array.from_buffers(
            schema.field("time").type, total, [None, pa.py_buffer(micros)]
        ),
    }
    for name in schema.names:
        if name not in _FIXED:
            values = [getattr(b, name) for b in group]
            columns[name] = per_batch(values, schema.field(name).type)
    columns["warnings"] = None  # (in its place among the columns; found from the joined inputs)

    # Plain numpy per column: concatenating hundreds of one-row DataFrames would hold the GIL
    # for a noticeable pause of every request in flight.
    def joined(arrays: list[Any]) -> Any:
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    first = group[0].inputs
    if isinstance(first, InputBlock) and all(
        isinstance(b.inputs, InputBlock) and b.inputs.names == first.names for b in group
    ):
        # One copy into feature-major order (each request's block transposed as it is joined:
        # ten times faster than transposing the joined block), then each feature is a
        # contiguous row that Arrow takes without copying again.
        blocks = [b.inputs.array.T for b in group]  # type: ignore[attr-defined]
        # Into a C-ordered block: concatenating transposed blocks gives a Fortran-ordered one,
        # which reshape(-1) would copy again (7x the concatenation's time).
        block = np.empty((len(first.names), total), dtype=blocks[0].dtype)
        np.concatenate(blocks, axis=1, out=block)
        # One Arrow array over the whole block, sliced per feature (a slice is a view): one
        # conversion instead of one per feature, which a durable log's small commits noticed.
        flat = pa.array(block.reshape(-1))
        for j, name in enumerate(first.names):
            columns[f"in.{name}"] = flat.slice(j * total, total)
        every: Mapping[str, Any] | None = InputBlock(first.names, block.T)
    else:
        every = {name: joined([b.inputs[name] for b in group]) for name in first}
        for name, values in every.items():
            columns[f"in.{name}"] = to_arrow(values)
        if not all(isinstance(v, np.ndarray) for v in every.values()):
            every = None  # Arrow columns (a batch job's text): checked per batch
    columns["warnings"] = _warnings(group, total, every)
    outputs = {name: joined([b.outputs[name] for b in group]) for name in group[0].outputs}
    columns.update(to_record_columns(outputs))
    return pa.table(columns)


@functools.lru_cache(maxsize=256)
def _scalar(value: Any, kind: pa.DataType) -> pa.Scalar:
    """A model's name, version or mode as a scalar, made once."""
    import pyarrow as pa

    return pa.scalar(value, type=kind)


@functools.cache
def _declared() -> pa.Schema:
    """:func:`record_schema`, made once (an Arrow schema is immutable)."""
    return record_schema()


def _warnings(group: list[RecordBatch], total: int, joined: Mapping[str, Any] | None) -> pa.Array:
    """The ``warnings`` column: null for the rows of batches without any (the common case).
    The ranges of a group of one version are checked once, on its ``joined`` inputs."""
    import pyarrow as pa

    kind = pa.list_(pa.string())
    signature = group[0].ranges
    if signature is not None and joined is not None and all(b.ranges is signature for b in group):
        found = out_of_range(signature, joined)
        return pa.nulls(total, type=kind) if found is None else found.to_arrow()
    found_each = [
        b.warnings if b.ranges is None else out_of_range(b.ranges, b.inputs) for b in group
    ]
    if all(w is None for w in found_each):
        return pa.nulls(total, type=kind)
    return pa.concat_arrays(
        [
            pa.nulls(b.rows, type=kind) if w is None else w.to_arrow()
            for b, w in zip(group, found_each, strict=True)
        ]
    )


def _prediction_ids(group: list[RecordBatch]) -> pa.Array:
    import itertools

    import pyarrow as pa

    ids = [b.prediction_ids for b in group]
    if all(isinstance(i, list) for i in ids):
        flat = ids[0] if len(ids) == 1 else list(itertools.chain.from_iterable(ids))
        return pa.array(flat, type=pa.string())
    arrays = [
        (i if i.type == pa.string() else i.cast(pa.string()))
        if isinstance(i, pa.Array)
        else pa.array(i, type=pa.string())
        for i in ids
    ]
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)
