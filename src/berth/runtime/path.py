"""The one inference path: resolve -> validate -> micro-batch -> predict -> record -> metrics.

Every deployment mode calls :meth:`InferencePath.infer`; an adapter only decodes its transport's
input into a frame and encodes the result back.

The :class:`ModelPool` keeps loaded versions and an in-memory routing table of aliases, so a request
never waits on the metadata database. A poller follows alias moves: when ``production`` moves from
v1 to v2, v2 is loaded in the background, the route switches atomically once it is ready, and v1
is unloaded after its queued requests finish. Requests that resolved to v1 before the switch still
complete on v1, so a switch fails no request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from berth.errors import (
    BerthError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from berth.registry.references import LATEST, Reference, check_alias, is_number
from berth.runtime.batching import (
    TABULAR_DEFAULT,
    TEXT_DEFAULT,
    BatchingConfig,
    MicroBatcher,
)
from berth.runtime.loading import LoadedModel, load_version
from berth.runtime.records import RecordBatch, RecordWriter
from berth.runtime.validation import validate_columns

if TYPE_CHECKING:
    import pandas as pd

    from berth.registry.service import Registry, VersionInfo
    from berth.runtime.codecs import Columns
    from berth.runtime.metrics import Metrics
    from berth.types import Outputs

log = logging.getLogger("berth.path")
DEFAULT_ALIAS = "production"
_TEXT_FLAVORS = ("sentence_transformers", "transformers")


@dataclass(frozen=True)
class ServingConfig:
    """How one model is served. Unset batching takes the flavor's default."""

    batching: BatchingConfig | None = None
    record: bool = True
    """Write prediction records for this model (turn off for models whose inputs must not be
    kept at all)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ServingConfig:
        known = {"max_batch_size", "max_latency_ms", "target_p99_ms", "record"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        batching = None
        if {"max_batch_size", "max_latency_ms", "target_p99_ms"} & set(data):
            try:
                batching = BatchingConfig(
                    max_batch_size=int(data.get("max_batch_size", 1)),
                    max_latency_ms=float(data.get("max_latency_ms", 0.0)),
                    target_p99_ms=(
                        float(data["target_p99_ms"]) if data.get("target_p99_ms") else None
                    ),
                )
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"{where}: {exc}") from exc
            if batching.max_batch_size < 1 or batching.max_latency_ms < 0:
                raise InvalidInputError(f"{where}: batch size must be >= 1, latency >= 0")
        return cls(batching=batching, record=bool(data.get("record", True)))


@dataclass
class ServedModel:
    """A loaded version with its own single inference thread and (optional) micro-batcher."""

    info: VersionInfo
    loaded: LoadedModel
    config: ServingConfig
    batching: BatchingConfig
    executor: ThreadPoolExecutor
    batcher: MicroBatcher | None = None
    inflight: int = 0

    async def predict(self, frame: pd.DataFrame) -> Outputs:
        if self.batcher is not None:
            return await self.batcher.submit(frame)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.loaded.predict_validated, frame)

    async def close(self) -> None:
        while self.inflight:
            await asyncio.sleep(0.01)
        if self.batcher is not None:
            await self.batcher.close()
        self.executor.shutdown(wait=False)


@dataclass
class Decoded:
    """What an adapter decoded from its transport once it knew the version's signature."""

    frame: pd.DataFrame | Columns
    unit_id: str | None = None


@dataclass
class PathResult:
    served: ServedModel
    outputs: Outputs
    prediction_ids: list[str]
    latency_ms: float

    @property
    def info(self) -> VersionInfo:
        return self.served.info


@dataclass
class LoadState:
    """What a client sees of a version: ready, loading, or failed with the reason."""

    state: str
    reason: str | None = None
    task: asyncio.Task[ServedModel] | None = field(default=None, repr=False)


class ModelPool:
    def __init__(
        self,
        registry: Registry,
        *,
        configs: Mapping[str, ServingConfig] | None = None,
        metrics: Metrics | None = None,
        poll_interval_s: float = 2.0,
        thread_init: Callable[[VersionInfo], None] | None = None,
    ) -> None:
        self.registry = registry
        self.thread_init = thread_init
        self.configs = dict(configs or {})
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.routes: dict[tuple[str, str], int] = {}
        self.served: dict[tuple[str, int], ServedModel] = {}
        self.states: dict[tuple[str, int], LoadState] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        self._latest: dict[str, tuple[int, float]] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, warm: bool = True) -> None:
        """Learn every alias; load their versions (``warm``); then follow alias moves."""
        self._closing = False
        routes = await asyncio.to_thread(self._alias_routes)
        self.routes.update(routes)
        if warm:
            await asyncio.gather(
                *(self._ensure(name, v) for (name, _), v in routes.items()),
                return_exceptions=True,
            )
        if self.poll_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        """Unload everything. The pool may be started again (an ASGI host may run an app's
        lifespan twice): nothing closed is kept."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        served = list(self.served.values())
        self.served.clear()
        self.states.clear()
        self.routes.clear()
        self._latest.clear()
        await asyncio.gather(*(s.close() for s in served), return_exceptions=True)

    @property
    def ready(self) -> bool:
        """Every aliased version has finished loading (successfully or not)."""
        wanted = {(name, v) for (name, _), v in self.routes.items()}
        return all(key in self.states and self.states[key].state != "loading" for key in wanted)

    # -- routing -------------------------------------------------------------------------------

    async def get(self, name: str, selector: str | None) -> ServedModel:
        """The served version for ``name`` and a version number, an alias, or None (the
        ``production`` alias if there is one, else the newest version)."""
        number = await self.route(name, selector)
        return await self._ensure(name, number)

    async def route(self, name: str, selector: str | None) -> int:
        """The version number a request for ``name`` and ``selector`` goes to; NotFoundError
        when there is no such model, version or alias."""
        if selector is not None and is_number(selector):
            number = int(selector)
            if (name, number) not in self.served:
                await asyncio.to_thread(self.registry.resolve, Reference(name, version=number))
            return number
        if selector is not None and selector != LATEST:
            check_alias(selector)
        alias = selector or DEFAULT_ALIAS
        found = self.routes.get((name, alias))
        if found is not None:
            return found
        if selector is None or selector == LATEST:
            return await self._latest_version(name)
        info = await asyncio.to_thread(self.registry.resolve, Reference(name, alias=alias))
        self.routes[(name, alias)] = info.version
        return info.version

    async def _latest_version(self, name: str) -> int:
        """The newest version, looked up at most once per poll interval per model, so that
        requests for a model without a production alias do not each query the database."""
        now = time.monotonic()
        cached = self._latest.get(name)
        if cached is not None and cached[1] > now:
            return cached[0]
        info = await asyncio.to_thread(self.registry.resolve, Reference(name, alias=LATEST))
        self._latest[name] = (info.version, now + max(self.poll_interval_s, 1.0))
        return info.version

    async def _ensure(self, name: str, version: int) -> ServedModel:
        key = (name, version)
        served = self.served.get(key)
        if served is not None:
            return served
        state = self.states.get(key)
        if state is not None and state.state == "failed":
            raise UnavailableError(f"{name}/{version} is not ready: {state.reason}")
        if state is None or state.task is None:
            task = asyncio.get_running_loop().create_task(self._load(name, version))
            state = LoadState("loading", task=task)
            self.states[key] = state
        assert state.task is not None
        return await asyncio.shield(state.task)

    async def _load(self, name: str, version: int) -> ServedModel:
        key = (name, version)
        try:
            loaded = await asyncio.to_thread(self._load_blocking, name, version)
        except (NotFoundError, InvalidInputError):
            self.states.pop(key, None)  # the request's mistake, not the version's: keep no state
            raise
        except BerthError as exc:
            self.states[key] = LoadState("failed", str(exc))
            log.error("loading %s/%s failed: %s", name, version, exc)
            raise UnavailableError(f"{name}/{version} is not ready: {exc}") from exc
        except Exception as exc:  # a framework failing to load its own file
            self.states[key] = LoadState("failed", f"{type(exc).__name__}: {exc}")
            log.exception("loading %s/%s failed", name, version)
            raise UnavailableError(f"{name}/{version} is not ready: {exc}") from exc
        # A loaded model is hundreds of thousands of long-lived objects; left in the collected
        # generations, each full collection walked them all (a 260-350 ms pause in p99).
        gc.freeze()
        served = self._serve(loaded)
        self.served[key] = served
        self.states[key] = LoadState("ready")
        if self.metrics is not None:
            self.metrics.load_seconds.labels(name, str(version)).set(loaded.load_seconds)
        log.info("loaded %s/%s in %.2fs", name, version, loaded.load_seconds)
        return served

    def _load_blocking(self, name: str, version: int) -> LoadedModel:
        return load_version(self.registry, f"{name}/{version}")

    def _serve(self, loaded: LoadedModel) -> ServedModel:
        info = loaded.version
        config = self.configs.get(info.model, ServingConfig())
        batching = config.batching or (
            TEXT_DEFAULT if info.flavor in _TEXT_FLAVORS else TABULAR_DEFAULT
        )
        # The version's one inference thread; thread pool sizes (OpenMP's among them) are set
        # per thread, so they are set in this thread, once, before its first prediction.
        init = self.thread_init
        executor = ThreadPoolExecutor(
            1,
            thread_name_prefix=f"predict-{info.model}-{info.version}",
            initializer=(lambda: init(info)) if init is not None else None,
        )
        served = ServedModel(info, loaded, config, batching, executor)
        if batching.enabled:
            on_batch = None
            if self.metrics is not None:
                histogram = self.metrics.batch_size.labels(info.model, str(info.version))
                on_batch = histogram.observe
            served.batcher = MicroBatcher(loaded.predict_validated, batching, executor, on_batch)
        return served

    def status(self, name: str, version: int) -> LoadState | None:
        return self.states.get((name, version))

    # -- following alias moves -----------------------------------------------------------------

    def _alias_routes(self) -> dict[tuple[str, str], int]:
        return {
            (m.name, alias): version
            for m in self.registry.list_models()
            for alias, version in m.aliases.items()
        }

    async def _poll(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.refresh()
            except Exception:  # the poller must outlive a database hiccup
                log.exception("refreshing aliases failed")

    async def refresh(self) -> None:
        """Apply alias moves: load the new target first, then switch, then unload the old."""
        current = await asyncio.to_thread(self._alias_routes)
        left: set[tuple[str, int]] = set()
        for key, version in current.items():
            before = self.routes.get(key)
            if before == version:
                continue
            try:
                await self._ensure(key[0], version)
            except BerthError as exc:
                log.error("alias %s@%s -> %s not switched: %s", *key, version, exc)
                continue
            self.routes[key] = version  # the switch: one dict assignment, atomic for requests
            log.info("alias %s@%s switched %s -> %s", key[0], key[1], before, version)
            if before is not None:
                left.add((key[0], before))
        for key in [k for k in self.routes if k not in current]:
            left.add((key[0], self.routes.pop(key)))
        await self._unload(left)

    async def _unload(self, candidates: set[tuple[str, int]]) -> None:
        """Unload versions an alias just moved away from, unless another alias still points at
        them. Versions asked for by number stay loaded."""
        routed = {(name, v) for (name, _), v in self.routes.items()}
        for key in [k for k in candidates - routed if k in self.served]:
            served = self.served.pop(key)
            self.states.pop(key, None)
            await served.close()
            log.info("unloaded %s/%s", *key)


class InferencePath:
    def __init__(
        self,
        pool: ModelPool,
        recorder: RecordWriter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.recorder = recorder
        self.metrics = metrics

    async def infer(
        self,
        name: str,
        selector: str | None,
        data: pd.DataFrame | Columns | Callable[[ServedModel], Decoded],
        *,
        unit_id: str | None = None,
        mode: str = "realtime",
    ) -> PathResult:
        """Predict for a frame, or for what a decoder makes of the request once the version (and
        so the signature) is known; a decoded unit id wins over ``unit_id``."""
        started = time.perf_counter()
        served = await self.pool.get(name, selector)
        served.inflight += 1
        labels = (served.info.model, str(served.info.version))
        try:
            if callable(data):
                decoded = data(served)
                raw, unit_id = decoded.frame, decoded.unit_id or unit_id
            else:
                raw = data
            batch, columns = validate_columns(served.info.signature, raw)
            outputs = await served.predict(batch)
        except Exception:
            if self.metrics is not None:
                self.metrics.requests.labels(*labels, "error").inc()
            raise
        finally:
            served.inflight -= 1
        latency_ms = (time.perf_counter() - started) * 1000.0
        ids = new_prediction_ids(len(batch))
        if served.batcher is not None:
            served.batcher.latency.observe(latency_ms)
        if self.recorder is not None and served.config.record:
            self.recorder.record(
                RecordBatch(
                    served.info.model,
                    served.info.version,
                    mode,
                    ids,
                    columns,
                    outputs,
                    latency_ms,
                    unit_id,
                )
            )
        if self.metrics is not None:
            self.metrics.requests.labels(*labels, "ok").inc()
            self.metrics.rows.labels(*labels).inc(len(batch))
            self.metrics.latency.labels(*labels).observe(latency_ms / 1000.0)
        return PathResult(served, outputs, ids, latency_ms)


def new_prediction_ids(rows: int) -> list[str]:
    """Unique ids, cheap for big batches: one random base per call plus the row number."""
    base = uuid.uuid4().hex
    if rows == 1:
        return [base]
    return [f"{base}-{i}" for i in range(rows)]
