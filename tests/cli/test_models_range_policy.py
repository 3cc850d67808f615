"""``berth models register --range-policy``: one policy for every numeric feature or
FEATURE=POLICY, stored with the version and shown by ``models show``; a bad one is one line."""

from __future__ import annotations

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
def saved(tmp_path: Path) -> tuple[Path, Path]:
    frame = pd.DataFrame({"x": np.linspace(-1.0, 1.0, 50), "y": np.linspace(0.0, 10.0, 50)})
    model = LogisticRegression().fit(frame, frame["x"] > 0)
    path, data = tmp_path / "model.skops", tmp_path / "train.csv"
    skops_io.dump(model, path)
    frame.to_csv(data, index=False)
    return path, data


def register(home: Path, saved: tuple[Path, Path], *options: str) -> Result:
    path, data = saved
    args = ["--home", str(home), "models", "register", str(path), "-n", "lr"]
    args += ["--training-data", str(data), "--no-measure-latency", *options]
    return CliRunner(env=ENV).invoke(app, args)


def policies(home: Path) -> dict[str, tuple[float | None, float | None, str]]:
    with Berth(Settings(home=home)) as client:
        sig = client.registry.get_version("lr", 1).signature
    return {f.name: (f.observed_minimum, f.observed_maximum, f.range_policy) for f in sig.inputs}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), ("warn", "warn")),
        (("--range-policy", "refuse"), ("refuse", "refuse")),
        (("--range-policy", "y=refuse"), ("warn", "refuse")),
    ],
)
def test_the_policy_is_stored_with_the_observed_ranges(
    home: Path, saved: tuple[Path, Path], options: tuple[str, ...], expected: tuple[str, str]
) -> None:
    result = register(home, saved, *options)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert policies(home) == {"x": (-1.0, 1.0, expected[0]), "y": (0.0, 10.0, expected[1])}
    shown = CliRunner(env=ENV).invoke(app, ["--home", str(home), "models", "show", "lr/1"])
    assert f"seen [0.0, 10.0], {expected[1]}" in shown.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--range-policy", "strict"), "range_policy 'strict': use one of warn, refuse"),
        (("--range-policy", "z=refuse"), "unknown feature 'z'"),
        (("--range-policy", "refuse", "--range-policy", "x=warn"), "--range-policy: give one"),
    ],
)
def test_a_bad_policy_is_one_line_and_registers_nothing(
    home: Path, saved: tuple[Path, Path], options: tuple[str, ...], message: str
) -> None:
    result = register(home, saved, *options)
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    with Berth(Settings(home=home)) as client:
        assert client.registry.list_models() == []
