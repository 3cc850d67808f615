"""Running a batch job: which job (new, resumed, given up), its lock, its checkpoints and its
status in the jobs table. The scoring stages are in ``pipeline``, the end in ``finish``."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from berth.batch import scoring, sinks
from berth.batch.finish import finish_output, write_errors
from berth.batch.jobs import RESUMABLE, JobInfo, JobStore
from berth.batch.pipeline import Progress, Quiet, score
from berth.batch.sources import Reader, input_stamp, open_reader
from berth.batch.specs import JobSpec
from berth.errors import BerthError, ConflictError, InvalidInputError, UnavailableError
from berth.registry.references import Reference
from berth.runtime.path import InferencePath
from berth.runtime.routing import Target

log = logging.getLogger("berth.batch")


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
        write_errors(spec, work)
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

        score(
            ctx.path,
            ctx.artifact_root,
            reader.chunks(spec.chunk_rows, done),
            target,
            spec,
            job,
            commit,
            progress,
        )
        progress.phase("writing the output")
        finish_output(spec, work, stream.finish(state.chunks), target.info.signature, state.errors)
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
                write_errors(spec, work)  # so the bad rows can be looked at and fixed
        failure = _file_error(job, exc) if isinstance(exc, OSError) else None
        if failure is not None or isinstance(exc, BerthError):
            message = str(failure or exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        ctx.jobs.finish(job.id, "failed", message, seconds=spent + time.perf_counter() - started)
        if failure is not None:
            raise failure from exc
        raise
    finished = ctx.jobs.finish(job.id, "succeeded", seconds=spent + time.perf_counter() - started)
    shutil.rmtree(work, ignore_errors=True)
    return finished


def _file_error(job: JobInfo, exc: OSError) -> UnavailableError:
    """A file that could not be written or read (a folder removed, a full disk): one line naming
    it, since the finished chunks are kept and the same command resumes once it is fixed."""
    lines = str(exc).strip().splitlines()
    return UnavailableError(
        f"job {job.id} stopped on a file error: {lines[0] if lines else type(exc).__name__}; "
        "fix it and run the same command (or berth batch resume) to finish"
    )


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
