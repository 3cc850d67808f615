"""Operations: Prometheus metrics, the JSON access log, and recording turned off per model."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from tests.models import SumModel, numbers

from berth.app import Berth, ServeOptions, build_server, read_serving_file
from berth.config import PathOptions, Settings
from berth.runtime.record_reader import RecordReader
from berth.testing import asgi_client


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "ops"
    with Berth(Settings(home=home)) as c:
        c.register(SumModel(), "kept", training_data=numbers(), trusted=True)
        c.register(SumModel(), "private", training_data=numbers(), trusted=True)
        c.set_alias("kept", "production", 1)
    return home


def _serve(home: Path, tmp_path: Path, **options: object):
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"models": {"private": {"record": False}}}))
    return build_server(
        Settings(home=home),
        ServeOptions(
            path=PathOptions(poll_interval_s=0, models=read_serving_file(str(config))),
            **options,  # type: ignore[arg-type]
        ),
    )


def test_metrics_count_requests_latency_batches_and_loads(home: Path, tmp_path: Path) -> None:
    async def go() -> str:
        async with asgi_client(_serve(home, tmp_path, access_log=False)) as http:
            for _ in range(3):
                ok = await http.post("/v1/predict/kept", json={"records": [{"a": 1.0, "b": 2.0}]})
                assert ok.status_code == 200
            bad = await http.post("/v1/predict/kept", json={"records": [{"a": "x", "b": 2.0}]})
            assert bad.status_code == 422
            response = await http.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            return response.text

    text = asyncio.run(go())
    assert 'berth_requests_total{model="kept",status="ok",version="1"} 3.0' in text
    assert 'berth_requests_total{model="kept",status="error",version="1"} 1.0' in text
    assert 'berth_request_latency_seconds_count{model="kept",version="1"} 3.0' in text
    assert 'berth_batch_size_count{model="kept",version="1"}' in text
    assert 'berth_model_load_seconds{model="kept",version="1"}' in text
    assert "berth_records_dropped_total 0.0" in text
    assert 'berth_queue_depth{model="kept",version="1"} 0.0' in text


def test_each_request_gets_one_json_access_log_line(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        async with asgi_client(_serve(home, tmp_path, access_log=True)) as http:
            await http.post("/v1/predict/kept", json={"records": [{"a": 1.0, "b": 2.0}]})
            await http.get("/v2/models/nope")

    with caplog.at_level(logging.INFO, logger="berth.access"):
        asyncio.run(go())
    records = [r for r in caplog.records if r.name == "berth.access"]
    # Written off the event loop, and all of them by the end of the shutdown.
    assert {r.threadName for r in records} == {"berth-access-log"}
    lines = [json.loads(r.getMessage()) for r in records]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/v1/predict/kept", 200),
        ("GET", "/v2/models/nope", 404),
    ]
    assert all(x["ms"] >= 0 for x in lines)


def test_recording_can_be_turned_off_per_model(home: Path, tmp_path: Path) -> None:
    async def go() -> None:
        async with asgi_client(_serve(home, tmp_path, access_log=False)) as http:
            for name in ("kept", "private"):
                response = await http.post(
                    f"/v1/predict/{name}", json={"records": [{"a": 1.0, "b": 2.0}]}
                )
                assert response.status_code == 200

    asyncio.run(go())  # leaving the lifespan flushes the records
    root = Settings(home=home).resolved_records_root()
    assert RecordReader(root).read("kept").num_rows == 1
    assert RecordReader(root).read("private").num_rows == 0
