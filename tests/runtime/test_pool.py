"""The pool's budget of versions no alias points at: a loading version holds its slot, a version
unloaded under a holder says "retry" instead of failing inside a stopped thread, the memory
budget counts each version's measured footprint, and the process's resident memory stays
bounded however many versions clients ask for (it grew with every version before)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest

from berth.app import Berth
from berth.config import MemoryBudget, ModelServing, PathOptions
from berth.errors import RetryLaterError
from berth.runtime.loading import resident_bytes
from berth.runtime.path import InferencePath, Result
from berth.runtime.pool import ModelPool

T = TypeVar("T")
HOLD = 0.125
"""A request whose ``a`` is this waits in the predictor until the gate opens."""
MB = 1024 * 1024


class Scaled:
    """``factor * (a + b)``, so every answer says which version gave it; carries ``payload``
    random bytes (its weight in memory and on disk); a row with ``a == HOLD`` waits until the
    file ``gate/release`` exists, after writing ``gate/started-FACTOR``."""

    def __init__(self, factor: float, gate: str | None = None, payload: int = 0) -> None:
        self.factor = factor
        self.gate = gate
        self.payload = np.random.default_rng(int(factor)).integers(0, 256, payload, np.uint8)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.gate is not None and bool((frame["a"] == HOLD).any()):
            gate = Path(self.gate)
            (gate / f"started-{self.factor:g}").write_text("")
            deadline = time.monotonic() + 30.0
            while not (gate / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        values = frame[["a", "b"]].to_numpy(dtype=np.float64)
        return self.factor * values.sum(axis=1)


def training() -> pd.DataFrame:
    return pd.DataFrame({"a": [0.5, 0.25, 0.75], "b": [0.25, 0.5, 0.125]})


def register_versions(client: Berth, name: str, count: int, **kwargs: Any) -> None:
    for v in range(1, count + 1):
        model = Scaled(float(v), **kwargs)
        client.register(model, name, training_data=training(), trusted=True, measure_latency=False)


def frame(a: float = 0.5, b: float = 0.25) -> pd.DataFrame:
    return pd.DataFrame({"a": [a], "b": [b]})


async def infer(path: InferencePath, ref: str, data: pd.DataFrame) -> Result:
    return await path.run(await path.resolve(ref), data)


def with_pool(
    client: Berth,
    budget: MemoryBudget,
    body: Callable[[ModelPool, InferencePath], Awaitable[T]],
) -> T:
    """Run ``body`` against a started path with ``budget`` (no poller), bounded in time. The
    models never run on the event loop (a held request there would hold the test)."""

    async def go() -> T:
        models = {name: ModelServing(max_latency_ms=1.0) for name in ("m", "big", "held")}
        options = PathOptions(poll_interval_s=0, models=models, memory=budget, record=False)
        path = InferencePath(client.registry, options)
        await path.start()
        try:
            return await asyncio.wait_for(body(path.pool, path), 120.0)
        finally:
            await path.close()

    return asyncio.run(go())


async def wait_for(file: Path) -> None:
    for _ in range(6000):
        if file.exists():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{file} never appeared")


def on_demand(pool: ModelPool, name: str) -> set[int]:
    return {v for (n, v) in pool.served if n == name}


def test_a_loading_version_holds_its_slot(client: Berth) -> None:
    register_versions(client, "m", 2)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        first, second = await asyncio.gather(
            pool.ensure("m", 1), pool.ensure("m", 2), return_exceptions=True
        )
        assert not isinstance(first, BaseException)
        assert first.info.version == 1
        assert isinstance(second, RetryLaterError), second
        assert "m/2 cannot be loaded now" in str(second)
        assert "m/1" in str(second)  # names what holds the slot
        assert second.retry_after_s > 0
        # Once idle, v1 makes room.
        result = await infer(path, "m/2", frame())
        assert result.outputs["prediction"].tolist() == [1.5]
        assert on_demand(pool, "m") == {2}

    with_pool(client, MemoryBudget(max_versions=1), body)


def test_a_version_unloaded_under_a_holder_says_retry_and_loads_again(client: Berth) -> None:
    register_versions(client, "m", 2)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        held = await pool.ensure("m", 1)
        await pool.ensure("m", 2)  # v1 is idle: unloaded to make room
        assert held.closed
        assert ("m", 1) not in pool.served
        # Fails before: a holder's prediction went to a stopped executor (RuntimeError, a 500).
        with pytest.raises(RetryLaterError, match="m/1 was unloaded"):
            await held.predict(frame())
        again = await infer(path, "m/1", frame())
        assert again.outputs["prediction"].tolist() == [0.75]
        assert on_demand(pool, "m") == {1}
        for _ in range(400):  # the unloaded ones' inference threads end
            if held.executor._shutdown and not any(  # type: ignore[attr-defined]
                t.is_alive()
                for t in held.executor._threads  # type: ignore[attr-defined]
            ):
                break
            await asyncio.sleep(0.005)
        assert not any(t.is_alive() for t in held.executor._threads)  # type: ignore[attr-defined]

    with_pool(client, MemoryBudget(max_versions=1), body)


def test_a_held_version_is_never_the_one_unloaded(client: Berth, tmp_path: Path) -> None:
    register_versions(client, "held", 3, gate=str(tmp_path))

    async def body(pool: ModelPool, path: InferencePath) -> None:
        slow = asyncio.ensure_future(infer(path, "held/1", frame(HOLD)))
        await wait_for(tmp_path / "started-1")
        await infer(path, "held/2", frame())
        await infer(path, "held/3", frame())  # room made by v2 (idle), not v1 (in flight)
        assert on_demand(pool, "held") == {1, 3}
        (tmp_path / "release").write_text("")
        result = await slow
        assert result.outputs["prediction"].tolist() == [HOLD + 0.25]

    with_pool(client, MemoryBudget(max_versions=2), body)


def test_the_memory_budget_counts_each_versions_footprint(client: Berth) -> None:
    register_versions(client, "big", 3, payload=8 * MB)
    sizes = {v.version: v.size_bytes for v in client.list_versions("big")}

    async def body(pool: ModelPool, path: InferencePath) -> None:
        for v in (1, 2, 3):
            result = await infer(path, f"big/{v}", frame())
            assert result.outputs["prediction"].tolist() == [v * 0.75]
            # Two would be 16 MB, over the 12 MB budget: one at a time.
            assert on_demand(pool, "big") == {v}
            footprint = pool.served[("big", v)].loaded.footprint
            assert footprint is not None
            assert footprint.artifact_bytes == sizes[v] > 8 * MB
            assert footprint.bytes >= footprint.artifact_bytes
            assert footprint.resident_bytes is not None  # measured on Linux
        listed = {r.version: r for r in pool.residency() if r.model == "big"}
        assert listed[3].on_demand
        assert listed[3].memory_bytes is not None
        assert listed[3].memory_bytes > 8 * MB

    with_pool(client, MemoryBudget(max_versions=4, max_bytes=12 * MB), body)


def test_a_version_larger_than_the_whole_budget_is_still_served_alone(client: Berth) -> None:
    register_versions(client, "big", 2, payload=2 * MB)

    async def body(pool: ModelPool, path: InferencePath) -> None:
        for v in (1, 2, 1):
            result = await infer(path, f"big/{v}", frame())
            assert result.outputs["prediction"].tolist() == [v * 0.75]
            assert on_demand(pool, "big") == {v}

    with_pool(client, MemoryBudget(max_versions=4, max_bytes=MB), body)


def test_resident_memory_stays_bounded_however_many_versions_are_asked_for(
    client: Berth,
) -> None:
    """The fault: every version asked for stayed loaded (about 50 MB each for the demo models).
    Eight versions of 16 MB each, asked for in turn: without a bound the resident set grows by
    all of them; with a budget of one, by about one (and a load's passing copy)."""
    payload, count = 16 * MB, 8
    register_versions(client, "m", count, payload=payload)

    def growth(budget: MemoryBudget) -> int:
        async def body(pool: ModelPool, path: InferencePath) -> int:
            before = resident_bytes()
            assert before is not None
            for v in range(1, count + 1):
                result = await infer(path, f"m/{v}", frame())
                assert result.outputs["prediction"].tolist() == [v * 0.75]
                await asyncio.gather(*list(pool._unloading))  # the unloads' clean-up
            assert len(pool.served) == min(count, budget.max_versions)
            after = resident_bytes()
            assert after is not None
            return after - before

        return with_pool(client, budget, body)

    unbounded = growth(MemoryBudget(max_versions=count))
    bounded = growth(MemoryBudget(max_versions=1))
    assert unbounded >= (count - 2) * payload, unbounded / MB
    assert bounded <= 2.5 * payload, bounded / MB
