"""``berth models show`` reports the latency measured at registration; ``models register
--no-measure-latency`` skips the measurement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from skops import io as skops_io
from typer.testing import CliRunner, Result

from berth.app import Berth
from berth.cli.main import app
from berth.config import Settings

ENV: dict[str, str | None] = {
    "BERTH_HOME": None,
    "BERTH_DATABASE_URL": None,
    "BERTH_USER": "cli-tester",
    "COLUMNS": "200",
}


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame({"x": rng.normal(size=200), "y": rng.normal(size=200)})


@pytest.fixture
def saved(tmp_path: Path, frame: pd.DataFrame) -> tuple[Path, Path]:
    model = LogisticRegression().fit(frame, frame["x"] > frame["y"])
    path, data = tmp_path / "model.skops", tmp_path / "train.csv"
    skops_io.dump(model, path)
    frame.to_csv(data, index=False)
    return path, data


def run(home: Path, *args: str) -> Result:
    result = CliRunner(env=ENV).invoke(app, ["--home", str(home), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def test_models_show_prints_the_latency_measured_at_registration(
    home: Path, saved: tuple[Path, Path]
) -> None:
    path, data = saved
    run(home, "models", "register", str(path), "-n", "lr", "--training-data", str(data))
    out = run(home, "models", "show", "lr/1").stdout
    (line,) = [line for line in out.splitlines() if line.startswith("latency")]
    for part in ("one row ", "median of", "200 rows at once", "rows/s", "1 OpenMP thread"):
        assert part in line, line

    shown = json.loads(run(home, "models", "show", "lr/1", "--json").stdout)
    latency = shown["lineage"]["latency"]
    assert 0 < latency["single_row_ms"] < 1_000
    assert latency["batch_rows"] == 200
    with Berth(Settings(home=home)) as client:
        assert client.get_version("lr/1").lineage["latency"] == latency


def test_register_without_measuring(home: Path, saved: tuple[Path, Path]) -> None:
    path, data = saved
    run(
        home, "models", "register", str(path), "-n", "lr", "--training-data", str(data),
        "--no-measure-latency",
    )  # fmt: skip
    out = run(home, "models", "show", "lr/1").stdout
    assert "latency" not in out
    assert (
        "latency" not in json.loads(run(home, "models", "show", "lr", "--json").stdout)["lineage"]
    )
