"""The Open Inference Protocol v2 REST API, in-process: health, metadata, readiness and inference
with every datatype the signatures need, in JSON and in the binary tensor extension, on the tabular
home (the text model's side is in ``test_text.py``).

Outputs are compared with the very scikit-learn objects that were registered, so a codec that
bends a value shows up as a numeric difference."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from tests.server.conftest import (
    CREDIT_DTYPES,
    CREDIT_FEATURES,
    HEADER_LENGTH,
    NUMERIC_FEATURES,
    binary_request,
    binary_tensor,
    credit_tensors,
    outputs_of,
    split_binary_response,
    tensor,
)

# -- health and server metadata ----------------------------------------------------------------


def test_live(http) -> None:
    response = http.get("/v2/health/live")
    assert response.status_code == 200
    assert response.json() == {"live": True}


def test_ready_once_every_aliased_version_is_loaded(http) -> None:
    response = http.get("/v2/health/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True}


def test_server_metadata(http) -> None:
    body = http.get("/v2").json()
    assert body["name"] == "berth"
    assert isinstance(body["version"], str)
    assert body["version"]
    assert "binary_tensor_data" in body["extensions"]


# -- model metadata ----------------------------------------------------------------------------


def _credit_inputs() -> list[dict]:
    return [{"name": f, "datatype": CREDIT_DTYPES[f], "shape": [-1]} for f in CREDIT_FEATURES]


def test_model_metadata_describes_the_signature(http) -> None:
    body = http.get("/v2/models/credit").json()
    assert body["name"] == "credit"
    assert body["versions"] == ["1", "2"]
    assert body["platform"] == "berth_sklearn"
    assert body["inputs"] == _credit_inputs()
    assert body["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]},
    ]


@pytest.mark.parametrize(
    ("url", "version"),
    [
        ("/v2/models/credit", 1),  # no version: the production alias
        ("/v2/models/credit/versions/1", 1),
        ("/v2/models/credit/versions/2", 2),
        ("/v2/models/credit/versions/production", 1),
        ("/v2/models/credit/versions/staging", 2),
        ("/v2/models/credit/versions/latest", 2),
        ("/v2/models/credit@staging", 2),
        ("/v2/models/credit@production", 1),
        ("/v2/models/numeric", 2),  # no alias at all: the newest version
    ],
)
def test_metadata_version_forms(http, url: str, version: int) -> None:
    response = http.get(url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == url.split("/")[3].partition("@")[0]
    assert body["parameters"]["version"] == version


def test_metadata_lists_aliases_of_the_version(http) -> None:
    assert http.get("/v2/models/credit").json()["parameters"]["aliases"] == ["production"]
    assert http.get("/v2/models/credit/versions/2").json()["parameters"]["aliases"] == ["staging"]


def test_numeric_model_metadata(http) -> None:
    body = http.get("/v2/models/numeric/versions/1").json()
    assert [(i["name"], i["datatype"]) for i in body["inputs"]] == [
        ("x0", "FP64"),
        ("x1", "FP64"),
        ("n", "INT64"),
    ]
    assert body["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [-1]}


# -- readiness ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "version"),
    [
        ("/v2/models/credit/ready", "1"),
        ("/v2/models/credit/versions/1/ready", "1"),
        ("/v2/models/credit/versions/2/ready", "2"),
        ("/v2/models/credit/versions/staging/ready", "2"),
        ("/v2/models/credit@staging/ready", "2"),
    ],
)
def test_loaded_versions_are_ready(http, url: str, version: str) -> None:
    response = http.get(url)
    assert response.status_code == 200, response.text
    name = url.split("/")[3].partition("@")[0]
    assert response.json() == {"name": name, "version": version, "ready": True}


def test_a_version_not_loaded_yet_becomes_ready(http) -> None:
    # numeric/1 is neither aliased nor the newest: nothing in this module loads it but this test.
    first = http.get("/v2/models/numeric/versions/1/ready")
    assert first.status_code == 503
    assert first.json()["ready"] is False
    deadline = time.monotonic() + 30
    while True:
        response = http.get("/v2/models/numeric/versions/1/ready")
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert response.status_code == 200, response.text
    assert response.json()["ready"] is True


# -- inference: JSON ---------------------------------------------------------------------------


def test_infer_one_tensor_per_feature_in_its_own_datatype(http, served) -> None:
    rows = served.credit_rows
    response = http.post("/v2/models/credit/infer", json={"inputs": credit_tensors(rows)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["model_name"] == "credit"
    assert body["model_version"] == "1"
    out = outputs_of(body)
    assert out["probabilities"]["datatype"] == "FP64"
    assert out["probabilities"]["shape"] == [len(rows), 2]
    proba = np.asarray(out["probabilities"]["data"]).reshape(len(rows), 2)
    np.testing.assert_allclose(proba, served.credit_v1.predict_proba(rows), rtol=1e-12)
    assert out["label"]["datatype"] == "BYTES"
    assert out["label"]["shape"] == [len(rows)]
    assert out["label"]["data"] == served.credit_v1.predict(rows).tolist()


def test_infer_tensors_of_shape_n_by_1(http, served) -> None:
    rows = served.credit_rows
    inputs = [
        tensor(f, CREDIT_DTYPES[f], [[v] for v in rows[f].tolist()], shape=[len(rows), 1])
        for f in CREDIT_FEATURES
    ]
    body = http.post("/v2/models/credit/infer", json={"inputs": inputs}).json()
    proba = np.asarray(outputs_of(body)["probabilities"]["data"]).reshape(len(rows), 2)
    np.testing.assert_allclose(proba, served.credit_v1.predict_proba(rows), rtol=1e-12)


def test_infer_flat_data_for_a_2d_shape(http, served) -> None:
    # The protocol allows row-major flat data for any shape.
    rows = served.credit_rows
    inputs = [
        tensor(f, CREDIT_DTYPES[f], rows[f].tolist(), shape=[len(rows), 1]) for f in CREDIT_FEATURES
    ]
    response = http.post("/v2/models/credit/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text


def test_infer_accepts_a_wider_integer_type(http, served) -> None:
    # INT64 data for the int32 feature and INT32 data for the int64 one: values that fit pass.
    rows = served.credit_rows
    inputs = credit_tensors(rows)
    for t in inputs:
        if t["name"] == "accounts":
            t["datatype"] = "INT64"
        if t["name"] == "age":
            t["datatype"] = "INT32"
    response = http.post("/v2/models/credit/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    proba = np.asarray(outputs_of(response.json())["probabilities"]["data"]).reshape(-1, 2)
    np.testing.assert_allclose(proba, served.credit_v1.predict_proba(rows), rtol=1e-12)


def test_infer_one_2d_fp64_tensor_in_signature_order(http, served) -> None:
    rows = served.numeric_rows
    matrix = rows[list(NUMERIC_FEATURES)].to_numpy(dtype=np.float64)
    request = {
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP64",
                "shape": list(matrix.shape),
                "data": matrix.tolist(),
            }
        ]
    }
    response = http.post("/v2/models/numeric/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "2"
    out = outputs_of(body)
    proba = np.asarray(out["probabilities"]["data"]).reshape(len(rows), 2)
    np.testing.assert_allclose(proba, served.numeric.predict_proba(rows), rtol=1e-12)
    assert out["label"]["datatype"] == "INT64"
    assert out["label"]["data"] == served.numeric.predict(rows).tolist()


@pytest.mark.parametrize(
    ("url", "version"),
    [
        ("/v2/models/credit/infer", 1),
        ("/v2/models/credit/versions/1/infer", 1),
        ("/v2/models/credit/versions/2/infer", 2),
        ("/v2/models/credit/versions/staging/infer", 2),
        ("/v2/models/credit/versions/production/infer", 1),
        ("/v2/models/credit@staging/infer", 2),
    ],
)
def test_infer_version_forms(http, served, url: str, version: int) -> None:
    rows = served.credit_rows
    body = http.post(url, json={"inputs": credit_tensors(rows)}).json()
    assert body["model_name"] == "credit"
    assert body["model_version"] == str(version)
    model = served.credit_v1 if version == 1 else served.credit_v2
    proba = np.asarray(outputs_of(body)["probabilities"]["data"]).reshape(len(rows), 2)
    np.testing.assert_allclose(proba, model.predict_proba(rows), rtol=1e-12)


# -- request id, prediction ids, parameters, requested outputs ---------------------------------


def test_request_id_is_echoed(http, served) -> None:
    request = {"id": "req-42", "inputs": credit_tensors(served.credit_rows)}
    body = http.post("/v2/models/credit/infer", json=request).json()
    assert body["id"] == "req-42"
    ids = body["parameters"]["prediction_ids"]
    assert len(ids) == len(served.credit_rows)
    assert len(set(ids)) == len(ids)


def test_a_prediction_id_is_made_when_the_request_has_none(http, served) -> None:
    rows = served.credit_rows.head(1)
    first = http.post("/v2/models/credit/infer", json={"inputs": credit_tensors(rows)}).json()
    second = http.post("/v2/models/credit/infer", json={"inputs": credit_tensors(rows)}).json()
    for body in (first, second):
        assert isinstance(body["id"], str)
        assert body["id"]
        assert body["parameters"]["prediction_ids"] == [body["id"]]
    assert first["id"] != second["id"]


def test_parameters_are_accepted_at_request_and_tensor_level(http, served) -> None:
    inputs = credit_tensors(served.credit_rows)
    inputs[0]["parameters"] = {"content_type": "np"}
    request = {"parameters": {"unit_id": "user-7", "priority": 1}, "inputs": inputs}
    response = http.post("/v2/models/credit/infer", json=request)
    assert response.status_code == 200, response.text


def test_requested_outputs_subset(http, served) -> None:
    request = {"inputs": credit_tensors(served.credit_rows), "outputs": [{"name": "label"}]}
    body = http.post("/v2/models/credit/infer", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["label"]


def test_requested_outputs_keep_the_requested_order(http, served) -> None:
    request = {
        "inputs": credit_tensors(served.credit_rows),
        "outputs": [{"name": "probabilities"}, {"name": "label"}],
    }
    body = http.post("/v2/models/credit/infer", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["probabilities", "label"]


def test_an_unknown_requested_output_is_a_400_naming_it(http, served) -> None:
    request = {"inputs": credit_tensors(served.credit_rows), "outputs": [{"name": "score"}]}
    response = http.post("/v2/models/credit/infer", json=request)
    assert response.status_code == 400
    message = response.json()["error"]
    assert "'score'" in message
    assert "probabilities" in message  # says what exists


# -- inference: the binary tensor data extension -----------------------------------------------


def _binary_credit(rows) -> tuple[list[dict], list[bytes]]:
    headers, blobs = [], []
    for f in CREDIT_FEATURES:
        values = rows[f].to_numpy()
        if f == "purpose":
            values = values.astype(object)
        header, blob = binary_tensor(f, CREDIT_DTYPES[f], values)
        headers.append(header)
        blobs.append(blob)
    return headers, blobs


def test_binary_request_and_binary_response(http, served) -> None:
    rows = served.credit_rows
    inputs, blobs = _binary_credit(rows)
    doc = {
        "id": "bin-1",
        "inputs": inputs,
        "outputs": [
            {"name": "label", "parameters": {"binary_data": True}},
            {"name": "probabilities", "parameters": {"binary_data": True}},
        ],
    }
    content, headers = binary_request(doc, blobs)
    response = http.post("/v2/models/credit/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert HEADER_LENGTH.lower() in response.headers
    head, arrays = split_binary_response(response)
    assert head["id"] == "bin-1"
    assert all("data" not in o for o in head["outputs"])
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in head["outputs"]}
    assert sizes["probabilities"] == len(rows) * 2 * 8
    np.testing.assert_allclose(
        arrays["probabilities"], served.credit_v1.predict_proba(rows), rtol=1e-12
    )
    assert arrays["label"].tolist() == served.credit_v1.predict(rows).tolist()


def test_binary_request_and_json_response(http, served) -> None:
    rows = served.credit_rows
    inputs, blobs = _binary_credit(rows)
    content, headers = binary_request({"inputs": inputs}, blobs)
    response = http.post("/v2/models/credit/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert HEADER_LENGTH.lower() not in response.headers
    proba = np.asarray(outputs_of(response.json())["probabilities"]["data"]).reshape(-1, 2)
    np.testing.assert_allclose(proba, served.credit_v1.predict_proba(rows), rtol=1e-12)


def test_json_and_binary_inputs_mix(http, served) -> None:
    rows = served.credit_rows
    json_inputs = credit_tensors(rows)[:3]
    binary_inputs, blobs = _binary_credit(rows)
    content, headers = binary_request({"inputs": json_inputs + binary_inputs[3:]}, blobs[3:])
    response = http.post("/v2/models/credit/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    proba = np.asarray(outputs_of(response.json())["probabilities"]["data"]).reshape(-1, 2)
    np.testing.assert_allclose(proba, served.credit_v1.predict_proba(rows), rtol=1e-12)


def test_one_output_binary_and_one_json(http, served) -> None:
    rows = served.credit_rows
    doc = {
        "inputs": credit_tensors(rows),
        "outputs": [
            {"name": "label"},
            {"name": "probabilities", "parameters": {"binary_data": True}},
        ],
    }
    response = http.post("/v2/models/credit/infer", json=doc)
    head, arrays = split_binary_response(response)
    label, proba = head["outputs"]
    assert label["data"] == served.credit_v1.predict(rows).tolist()
    assert "data" not in proba
    np.testing.assert_allclose(
        arrays["probabilities"], served.credit_v1.predict_proba(rows), rtol=1e-12
    )


def test_binary_data_output_parameter_with_listed_outputs(http, served) -> None:
    rows = served.credit_rows
    doc = {
        "parameters": {"binary_data_output": True},
        "inputs": credit_tensors(rows),
        "outputs": [{"name": "probabilities"}],
    }
    response = http.post("/v2/models/credit/infer", json=doc)
    _, arrays = split_binary_response(response)
    np.testing.assert_allclose(
        arrays["probabilities"], served.credit_v1.predict_proba(rows), rtol=1e-12
    )


def test_binary_data_output_parameter_alone_makes_every_output_binary(http, served) -> None:
    # The binary tensor extension: "binary_data_output" in the request's parameters asks for every
    # output in binary unless an output overrides it; with no "outputs" listed, that is all of them.
    rows = served.credit_rows
    doc = {"parameters": {"binary_data_output": True}, "inputs": credit_tensors(rows)}
    response = http.post("/v2/models/credit/infer", json=doc)
    assert response.status_code == 200, response.text
    assert HEADER_LENGTH.lower() in response.headers, "outputs came back as JSON"
    head, arrays = split_binary_response(response)
    assert {o["name"] for o in head["outputs"]} == {"label", "probabilities"}
    np.testing.assert_allclose(
        arrays["probabilities"], served.credit_v1.predict_proba(rows), rtol=1e-12
    )


def test_binary_2d_fp64_tensor(http, served) -> None:
    rows = served.numeric_rows
    matrix = rows[list(NUMERIC_FEATURES)].to_numpy(dtype=np.float64)
    header, blob = binary_tensor("input-0", "FP64", matrix)
    content, headers = binary_request({"inputs": [header]}, [blob])
    response = http.post("/v2/models/numeric/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    proba = np.asarray(outputs_of(response.json())["probabilities"]["data"]).reshape(-1, 2)
    np.testing.assert_allclose(proba, served.numeric.predict_proba(rows), rtol=1e-12)


def test_binary_response_header_length_is_exact(http, served) -> None:
    doc = {
        "inputs": credit_tensors(served.credit_rows),
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    response = http.post("/v2/models/credit/infer", json=doc)
    length = int(response.headers[HEADER_LENGTH])
    head = orjson.loads(response.content[:length])  # the JSON ends exactly there
    assert head["model_name"] == "credit"
    assert len(response.content) - length == head["outputs"][0]["parameters"]["binary_data_size"]
