"""Berth's /v1 JSON API on the tabular home: records in, labels, probabilities keyed by class and
prediction ids out; reference forms; unit ids (header and body) reaching the prediction records;
and the load states that /v1/models reports. Texts in are in ``test_text.py``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.server.conftest import credit_tensors, wait_for_records


def _records(rows: pd.DataFrame) -> list[dict]:
    """JSON records the way a user writes them (Python scalars, not numpy ones)."""
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in rows.to_dict("records")
    ]


def _proba(predictions: list[dict], classes: list[str]) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in classes] for p in predictions])


def test_predict_records(http, served) -> None:
    rows = served.credit_rows
    response = http.post("/v1/predict/credit", json={"records": _records(rows)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "credit"
    assert body["version"] == 1  # the production alias
    predictions = body["predictions"]
    assert len(predictions) == len(rows)
    assert [p["label"] for p in predictions] == served.credit_v1.predict(rows).tolist()
    for p in predictions:
        assert set(p["probabilities"]) == {"no", "yes"}
    np.testing.assert_allclose(
        _proba(predictions, ["no", "yes"]), served.credit_v1.predict_proba(rows), rtol=1e-12
    )


def test_prediction_ids_are_unique_within_and_across_requests(http, served) -> None:
    payload = {"records": _records(served.credit_rows)}
    ids = []
    for _ in range(3):
        predictions = http.post("/v1/predict/credit", json=payload).json()["predictions"]
        ids += [p["prediction_id"] for p in predictions]
    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == len(ids) == 3 * len(served.credit_rows)


@pytest.mark.parametrize(
    ("ref", "version"),
    [
        ("credit", 1),  # a bare name serves the production alias
        ("credit/1", 1),
        ("credit/2", 2),
        ("credit@production", 1),
        ("credit@staging", 2),
        ("credit@latest", 2),
        ("numeric", 2),  # no production alias: the newest version
        ("numeric/1", 1),
    ],
)
def test_reference_forms(http, served, ref: str, version: int) -> None:
    name = ref.split("/")[0].split("@")[0]
    rows = served.credit_rows if name == "credit" else served.numeric_rows
    response = http.post(f"/v1/predict/{ref}", json={"records": _records(rows)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == name
    assert body["version"] == version
    if name == "credit":
        model = served.credit_v1 if version == 1 else served.credit_v2
        classes = ["no", "yes"]
    else:
        model = served.numeric if version == 2 else None
        classes = ["0", "1"]
    assert [set(p["probabilities"]) for p in body["predictions"]] == [set(classes)] * len(rows)
    if model is not None:
        np.testing.assert_allclose(
            _proba(body["predictions"], classes), model.predict_proba(rows), rtol=1e-12
        )


def test_int_labels_come_back_as_ints(http, served) -> None:
    body = http.post("/v1/predict/numeric", json={"records": _records(served.numeric_rows)}).json()
    labels = [p["label"] for p in body["predictions"]]
    assert labels == served.numeric.predict(served.numeric_rows).tolist()
    assert all(type(label) is int for label in labels)


def test_a_record_with_features_in_any_order(http, served) -> None:
    row = _records(served.credit_rows.head(1))[0]
    shuffled = dict(reversed(list(row.items())))
    body = http.post("/v1/predict/credit", json={"records": [shuffled]}).json()
    np.testing.assert_allclose(
        _proba(body["predictions"], ["no", "yes"]),
        served.credit_v1.predict_proba(served.credit_rows.head(1)),
        rtol=1e-12,
    )


# -- unit ids reach the prediction records -----------------------------------------------------


@pytest.fixture(scope="module")
def recorded(http, served) -> dict[str, dict]:
    """Requests with and without unit ids, on both APIs; their records, by the request's role
    (each request predicts one row)."""
    one = {"records": _records(served.credit_rows.head(1))}
    tensors = credit_tensors(served.credit_rows.head(1))
    sent = {
        "v1-header": http.post("/v1/predict/credit", json=one, headers={"X-Berth-Unit": "v1-h"}),
        "v1-body": http.post("/v1/predict/credit", json={**one, "unit_id": "v1-b"}),
        # Both given: the body (a decoded unit id) is the more specific one and wins.
        "v1-both": http.post(
            "/v1/predict/credit", json={**one, "unit_id": "v1-both"}, headers={"X-Berth-Unit": "h"}
        ),
        "v1-none": http.post("/v1/predict/credit", json=one),
        "v1-version-2": http.post("/v1/predict/credit/2", json=one),
        "oip-parameter": http.post(
            "/v2/models/credit/infer",
            json={"parameters": {"unit_id": "oip-p"}, "inputs": tensors},
        ),
        "oip-header": http.post(
            "/v2/models/credit/infer", json={"inputs": tensors}, headers={"X-Berth-Unit": "oip-h"}
        ),
    }
    ids: dict[str, str] = {}
    for role, response in sent.items():
        assert response.status_code == 200, (role, response.text)
        body = response.json()
        if role.startswith("v1"):
            ids[role] = body["predictions"][0]["prediction_id"]
        else:
            ids[role] = body["parameters"]["prediction_ids"][0]
    rows = wait_for_records(served.home, {"credit": set(ids.values())})
    return {role: rows.get(pid, {}) for role, pid in ids.items()}


@pytest.mark.parametrize(
    ("role", "unit"),
    [
        ("v1-header", "v1-h"),
        ("v1-body", "v1-b"),
        ("v1-both", "v1-both"),
        ("v1-none", None),
        ("oip-parameter", "oip-p"),
        ("oip-header", "oip-h"),
    ],
)
def test_unit_id_is_recorded(recorded, role: str, unit: str | None) -> None:
    assert recorded[role], f"no prediction record for {role}"
    assert recorded[role]["unit_id"] == unit


def test_records_hold_model_version_mode_and_latency(recorded) -> None:
    assert recorded["v1-version-2"]["version"] == 2
    assert recorded["v1-none"]["version"] == 1
    assert recorded["v1-none"]["model"] == "credit"
    for row in recorded.values():
        assert row["mode"] == "realtime"
        assert row["latency_ms"] > 0


# -- /v1/models --------------------------------------------------------------------------------


def test_models_lists_every_model_with_aliases_and_load_states(http, served) -> None:
    # Load numeric/2 (lazily, on first use) before asking.
    first = http.post("/v1/predict/numeric", json={"records": _records(served.numeric_rows)})
    assert first.status_code == 200, first.text
    response = http.get("/v1/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert set(models) == {"credit", "numeric"}
    credit = models["credit"]
    assert credit["versions"] == 2
    assert credit["latest"] == 2
    assert credit["aliases"] == {"production": 1, "staging": 2}
    assert credit["loaded"] == {"1": "ready", "2": "ready"}
    assert models["numeric"]["aliases"] == {}
    assert models["numeric"]["loaded"].get("2") == "ready"


def test_openapi_documents_both_apis(http) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert "/v1/predict/{ref}" in paths
    assert "/v2/models/{name}/infer" in paths
    assert "/v2/models/{name}/versions/{version}/infer" in paths
    body = paths["/v1/predict/{ref}"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) >= {"records", "texts", "unit_id"}


# -- one rule for unit ids, in both APIs and the header -----------------------------------------


def _unit_requests(served, unit: object, where: str) -> list[tuple[str, dict, dict]]:
    one = {"records": _records(served.credit_rows.head(1))}
    tensors = credit_tensors(served.credit_rows.head(1))
    if where == "header":
        headers = {"X-Berth-Unit": str(unit)}
        return [
            ("/v1/predict/credit", one, headers),
            ("/v2/models/credit/infer", {"inputs": tensors}, headers),
        ]
    return [
        ("/v1/predict/credit", {**one, "unit_id": unit}, {}),
        ("/v2/models/credit/infer", {"parameters": {"unit_id": unit}, "inputs": tensors}, {}),
    ]


@pytest.mark.parametrize(
    ("unit", "fragment"),
    [
        (5, "must be a string, not int 5"),
        (5.5, "not float"),
        (True, "not bool"),
        ({"id": 1}, "not dict"),
        (["u"], "not list"),
        ("", "must not be empty"),
        ("u" * 257, "over the limit of 256"),
    ],
)
def test_a_unit_id_that_is_not_a_short_string_is_a_400_on_both_apis(
    http, served, unit: object, fragment: str
) -> None:
    for url, doc, headers in _unit_requests(served, unit, "body"):
        response = http.post(url, json=doc, headers=headers)
        assert response.status_code == 400, (url, response.text)
        assert "'unit_id'" in response.json()["error"]
        assert fragment in response.json()["error"], (url, response.text)


def test_the_header_follows_the_same_rule(http, served) -> None:
    for url, doc, headers in _unit_requests(served, "u" * 257, "header"):
        response = http.post(url, json=doc, headers=headers)
        assert response.status_code == 400, (url, response.text)
        assert "over the limit of 256" in response.json()["error"]
    for url, doc, headers in _unit_requests(served, "u" * 256, "header"):
        assert http.post(url, json=doc, headers=headers).status_code == 200, url
