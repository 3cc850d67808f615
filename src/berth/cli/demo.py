"""``berth demo``: register the two demo models and show what to try next."""

from __future__ import annotations

import typer
from rich.table import Table

from .context import client
from .output import console


def demo(ctx: typer.Context) -> None:
    """Train and register the demo models credit-risk (v1 production, v2 staging) and sentiment.

    Running it again registers nothing new.

    Example: berth demo
    """
    from berth.demo.run import run_demo  # trains models: heavy imports, only for this command

    c = client(ctx)
    with console.status("working…") as status:

        def say(line: str) -> None:
            status.update(line)
            console.print(f"  {line}")

        versions = run_demo(c, say)
    table = Table(
        "version",
        "aliases",
        "flavor",
        "held-out metrics",
        title="Demo models",
        title_justify="left",
    )
    for v in versions:
        live = c.get_version(v.ref)
        metrics = ", ".join(f"{k}={val:.3f}" for k, val in v.metrics.items())
        table.add_row(v.ref, ", ".join(live.aliases), v.flavor, metrics)
    console.print(table)
    samples = c.settings.home / "demo"
    console.print(
        "\nTry next:\n"
        "  berth models list\n"
        "  berth models show credit-risk@production\n"
        f"  berth predict credit-risk@production --input {samples / 'credit-risk.json'} --table\n"
        f"  berth predict sentiment@production --input {samples / 'sentiment.json'} --table\n"
        '  echo \'{"texts": ["I loved it"]}\' | berth predict sentiment -i -'
    )
