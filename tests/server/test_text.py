"""The text model over every server API: ``sentiment`` (the session MiniLM encoder with a
logistic-regression head) served from the text home, beside the tabular models.

Only what needs a text model is here: BYTES tensors and ``texts`` reaching the encoder, the text
model's metadata, readiness, records and errors. The codecs, the error mapping and everything else
run on the tabular home (``test_oip.py``, ``test_v1.py``, ``test_errors.py``,
``test_tritonclient.py``) without loading torch. Outputs are compared with the very
``SentenceClassifier`` that was registered."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.server.conftest import (
    TEXTS,
    assert_error,
    binary_request,
    binary_tensor,
    make_app,
    outputs_of,
    tensor,
    wait_for_records,
)

from berth.testing import running_server

pytestmark = pytest.mark.text

CLASSES = ["negative", "positive"]


def _proba(predictions: list[dict]) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in CLASSES] for p in predictions])


# -- OIP: metadata, readiness, inference -------------------------------------------------------


def test_text_model_metadata_takes_one_bytes_tensor(text_http) -> None:
    body = text_http.get("/v2/models/sentiment").json()
    assert body["platform"] == "berth_sentence_transformers"
    assert body["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in body["outputs"]] == ["label", "probabilities"]


def test_the_aliased_text_model_is_ready(text_http) -> None:
    response = text_http.get("/v2/models/sentiment/ready")
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "sentiment", "version": "1", "ready": True}
    assert text_http.get("/v2/health/ready").json() == {"ready": True}


@pytest.mark.parametrize("shape", [[len(TEXTS)], [len(TEXTS), 1]])
def test_infer_text_with_a_bytes_tensor(text_http, served_text, shape: list[int]) -> None:
    data = TEXTS if len(shape) == 1 else [[t] for t in TEXTS]
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "data": data}]}
    response = text_http.post("/v2/models/sentiment/infer", json=request)
    assert response.status_code == 200, response.text
    out = outputs_of(response.json())
    proba = np.asarray(out["probabilities"]["data"]).reshape(len(TEXTS), 2)
    np.testing.assert_allclose(proba, served_text.sentiment.predict_proba(TEXTS), atol=1e-5)
    assert out["label"]["data"] == served_text.sentiment.predict(TEXTS).tolist()


def test_a_text_tensor_may_have_any_name(text_http) -> None:
    request = {"inputs": [tensor("sentences", "BYTES", TEXTS[:2])]}
    response = text_http.post("/v2/models/sentiment/infer", json=request)
    assert response.status_code == 200, response.text


def test_binary_bytes_tensor_for_text(text_http, served_text) -> None:
    texts = [*TEXTS[:2], "naïve café ☕"]
    header, blob = binary_tensor("text", "BYTES", np.array(texts, dtype=object))
    content, headers = binary_request({"inputs": [header]}, [blob])
    response = text_http.post("/v2/models/sentiment/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    proba = np.asarray(outputs_of(response.json())["probabilities"]["data"]).reshape(-1, 2)
    np.testing.assert_allclose(proba, served_text.sentiment.predict_proba(texts), atol=1e-5)


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("<I", 10) + b"abc",  # declares 10 bytes, has 3
        b"\x01\x00",  # not even a length
        struct.pack("<I", 2) + b"\xff\xfe",  # not UTF-8
    ],
)
def test_a_malformed_binary_bytes_element_is_a_400(text_http, raw: bytes) -> None:
    header = {
        "name": "text",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": len(raw)},
    }
    content, headers = binary_request({"inputs": [header]}, [raw])
    response = text_http.post("/v2/models/sentiment/infer", content=content, headers=headers)
    assert_error(response, 400, "'text'")


# -- /v1: texts and records --------------------------------------------------------------------


def test_predict_texts(text_http, served_text) -> None:
    response = text_http.post("/v1/predict/sentiment", json={"texts": TEXTS})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == served_text.sentiment.predict(TEXTS).tolist()
    np.testing.assert_allclose(
        _proba(predictions), served_text.sentiment.predict_proba(TEXTS), atol=1e-5
    )
    ids = [p["prediction_id"] for p in predictions]
    assert len(set(ids)) == len(TEXTS)


def test_predict_records_for_a_text_model(text_http, served_text) -> None:
    response = text_http.post("/v1/predict/sentiment", json={"records": [{"text": TEXTS[0]}]})
    assert response.status_code == 200, response.text
    expected = served_text.sentiment.predict(TEXTS[:1])[0]
    assert response.json()["predictions"][0]["label"] == expected


def test_v1_texts_that_are_not_strings_are_refused(text_http) -> None:
    response = text_http.post("/v1/predict/sentiment", json={"texts": ["fine", 3]})
    assert_error(response, 400, "row 1")


def test_v1_texts_that_are_not_a_list_are_a_400(text_http) -> None:
    response = text_http.post("/v1/predict/sentiment", json={"texts": "hello"})
    assert_error(response, 400, "'texts'")


def test_a_text_prediction_is_recorded_with_its_unit_id(text_http, served_text) -> None:
    response = text_http.post("/v1/predict/sentiment", json={"texts": TEXTS[:1], "unit_id": "t"})
    assert response.status_code == 200, response.text
    pid = response.json()["predictions"][0]["prediction_id"]
    record = wait_for_records(served_text.home, {"sentiment": {pid}}).get(pid)
    assert record, "no prediction record for the text request"
    assert record["unit_id"] == "t"
    assert record["model"] == "sentiment"
    assert record["version"] == 1
    assert record["mode"] == "realtime"
    assert record["latency_ms"] > 0


def test_models_lists_the_text_model_beside_the_tabular_ones(text_http) -> None:
    response = text_http.get("/v1/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert set(models) == {"credit", "numeric", "sentiment"}
    assert models["sentiment"]["aliases"] == {"production": 1}
    assert models["sentiment"]["loaded"] == {"1": "ready"}


# -- tritonclient over a real socket -----------------------------------------------------------


@pytest.fixture(scope="module")
def triton(served_text) -> Iterator[Any]:
    """An app of its own: the module's ``text_http`` app already runs its lifespan in-process."""
    with running_server(make_app(served_text.home)) as base_url:
        client = httpclient.InferenceServerClient(url=base_url.removeprefix("http://"))
        try:
            yield client
        finally:
            client.close()


def test_tritonclient_sees_the_text_model_ready(triton) -> None:
    assert triton.is_model_ready("sentiment", "") is True


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infers_text_with_a_bytes_input(triton, served_text, binary: bool) -> None:
    texts = np.array(TEXTS, dtype=object)
    item = httpclient.InferInput("text", [len(texts)], "BYTES")
    item.set_data_from_numpy(texts, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = triton.infer("sentiment", [item], outputs=outputs)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), served_text.sentiment.predict_proba(TEXTS), atol=1e-5
    )
    labels = [
        v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("label").ravel()
    ]
    assert labels == served_text.sentiment.predict(TEXTS).tolist()


# -- no text input produces a 500 --------------------------------------------------------------

TEXT_REFS = ["sentiment", "sentiment/1", "sentiment@production", "sentiment/2", "sentiment@nope"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)


def _assert_handled(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert_error(response, response.status_code)


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run: a red test means a real regression
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ref=st.sampled_from(TEXT_REFS),
    texts=st.lists(st.text(max_size=30) | scalars, max_size=4),
    datatype=st.sampled_from(["BYTES", "FP64", "INT64", "BOOL"]),
)
def test_random_texts_to_the_text_model_never_500(
    text_http, ref: str, texts: list, datatype: str
) -> None:
    _assert_handled(text_http.post(f"/v1/predict/{ref}", json={"texts": texts}))
    records = [{"text": t} for t in texts]
    _assert_handled(text_http.post(f"/v1/predict/{ref}", json={"records": records}))
    request = {"inputs": [tensor("text", datatype, texts)]}
    _assert_handled(text_http.post("/v2/models/sentiment/infer", json=request))
