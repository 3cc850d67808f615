"""``berth doctor``: check a Berth home, and rebuild a lost registry from its artifacts.

It works without a client (:class:`berth.app.Berth` refuses a damaged or lost database, which
is what this command is for), on the settings the root options give.
"""

from __future__ import annotations

import getpass
from typing import Annotated

import typer
from rich.text import Text

from berth.config import Settings
from berth.registry.artifacts import ArtifactStore
from berth.registry.recovery import Finding, diagnose, rebuild, write_records

from .output import console, print_json

_STYLE = {"ok": "green", "warn": "yellow", "problem": "bold red"}


def doctor(
    ctx: typer.Context,
    rebuild_: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Rebuild the registry from the version records beside the artifacts into a "
            "fresh database (a SQLite file is kept aside, renamed).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="With --rebuild: rebuild even a registry that opens.")
    ] = False,
    write_records_: Annotated[
        bool,
        typer.Option(
            "--write-records",
            help="Write the missing version records from the database (versions registered "
            "before Berth wrote them), so that a later rebuild can restore them.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the database (opens, schema current), every version's artifact (present, SHA-256),
    version records, unreferenced artifacts and staging leftovers; exit 1 on a problem.

    Example: berth doctor && berth doctor --rebuild
    """
    settings = Settings(**ctx.find_root().meta.get("berth.settings", {}))
    url = settings.resolved_database_url()
    store = ArtifactStore(settings.resolved_artifact_root())
    if rebuild_:
        _rebuild(settings, url, store, force, as_json)
        return
    if write_records_:
        written = write_records(url, store)
        console.print(f"wrote {written} version record(s) and every model's aliases")
        return
    findings = diagnose(url, store)
    if as_json:
        print_json([{"check": f.check, "level": f.level, "message": f.message} for f in findings])
    else:
        for finding in findings:
            _print(finding)
    if any(f.level == "problem" for f in findings):
        raise typer.Exit(1)


def _print(finding: Finding) -> None:
    console.print(
        Text.assemble(
            (f"{finding.level:<8}", _STYLE[finding.level]), f"{finding.check:<10} {finding.message}"
        )
    )


def _rebuild(
    settings: Settings, url: str, store: ArtifactStore, force: bool, as_json: bool
) -> None:
    actor = settings.user or _os_user()
    report = rebuild(url, store, actor=actor, force=force)
    if as_json:
        print_json(report)
        return
    for path in report.kept_aside:
        console.print(f"kept the old database file as {path}")
    console.print(
        f"rebuilt the registry: {report.models} model(s), {report.versions} version(s), "
        f"{report.aliases} alias(es)"
    )
    for line in report.skipped:
        console.print(f"not restored (artifact unavailable): {line}")
    if report.without_aliases:
        console.print(
            "no aliases record for: "
            + ", ".join(report.without_aliases)
            + " (their aliases, if they had any, are not restored)"
        )
    if report.without_record:
        console.print(
            f"{len(report.without_record)} artifact(s) have no version record (registered before "
            "Berth wrote them): they stay in the store but cannot be restored as versions; "
            "copy them out before `berth gc`, which removes unreferenced artifacts"
        )
    for line in report.unreadable:
        console.print(f"unreadable record: {line}")
    console.print(
        "not restored: the audit history, batch jobs and schedules"
        + (" (they stay in the file kept aside)" if report.kept_aside else "")
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
