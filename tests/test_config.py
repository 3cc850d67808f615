"""Declared settings: serving options and per-model serving files refuse unknown keys and bad
values in one line naming the key; options cross to worker processes as JSON unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from berth.app import declared, read_serving_file
from berth.cli.main import app
from berth.config import BatchingConfig, ModelServing, PathOptions, ServeOptions
from berth.errors import InvalidInputError


def _file(tmp_path: Path, text: str, suffix: str = ".json") -> str:
    path = tmp_path / f"serve{suffix}"
    path.write_text(text)
    return str(path)


def test_a_serving_file_in_json_or_toml(tmp_path: Path) -> None:
    doc = {"models": {"sentiment": {"max_batch_size": 64, "target_p99_ms": 80}}}
    from_json = read_serving_file(_file(tmp_path, json.dumps(doc)))
    toml = "[models.sentiment]\nmax_batch_size = 64\ntarget_p99_ms = 80\n"
    from_toml = read_serving_file(_file(tmp_path, toml, ".toml"))
    assert from_json == from_toml
    serving = from_json["sentiment"]
    assert serving.record is True
    # Unset settings take the flavor's default; set ones replace it.
    default = BatchingConfig(max_batch_size=32, max_latency_ms=5.0)
    assert serving.batching(default) == BatchingConfig(
        max_batch_size=64, max_latency_ms=5.0, target_p99_ms=80
    )
    assert ModelServing().batching(default) is default
    # A target alone keeps the flavor's batching and tunes its window.
    assert ModelServing(target_p99_ms=80).batching(default).max_batch_size == 32


def test_serving_settings_mean_the_same_in_every_worker() -> None:
    """Workers get the options as JSON, where an unset setting arrives as null."""
    default = BatchingConfig(max_batch_size=32, max_latency_ms=5.0)
    for serving in (ModelServing(record=False), ModelServing(max_batch_size=4)):
        options = ServeOptions(path=PathOptions(models={"m": serving}))
        again = ServeOptions.model_validate_json(options.model_dump_json()).path.models["m"]
        assert again.batching(default) == serving.batching(default)
        assert again.record == serving.record


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"models": {"m": {"max_batch": 8}}}, "models.m: max_batch: unknown setting"),
        ({"models": {"m": {"max_batch_size": 0}}}, "models.m: max_batch_size"),
        ({"models": {"m": {"max_latency_ms": "soon"}}}, "models.m: max_latency_ms"),
        ({"models": {"m": {"record": "maybe"}}}, "models.m: record"),
        ({"models": []}, "'models' must map names"),
        ({"model": {}}, "under 'models'"),
    ],
)
def test_a_bad_serving_file_names_the_key(tmp_path: Path, doc: object, problem: str) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        read_serving_file(_file(tmp_path, json.dumps(doc)))


def test_berth_serve_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    config = _file(tmp_path, json.dumps({"models": {"m": {"max_batch": 8}}}))
    done = CliRunner().invoke(app, ["--home", str(tmp_path / "h"), "serve", "--config", config])
    assert done.exit_code == 2
    assert "max_batch: unknown setting" in done.stderr
    assert "Traceback" not in done.stderr


def test_options_cross_to_workers_as_json_unchanged() -> None:
    options = ServeOptions(
        path=PathOptions(record=False, models={"m": ModelServing(max_batch_size=4)}),
        max_body_bytes=1234,
    )
    assert ServeOptions.model_validate_json(options.model_dump_json()) == options
    with pytest.raises(InvalidInputError, match=r"serve: path\.poll_interval_s"):
        declared(ServeOptions, {"path": {"poll_interval_s": -1}}, "serve")
    with pytest.raises(InvalidInputError, match="serve: workers: unknown setting"):
        declared(ServeOptions, {"workers": 2}, "serve")


def test_a_stored_job_spec_with_an_unknown_key_is_refused() -> None:
    from berth.batch.specs import JobSpec

    spec = {
        "reference": "m",
        "input": {"target": "/in.parquet", "format": "parquet"},
        "output": {"target": "/out.parquet", "format": "parquet"},
    }
    assert JobSpec.from_dict(spec).chunk_rows == 100_000
    with pytest.raises(InvalidInputError, match="bogus"):
        JobSpec.from_dict({**spec, "bogus": 1})
    with pytest.raises(InvalidInputError, match="--chunk-rows must be at least 1"):
        JobSpec.from_dict({**spec, "chunk_rows": 0})


def test_passwords_in_database_urls_are_masked_by_sqlalchemys_rule() -> None:
    from berth.batch.specs import JobSpec, Location

    spec = JobSpec(
        reference="m",
        input=Location(
            target="postgresql+psycopg://app:s3cret@db/crm", format="sql", query="SELECT 1"
        ),
        output=Location(target="duckdb:///out.duckdb", format="duckdb", table="t"),
    )
    shown = spec.redacted()
    assert shown.input.target == "postgresql+psycopg://app:***@db/crm"
    assert shown.output.target == "duckdb:///out.duckdb"
    assert "s3cret" not in shown.input.describe()
