"""Medians, ratios and targets of the peers benchmark, and its page bench/results/peers.md.

Every figure is the median over the rounds of one run; each ratio divides two such medians, and
the ratio of each round is shown beside it so the spread is visible.
"""

from __future__ import annotations

import statistics
from typing import Any

# Which setups are which, for the targets of issue 9.
PEERS = (  # as their users run them, and with OpenMP at one thread
    "bare",
    "mlserver",
    "bentoml",
    "bentoml-batch",
    "mlserver-omp1",
    "bentoml-omp1",
    "bentoml-batch-omp1",
)
SIMPLE = "simple"  # the strongest simple app
BERTH = "berth"  # records on, access log on: what a new user gets
FIGURES = (
    "requests",
    "requests_per_s",
    "p50_ms",
    "p99_ms",
    "server_cpu_us_per_request",
    "other_cpu_cores",
)


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> setup -> the median of each figure over the rounds (and the rounds' values)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        grouped.setdefault(run["scenario"], {}).setdefault(run["setup"], []).append(run)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, setups in grouped.items():
        out[scenario] = {}
        for setup, rs in setups.items():
            row: dict[str, Any] = {k: statistics.median(r[k] for r in rs) for k in FIGURES}
            row["rounds"] = len(rs)
            row["errors"] = sum(r["errors"] for r in rs)
            row["per_round"] = {r["round"]: r for r in rs}
            out[scenario][setup] = row
    return out


def _per_round(table: dict[str, dict[str, Any]], fn: Any, setups: list[str]) -> list[float]:
    """``fn`` of one round's runs, for every round in which all of ``setups`` ran."""
    rounds = set.intersection(*(set(table[s]["per_round"]) for s in setups))
    values = []
    for n in sorted(rounds):
        values.append(fn({s: table[s]["per_round"][n] for s in setups}))
    return values


def _target(
    name: str,
    table: dict[str, dict[str, Any]] | None,
    setups: list[str],
    fn: Any,
    goal: str,
    met: Any,
) -> dict[str, Any]:
    """One target: ``fn`` over a {setup: figures} mapping, on the medians and on each round."""
    if table is None or any(s not in table for s in setups):
        missing = [s for s in setups if table is None or s not in table]
        return {"target": name, "goal": goal, "value": None, "met": None, "missing": missing}
    try:
        value = float(fn(table))
        rounds = _per_round(table, fn, setups)
    except ZeroDivisionError:  # a server answered nothing within a run
        return {"target": name, "goal": goal, "value": None, "met": None, "missing": ["answers"]}
    except _NoPeer:  # a run of Berth's own setups only (records on against off, say)
        return {"target": name, "goal": goal, "value": None, "met": None, "missing": ["peers"]}
    return {"target": name, "goal": goal, "value": value, "met": bool(met(value)), "rounds": rounds}


class _NoPeer(Exception):
    pass


def _best(figures: dict[str, Any], names: tuple[str, ...], key: str, pick: Any) -> float:
    found = [figures[n][key] for n in names if n in figures]
    if not found:
        raise _NoPeer
    return float(pick(found))


def targets(table: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    n1c16, n1c1 = table.get("numeric-1row-c16"), table.get("numeric-1row-c1")
    n64, s16 = table.get("numeric-64rows-c16"), table.get("sentiment-c16")
    peers_in = [p for p in PEERS if n1c16 and p in n1c16]
    text_peers = tuple(s for s in (s16 or {}) if not s.startswith("berth"))
    rps = "requests_per_s"
    return [
        _target(
            "numeric, 1 row, 16 connections: Berth req/s / best peer's",
            n1c16,
            [BERTH, *peers_in],
            lambda f: f[BERTH][rps] / _best(f, PEERS, rps, max),
            ">= 1.5",
            lambda v: v >= 1.5,
        ),
        _target(
            "numeric, 1 row, 16 connections: Berth req/s / strongest simple app's",
            n1c16,
            [BERTH, SIMPLE],
            lambda f: f[BERTH][rps] / f[SIMPLE][rps],
            ">= 1.5",
            lambda v: v >= 1.5,
        ),
        _target(
            "numeric, 1 row, 16 connections: Berth p99 / lowest peer p99",
            n1c16,
            [BERTH, *peers_in],
            lambda f: f[BERTH]["p99_ms"] / _best(f, PEERS, "p99_ms", min),
            "<= 1.0",
            lambda v: v <= 1.0,
        ),
        _target(
            "numeric, 1 row, 1 connection: Berth p50 / strongest simple app's p50",
            n1c1,
            [BERTH, SIMPLE],
            lambda f: f[BERTH]["p50_ms"] / f[SIMPLE]["p50_ms"],
            "<= 1.2",
            lambda v: v <= 1.2,
        ),
        _target(
            "numeric, 64 rows, 16 connections: Berth (/v1 records) req/s / MLServer's",
            n64,
            [BERTH, "mlserver"],
            lambda f: f[BERTH][rps] / f["mlserver"][rps],
            ">= 1.2",
            lambda v: v >= 1.2,
        ),
        _target(
            "numeric, 64 rows, 16 connections: Berth (/v1 records) / MLServer, OMP_NUM_THREADS=1",
            n64,
            [BERTH, "mlserver-omp1"],
            lambda f: f[BERTH][rps] / f["mlserver-omp1"][rps],
            ">= 1.2 (MLServer tuned)",
            lambda v: v >= 1.2,
        ),
        _target(
            "numeric, 64 rows, 16 connections: Berth (OIP, MLServer's request) / MLServer",
            n64,
            ["berth-oip", "mlserver"],
            lambda f: f["berth-oip"][rps] / f["mlserver"][rps],
            ">= 1.2 (like for like)",
            lambda v: v >= 1.2,
        ),
        *(
            _target(
                f"{label}: Berth records on / records off (req/s)",
                t,
                [BERTH, "berth-no-records"],
                lambda f: f[BERTH][rps] / f["berth-no-records"][rps],
                ">= 0.95",
                lambda v: v >= 0.95,
            )
            for label, t in (
                ("numeric, 1 row, 16 connections", n1c16),
                ("numeric, 64 rows, 16 connections", n64),
            )
        ),
        _target(
            "sentiment, 16 connections: Berth req/s / best peer's (same encoder and head)",
            s16,
            [BERTH, *text_peers],
            lambda f: f[BERTH][rps] / _best(f, text_peers, rps, max),
            ">= 3.0",
            lambda v: v >= 3.0,
        ),
    ]


def summarize(results: dict[str, Any]) -> None:
    """Medians and targets from the runs, in place (also what ``--report`` redoes)."""
    table = medians(results["runs"])
    results["medians"] = {
        sc: {st: {k: v for k, v in f.items() if k != "per_round"} for st, f in t.items()}
        for sc, t in table.items()
    }
    results["targets"] = targets(table)


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "# Berth against its peers (issue 9, item 1)",
        "",
        f"`bench/peers_bench.py`, finished {results['finished']}"
        + (" — **quick run (development figures only)**" if s["quick"] else "")
        + f". wrk -t1 on 127.0.0.1, {s['duration_s']:g} s timed after {s['warmup_s']:g} s of "
        f"warm-up, {s['rounds']} round(s) with the order of the servers rotated each round; "
        "medians over the rounds. One worker everywhere. Requests cycle through 64 distinct "
        "bodies (one row, 64 rows, or one of 64 sentences of varied length).",
        "",
        _machine_line(results),
        "",
        "Setups:",
        "",
        *(f"- `{name}`: {text}" for name, text in results["setups"].items()),
        "",
    ]
    for scenario, title in results["scenario_titles"].items():
        table = results["medians"].get(scenario)
        if not table:
            continue
        lines += [f"## {title}", "", *_table(table), ""]
    lines += [
        "## Targets",
        "",
        '"Peers" in the numeric targets: '
        + ", ".join(f"`{p}`" for p in PEERS)
        + " (the best of them counts); the strongest simple app (`simple`) is compared on its "
        "own. For sentiment every server that is not Berth counts, the FastAPI apps included. "
        "Berth is `berth` (records and access log on) unless a line says otherwise.",
        "",
        "| target | goal | ratio (medians) | per round | met |",
    ]
    lines.append("|---|---|---:|---|---|")
    for t in results["targets"]:
        if t["value"] is None:
            lines.append(f"| {t['target']} | {t['goal']} | - | - | not measured |")
            continue
        rounds = ", ".join(f"{v:.2f}" for v in t["rounds"])
        verdict = "met" if t["met"] else "**NOT met**"
        lines.append(f"| {t['target']} | {t['goal']} | {t['value']:.2f} | {rounds} | {verdict} |")
    lines += ["", *_notes(results), ""]
    return "\n".join(lines)


def _table(table: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| setup | req/s | p50 ms | p99 ms | server CPU µs/req | other load (cores) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for setup, f in table.items():
        if not f["requests"]:  # no answer within the run: no latency or cost to show
            other = f"{f['other_cpu_cores']:.2f}"
            lines.append(f"| {setup} | 0 | - | - | - | {other} | {f['errors']} |")
            continue
        lines.append(
            f"| {setup} | {_rate(f['requests_per_s'])} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | "
            f"{f['server_cpu_us_per_request']:,.0f} | {f['other_cpu_cores']:.2f} | "
            f"{f['errors']} |"
        )
    return lines


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _machine_line(results: dict[str, Any]) -> str:
    m, v = results["machine"], results["versions"]
    peers = "; ".join(
        f"{venv}: " + ", ".join(f"{k} {x}" for k, x in pk.items())
        for venv, pk in v["peers"].items()
    )
    berth = ", ".join(f"{k} {x}" for k, x in v["berth_venv"].items())
    return (
        f"Machine: {m['cpu']}, {m['cpus']} cores, {m['memory_gb']:.0f} GB, {m['platform']}, "
        f"Python {m['python']}, {m['wrk']}. Berth venv: {berth}. Peer venvs: {peers}. "
        f"Other processes used {results['noise']['idle_before_cores']:.2f} cores before the "
        f"start and {results['noise']['other_cpu_cores_mean']:.2f} on average during the runs."
    )


def _notes(results: dict[str, Any]) -> list[str]:
    return [f"Note: {n}" for n in results.get("notes", [])]
