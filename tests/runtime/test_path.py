"""The model pool and the inference path over a real registry: batches per version, alias moves
applied load-first, failed loads isolated to their version, unique prediction ids."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest
from tests.models import SumModel, numbers

import berth.runtime.pool as pool_module
from berth.app import Berth
from berth.config import ModelServing, PathOptions
from berth.errors import UnavailableError
from berth.registry.service import VersionInfo
from berth.runtime.loading import LoadedModel
from berth.runtime.path import InferencePath, Result
from berth.runtime.pool import ModelPool, ServedModel

T = TypeVar("T")


class Tracing(SumModel):
    """``factor`` times the row sum; remembers the ``a`` values of every call it gets (on the
    loaded copy), so a test can see what went into each batch."""

    def __init__(self, factor: float, delay_s: float = 0.002) -> None:
        self.factor = factor
        self.delay_s = delay_s
        self.calls: list[list[float]] = []

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        self.calls.append(frame["a"].tolist())
        time.sleep(self.delay_s)
        return super().predict(frame) * self.factor


def register(client: Berth, model: object, name: str) -> VersionInfo:
    return client.register(model, name, training_data=numbers(), trusted=True)


def frame(*a: float, b: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"a": np.asarray(a, dtype=np.float64), "b": np.full(len(a), b)})


def model_of(served: ServedModel) -> Any:
    return served.loaded.predictor.model  # type: ignore[attr-defined]  # PythonPredictor


def tamper(client: Berth, info: VersionInfo) -> None:
    file = client.store.path(info.digest) / "model.cloudpickle"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


async def infer(path: InferencePath, ref: str, data: Any) -> Result:
    """What every adapter does: resolve, then run."""
    return await path.run(await path.resolve(ref), data)


def with_pool(
    client: Berth,
    body: Callable[[ModelPool, InferencePath], Awaitable[T]],
    models: dict[str, ModelServing] | None = None,
) -> T:
    """Run ``body`` against a started path (no poller: tests call refresh()), bounded in time."""

    async def go() -> T:
        path = InferencePath(client.registry, PathOptions(poll_interval_s=0, models=models or {}))
        await path.start()
        try:
            return await asyncio.wait_for(body(path.pool, path), 60.0)
        finally:
            await path.close()

    return asyncio.run(go())


# -- batches per version -----------------------------------------------------------------------


def test_a_batch_never_mixes_versions(client: Berth) -> None:
    register(client, Tracing(1.0), "mixed")
    register(client, Tracing(10.0), "mixed")
    config = ModelServing(max_batch_size=8, max_latency_ms=5.0)
    # Request r of version v sends a = v * 1000 + r, so every row says where it came from.
    wanted = [(1 + r % 2, r) for r in range(60)]

    async def body(pool: ModelPool, path: InferencePath) -> None:
        results = await asyncio.gather(
            *(infer(path, f"mixed/{v}", frame(v * 1000.0 + r, b=1.0)) for v, r in wanted)
        )
        for (v, r), result in zip(wanted, results, strict=True):
            assert result.info.version == v
            factor = 1.0 if v == 1 else 10.0
            assert result.outputs["prediction"].tolist() == [factor * (v * 1000.0 + r + 1.0)]
        for v in (1, 2):
            served = pool.served[("mixed", v)]
            assert served.batcher is not None
            calls = model_of(served).calls
            assert all(int(a // 1000) == v for call in calls for a in call), calls
            assert sum(len(c) for c in calls) == 30
            assert max(len(c) for c in calls) <= 8
            assert len(calls) < 30  # they were batched

    with_pool(client, body, {"mixed": config})


def test_by_default_a_tabular_model_never_waits_but_groups_what_queued(client: Berth) -> None:
    register(client, Tracing(1.0), "plain")

    async def body(pool: ModelPool, path: InferencePath) -> None:
        await asyncio.gather(*(infer(path, "plain", frame(float(i))) for i in range(10)))
        served = pool.served[("plain", 1)]
        assert served.batching.max_latency_ms == 0
        sizes = [len(c) for c in model_of(served).calls]
        assert sum(sizes) == 10
        assert len(sizes) < 10  # the others queued behind it and went together

    with_pool(client, body)


def test_prediction_ids_are_unique(client: Berth) -> None:
    register(client, Tracing(1.0), "ids")
    register(client, Tracing(2.0), "ids")
    config = ModelServing(max_batch_size=16, max_latency_ms=2.0)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        results = await asyncio.gather(
            *(infer(path, f"ids/{1 + i % 2}", frame(*([0.5] * (1 + i % 4)))) for i in range(80))
        )
        ids = [pid for r in results for pid in r.prediction_ids]
        assert len(ids) == sum(1 + i % 4 for i in range(80))
        assert len(set(ids)) == len(ids)
        for r in results:
            assert len(r.prediction_ids) == len(r.outputs["prediction"])

    with_pool(client, body, {"ids": config})


# -- alias moves -------------------------------------------------------------------------------


def test_refresh_switches_only_once_the_new_version_is_loaded(
    client: Berth, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(client, Tracing(1.0), "moving")
    register(client, Tracing(10.0), "moving")
    client.set_alias("moving", "production", 1)
    route_while_loading: list[int | None] = []
    holder: dict[str, ModelPool] = {}

    real_load = pool_module.load_resolved

    def slow_load(store: Any, info: VersionInfo) -> LoadedModel:
        loaded = real_load(store, info)
        if loaded.version.version == 2:
            routes = holder["pool"].resolver.routes()
            route_while_loading.append(routes.get(("moving", "production")))
            time.sleep(0.4)  # a slow load: requests keep coming meanwhile
        return loaded

    monkeypatch.setattr(pool_module, "load_resolved", slow_load)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        holder["pool"] = pool
        assert pool.resolver.routes() == {("moving", "production"): 1}
        assert pool.ready
        old = pool.served[("moving", 1)]
        await asyncio.to_thread(client.set_alias, "moving", "production", 2)
        refresh = asyncio.ensure_future(pool.refresh())
        during: list[tuple[int, str | None]] = []
        for _ in range(500):
            if refresh.done():
                break
            state = pool.status("moving", 2)  # before the request: was version 2 ready then?
            result = await infer(path, "moving", frame(1.0))
            during.append((result.info.version, state.state if state else None))
            await asyncio.sleep(0.01)
        await refresh
        assert route_while_loading == [1]
        while_loading = [v for v, state in during if state != "ready"]
        assert while_loading, "no request ran while version 2 loaded"
        assert set(while_loading) == {1}
        assert ("moving", 2) in pool.served
        assert pool.resolver.routes()[("moving", "production")] == 2
        # The old version is gone, its thread stopped.
        assert ("moving", 1) not in pool.served
        assert pool.status("moving", 1) is None
        assert old.executor._shutdown  # type: ignore[attr-defined]
        after = await infer(path, "moving", frame(1.0))
        assert after.info.version == 2
        assert after.outputs["prediction"].tolist() == [10.0]

    with_pool(client, body)


def test_a_request_in_flight_on_the_old_version_finishes_there(client: Berth) -> None:
    register(client, Tracing(1.0, delay_s=0.4), "inflight")
    register(client, Tracing(10.0), "inflight")
    client.set_alias("inflight", "production", 1)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        old = pool.served[("inflight", 1)]
        slow = asyncio.ensure_future(infer(path, "inflight@production", frame(3.0)))
        for _ in range(200):
            if model_of(old).calls:
                break
            await asyncio.sleep(0.005)
        assert model_of(old).calls, "the slow request never reached the predictor"
        await asyncio.to_thread(client.set_alias, "inflight", "production", 2)
        await pool.refresh()
        assert slow.done()  # the old version was unloaded only after it finished
        result = slow.result()
        assert result.info.version == 1
        assert result.outputs["prediction"].tolist() == [3.0]
        assert ("inflight", 1) not in pool.served

    with_pool(client, body)


def test_rollback_loads_the_old_version_again(client: Berth) -> None:
    register(client, Tracing(1.0), "rollback")
    register(client, Tracing(10.0), "rollback")
    client.set_alias("rollback", "production", 1)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        versions = []
        for target in (2, 1, 2):
            await asyncio.to_thread(client.set_alias, "rollback", "production", target)
            await pool.refresh()
            result = await infer(path, "rollback", frame(1.0))
            versions.append(result.info.version)
            assert {v for (_, v) in pool.served} == {target}
        assert versions == [2, 1, 2]
        # Nothing moved: nothing reloads.
        served = pool.served[("rollback", 2)]
        await pool.refresh()
        assert pool.served[("rollback", 2)] is served

    with_pool(client, body)


def test_a_deleted_alias_stops_routing_and_unloads(client: Berth) -> None:
    register(client, Tracing(1.0), "gone")
    register(client, Tracing(10.0), "gone")
    client.set_alias("gone", "staging", 1)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        assert (await infer(path, "gone@staging", frame(1.0))).info.version == 1
        await asyncio.to_thread(client.delete_alias, "gone", "staging")
        await pool.refresh()
        assert ("gone", "staging") not in pool.resolver.routes()
        assert ("gone", 1) not in pool.served
        latest = await infer(path, "gone", frame(1.0))  # no production: the newest
        assert latest.info.version == 2

    with_pool(client, body)


def test_a_version_asked_for_by_number_stays_loaded_across_refreshes(client: Berth) -> None:
    # Fails today: refresh() unloads every version no alias points at, so a client calling
    # NAME/1 directly gets version 1 unloaded at every poll (every 2 s) and reloaded on its next
    # request, though nothing moved.
    register(client, Tracing(1.0), "pinned")
    register(client, Tracing(10.0), "pinned")
    client.set_alias("pinned", "production", 2)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        await infer(path, "pinned/1", frame(1.0))
        first = pool.served[("pinned", 1)]
        await pool.refresh()
        assert ("pinned", 1) in pool.served
        await infer(path, "pinned/1", frame(1.0))
        assert pool.served[("pinned", 1)] is first

    with_pool(client, body)


# -- failed loads ------------------------------------------------------------------------------


def test_a_tampered_version_fails_with_the_reason_and_the_others_keep_serving(
    client: Berth,
) -> None:
    broken = register(client, SumModel(), "broken")
    register(client, Tracing(3.0), "healthy")
    tamper(client, broken)
    client.set_alias("broken", "production", 1)
    client.set_alias("healthy", "production", 1)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        assert pool.ready  # loading finished, one of them badly
        state = pool.status("broken", 1)
        assert state is not None
        assert state.state == "failed"
        assert state.reason is not None
        assert "broken/1" in state.reason
        assert "SHA-256" in state.reason
        with pytest.raises(UnavailableError, match=r"broken/1 is not ready: .*SHA-256"):
            await infer(path, "broken", frame(1.0))
        with pytest.raises(UnavailableError):  # stays failed, without retrying the load
            await infer(path, "broken/1", frame(1.0))
        ok = await infer(path, "healthy", frame(1.0, b=1.0))
        assert ok.outputs["prediction"].tolist() == [6.0]
        state_ok = pool.status("healthy", 1)
        assert state_ok is not None
        assert state_ok.state == "ready"

    with_pool(client, body)


def test_an_alias_moved_to_a_broken_version_keeps_serving_the_old_one(client: Berth) -> None:
    register(client, Tracing(1.0), "steady")
    bad = register(client, Tracing(2.0), "steady")
    tamper(client, bad)
    client.set_alias("steady", "production", 1)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        await asyncio.to_thread(client.set_alias, "steady", "production", 2)
        await pool.refresh()
        assert pool.resolver.routes()[("steady", "production")] == 1
        state = pool.status("steady", 2)
        assert state is not None
        assert state.state == "failed"
        assert "SHA-256" in (state.reason or "")
        result = await infer(path, "steady", frame(1.0))
        assert result.info.version == 1

    with_pool(client, body)


def test_the_newest_version_is_looked_up_once_per_interval(client: Berth) -> None:
    register(client, Tracing(1.0), "fresh")

    async def body(pool: ModelPool, path: InferencePath) -> None:
        assert (await infer(path, "fresh", frame(1.0))).info.version == 1
        await asyncio.to_thread(register, client, Tracing(10.0), "fresh")
        # Within the interval the cached answer stands: no database query per request.
        assert (await infer(path, "fresh", frame(1.0))).info.version == 1
        await asyncio.sleep(1.1)
        assert (await infer(path, "fresh", frame(1.0))).info.version == 2
        assert (await infer(path, "fresh@latest", frame(1.0))).info.version == 2

    with_pool(client, body)


def test_a_pool_started_again_after_close_serves_again(tmp_path) -> None:
    """An ASGI host may run an app's lifespan twice: nothing closed may be served after."""
    import asyncio

    from tests.models import SumModel, numbers

    from berth.app import Berth
    from berth.config import Settings

    async def scenario(client: Berth) -> None:
        path = InferencePath(client.registry, PathOptions(poll_interval_s=0))
        await path.start()
        first = await infer(path, "sum", numbers(3))
        await path.close()
        await path.start()
        again = await infer(path, "sum", numbers(3))
        assert again.outputs["prediction"].tolist() == first.outputs["prediction"].tolist()
        await path.close()

    with Berth(Settings(home=tmp_path / "home", user="tester")) as client:
        client.register(SumModel(), "sum", training_data=numbers(), trusted=True)
        client.set_alias("sum", "production", 1)
        asyncio.run(scenario(client))


def test_a_failed_load_is_tried_again_after_a_while(
    client: Berth, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passing fault (the artifact store unreachable for a moment) must not fail a version
    until the server restarts; within the retry interval it answers 503 at once."""
    info = register(client, Tracing(2.0), "flaky")
    client.set_alias("flaky", "production", 1)
    file = client.store.path(info.digest) / "model.cloudpickle"
    good = file.read_bytes()
    tamper(client, info)
    monkeypatch.setattr(pool_module, "RETRY_FAILED_S", 0.3)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        with pytest.raises(UnavailableError, match="SHA-256"):
            await infer(path, "flaky", frame(1.0))
        file.write_bytes(good)  # the fault passes
        with pytest.raises(UnavailableError):  # not tried again at once
            await infer(path, "flaky", frame(1.0))
        await asyncio.sleep(0.35)
        assert (await infer(path, "flaky", frame(1.0))).outputs["prediction"].tolist() == [2.0]

    with_pool(client, body)


def test_one_broken_alias_target_does_not_hold_up_the_others(client: Berth) -> None:
    register(client, Tracing(1.0), "left")
    register(client, Tracing(3.0), "left")  # another artifact than right/2's (content-addressed)
    register(client, Tracing(1.0), "right")
    bad = register(client, Tracing(2.0), "right")
    tamper(client, bad)
    client.set_alias("left", "production", 1)
    client.set_alias("right", "production", 1)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        await asyncio.to_thread(client.set_alias, "left", "production", 2)
        await asyncio.to_thread(client.set_alias, "right", "production", 2)
        await pool.refresh()
        routes = pool.resolver.routes()
        assert routes[("left", "production")] == 2
        assert routes[("right", "production")] == 1  # its new target failed: the old one stays
        assert (await infer(path, "right", frame(1.0))).info.version == 1

    with_pool(client, body)


class Where(SumModel):
    """Remembers the thread of every call, and sleeps ``delay_s`` in it."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.threads: list[str] = []

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        import threading

        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay_s)
        return super().predict(frame)


def test_a_lone_request_to_a_cheap_tabular_model_runs_on_the_loop(client: Berth) -> None:
    """No thread hop when nobody else is there to batch with; requests that come together still
    go to the inference thread and share calls."""
    import threading

    register(client, Where(), "lone")

    streak = pool_module.LONE_STREAK

    async def body(pool: ModelPool, path: InferencePath) -> None:
        loop_thread = threading.current_thread().name
        for i in range(streak + 5):
            result = await infer(path, "lone", frame(float(i), b=1.0))
            assert result.outputs["prediction"].tolist() == [i + 1.0]
        served = pool.served[("lone", 1)]
        threads = model_of(served).threads
        # Alone for a while before it is taken for alone.
        assert all(t.startswith("predict-lone-1") for t in threads[:streak]), threads
        assert threads[streak:] == [loop_thread] * 5
        assert served.inline
        await asyncio.gather(*(infer(path, "lone", frame(float(i))) for i in range(8)))
        together = model_of(served).threads[streak + 5 :]
        assert together
        assert all(t.startswith("predict-lone-1") for t in together), together
        assert len(together) < 8  # batched

    with_pool(client, body)


def test_a_slow_model_goes_back_to_its_thread(client: Berth) -> None:
    register(client, Where(delay_s=0.12), "slow")

    async def body(pool: ModelPool, path: InferencePath) -> None:
        for i in range(pool_module.LONE_STREAK + 3):
            await infer(path, "slow", frame(float(i)))
        served = pool.served[("slow", 1)]
        assert not served.inline
        threads = model_of(served).threads[pool_module.LONE_STREAK :]
        assert len(threads) == 3
        assert not threads[0].startswith("predict-")  # on the loop, once: over 100 ms
        assert all(t.startswith("predict-slow-1") for t in threads[1:]), threads

    with_pool(client, body)


def test_a_model_that_waits_for_company_never_runs_on_the_loop(client: Berth) -> None:
    register(client, Where(), "patient")

    async def body(pool: ModelPool, path: InferencePath) -> None:
        await infer(path, "patient", frame(1.0))
        served = pool.served[("patient", 1)]
        assert not served.inline
        assert model_of(served).threads[0].startswith("predict-patient-1")

    with_pool(client, body, {"patient": ModelServing(max_latency_ms=2.0)})
