"""The scoring stages of a job, overlapping in three threads, each in chunk order: a reader
decodes and validates chunk ``i+1`` while the path predicts chunk ``i`` (here, or on Ray in
windows of chunks) and a writer checkpoints chunk ``i-1``. Memory holds a few chunks whatever the
input's size. numpy, Arrow and the model's native code release the GIL for most of their work,
which is what lets the stages overlap.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from berth.batch import scoring
from berth.batch.jobs import JobInfo
from berth.batch.sources import Chunk
from berth.batch.specs import JobSpec
from berth.runtime.path import Backend, InferencePath
from berth.runtime.routing import Target


class Progress(Protocol):
    """What a job tells whoever watches it (a progress bar, log lines, nothing)."""

    def start(self, job: JobInfo, total: int | None, rows: int) -> None: ...

    def advance(self, rows: int, errors: int, total: int | None) -> None: ...

    def phase(self, text: str) -> None: ...


class Quiet:
    def start(self, job: JobInfo, total: int | None, rows: int) -> None:
        pass

    def advance(self, rows: int, errors: int, total: int | None) -> None:
        pass

    def phase(self, text: str) -> None:
        pass


def score(
    path: InferencePath,
    artifact_root: Path,
    chunks: Iterator[Chunk],
    target: Target,
    spec: JobSpec,
    job: JobInfo,
    commit: Callable[[scoring.Scored, int], None],
    progress: Progress,
) -> None:
    prepared = _prefetch(scoring.prepare(path, target, c) for c in chunks)
    pending: Future[None] | None = None
    try:
        with (
            _backend(path, artifact_root, spec, target, progress) as backend,
            ThreadPoolExecutor(1, thread_name_prefix="berth-batch-writer") as writer,
        ):
            for group in _windows(prepared, getattr(backend, "window", 1)):
                results = path.run_window(
                    target,
                    [item.validated for item in group],
                    mode="batch",
                    ids=[item.prediction_ids(job.id) for item in group],
                    record_keys=[f"batch-{job.id}-{item.chunk.index:06d}" for item in group],
                    record=spec.record,
                    backend=backend,
                )
                for item, result in zip(group, results, strict=True):
                    scored = scoring.assemble(item, result, passthrough=spec.passthrough)
                    if pending is not None:
                        pending.result()  # a failed write stops the job here
                    pending = writer.submit(commit, scored, item.chunk.rows)
            if pending is not None:
                pending.result()
    finally:  # also when the backend fails to start: the reader thread must not outlive the job
        prepared.close()


@contextlib.contextmanager
def _backend(
    path: InferencePath, artifact_root: Path, spec: JobSpec, target: Target, progress: Progress
) -> Iterator[Backend | None]:
    """Where predictions run: Ray workers, or (None) the path's own thread here."""
    if spec.engine == "ray":
        from berth.batch.ray_engine import RayBackend

        progress.phase(f"scoring {target.info.ref} on Ray")
        with RayBackend(artifact_root, spec.ray_address) as ray:
            yield ray
        return
    progress.phase(f"loading {target.info.ref}")
    path.load_sync(target)
    progress.phase(f"scoring with {target.info.ref}")
    try:
        yield None
    finally:
        path.release_sync(target)


def _windows(items: Iterator[scoring.Prepared], size: int) -> Iterator[list[scoring.Prepared]]:
    group: list[scoring.Prepared] = []
    for item in items:
        group.append(item)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


class _prefetch(Iterator[Any]):
    """Runs a generator in a thread, ``depth`` items ahead; its errors surface in the consumer."""

    _END = object()

    def __init__(self, items: Iterator[Any], depth: int = 2) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._fill, args=(items,), name="berth-batch-reader", daemon=True
        )
        self._thread.start()

    def _fill(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.exc
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class _Failure:
    exc: BaseException
