"""The one inference path: resolve, then run (validate -> predict -> record -> metrics).

Every mode calls it; an adapter decodes its transport's envelope, resolves, decodes the inputs
against the target's signature, runs, and encodes the result back::

    target = await path.resolve("credit-risk@production", RequestContext(unit_id="u-42"))
    result = await path.run(target, columns, mode="realtime")

``resolve`` and ``run`` have an async face (the server, stream consumers) and a sync face
(``resolve_sync``, ``run_sync``: batch jobs, the CLI, the Python API) over the same steps; only
the call to the predictor differs (the version's inference thread and micro-batcher, or the
calling thread, or a :class:`Backend` such as Ray workers).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from berth.config import PathOptions, RequestLimits
from berth.errors import (
    DeadlineExceededError,
    InvalidInputError,
    TooLargeError,
)
from berth.flavors import get_flavor
from berth.registry import access
from berth.registry.references import Reference, parse_reference
from berth.runtime.codecs import InputBlock
from berth.runtime.envelope import NO_CONTEXT, RequestContext
from berth.runtime.limits import cut_texts, long_texts, too_long
from berth.runtime.pool import LoadState, ModelPool, ServedModel
from berth.runtime.routing import Choice, Resolver, Target, TrafficStrategy
from berth.runtime.validation import check_columns, one_numeric_dtype, validate_columns

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from berth.registry.service import Registry, VersionInfo
    from berth.registry.signature import Signature
    from berth.runtime.codecs import Columns
    from berth.runtime.metrics import Metrics
    from berth.runtime.records import RecordProducer
    from berth.types import Outputs

BadRows = Literal["raise", "refuse"]
_NONE = np.empty(0, dtype=np.intp)


@dataclass
class Validated:
    """Inputs checked against the target's signature: the rows to predict on, and (with
    ``bad_rows="refuse"``) the rows refused with their reasons."""

    frame: pd.DataFrame
    record_inputs: Mapping[str, Any]
    """The validated inputs as the records keep them."""
    rows_in: int
    kept: np.ndarray[Any, Any] | None
    """Positions of the predicted rows among the inputs; None when every row was kept."""
    bad_rows: np.ndarray[Any, Any]
    reasons: list[str]
    truncated: np.ndarray[Any, Any] = field(default_factory=lambda: _NONE)
    """Positions (among the predicted rows) of texts cut at the limit's ``max_text_chars``."""

    @property
    def rows(self) -> int:
        return len(self.frame)

    @classmethod
    def nothing(cls, signature: Signature) -> Validated:
        """No rows at all (a chunk whose every row failed to decode)."""
        import pandas as pd

        columns = {f.name: np.empty(0, dtype=object) for f in signature.inputs}
        return cls(pd.DataFrame(columns), columns, 0, None, _NONE, [])


@dataclass
class Result:
    target: Target
    outputs: Outputs
    prediction_ids: Sequence[str] | pa.Array
    latency_ms: float
    validated: Validated
    recorded: Future[None] | asyncio.Future[None] | None = None
    """For a keyed record write, or a durable record: done once the records are on disk."""

    @property
    def info(self) -> VersionInfo:
        return self.target.info

    @property
    def parameters(self) -> dict[str, Any]:
        """What a response says beside the predictions: which texts were cut."""
        if not len(self.validated.truncated):
            return {}
        return {"truncated": self.validated.truncated.tolist()}


class Backend(Protocol):
    """Where the sync face's predictions run: here, or on a cluster (the Ray engine). Gets
    validated frames of one version and returns their outputs in order."""

    def predict(self, info: VersionInfo, frames: list[pd.DataFrame]) -> list[Outputs]: ...


class InferencePath:
    def __init__(
        self,
        registry: Registry,
        options: PathOptions | None = None,
        *,
        records: RecordProducer | None = None,
        metrics: Metrics | None = None,
        strategies: dict[str, TrafficStrategy] | None = None,
        configure_threads: bool = True,
    ) -> None:
        self.registry = registry
        self.options = options or PathOptions()
        self.resolver = Resolver(
            registry,
            latest_ttl_s=max(self.options.poll_interval_s, 1.0),
            strategies=strategies,
        )
        self.pool = ModelPool(
            registry,
            self.resolver,
            self.options,
            metrics=metrics,
            configure_threads=configure_threads,
        )
        self.records = records if self.options.record else None
        self.metrics = metrics
        self.local = LocalBackend(self.pool)
        self._limits: dict[tuple[str, int], RequestLimits] = {}

    # -- lifecycle and status ------------------------------------------------------------------

    async def start(self, *, warm: bool = True) -> None:
        """Start the record writer, load every aliased version (``warm``) and follow alias
        moves. A path may be started again after :meth:`close`."""
        if self.records is not None:
            self.records.start()
        await self.pool.start(warm=warm)

    async def close(self) -> None:
        """Let queued requests finish, unload everything, write the records still queued."""
        await self.pool.close()
        if self.records is not None:
            await asyncio.to_thread(self.records.close)

    def close_sync(self) -> None:
        """For the sync face: wait for keyed record writes and flush queued ones."""
        if self.records is not None:
            self.records.close()

    @property
    def ready(self) -> bool:
        return self.pool.ready

    def status(self, model: str, version: int) -> LoadState | None:
        return self.pool.status(model, version)

    def loaded(self) -> dict[tuple[str, int], LoadState]:
        """Every version this path has loaded, is loading, or failed to load."""
        return dict(self.pool.states)

    def queue_depths(self) -> dict[tuple[str, int], int]:
        """Requests waiting in each micro-batched version's queue."""
        return {
            key: served.batcher.depth
            for key, served in list(self.pool.served.items())
            if served.batcher is not None
        }

    @property
    def records_queued(self) -> int:
        return self.records.queued.depth if self.records is not None else 0

    # -- resolve -------------------------------------------------------------------------------

    async def resolve(self, ref: str | Reference, context: RequestContext = NO_CONTEXT) -> Target:
        """The version that answers this request, loaded (the server never queries the
        database for an alias it knows)."""
        reference, choice = await self.route(ref, context)
        access.require("predict", reference.name)  # the one check of every mode's inference
        served = await self.pool.ensure(reference.name, choice.version)
        return Target(served.info, reference, context, choice.variant, choice.deployment)

    def authorize(self, ref: str | Reference) -> Reference:
        """``ref`` parsed, if the current principal may predict on it (else 401/403): for
        adapters that check before reading a request's body; ``resolve`` checks again."""
        reference = parse_reference(ref)
        access.require("predict", reference.name)
        return reference

    async def route(
        self, ref: str | Reference, context: RequestContext = NO_CONTEXT
    ) -> tuple[Reference, Choice]:
        """Which version would answer, without loading it (metadata and readiness queries)."""
        access.require("read")
        reference = parse_reference(ref)
        number = self.resolver.cached(reference)
        if number is None:
            number = await asyncio.to_thread(self.resolver.number, reference)
        return reference, self.resolver.choose(reference, number, context)

    async def describe(
        self, ref: str | Reference, context: RequestContext = NO_CONTEXT
    ) -> VersionInfo:
        """The version that would answer, without loading it, as the registry has it now (its
        aliases current): for metadata queries."""
        reference, choice = await self.route(ref, context)
        number = Reference(reference.name, version=choice.version)
        return await asyncio.to_thread(self.resolver.lookup, number)

    def resolve_sync(self, ref: str | Reference, context: RequestContext = NO_CONTEXT) -> Target:
        """The version that answers, asking the registry (no model is loaded yet)."""
        reference = parse_reference(ref)
        access.require("predict", reference.name)
        info = self.resolver.lookup(reference)
        choice = self.resolver.choose(reference, info.version, context)
        if choice.version != info.version:
            info = self.resolver.lookup(Reference(reference.name, version=choice.version))
        return Target(info, reference, context, choice.variant, choice.deployment)

    def load_sync(self, target: Target) -> None:
        """Load the target's version now, in the calling thread (before a job's first chunk,
        so a broken artifact fails before any scoring), and keep it until
        :meth:`release_sync`."""
        self.pool.loaded_now(target.info, hold=True)

    def release_sync(self, target: Target) -> None:
        """Unload what :meth:`load_sync` loaded (it loads again when next needed)."""
        self.pool.release_now(target.info)

    # -- run -----------------------------------------------------------------------------------

    def limits(self, info: VersionInfo) -> RequestLimits:
        """What one request to this version may ask: its flavor's limits with the serving
        config's for its model laid over them."""
        key = (info.model, info.version)
        found = self._limits.get(key)
        if found is None:
            default = get_flavor(info.flavor).limits
            found = self._limits[key] = self.options.serving(info.model).limits(default)
        return found

    def validate(self, target: Target, inputs: Any, bad_rows: BadRows = "raise") -> Validated:
        """Check decoded inputs (a DataFrame, named columns, an Arrow table) against the
        target's signature. ``raise``: the first bad value fails the whole request, naming the
        feature and row. ``refuse``: bad rows are set aside with their reasons. Texts over the
        version's ``max_text_chars`` are cut or refused as its limits say."""
        signature = target.info.signature
        limits = self.limits(target.info)
        if bad_rows == "raise":
            frame, columns = validate_columns(signature, inputs)
            long = long_texts(signature, columns, limits)
            if long and limits.long_text == "refuse":
                name, rows = next(iter(long.items()))
                raise too_long(target, name, int(rows[0]), columns[name], limits)
            truncated = cut_texts(frame, columns, long, limits)
            record = _record_inputs(signature, inputs, columns, None, frame, set(long))
            return Validated(frame, record, len(frame), None, _NONE, [], truncated)
        if bad_rows != "refuse":
            raise InvalidInputError(f"bad_rows must be 'raise' or 'refuse', not {bad_rows!r}")
        checked = check_columns(signature, inputs)
        frame, columns, kept_rows = checked.frame, checked.columns, checked.kept
        bad, reasons = checked.bad_rows, checked.reasons
        rows_in = len(kept_rows) + len(bad)
        long = long_texts(signature, columns, limits)
        if long and limits.long_text == "refuse":
            refused = np.unique(np.concatenate(list(long.values())))
            keep = np.ones(len(frame), dtype=bool)
            keep[refused] = False
            more = [
                str(too_long(target, n, int(r), columns[n], limits))
                for n, rs in long.items()
                for r in rs
            ]
            order = np.argsort(np.concatenate([bad, kept_rows[refused]]), kind="stable")
            bad = np.concatenate([bad, kept_rows[refused]])[order]
            reasons = [(reasons + more)[i] for i in order.tolist()]
            frame = frame[keep].reset_index(drop=True)
            columns = {name: values[keep] for name, values in columns.items()}
            kept_rows = kept_rows[keep]
            long = {}
        truncated = cut_texts(frame, columns, long, limits)
        kept = None if len(kept_rows) == rows_in else kept_rows
        record = _record_inputs(signature, inputs, columns, kept, frame, set(long))
        return Validated(frame, record, rows_in, kept, bad, reasons, truncated)

    def _check_rows(self, target: Target, validated: Validated) -> None:
        limit = self.limits(target.info).max_rows
        if validated.rows_in > limit:
            raise TooLargeError(
                f"{target.info.ref} takes at most {limit:,} rows a request and this one has "
                f"{validated.rows_in:,}: split it, or score a file with `berth batch run`"
            )

    async def run(
        self,
        target: Target,
        inputs: Any,
        *,
        bad_rows: BadRows = "raise",
        mode: str = "realtime",
        ids: Sequence[str] | pa.Array | None = None,
        record_key: str | None = None,
    ) -> Result:
        """Validate, predict on the version's inference thread (micro-batched where its
        settings say), record and count. ``ids`` (one per input row) replace the random
        prediction ids; ``record_key`` writes the records as that key's file (a redelivered
        stream message replaces its records), see :meth:`run_sync`."""
        started = time.perf_counter()
        served = await self.pool.ensure(target.model, target.version)
        served.inflight += 1
        try:
            validated = self._validated(target, inputs, bad_rows)
            self._check_rows(target, validated)
            outputs = await self._predict(target, served, validated) if validated.rows else {}
        except Exception:
            self._count_error(target)
            raise
        finally:
            served.inflight -= 1
        latency_ms = (time.perf_counter() - started) * 1000.0
        if served.batcher is not None:
            served.batcher.latency.observe(latency_ms)
        result = self._finish(
            target, validated, outputs, latency_ms, mode, ids, record_key, served.serving.record
        )
        if result.recorded is not None and record_key is None:
            await asyncio.wrap_future(result.recorded)  # durable records: answered once logged
        return result

    async def _predict(self, target: Target, served: ServedModel, validated: Validated) -> Outputs:
        """The prediction within the request's deadline: past it, the request is taken off
        its version's queue (or its result dropped when the call is under way)."""
        timeout = self.limits(target.info).timeout_s
        if timeout is None:
            return await served.predict(validated.frame)
        try:
            async with asyncio.timeout(timeout):
                return await served.predict(validated.frame)
        except TimeoutError:
            raise DeadlineExceededError(f"a request to {target.info.ref}", timeout) from None

    def run_sync(
        self,
        target: Target,
        inputs: Any,
        *,
        bad_rows: BadRows = "raise",
        mode: str = "library",
        ids: Sequence[str] | pa.Array | None = None,
        record_key: str | None = None,
        record: bool = True,
        backend: Backend | None = None,
    ) -> Result:
        """The sync face of :meth:`run`, predicting in the calling thread (or on ``backend``).
        With ``record_key`` the records are written as that key's file, replacing an earlier
        write of it (a batch chunk scored again), off the calling thread: wait for
        ``result.recorded`` before treating them as stored."""
        (result,) = self.run_window(
            target,
            [inputs],
            bad_rows=bad_rows,
            mode=mode,
            ids=[ids],
            record_keys=[record_key],
            record=record,
            backend=backend,
        )
        return result

    def run_window(
        self,
        target: Target,
        inputs: Sequence[Any],
        *,
        bad_rows: BadRows = "raise",
        mode: str = "batch",
        ids: Sequence[Sequence[str] | pa.Array | None] | None = None,
        record_keys: Sequence[str | None] | None = None,
        record: bool = True,
        backend: Backend | None = None,
    ) -> list[Result]:
        """Several inputs of one target at once: a backend that spreads work over a cluster
        predicts them in parallel. The results are in the inputs' order."""
        started = time.perf_counter()
        try:
            validated = [self._validated(target, item, bad_rows) for item in inputs]
            scorable = [v.frame for v in validated if v.rows]
            predicted = iter((backend or self.local).predict(target.info, scorable))
            outputs = [next(predicted) if v.rows else {} for v in validated]
        except Exception:
            self._count_error(target)
            raise
        latency_ms = (time.perf_counter() - started) * 1000.0 / max(1, len(inputs))
        ids = ids or [None] * len(inputs)
        keys = record_keys or [None] * len(inputs)
        return [
            self._finish(target, v, out, latency_ms, mode, i, key, record)
            for v, out, i, key in zip(validated, outputs, ids, keys, strict=True)
        ]

    # -- the steps both faces share --------------------------------------------------------------

    def _validated(self, target: Target, inputs: Any, bad_rows: BadRows) -> Validated:
        return inputs if isinstance(inputs, Validated) else self.validate(target, inputs, bad_rows)

    def _finish(
        self,
        target: Target,
        validated: Validated,
        outputs: Outputs,
        latency_ms: float,
        mode: str,
        ids: Sequence[str] | pa.Array | None,
        key: str | None,
        record: bool,
    ) -> Result:
        rows = validated.rows
        prediction_ids = new_prediction_ids(rows) if ids is None else _kept(ids, validated)
        if len(prediction_ids) != rows:
            raise InvalidInputError(f"{len(prediction_ids)} prediction ids for {rows} rows")
        recorded = None
        if record and self.records is not None and (rows or key is not None):
            recorded = self.records.produce(
                target,
                mode=mode,
                prediction_ids=prediction_ids,
                inputs=validated.record_inputs,
                outputs=outputs,
                latency_ms=latency_ms,
                key=key,
            )
        if self.metrics is not None:
            labels = (target.model, str(target.version))
            self.metrics.requests.labels(*labels, "ok").inc()
            self.metrics.rows.labels(*labels).inc(rows)
            self.metrics.latency.labels(*labels).observe(latency_ms / 1000.0)
        return Result(target, outputs, prediction_ids, latency_ms, validated, recorded)

    def _count_error(self, target: Target) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(target.model, str(target.version), "error").inc()


class LocalBackend:
    """Predictions in the calling thread, on the version loaded once per path."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def predict(self, info: VersionInfo, frames: list[pd.DataFrame]) -> list[Outputs]:
        if not frames:
            return []
        model = self.pool.loaded_now(info)
        return [model.predict_validated(frame) for frame in frames]


class _IdSource:
    """32 hex digits: 64 random bits drawn once per process, then a counter. Unique across
    processes and restarts like a UUID4, without a uuid4 (an urandom system call) per request:
    that was 5% of the event loop's time at 16 connections."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():  # a forked child must not repeat its parent's ids
            self._pid, self._prefix = os.getpid(), secrets.token_hex(8)
            self._counter = itertools.count()
        return f"{self._prefix}{next(self._counter):016x}"


_IDS = _IdSource()


def new_prediction_ids(rows: int) -> list[str]:
    """Unique ids, cheap for big batches: one base per call plus the row number."""
    base = _IDS.next()
    if rows == 1:
        return [base]
    return [f"{base}-{i}" for i in range(rows)]


def _kept(ids: Sequence[str] | pa.Array, validated: Validated) -> Sequence[str] | pa.Array:
    """The ids of the predicted rows, from ids given one per input row."""
    if len(ids) != validated.rows_in:
        raise InvalidInputError(f"{len(ids)} prediction ids for {validated.rows_in} input rows")
    if validated.kept is None:
        return ids
    if isinstance(ids, list | tuple):
        return [ids[i] for i in validated.kept.tolist()]
    import pyarrow as pa

    assert isinstance(ids, pa.Array)
    return ids.take(pa.array(validated.kept, type=pa.int64()))


def _record_inputs(
    signature: Any,
    inputs: Any,
    columns: Columns,
    kept: np.ndarray[Any, Any] | None,
    frame: pd.DataFrame,
    cut: set[str] | None = None,
) -> Mapping[str, Any]:
    """The validated inputs for the records. Columns of one numeric dtype go as a copy of the
    frame's one block (see ``InputBlock``). Text columns of an Arrow input go as the Arrow
    arrays they came in (validation does not change a string): making Arrow strings again from
    Python ones would hold the GIL that prediction needs. Texts that were ``cut`` go as cut,
    since the records keep what was predicted."""
    import sys

    arrays = list(columns.values())
    if len(arrays) > 1 and one_numeric_dtype(arrays):
        # A copy taken before the prediction: a predictor may write into its frame.
        return InputBlock(tuple(columns), frame.to_numpy().copy())
    pa = sys.modules.get("pyarrow")
    if pa is None or not isinstance(inputs, pa.Table):
        return columns
    record = dict(columns)
    rows = None if kept is None else pa.array(kept, type=pa.int64())
    for feature in signature.inputs:
        if feature.dtype != "string" or (cut and feature.name in cut):
            continue
        values = inputs.column(feature.name)
        kind = values.type
        if (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or pa.types.is_string_view(kind)
        ):
            record[feature.name] = values if rows is None else values.take(rows)
    return record
