"""The micro-batcher on its own: pure asyncio, a fake predictor on one inference thread that
records the batches it was given, and the latency target's controller fed observations
directly (decisions checked without timing), plus a few loose closed-loop runs against a fake
predictor whose cost is a known function of the batch size."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from berth.runtime.batching import (
    Arrivals,
    BatchCost,
    BatchingConfig,
    LatencyWindow,
    MicroBatcher,
    bucket,
)
from berth.types import Outputs


class FakePredictor:
    """Doubles ``x``; remembers every batch; refuses (the whole batch) a negative ``x``."""

    def __init__(self, delay_s: float = 0.005) -> None:
        self.delay_s = delay_s
        self.batches: list[list[float]] = []
        self.threads: set[str] = set()

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    def __call__(self, frame: pd.DataFrame) -> Outputs:
        self.batches.append(frame["x"].tolist())
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if (frame["x"] < 0).any():
            raise ValueError("negative x")
        x = frame["x"].to_numpy()
        return {"double": x * 2, "pair": np.stack([x, -x], axis=1)}


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="fake-predict")
    yield pool
    pool.shutdown(wait=True)


def rows(*values: float) -> pd.DataFrame:
    return pd.DataFrame({"x": np.asarray(values, dtype=np.float64)})


def run(coro: object, timeout: float = 10.0) -> object:
    """Run a coroutine with an upper bound, so a lost future fails the test instead of hanging."""

    async def bounded() -> object:
        return await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

    return asyncio.run(bounded())


# -- grouping ----------------------------------------------------------------------------------


def test_concurrent_single_rows_are_grouped_up_to_the_batch_size(
    executor: ThreadPoolExecutor,
) -> None:
    fake = FakePredictor()
    batcher = MicroBatcher(fake, BatchingConfig(max_batch_size=8, max_latency_ms=20), executor)

    async def go() -> list[Outputs]:
        return await asyncio.gather(*(batcher.submit(rows(float(i))) for i in range(20)))

    results = run(go())
    assert isinstance(results, list)
    assert sum(fake.sizes) == 20
    assert max(fake.sizes) <= 8
    assert fake.sizes[0] == 8  # everyone queued before the first call: a full batch
    assert len(fake.sizes) == 3  # 8 + 8 + 4, not 20 calls
    for i, out in enumerate(results):
        assert out["double"].tolist() == [2.0 * i]
    assert all(name.startswith("fake-predict") for name in fake.threads)


def test_each_caller_gets_exactly_its_own_rows_in_order(executor: ThreadPoolExecutor) -> None:
    fake = FakePredictor()
    batcher = MicroBatcher(fake, BatchingConfig(max_batch_size=8, max_latency_ms=10), executor)
    # Requests of 1 to 3 rows; the values say which request and which row they are.
    requests = [[100.0 * r + i for i in range(1 + r % 3)] for r in range(15)]

    async def go() -> list[Outputs]:
        return await asyncio.gather(*(batcher.submit(rows(*values)) for values in requests))

    results = run(go())
    assert isinstance(results, list)
    for values, out in zip(requests, results, strict=True):
        assert out["double"].tolist() == [2 * v for v in values]
        assert out["pair"].shape == (len(values), 2)
        assert out["pair"][:, 0].tolist() == values
    # Grouped, never over the limit, every row predicted once.
    assert len(fake.batches) < len(requests)
    assert max(fake.sizes) <= 8
    assert sorted(v for b in fake.batches for v in b) == sorted(v for r in requests for v in r)


def test_a_batch_never_exceeds_the_limit_even_when_requests_do_not_fit_exactly(
    executor: ThreadPoolExecutor,
) -> None:
    fake = FakePredictor()
    batcher = MicroBatcher(fake, BatchingConfig(max_batch_size=8, max_latency_ms=10), executor)

    async def go() -> list[Outputs]:
        return await asyncio.gather(*(batcher.submit(rows(r, r, r)) for r in range(9)))

    run(go())
    assert sum(fake.sizes) == 27
    assert max(fake.sizes) <= 8
    # Three-row requests are never split: each batch holds whole requests (6 = 3 + 3).
    assert all(size % 3 == 0 for size in fake.sizes)
    assert 6 in fake.sizes


def test_with_a_zero_window_a_lone_request_does_not_wait(executor: ThreadPoolExecutor) -> None:
    fake = FakePredictor(delay_s=0.0)
    eager = MicroBatcher(fake, BatchingConfig(max_batch_size=8, max_latency_ms=0.0), executor)
    out = run(eager.submit(rows(1.5)), timeout=5.0)
    assert isinstance(out, dict)
    assert out["double"].tolist() == [3.0]
    assert fake.sizes == [1]


def test_a_lone_request_waits_for_company_up_to_the_window(executor: ThreadPoolExecutor) -> None:
    # The contrast to the zero window: a 10 s window holds a lone request back.
    fake = FakePredictor(delay_s=0.0)
    patient = MicroBatcher(fake, BatchingConfig(max_batch_size=8, max_latency_ms=10_000), executor)

    async def go() -> bool:
        task = asyncio.ensure_future(patient.submit(rows(1.0)))
        done, _ = await asyncio.wait({task}, timeout=0.3)
        waited = not done
        # A full batch closes the window early.
        more = [patient.submit(rows(float(i))) for i in range(2, 9)]
        await asyncio.wait_for(asyncio.gather(task, *more), 5.0)
        return waited

    assert run(go()) is True
    assert fake.sizes == [8]


# -- failures ----------------------------------------------------------------------------------


def test_a_failing_batch_is_retried_request_by_request(executor: ThreadPoolExecutor) -> None:
    fake = FakePredictor()
    batcher = MicroBatcher(fake, BatchingConfig(max_batch_size=8, max_latency_ms=20), executor)
    inputs = [rows(1.0), rows(2.0, 3.0), rows(-1.0), rows(4.0)]

    async def go() -> list[Outputs | BaseException]:
        return await asyncio.gather(
            *(batcher.submit(frame) for frame in inputs), return_exceptions=True
        )

    results = run(go())
    assert isinstance(results, list)
    good = [r for i, r in enumerate(results) if i != 2]
    assert [r["double"].tolist() for r in good] == [[2.0], [4.0, 6.0], [8.0]]  # type: ignore[index]
    assert isinstance(results[2], ValueError)
    assert "negative" in str(results[2])
    # One combined call that failed, then each request alone.
    assert fake.sizes == [5, 1, 2, 1, 1]


def test_a_lone_failing_request_gets_its_error_and_the_batcher_goes_on(
    executor: ThreadPoolExecutor,
) -> None:
    fake = FakePredictor()
    batcher = MicroBatcher(fake, BatchingConfig(max_batch_size=4, max_latency_ms=0.0), executor)

    async def go() -> Outputs:
        with pytest.raises(ValueError, match="negative"):
            await batcher.submit(rows(-2.0))
        return await batcher.submit(rows(2.0))

    out = run(go())
    assert isinstance(out, dict)
    assert out["double"].tolist() == [4.0]


def test_on_batch_sees_every_batch_size(executor: ThreadPoolExecutor) -> None:
    seen: list[int] = []
    fake = FakePredictor()
    batcher = MicroBatcher(
        fake, BatchingConfig(max_batch_size=4, max_latency_ms=10), executor, seen.append
    )

    async def go() -> list[Outputs]:
        return await asyncio.gather(*(batcher.submit(rows(float(i))) for i in range(10)))

    run(go())
    assert seen == fake.sizes
    assert sum(seen) == 10


def test_close_lets_the_batch_in_flight_finish(executor: ThreadPoolExecutor) -> None:
    # "Finish what is queued, then stop": a request already taken into a batch must still get
    # its answer when close() is called while the predictor is working on it.
    fake = FakePredictor(delay_s=0.3)
    batcher = MicroBatcher(fake, BatchingConfig(max_batch_size=8, max_latency_ms=0.0), executor)

    async def go() -> Outputs:
        task = asyncio.ensure_future(batcher.submit(rows(7.0)))
        for _ in range(200):  # until the predictor has the batch
            if fake.batches:
                break
            await asyncio.sleep(0.005)
        assert fake.batches
        await batcher.close()
        return await asyncio.wait_for(task, 1.5)

    out = run(go())
    assert isinstance(out, dict)
    assert out["double"].tolist() == [14.0]


# -- the adaptive window -----------------------------------------------------------------------

TARGET = BatchingConfig(max_batch_size=32, max_latency_ms=10.0, target_p99_ms=50.0)


def feed(window: LatencyWindow, latency_ms: float, times: int = 64) -> None:
    for _ in range(times):
        window.observe(latency_ms)


def test_the_window_shrinks_while_p99_is_over_the_target() -> None:
    window = LatencyWindow(TARGET)
    assert window.window_ms == 10.0
    feed(window, 120.0, 63)
    assert window.window_ms == 10.0  # adjusts in steps, not on every request
    feed(window, 120.0, 1)
    assert window.p99() == 120.0
    first = window.window_ms
    assert first < 10.0
    feed(window, 120.0)
    assert window.window_ms < first


def test_the_window_grows_while_well_under_the_target_and_stays_bounded() -> None:
    window = LatencyWindow(TARGET)
    feed(window, 5.0)
    assert window.window_ms > 10.0
    for _ in range(50):
        feed(window, 5.0)
    assert window.window_ms == pytest.approx(TARGET.target_p99_ms / 2)  # type: ignore[operator]


def test_the_window_holds_near_the_target() -> None:
    window = LatencyWindow(TARGET)
    feed(window, 45.0)  # under the target, but not by a 30 % margin
    assert window.window_ms == 10.0


def test_the_window_shrinks_then_recovers_as_latency_falls() -> None:
    window = LatencyWindow(TARGET, size=64)
    feed(window, 200.0)
    feed(window, 200.0)
    shrunk = window.window_ms
    assert shrunk < 10.0 * 0.7 * 0.7 + 1e-9
    feed(window, 2.0)
    assert window.window_ms > shrunk


def test_a_zero_window_with_a_target_can_open() -> None:
    window = LatencyWindow(BatchingConfig(max_batch_size=32, target_p99_ms=40.0))
    assert window.window_ms == 0.0
    feed(window, 1.0)
    assert window.window_ms > 0.0


def test_without_a_target_the_window_is_fixed() -> None:
    window = LatencyWindow(BatchingConfig(max_batch_size=8, max_latency_ms=3.0))
    feed(window, 1000.0, 500)
    assert window.window_ms == 3.0
    assert window.p99() == 1000.0


def test_the_batcher_uses_the_adapted_window(executor: ThreadPoolExecutor) -> None:
    fake = FakePredictor(delay_s=0.0)
    config = BatchingConfig(max_batch_size=8, max_latency_ms=10_000, target_p99_ms=1.0)
    batcher = MicroBatcher(fake, config, executor)
    feed(batcher.latency, 500.0, 64 * 40)  # far over the target: the 10 s window collapses
    assert batcher.latency.window_ms < 1.0
    out = run(batcher.submit(rows(1.0)), timeout=5.0)
    assert isinstance(out, dict)
    assert fake.sizes == [1]


def test_batching_config_defaults() -> None:
    assert not BatchingConfig().enabled
    assert BatchingConfig(max_batch_size=2).enabled


# -- nobody else can come --------------------------------------------------------------------


class Outstanding:
    """What the path tells a batcher: requests entered and not answered yet."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


def test_a_batch_goes_at_once_when_every_outstanding_request_is_queued(
    executor: ThreadPoolExecutor,
) -> None:
    """Issue 9: with a long window and N clients, waiting for a batch N clients can never
    grow cost the window on every call. Here the window is 60 s: the test's 10 s bound fails
    it if the batcher waits."""
    fake = FakePredictor()
    outstanding = Outstanding()
    config = BatchingConfig(max_batch_size=64, max_latency_ms=60_000)
    batcher = MicroBatcher(fake, config, executor, outstanding=outstanding)

    async def client(i: int, rounds: int) -> list[float]:
        got = []
        for r in range(rounds):
            outstanding.count += 1
            try:
                out = await batcher.submit(rows(100.0 * i + r))
            finally:
                outstanding.count -= 1
            got += out["double"].tolist()
        return got

    async def go() -> list[list[float]]:
        return await asyncio.gather(*(client(i, 5) for i in range(4)))

    results = run(go())
    assert isinstance(results, list)
    assert results == [[2.0 * (100.0 * i + r) for r in range(5)] for i in range(4)]
    assert sum(fake.sizes) == 20
    assert max(fake.sizes) <= 4


def test_a_batch_waits_while_another_request_is_on_its_way(executor: ThreadPoolExecutor) -> None:
    """One request is outstanding but not queued yet (being decoded): the window holds the
    queued one until it comes, and both go together."""
    fake = FakePredictor()
    outstanding = Outstanding()
    config = BatchingConfig(max_batch_size=64, max_latency_ms=60_000)
    batcher = MicroBatcher(fake, config, executor, outstanding=outstanding)

    async def go() -> None:
        outstanding.count = 2
        first = asyncio.ensure_future(batcher.submit(rows(1.0)))
        await asyncio.sleep(0.2)
        assert not first.done()  # the other one is still on its way
        await batcher.submit(rows(2.0))
        await first

    run(go())
    assert fake.sizes == [2]


# -- the arrival-rate rule ---------------------------------------------------------------------


def test_arrivals_know_nothing_before_a_gap() -> None:
    arrivals = Arrivals()
    assert arrivals.wait_s(0.0, 1.0) is None
    arrivals.observe(0.0)
    assert arrivals.wait_s(0.0, 1.0) is None  # one submit: no gap yet


def test_arrivals_wait_until_the_next_request_is_due() -> None:
    arrivals = Arrivals()
    for t in (0.0, 0.01, 0.02, 0.03):
        arrivals.observe(t)
    assert arrivals.gap_s == pytest.approx(0.01)
    assert arrivals.wait_s(0.031, deadline=0.5) == pytest.approx(0.009)  # due at 0.04


def test_arrivals_say_go_when_the_next_is_due_after_the_deadline_or_overdue() -> None:
    arrivals = Arrivals()
    for t in (0.0, 0.1, 0.2):
        arrivals.observe(t)
    assert arrivals.wait_s(0.2, deadline=0.25) == 0.0  # next due at 0.3, the window ends first
    assert arrivals.wait_s(0.2, deadline=0.35) == pytest.approx(0.1)
    assert arrivals.wait_s(0.31, deadline=0.5) == 0.0  # overdue: nobody is coming


def test_arrivals_average_gaps_and_a_pause_counts_as_at_most_the_longest_gap() -> None:
    arrivals = Arrivals(alpha=0.5, longest_s=1.0)
    arrivals.observe(0.0)
    arrivals.observe(0.1)
    arrivals.observe(100.0)  # a pause of 99.9 s counts as 1 s
    assert arrivals.gap_s == pytest.approx(0.55)
    for i in range(1, 20):
        arrivals.observe(100.0 + 0.001 * i)
    assert arrivals.gap_s is not None
    assert arrivals.gap_s < 0.002  # back to the burst's rate within a few requests


def test_sparse_arrivals_go_at_once_instead_of_waiting_out_the_window(
    executor: ThreadPoolExecutor,
) -> None:
    """Requests 0.6 s apart with a 0.5 s window and nothing to say who is outstanding: the
    first waits out the window (no rate known yet); the others go at once, since the next is
    due after the window would close. Waiting would cost 0.5 s each."""
    fake = FakePredictor(delay_s=0.0)
    batcher = MicroBatcher(fake, BatchingConfig(max_batch_size=8, max_latency_ms=500), executor)

    async def timed(value: float) -> float:
        started = time.perf_counter()
        await batcher.submit(rows(value))
        return time.perf_counter() - started

    async def go() -> list[float]:
        tasks = []
        for i in range(4):
            tasks.append(asyncio.ensure_future(timed(float(i))))
            await asyncio.sleep(0.6)
        return list(await asyncio.gather(*tasks))

    waits = run(go())
    assert isinstance(waits, list)
    assert waits[0] >= 0.45
    assert all(w < 0.25 for w in waits[1:]), waits
    assert fake.sizes == [1, 1, 1, 1]


# -- the predictor's cost by batch size ------------------------------------------------------


def test_size_buckets_double() -> None:
    sizes = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64)
    assert [bucket(n) for n in sizes] == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]


def test_batch_cost_predicts_from_the_measured_cost_per_row() -> None:
    cost = BatchCost(max_rows=64)
    assert cost.estimate(10) == 0.0  # nothing measured: no prediction
    cost.observe(8, 0.040)  # 5 ms a row in bucket 5-8
    assert cost.per_row(bucket(8)) == pytest.approx(0.005)
    assert cost.estimate(6) == pytest.approx(0.030)
    # Unmeasured sizes borrow the nearest measured bucket, smaller first (they err long).
    assert cost.estimate(32) == pytest.approx(0.160)
    assert cost.estimate(1) == pytest.approx(0.005)
    cost.observe(1, 0.010)
    assert cost.estimate(1) == pytest.approx(0.010)
    assert cost.estimate(32) == pytest.approx(0.160)  # still the nearer smaller bucket
    cost.observe(8, 0.080)  # an EWMA: moves toward the new figure, not onto it
    assert 0.005 < cost.per_row(bucket(8)) < 0.010  # type: ignore[operator]


def test_the_batcher_times_its_calls(executor: ThreadPoolExecutor) -> None:
    fake = FakePredictor(delay_s=0.02)
    batcher = MicroBatcher(fake, BatchingConfig(max_batch_size=8, max_latency_ms=0.0), executor)
    run(batcher.submit(rows(1.0, 2.0, 3.0, 4.0)))
    measured = batcher.cost.per_row(bucket(4))
    assert measured is not None
    assert measured >= 0.02 / 4


# -- the target: budget and cap --------------------------------------------------------------


def measured(cost: BatchCost, seconds: Callable[[int], float], sizes: Iterable[int]) -> None:
    for n in sizes:
        cost.observe(n, seconds(n))


def linear(n: int) -> float:
    return 0.004 + 0.0027 * n  # sentiment-like: a fixed part and a part per row


def superlinear(n: int) -> float:
    return 0.001 + 0.0001 * n * n  # a row costs more in a larger batch


ALL_SIZES = (1, 2, 4, 8, 16, 32, 64)


def controller(target: float | None, max_batch_size: int = 64) -> LatencyWindow:
    return LatencyWindow(
        BatchingConfig(max_batch_size=max_batch_size, max_latency_ms=50, target_p99_ms=target)
    )


def test_the_budget_starts_under_the_target_shrinks_while_over_and_recovers() -> None:
    window = controller(100.0)
    assert window.budget_ms == pytest.approx(80.0)
    for _ in range(20):
        feed(window, 300.0)
    assert window.budget_ms == pytest.approx(25.0)  # a floor: a quarter of the target
    for _ in range(30):
        feed(window, 10.0)
    assert window.budget_ms == pytest.approx(80.0)


def test_over_the_target_the_cap_never_goes_where_a_row_costs_more() -> None:
    """A fixed cost per call makes a row cheaper in a larger batch: capping would cost
    throughput and, leaving rows for a later call, not even shorten the longest wait."""
    window = controller(25.0)
    measured(window.cost, linear, ALL_SIZES)
    for _ in range(30):
        feed(window, 200.0)  # far over the target, and stays there
    assert window.max_rows == 64
    assert window.rows_for_call() == 64  # and no probe: every size is measured
    assert window.window_ms < 1.0  # the window does shrink


def test_over_the_target_the_cap_drops_to_sizes_never_seen_but_not_below() -> None:
    """16 connections never make a batch over 16: a cap down to 16 cuts nothing, and below
    it a row costs more."""
    window = controller(25.0)
    measured(window.cost, linear, (1, 2, 4, 8, 16))
    for _ in range(30):
        feed(window, 200.0)
    assert window.max_rows == 16


def test_over_the_target_the_cap_falls_to_the_cheapest_size_per_row() -> None:
    window = controller(50.0)
    measured(window.cost, superlinear, ALL_SIZES)  # cheapest per row: 2-4 rows
    for _ in range(30):
        feed(window, 200.0)
    assert window.max_rows == 4
    assert window.rows_for_call() == 5  # once, one row over: the size above stays timed
    assert window.rows_for_call() == 4
    for _ in range(30):
        feed(window, 5.0)  # headroom, but larger batches cost more per row: it stays
    assert window.max_rows == 4


def test_noise_in_the_cost_per_row_does_not_move_the_cap() -> None:
    """Neighbouring sizes 10 % apart per row (what texts of varied length blur): over the
    target the cap stays where rows are cheapest."""
    window = controller(25.0)
    per_row = {1: 0.0135, 2: 0.0094, 4: 0.0075, 8: 0.0064, 16: 0.0066, 32: 0.0060, 64: 0.0061}
    measured(window.cost, lambda n: per_row[n] * n, ALL_SIZES)
    for _ in range(30):
        feed(window, 200.0)
    assert window.max_rows == 64


def test_a_size_not_measured_is_probed_once_before_the_cap_goes_there() -> None:
    window = controller(50.0, max_batch_size=32)
    measured(window.cost, superlinear, (32,))
    feed(window, 200.0)
    assert window.max_rows == 32
    assert window.rows_for_call() == 16  # one call of 16 rows, to time it
    assert window.rows_for_call() == 32
    window.cost.observe(16, superlinear(16))
    feed(window, 200.0)
    assert window.max_rows == 16  # measured clearly cheaper per row: the cap goes there


def test_the_cap_grows_back_when_larger_batches_are_cheaper_per_row() -> None:
    window = controller(100.0)
    measured(window.cost, superlinear, ALL_SIZES)
    for _ in range(30):
        feed(window, 500.0)
    assert window.max_rows == 4
    measured(window.cost, linear, ALL_SIZES * 60)  # the model got cheaper in large batches
    feed(window, 500.0)
    assert window.max_rows == 8  # larger measured cheaper per row: grows even over the target
    for _ in range(5):
        feed(window, 500.0)
    assert window.max_rows == 64


def test_a_cap_about_to_cut_at_a_size_never_measured_lifts_at_once() -> None:
    """Under light load the cap may fall past sizes no batch ever had (it cuts nothing then);
    when load grows, it must not hold rows back on no measure until the next look at the p99."""
    window = controller(100.0)
    measured(window.cost, linear, (1, 2))
    for _ in range(10):
        feed(window, 500.0)
    assert window.max_rows == 2  # past the sizes never seen; below 2 a row costs more
    assert window.lift()  # 3-4 rows were never timed: up at once
    assert window.max_rows == 4
    window.cost.observe(8, linear(8))
    assert not window.lift()  # 5-8 rows measured: the cap stands until the next look at the p99
    assert window.max_rows == 4


def test_the_batcher_lifts_a_cap_that_stands_on_no_measure(executor: ThreadPoolExecutor) -> None:
    fake = FakePredictor()
    config = BatchingConfig(max_batch_size=64, max_latency_ms=20, target_p99_ms=100.0)
    batcher = MicroBatcher(fake, config, executor)
    measured(batcher.cost, linear, (1, 2))
    for _ in range(10):
        feed(batcher.latency, 500.0)
    assert batcher.latency.max_rows == 2

    async def go() -> list[Outputs]:
        return await asyncio.gather(*(batcher.submit(rows(float(i))) for i in range(16)))

    run(go())
    assert fake.sizes[0] == 16  # one call: no size above 2 was measured to cap it at
    assert batcher.latency.max_rows == 16


def test_without_a_target_nothing_is_capped() -> None:
    window = controller(None)
    measured(window.cost, superlinear, ALL_SIZES)
    feed(window, 10_000.0, 640)
    assert window.max_rows == 64
    assert window.rows_for_call() == 64
    assert window.budget_ms is None


def test_the_p99_reads_the_requests_since_the_last_change() -> None:
    window = controller(100.0)
    feed(window, 50.0, 448)  # holding: under the target, without a 30 % margin
    feed(window, 500.0, 64)  # over: the controller changes something
    assert window.p99() == 500.0
    feed(window, 20.0, 64)  # the old 500s no longer count: 64 requests show the change
    assert window.p99() == 20.0


def test_a_waiting_batch_goes_in_time_for_the_budget(executor: ThreadPoolExecutor) -> None:
    """A 10 s window, nobody known to be outstanding, no rate known: only the target's budget
    (80 ms of 100) sends the lone request on its way."""
    fake = FakePredictor(delay_s=0.0)
    config = BatchingConfig(max_batch_size=8, max_latency_ms=10_000, target_p99_ms=100.0)
    batcher = MicroBatcher(fake, config, executor)
    started = time.perf_counter()
    run(batcher.submit(rows(1.0)), timeout=5.0)
    assert time.perf_counter() - started < 1.0
    assert fake.sizes == [1]


def test_the_cap_limits_a_call_and_keeps_whole_requests(executor: ThreadPoolExecutor) -> None:
    fake = FakePredictor()
    config = BatchingConfig(max_batch_size=64, max_latency_ms=20, target_p99_ms=50.0)
    batcher = MicroBatcher(fake, config, executor)
    measured(batcher.cost, superlinear, ALL_SIZES)
    for _ in range(30):
        feed(batcher.latency, 200.0)
    assert batcher.latency.max_rows == 4

    async def go() -> list[Outputs]:
        return await asyncio.gather(*(batcher.submit(rows(i, i, i)) for i in range(6)))

    run(go())
    # 3 + 3 would pass the cap of 4, and of 5 (the first call after a look at the p99 times
    # one row over the cap).
    assert fake.sizes == [3, 3, 3, 3, 3, 3]


# -- closed loops against a cost model -------------------------------------------------------


class CostedPredictor:
    """Sleeps ``seconds(rows)`` in the inference thread: a model with a known cost."""

    def __init__(self, seconds: Callable[[int], float]) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []

    def __call__(self, frame: pd.DataFrame) -> Outputs:
        self.sizes.append(len(frame))
        time.sleep(self.seconds(len(frame)))
        return {"double": frame["x"].to_numpy() * 2}


class ClosedLoop:
    """``clients`` tasks, each sending its next request as soon as the last is answered (what
    wrk's connections do), through a batcher told what is outstanding and fed each latency,
    as the inference path does."""

    def __init__(self, seconds: Callable[[int], float], clients: int, target: float | None):
        self.predictor = CostedPredictor(seconds)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="costed-predict")
        config = BatchingConfig(max_batch_size=64, max_latency_ms=50, target_p99_ms=target)
        self.inflight = 0
        self.batcher = MicroBatcher(
            self.predictor, config, self.executor, outstanding=lambda: self.inflight
        )
        self.clients = clients
        self.latencies: list[float] = []
        self.measuring = False
        self.stopping = False
        self.tasks: list[asyncio.Future[None]] = []

    async def client(self, i: int) -> None:
        while not self.stopping:
            started = time.perf_counter()
            self.inflight += 1
            try:
                await self.batcher.submit(rows(float(i)))
            finally:
                self.inflight -= 1
            latency_ms = (time.perf_counter() - started) * 1000.0
            self.batcher.latency.observe(latency_ms)
            if self.measuring:
                self.latencies.append(latency_ms)

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self.client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks)
        self.executor.shutdown(wait=True)

    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99))


async def loop_lag(seconds: float, tick_s: float = 0.005) -> float:
    """The longest the event loop was late to wake a sleeper over ``seconds``: a stall of the
    machine, not of the batcher."""
    loop = asyncio.get_running_loop()
    until, worst = loop.time() + seconds, 0.0
    while loop.time() < until:
        before = loop.time()
        await asyncio.sleep(tick_s)
        worst = max(worst, loop.time() - before - tick_s)
    return worst


def side_by_side(
    seconds: Callable[[int], float],
    clients: int,
    target: float,
    run_s: float,
    settled: Callable[[LatencyWindow], bool] = lambda _: True,
) -> tuple[ClosedLoop, ClosedLoop, float]:
    """The same load with and without the target, at the same time in one event loop (each
    with its own inference thread), so a busy machine slows both alike; measured for
    ``run_s`` once the target's controller has ``settled`` (10 s at most after a 0.5 s
    warm-up); and the longest stall of the loop meanwhile. An attempt with a stall over 30 ms
    is made again, twice at most (a stall holds every request in flight, which no batcher
    can help)."""
    for _ in range(3):
        held = ClosedLoop(seconds, clients, target)
        free = ClosedLoop(seconds, clients, None)

        async def go(held: ClosedLoop = held, free: ClosedLoop = free) -> float:
            loop = asyncio.get_running_loop()
            held.start()
            free.start()
            await asyncio.sleep(0.5)
            give_up = loop.time() + 10.0
            while not settled(held.batcher.latency) and loop.time() < give_up:
                await asyncio.sleep(0.05)
            held.measuring = free.measuring = True
            lag = await loop_lag(run_s)
            await held.stop()
            await free.stop()
            return lag

        stalled = run(go(), timeout=60.0)
        assert isinstance(stalled, float)
        if stalled < CALM_S:
            break
    return held, free, stalled


CALM_S = 0.030


def test_a_reachable_target_holds_and_costs_no_throughput() -> None:
    """8 clients, a call costs 20 ms + 4 ms a row: a batch of 8 takes 52 ms, and so does a
    request. A 150 ms target is reachable; with it, as many requests are answered as without
    and the p99 stays within 10 % of the target or within half again the no-target server's
    in the same run (a busy machine slows both; the absolute bound is bench/batching_sweep's)."""
    target = 150.0
    held, free, _ = side_by_side(lambda n: 0.020 + 0.004 * n, 8, target, 2.0)
    assert len(held.latencies) >= 0.8 * len(free.latencies)
    assert held.p99() <= max(1.1 * target, 1.5 * free.p99()), (held.p99(), free.p99())


def test_a_target_caps_batches_where_a_row_costs_more_in_a_larger_one() -> None:
    """32 clients, a call costs 0.5 ms + 0.2 ms x rows^2: without a target batches of 32 take
    over 200 ms, and so does every request; capped at 16 rows a row costs half as much, and
    requests take about 110 ms. The target finds that, holds its p99 and serves more, not
    fewer, requests."""
    target = 150.0
    held, free, _ = side_by_side(
        lambda n: 0.0005 + 0.0002 * n * n, 32, target, 1.5, lambda w: w.max_rows <= 16
    )
    assert held.batcher.latency.max_rows <= 16  # settled there, and stayed
    assert len(held.latencies) >= len(free.latencies)
    assert free.p99() > 1.1 * target  # the model can meet it, but only with the cap
    # Against the same load without a target in the same run: the cap shortens the longest
    # waits. (The absolute bound, p99 within 10 % of the target, is timing: bench/batching_sweep.)
    assert held.p99() < free.p99(), (held.p99(), free.p99())


def test_clients_that_come_back_at_once_are_waited_for_instead_of_taking_turns(
    executor: ThreadPoolExecutor,
) -> None:
    """16 clients that each send again 0.2-2 ms after their answer (a network's jitter): going
    as soon as every outstanding request is queued split them into calls that took turns; the
    batcher waits for the clients just answered (as long as the first of them took to come
    back) and calls with about 16."""
    fake = FakePredictor(delay_s=0.02)
    outstanding = Outstanding()
    config = BatchingConfig(max_batch_size=32, max_latency_ms=10.0)
    batcher = MicroBatcher(fake, config, executor, outstanding=outstanding)

    rng = np.random.default_rng(3)

    async def client(i: int, rounds: int) -> None:
        for r in range(rounds):
            outstanding.count += 1
            try:
                out = await batcher.submit(rows(100.0 * i + r))
            finally:
                outstanding.count -= 1
            assert out["double"].tolist() == [2.0 * (100.0 * i + r)]
            await asyncio.sleep(float(rng.uniform(0.0002, 0.002)))

    async def go() -> None:
        await asyncio.gather(*(client(i, 30) for i in range(16)))

    run(go(), timeout=60.0)
    assert sum(fake.sizes) == 16 * 30
    steady = fake.sizes[5:-5]
    assert sum(steady) / len(steady) > 12, fake.sizes
