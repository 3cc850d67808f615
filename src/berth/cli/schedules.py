"""``berth batch schedule | schedules | unschedule`` and ``berth scheduler``: batch jobs that run
on a cron schedule, started by whichever scheduler process claims each run."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from berth.batch.specs import DEFAULT_CHUNK_ROWS
from berth.errors import InvalidInputError

from . import batch
from .batch import (
    Address,
    ChunkRows,
    Engine,
    ErrorsPath,
    Input,
    InputFormat,
    JsonFlag,
    MaxErrors,
    Output,
    OutputFormat,
    Overwrite,
    Passthrough,
    Query,
    Records,
    TableName,
    job_spec,
    shown,
)
from .context import client
from .output import bold, console, log_to_stderr, print_json, when
from .progress import stderr

if TYPE_CHECKING:
    from berth.batch.jobs import ScheduleInfo


@batch.app.command("schedule")
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
        print_json(shown(found))
        return
    bold(f"schedule {found.name}: ", f"{found.cron} ({found.timezone}), next run {when(first)}")
    console.print("runs when a scheduler is up: berth scheduler, or berth serve --scheduler")


@batch.app.command("schedules")
def schedules(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List schedules with their next and last runs.

    Example: berth batch schedules
    """
    found = client(ctx).jobs.schedules()
    if as_json:
        print_json([shown(s) for s in found])
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


@batch.app.command("unschedule")
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
