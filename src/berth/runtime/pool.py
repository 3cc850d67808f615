"""Loaded versions: each with its own inference thread and micro-batcher, alias moves followed
without a restart, and a bounded number of versions no alias points at.

The pool keeps the resolver's alias table current. A poller follows alias moves: when
``production`` moves from v1 to v2, v2 is loaded in the background, the route switches atomically
once it is ready, and v1 is unloaded after its queued requests finish. Requests that resolved to
v1 before the switch still complete on v1, so a switch fails no request.

Aliased versions stay loaded. Any other version (asked for by number, or a bare name's newest
when the model has no ``production``) is loaded on demand, within a :class:`MemoryBudget`: at
most ``max_versions`` of them, and of their footprints (see :class:`Footprint`) at most
``max_bytes``. To make room, the least recently used one with nothing in flight is unloaded; when
every one is busy (requests in flight, or loading) the request gets a :class:`RetryLaterError`
(HTTP 503 with ``Retry-After``) instead of the server growing until it is killed. The decision
and the evictions happen in one step of the event loop, and a version is unloaded only while no
request holds it, so a request is either served or told to retry.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from berth.config import BatchingConfig, MemoryBudget, ModelServing, PathOptions
from berth.errors import (
    BerthError,
    InvalidInputError,
    NotFoundError,
    RetryLaterError,
    UnavailableError,
)
from berth.flavors import get_flavor
from berth.registry.references import Reference
from berth.runtime.batching import MicroBatcher
from berth.runtime.loading import (
    LoadedModel,
    bound_allocator,
    load_resolved,
    measured_load,
    release_memory,
    resident_bytes,
)

if TYPE_CHECKING:
    import pandas as pd

    from berth.registry.service import Registry, VersionInfo
    from berth.runtime.metrics import Metrics
    from berth.runtime.routing import Resolver
    from berth.types import Outputs

log = logging.getLogger("berth.path")

RETRY_FAILED_S = 30.0
"""A version that failed to load answers 503 at once for this long, then is loaded again on the
next request for it (a fault may have passed; a broken artifact fails again, cheaply)."""

RETRY_BUSY_S = 1.0
"""``Retry-After`` when every on-demand slot is busy: in-flight requests take milliseconds to
seconds, so a slot is likely free by then."""

_WAIT_ROUNDS = 3
"""How often a request tries again for a version unloaded between its load and its turn."""


INLINE_MAX_MS = 5.0
INLINE_MAX_ROWS = 64
LONE_STREAK = 8


@dataclass
class ServedModel:
    """A loaded version with its own single inference thread and (optional) micro-batcher.

    A lone request (nothing else in flight for this version) to a cheap tabular model runs on
    the event loop itself when ``inline`` is on: handing a 0.7 ms prediction to the inference
    thread and back (an executor submit, a thread wake-up, the GIL handed over twice, a future
    resolved across threads) costs more than waiting could gain, since there is nobody to batch
    with. Under concurrency a request now and then finds itself alone (the first to come back
    after a batch): run there, it would hold the loop while the others arrive, where the
    thread would have let the loop read them meanwhile; so only a request that follows
    ``LONE_STREAK`` lone ones runs inline. It stays on while such calls take under
    ``INLINE_MAX_MS`` (the median of the last 16; a model that turns out slower goes back to
    its thread after a few calls, or after one call over 100 ms), and only for requests of at most
    ``INLINE_MAX_ROWS`` rows, so the loop is never held for long."""

    info: VersionInfo
    loaded: LoadedModel
    serving: ModelServing
    batching: BatchingConfig
    executor: ThreadPoolExecutor
    batcher: MicroBatcher | None = None
    inflight: int = 0
    inline: bool = False
    on_batch: Callable[[int], None] | None = None
    inline_ms: deque[float] = field(default_factory=lambda: deque(maxlen=16))
    """The last inline calls' durations (ms), from the second on."""
    inline_calls: int = 0
    lone_streak: int = 0
    last_used: float = field(default_factory=time.monotonic)
    """When a request last asked for it (``time.monotonic``): the order of eviction."""
    closed: bool = False
    """Unloaded: set in the step that takes it out of the pool, while nothing is in flight."""

    @property
    def busy(self) -> bool:
        """A request holds it (validating, queued, predicting)."""
        return self.inflight > 0 or (self.batcher is not None and self.batcher.depth > 0)

    async def predict(self, frame: pd.DataFrame) -> Outputs:
        if self.closed:
            # A request holding a version across an await after the pool unloaded it: the
            # executor is gone, so say "retry" (a 503) rather than fail inside it (a 500).
            raise RetryLaterError(f"{self.info.ref} was unloaded; retry", RETRY_BUSY_S)
        if self.inline and len(frame) <= INLINE_MAX_ROWS:
            if self.inflight <= 1:
                # Requests that arrived with this one (read in the same turn of the loop) run up
                # to here first and count themselves; then this one is alone only if it still is.
                await asyncio.sleep(0)
            if self.inflight > 1:
                self.lone_streak = 0
            else:
                self.lone_streak += 1
                if self.lone_streak > LONE_STREAK:
                    return self._predict_inline(frame)
        if self.batcher is not None:
            return await self.batcher.submit(frame)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.loaded.predict_validated, frame)

    def _predict_inline(self, frame: pd.DataFrame) -> Outputs:
        started = time.perf_counter()
        try:
            return self.loaded.predict_validated(frame)
        finally:
            took = (time.perf_counter() - started) * 1000.0
            self.inline_calls += 1
            if self.inline_calls > 1:  # a first call pays for lazy set-up: it says nothing
                self.inline_ms.append(took)
            # The median, not a mean: a call that waited for the GIL while a writer thread
            # flushed (15 ms for a 0.7 ms model) says nothing of the model either.
            typical = sorted(self.inline_ms)[len(self.inline_ms) // 2] if self.inline_ms else 0.0
            if (len(self.inline_ms) >= 8 and typical > INLINE_MAX_MS) or took > 100.0:
                self.inline = False
                log.info(
                    "%s: lone requests go to the inference thread (%.1f ms a call)",
                    self.info.ref,
                    typical if took <= 100.0 else took,
                )
            if self.on_batch is not None:
                self.on_batch(len(frame))

    async def close(self) -> None:
        """Let the requests in flight finish, then stop the micro-batcher and the inference
        thread (joined off the event loop: it is idle by then)."""
        while self.inflight:
            await asyncio.sleep(0.01)
        self.closed = True
        if self.batcher is not None:
            await self.batcher.close()
        await asyncio.to_thread(self.executor.shutdown, True)


@dataclass(frozen=True)
class LoadState:
    """What a client sees of a version: ready, loading, or failed with the reason."""

    state: str
    reason: str | None = None
    task: asyncio.Task[ServedModel] | None = field(default=None, repr=False, compare=False)
    at: float = field(default_factory=time.monotonic, repr=False, compare=False)


@dataclass(frozen=True)
class Residency:
    """Why a version is in memory (for ``/v1/models``): ``aliases`` keep it loaded; without
    any it was loaded on demand and may be unloaded once idle, least recently used first."""

    model: str
    version: int
    state: str
    """``ready``, ``loading`` or ``failed``."""
    aliases: tuple[str, ...]
    in_flight: int = 0
    idle_s: float | None = None
    """Seconds since a request last asked for it."""
    memory_bytes: int | None = None
    """Its footprint (what the budget counts), once loaded."""
    resident_bytes: int | None = None
    artifact_bytes: int | None = None
    reason: str | None = None

    @property
    def on_demand(self) -> bool:
        return not self.aliases


class ModelPool:
    def __init__(
        self,
        registry: Registry,
        resolver: Resolver,
        options: PathOptions,
        *,
        metrics: Metrics | None = None,
        configure_threads: bool = True,
    ) -> None:
        self.registry = registry
        self.resolver = resolver
        self.options = options
        self.metrics = metrics
        self.configure_threads = configure_threads
        self.served: dict[tuple[str, int], ServedModel] = {}
        self.states: dict[tuple[str, int], LoadState] = {}
        self._direct: dict[tuple[str, int], LoadedModel] = {}
        self._holds: dict[tuple[str, int], int] = {}
        self._direct_lock = threading.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        self.budget: MemoryBudget = options.memory or MemoryBudget()
        self._wanted: set[tuple[str, int]] = set()
        """Versions the registry's aliases point at, routed or still loading for a move."""
        self._waiters: dict[tuple[str, int], int] = {}
        """Requests waiting for a version's load: it is theirs once loaded (not evictable)."""
        self._footprints: dict[tuple[str, int], int] = {}
        """Each version's last measured footprint, kept after an unload for the next load."""
        self._unloading: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, warm: bool = True) -> None:
        """Learn every alias; load their versions (``warm``); then follow alias moves."""
        self._closing = False
        bound_allocator()  # a server unloads versions: their memory must leave the process
        table = await asyncio.to_thread(self.resolver.read_aliases)
        self.resolver.set_aliases(table)
        self._wanted = _targets(table)
        if warm:
            await asyncio.gather(
                *(self.ensure(name, v) for (name, _), v in self.resolver.routes().items()),
                return_exceptions=True,
            )
        if self.options.poll_interval_s > 0:
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
        self._wanted = set()
        self._waiters.clear()
        self.resolver.forget()
        with self._direct_lock:
            self._direct.clear()
        unloading = list(self._unloading)
        await asyncio.gather(*(s.close() for s in served), *unloading, return_exceptions=True)
        del served
        release_memory()

    @property
    def ready(self) -> bool:
        """Every aliased version has finished loading (successfully or not)."""
        wanted = {(name, v) for (name, _), v in self.resolver.routes().items()}
        return all(key in self.states and self.states[key].state != "loading" for key in wanted)

    def status(self, name: str, version: int) -> LoadState | None:
        return self.states.get((name, version))

    # -- loading -------------------------------------------------------------------------------

    async def ensure(self, name: str, version: int) -> ServedModel:
        """The served version, loading it first (once, whoever asks meanwhile). A version no
        alias points at is loaded only within the budget, after unloading the least recently
        used idle one if needed. Raises :class:`RetryLaterError` when it cannot be loaded now
        (the budget's every slot busy, or its load failed within ``RETRY_FAILED_S``)."""
        served = self.served.get((name, version))
        if served is not None:
            served.last_used = time.monotonic()
            return served
        return await self._ensure_loaded((name, version))

    async def _ensure_loaded(self, key: tuple[str, int]) -> ServedModel:
        name, version = key
        for _ in range(_WAIT_ROUNDS):
            state = self.states.get(key)
            if state is not None and state.state == "failed":
                left = RETRY_FAILED_S - (time.monotonic() - state.at)
                if left > 0:
                    raise RetryLaterError(f"{name}/{version} is not ready: {state.reason}", left)
                state = None  # perhaps a passing fault (the artifact store, the database): again
            if state is None or state.task is None:
                self._make_room(key)
                task = asyncio.get_running_loop().create_task(self._load(name, version))
                state = LoadState("loading", task=task)
                self.states[key] = state
            assert state.task is not None
            self._waiters[key] = self._waiters.get(key, 0) + 1
            try:
                served = await asyncio.shield(state.task)
            finally:
                left_waiting = self._waiters.get(key, 0) - 1
                if left_waiting > 0:
                    self._waiters[key] = left_waiting
                else:
                    self._waiters.pop(key, None)
            # This step resumes after the load's: the version may have been unloaded between
            # (an alias moved away). The caller counts itself in flight in this same step.
            if self.served.get(key) is served and not served.closed:
                served.last_used = time.monotonic()
                return served
        raise RetryLaterError(
            f"{name}/{version} was unloaded while this request waited for it; retry",
            RETRY_BUSY_S,
        )

    # -- the budget of versions no alias points at ------------------------------------------------

    def aliased(self) -> dict[tuple[str, int], tuple[str, ...]]:
        """Each version an alias points at (in memory, or a move being loaded), with them."""
        found: dict[tuple[str, int], list[str]] = {}
        for (name, alias), version in self.resolver.routes().items():
            found.setdefault((name, version), []).append(alias)
        for key in self._wanted:
            found.setdefault(key, [])
        return {key: tuple(sorted(aliases)) for key, aliases in found.items()}

    def _on_demand(self, aliased: Mapping[tuple[str, int], object]) -> dict[tuple[str, int], int]:
        """The slots taken: every unaliased version loaded or loading, with its footprint
        (a loading one's as last measured, else 0)."""
        taken = {
            key: _bytes_of(served) for key, served in self.served.items() if key not in aliased
        }
        for key, state in self.states.items():
            if state.state == "loading" and key not in aliased and key not in taken:
                taken[key] = self._footprints.get(key, 0)
        return taken

    def _fits(self, taken: Mapping[tuple[str, int], int], need: int) -> bool:
        budget = self.budget
        if len(taken) >= budget.max_versions:
            return False
        # One version is always allowed, however large: none is unservable.
        return (
            budget.max_bytes is None or not taken or sum(taken.values()) + need <= budget.max_bytes
        )

    def _make_room(self, key: tuple[str, int]) -> None:
        """Before loading ``key``: unload least recently used idle unaliased versions until it
        fits, or raise :class:`RetryLaterError`. Synchronous on purpose: the check, the
        evictions and the caller's claim of the slot (its loading state) happen in one step."""
        aliased = self.aliased()
        if key in aliased:
            return
        need = self._footprints.get(key, 0)
        while True:
            taken = self._on_demand(aliased)
            if self._fits(taken, need):
                return
            victim = self._victim(aliased, keep=key)
            if victim is None:
                raise RetryLaterError(self._busy_message(key, taken), RETRY_BUSY_S)
            self._evict(victim, f"to make room for {key[0]}/{key[1]}")

    def _shrink(self, loaded: tuple[str, int]) -> None:
        """After a load, with its measured footprint: back within the byte budget if idle
        versions allow (the load itself stays; the next one waits for room)."""
        if self.budget.max_bytes is None:
            return
        aliased = self.aliased()
        while True:
            taken = self._on_demand(aliased)
            if len(taken) <= 1 or sum(taken.values()) <= self.budget.max_bytes:
                return
            victim = self._victim(aliased, keep=loaded)
            if victim is None:
                log.warning(
                    "on-demand versions hold %.0f MB, over the budget of %.0f MB, all busy",
                    sum(taken.values()) / 2**20,
                    self.budget.max_bytes / 2**20,
                )
                return
            self._evict(victim, f"to keep within the memory budget after {loaded[0]}/{loaded[1]}")

    def _victim(
        self, aliased: Mapping[tuple[str, int], object], keep: tuple[str, int]
    ) -> tuple[str, int] | None:
        """The least recently used unaliased version that nothing holds."""
        idle = [
            (served.last_used, key)
            for key, served in self.served.items()
            if key not in aliased and key != keep and not served.busy and key not in self._waiters
        ]
        return min(idle)[1] if idle else None

    def _evict(self, key: tuple[str, int], why: str) -> None:
        """Out of the pool now (new requests load it again); its batcher and thread stop in
        the background. Only for a version nothing holds, so ``closed`` is true at once."""
        served = self.served.pop(key)
        self.states.pop(key, None)
        served.closed = True
        task = asyncio.get_running_loop().create_task(self._release(served))
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)
        idle = time.monotonic() - served.last_used
        log.info("unloaded %s/%s %s (idle %.1fs)", key[0], key[1], why, idle)

    async def _release(self, served: ServedModel) -> None:
        await served.close()
        del served
        release_memory()

    def _busy_message(self, key: tuple[str, int], taken: Mapping[tuple[str, int], int]) -> str:
        budget = self.budget
        limit = f"at most {budget.max_versions} versions no alias points at"
        if budget.max_bytes is not None:
            limit += f", {budget.max_bytes / 2**20:.0f} MB of them"
        held = ", ".join(f"{name}/{v}" for name, v in sorted(taken))
        return (
            f"{key[0]}/{key[1]} cannot be loaded now: the versions loaded on demand ({held}) "
            f"all have requests in flight or are loading ({limit}, set by "
            "BERTH_MAX_UNALIASED_VERSIONS and BERTH_MAX_UNALIASED_MB); retry shortly"
        )

    def residency(self) -> list[Residency]:
        """What is loaded, loading or failed, and why it is in memory."""
        aliased = self.aliased()
        now = time.monotonic()
        out = []
        for key, state in list(self.states.items()):
            aliases = aliased.get(key, ())
            served = self.served.get(key)
            if served is None:
                out.append(Residency(*key, state.state, aliases, reason=state.reason))
                continue
            footprint = served.loaded.footprint
            out.append(
                Residency(
                    *key,
                    state.state,
                    aliases,
                    in_flight=served.inflight,
                    idle_s=max(0.0, now - served.last_used),
                    memory_bytes=None if footprint is None else footprint.bytes,
                    resident_bytes=None if footprint is None else footprint.resident_bytes,
                    artifact_bytes=None if footprint is None else footprint.artifact_bytes,
                )
            )
        return out

    @staticmethod
    def resident_bytes() -> int | None:
        """The process's resident set now (None where the platform does not tell)."""
        return resident_bytes()

    def loaded_now(self, info: VersionInfo, *, hold: bool = False) -> LoadedModel:
        """For the synchronous face: the version loaded in the calling thread (once per pool),
        or the served copy when the server already has it. ``hold`` keeps it loaded until as
        many :meth:`release_now` (a batch job holds its version while it runs)."""
        key = (info.model, info.version)
        served = self.served.get(key)
        if served is not None:
            return served.loaded
        with self._direct_lock:
            loaded = self._direct.get(key)
        if loaded is None:
            # Loaded outside the lock: another job's scoring must not wait for this load. Two
            # threads loading the same version at once both load it; the first one is kept.
            fresh = load_resolved(self.registry.store, info)
            with self._direct_lock:
                loaded = self._direct.setdefault(key, fresh)
        if hold:
            with self._direct_lock:
                self._holds[key] = self._holds.get(key, 0) + 1
        return loaded

    def release_now(self, info: VersionInfo) -> None:
        """Let go of a held version once nobody holds it: a long-lived client (the scheduler)
        must not keep every version it ever scored with."""
        key = (info.model, info.version)
        with self._direct_lock:
            left = self._holds.get(key, 0) - 1
            if left > 0:
                self._holds[key] = left
                return
            self._holds.pop(key, None)
            self._direct.pop(key, None)

    async def _load(self, name: str, version: int) -> ServedModel:
        key = (name, version)
        try:
            loaded = await asyncio.to_thread(self._load_blocking, name, version)
            served = self._serve(loaded)
        except (NotFoundError, InvalidInputError):
            self.states.pop(key, None)  # the request's mistake, not the version's: keep no state
            raise
        except BerthError as exc:
            self.states[key] = LoadState("failed", str(exc))
            log.error("loading %s/%s failed: %s", name, version, exc)
            raise RetryLaterError(f"{name}/{version} is not ready: {exc}", RETRY_FAILED_S) from exc
        except Exception as exc:  # a framework failing to load its own file
            self.states[key] = LoadState("failed", f"{type(exc).__name__}: {exc}")
            log.exception("loading %s/%s failed", name, version)
            raise RetryLaterError(f"{name}/{version} is not ready: {exc}", RETRY_FAILED_S) from exc
        # A loaded model is hundreds of thousands of long-lived objects; left in the collected
        # generations, each full collection walked them all (a 260-350 ms pause in p99).
        gc.freeze()
        if self._closing or self.states.get(key) is None:
            # The pool closed (or forgot this load) meanwhile: nobody will unload it later.
            await served.close()
            raise UnavailableError(
                f"{name}/{version} was unloaded while it loaded: the server is stopping"
            )
        self.served[key] = served
        self.states[key] = LoadState("ready")
        footprint = loaded.footprint
        if footprint is not None:
            self._footprints[key] = footprint.bytes
        if self.metrics is not None:
            self.metrics.load_seconds.labels(name, str(version)).set(loaded.load_seconds)
        log.info(
            "loaded %s/%s in %.2fs (%s)",
            name,
            version,
            loaded.load_seconds,
            "memory not measured" if footprint is None else f"{footprint.bytes / 2**20:.1f} MB",
        )
        self._shrink(key)
        return served

    def _load_blocking(self, name: str, version: int) -> LoadedModel:
        info = self.registry.resolve(Reference(name, version=version))
        return measured_load(lambda: load_resolved(self.registry.store, info), info.size_bytes)

    def _serve(self, loaded: LoadedModel) -> ServedModel:
        info = loaded.version
        flavor = get_flavor(info.flavor)
        serving = self.options.serving(info.model)
        batching = serving.batching(flavor.batching)
        limits = self.options.threads
        # The version's one inference thread; thread pool sizes (OpenMP's among them) are set
        # per thread, so they are set in this thread, once, before its first prediction.
        executor = ThreadPoolExecutor(
            1,
            thread_name_prefix=f"predict-{info.model}-{info.version}",
            initializer=(lambda: flavor.configure_thread(limits))
            if self.configure_threads
            else None,
        )
        on_batch = None
        if self.metrics is not None:
            on_batch = self.metrics.batch_size.labels(info.model, str(info.version)).observe
        served = ServedModel(info, loaded, serving, batching, executor, on_batch=on_batch)
        if self.configure_threads and flavor.modality == "tabular" and not batching.max_latency_ms:
            # The event loop's thread runs lone requests: its thread pools set like the
            # inference thread's (this runs on the loop).
            flavor.configure_thread(limits)
            served.inline = True
        if batching.enabled:
            served.batcher = MicroBatcher(
                loaded.predict_validated,
                batching,
                executor,
                on_batch,
                outstanding=lambda: served.inflight,
            )
        return served

    # -- following alias moves -----------------------------------------------------------------

    async def _poll(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.options.poll_interval_s)
            try:
                await self.refresh()
            except Exception:  # the poller must outlive a database hiccup
                log.exception("refreshing aliases failed")

    async def refresh(self) -> None:
        """Apply alias moves: load each new target first (concurrently), then switch that alias
        alone, then unload what no alias points at any more. A target that fails to load keeps
        its alias on the old version (retried at a later poll, see ``RETRY_FAILED_S``)."""
        table = await asyncio.to_thread(self.resolver.read_aliases)
        before = self.resolver.routes()
        staged = {name: dict(aliases) for name, aliases in table.items()}
        moves = []
        for name, aliases in table.items():
            for alias, version in aliases.items():
                old = before.get((name, alias))
                if old == version:
                    continue
                if old is None:
                    del staged[name][alias]  # routed once loaded
                else:
                    staged[name][alias] = old
                moves.append((name, alias, version, old))
        self.resolver.set_aliases(staged)  # removed aliases stop routing now
        self._wanted = _targets(table)  # a move's target loads outside the on-demand budget
        switched = await asyncio.gather(*(self._switch(*move) for move in moves))
        left = {(name, old) for (name, _, _, old), ok in zip(moves, switched, strict=True) if ok}
        left |= {
            (name, v) for (name, alias), v in before.items() if alias not in table.get(name, {})
        }
        await self._unload({(name, v) for name, v in left if v is not None})

    async def _switch(self, name: str, alias: str, version: int, old: int | None) -> bool:
        try:
            await self.ensure(name, version)
        except Exception as exc:  # one alias's broken target must not hold up the others
            log.error("alias %s@%s -> %s not switched: %s", name, alias, version, exc)
            return False
        self.resolver.route(name, alias, version)  # the switch: atomic for requests
        log.info("alias %s@%s switched %s -> %s", name, alias, old, version)
        return True

    async def _unload(self, candidates: set[tuple[str, int]]) -> None:
        """Unload versions an alias just moved away from, unless another alias still points at
        them. Versions asked for by number stay loaded."""
        routed = {(name, v) for (name, _), v in self.resolver.routes().items()}
        for key in [k for k in candidates - routed if k in self.served]:
            served = self.served.pop(key)
            self.states.pop(key, None)
            await served.close()
            log.info("unloaded %s/%s", *key)


def _targets(table: Mapping[str, Mapping[str, int]]) -> set[tuple[str, int]]:
    return {(name, v) for name, aliases in table.items() for v in aliases.values()}


def _bytes_of(served: ServedModel) -> int:
    footprint = served.loaded.footprint
    return 0 if footprint is None else footprint.bytes
