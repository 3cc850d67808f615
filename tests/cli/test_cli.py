"""The ``berth`` command line, in process through Typer's CliRunner, and once through the real
installed script: output people and scripts can read, one-line errors with the right exit code."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn  # noqa: F401
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from skops import io as skops_io
from typer.testing import CliRunner, Result

from berth.app import Berth
from berth.cli.errors import EXIT_CODES
from berth.cli.main import app

ACTOR = "cli-tester"
# Nothing from the developer's shell may change which home or database a command uses, who it
# acts as, or whether Rich writes colour codes.
CLEAN_ENV: dict[str, str | None] = {
    "BERTH_HOME": None,
    "BERTH_DATABASE_URL": None,
    "BERTH_ARTIFACT_ROOT": None,
    "BERTH_USER": ACTOR,
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
    "COLUMNS": "120",
}

Invoke = Callable[..., Result]


# -- a small registered model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def training() -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(7)
    n = 80
    frame = pd.DataFrame(
        {"age": rng.uniform(18, 80, n).round(1), "plan": rng.choice(["basic", "pro"], n)}
    )
    score = (frame["age"] - 45) / 10 + np.where(frame["plan"] == "pro", 1.0, -1.0)
    labels = np.where(score + rng.normal(0, 0.5, n) > 0, "churn", "stay")
    return frame, labels


@pytest.fixture(scope="module")
def trained(training: tuple[pd.DataFrame, np.ndarray[Any, Any]]) -> Pipeline:
    frame, labels = training
    pipe = make_pipeline(
        make_column_transformer((StandardScaler(), ["age"]), (OneHotEncoder(), ["plan"])),
        LogisticRegression(),
    )
    return pipe.fit(frame, labels)


@pytest.fixture
def model(
    client: Berth, trained: Pipeline, training: tuple[pd.DataFrame, np.ndarray[Any, Any]]
) -> Pipeline:
    """``churn`` version 1 in the ``client`` fixture's home."""
    client.register(trained, "churn", training_data=training[0], metrics={"auc": 0.81})
    return trained


@pytest.fixture
def cli(home: Path) -> Invoke:
    runner = CliRunner(env=CLEAN_ENV)

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(app, ["--home", str(home), *args], input=input)

    return invoke


SAMPLE = [
    {"age": 25.0, "plan": "basic"},
    {"age": 70.5, "plan": "pro"},
    {"plan": "pro", "age": 46.0},
]


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame(SAMPLE)[["age", "plan"]]


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def assert_error(result: Result, kind: str, *fragments: str) -> str:
    """One line on stderr, ``error: ...``, the kind's exit code, nothing on stdout, no traceback."""
    assert result.exit_code == EXIT_CODES[kind], (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- models list / versions / show -------------------------------------------------------------


def test_models_list(cli: Invoke, model: Pipeline) -> None:
    out = ok(cli("models", "list")).stdout
    assert "churn" in out
    assert "No models" not in out


def test_models_list_json(cli: Invoke, model: Pipeline) -> None:
    listed = json.loads(ok(cli("models", "list", "--json")).stdout)
    (churn,) = [m for m in listed if m["name"] == "churn"]
    assert churn["versions"] == 1
    assert churn["latest_version"] == 1
    assert churn["aliases"] == {}


def test_models_list_search(cli: Invoke, model: Pipeline) -> None:
    found = json.loads(ok(cli("models", "list", "-s", "CHU", "--json")).stdout)
    assert [m["name"] for m in found] == ["churn"]
    assert json.loads(ok(cli("models", "list", "--search", "zzz", "--json")).stdout) == []


def test_models_list_on_an_empty_home(cli: Invoke) -> None:
    assert "No models yet" in ok(cli("models", "list")).stdout
    assert json.loads(ok(cli("models", "list", "--json")).stdout) == []


def test_models_versions(cli: Invoke, client: Berth, model: Pipeline) -> None:
    client.register(model, "churn", training_data=sample_frame())
    table = ok(cli("models", "versions", "churn")).stdout
    assert "sklearn" in table
    assert "auc=0.81" in table
    versions = json.loads(ok(cli("models", "versions", "churn", "--json")).stdout)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["metrics"] == {"auc": 0.81}
    assert [f["name"] for f in versions[0]["signature"]["inputs"]] == ["age", "plan"]


def test_models_show_by_alias(cli: Invoke, model: Pipeline) -> None:
    ok(cli("models", "alias", "churn", "production", "1"))
    out = ok(cli("models", "show", "churn@production")).stdout
    assert "churn/1" in out
    assert "production" in out
    for word in ("age", "plan", "basic, pro", "auc=0.81", "80 rows"):
        assert word in out, word
    shown = json.loads(ok(cli("models", "show", "churn@production", "--json")).stdout)
    assert shown["ref"] == "churn/1"
    assert shown["aliases"] == ["production"]
    assert shown["signature"]["outputs"][1]["classes"] == ["churn", "stay"]


def test_user_text_is_printed_verbatim(cli: Invoke, client: Berth, model: Pipeline) -> None:
    # Descriptions are user text: brackets in them are not Rich markup (nor a crash).
    text = "[red]risky[/red] model [/oops]"
    client.register(model, "churn", training_data=sample_frame(), description=text)
    assert text in ok(cli("models", "show", "churn/2")).stdout


def test_models_show_unknown_alias(cli: Invoke, model: Pipeline) -> None:
    assert_error(cli("models", "show", "churn@canary"), "not_found", "'canary'")


def test_models_show_bad_reference(cli: Invoke, model: Pipeline) -> None:
    assert_error(cli("models", "show", "churn/zero"), "invalid_input", "churn/zero")


# -- aliases, history, delete ------------------------------------------------------------------


def test_alias_moves_show_in_history(cli: Invoke, client: Berth, model: Pipeline) -> None:
    client.register(model, "churn", training_data=sample_frame())
    assert "moved to version 1" in ok(cli("models", "alias", "churn", "production", "1")).stdout
    moved = ok(cli("models", "alias", "churn", "production", "2")).stdout
    assert "from version 1 to version 2" in moved
    assert client.get_version("churn@production").version == 2

    table = ok(cli("models", "history", "churn")).stdout
    assert "production" in table
    assert ACTOR in table
    events = json.loads(ok(cli("models", "history", "churn", "--json")).stdout)
    assert [(e["action"], e["details"]) for e in events] == [
        ("alias.set", {"from": None, "to": 1}),
        ("alias.set", {"from": 1, "to": 2}),
    ]
    assert {e["actor"] for e in events} == {ACTOR}


def test_alias_without_version(cli: Invoke, model: Pipeline) -> None:
    assert_error(cli("models", "alias", "churn", "production"), "invalid_input", "VERSION")


def test_alias_to_missing_version(cli: Invoke, model: Pipeline) -> None:
    assert_error(cli("models", "alias", "churn", "production", "9"), "not_found", "9")


def test_delete_refused_while_aliased(cli: Invoke, client: Berth, model: Pipeline) -> None:
    ok(cli("models", "alias", "churn", "production", "1"))
    assert_error(cli("models", "delete", "churn/1", "--yes"), "conflict", "production")
    assert EXIT_CODES["conflict"] == 4
    assert [v.version for v in client.list_versions("churn")] == [1]


def test_delete_after_alias_removed(cli: Invoke, client: Berth, model: Pipeline) -> None:
    ok(cli("models", "alias", "churn", "production", "1"))
    removed = ok(cli("models", "alias", "churn", "production", "--delete")).stdout
    assert "removed churn@production (was version 1)" in removed
    assert "deleted churn/1" in ok(cli("models", "delete", "churn/1", "--yes")).stdout
    assert client.list_versions("churn") == []
    events = json.loads(ok(cli("models", "history", "churn", "--json")).stdout)
    assert events[-1]["action"] == "alias.delete"
    assert events[-1]["details"] == {"from": 1, "to": None}


def test_delete_asks_first(cli: Invoke, client: Berth, model: Pipeline) -> None:
    declined = cli("models", "delete", "churn/1", input="n\n")
    assert declined.exit_code != 0
    assert [v.version for v in client.list_versions("churn")] == [1]
    ok(cli("models", "delete", "churn/1", input="y\n"))
    assert client.list_versions("churn") == []


def test_delete_needs_a_version(cli: Invoke, model: Pipeline) -> None:
    assert_error(cli("models", "delete", "churn", "--yes"), "invalid_input", "churn/3")


# -- predict -----------------------------------------------------------------------------------


def assert_predictions(rows: list[dict[str, Any]], pipe: Pipeline) -> None:
    frame = sample_frame()
    expected = pipe.predict_proba(frame)
    classes = [str(c) for c in pipe.classes_]
    assert len(rows) == len(frame)
    assert [r["label"] for r in rows] == list(pipe.predict(frame))
    for row, probabilities in zip(rows, expected, strict=True):
        assert list(row["probabilities"]) == classes
        assert [row["probabilities"][c] for c in classes] == pytest.approx(probabilities)


def test_predict_json_file(cli: Invoke, model: Pipeline, tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(SAMPLE))
    assert_predictions(json_lines(ok(cli("predict", "churn", "--input", str(path))).stdout), model)


@pytest.mark.parametrize(
    "payload",
    [
        json.dumps({"records": SAMPLE}),
        "\n".join(json.dumps(r) for r in SAMPLE),
        sample_frame().to_csv(index=False),
    ],
    ids=["json", "jsonl", "csv"],
)
def test_predict_stdin(cli: Invoke, model: Pipeline, payload: str) -> None:
    rows = json_lines(ok(cli("predict", "churn@latest", "-i", "-", input=payload)).stdout)
    assert_predictions(rows, model)


def test_predict_table(cli: Invoke, model: Pipeline, tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    sample_frame().to_csv(path, index=False)
    out = ok(cli("predict", "churn/1", "-i", str(path), "--table")).stdout
    assert "churn/1" in out
    assert "label" in out
    assert "probabilities" in out
    first = model.predict_proba(sample_frame())[0]
    assert f"churn: {first[0]:.3f}, stay: {first[1]:.3f}" in out
    with pytest.raises(json.JSONDecodeError):
        json_lines(out)


def test_predict_schema_error(cli: Invoke, model: Pipeline) -> None:
    payload = json.dumps([{"age": 30, "plan": "basic"}, {"age": "old", "plan": "pro"}])
    assert_error(
        cli("predict", "churn", "-i", "-", input=payload), "invalid_input", "'age'", "row 1"
    )


def test_predict_error_quotes_user_text_verbatim(cli: Invoke, model: Pipeline) -> None:
    # A value from the request is part of the message; it must not be read as Rich markup.
    for plan in ("[/oops]", "[red]gold"):
        payload = json.dumps([{"age": 30, "plan": plan}])
        assert_error(cli("predict", "churn", "-i", "-", input=payload), "invalid_input", plan)


def test_predict_missing_input_file(cli: Invoke, model: Pipeline, tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    assert_error(cli("predict", "churn", "-i", str(missing)), "invalid_input", str(missing))


def test_predict_unknown_model(cli: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(SAMPLE))
    line = assert_error(cli("predict", "x", "-i", str(path)), "not_found")
    assert line == "error: model 'x' not found"


# -- register ----------------------------------------------------------------------------------


@pytest.fixture
def train_csv(tmp_path: Path, training: tuple[pd.DataFrame, np.ndarray[Any, Any]]) -> Path:
    path = tmp_path / "train.csv"
    training[0].to_csv(path, index=False)
    return path


def test_register_skops(
    cli: Invoke, client: Berth, trained: Pipeline, tmp_path: Path, train_csv: Path
) -> None:
    path = tmp_path / "model.skops"
    skops_io.dump(trained, path)
    out = ok(
        cli(
            "models",
            "register",
            str(path),
            "--name",
            "churn-skops",
            "--training-data",
            str(train_csv),
            "--metric",
            "auc=0.9",
            "--alias",
            "staging",
        )
    ).stdout
    assert "registered churn-skops/1" in out
    assert "staging" in out

    info = client.get_version("churn-skops@staging")
    assert info.version == 1
    assert info.flavor == "sklearn"
    assert info.metrics == {"auc": 0.9}
    assert info.trusted is False
    assert info.signature.names == ["age", "plan"]
    assert info.lineage["training_data"]["rows"] == 80
    assert client.get_profile("churn-skops/1") is not None
    proba = client.load("churn-skops@staging").predict(SAMPLE)["probabilities"]
    np.testing.assert_allclose(proba, trained.predict_proba(sample_frame()))


def test_register_pickle_needs_trusted(
    cli: Invoke, client: Berth, trained: Pipeline, tmp_path: Path, train_csv: Path
) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(trained))
    args = ("models", "register", str(path), "-n", "churn-pkl", "--training-data", str(train_csv))

    assert_error(cli(*args), "forbidden", "--trusted")
    assert EXIT_CODES["forbidden"] == 6
    assert [m.name for m in client.list_models()] == []

    assert "registered churn-pkl/1" in ok(cli(*args, "--trusted")).stdout
    info = client.get_version("churn-pkl/1")
    assert info.trusted is True
    labels = client.load("churn-pkl/1").predict(SAMPLE)["label"]
    assert list(labels) == list(trained.predict(sample_frame()))


@pytest.mark.parametrize("metric", ["auc=high", "auc", "=0.9"])
def test_register_bad_metric(
    cli: Invoke, client: Berth, trained: Pipeline, tmp_path: Path, train_csv: Path, metric: str
) -> None:
    path = tmp_path / "model.skops"
    skops_io.dump(trained, path)
    result = cli(
        "models",
        "register",
        str(path),
        "--name",
        "m",
        "--training-data",
        str(train_csv),
        "--metric",
        metric,
    )
    assert_error(result, "invalid_input", "metric")
    assert client.list_models() == []


def test_register_missing_file(cli: Invoke, tmp_path: Path) -> None:
    missing = tmp_path / "model.skops"
    assert_error(cli("models", "register", str(missing), "-n", "m"), "invalid_input", str(missing))


# -- errors and help ---------------------------------------------------------------------------


def test_unknown_model_is_one_line(cli: Invoke) -> None:
    line = assert_error(cli("models", "show", "x"), "not_found")
    assert line == "error: model 'x' not found"
    assert EXIT_CODES["not_found"] == 3


def test_unknown_model_lists_the_known_ones(cli: Invoke, model: Pipeline) -> None:
    assert_error(cli("models", "versions", "chrun"), "not_found", "'chrun'", "churn")


COMMANDS = [
    [],
    ["models"],
    ["models", "list"],
    ["models", "versions"],
    ["models", "show"],
    ["models", "history"],
    ["models", "register"],
    ["models", "alias"],
    ["models", "delete"],
    ["predict"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "berth")
def test_help_has_an_example(cli: Invoke, command: list[str], home: Path) -> None:
    out = ok(cli(*command, "--help")).stdout
    assert "Usage" in out
    assert "Example:" in out
    assert not home.exists()  # help touches no state


# -- the real entry point ----------------------------------------------------------------------


@pytest.fixture
def berth_script() -> tuple[Path, dict[str, str]]:
    script = Path(sys.executable).parent / "berth"
    # The real entry point is part of what is tested: `make install` always puts it there.
    assert script.exists(), f"the berth script is not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return script, env


def test_real_entry_point_error_is_one_line(
    berth_script: tuple[Path, dict[str, str]], home: Path
) -> None:
    script, env = berth_script
    # Both processes at once (each spends a second or two importing), on separate homes.
    procs = [
        subprocess.Popen(
            [str(script), "--home", str(home / name), *extra, "models", "show", "nope"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, extra in (("plain", []), ("debug", ["--debug"]))
    ]
    (out, err), (_, debug_err) = (p.communicate(timeout=60) for p in procs)
    plain, debug = procs

    assert plain.returncode == EXIT_CODES["not_found"], err
    assert out == ""
    assert err.splitlines() == ["error: model 'nope' not found"]
    assert "Traceback" not in err

    assert debug.returncode != 0
    assert "Traceback" in debug_err
    assert "ModelNotFoundError: model 'nope' not found" in debug_err


def test_versions_shows_the_newest_by_default(tmp_path: Path) -> None:
    from tests.models import SumModel, numbers

    from berth.app import Berth
    from berth.config import Settings

    home = tmp_path / "many"
    with Berth(Settings(home=home)) as c:
        for _ in range(4):
            c.register(SumModel(), "many", training_data=numbers(), trusted=True)
    runner = CliRunner()
    shown = runner.invoke(
        app, ["--home", str(home), "models", "versions", "many", "--limit", "2", "--json"]
    )
    assert shown.exit_code == 0, shown.output
    assert [v["version"] for v in json.loads(shown.stdout)] == [3, 4]
    every = runner.invoke(
        app, ["--home", str(home), "models", "versions", "many", "--limit", "0", "--json"]
    )
    assert [v["version"] for v in json.loads(every.stdout)] == [1, 2, 3, 4]
