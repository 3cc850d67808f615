"""Running a batch job on this machine: read, validate, predict and write in overlapping stages.

Three threads, each in chunk order: a reader decodes and validates chunk ``i+1`` while the model
predicts chunk ``i`` and a writer checkpoints chunk ``i-1``. Memory holds a few chunks whatever the
input's size. numpy, Arrow and the model's native code release the GIL for most of their work,
which is what lets the stages overlap.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from filelock import FileLock, Timeout

from berth.batch import scoring, sinks
from berth.batch.jobs import RESUMABLE, JobInfo, JobStore
from berth.batch.sources import Chunk, Reader, input_stamp, open_reader
from berth.batch.specs import JobSpec
from berth.errors import BerthError, ConflictError, InvalidInputError
from berth.registry.references import Reference
from berth.registry.signature import Signature
from berth.runtime.outputs import flat_fields
from berth.runtime.path import Backend, InferencePath
from berth.runtime.routing import Target

log = logging.getLogger("berth.batch")


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


@dataclass
class BatchContext:
    """What a job needs from the composition root."""

    path: InferencePath
    jobs: JobStore
    work_root: Path
    artifact_root: Path
    actor: str


class StoppedError(InvalidInputError):
    """Too many bad rows: the job stops, resumable once the input is fixed."""


def run_job(
    ctx: BatchContext,
    spec: JobSpec,
    *,
    resume: str | None = None,
    progress: Progress | None = None,
    schedule_id: int | None = None,
) -> JobInfo:
    """Run ``spec`` (or resume job ``resume``), returning the finished job.

    The same spec as an unfinished job resumes that job: its pinned version, its finished chunks.
    Fails fast, before any scoring, on an unreadable input, a missing column, or an output that
    exists (without ``overwrite``).
    """
    progress = progress or Quiet()
    existing = ctx.jobs.get(resume) if resume else ctx.jobs.resumable(spec)
    if existing is not None and spec.restart and not resume:
        _abandon(ctx, existing)
        existing = None
    if existing is not None:
        if existing.status == "succeeded":
            raise ConflictError(f"job {existing.id} already succeeded; nothing to resume")
        if existing.status not in RESUMABLE:
            raise ConflictError(f"job {existing.id} was {existing.status}; it cannot be resumed")
        spec = existing.spec if resume else spec
        target = ctx.path.resolve_sync(Reference(existing.model, version=existing.version))
    else:
        target = ctx.path.resolve_sync(spec.reference)
    info = target.info
    signature = info.signature
    scoring.check_passthrough(signature, spec.passthrough)
    wanted = list(dict.fromkeys([*signature.names, *spec.passthrough]))
    reader = open_reader(spec.input, wanted, signature)
    try:
        sinks.check_free(spec.output, spec.overwrite)
        _check_errors_file(spec, fresh=existing is None)
        total = reader.total_rows
        stamp = input_stamp(spec.input)
        if existing is not None and existing.source_stamp != stamp:
            raise ConflictError(
                f"input {spec.input.describe()} changed since job {existing.id} started; "
                "resuming would mix the two: berth batch run ... --restart starts again from "
                "the first row"
            )
        if existing is None:
            job = ctx.jobs.create(
                spec,
                model=info.model,
                version=info.version,
                actor=ctx.actor,
                total_rows=total,
                schedule_id=schedule_id,
                source_stamp=stamp,
            )
        else:
            job = existing
        work = ctx.work_root / job.id
        work.mkdir(parents=True, exist_ok=True)
        with _lock(work, job):
            if existing is not None:
                job = ctx.jobs.claim(job.id, actor=ctx.actor)
            return _run(ctx, job, spec, target, reader, work, progress)
    finally:
        reader.close()


def _check_errors_file(spec: JobSpec, *, fresh: bool) -> None:
    """The errors file's folder must exist, and a new job does not silently replace another
    run's errors file. (A database output's errors file is named after its job: always new.)"""
    if spec.output.is_database and not spec.errors_path:
        return
    path = spec.errors_file(Path("."))
    if not path.parent.is_dir():
        raise InvalidInputError(f"errors file folder {str(path.parent)!r} does not exist")
    if fresh and path.exists() and not spec.overwrite:
        raise ConflictError(
            f"errors file {str(path)!r} exists (an earlier run's?); pass --overwrite to replace "
            "it, or --errors PATH"
        )


def _abandon(ctx: BatchContext, job: JobInfo) -> None:
    """Give a job up for a new start: its checkpoints, prediction records and errors file go, so
    that no row is recorded twice."""
    work = ctx.work_root / job.id
    work.mkdir(parents=True, exist_ok=True)
    with _lock(work, job):  # not while a live process runs it
        message = "given up for a new start (--restart)"
        ctx.jobs.finish(job.id, "abandoned", message, seconds=job.seconds)
        if ctx.path.records is not None:
            ctx.path.records.discard(job.model, f"batch-{job.id}-")
        job.spec.errors_file(work).unlink(missing_ok=True)  # its bad rows, written when it stopped
    shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _lock(work: Path, job: JobInfo) -> Iterator[None]:
    """Only a live process holds the lock, so a job whose process was killed is free to resume
    while a running one is not run twice."""
    lock = FileLock(work / "lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        where = f" (process {job.pid} on {job.host})" if job.pid else ""
        raise ConflictError(f"job {job.id} is running{where}") from None
    try:
        yield
    finally:
        lock.release()


def _run(
    ctx: BatchContext,
    job: JobInfo,
    spec: JobSpec,
    target: Target,
    reader: Reader,
    work: Path,
    progress: Progress,
) -> JobInfo:
    started = time.perf_counter()
    spent = job.seconds
    outputs, errors = work / "parts", work / "errors"
    for stray in [*outputs.glob(".*.tmp"), *errors.glob(".*.tmp")]:
        stray.unlink()
    done = min(sinks.finished_parts(outputs), sinks.finished_parts(errors))
    rows = bad = 0
    for output_part, error_part in zip(
        sinks.parts(outputs)[:done], sinks.parts(errors)[:done], strict=True
    ):
        error_rows = sinks.part_rows(error_part)
        rows += sinks.part_rows(output_part) + error_rows
        bad += error_rows
    total = reader.total_rows
    progress.start(job, total, rows)
    if spec.max_errors.exceeded(bad, rows):  # stopped before: the rows are still bad
        _write_errors(spec, work)
        stopped = _stopped(spec, work, rows, bad)
        ctx.jobs.finish(job.id, "failed", str(stopped), seconds=spent)
        raise stopped
    stream = sinks.Streamed(spec.output, work)
    parquet_parts = spec.output.format == "parquet-folder"  # the parts become the output
    try:
        state = _State(rows, bad, done)

        def commit(scored: scoring.Scored, chunk_rows: int) -> None:
            if scored.result.recorded is not None:
                scored.result.recorded.result()  # records before the checkpoint
            sinks.write_part(errors, scored.index, scored.errors)
            # The checkpoint: after it, the chunk is done.
            sinks.write_part(outputs, scored.index, scored.output, parquet=parquet_parts)
            stream.add(scored.index, scored.output)
            state.rows += chunk_rows
            state.errors += scored.errors.num_rows
            state.chunks = scored.index + 1
            estimate = reader.estimate_total(state.rows)
            ctx.jobs.progress(
                job.id,
                rows=state.rows,
                errors=state.errors,
                chunks=state.chunks,
                seconds=spent + time.perf_counter() - started,
                total_rows=estimate if total is None else None,
            )
            progress.advance(state.rows, state.errors, estimate)
            if spec.max_errors.exceeded(state.errors, state.rows):
                raise _stopped(spec, work, state.rows, state.errors)

        _pipeline(ctx, reader.chunks(spec.chunk_rows, done), target, spec, job, commit, progress)
        progress.phase("writing the output")
        _finish_output(spec, work, stream.finish(state.chunks), target.info.signature, state.errors)
    except KeyboardInterrupt:
        stream.drop()
        ctx.jobs.finish(
            job.id,
            "interrupted",
            "interrupted; run the same command or berth batch resume to finish",
            seconds=spent + time.perf_counter() - started,
        )
        raise
    except BaseException as exc:
        stream.drop()
        if isinstance(exc, StoppedError):
            with contextlib.suppress(Exception):  # the job's failure is the news, not this
                _write_errors(spec, work)  # so the bad rows can be looked at and fixed
        message = str(exc) if isinstance(exc, BerthError) else f"{type(exc).__name__}: {exc}"
        ctx.jobs.finish(job.id, "failed", message, seconds=spent + time.perf_counter() - started)
        raise
    finished = ctx.jobs.finish(job.id, "succeeded", seconds=spent + time.perf_counter() - started)
    shutil.rmtree(work, ignore_errors=True)
    return finished


def _stopped(spec: JobSpec, work: Path, rows: int, bad: int) -> StoppedError:
    return StoppedError(
        f"stopped after {rows:,} rows: {bad:,} failed validation, more than --max-errors allows "
        f"({spec.max_errors.describe()}); they are in {spec.errors_file(work)}"
    )


@dataclass
class _State:
    rows: int
    errors: int
    chunks: int


def _pipeline(
    ctx: BatchContext,
    chunks: Iterator[Chunk],
    target: Target,
    spec: JobSpec,
    job: JobInfo,
    commit: Callable[[scoring.Scored, int], None],
    progress: Progress,
) -> None:
    path = ctx.path
    prepared = _prefetch(scoring.prepare(path, target, c) for c in chunks)
    pending: Future[None] | None = None
    with (
        _backend(ctx, spec, target, progress) as backend,
        ThreadPoolExecutor(1, thread_name_prefix="berth-batch-writer") as writer,
    ):
        try:
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
        finally:
            prepared.close()


@contextlib.contextmanager
def _backend(
    ctx: BatchContext, spec: JobSpec, target: Target, progress: Progress
) -> Iterator[Backend | None]:
    """Where predictions run: Ray workers, or (None) the path's own thread here."""
    if spec.engine == "ray":
        from berth.batch.ray_engine import RayBackend

        progress.phase(f"scoring {target.info.ref} on Ray")
        with RayBackend(ctx.artifact_root, spec.ray_address) as ray:
            yield ray
        return
    progress.phase(f"loading {target.info.ref}")
    ctx.path.load_sync(target)
    progress.phase(f"scoring with {target.info.ref}")
    yield None


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


def _finish_output(
    spec: JobSpec, work: Path, streamed: Path | None, signature: Signature, bad: int
) -> None:
    outputs = work / "parts"
    if bad:  # first: a failure here leaves no output in place that a rerun would refuse
        _write_errors(spec, work)
    if streamed is not None:
        sinks.place(streamed, spec.output, spec.overwrite)
    else:
        output_parts = sinks.parts(outputs)
        schema = _schema(output_parts) or _empty_output(spec, signature)
        sinks.assemble(spec.output, output_parts, schema, spec.overwrite)
    if not bad and spec.errors_file(work).exists() and spec.overwrite:
        spec.errors_file(work).unlink()  # an earlier run's, no longer true


def _write_errors(spec: JobSpec, work: Path) -> None:
    """The bad rows of the finished chunks as one CSV, replaced in one rename."""
    errors_file = spec.errors_file(work)
    error_parts = sinks.parts(work / "errors")
    error_schema = _schema(error_parts)
    if error_schema is None:
        return
    tmp = errors_file.with_name(f".{errors_file.name}.berth-tmp")
    rows = (t for t in sinks.tables(error_parts) if t.num_rows)
    sinks.write_table_file("csv", rows, error_schema, tmp)
    tmp.replace(errors_file)


def _schema(parts: list[Path]) -> pa.Schema | None:
    """The parts' common schema: a chunk whose passthrough column held only nulls has a null
    column, which the other chunks' type absorbs."""
    schemas = [sinks.part_schema(p) for p in parts]
    if not schemas:
        return None
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # A column that is a number in one chunk and text in another (a passthrough id that is
        # "A3" once): text for all, as within one chunk.
        kinds: dict[str, set[pa.DataType]] = {}
        for schema in schemas:
            for field in schema:
                kinds.setdefault(field.name, set()).add(field.type)
        fields = []
        for field in schemas[0]:
            known = kinds[field.name] - {pa.null()}
            kind = pa.string() if len(known) > 1 else next(iter(known), field.type)
            fields.append(pa.field(field.name, kind))
        return pa.schema(fields)


def _empty_output(spec: JobSpec, signature: Signature) -> pa.Schema:
    """The output's columns for an input without rows: typed as a non-empty run's would be
    (passthrough columns, whose type only data tells, as text)."""
    fields = [pa.field(name, pa.string()) for name in spec.passthrough]
    return pa.schema(fields + flat_fields(signature))
