"""Registration times the saved model on its training data and keeps the figure in the lineage;
a model that fails or stalls there still registers, without a figure."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tests.models import SumModel, numbers

from berth.app import Berth
from berth.flavors import get_flavor
from berth.registry.signature import infer_signature
from berth.runtime.registration import LatencyProbe, time_predictions
from berth.runtime.validation import validate


class Sleepy(SumModel):
    """A row sum that takes ``seconds`` per call, whatever the number of rows."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        time.sleep(self.seconds)
        return super().predict(frame)


class Broken(SumModel):
    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        raise ValueError("this model cannot add")


def _classifier(rows: int = 300) -> tuple[object, pd.DataFrame]:
    frame = numbers(rows, seed=4)
    labels = (frame["a"] > frame["b"]).to_numpy()
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, labels), frame


def test_a_registered_version_carries_its_latency(client: Berth) -> None:
    model, frame = _classifier()
    info = client.register(model, "clf", training_data=frame)
    latency = client.get_version("clf/1").lineage["latency"]
    assert latency == info.lineage["latency"]
    assert 0 < latency["single_row_ms"] <= latency["single_row_p90_ms"] < 1_000
    assert 1 <= latency["single_row_calls"] <= 50
    # Every row, fewer than the 1,000 a batch may take (a very busy host may time fewer).
    assert 8 <= latency["batch_rows"] <= 300
    # One call on 300 rows costs far less a row than 300 calls: a vectorised model.
    assert 0 < latency["batch_ms_per_row"] < latency["single_row_ms"]
    assert latency["load_ms"] > 0
    assert latency["openmp_threads"] == 1


def test_the_figure_is_what_a_call_costs(client: Berth) -> None:
    info = client.register(Sleepy(0.004), "sleepy", training_data=numbers(40), trusted=True)
    latency = info.lineage["latency"]
    assert 4.0 <= latency["single_row_ms"] < 500
    assert 10 <= latency["single_row_calls"] <= 39  # at most every row but the warm-up's
    assert latency["batch_rows"] == 40
    # The sleep is per call, so a batch's rows share it.
    assert latency["batch_ms_per_row"] < latency["single_row_ms"] / 10


def test_a_slow_model_is_timed_within_the_budget(client: Berth) -> None:
    started = time.perf_counter()
    info = client.register(Sleepy(0.1), "slow", training_data=numbers(), trusted=True)
    took = time.perf_counter() - started
    latency = info.lineage["latency"]
    assert latency["single_row_ms"] >= 100
    assert latency["single_row_calls"] <= 5  # not the 50 a fast model gets
    assert "batch_rows" not in latency  # even 8 rows at the single-row cost would not fit
    assert took < 3.0  # 51 calls of 0.1 s, unbounded


def test_a_model_that_fails_on_its_data_still_registers(
    client: Berth, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="berth.registry"):
        info = client.register(Broken(), "broken", training_data=numbers(), trusted=True)
    assert info.version == 1
    assert "latency" not in client.get_version("broken/1").lineage
    (record,) = [r for r in caplog.records if r.name == "berth.registry"]
    assert "broken: no latency figure" in record.getMessage()
    assert "ValueError: this model cannot add" in record.getMessage()


def test_measure_latency_false_skips_it(client: Berth) -> None:
    model, frame = _classifier()
    info = client.register(model, "clf", training_data=frame, measure_latency=False)
    assert "latency" not in info.lineage


def test_no_training_data_no_figure(client: Berth) -> None:
    model, frame = _classifier()
    info = client.register(model, "clf", signature=infer_signature(frame))
    assert "latency" not in info.lineage


def test_a_probe_past_its_timeout_gives_up_and_stops(
    client: Berth, caplog: pytest.LogCaptureFixture
) -> None:
    info = client.register(
        Sleepy(0.3), "slow", training_data=numbers(), trusted=True, measure_latency=False
    )
    folder = client.registry.store.path(info.digest)
    sample = validate(info.signature, numbers())
    probe = LatencyProbe(timeout_s=0.2, budget_s=60.0)  # the budget alone would allow 50 calls
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="berth.registry"):
        got = time_predictions(
            get_flavor("python"), folder, info.flavor_options, info.signature, sample, probe,
            label="slow",
        )  # fmt: skip
    assert got is None
    assert time.perf_counter() - started < 0.3 + 0.2  # waited for the timeout, not the calls
    assert "slow: no latency figure: loading and timing took over 0.2 s" in caplog.text
    # It stops once the call in progress returns, instead of making fifty more.
    (probe_thread,) = [t for t in threading.enumerate() if t.name == "berth-latency-slow"]
    probe_thread.join(2.0)
    assert not probe_thread.is_alive()
