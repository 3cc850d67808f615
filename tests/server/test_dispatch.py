"""The inference routes answered ahead of FastAPI: the same routes, answers and errors as the
FastAPI routes they shadow, and FastAPI never called for them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from tests.server.conftest import in_process, make_app, numeric_frame, tensor

from berth.app import Berth
from berth.config import Settings
from berth.server.dispatch import match


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/predict/credit", ("v1", "credit", None)),
        ("/v1/predict/credit/3", ("v1", "credit/3", None)),
        ("/v1/predict/credit@staging", ("v1", "credit@staging", None)),
        ("/v1/predict/", None),
        ("/v1/predicts/credit", None),
        ("/v2/models/credit/infer", ("oip", "credit", None)),
        ("/v2/models/credit/versions/2/infer", ("oip", "credit", "2")),
        ("/v2/models/credit/versions/staging/infer", ("oip", "credit", "staging")),
        ("/v2/models//infer", None),
        ("/v2/models/infer", None),
        ("/v2/models/a/b/infer", None),
        ("/v2/models/credit/versions//infer", None),
        ("/v2/models/credit/version/2/infer", None),
        ("/v2/models/credit/infer/", None),
        ("/v2/models/credit", None),
        ("/v2/models/credit/ready", None),
    ],
)
def test_match_takes_what_the_fastapi_routes_take(path: str, route: Any) -> None:
    assert match(path) == route


class Exploding:
    """Fails with a message that must never reach a client."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        raise RuntimeError("secret-token-4711 in the model's own words")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("dispatch") / "home"
    numbers = numeric_frame(rows=40, seed=3)
    with Berth(Settings(home=home, user="tester")) as client:
        client.register(Exploding(), "exploding", training_data=numbers, trusted=True)
    return home


@pytest.fixture(scope="module")
def http(home: Path) -> Iterator[Any]:
    with in_process(make_app(home), home) as client:
        yield client


def _request(numbers: pd.DataFrame) -> dict[str, Any]:
    inputs = [tensor(f, "FP64", numbers[f].tolist()) for f in ("x0", "x1")]
    return {"inputs": [*inputs, tensor("n", "INT64", numbers["n"].tolist())]}


@pytest.mark.parametrize("api", ["v1", "oip"])
def test_an_unexpected_error_is_a_generic_500_and_logged(
    http, api: str, caplog: pytest.LogCaptureFixture
) -> None:
    numbers = numeric_frame(rows=2, seed=4)
    with caplog.at_level(logging.ERROR, logger="berth.server"):
        if api == "v1":
            response = http.post(
                "/v1/predict/exploding", json={"records": numbers.to_dict("records")}
            )
        else:
            response = http.post("/v2/models/exploding/infer", json=_request(numbers))
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error; the server log has the details"}
    assert "secret-token" not in response.text
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert logged, "the traceback goes to the server log"
    assert "secret-token-4711" in str(logged[-1].exc_info[1])


def test_inference_routes_never_reach_fastapi(http, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other route still does (FastAPI serves them, and their 404s and 405s)."""
    calls: list[str] = []
    original = FastAPI.__call__

    async def counted(self: FastAPI, scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", counted)
    numbers = numeric_frame(rows=1, seed=5)
    http.post("/v1/predict/exploding", json={"records": numbers.to_dict("records")})
    http.post("/v2/models/exploding/infer", json=_request(numbers))
    http.post("/v2/models/missing/versions/3/infer", json=_request(numbers))
    assert calls == []
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v1/predict/exploding").status_code == 405
    assert calls == ["/v2/health/live", "/v1/predict/exploding"]


def test_a_mounted_app_serves_its_inference_routes(home: Path) -> None:
    """Under a root path (a proxy's prefix) the routes are matched below it, as Starlette does."""
    from fastapi import FastAPI as Outer

    outer = Outer()
    outer.mount("/berth", make_app(home))
    numbers = numeric_frame(rows=1, seed=6)
    with in_process(outer, home) as client:
        response = client.post("/berth/v2/models/missing/infer", json=_request(numbers))
        assert response.status_code == 404, response.text
        assert "'missing'" in response.json()["error"]
