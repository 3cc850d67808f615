"""How a running batch job shows its progress: a Rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

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
from rich.text import Text

if TYPE_CHECKING:
    from berth.batch.jobs import JobInfo

stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


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
