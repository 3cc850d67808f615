"""Batch scoring figures: ``berth batch run`` on Parquet files, side by side with the in-process
floor and a naive pandas script doing the same work, all in one run on the same machine.

- ``credit-risk@production`` (tabular, gradient boosting) on Parquet inputs of ``--rows-small``
  (1,000,000) and ``--rows-large`` (10,000,000) rows: the 14 features plus a ``customer_id``
  column, row groups of 100,000 rows. ``berth batch run ... -p customer_id`` with prediction
  records on and with ``--no-records``; the floor: the model loaded once, then the file read in
  batches of 100,000 rows (``iter_batches``) -> pandas -> ``predict_proba`` -> a ``ParquetWriter``;
  the naive script: ``pd.read_parquet`` of the whole file, one ``predict_proba``,
  ``df.assign(...).to_parquet``.
- ``sentiment@production`` (MiniLM encoder + linear head) on ``--texts`` (100,000) short texts
  (the demo's labeled sentences, cycled) in a Parquet ``text`` column: ``berth batch run`` against
  the in-process encoder called on batches of 256 texts.

Every workload runs in its own new Python process, so its peak RSS is its own: the berth CLI's is
read with ``os.wait4`` on its pid, the others' with ``getrusage(RUSAGE_SELF)`` at their end (this
same script, ``--worker KIND``). Times: berth's is the CLI's whole wall time from outside, with
interpreter start, imports and model load; the floor's and the naive script's are measured inside
their process after the model is loaded. Berth's own job time (``--json``: ``seconds``, which
still includes its model load) is recorded too, and its load alone from when its progress lines
``loading REF`` and ``scoring with REF`` reach stderr. Thread pools are left at their defaults
everywhere (``berth batch run`` sets none). Each run also records the CPU used by other processes
on the machine while it ran, so a noisy machine shows in the results.

    .venv/bin/python bench/batch_bench.py [--rows-small 1000000] [--rows-large 10000000]
        [--texts 100000] [--skip-large] [--repeat 1] [--home H] [--keep]

A quick run: ``--rows-small 20000 --rows-large 100000 --texts 2000``.
Writes bench/results/batch.json and bench/results/batch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent
HZ = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PYTHONUNBUFFERED": "1",
}
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    ENV.pop(_name, None)  # every workload runs with the libraries' default thread pools
CREDIT = "credit-risk@production"
SENTIMENT = "sentiment@production"
SEED = 20261126
BASE_ROWS = 1_000_000  # rows generated once; larger inputs repeat them with new customer ids
ROW_GROUP = 100_000
TEXT_BATCH = 256
PASS = ("-p", "customer_id")
Job = Callable[[Path], dict[str, Any]]  # runs one workload, its output going to the given path

BERTH = "berth batch run"
BERTH_NO_RECORDS = "berth batch run --no-records"
FLOOR = "in-process floor"
ENCODER = f"in-process encoder, batches of {TEXT_BATCH}"
NAIVE = "naive pandas script"

# -- machine state ---------------------------------------------------------------------------------


def cpu_busy_ticks() -> int:
    """Busy jiffies of the whole machine (all cores)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values[:8]) - idle


def loadavg() -> float:
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def other_load(seconds: float = 2.0) -> float:
    """Cores kept busy by other processes while this script sleeps."""
    before = cpu_busy_ticks()
    time.sleep(seconds)
    return (cpu_busy_ticks() - before) / HZ / seconds


# -- workers: each in its own process (this script with --worker KIND) ---------------------------


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux


def load_credit() -> tuple[Any, list[str], Any, list[Any], float]:
    """The production credit model, its features, a ``predict_proba`` and the classes."""
    import berth

    started = time.perf_counter()
    loaded = berth.load(CREDIT)
    load_s = time.perf_counter() - started
    features = list(loaded.signature.names)
    estimator = getattr(loaded.predictor, "model", None)
    if estimator is not None and hasattr(estimator, "predict_proba"):
        predict_proba = estimator.predict_proba  # the scikit-learn pipeline itself
    else:

        def predict_proba(frame: Any) -> Any:
            return loaded.predictor.predict(frame)["probabilities"]

    classes = getattr(loaded.predictor, "classes", None)
    classes = [0, 1] if classes is None else list(classes)
    return loaded, features, predict_proba, classes, load_s


def worker_credit_floor(source: Path, target: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    loaded, features, predict_proba, classes, load_s = load_credit()
    started = time.perf_counter()
    rows = 0
    writer: pq.ParquetWriter | None = None
    parquet = pq.ParquetFile(source)
    for batch in parquet.iter_batches(batch_size=ROW_GROUP, columns=[*features, "customer_id"]):
        frame = batch.to_pandas()
        proba = predict_proba(frame[features])
        columns = {"customer_id": batch.column("customer_id")}
        columns.update({f"probabilities_{c}": pa.array(proba[:, i]) for i, c in enumerate(classes)})
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(target, table.schema)
        writer.write_table(table)
        rows += batch.num_rows
    if writer is not None:
        writer.close()
    parquet.close()
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "load_s": load_s, "version": loaded.version.ref}


def worker_credit_naive(source: Path, target: Path) -> dict[str, Any]:
    import pandas as pd

    loaded, features, predict_proba, classes, load_s = load_credit()
    started = time.perf_counter()
    df = pd.read_parquet(source)
    proba = predict_proba(df[features])
    df.assign(**{f"probability_{c}": proba[:, i] for i, c in enumerate(classes)}).to_parquet(target)
    seconds = time.perf_counter() - started
    return {"rows": len(df), "seconds": seconds, "load_s": load_s, "version": loaded.version.ref}


def worker_sentiment_floor(source: Path, target: Path) -> dict[str, Any]:
    import pandas as pd
    import pyarrow.parquet as pq

    import berth

    started = time.perf_counter()
    loaded = berth.load(SENTIMENT)
    load_s = time.perf_counter() - started
    texts = pq.read_table(source, columns=["text"]).column("text").to_pylist()  # not timed
    started = time.perf_counter()
    for i in range(0, len(texts), TEXT_BATCH):
        outputs = loaded.predictor.predict(pd.DataFrame({"text": texts[i : i + TEXT_BATCH]}))
        assert len(outputs["label"]) == len(texts[i : i + TEXT_BATCH])
    seconds = time.perf_counter() - started
    return {"rows": len(texts), "seconds": seconds, "load_s": load_s, "version": loaded.version.ref}


WORKERS = {
    "credit-floor": worker_credit_floor,
    "credit-naive": worker_credit_naive,
    "sentiment-floor": worker_sentiment_floor,
}


def run_worker(kind: str, source: Path, target: Path, result: Path) -> int:
    out = WORKERS[kind](source, target)
    out["peak_rss_kb"] = peak_rss_kb()
    result.write_text(json.dumps(out))
    return 0


# -- running one workload --------------------------------------------------------------------------


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` to its end; wall time from outside, and its own rusage (``os.wait4``).

    stdout goes to ``log``; stderr is read by a thread that stamps each line with the seconds
    since the start (into ``log``.err and ``stderr_lines``): berth's progress lines say when its
    model load began and ended."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stamped: list[tuple[float, str]] = []
    with log.open("wb") as out, log.with_suffix(".err").open("w") as err:
        busy0, load0 = cpu_busy_ticks(), loadavg()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=env)
        assert proc.stderr is not None
        pipe = proc.stderr

        def drain() -> None:
            for raw in pipe:
                line = raw.decode(errors="replace").rstrip("\n")
                at = time.perf_counter() - started
                stamped.append((at, line))
                err.write(f"[{at:9.3f}s] {line}\n")

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        reader.join()
        pipe.close()
    busy = (cpu_busy_ticks() - busy0) / HZ
    cpu_s = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        tail = "\n".join(line for _, line in stamped[-30:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    return {
        "wall_s": elapsed,
        "peak_rss_kb": usage.ru_maxrss,
        "cpu_s": cpu_s,
        "cpu_cores": cpu_s / elapsed,
        "other_cpu_cores": max(0.0, (busy - cpu_s) / elapsed),
        "loadavg_start": load0,
        "loadavg_end": loadavg(),
        "stderr_lines": stamped,
    }


def phase_times(lines: list[tuple[float, str]]) -> dict[str, float]:
    """When berth's progress lines (``job ID: loading REF``, ``job ID: scoring with REF``,
    ``job ID: writing the output``) arrived, in seconds since the CLI started."""
    found: dict[str, float] = {}
    for at, line in lines:
        text = line.split(": ", 1)[-1]
        for phase, prefix in (
            ("loading", "loading "),
            ("scoring", "scoring with "),
            ("writing", "writing the output"),
        ):
            if text.startswith(prefix) and phase not in found:
                found[phase] = at
    return found


def berth_run(
    ref: str, source: Path, target: Path, env: dict[str, str], logs: Path, *extra: str
) -> dict[str, Any]:
    cmd = [str(BIN / "berth"), "batch", "run", ref, "-i", str(source), "-o", str(target)]
    cmd += [*extra, "--json"]
    log = logs / f"{target.stem}.log"
    run = run_child(cmd, env, log)
    job = json.loads(log.read_text())
    phases = phase_times(run.pop("stderr_lines"))
    run.update(
        {
            "rows": int(job["rows"]),
            "bad_rows": int(job["errors"]),
            "seconds": run["wall_s"],  # the CLI's whole time: start, imports, model load, job
            "job_seconds": float(job["seconds"]),  # the job alone, with its model load
            "job": job["id"],
            "version": f"{job['model']}/{job['version']}",
            "phases_s": phases,
        }
    )
    if "loading" in phases and "scoring" in phases:
        # between the progress lines 'loading REF' and 'scoring with REF'; the reader thread
        # already prepares the first chunks meanwhile, so this is the load, not idle time
        run["load_s"] = phases["scoring"] - phases["loading"]
        run["job_seconds_without_load"] = run["job_seconds"] - run["load_s"]
    return run


def worker_run(
    kind: str, source: Path, target: Path, env: dict[str, str], logs: Path
) -> dict[str, Any]:
    result = logs / f"{target.stem}.result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    cmd += ["--worker-input", str(source), "--worker-output", str(target)]
    cmd += ["--worker-result", str(result)]
    run = run_child(cmd, env, logs / f"{target.stem}.log")
    run.pop("stderr_lines")
    inner = json.loads(result.read_text())
    run.update(
        {
            "rows": inner["rows"],
            "version": inner["version"],
            "seconds": inner["seconds"],  # the workload alone, model loaded beforehand
            "load_s": inner["load_s"],
            "peak_rss_kb_self": inner["peak_rss_kb"],  # getrusage inside; wait4's is the same
        }
    )
    return run


def berth_job(ref: str, source: Path, env: dict[str, str], logs: Path, *extra: str) -> Job:
    return lambda target: berth_run(ref, source, target, env, logs, *extra)


def worker_job(kind: str, source: Path, env: dict[str, str], logs: Path) -> Job:
    return lambda target: worker_run(kind, source, target, env, logs)


def measure(
    results: list[dict[str, Any]],
    model: str,
    size: str,
    setup: str,
    fn: Job,
    target: Path,
    round_: int,
) -> None:
    run = fn(target)
    run.update({"model": model, "size": size, "setup": setup, "round": round_})
    run["rows_per_s"] = run["rows"] / run["seconds"] if run["seconds"] else float("nan")
    results.append(run)
    load = f"load {run['load_s']:.2f} s" if "load_s" in run else "load ?"
    if "job_seconds" in run:
        extra = f"  (job {run['job_seconds']:.2f} s with its {load}, {run['bad_rows']} bad rows)"
    else:
        extra = f"  ({load}, not timed)"
    print(
        f"  {model:11} {size:>11} {setup:30} {run['rows']:>10,} rows {run['seconds']:8.2f} s"
        f" {run['rows_per_s']:10,.0f} rows/s  peak {run['peak_rss_kb'] / 1024:7.0f} MB"
        f"  other {run['other_cpu_cores']:.2f}{extra}",
        flush=True,
    )
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)


# -- inputs ----------------------------------------------------------------------------------------


def write_credit(path: Path, rows: int) -> dict[str, Any]:
    """Features plus ``customer_id``: ``BASE_ROWS`` generated rows, repeated with new ids."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from berth.demo import credit

    started = time.perf_counter()
    base = pa.Table.from_pandas(
        credit.generate(min(rows, BASE_ROWS), seed=SEED)[list(credit.FEATURES)],
        preserve_index=False,
    )
    written = 0
    with pq.ParquetWriter(path, base.schema.append(pa.field("customer_id", pa.int64()))) as out:
        while written < rows:
            piece = base.slice(0, min(base.num_rows, rows - written))
            ids = pa.array(np.arange(written, written + piece.num_rows, dtype=np.int64))
            out.write_table(piece.append_column("customer_id", ids), row_group_size=ROW_GROUP)
            written += piece.num_rows
    return {
        "rows": rows,
        "bytes": path.stat().st_size,
        "row_groups": pq.ParquetFile(path).num_row_groups,
        "seconds": time.perf_counter() - started,
    }


def write_texts(path: Path, count: int) -> dict[str, Any]:
    """The demo's labeled sentences, cycled to ``count`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from berth.demo.sentiment import load_data

    pool = load_data()["text"].dropna().astype(str).tolist()
    texts = [pool[i % len(pool)] for i in range(count)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=ROW_GROUP)
    return {"rows": count, "distinct": min(count, len(pool)), "bytes": path.stat().st_size}


# -- report ----------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def best(runs: list[dict[str, Any]], model: str, size: str, setup: str) -> dict[str, Any] | None:
    """The fastest attempt (other processes only slow a run down), with the highest peak RSS of
    all attempts (memory is not disturbed by them, and the worst case is what matters)."""
    found = [r for r in runs if (r["model"], r["size"], r["setup"]) == (model, size, setup)]
    if not found:
        return None
    fastest = dict(min(found, key=lambda r: r["seconds"]))
    fastest["peak_rss_kb"] = max(r["peak_rss_kb"] for r in found)
    fastest["attempts"] = len(found)
    return fastest


def build_summary(results: dict[str, Any]) -> dict[str, Any]:
    runs = results["runs"]
    sizes = results["settings"]["sizes"]
    small, large = sizes["small"], sizes.get("large")
    ratios: dict[str, float] = {}
    targets: list[dict[str, Any]] = []
    quick = "" if small == 1_000_000 else f" (measured at {small:,} rows, not 1,000,000)"
    for size in [s for s in (small, large) if s is not None]:
        tag = f"{size:,} rows"
        b = best(runs, "credit-risk", tag, BERTH)
        bn = best(runs, "credit-risk", tag, BERTH_NO_RECORDS)
        f = best(runs, "credit-risk", tag, FLOOR)
        n = best(runs, "credit-risk", tag, NAIVE)
        if not (b and bn and f and n):
            continue
        ratios[f"credit-risk {tag}: berth / floor (rows/s, berth's wall time)"] = ratio(
            b["rows_per_s"], f["rows_per_s"]
        )
        ratios[f"credit-risk {tag}: berth --no-records / floor (rows/s)"] = ratio(
            bn["rows_per_s"], f["rows_per_s"]
        )
        ratios[f"credit-risk {tag}: berth / floor (rows/s, berth's job time, with its load)"] = (
            ratio(b["rows"] / b["job_seconds"], f["rows_per_s"])
        )
        if "job_seconds_without_load" in b:
            ratios[
                f"credit-risk {tag}: berth / floor (rows/s, berth's job time minus its load)"
            ] = ratio(b["rows"] / b["job_seconds_without_load"], f["rows_per_s"])
        ratios[f"credit-risk {tag}: berth / naive pandas (rows/s)"] = ratio(
            b["rows_per_s"], n["rows_per_s"]
        )
        ratios[f"credit-risk {tag}: berth peak RSS / floor peak RSS"] = ratio(
            b["peak_rss_kb"], f["peak_rss_kb"]
        )
        ratios[f"credit-risk {tag}: berth peak RSS / naive pandas peak RSS"] = ratio(
            b["peak_rss_kb"], n["peak_rss_kb"]
        )
        if size == small:
            value = ratio(b["rows_per_s"], f["rows_per_s"])
            job_value = ratio(b["rows"] / b["job_seconds"], f["rows_per_s"])
            targets.append(
                {
                    "target": f"credit-risk berth batch run >= 0.9x the in-process floor at 1M "
                    f"rows{quick}",
                    "measured": f"{value:.2f}x (berth's whole CLI time, with start and model "
                    f"load; {job_value:.2f}x on its job time, with model load; floor without "
                    "load)",
                    "met": value >= 0.9,
                }
            )
    if large is not None:
        for setup in (BERTH, BERTH_NO_RECORDS, FLOOR, NAIVE):
            lo = best(runs, "credit-risk", f"{small:,} rows", setup)
            hi = best(runs, "credit-risk", f"{large:,} rows", setup)
            if lo and hi:
                ratios[f"credit-risk {setup}: peak RSS {large:,} / {small:,} rows"] = ratio(
                    hi["peak_rss_kb"], lo["peak_rss_kb"]
                )
        lo = best(runs, "credit-risk", f"{small:,} rows", BERTH)
        hi = best(runs, "credit-risk", f"{large:,} rows", BERTH)
        if lo and hi:
            value = ratio(hi["peak_rss_kb"], lo["peak_rss_kb"])
            targets.append(
                {
                    "target": "credit-risk berth peak RSS at 10M rows <= 1.3x at 1M rows"
                    + (
                        ""
                        if (small, large) == (1_000_000, 10_000_000)
                        else f" (measured at {large:,} / {small:,} rows)"
                    ),
                    "measured": f"{value:.2f}x ({hi['peak_rss_kb'] / 1024:.0f} MB / "
                    f"{lo['peak_rss_kb'] / 1024:.0f} MB)",
                    "met": value <= 1.3,
                }
            )
    else:
        targets.append(
            {
                "target": "credit-risk berth peak RSS at 10M rows <= 1.3x at 1M rows",
                "measured": "not measured (--skip-large)",
                "met": None,
            }
        )
    texts = sizes.get("texts")
    if texts:
        tag = f"{texts:,} texts"
        b = best(runs, "sentiment", tag, BERTH)
        f = best(runs, "sentiment", tag, ENCODER)
        if b and f:
            ratios[f"sentiment {tag}: berth / in-process encoder, batches of {TEXT_BATCH}"] = ratio(
                b["rows_per_s"], f["rows_per_s"]
            )
            ratios[f"sentiment {tag}: berth (job time, with its load) / in-process encoder"] = (
                ratio(b["rows"] / b["job_seconds"], f["rows_per_s"])
            )
            if "job_seconds_without_load" in b:
                ratios[f"sentiment {tag}: berth (job time minus its load) / in-process encoder"] = (
                    ratio(b["rows"] / b["job_seconds_without_load"], f["rows_per_s"])
                )
    return {"ratios": ratios, "targets": targets}


def markdown(results: dict[str, Any]) -> str:
    settings, noise = results["settings"], results["noise"]
    sizes = settings["sizes"]
    lines = [
        "# Batch scoring benchmark",
        "",
        f"Machine: {results['machine']['cpus']} cores, Python {results['machine']['python']}, "
        f"{results['machine']['platform']}; run finished {results['finished']}.",
        "",
        f"`bench/batch_bench.py`: credit-risk on {sizes['small']:,}"
        + (f" and {sizes['large']:,}" if sizes.get("large") else "")
        + f" rows (Parquet, row groups of {ROW_GROUP:,}, features + `customer_id`), sentiment on "
        f"{sizes.get('texts') or 0:,} short texts; {settings['repeat']} attempt(s) per run, the "
        "fastest shown with the highest peak RSS of its attempts. Each workload ran in its own new "
        "Python process; peak RSS is that process's own (`os.wait4` for the berth CLI, "
        "`getrusage(RUSAGE_SELF)` for the others). Thread pools at the libraries' defaults.",
        "",
        "Times: berth's is the whole CLI from outside (interpreter start, imports, model load, "
        "job, output); 'job s' is berth's own job time (`--json` `seconds`), which includes its "
        "model load. Berth does not report that load separately: its 'load s' is the time between "
        "its progress lines `loading REF` and `scoring with REF` on stderr, stamped as they "
        "arrived (its reader thread already prepares the first chunks meanwhile). The floor and "
        "the naive script are timed inside their process after the model is loaded (their "
        "'load s', with the imports `berth.load` does, is not in their time). "
        "The floor writes `customer_id` + the class probabilities; berth writes the passthrough "
        "column, `prediction_id`, model, version, label and the probabilities, and with records "
        "on, the prediction records too.",
        "",
        f"Machine noise: other processes used {noise['other_cpu_cores_mean']:.2f} cores on "
        f"average during the runs (max {noise['other_cpu_cores_max']:.2f}; "
        f"{noise['idle_before_cores']:.2f} before the start), load average "
        f"{noise['loadavg_start']:.2f} -> {noise['loadavg_end']:.2f}.",
        "",
        *(line for n in results.get("notes", []) for line in (f"Note: {n}", "")),
        "| model | input | setup | version | rows/s | time s | job s | load s | peak RSS MB "
        "| CPU cores | other load (cores) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if not results["settings"].get("full_size", True):
        lines[2:2] = [
            "**Quick run**: smaller inputs than the defaults (1M / 10M rows, 100k texts); "
            "start-up and model load weigh far more here, so these figures are not "
            "representative of the targets.",
            "",
        ]
    seen: list[tuple[str, str, str]] = []
    for r in results["runs"]:
        key = (r["model"], r["size"], r["setup"])
        if key not in seen:
            seen.append(key)
    for model, size, setup in seen:
        r = best(results["runs"], model, size, setup)
        assert r is not None
        job = f"{r['job_seconds']:.2f}" if "job_seconds" in r else "-"
        load = f"{r['load_s']:.2f}" if "load_s" in r else "?"
        bad = f" ({r['bad_rows']:,} bad rows)" if r.get("bad_rows") else ""
        tries = f" (best of {r['attempts']})" if r["attempts"] > 1 else ""
        lines.append(
            f"| {model} | {size} | {setup}{bad}{tries} | {r.get('version', '?')} | "
            f"{r['rows_per_s']:,.0f} | "
            f"{r['seconds']:.2f} | {job} | {load} | {r['peak_rss_kb'] / 1024:,.0f} | "
            f"{r['cpu_cores']:.2f} | {r['other_cpu_cores']:.2f} |"
        )
    summary = results["summary"]
    lines += ["", "## Ratios", "", "| ratio | value |", "|---|---:|"]
    for name, value in summary["ratios"].items():
        lines.append(f"| {name} | {value:.2f} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in summary["targets"]:
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    lines.append("")
    for t in summary["targets"]:
        if t["met"] is None:
            lines.append(f"- {t['target']}: not measured in this run.")
        else:
            lines.append(f"- {t['target']}: {'met' if t['met'] else 'NOT met'} ({t['measured']}).")
    lines.append("")
    return "\n".join(lines)


def write_report(results: dict[str, Any]) -> None:
    results["summary"] = build_summary(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batch.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "batch.md").write_text(text)
    print(text)
    print(f"wrote {RESULTS / 'batch.json'} and {RESULTS / 'batch.md'}")


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Batch scoring: berth batch run vs the in-process floor vs a naive pandas "
        "script. Writes bench/results/batch.json and batch.md."
    )
    parser.add_argument("--rows-small", type=int, default=1_000_000, help="credit-risk rows")
    parser.add_argument("--rows-large", type=int, default=10_000_000, help="credit-risk rows")
    parser.add_argument("--skip-large", action="store_true", help="only the small credit input")
    parser.add_argument("--texts", type=int, default=100_000, help="sentiment texts (0: skip)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="attempts per run; the fastest is reported"
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="a Berth home with the demo models (default: "
        "a new temporary one, filled with `berth demo`)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--report", type=Path, help="only rebuild batch.md (and the summary) from a batch.json"
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return run_worker(args.worker, args.worker_input, args.worker_output, args.worker_result)
    if args.report is not None:
        write_report(json.loads(args.report.read_text()))
        return 0

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="berth-batch-bench-"))
    data, outputs, logs = work / "data", work / "out", work / "logs"
    for folder in (data, outputs, logs):
        folder.mkdir()
    idle_before = other_load()
    print(f"other processes use {idle_before:.2f} of {CPUS} cores before the start", flush=True)
    home = args.home
    if home is None:
        home = work / "home"
        print(f"registering the demo models in {home} (berth demo) ...", flush=True)
        subprocess.run(
            [str(BIN / "berth"), "demo"],
            env={**ENV, "BERTH_HOME": str(home)},
            check=True,
            capture_output=True,
        )
    home = home.resolve()
    env = {**ENV, "BERTH_HOME": str(home)}

    credit_sizes = [args.rows_small] + ([] if args.skip_large else [args.rows_large])
    inputs: dict[str, Any] = {}
    credit_files = {}
    for rows in credit_sizes:
        path = data / f"credit-{rows}.parquet"
        print(f"writing {rows:,} credit rows to {path.name} ...", flush=True)
        inputs[path.name] = write_credit(path, rows)
        credit_files[rows] = path
    texts_file = data / f"texts-{args.texts}.parquet"
    if args.texts:
        print(f"writing {args.texts:,} texts to {texts_file.name} ...", flush=True)
        inputs[texts_file.name] = write_texts(texts_file, args.texts)

    runs: list[dict[str, Any]] = []
    plan: list[tuple[str, str, str, str, Job]] = []  # model, size, setup, file stem, job
    for rows, source in credit_files.items():
        size, stem = f"{rows:,} rows", f"credit-{rows}"
        plan += [
            (
                "credit-risk",
                size,
                BERTH,
                f"{stem}-berth",
                berth_job(CREDIT, source, env, logs, *PASS),
            ),
            (
                "credit-risk",
                size,
                BERTH_NO_RECORDS,
                f"{stem}-berth-no-records",
                berth_job(CREDIT, source, env, logs, *PASS, "--no-records"),
            ),
            (
                "credit-risk",
                size,
                FLOOR,
                f"{stem}-floor",
                worker_job("credit-floor", source, env, logs),
            ),
            (
                "credit-risk",
                size,
                NAIVE,
                f"{stem}-naive",
                worker_job("credit-naive", source, env, logs),
            ),
        ]
    if args.texts:
        size, stem = f"{args.texts:,} texts", f"texts-{args.texts}"
        plan += [
            (
                "sentiment",
                size,
                BERTH,
                f"{stem}-berth",
                berth_job(SENTIMENT, texts_file, env, logs),
            ),
            (
                "sentiment",
                size,
                ENCODER,
                f"{stem}-encoder",
                worker_job("sentiment-floor", texts_file, env, logs),
            ),
        ]
    for round_ in range(1, args.repeat + 1):
        print(f"round {round_} of {args.repeat}", flush=True)
        for model, size, setup, stem, job in plan:
            target = outputs / f"{stem}-r{round_}.parquet"
            measure(runs, model, size, setup, job, target, round_)

    others = [r["other_cpu_cores"] for r in runs]
    results: dict[str, Any] = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "python": platform.python_version(),
            "cpus": CPUS,
            "platform": platform.platform(),
        },
        "settings": {
            "sizes": {
                "small": args.rows_small,
                "large": None if args.skip_large else args.rows_large,
                "texts": args.texts,
            },
            "repeat": args.repeat,
            "full_size": (args.rows_small, args.rows_large, args.texts, args.skip_large)
            == (1_000_000, 10_000_000, 100_000, False),
            "row_group_rows": ROW_GROUP,
            "base_rows": BASE_ROWS,
            "seed": SEED,
            "text_batch": TEXT_BATCH,
            "threads": "libraries' defaults everywhere (berth batch run sets none)",
            "berth": f"{BIN / 'berth'} batch run REF -i IN -o OUT [-p customer_id] "
            "[--no-records] --json, BERTH_HOME set",
        },
        "inputs": inputs,
        "noise": {
            "idle_before_cores": idle_before,
            "other_cpu_cores_mean": sum(others) / len(others) if others else 0.0,
            "other_cpu_cores_max": max(others, default=0.0),
            "loadavg_start": runs[0]["loadavg_start"] if runs else loadavg(),
            "loadavg_end": runs[-1]["loadavg_end"] if runs else loadavg(),
        },
        "notes": [],
        "runs": runs,
    }
    results["elapsed_s"] = time.perf_counter() - started
    write_report(results)
    if args.keep:
        print(f"kept {work} (logs in {logs})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
