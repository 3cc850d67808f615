"""Bad input and broken models: every problem gets its status (400, 404, 405, 413, 422, 503) and a
JSON ``{"error": ...}`` that names it; a version whose artifact is tampered makes only that model
unavailable; and no input at all produces a 500 (hypothesis over the routes, and schemathesis over
the OpenAPI schema). All on the tabular home; the text model's errors are in ``test_text.py``."""

from __future__ import annotations

import string
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from sklearn.linear_model import LogisticRegression
from tests.server.conftest import (
    CREDIT_DTYPES,
    CREDIT_FEATURES,
    HEADER_LENGTH,
    NUMERIC_FEATURES,
    assert_error,
    binary_request,
    binary_tensor,
    credit_frame,
    credit_labels,
    credit_model,
    credit_tensors,
    in_process,
    make_app,
    numeric_frame,
    tensor,
)

from berth.app import Berth
from berth.config import Settings

INFER = "/v2/models/credit/infer"


def _record(served, **changes: Any) -> dict[str, Any]:
    row = {
        k: (v.item() if isinstance(v, np.generic) else v)
        for k, v in served.credit_rows.head(1).to_dict("records")[0].items()
    }
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def _with(inputs: list[dict], name: str, **changes: Any) -> list[dict]:
    return [({**t, **changes} if t["name"] == name else t) for t in inputs]


# -- malformed requests: 400 -------------------------------------------------------------------


@pytest.mark.parametrize("url", [INFER, "/v1/predict/credit"])
@pytest.mark.parametrize("body", [b"{not json", b"", b'{"inputs": [', b"\xff\xfe\x00"])
def test_invalid_json_is_a_400(http, url: str, body: bytes) -> None:
    response = http.post(url, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "JSON")


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({}, "'inputs'"),
        ({"id": "x"}, "'inputs'"),
        ({"inputs": []}, "'inputs'"),
        ({"inputs": {"name": "income"}}, "'inputs'"),
        ([], "'inputs'"),
        ("text", "'inputs'"),
        ({"inputs": [3]}, "input 0"),
        ({"inputs": [{"datatype": "FP64", "shape": [1], "data": [1.0]}]}, "'name'"),
    ],
)
def test_missing_or_malformed_inputs_is_a_400(http, doc: Any, fragment: str) -> None:
    assert_error(http.post(INFER, json=doc), 400, fragment)


def test_request_level_fields_of_the_wrong_type_are_400(http, served) -> None:
    inputs = credit_tensors(served.credit_rows)
    assert_error(http.post(INFER, json={"inputs": inputs, "id": 7}), 400, "'id'")
    assert_error(http.post(INFER, json={"inputs": inputs, "parameters": [1]}), 400, "'parameters'")
    assert_error(http.post(INFER, json={"inputs": inputs, "outputs": "label"}), 400, "'outputs'")
    assert_error(http.post(INFER, json={"inputs": inputs, "outputs": [{}]}), 400, "'outputs'")


@pytest.mark.parametrize(
    ("feature", "changes", "fragments"),
    [
        ("income", {"datatype": "FP128"}, ["'income'", "FP128"]),
        ("income", {"datatype": "fp64"}, ["'income'", "datatype"]),
        ("income", {"data": ["a", "b", "c", "d", "e"]}, ["'income'", "FP64", "numbers"]),
        ("age", {"data": [1.5, 2, 3, 4, 5]}, ["'age'", "INT64", "integers"]),
        ("owner", {"data": [1, 0, 1, 0, 1]}, ["'owner'", "BOOL"]),
        ("purpose", {"data": [1, 2, 3, 4, 5]}, ["'purpose'", "BYTES", "strings"]),
        ("accounts", {"datatype": "INT8", "data": [1000, 1, 1, 1, 1]}, ["'accounts'", "INT8"]),
        ("income", {"shape": [4]}, ["'income'", "shape", "4", "5"]),
        ("income", {"shape": [5, 2]}, ["'income'", "shape"]),
        ("income", {"shape": [6]}, ["'income'", "6"]),
        ("income", {"shape": []}, ["'income'", "shape"]),
        ("income", {"shape": [-1]}, ["'income'", "shape"]),
        ("income", {"shape": "5"}, ["'income'", "shape"]),
        ("income", {"shape": [True]}, ["'income'", "shape"]),
    ],
)
def test_wrong_datatype_or_shape_is_a_400_naming_the_input(
    http, served, feature: str, changes: dict, fragments: list[str]
) -> None:
    inputs = _with(credit_tensors(served.credit_rows), feature, **changes)
    assert_error(http.post(INFER, json={"inputs": inputs}), 400, *fragments)


def test_a_tensor_without_data_is_a_400(http, served) -> None:
    inputs = credit_tensors(served.credit_rows)
    del inputs[0]["data"]
    assert_error(http.post(INFER, json={"inputs": inputs}), 400, "'income'", "'data'")


def test_inputs_of_different_batch_sizes_are_a_400(http, served) -> None:
    inputs = credit_tensors(served.credit_rows)
    inputs[0] = tensor("income", "FP64", [1.0, 2.0])
    assert_error(http.post(INFER, json={"inputs": inputs}), 400, "batch sizes")


def test_an_input_given_twice_is_a_400(http, served) -> None:
    inputs = credit_tensors(served.credit_rows)
    assert_error(http.post(INFER, json={"inputs": [*inputs, inputs[0]]}), 400, "'income'", "twice")


# -- the binary extension, malformed -----------------------------------------------------------


def _binary_income(values: list[float]) -> tuple[dict, bytes]:
    return binary_tensor("income", "FP64", np.asarray(values, dtype=np.float64))


@pytest.mark.parametrize(
    ("header", "fragment"),
    [("abc", HEADER_LENGTH.lower()), ("-1", HEADER_LENGTH.lower()), ("99999", "within the body")],
)
def test_a_bad_header_length_is_a_400(http, header: str, fragment: str) -> None:
    response = http.post(INFER, content=b'{"inputs": []}', headers={HEADER_LENGTH: header})
    assert_error(response, 400, fragment)


def test_a_header_length_that_cuts_the_json_is_a_400(http) -> None:
    response = http.post(INFER, content=b'{"inputs": []}', headers={HEADER_LENGTH: "5"})
    assert_error(response, 400, "JSON")


def test_binary_size_not_matching_the_shape_is_a_400(http) -> None:
    header, blob = _binary_income([1.0, 2.0])
    header["shape"] = [3]
    content, headers = binary_request({"inputs": [header]}, [blob])
    assert_error(http.post(INFER, content=content, headers=headers), 400, "'income'", "bytes")


def test_binary_size_beyond_the_body_is_a_400(http) -> None:
    header, blob = _binary_income([1.0, 2.0])
    header["parameters"]["binary_data_size"] = 1000
    content, headers = binary_request({"inputs": [header]}, [blob])
    assert_error(http.post(INFER, content=content, headers=headers), 400, "binary_data_size")


def test_trailing_binary_bytes_are_a_400(http) -> None:
    header, blob = _binary_income([1.0, 2.0])
    content, headers = binary_request({"inputs": [header]}, [blob + b"\x00" * 8])
    assert_error(http.post(INFER, content=content, headers=headers), 400, "binary data")


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("<I", 10) + b"abc",  # declares 10 bytes, has 3
        b"\x01\x00",  # not even a length
        struct.pack("<I", 2) + b"\xff\xfe",  # not UTF-8
    ],
)
def test_a_malformed_binary_bytes_element_is_a_400(http, raw: bytes) -> None:
    header = {
        "name": "purpose",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": len(raw)},
    }
    content, headers = binary_request({"inputs": [header]}, [raw])
    assert_error(http.post(INFER, content=content, headers=headers), 400, "'purpose'")


# -- values that do not fit the signature: 422 naming the feature ------------------------------


def test_a_missing_feature_is_a_422_naming_it(http, served) -> None:
    inputs = [t for t in credit_tensors(served.credit_rows) if t["name"] != "owner"]
    assert_error(http.post(INFER, json={"inputs": inputs}), 422, "'owner'", "missing")


def test_an_unknown_feature_is_a_422_naming_it(http, served) -> None:
    inputs = [*credit_tensors(served.credit_rows), tensor("colour", "BYTES", ["red"] * 5)]
    assert_error(http.post(INFER, json={"inputs": inputs}), 422, "'colour'", "unknown")


def test_a_feature_of_the_wrong_type_is_a_422_naming_it(http, served) -> None:
    inputs = _with(credit_tensors(served.credit_rows), "income", datatype="BYTES", data=["x"] * 5)
    assert_error(http.post(INFER, json={"inputs": inputs}), 422, "'income'", "float64")


def test_an_unknown_category_is_a_422_naming_the_feature_and_value(http, served) -> None:
    inputs = _with(credit_tensors(served.credit_rows), "purpose", data=["boat"] * 5)
    assert_error(http.post(INFER, json={"inputs": inputs}), 422, "'purpose'", "'boat'", "car")


def test_a_value_outside_the_dtype_is_a_422_naming_the_feature(http, served) -> None:
    inputs = _with(
        credit_tensors(served.credit_rows), "accounts", datatype="INT64", data=[2**40] * 5
    )
    assert_error(http.post(INFER, json={"inputs": inputs}), 422, "'accounts'", "int32")


def test_a_feature_tensor_with_several_columns_is_a_422_naming_it(http, served) -> None:
    inputs = _with(credit_tensors(served.credit_rows), "rate", shape=[5, 2], data=[[1.0, 2.0]] * 5)
    inputs = [t for t in inputs if t["name"] != "income"] + [tensor("income", "FP64", [1.0] * 5)]
    assert_error(http.post(INFER, json={"inputs": inputs}), 422, "'rate'")


def test_a_2d_tensor_of_the_wrong_width_is_a_422(http) -> None:
    request = {"inputs": [tensor("input-0", "FP64", [1.0, 2.0], shape=[1, 2])]}
    response = http.post("/v2/models/numeric/infer", json=request)
    assert_error(response, 422, "'input-0'", "[1, 2]")


def test_a_zero_row_tensor_is_a_422(http) -> None:
    inputs = [tensor(f, "FP64", [], shape=[0]) for f in NUMERIC_FEATURES]
    assert_error(http.post("/v2/models/numeric/infer", json={"inputs": inputs}), 422, "no rows")


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"owner": ...}, ["'owner'", "missing"]),
        ({"colour": "red"}, ["'colour'", "unknown"]),
        ({"income": "rich"}, ["'income'", "float64"]),
        ({"income": None}, ["'income'", "missing value"]),
        ({"age": 30.5}, ["'age'", "int64"]),
        ({"owner": 1}, ["'owner'", "bool"]),
        ({"purpose": "boat"}, ["'purpose'", "'boat'"]),
        ({"purpose": 3}, ["'purpose'", "string"]),
        ({"accounts": 2**40}, ["'accounts'", "int32"]),
        ({"income": {"amount": 1}}, ["'income'"]),
        ({"income": [1.0]}, ["'income'"]),
    ],
)
def test_v1_records_that_do_not_fit_are_422_naming_the_feature(
    http, served, changes: dict, fragments: list[str]
) -> None:
    response = http.post("/v1/predict/credit", json={"records": [_record(served, **changes)]})
    assert_error(response, 422, *fragments)


@pytest.mark.parametrize(
    ("url", "doc", "fragment"),
    [
        ("/v1/predict/credit", {}, "records"),
        ("/v1/predict/credit", [], "records"),
        ("/v1/predict/credit", {"rows": []}, "records"),
        ("/v1/predict/credit", {"records": {"income": 1}}, "'records'"),
        ("/v1/predict/credit", {"records": [1, 2]}, "'records'"),
        ("/v1/predict/credit", {"texts": ["hello"]}, "features"),
        ("/v1/predict/credit", {"records": [], "unit_id": 5}, "'unit_id'"),
    ],
)
def test_v1_malformed_bodies_are_400(http, url: str, doc: Any, fragment: str) -> None:
    assert_error(http.post(url, json=doc), 400, fragment)


def test_v1_no_rows_is_a_422(http) -> None:
    assert_error(http.post("/v1/predict/credit", json={"records": []}), 422, "no rows")


# -- unknown models and versions: 404; invalid names: 400 --------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("GET", "/v2/models/nope@production"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/nope@production/infer"),
        ("POST", "/v1/predict/nope"),
        ("POST", "/v1/predict/nope@production"),
    ],
)
def test_an_unknown_model_is_a_404_naming_it(http, served, method: str, url: str) -> None:
    response = http.request(method, url, json={"records": [_record(served)]})
    assert_error(response, 404, "'nope'")


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/v2/models/nope/versions/1"),
        ("GET", "/v2/models/nope/versions/1/ready"),
        ("POST", "/v2/models/nope/versions/1/infer"),
        ("POST", "/v1/predict/nope/1"),
    ],
)
def test_an_unknown_model_with_a_version_number_is_a_404_naming_it(
    http, served, method: str, url: str
) -> None:
    response = http.request(method, url, json={"records": [_record(served)]})
    assert_error(response, 404, "'nope'")


@pytest.mark.parametrize(
    ("method", "url", "fragment"),
    [
        ("GET", "/v2/models/credit/versions/9", "no version 9"),
        ("GET", "/v2/models/credit/versions/9/ready", "no version 9"),
        ("POST", "/v2/models/credit/versions/9/infer", "no version 9"),
        ("POST", "/v1/predict/credit/9", "no version 9"),
        ("GET", "/v2/models/credit/versions/0", "no version 0"),
        ("GET", "/v2/models/credit/versions/0/ready", "no version 0"),
        ("POST", "/v2/models/credit/versions/0/infer", "no version 0"),
        ("GET", "/v2/models/credit/versions/canary", "'canary'"),
        ("GET", "/v2/models/credit/versions/canary/ready", "'canary'"),
        ("POST", "/v2/models/credit/versions/canary/infer", "'canary'"),
        ("GET", "/v2/models/credit@canary", "'canary'"),
        ("POST", "/v2/models/credit@canary/infer", "'canary'"),
        ("POST", "/v1/predict/credit@canary", "'canary'"),
    ],
)
def test_an_unknown_version_or_alias_is_a_404_naming_it(
    http, served, method: str, url: str, fragment: str
) -> None:
    response = http.request(method, url, json={"records": [_record(served)]})
    assert_error(response, 404, fragment)


def test_requests_for_missing_versions_leave_no_load_state(http, served) -> None:
    body = {"inputs": credit_tensors(served.credit_rows)}
    for version in ("0", "9", "99999999999999999999"):
        http.post(f"/v2/models/credit/versions/{version}/infer", json=body)
        http.get(f"/v2/models/credit/versions/{version}/ready")
    http.post("/v2/models/nope/versions/1/infer", json=body)
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert set(models["credit"]["loaded"]) <= {"1", "2"}, models["credit"]["loaded"]
    assert "nope" not in models


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/v2/models/-bad"),
        ("POST", "/v2/models/-bad/infer"),
        ("GET", "/v2/models/credit/versions/Bad!"),
        ("POST", "/v2/models/credit@Bad/infer"),
        ("POST", "/v2/models/credit@/infer"),
        ("POST", "/v1/predict/credit/0"),
        ("POST", "/v1/predict/credit/1/2"),
        ("POST", "/v1/predict/credit@"),
        ("POST", "/v1/predict/-bad"),
    ],
)
def test_an_invalid_name_version_or_alias_is_a_400(http, method: str, url: str) -> None:
    assert_error(http.request(method, url, json={}), 400)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        # str.isdigit() is true for these, int() refuses them: a 4xx, never a 500.
        ("GET", "/v2/models/credit/versions/%C2%B2"),
        ("GET", "/v2/models/credit/versions/%C2%B2/ready"),
        ("POST", "/v2/models/credit/versions/%C2%B2/infer"),
        ("POST", "/v1/predict/credit/%C2%B2"),
    ],
)
def test_a_digit_that_is_not_a_number_is_a_4xx(http, method: str, url: str) -> None:
    response = http.request(method, url, json={"records": []})
    assert response.status_code in (400, 404), response.text
    assert_error(response, response.status_code)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/v2/models/credit/versions/99999999999999999999"),
        ("GET", "/v2/models/credit/versions/99999999999999999999/ready"),
        ("POST", "/v2/models/credit/versions/99999999999999999999/infer"),
        ("POST", "/v1/predict/credit/99999999999999999999"),
    ],
)
def test_a_version_number_beyond_any_integer_column_is_a_404(http, method: str, url: str) -> None:
    response = http.request(method, url, json={"records": []})
    assert_error(response, 404, "99999999999999999999")


def test_a_header_length_of_unicode_digits_is_a_400(http) -> None:
    # Header bytes are latin-1: b"\xb2" is "²", for which str.isdigit() is true.
    response = http.post(INFER, content=b'{"inputs": []}', headers={HEADER_LENGTH: b"\xb2"})
    assert_error(response, 400, HEADER_LENGTH.lower())


def test_a_non_finite_value_is_a_4xx_naming_the_feature(http) -> None:
    # JSON cannot carry infinity, the binary extension can; the model must never see it raw.
    matrix = np.array([[np.inf, 0.5, 1.0]])
    header, blob = binary_tensor("input-0", "FP64", matrix)
    content, headers = binary_request({"inputs": [header]}, [blob])
    response = http.post("/v2/models/numeric/infer", content=content, headers=headers)
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code, "'x0'")


def test_nan_is_a_missing_value(http) -> None:
    matrix = np.array([[0.5, np.nan, 1.0]])
    header, blob = binary_tensor("input-0", "FP64", matrix)
    content, headers = binary_request({"inputs": [header]}, [blob])
    response = http.post("/v2/models/numeric/infer", content=content, headers=headers)
    assert_error(response, 422, "'x1'", "missing value")


# -- transport errors: 404 route, 405 method ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "/nope"), ("GET", "/v3/models"), ("POST", "/v2/models"), ("GET", "/v1/nope")],
)
def test_an_unknown_route_is_a_404_with_an_error(http, method: str, url: str) -> None:
    assert_error(http.request(method, url), 404)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/v2/models/credit/infer"),
        ("PUT", "/v2/models/credit/versions/1/infer"),
        ("DELETE", "/v2/health/live"),
        ("POST", "/v2"),
        ("GET", "/v1/predict/credit"),
    ],
)
def test_a_wrong_method_is_a_405_with_an_error(http, method: str, url: str) -> None:
    assert_error(http.request(method, url), 405)


def test_a_405_says_which_methods_are_allowed(http) -> None:
    # RFC 9110 section 15.5.6: a 405 response MUST carry an Allow header.
    response = http.request("GET", "/v2/models/credit/infer")
    assert response.status_code == 405
    assert "POST" in response.headers.get("allow", ""), dict(response.headers)


def test_a_content_length_that_is_not_a_number_is_a_400(http, app) -> None:
    # No HTTP client sends this, so the app is called with a raw ASGI scope.
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": INFER,
        "raw_path": INFER.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"berth.test"), (b"content-length", b"ten")],
        "client": ("127.0.0.1", 50000),
        "server": ("berth.test", 80),
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    http.portal.call(app, scope, receive, send)
    assert sent[0]["status"] == 400
    body = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert "Content-Length" in body["error"]


# -- a small home of our own: a tampered artifact, and a tight body limit ----------------------


def _tamper(client: Berth, digest: str) -> None:
    folder = client.store.path(digest)
    target = folder / "model.skops"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``credit`` (sound), ``broken`` v1 (production) and v2 (loaded on demand), both tampered
    after registration; served with a body limit of 1000 bytes."""
    home = tmp_path_factory.mktemp("guarded") / "home"
    frame = credit_frame(rows=120, seed=5)
    numbers = numeric_frame(rows=60, seed=6)
    target = (numbers["x0"] > 0).astype(int)
    with Berth(Settings(home=home, user="tester")) as client:
        credit = credit_model(frame, credit_labels(frame), c=0.5)
        client.register(credit, "credit", training_data=frame)
        client.set_alias("credit", "production", 1)
        for c in (0.3, 0.2):
            model = LogisticRegression(C=c).fit(numbers, target)
            info = client.register(model, "broken", training_data=numbers)
            _tamper(client, info.digest)
        client.set_alias("broken", "production", 1)
    with in_process(make_app(home, max_body_bytes=1000), home) as client:
        yield client


def _one_credit_row(served) -> dict:
    return {"inputs": credit_tensors(served.credit_rows.head(1))}


def test_a_tampered_version_is_unavailable_naming_the_reason(guarded) -> None:
    infer = guarded.post("/v2/models/broken/infer", json={"inputs": [tensor("x0", "FP64", [1.0])]})
    assert_error(infer, 503, "broken/1", "SHA-256")
    ready = guarded.get("/v2/models/broken/ready")
    assert_error(ready, 503, "broken/1", "not ready", "SHA-256")
    assert ready.json()["ready"] is False


def test_a_tampered_version_loaded_on_demand_is_unavailable(guarded) -> None:
    request = {"inputs": [tensor("x0", "FP64", [1.0])]}
    assert_error(guarded.post("/v2/models/broken/versions/2/infer", json=request), 503, "SHA-256")
    assert_error(guarded.post("/v1/predict/broken/2", json={"records": [{}]}), 503, "SHA-256")
    ready = guarded.get("/v2/models/broken/versions/2/ready")
    assert_error(ready, 503, "not ready")


def test_other_models_keep_serving_beside_a_broken_one(guarded, served) -> None:
    assert guarded.post("/v2/models/credit/infer", json=_one_credit_row(served)).status_code == 200
    assert guarded.get("/v2/models/credit/ready").status_code == 200
    assert guarded.get("/v2/health/live").status_code == 200
    # A broken model does not take the whole server out of a load balancer.
    assert guarded.get("/v2/health/ready").status_code == 200
    models = {m["name"]: m for m in guarded.get("/v1/models").json()["models"]}
    assert models["credit"]["loaded"]["1"] == "ready"
    assert models["broken"]["loaded"]["1"].startswith("failed")
    assert "SHA-256" in models["broken"]["loaded"]["1"]


def test_a_model_registered_after_a_miss_is_served(guarded) -> None:
    # A request for a model that does not exist yet must not poison that name: once registered,
    # the same request is served.
    numbers = numeric_frame(rows=40, seed=8)
    request = {"inputs": [tensor(f, "FP64", numbers[f].head(2).tolist()) for f in ("x0", "x1")]}
    request["inputs"].append(tensor("n", "INT64", numbers["n"].head(2).tolist()))
    assert_error(guarded.post("/v2/models/later/versions/1/infer", json=request), 404, "'later'")
    with Berth(Settings(home=guarded.home, user="tester")) as client:
        model = LogisticRegression().fit(numbers, (numbers["x1"] > 0).astype(int))
        client.register(model, "later", training_data=numbers)
    response = guarded.post("/v2/models/later/versions/1/infer", json=request)
    assert response.status_code == 200, response.text


def test_a_body_under_the_limit_is_served(guarded, served) -> None:
    response = guarded.post("/v2/models/credit/infer", json=_one_credit_row(served))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("url", ["/v2/models/credit/infer", "/v1/predict/credit"])
def test_a_body_over_the_limit_by_content_length_is_a_413(guarded, url: str) -> None:
    body = b'{"inputs": [' + b" " * 2000 + b"]}"
    response = guarded.post(url, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 413, "1000 bytes")


async def _chunks(total: int, size: int = 100) -> Any:
    yield b'{"records": ['
    for _ in range(total // size):
        yield b" " * size
    yield b"]}"


@pytest.mark.parametrize("url", ["/v2/models/credit/infer", "/v1/predict/credit"])
def test_a_streamed_body_over_the_limit_is_a_413(guarded, url: str) -> None:
    response = guarded.post(url, content=_chunks(3000))
    assert "content-length" not in response.request.headers  # really chunked
    assert_error(response, 413, "1000 bytes")


def test_a_streamed_body_under_the_limit_is_read_whole(guarded, served) -> None:
    async def body() -> Any:
        yield b'{"records": [{"income": 1.0, "rate": 5.0, "age": 30, '
        yield b'"accounts": 2, "owner": true, "purpose": "car"}]}'

    response = guarded.post("/v1/predict/credit", content=body())
    assert response.status_code == 200, response.text


# -- no input produces a 500 -------------------------------------------------------------------

TABULAR = ["credit", "numeric"]  # the models of the shared home
MODELS = [*TABULAR, "credit@staging", "nope"]
REFS = [*MODELS, "credit/2", "numeric/1", "credit/9", "credit@nope"]
FEATURES = [*CREDIT_FEATURES, *NUMERIC_FEATURES, "text", "input-0", "colour"]
DATATYPES = [*sorted(set(CREDIT_DTYPES.values())), "INT8", "UINT8", "UINT64", "FP16", "FP128"]

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run: a red test means a real regression
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["car", "home", "study", "boat", ""])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _assert_handled(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert_error(response, response.status_code)


def _infer_urls() -> st.SearchStrategy[str]:
    names = st.sampled_from(MODELS)
    versions = st.sampled_from(["1", "2", "9", "production", "staging", "latest", "0"]) | st.text(
        alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=6
    )
    return st.one_of(
        names.map(lambda n: f"/v2/models/{n}/infer"),
        st.tuples(st.sampled_from(TABULAR), versions).map(
            lambda nv: f"/v2/models/{nv[0]}/versions/{nv[1]}/infer"
        ),
    )


def _predict_urls() -> st.SearchStrategy[str]:
    return st.sampled_from(REFS).map(lambda r: f"/v1/predict/{r}")


@st.composite
def oip_tensors(draw: st.DrawFn) -> dict:
    out: dict[str, Any] = {
        "name": draw(st.sampled_from(FEATURES) | st.text(max_size=6)),
        "datatype": draw(st.sampled_from(DATATYPES)),
        "shape": draw(st.lists(st.integers(-1, 3), min_size=0, max_size=3)),
    }
    if draw(st.booleans()):
        out["data"] = draw(
            st.lists(scalars, max_size=6) | st.lists(st.lists(scalars, max_size=3), max_size=3)
        )
    if draw(st.booleans()):
        out["parameters"] = draw(st.dictionaries(st.text(max_size=6), scalars, max_size=2))
    return out


@st.composite
def oip_requests(draw: st.DrawFn) -> dict:
    doc: dict[str, Any] = {"inputs": draw(st.lists(oip_tensors(), max_size=7))}
    if draw(st.booleans()):
        doc["id"] = draw(scalars)
    if draw(st.booleans()):
        doc["parameters"] = draw(json_values)
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["label", "probabilities", "x"])}),
                max_size=3,
            )
        )
    return doc


@st.composite
def well_typed_oip_requests(draw: st.DrawFn) -> dict:
    """Valid tensors for the credit model with random values: deeper into validation."""
    rows = draw(st.integers(1, 3))
    inputs = []
    for f in CREDIT_FEATURES:
        if draw(st.integers(0, 9)) == 0:
            continue  # now and then a missing feature
        datatype = CREDIT_DTYPES[f] if draw(st.integers(0, 4)) else draw(st.sampled_from(DATATYPES))
        values = {
            "FP64": st.floats(allow_nan=False, allow_infinity=False),
            "FP32": st.floats(width=32, allow_nan=False, allow_infinity=False),
            "INT64": st.integers(-(2**63), 2**63 - 1),
            "INT32": st.integers(-(2**31), 2**31 - 1),
            "BOOL": st.booleans(),
            "BYTES": st.sampled_from(["car", "home", "study", "boat"]) | st.text(max_size=5),
        }.get(datatype, scalars)
        inputs.append(tensor(f, datatype, draw(st.lists(values, min_size=rows, max_size=rows))))
    return {"inputs": inputs}


@FUZZ
@given(url=st.one_of(_infer_urls(), _predict_urls()), doc=json_values)
def test_random_json_documents_never_500(http, url: str, doc: Any) -> None:
    _assert_handled(http.post(url, json=doc))


@FUZZ
@given(url=_infer_urls(), doc=oip_requests())
def test_random_oip_requests_never_500(http, url: str, doc: dict) -> None:
    _assert_handled(http.post(url, json=doc))


@pytest.mark.filterwarnings(
    # A model's own arithmetic on extreme but finite floats (1e308) overflows with a numpy
    # RuntimeWarning; pytest makes it an error in the predictor thread, a server only logs it.
    "ignore:overflow encountered:RuntimeWarning"
)
@FUZZ
@given(doc=well_typed_oip_requests())
def test_random_values_in_well_typed_tensors_never_500(http, doc: dict) -> None:
    _assert_handled(http.post(INFER, json=doc))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # as above
@FUZZ
@given(
    ref=st.sampled_from(REFS),
    records=st.lists(
        st.dictionaries(st.sampled_from(FEATURES), json_values, min_size=0, max_size=8),
        max_size=3,
    ),
    unit=st.none() | scalars,
)
def test_random_records_never_500(http, ref: str, records: list, unit: Any) -> None:
    doc: dict[str, Any] = {"records": records}
    if unit is not None:
        doc["unit_id"] = unit
    _assert_handled(http.post(f"/v1/predict/{ref}", json=doc))


@FUZZ
@given(ref=st.sampled_from(REFS), texts=st.lists(st.text(max_size=30) | scalars, max_size=4))
def test_random_texts_never_500(http, ref: str, texts: list) -> None:
    _assert_handled(http.post(f"/v1/predict/{ref}", json={"texts": texts}))


@FUZZ
@given(
    url=st.one_of(_infer_urls(), _predict_urls()),
    body=st.binary(max_size=300),
    header=st.none() | st.integers(0, 400).map(str) | st.text(max_size=4),
)
def test_random_bytes_never_500(http, url: str, body: bytes, header: str | None) -> None:
    headers = {} if header is None else {HEADER_LENGTH: header.encode("utf-8", "replace")}
    _assert_handled(http.post(url, content=body, headers=headers))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # as above
@FUZZ
@given(
    model=st.sampled_from(TABULAR),
    tensors=st.lists(
        st.tuples(
            st.sampled_from(FEATURES),
            st.sampled_from(DATATYPES[:-1]),
            st.lists(st.integers(0, 3), min_size=1, max_size=2),
            st.binary(max_size=48),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_random_binary_tensors_never_500(http, model: str, tensors: list) -> None:
    headers, blobs = [], []
    for name, datatype, shape, blob in tensors:
        headers.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    content, extra = binary_request({"inputs": headers}, blobs)
    _assert_handled(http.post(f"/v2/models/{model}/infer", content=content, headers=extra))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # as above
@FUZZ
@given(
    rows=st.lists(
        st.tuples(st.floats(), st.floats(), st.integers(0, 9).map(float)),
        min_size=1,
        max_size=3,
    )
)
def test_random_floats_in_a_binary_2d_tensor_never_500(http, rows: list) -> None:
    # Any float64, infinities and NaN included (only the binary extension carries those, so the
    # server must check them itself), with a whole ``n`` so that x0 and x1 reach the model.
    header, blob = binary_tensor("input-0", "FP64", np.array(rows, dtype=np.float64))
    content, extra = binary_request({"inputs": [header]}, [blob])
    _assert_handled(http.post("/v2/models/numeric/infer", content=content, headers=extra))


@FUZZ
@given(
    segment=st.text(min_size=1, max_size=8).filter(lambda s: "/" not in s and "?" not in s),
    suffix=st.sampled_from(["", "/ready", "/infer"]),
)
def test_random_version_segments_never_500(http, segment: str, suffix: str) -> None:
    from urllib.parse import quote

    url = f"/v2/models/credit/versions/{quote(segment, safe='')}{suffix}"
    method = "POST" if suffix == "/infer" else "GET"
    _assert_handled(http.request(method, url, json={"inputs": []}))


# -- schemathesis over the OpenAPI schema ------------------------------------------------------
#
# schemathesis 4.32's pytest integration (``schema.parametrize()`` on a schema from
# ``schemathesis.pytest.from_fixture``) fails under pytest 9 (it writes ``request.node._nodeid``,
# which pytest 9 no longer has), and an eager ``from_asgi`` at import time would need the models
# before the session fixtures exist. So the schema is loaded with ``from_asgi`` in a fixture and
# each operation's strategy is drawn from inside a hypothesis test; ``case.call()`` still goes
# through schemathesis' own in-process ASGI transport, with the app's lifespan run by it.

OPERATIONS = [
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/models/{name}/ready"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("POST", "/v1/predict/{ref}"),
    ("GET", "/v1/models"),
]


@pytest.fixture(scope="module")
def api_schema(served) -> Iterator[Any]:
    """The OpenAPI schema of an app of its own: schemathesis runs the app's lifespan in its own
    event loop, which must not be the loop of the module's ``http`` app."""
    from schemathesis.python import asgi

    yield schemathesis.openapi.from_asgi("/openapi.json", make_app(served.home))
    asgi.shutdown_lifespans()  # unload the models and flush the records now, not at exit


def test_schemathesis_sees_every_operation(api_schema) -> None:
    found = {
        (result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()
    }
    assert found == set(OPERATIONS)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # as above
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
@settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_schemathesis_finds_no_server_error(api_schema, method: str, path: str, data) -> None:
    operation = api_schema[path][method]
    mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
    known: dict[str, str] = {}
    if "{name}" in path and data.draw(st.booleans()):
        known["name"] = data.draw(st.sampled_from(TABULAR))
    if "{ref}" in path and data.draw(st.booleans()):
        known["ref"] = data.draw(st.sampled_from(REFS))
    case = data.draw(operation.as_strategy(mode, path_parameters=known or None))
    response = case.call()
    if path.endswith("ready") and response.status_code == 503:
        return  # "not ready (yet)": a readiness answer, not a server error
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str), body
        assert body["error"], body


def test_a_shape_with_too_many_dimensions_is_a_400(http) -> None:
    tensor = {"name": "x0", "datatype": "FP64", "shape": [1] * 70, "data": [0.5]}
    response = http.post("/v2/models/numeric/infer", json={"inputs": [tensor]})
    assert_error(response, 400, "'x0'", "'shape'")
