"""``berth batch``: score files and tables; resume, list and show jobs. Schedules are in
``schedules``, the progress display in ``progress``; the option types here are shared by both
command modules."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from berth.batch.specs import DEFAULT_CHUNK_ROWS, ErrorLimit, JobSpec, destination, source

from .context import client
from .output import bold, console, fields, print_json, when
from .progress import BarProgress, LineProgress, stderr

if TYPE_CHECKING:
    from berth.batch.jobs import JobInfo

app = typer.Typer(
    help="Score large files and tables in chunks: resumable, scheduled, on Ray when needed.\n\n"
    "Example: berth batch run credit-risk@production -i customers.parquet -o scores.parquet",
    no_args_is_help=True,
)

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


def job_spec(
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
    spec = job_spec(
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
        print_json(shown(job))
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


def shown(item: Any) -> Any:
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


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(help="Only jobs with this status: running, interrupted, failed, succeeded."),
    ] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest jobs.", min=1)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List batch jobs, newest first.

    Example: berth batch list --status failed
    """
    jobs = client(ctx).jobs.recent(limit=limit, status=status)
    if as_json:
        print_json([shown(j) for j in jobs])
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
        print_json(shown(j))
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
            ("process", _process(j)),
        ],
    )


def _process(job: JobInfo) -> str:
    if not job.pid:
        return "-"
    return f"{job.pid} on {job.host}" + (" (gone)" if job.status == "interrupted" else "")
