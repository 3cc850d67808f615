"""Micro-batching: concurrent requests for one model version share one call to the predictor.

One predict is in flight per version at a time (the Predictor contract); requests that arrive
meanwhile queue and go together in the next call, up to ``max_batch_size`` rows. When idle, the
first request waits at most ``max_latency_ms`` for company. With ``target_p99_ms`` set, the window
adapts online: it shrinks while the observed p99 latency is above the target and grows back while
there is headroom, so the server trades latency for throughput only as far as the target allows.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from berth.config import BatchingConfig

if TYPE_CHECKING:
    import pandas as pd

    from berth.types import Outputs


class LatencyWindow:
    """The p99 of recent request latencies, and the batching window it implies."""

    def __init__(self, config: BatchingConfig, size: int = 512) -> None:
        self.config = config
        self.window_ms = config.max_latency_ms
        self._samples: deque[float] = deque(maxlen=size)
        self._since_adjust = 0

    def observe(self, latency_ms: float) -> None:
        self._samples.append(latency_ms)
        target = self.config.target_p99_ms
        if target is None:
            return
        self._since_adjust += 1
        if self._since_adjust < 64:
            return
        self._since_adjust = 0
        p99 = self.p99()
        if p99 > target:
            self.window_ms *= 0.7
        elif p99 < 0.7 * target:
            self.window_ms = min(max(self.window_ms * 1.2, 0.2), target / 2)

    def p99(self) -> float:
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


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
        batch (a client with N connections has at most N requests out) and it goes at once."""
        self.predict = predict
        self._outstanding = outstanding
        self.config = config
        self.executor = executor
        self.latency = LatencyWindow(config)
        self._on_batch = on_batch
        self._queue: deque[tuple[pd.DataFrame, asyncio.Future[Outputs]]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, frame: pd.DataFrame) -> Outputs:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._queue.append((frame, future))
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
            self._busy = True
            try:
                await self._predict(loop, self._take())
            finally:
                self._busy = False

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for company until the batch is full, the window closes, or nobody else can
        come (every outstanding request is queued)."""
        assert self._wake is not None
        deadline = loop.time() + self.latency.window_ms / 1000.0
        if self._outstanding is not None and deadline > loop.time():
            # Let the requests just answered finish first: until they do, they still count
            # as outstanding.
            await asyncio.sleep(0)
        while self._rows() < self.config.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if self._outstanding is not None and self._outstanding() <= len(self._queue):
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _rows(self) -> int:
        return sum(len(frame) for frame, _ in self._queue)

    def _take(self) -> list[tuple[pd.DataFrame, asyncio.Future[Outputs]]]:
        taken = [self._queue.popleft()]
        rows = len(taken[0][0])
        while self._queue and rows + len(self._queue[0][0]) <= self.config.max_batch_size:
            item = self._queue.popleft()
            taken.append(item)
            rows += len(item[0])
        return taken

    def _call(self, frames: list[pd.DataFrame]) -> Outputs:
        """In the inference thread: joining the frames there keeps the event loop free."""
        import pandas as pd

        batch = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        return self.predict(batch)

    async def _predict(
        self,
        loop: asyncio.AbstractEventLoop,
        taken: list[tuple[pd.DataFrame, asyncio.Future[Outputs]]],
    ) -> None:
        frames = [frame for frame, _ in taken]
        if self._on_batch is not None:
            self._on_batch(sum(len(f) for f in frames))
        try:
            outputs = await loop.run_in_executor(self.executor, self._call, frames)
        except Exception as exc:
            if len(taken) == 1:
                _fail(taken[0][1], exc)
                return
            # One request's rows may be what broke the batch: retry each alone, so only it fails.
            for frame, future in taken:
                try:
                    result = await loop.run_in_executor(self.executor, self.predict, frame)
                except Exception as exc:
                    _fail(future, exc)
                else:
                    _resolve(future, result)
            return
        start = 0
        for frame, future in taken:
            end = start + len(frame)
            _resolve(future, {name: values[start:end] for name, values in outputs.items()})
            start = end


def _resolve(future: asyncio.Future[Outputs], outputs: Outputs) -> None:
    if not future.done():
        future.set_result(outputs)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
