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
    samples = c.settings.home.resolve() / "demo"
    texts = '{"texts": ["The staff were lovely", "Never again"]}'
    oip_text = (
        '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Great value"]}]}'
    )
    lines = [
        "",
        "Try next:",
        "  berth models list",
        "  berth models show credit-risk@production",
        f"  berth predict credit-risk@production --input {samples / 'credit-risk.json'} --table",
        f"  echo '{texts}' | berth predict sentiment -i -",
        f"  berth batch run credit-risk@production -i {samples / 'customers.parquet'} "
        "-o scores.parquet -p customer_id",
        "  berth batch list",
        "",
        "With the server running (berth serve; make demo starts it on port 8000):",
        "  curl -s -X POST localhost:8000/v1/predict/credit-risk@production "
        f"-d @{samples / 'credit-risk.json'}",
        f"  curl -s -X POST localhost:8000/v1/predict/sentiment -d '{texts}'",
        f"  curl -s -X POST localhost:8000/v2/models/sentiment/infer -d '{oip_text}'",
        "  curl -s -X POST localhost:8000/v2/models/credit-risk/infer "
        f"-d @{samples / 'credit-risk-oip.json'}",
        "  curl -s localhost:8000/v2/models/credit-risk    # metadata; /docs, /metrics too",
        "  berth logs credit-risk --since 1h             # the prediction records",
    ]
    console.print("\n".join(lines))
