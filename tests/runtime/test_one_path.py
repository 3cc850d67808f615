"""Every entry point resolves a reference by the one rule, on SQLite and PostgreSQL: a bare name
is the production alias when there is one, else the newest version; ``@latest`` the newest;
``@alias`` and ``/N`` what they say. The server, the CLI, batch jobs (both engines), ``berth logs``
and ``berth.load`` answer with the same version, and follow an alias move together."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from tests.models import SumModel, numbers
from typer.testing import CliRunner

from berth.app import Berth, build_server
from berth.cli.main import app as cli_app
from berth.config import PathOptions, ServeOptions
from berth.testing import running_server

ROW = {"a": 1.0, "b": 2.0}


class Scaled(SumModel):
    """The row sum times the version number: an answer says which version gave it."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return super().predict(frame) * self.factor


class EntryPoints:
    """Asks every entry point which version answers ``ref``."""

    def __init__(self, client: Berth, url: str, tmp: Path) -> None:
        self.client = client
        self.url = url
        self.tmp = tmp
        self.runner = CliRunner(env={"BERTH_USER": "tester"})
        home = ["--home", str(client.settings.home)]
        if client.settings.database_url:
            home += ["--database-url", client.settings.database_url]
        self.root = home
        self.input = tmp / "rows.parquet"
        pd.DataFrame([ROW] * 3).to_parquet(self.input)
        self.runs = 0

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = self.runner.invoke(cli_app, [*self.root, *args], input=stdin)
        assert done.exit_code == 0, (args, done.stdout, done.stderr, done.exception)
        return done.stdout

    def v1(self, ref: str) -> int:
        return _post(f"{self.url}/v1/predict/{ref}", {"records": [ROW]})["version"]

    def oip(self, ref: str) -> int:
        name, sep, selector = ref.replace("/", "@").partition("@")
        route = f"/v2/models/{name}" + (f"/versions/{selector}" if sep else "")
        tensors = [
            {"name": k, "datatype": "FP64", "shape": [1], "data": [v]} for k, v in ROW.items()
        ]
        body = _post(f"{self.url}{route}/infer", {"inputs": tensors})
        version = int(body["model_version"])
        assert body["outputs"][0]["data"] == [3.0 * version]
        # and the metadata route names the same version
        meta = json.loads(urllib.request.urlopen(f"{self.url}{route}").read())
        assert meta["parameters"]["version"] == version
        return version

    def predict(self, ref: str) -> int:
        out = self.cli("predict", ref, "-i", "-", stdin=json.dumps([ROW]))
        return round(json.loads(out.splitlines()[0])["prediction"] / 3.0)

    def batch(self, ref: str) -> int:
        self.runs += 1
        output = self.tmp / f"scores-{self.runs}.parquet"
        self.cli("batch", "run", ref, "-i", str(self.input), "-o", str(output))
        versions = set(pq.read_table(output).column("version").to_pylist())
        assert len(versions) == 1
        return versions.pop()

    def logs(self, ref: str) -> set[int]:
        self.runs += 1
        output = self.tmp / f"logs-{self.runs}.parquet"
        self.cli("logs", ref, "--since", "1d", "-o", str(output))
        return set(pq.read_table(output).column("version").to_pylist())

    def load(self, ref: str) -> int:
        handle = self.client.load(ref)
        assert handle.predict(pd.DataFrame([ROW]))["prediction"].tolist() == [
            3.0 * handle.version.version
        ]
        return handle.version.version

    def all(self, ref: str) -> dict[str, int]:
        return {
            "/v1/predict": self.v1(ref),
            "oip": self.oip(ref),
            "berth predict": self.predict(ref),
            "berth batch run": self.batch(ref),
            "berth.load": self.load(ref),
            "get_version": self.client.get_version(ref).version,
        }


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(request).read())


def _eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the server did not follow the alias move"
        time.sleep(0.05)


def test_every_entry_point_agrees_on_every_reference_form(
    any_client: Berth, tmp_path: Path
) -> None:
    for factor in (1.0, 2.0, 3.0):
        any_client.register(Scaled(factor), "m", training_data=numbers(), trusted=True)
    options = ServeOptions(path=PathOptions(poll_interval_s=0.1), access_log=False)
    server = build_server(any_client.settings, options)
    with running_server(server) as url:
        points = EntryPoints(any_client, url, tmp_path)
        # No alias at all: a bare name is the newest version.
        assert set(points.all("m").values()) == {3}
        any_client.set_alias("m", "production", 1)
        any_client.set_alias("m", "staging", 2)
        _eventually(lambda: points.v1("m") == 1)
        expected = {"m": 1, "m@production": 1, "m@staging": 2, "m@latest": 3, "m/2": 2, "m/3": 3}
        for ref, version in expected.items():
            answers = points.all(ref)
            assert set(answers.values()) == {version}, (ref, answers)
            if ref != "m":  # a bare name in berth logs means every version of the model
                assert points.logs(ref) == {version}, ref
        assert points.logs("m") == {1, 2, 3}
        # --engine ray resolves in the same place: tests/batch/test_ray.py.

        # Promotion: every entry point follows at once (the server within its poll interval).
        any_client.set_alias("m", "production", 2)
        _eventually(lambda: points.v1("m") == 2 and points.oip("m") == 2)
        assert set(points.all("m").values()) == {2}
        assert set(points.all("m@production").values()) == {2}
        # Without production again: the newest.
        any_client.delete_alias("m", "production")
        _eventually(lambda: points.v1("m") == 3)
        assert set(points.all("m").values()) == {3}


@pytest.mark.parametrize(
    ("ref", "problem"),
    [("m/0", "positive integer"), ("m@Prod", "alias"), ("-m", "model name"), ("m/x", "integer")],
)
def test_a_bad_reference_is_refused_alike_everywhere(client: Berth, ref: str, problem: str) -> None:
    from berth.errors import InvalidInputError

    client.register(Scaled(1.0), "m", training_data=numbers(), trusted=True)
    with pytest.raises(InvalidInputError, match=problem):
        client.load(ref)
    with pytest.raises(InvalidInputError, match=problem):
        client.get_version(ref)


def test_the_path_runs_without_the_server(client: Berth) -> None:
    """What a stream consumer does: the composition root's path, started, used, closed."""
    import asyncio

    from berth.app import build_path
    from berth.runtime.envelope import RequestContext
    from berth.runtime.record_reader import RecordReader

    client.register(Scaled(2.0), "m", training_data=numbers(), trusted=True)
    client.set_alias("m", "production", 1)
    path = build_path(client, PathOptions(poll_interval_s=0))

    async def consume() -> list[float]:
        await path.start()
        try:
            assert path.ready
            assert path.status("m", 1) is not None
            got = []
            for i in range(3):
                context = RequestContext(unit_id=f"u{i}", source_id=f"msg-{i}")
                target = await path.resolve("m", context)
                result = await path.run(target, pd.DataFrame([ROW]), mode="stream")
                got += result.outputs["prediction"].tolist()
            return got
        finally:
            await path.close()

    assert asyncio.run(consume()) == [6.0, 6.0, 6.0]
    records = RecordReader(client.settings.resolved_records_root()).read("m").to_pylist()
    assert [(r["mode"], r["unit_id"], r["source_id"]) for r in records] == [
        ("stream", f"u{i}", f"msg-{i}") for i in range(3)
    ]
