"""``berth logs``: the prediction records that a served model left, printed and exported."""

from __future__ import annotations

import asyncio
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sklearn  # noqa: F401
from sklearn.dummy import DummyClassifier
from typer.testing import CliRunner, Result

from berth.app import Berth, ServeOptions, build_server
from berth.cli.errors import EXIT_CODES
from berth.cli.main import app
from berth.config import PathOptions, Settings
from berth.testing import asgi_client

NAME = "loggy"
CLEAN_ENV: dict[str, str | None] = {
    "BERTH_HOME": None,
    "BERTH_DATABASE_URL": None,
    "BERTH_ARTIFACT_ROOT": None,
    "BERTH_RECORDS_ROOT": None,
    "BERTH_USER": "logs-tester",
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
    "COLUMNS": "250",
}


@dataclass
class Served:
    home: Path
    ids: dict[int, list[str]]
    """Prediction ids per version, oldest first."""

    @property
    def all_ids(self) -> list[str]:
        return self.ids[1] + self.ids[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """Two versions of ``loggy``; 8 predictions on v1 (production), then 3 on v2, made through
    the app in process; the records are on disk once its lifespan has closed."""
    home = tmp_path_factory.mktemp("logs") / "home"
    x = pd.DataFrame({"x1": np.linspace(0, 1, 20), "x2": np.linspace(1, 2, 20)})
    y = np.array(["yes", "no"] * 10)
    with Berth(Settings(home=home, user="tester")) as client:
        for label in ("yes", "no"):
            client.register(
                DummyClassifier(strategy="constant", constant=label).fit(x, y),
                NAME,
                training_data=x,
            )
        client.set_alias(NAME, "production", 1)

    ids: dict[int, list[str]] = {1: [], 2: []}

    async def predict() -> None:
        server = build_server(
            Settings(home=home, user="server"),
            ServeOptions(path=PathOptions(poll_interval_s=0), access_log=False),
        )
        async with asgi_client(server) as http:
            for i, ref in enumerate([NAME] * 8 + [f"{NAME}/2"] * 3):
                r = await http.post(
                    f"/v1/predict/{ref}",
                    json={"records": [{"x1": i / 10, "x2": 1.5}]},
                    headers={"X-Berth-Unit": f"user-{i}"},
                )
                assert r.status_code == 200, r.text
                doc = r.json()
                ids[doc["version"]].append(doc["predictions"][0]["prediction_id"])

    asyncio.run(predict())
    return Served(home, ids)


def berth(served: Served, *args: str) -> Result:
    return CliRunner(env=CLEAN_ENV).invoke(app, ["--home", str(served.home), "logs", *args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def assert_error(result: Result, kind: str, fragment: str) -> None:
    assert result.exit_code == EXIT_CODES[kind], (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output


# -- printing ----------------------------------------------------------------------------------


def test_prints_the_newest_records(served: Served) -> None:
    out = ok(berth(served, NAME, "--limit", "4")).stdout
    assert f"{NAME}: 11 records, the newest 4" in out
    newest, older = served.all_ids[-4:], served.all_ids[:-4]
    for pid in newest:
        assert pid in out
    for pid in older:
        assert pid not in out
    assert "user-10" in out  # the unit id of the last request
    assert "label=no" in out
    assert "probabilities=[" in out


def test_prints_one_version_by_number_or_alias(served: Served) -> None:
    out = ok(berth(served, f"{NAME}/2")).stdout
    assert f"{NAME}/2: 3 records" in out
    assert all(pid in out for pid in served.ids[2])
    assert not any(pid in out for pid in served.ids[1])
    out = ok(berth(served, f"{NAME}@production", "--since", "2d")).stdout
    assert f"{NAME}@production: 8 records, the newest 8" in out
    assert all(pid in out for pid in served.ids[1])
    assert "label=yes" in out


def test_an_empty_window_says_so(served: Served) -> None:
    out = ok(berth(served, NAME, "--since", "2h", "--until", "1h")).stdout
    assert "no records" in out
    assert NAME in out


# -- exporting ---------------------------------------------------------------------------------


def test_exports_every_row_to_parquet(served: Served, tmp_path: Path) -> None:
    target = tmp_path / "out" / "records.parquet"
    out = ok(berth(served, NAME, "--output", str(target), "--limit", "1")).stdout
    assert "wrote 11 records" in out
    table = pq.read_table(target)
    assert table.num_rows == 11
    assert table.column("prediction_id").to_pylist() == served.all_ids
    assert table.column("version").to_pylist() == [1] * 8 + [2] * 3
    assert table.column("unit_id").to_pylist() == [f"user-{i}" for i in range(11)]
    for column in ("time", "latency_ms", "in.x1", "in.x2", "out.label", "out.probabilities"):
        assert column in table.column_names
    assert table.column("out.probabilities").to_pylist()[0] == [0.0, 1.0]  # classes: no, yes


def test_exports_every_row_to_csv(served: Served, tmp_path: Path) -> None:
    target = tmp_path / "records.csv"
    ok(berth(served, NAME, "-o", str(target)))
    with target.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["prediction_id"] for r in rows] == served.all_ids
    assert [r["out.label"] for r in rows] == ["yes"] * 8 + ["no"] * 3
    assert rows[0]["out.probabilities"] == "[0.0, 1.0]"
    assert float(rows[0]["in.x1"]) == 0.0


def test_exports_one_version(served: Served, tmp_path: Path) -> None:
    target = tmp_path / "v2.parquet"
    ok(berth(served, f"{NAME}/2", "--output", str(target)))
    assert pq.read_table(target).column("prediction_id").to_pylist() == served.ids[2]


# -- mistakes ----------------------------------------------------------------------------------


def test_an_unknown_model_exits_3(served: Served) -> None:
    assert_error(berth(served, "nobody"), "not_found", "'nobody'")
    assert_error(berth(served, f"{NAME}/9"), "not_found", "9")


def test_a_bad_since_exits_2(served: Served) -> None:
    assert_error(berth(served, NAME, "--since", "last tuesday"), "invalid_input", "last tuesday")
    assert_error(berth(served, NAME, "--until", "soon"), "invalid_input", "soon")


def test_a_bad_output_suffix_exits_2(served: Served, tmp_path: Path) -> None:
    target = tmp_path / "records.xlsx"
    assert_error(berth(served, NAME, "--output", str(target)), "invalid_input", "records.xlsx")
    assert not target.exists()
