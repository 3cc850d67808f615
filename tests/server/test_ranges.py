"""Observed ranges over both APIs: under warn (the default) a value outside the training data's
range is answered and its prediction record lists the feature; under refuse it is a 422 naming
the feature, the value and the range."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from tests.server.conftest import Http, in_process, make_app, tensor, wait_for_records

from berth.app import Berth
from berth.config import Settings


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``wide``: three float64 features in [0, 1] (validated and recorded as one block), warn.
    ``aged``: an int64 ``age`` in [18, 79] under refuse, and a float64 ``score`` under warn."""
    home = tmp_path_factory.mktemp("ranges") / "home"
    rng = np.random.default_rng(0)
    wide = pd.DataFrame({n: rng.uniform(0.0, 1.0, 80) for n in ("a", "b", "c")})
    wide.loc[0, ["a", "b", "c"]], wide.loc[1, ["a", "b", "c"]] = 0.0, 1.0
    aged = pd.DataFrame({"age": np.linspace(18, 79, 80).astype(np.int64), "score": wide["a"]})
    with Berth(Settings(home=home, user="tester")) as client:
        target = (wide["a"] > 0.5).astype(int)
        client.register(
            LogisticRegression().fit(wide, target),
            "wide",
            training_data=wide,
            measure_latency=False,
        )
        client.register(
            LogisticRegression().fit(aged, target),
            "aged",
            training_data=aged,
            range_policy={"age": "refuse"},
            measure_latency=False,
        )
    return home


@pytest.fixture(scope="module")
def http(home: Path) -> Iterator[Http]:
    with in_process(make_app(home), home) as client:
        yield client


def test_under_warn_both_apis_answer_and_the_records_list_the_feature(http: Http, home) -> None:
    rows = [{"a": 0.5, "b": 0.5, "c": 0.5}, {"a": 0.5, "b": 1.5, "c": -0.1}]
    v1 = http.post("/v1/predict/wide", json={"records": rows})
    assert v1.status_code == 200, v1.text
    block = tensor("input", "FP64", [0.5, 7.0, 0.5, 0.2, 0.2, 0.2], shape=[2, 3])
    oip = http.post("/v2/models/wide/infer", json={"inputs": [block]})
    assert oip.status_code == 200, oip.text
    ids = [p["prediction_id"] for p in v1.json()["predictions"]]
    ids += oip.json()["parameters"]["prediction_ids"]
    recorded = wait_for_records(home, {"wide": set(ids)})
    assert [recorded[i]["warnings"] for i in ids] == [
        None,
        ["out_of_range:b", "out_of_range:c"],
        ["out_of_range:b"],
        None,
    ]


@pytest.mark.parametrize("api", ["v1", "oip"])
def test_under_refuse_a_value_outside_is_a_422_naming_feature_value_and_range(
    http: Http, api: str
) -> None:
    if api == "v1":
        response = http.post(
            "/v1/predict/aged",
            json={"records": [{"age": 30, "score": 0.1}, {"age": -1, "score": 0.2}]},
        )
    else:
        inputs = [tensor("age", "INT64", [30, -1]), tensor("score", "FP64", [0.1, 0.2])]
        response = http.post("/v2/models/aged/infer", json={"inputs": inputs})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == (
        "feature 'age' value -1 is outside the range seen in training [18, 79] "
        "(its range policy is 'refuse') at row 1"
    )


def test_under_refuse_a_value_inside_and_a_warn_feature_outside_are_answered(http: Http) -> None:
    response = http.post("/v1/predict/aged", json={"records": [{"age": 79, "score": 9.0}]})
    assert response.status_code == 200, response.text
