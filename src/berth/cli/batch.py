"""``berth batch``: score files and tables; resume, list and schedule jobs. ``berth scheduler``.

Longer than an adapter module should be (about 580 lines) because eight commands declare their
options here; each command body is a few lines that build a ``JobSpec`` and call the client."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from berth.batch.specs import DEFAULT_CHUNK_ROWS, ErrorLimit, JobSpec, destination, source
from berth.errors import InvalidInputError

from .context import client
from .output import bold, console, fields, log_to_stderr, print_json, when

if TYPE_CHECKING:
    from berth.batch.jobs import JobInfo, ScheduleInfo

app = typer.Typer(
    help="Score large files and tables in chunks: resumable, scheduled, on Ray when needed.\n\n"
    "Example: berth batch run credit-risk@production -i customers.parquet -o scores.parquet",
    no_args_is_help=True,
)

stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Input = Annotated[
    str,
    typer.Option(
        "--input", "-i", help="Parquet file or folder, CSV, JSONL, or a database URL (--query)."
    ),
]
Output = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        help="Parquet (file, or folder when no suffix), CSV, JSONL, or a database URL (--table).",
    ),
]
Query = Annotated[
    str | None, typer.Option(help="SQL query to read when --input is a database URL.")
]
TableName = Annotated[
    str | None, typer.Option("--table", help="Table to write when --output is a database URL.")
]
InputFormat = Annotated[
    str | None, typer.Option(help="Input format when the suffix does not say: parquet, csv, jsonl.")
]
OutputFormat = Annotated[
    str | None, typer.Option(help="Output format when the suffix does not say.")
]
Passthrough = Annotated[
    list[str] | None,
    typer.Option(
        "--passthrough", "-p", help="Input columns copied to the output (repeat, or a,b,c)."
    ),
]
ChunkRows = Annotated[
    int, typer.Option(help="Rows per chunk: memory use and checkpoint size.", min=1)
]
MaxErrors = Annotated[
    str | None,
    typer.Option(help="Stop when more rows than this fail validation: a count, 0.01, or 1%."),
]
ErrorsPath = Annotated[
    str | None, typer.Option("--errors", help="CSV for bad rows (default NAME.errors.csv).")
]
Overwrite = Annotated[bool, typer.Option(help="Replace the output if it exists.")]
Restart = Annotated[
    bool,
    typer.Option(help="Give up an unfinished job of this command and start from the first row."),
]
Engine = Annotated[str, typer.Option(help="local, or ray (needs Berth's ray extra installed).")]
Address = Annotated[
    str | None, typer.Option(help="Ray cluster address (default: start a local Ray).")
]
Records = Annotated[bool, typer.Option("--records/--no-records", help="Write prediction records.")]


def _spec(
    ref: str,
    input_: str,
    output: str,
    *,
    query: str | None,
    table: str | None,
    input_format: str | None,
    output_format: str | None,
    passthrough: list[str] | None,
    chunk_rows: int,
    max_errors: str | None,
    errors: str | None,
    overwrite: bool,
    engine: str,
    address: str | None,
    records: bool,
    restart: bool = False,
) -> JobSpec:
    columns = tuple(c.strip() for item in passthrough or [] for c in item.split(",") if c.strip())
    return JobSpec(
        reference=ref,
        input=source(input_, input_format, query),
        output=destination(output, output_format, table),
        passthrough=columns,
        chunk_rows=chunk_rows,
        max_errors=ErrorLimit.parse(max_errors),
        errors_path=errors,
        overwrite=overwrite,
        engine=engine,
        ray_address=address,
        record=records,
        restart=restart,
    )


@app.command("run")
def run(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME/VERSION or NAME@ALIAS.")],
    input_: Input,
    output: Output,
    query: Query = None,
    table: TableName = None,
    input_format: InputFormat = None,
    output_format: OutputFormat = None,
    passthrough: Passthrough = None,
    chunk_rows: ChunkRows = DEFAULT_CHUNK_ROWS,
    max_errors: MaxErrors = None,
    errors: ErrorsPath = None,
    overwrite: Overwrite = False,
    restart: Restart = False,
    engine: Engine = "local",
    address: Address = None,
    records: Records = True,
    as_json: JsonFlag = False,
) -> None:
    """Score a file or table with a registered version, chunk by chunk, in bounded memory.

    Output rows carry the passthrough columns, prediction_id, model, version, the label and
    one probability column per class. Rows that fail validation go to the errors file. Run the
    same command again after an interruption (even kill -9) to finish the job where it stopped.

    Example: berth batch run credit-risk@production -i customers.parquet -o scores.parquet
    -p customer_id --max-errors 1%
    """
    spec = _spec(
        ref,
        input_,
        output,
        query=query,
        table=table,
        input_format=input_format,
        output_format=output_format,
        passthrough=passthrough,
        chunk_rows=chunk_rows,
        max_errors=max_errors,
        errors=errors,
        overwrite=overwrite,
        engine=engine,
        address=address,
        records=records,
        restart=restart,
    )
    _execute(ctx, spec, None, as_json)


@app.command("resume")
def resume(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix of it).")],
    as_json: JsonFlag = False,
) -> None:
    """Finish an interrupted or failed job from its last checkpoint.

    Example: berth batch resume 3f2a9c1b
    """
    spec = client(ctx).jobs.get(job).spec
    _execute(ctx, spec, job, as_json)


def _execute(ctx: typer.Context, spec: JobSpec, resume_id: str | None, as_json: bool) -> None:
    c = client(ctx)
    watcher: Any = BarProgress() if stderr.is_terminal else LineProgress()
    with _term_as_interrupt(), watcher:
        try:
            job = c.run_batch(spec, resume=resume_id, progress=watcher)
        except KeyboardInterrupt:
            watcher.close()
            stderr.print("interrupted: run the same command (or berth batch resume) to finish")
            raise typer.Exit(130) from None
    if as_json:
        print_json(_shown(job))
        return
    rate = job.rows / job.seconds if job.seconds else 0.0
    bold(
        f"job {job.id} {job.status}: ",
        f"{job.rows:,} rows scored with {job.ref} in {job.seconds:.1f} s ({rate:,.0f} rows/s)"
        f" -> {job.destination}",
    )
    if job.errors:
        console.print(
            f"{job.errors:,} row(s) failed validation: {job.spec.errors_file(_work(c, job))}"
        )


def _shown(item: Any) -> Any:
    """A job or schedule for printing: passwords in its database URLs masked."""
    return dataclasses.replace(item, spec=item.spec.redacted())


def _work(c: Any, job: JobInfo) -> Any:
    return c.settings.resolved_batch_root() / job.id


@contextlib.contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler, systemd, kill) stops a job like Ctrl-C: marked interrupted,
    resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="cyan")


class _Rows(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = f"{int(task.total):,}" if task.total else "?"
        errors = task.fields.get("errors", 0)
        bad = f", {errors:,} bad" if errors else ""
        return Text(f"{int(task.completed):,}/{total} rows{bad}")


class BarProgress:
    """A Rich bar on a terminal: rows, rows/s, ETA, bad rows."""

    def __init__(self, console: Console | None = None) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _Rows(),
            _Rate(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console or stderr,
            transient=False,
        )
        self.task: Any = None

    def __enter__(self) -> BarProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.bar.stop()

    def start(self, job: JobInfo, total: int | None, rows: int) -> None:
        resumed = f" (resuming at row {rows:,})" if rows else ""
        self.task = self.bar.add_task(f"job {job.id}{resumed}", total=total, completed=rows)
        self.bar.reset(self.task, total=total, completed=rows)

    def phase(self, text: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=text)

    def advance(self, rows: int, errors: int, total: int | None) -> None:
        self.bar.update(self.task, completed=rows, total=total, errors=errors)


class LineProgress:
    """Plain lines when stderr is not a terminal (CI logs, cron mail): at most one per 5 s."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.last = 0.0
        self.began = time.monotonic()
        self.first_rows = 0
        self.job = ""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    def start(self, job: JobInfo, total: int | None, rows: int) -> None:
        self.job = job.id
        self.first_rows = rows
        self.began = time.monotonic()
        resumed = f", resuming at row {rows:,}" if rows else ""
        size = f"{total:,} rows" if total else "rows unknown"
        stderr.print(f"job {job.id}: {job.reference} ({size}{resumed})")

    def phase(self, text: str) -> None:
        stderr.print(f"job {self.job}: {text}")

    def advance(self, rows: int, errors: int, total: int | None) -> None:
        now = time.monotonic()
        done = total is not None and rows >= total
        if now - self.last < self.every_s and not (done and self.last):
            return  # the first line comes after every_s; the last when the count is reached
        self.last = now
        rate = (rows - self.first_rows) / max(now - self.began, 1e-9)
        of = f"/{total:,}" if total else ""
        share = f" ({rows / total:.0%})" if total else ""
        eta = ""
        if total and rate > 0:
            eta = f", eta {timedelta(seconds=round(max(total - rows, 0) / rate))}"
        stderr.print(
            f"job {self.job}: {rows:,}{of} rows{share}, {errors:,} bad, {rate:,.0f} rows/s{eta}"
        )


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="Only jobs with this status (running, succeeded...).")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest jobs.", min=1)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List batch jobs, newest first.

    Example: berth batch list --status failed
    """
    jobs = client(ctx).jobs.recent(limit=limit, status=status)
    if as_json:
        print_json([_shown(j) for j in jobs])
        return
    if not jobs:
        console.print("No batch jobs yet. Start one with berth batch run.")
        return
    table = Table("job", "version", "status", "rows", "bad", "seconds", "started", "output")
    for column in table.columns[:-1]:  # the output path gives way, nothing else
        column.no_wrap = True
    for j in jobs:
        table.add_row(
            j.id,
            j.ref,
            j.status,
            f"{j.rows:,}",
            f"{j.errors:,}",
            f"{j.seconds:.1f}",
            j.created_at.astimezone().strftime("%m-%d %H:%M"),
            j.destination,
        )
    console.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix of it).")],
    as_json: JsonFlag = False,
) -> None:
    """Show one job: what it scored, how far it got, and why it stopped.

    Example: berth batch show 3f2a9c1b
    """
    c = client(ctx)
    j = c.jobs.get(job)
    if as_json:
        print_json(_shown(j))
        return
    total = f"{j.total_rows:,}" if j.total_rows is not None else "?"
    rate = f"{j.rows / j.seconds:,.0f} rows/s" if j.seconds else "-"
    fields(
        f"job {j.id}",
        [
            ("status", j.status),
            ("message", j.message or "-"),
            ("reference", f"{j.reference} -> {j.ref}"),
            ("input", j.source),
            ("output", j.destination),
            ("errors file", str(j.spec.errors_file(_work(c, j))) if j.errors else "-"),
            ("rows", f"{j.rows:,} of {total} ({j.errors:,} bad)"),
            ("chunks", f"{j.chunks} of {j.spec.chunk_rows:,} rows"),
            ("engine", j.engine),
            ("time", f"{j.seconds:.1f} s over {j.attempts} attempt(s), {rate}"),
            ("started", f"{when(j.created_at)} by {j.created_by}"),
            ("finished", when(j.finished_at) if j.finished_at else "-"),
            ("process", f"{j.pid} on {j.host}" if j.pid else "-"),
        ],
    )


@app.command("schedule")
def schedule(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME/VERSION or NAME@ALIAS.")],
    cron: Annotated[str, typer.Option(help="When to run: a cron expression, '0 2 * * *'.")],
    input_: Input,
    output: Output,
    name: Annotated[
        str | None, typer.Option(help="Schedule name (default: from the reference).")
    ] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of the cron expression.")] = "UTC",
    missed: Annotated[
        str, typer.Option(help="Runs missed while no scheduler ran: once (one run) or skip.")
    ] = "once",
    query: Query = None,
    table: TableName = None,
    input_format: InputFormat = None,
    output_format: OutputFormat = None,
    passthrough: Passthrough = None,
    chunk_rows: ChunkRows = DEFAULT_CHUNK_ROWS,
    max_errors: MaxErrors = None,
    errors: ErrorsPath = None,
    overwrite: Overwrite = False,
    engine: Engine = "local",
    address: Address = None,
    records: Records = True,
    as_json: JsonFlag = False,
) -> None:
    """Store a schedule: a berth scheduler (or berth serve --scheduler) runs it when due.

    The output may name the scheduled time, {date}, {time} or {stamp}, so that each run writes
    its own file.

    Example: berth batch schedule credit-risk@production --cron '0 2 * * *'
    -i customers.parquet -o 'scores/{date}.parquet' -p customer_id
    """
    from berth.batch.scheduler import next_run, render
    from berth.registry.references import parse_reference
    from berth.registry.tables import utcnow

    c = client(ctx)
    spec = _spec(
        ref,
        input_,
        output,
        query=query,
        table=table,
        input_format=input_format,
        output_format=output_format,
        passthrough=passthrough,
        chunk_rows=chunk_rows,
        max_errors=max_errors,
        errors=errors,
        overwrite=overwrite,
        engine=engine,
        address=address,
        records=records,
    )
    parsed = parse_reference(ref)
    c.get_version(ref)  # the model must exist now, not first at 02:00
    first = next_run(cron, timezone, utcnow())
    render(spec, first, timezone)  # a bad {placeholder} fails now too
    label = name or "-".join(filter(None, [parsed.name, parsed.alias, str(parsed.version or "")]))
    found = c.jobs.create_schedule(
        label, spec, cron=cron, timezone=timezone, missed=missed, next_run_at=first, actor=c.actor
    )
    if as_json:
        print_json(_shown(found))
        return
    bold(f"schedule {found.name}: ", f"{found.cron} ({found.timezone}), next run {when(first)}")
    console.print("runs when a scheduler is up: berth scheduler, or berth serve --scheduler")


@app.command("schedules")
def schedules(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List schedules with their next and last runs.

    Example: berth batch schedules
    """
    found = client(ctx).jobs.schedules()
    if as_json:
        print_json([_shown(s) for s in found])
        return
    if not found:
        console.print("No schedules. Add one with berth batch schedule.")
        return
    table = Table("name", "reference", "cron", "next run", "last run", "last job", "output")
    for s in found:
        table.add_row(
            s.name + ("" if s.enabled else " (paused)"),
            s.reference,
            f"{s.cron} {s.timezone}",
            when(s.next_run_at),
            when(s.last_run_at) if s.last_run_at else "-",
            (s.last_job_id or "-") + (f" ({s.last_message})" if s.last_message else ""),
            s.spec.output.describe(),
        )
    console.print(table)


@app.command("unschedule")
def unschedule(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Schedule name.")]
) -> None:
    """Delete a schedule (its jobs stay listed).

    Example: berth batch unschedule credit-risk-production
    """
    c = client(ctx)
    gone: ScheduleInfo = c.jobs.delete_schedule(name, actor=c.actor)
    console.print(f"deleted schedule {gone.name} ({gone.cron})")


def scheduler(
    ctx: typer.Context,
    interval: Annotated[
        float, typer.Option(help="Seconds between looks for due runs.", min=0.1)
    ] = 30.0,
    once: Annotated[bool, typer.Option("--once", help="Look once, run what is due, exit.")] = False,
    max_running: Annotated[int, typer.Option(help="Jobs run at the same time.", min=1)] = 2,
) -> None:
    """Run scheduled batch jobs when due. Any number may run against one database: each run
    starts once.

    Example: berth scheduler --interval 30
    """
    from berth.batch.scheduler import Scheduler

    c = client(ctx)
    log_to_stderr(("berth.scheduler", "berth.batch"), "%(asctime)s %(message)s")
    runner = Scheduler(
        c.jobs,
        lambda spec, schedule_id: c.run_batch(spec, schedule_id=schedule_id),
        interval_s=interval,
        max_running=max_running,
    )
    if once:
        started = runner.tick()
        runner.close(wait=True)
        console.print(f"started {len(started)} scheduled run(s)")
        failed = [f for f in runner.started if f.result() is None]
        if failed:
            raise InvalidInputError(f"{len(failed)} scheduled run(s) failed; see berth batch list")
        return
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stderr.print(f"scheduler: watching {len(c.jobs.schedules())} schedule(s) every {interval:g} s")
    runner.run_forever(stop)
    stderr.print("scheduler: stopping; waiting for running jobs")
    runner.close(wait=True)
