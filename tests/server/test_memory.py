"""Bounded memory per server, through the real app: six versions and a budget of two versions no
alias points at (``BERTH_MAX_UNALIASED_VERSIONS=2`` as the settings pass it). Asking for every
version loads at most two of them beside the aliased one, unloads the least recently used, never
the aliased one nor one with a request in flight, answers 503 with ``Retry-After`` when every
slot is busy or a load failed, and ``/v1/models`` says what is loaded and why. Before, every
version asked for stayed loaded."""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from tests.server.conftest import Http, assert_error, in_process

from berth.app import Berth, build_server
from berth.config import ModelServing, PathOptions, ServeOptions, Settings
from berth.errors import RetryLaterError
from berth.server.errors import berth_error

HOLD = 0.125
"""A request whose ``a`` is this waits in the predictor until the gate opens."""


class Gated:
    """``factor * (a + b)``: every answer says which version gave it. A row with ``a == HOLD``
    writes ``gate/started-FACTOR`` and waits until ``gate/release`` exists (30 s at most)."""

    def __init__(self, factor: float, gate: str) -> None:
        self.factor = factor
        self.gate = gate

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if bool((frame["a"] == HOLD).any()):
            gate = Path(self.gate)
            (gate / f"started-{self.factor:g}").write_text("")
            deadline = time.monotonic() + 30.0
            while not (gate / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        return self.factor * frame[["a", "b"]].to_numpy(dtype=np.float64).sum(axis=1)


class Home:
    def __init__(self, home: Path, gate: Path) -> None:
        self.home = home
        self.gate = gate


@pytest.fixture(scope="module")
def memory_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """``mem`` v1..v6 (v6 is ``production``) and ``broken`` v1, whose artifact is damaged."""
    root = tmp_path_factory.mktemp("memory")
    gate = root / "gate"
    gate.mkdir()
    rows = pd.DataFrame({"a": [0.5, 0.25, 0.75], "b": [0.25, 0.5, 0.125]})
    with Berth(Settings(home=root / "home", user="tester")) as client:
        for v in range(1, 7):
            client.register(
                Gated(float(v), str(gate)),
                "mem",
                training_data=rows,
                trusted=True,
                measure_latency=False,
            )
        client.set_alias("mem", "production", 6)
        # Another factor: the same content would be the same artifact as mem/1.
        broken = client.register(
            Gated(-1.0, str(gate)),
            "broken",
            training_data=rows,
            trusted=True,
            measure_latency=False,
        )
        file = client.store.path(broken.digest) / "model.cloudpickle"
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(data))
    return Home(root / "home", gate)


@pytest.fixture
def served(memory_home: Home) -> Iterator[tuple[Http, Any]]:
    """A fresh app per test: the budget from the settings, as ``berth serve`` passes it."""
    gate = memory_home.gate
    for file in gate.iterdir():
        file.unlink()
    settings = Settings(home=memory_home.home, user="tester", max_unaliased_versions=2)
    # max_latency_ms: never on the event loop (a held request there would hold every other).
    models = {"mem": ModelServing(max_latency_ms=1.0)}
    options = ServeOptions(
        path=PathOptions(poll_interval_s=0, models=models, record=False), access_log=False
    )
    app = build_server(settings, options)
    try:
        with in_process(app, memory_home.home) as http:
            yield http, app
    finally:
        (gate / "release").write_text("")  # nothing stays held


def predict(http: Http, version: int, a: float = 0.5, oip: bool = False) -> httpx.Response:
    if oip:
        body = {
            "inputs": [
                {"name": "a", "datatype": "FP64", "shape": [1], "data": [a]},
                {"name": "b", "datatype": "FP64", "shape": [1], "data": [0.25]},
            ]
        }
        return http.post(f"/v2/models/mem/versions/{version}/infer", json=body)
    return http.post(f"/v1/predict/mem/{version}", json={"records": [{"a": a, "b": 0.25}]})


def answer(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    body = response.json()
    if "outputs" in body:
        return float(body["outputs"][0]["data"][0])
    return float(body["predictions"][0]["prediction"])


def start(http: Http, version: int, a: float = HOLD) -> concurrent.futures.Future[httpx.Response]:
    """A request sent without waiting for its answer."""
    call = functools.partial(
        http.client.post, f"/v1/predict/mem/{version}", json={"records": [{"a": a, "b": 0.25}]}
    )
    return http.portal.start_task_soon(call)


def wait_for(file: Path) -> None:
    deadline = time.monotonic() + 30.0
    while not file.exists():
        assert time.monotonic() < deadline, f"{file} never appeared"
        time.sleep(0.005)


def listing(http: Http) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    response = http.get("/v1/models")
    assert response.status_code == 200, response.text
    body = response.json()
    models = {m["name"]: m for m in body["models"]}
    residency = {int(v): entry for v, entry in models["mem"]["residency"].items()}
    return residency, body["memory"]


def ready(http: Http) -> set[int]:
    residency, _ = listing(http)
    return {v for v, entry in residency.items() if entry["state"] == "ready"}


def no_thread_for(version: int) -> bool:
    prefix = f"predict-mem-{version}_"
    deadline = time.monotonic() + 10.0
    while any(t.name.startswith(prefix) for t in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_versions_asked_for_stay_within_the_budget_least_recently_used_out(
    served: tuple[Http, Any], memory_home: Home
) -> None:
    http, app = served
    pool = app.state.path.pool
    aliased = pool.served[("mem", 6)]
    for v in range(1, 6):
        assert answer(predict(http, v, oip=v % 2 == 0)) == v * 0.75
        residency, memory = listing(http)
        on_demand = {k for k, e in residency.items() if e["state"] == "ready" and not e["aliases"]}
        assert len(on_demand) <= 2, residency
        assert memory["unaliased_loaded"] == len(on_demand)
        assert residency[6]["why"] == "aliased"
        assert residency[6]["aliases"] == ["production"]
    assert ready(http) == {4, 5, 6}
    # Least recently used out: 4 is used again, so 5 goes for 1, then 4 goes for 2.
    assert answer(predict(http, 4)) == 3.0
    assert answer(predict(http, 1)) == 0.75
    assert ready(http) == {1, 4, 6}
    assert answer(predict(http, 2, oip=True)) == 1.5
    assert ready(http) == {1, 2, 6}
    # A version loaded again answers as before.
    assert answer(predict(http, 5)) == 3.75
    assert answer(predict(http, 4, oip=True)) == 3.0
    assert ready(http) == {4, 5, 6}
    assert pool.served[("mem", 6)] is aliased  # never unloaded, never reloaded
    assert answer(predict(http, 6)) == 4.5
    # The unloaded ones' inference threads have stopped.
    assert no_thread_for(1)
    assert no_thread_for(2)

    residency, memory = listing(http)
    assert memory["max_unaliased_versions"] == 2
    assert memory["max_unaliased_bytes"] is None
    assert memory["resident_bytes"] > 0
    with Berth(Settings(home=memory_home.home, user="tester")) as client:
        sizes = {v.version: v.size_bytes for v in client.list_versions("mem")}
    for v in (4, 5, 6):
        entry = residency[v]
        # A memory figure per loaded version: the resident growth, at least the artifact.
        assert entry["artifact_bytes"] == sizes[v] > 0
        assert isinstance(entry["resident_bytes"], int)
        assert entry["memory_bytes"] >= entry["artifact_bytes"]
        assert entry["in_flight"] == 0
    assert residency[4]["why"] == residency[5]["why"] == "on demand"
    assert residency[4]["idle_s"] <= residency[5]["idle_s"]  # 4 was used last
    assert "last_used" in residency[5]
    assert memory["unaliased_bytes"] == residency[4]["memory_bytes"] + residency[5]["memory_bytes"]


def test_a_version_in_flight_stays_and_a_busy_budget_answers_503_with_retry_after(
    served: tuple[Http, Any], memory_home: Home
) -> None:
    http, _app = served
    gate = memory_home.gate
    held_1 = start(http, 1)
    wait_for(gate / "started-1")
    assert answer(predict(http, 2)) == 1.5
    assert answer(predict(http, 3)) == 2.25  # room made by 2 (idle), not 1 (in flight)
    assert ready(http) == {1, 3, 6}
    residency, _ = listing(http)
    assert residency[1]["in_flight"] == 1
    held_3 = start(http, 3)
    wait_for(gate / "started-3")
    # Both slots in flight: a third version cannot be loaded now.
    for oip in (False, True):
        response = predict(http, 4, oip=oip)
        assert_error(response, 503, "mem/4 cannot be loaded now", "in flight", "mem/1", "mem/3")
        assert int(response.headers["retry-after"]) >= 1
    assert ready(http) == {1, 3, 6}
    # The aliased version is outside the budget: it still answers.
    assert answer(predict(http, 6)) == 4.5
    (gate / "release").write_text("")
    assert answer(held_1.result(30)) == 1 * (HOLD + 0.25)
    assert answer(held_3.result(30)) == 3 * (HOLD + 0.25)
    assert answer(predict(http, 4)) == 3.0  # 1 was used least recently
    assert ready(http) == {3, 4, 6}


def test_a_version_that_failed_to_load_answers_503_with_retry_after(
    served: tuple[Http, Any],
) -> None:
    http, _app = served
    body = {"records": [{"a": 0.5, "b": 0.25}]}
    first = http.post("/v1/predict/broken/1", json=body)
    assert_error(first, 503, "broken/1 is not ready", "SHA-256")
    assert 1 <= int(first.headers["retry-after"]) <= 30
    again = http.post("/v1/predict/broken/1", json=body)  # not loaded again at once
    assert_error(again, 503, "broken/1 is not ready")
    assert 1 <= int(again.headers["retry-after"]) <= 30
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert models["broken"]["residency"]["1"]["state"] == "failed"
    assert "SHA-256" in models["broken"]["residency"]["1"]["reason"]
    assert answer(predict(http, 1)) == 0.75  # a failed version takes no slot
    assert answer(predict(http, 2)) == 1.5
    assert ready(http) == {1, 2, 6}


def test_a_version_an_alias_moves_away_from_becomes_evictable(
    served: tuple[Http, Any], memory_home: Home
) -> None:
    http, app = served
    pool = app.state.path.pool
    with Berth(Settings(home=memory_home.home, user="tester")) as client:
        try:
            client.set_alias("mem", "production", 5)
            http.portal.call(pool.refresh)
            residency, _ = listing(http)
            assert residency[5]["aliases"] == ["production"]
            assert 6 not in ready(http)  # unloaded once the alias left it
            # Now 6 is a version like any other: on demand, and unloaded least recently used.
            assert answer(predict(http, 6)) == 4.5
            assert listing(http)[0][6]["why"] == "on demand"
            assert answer(predict(http, 1)) == 0.75
            assert answer(predict(http, 2)) == 1.5
            assert ready(http) == {1, 2, 5}
            assert answer(predict(http, 5)) == 3.75
        finally:
            client.set_alias("mem", "production", 6)


def test_retry_after_is_sent_by_the_fastapi_error_handler_too() -> None:
    """Errors raised in routes FastAPI serves (not the dispatched inference routes)."""
    import asyncio

    response = asyncio.run(berth_error(None, RetryLaterError("busy", 2.2)))  # type: ignore[arg-type]
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"


def test_each_process_takes_its_budget_from_its_settings(
    memory_home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker of ``berth serve --workers N`` gets the options as JSON and its own settings
    from the environment: each applies the budget itself."""
    from berth.config import MemoryBudget

    monkeypatch.setenv("BERTH_MAX_UNALIASED_VERSIONS", "3")
    monkeypatch.setenv("BERTH_MAX_UNALIASED_MB", "64")
    worker_options = ServeOptions.model_validate_json(ServeOptions().model_dump_json())
    app = build_server(Settings(home=memory_home.home, user="tester"), worker_options)
    assert app.state.path.pool.budget == MemoryBudget(max_versions=3, max_bytes=64 * 1024 * 1024)
    # Options that give a budget keep it.
    given = ServeOptions(path=PathOptions(memory=MemoryBudget(max_versions=1)))
    app = build_server(Settings(home=memory_home.home, user="tester"), given)
    assert app.state.path.pool.budget.max_versions == 1
