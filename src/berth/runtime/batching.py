"""Micro-batching: concurrent requests for one model version share one call to the predictor.

One predict is in flight per version at a time (the Predictor contract); requests that arrive
meanwhile queue and go together in the next call, up to ``max_batch_size`` rows. When idle, the
first request waits at most ``max_latency_ms`` for company, and less when waiting cannot grow the
batch: it goes at once when every request outstanding for the version is queued (the path counts
them) and none of the clients the last call answered is expected back (a closed loop of N
connections sends again a moment after each answer), or when the arrival rate says the next
request is due after the window closes.

``target_p99_ms`` holds the p99 latency under a target without spending throughput on it. Three
estimates, each a few float operations per request or per call, drive it: the p99 of the last 512
request latencies (re-read every 64, over the requests since the last change it made), an EWMA of
the gaps between submits, and an EWMA of the predictor's seconds per row in buckets of batch
sizes (1, 2, 3-4, 5-8, ..., each call timed from the event loop). From them:

- a **budget** (what a request may spend queued and predicted: 80 % of the target at first)
  shrinks while the p99 is over the target and grows back with headroom; a batch waiting for
  company goes early enough that its oldest request, at the batch's predicted cost, is answered
  within the budget. The **window** shrinks and grows the same way (at most half the target);
- the **rows per call** are capped: while the p99 is over the target the cap halves, but only
  past sizes never seen or to a size measured a fifth cheaper per row (a costlier one would
  spend throughput; one call at a size not measured yet times it first). It doubles back when
  larger batches are measured cheaper per row (a call of one row over the cap keeps that
  figure fresh), or with headroom unless smaller batches are clearly cheaper; and at once
  rather than leave rows behind at a size never measured.

Why the cap rarely moves: with a cost of ``a + b * rows`` per call, a fixed part and a part per
row (what most models show), leaving queued rows for a later call never shortens the longest
wait (they finish later by at least ``a``), so a cap helps the p99 only where a row costs more in
a larger batch, which is also where it raises throughput. And under a closed loop of N clients,
latency is N over throughput (Little's law): the lowest p99 comes with the highest throughput,
and a target below what the model reaches at that load is missed, but costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from berth.config import BatchingConfig

if TYPE_CHECKING:
    import pandas as pd

    from berth.types import Outputs

_ALPHA = 0.2  # EWMA weight of a new gap between arrivals
_COST_ALPHA = 0.1  # EWMA weight of a new call's seconds per row
_ADJUST_EVERY = 64  # latencies between two looks at the p99
# A smaller size is worth capping at only when a fifth cheaper per row: sentiment's neighbouring
# buckets differ by 6-14 % and texts of varied length make each figure noisier than that.
_CLEARLY = 0.8


def bucket(rows: int) -> int:
    """The size bucket of a batch: k holds sizes (2^(k-1), 2^k], so 1, 2, 3-4, 5-8, ..."""
    return (max(rows, 1) - 1).bit_length()


class Arrivals:
    """When the next request is due: an EWMA of the gaps between submits. A gap longer than
    ``longest_s`` counts as that, so a pause does not blind the estimate for long."""

    def __init__(self, alpha: float = _ALPHA, longest_s: float = 1.0) -> None:
        self.alpha = alpha
        self.longest_s = longest_s
        self.gap_s: float | None = None
        self.last: float | None = None

    def observe(self, now: float) -> None:
        if self.last is not None:
            gap = min(max(now - self.last, 0.0), self.longest_s)
            old = self.gap_s
            self.gap_s = gap if old is None else old + self.alpha * (gap - old)
        self.last = now

    def wait_s(self, now: float, deadline: float) -> float | None:
        """How long waiting for the next request may pay: 0 when it is due after ``deadline``
        or overdue (nobody is coming), else until it is due; None while no gap is known."""
        if self.gap_s is None or self.last is None:
            return None
        due = self.last + self.gap_s
        if due > deadline or now >= due:
            return 0.0
        return due - now


class BatchCost:
    """The predictor's seconds per row by batch size: an EWMA per size bucket (see
    :func:`bucket`), from the time each call took as the event loop saw it (the hand-off to
    the inference thread is part of a call's cost). One call counts as at most 3x the estimate,
    so a stall of the machine does not move it far."""

    def __init__(self, max_rows: int, alpha: float = _COST_ALPHA) -> None:
        self.alpha = alpha
        self._per_row: list[float | None] = [None] * (bucket(max_rows) + 1)

    def observe(self, rows: int, seconds: float) -> None:
        k = min(bucket(rows), len(self._per_row) - 1)
        value = seconds / max(rows, 1)
        old = self._per_row[k]
        self._per_row[k] = value if old is None else old + self.alpha * (min(value, 3 * old) - old)

    def per_row(self, k: int) -> float | None:
        """Bucket ``k``'s measured seconds per row; None if no call of that size was timed."""
        return self._per_row[k] if 0 <= k < len(self._per_row) else None

    def estimate(self, rows: int) -> float:
        """Predicted seconds of a call on ``rows`` rows: its bucket's cost per row, else the
        nearest measured bucket's, smaller sizes first (they err long); 0 while none is."""
        k = min(bucket(rows), len(self._per_row) - 1)
        for j in itertools.chain(range(k, -1, -1), range(k + 1, len(self._per_row))):
            value = self._per_row[j]
            if value is not None:
                return value * rows
        return 0.0


def _cheaper(a: float | None, b: float | None, margin: float = 1.0) -> bool:
    """Measured cost per row ``a`` is below ``margin`` times ``b``."""
    return a is not None and b is not None and a < margin * b


class LatencyWindow:
    """The p99 of recent request latencies against the target, and what it sets: the waiting
    window, the budget a waiting batch keeps to and the cap on rows per call (see the module's
    docstring). Without a target they stay as configured."""

    def __init__(
        self, config: BatchingConfig, size: int = 512, cost: BatchCost | None = None
    ) -> None:
        self.config = config
        self.cost = cost if cost is not None else BatchCost(config.max_batch_size)
        self.window_ms = config.max_latency_ms
        target = config.target_p99_ms
        self.budget_ms = None if target is None else 0.8 * target
        self._top = bucket(config.max_batch_size)
        self._level = self._top  # the cap is min(max_batch_size, 2 ** level)
        self._probe: int | None = None  # the cap of the next call, to time a size
        self._samples: deque[float] = deque(maxlen=size)
        self._since_adjust = 0
        self._since_change = 0

    @property
    def max_rows(self) -> int:
        """Rows per call now: ``max_batch_size`` unless the target capped it."""
        return min(self.config.max_batch_size, 1 << self._level)

    def rows_for_call(self) -> int:
        """The cap for the call about to go: :attr:`max_rows`, or once half of it or one row
        more, to time the size below or above it (see :meth:`_next_level`)."""
        probe, self._probe = self._probe, None
        return self.max_rows if probe is None else probe

    def lift(self) -> bool:
        """The cap is about to leave rows behind that ``max_batch_size`` would take: doubles it
        at once if no batch of the size above was ever timed (the cap went there while nothing
        that large came, so it stands on no measure). Returns whether it did."""
        if self._level < self._top and self.cost.per_row(self._level + 1) is None:
            self._level += 1
            self._since_change = 0
            return True
        return False

    def observe(self, latency_ms: float) -> None:
        self._samples.append(latency_ms)
        self._since_change += 1
        target = self.config.target_p99_ms
        if target is None:
            return
        self._since_adjust += 1
        if self._since_adjust < _ADJUST_EVERY:
            return
        self._since_adjust = 0
        self._adjust(self.p99(), target)

    def p99(self) -> float:
        """Over the latencies since the last change (at least 64 of them, at most all kept):
        a change shows within 64 requests instead of waiting for 512 to age out."""
        n = len(self._samples)
        if not n:
            return 0.0
        k = min(n, max(_ADJUST_EVERY, self._since_change))
        recent = sorted(itertools.islice(self._samples, n - k, n))
        return recent[min(k - 1, int(0.99 * k))]

    def _adjust(self, p99: float, target: float) -> None:
        before = (self.window_ms, self.budget_ms, self._level)
        over, headroom = p99 > target, p99 < 0.7 * target
        assert self.budget_ms is not None
        if over:
            self.window_ms *= 0.7
            self.budget_ms = max(self.budget_ms * 0.8, 0.25 * target)
        elif headroom:
            self.window_ms = min(max(self.window_ms * 1.2, 0.2), target / 2)
            self.budget_ms = min(self.budget_ms * 1.1, 0.8 * target)
        self._level = self._next_level(over, headroom)
        if (self.window_ms, self.budget_ms, self._level) != before:
            self._since_change = 0

    def _next_level(self, over: bool, headroom: bool) -> int:
        j, per_row = self._level, self.cost.per_row
        if j < self._top:
            up, here = per_row(j + 1), per_row(j)
            if _cheaper(up, here) or (headroom and not _cheaper(here, up, _CLEARLY)):
                return j + 1  # throughput first
        if over and j > 0:
            here, below = per_row(j), per_row(j - 1)
            # Unmeasured here: the cap cuts nothing seen. Noise is no reason to go lower.
            if here is None or _cheaper(below, here, _CLEARLY):
                return j - 1
            if below is None:
                self._probe = min(self.config.max_batch_size, 1 << (j - 1))  # time it first
                return j
        if j < self._top and per_row(j + 1) is not None:
            # Capped: keep the figure of the size above fresh, with one row more than the cap
            # (a full batch of that size might be what breaks the target).
            self._probe = self.max_rows + 1
        return j


class MicroBatcher:
    def __init__(
        self,
        predict: Callable[[pd.DataFrame], Outputs],
        config: BatchingConfig,
        executor: Executor,
        on_batch: Callable[[int], None] | None = None,
        outstanding: Callable[[], int] | None = None,
    ) -> None:
        """``outstanding`` counts the requests for this version that have entered the path and
        are not answered yet: when every one of them is already queued, waiting cannot grow the
        batch (a client with N connections has at most N requests out) and it goes at once.
        The path reports each request's latency to ``latency.observe``."""
        self.predict = predict
        self._outstanding = outstanding
        self.config = config
        self.executor = executor
        self.cost = BatchCost(config.max_batch_size)
        self.latency = LatencyWindow(config, cost=self.cost)
        self.arrivals = Arrivals()
        self._on_batch = on_batch
        # (frame, future, time it was queued on the loop's clock)
        self._queue: deque[tuple[pd.DataFrame, asyncio.Future[Outputs], float]] = deque()
        self._queued_rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        # Closed-loop clients come back: the requests of the last call answered, not back yet.
        self._returns = 0
        self._answered_rows = 0
        self._answered_at = 0.0
        self._back_s: float | None = None  # EWMA of how soon the first of them came back

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, frame: pd.DataFrame) -> Outputs:
        """The outputs for ``frame``'s rows. A frame of more than ``max_batch_size`` rows goes
        a call's worth at a time, each part to the back of the queue when the one before is
        answered, so requests that arrive meanwhile share the calls instead of waiting for the
        whole of it (a one-sentence request waited 16 s behind 200 texts)."""
        bounds = self._parts(frame)
        if bounds is None:
            return await self._submit(frame)
        import numpy as np

        parts = []
        for start, end in itertools.pairwise(bounds):
            parts.append(await self._submit(frame.iloc[start:end].reset_index(drop=True)))
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _parts(self, frame: pd.DataFrame) -> list[int] | None:
        """Where a large request is cut into parts (row positions, 0 to its length), or None
        when it goes whole: parts of ``max_batch_size`` rows and, with ``part_chars``, of at most
        that many characters of text (a part has at least one row)."""
        import numpy as np

        limit, chars = self.config.max_batch_size, self.config.part_chars
        rows = len(frame)
        sizes: np.ndarray[Any, Any] | None = None
        if chars is not None:
            import pandas as pd

            texts = [
                frame[c]
                for c in frame.columns
                if frame[c].dtype == object or isinstance(frame[c].dtype, pd.StringDtype)
            ]
            if texts:
                sizes = np.zeros(rows, dtype=np.int64)
                for values in texts:
                    sizes += np.fromiter(map(len, values), dtype=np.int64, count=rows)
        if rows <= limit and (sizes is None or int(sizes.sum()) <= (chars or 0)):
            return None
        if sizes is None:  # rows alone: no loop over them
            return [*range(0, rows, limit), rows]
        bounds, start, used = [0], 0, 0
        for i, size in enumerate(sizes.tolist()):
            if i > start and (i - start >= limit or (chars is not None and used + size > chars)):
                bounds.append(i)
                start, used = i, 0
            used += size
        bounds.append(rows)
        return bounds

    async def _submit(self, frame: pd.DataFrame) -> Outputs:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        now = loop.time()
        self.arrivals.observe(now)
        if self._returns:
            if self._returns == self._answered_rows:  # the first one back: how long it took
                back = min(now - self._answered_at, 1.0)
                old = self._back_s
                self._back_s = back if old is None else old + _ALPHA * (back - old)
            self._returns -= 1
        self._queue.append((frame, future, now))
        self._queued_rows += len(frame)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())
        assert self._wake is not None
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Finish what is queued and the batch in flight, then stop."""
        while self._queue or self._busy:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._gather(loop)
            taken = self._take()
            if not taken:
                continue
            self._busy = True
            try:
                await self._predict(loop, taken)
            finally:
                self._busy = False

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for company until the batch is full, the window closes, nobody else can come
        (every outstanding request is queued, or the next is due after the window), or the
        oldest request must go to be answered within the target's budget."""
        assert self._wake is not None
        started = loop.time()
        if self._outstanding is not None and self.latency.window_ms > 0:
            # Let the requests just answered finish first: until they do, they still count
            # as outstanding.
            await asyncio.sleep(0)
        while self._queue and self._queued_rows < self.latency.max_rows:
            now = loop.time()
            returning = 0.0
            if self._outstanding is not None and self._outstanding() <= len(self._queue):
                returning = self._returning_s(now)
                if returning <= 0:
                    return
            wait = self._wait_s(now, started, returning)
            if wait <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _returning_s(self, now: float) -> float:
        """How much longer the clients of the last call answered may take to come back, when
        every request outstanding is queued: 0 when none is expected. A client that sends its
        next request as soon as it has its answer (a closed loop: a pool of N connections) is
        outstanding again a moment later; going without it split N clients into two calls of
        N/2 that took turns (sentiment at 16 connections: 8 rows a call on average). Waited
        for only as long as the first of them took to come back (twice its average, plus
        half a millisecond), within the window."""
        if not self._returns or self._back_s is None:
            return 0.0
        allow = min(2.0 * self._back_s + 0.0005, self.latency.window_ms / 1000.0)
        return self._answered_at + allow - now

    def _wait_s(self, now: float, started: float, returning: float = 0.0) -> float:
        """How much longer the queued requests may wait for company; 0 or less: go now.
        ``returning``: clients just answered are expected back within that long."""
        deadline = started + self.latency.window_ms / 1000.0
        budget = self.latency.budget_ms
        if budget is not None:
            rows = min(self._queued_rows, self.latency.max_rows)
            oldest = self._queue[0][2]
            deadline = min(deadline, oldest + budget / 1000.0 - self.cost.estimate(rows))
        if now >= deadline:
            return 0.0
        if returning > 0:
            return min(deadline - now, returning)
        hint = self.arrivals.wait_s(now, deadline)
        return deadline - now if hint is None else hint

    def _drop_abandoned(self) -> None:
        """Take requests whose caller stopped waiting (a deadline passed) off the queue."""
        if not any(future.done() for _, future, _ in self._queue):
            return
        kept = [entry for entry in self._queue if not entry[1].done()]
        self._queue = deque(kept)
        self._queued_rows = sum(len(frame) for frame, _, _ in kept)

    def _take(self) -> list[tuple[pd.DataFrame, asyncio.Future[Outputs], float]]:
        self._drop_abandoned()
        if not self._queue:
            return []
        latency, limit = self.latency, self.config.max_batch_size
        cap = latency.rows_for_call()
        taken = [self._queue.popleft()]
        rows = len(taken[0][0])
        while self._queue:
            size = len(self._queue[0][0])
            if rows + size > cap:
                # A probe is no cut; a cap that stands on no measure goes up instead.
                if cap != latency.max_rows or rows + size > limit or not latency.lift():
                    break
                cap = latency.max_rows
                continue
            taken.append(self._queue.popleft())
            rows += size
        self._queued_rows -= rows
        return taken

    def _call(self, frames: list[pd.DataFrame]) -> Outputs:
        """In the inference thread: joining the frames there keeps the event loop free."""
        import pandas as pd

        batch = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        return self.predict(batch)

    async def _predict(
        self,
        loop: asyncio.AbstractEventLoop,
        taken: list[tuple[pd.DataFrame, asyncio.Future[Outputs], float]],
    ) -> None:
        frames = [frame for frame, _, _ in taken]
        rows = sum(len(f) for f in frames)
        if self._on_batch is not None:
            self._on_batch(rows)
        started = loop.time()  # the hand-off to the thread and back counts: requests wait it
        try:
            outputs = await loop.run_in_executor(self.executor, self._call, frames)
        except Exception as exc:
            if len(taken) == 1:
                _fail(taken[0][1], exc)
                return
            # One request's rows may be what broke the batch: retry each alone, so only it fails.
            for frame, future, _ in taken:
                try:
                    result = await loop.run_in_executor(self.executor, self.predict, frame)
                except Exception as exc:
                    _fail(future, exc)
                else:
                    _resolve(future, result)
            return
        self.cost.observe(rows, loop.time() - started)
        start = 0
        for frame, future, _ in taken:
            end = start + len(frame)
            _resolve(future, {name: values[start:end] for name, values in outputs.items()})
            start = end
        self._returns = self._answered_rows = len(taken)
        self._answered_at = loop.time()


def _resolve(future: asyncio.Future[Outputs], outputs: Outputs) -> None:
    if not future.done():
        future.set_result(outputs)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
