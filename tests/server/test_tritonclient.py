"""An unmodified third-party client over a real socket: tritonclient[http]'s
``InferenceServerClient`` against ``berth serve``'s app on an ephemeral 127.0.0.1 port.

tritonclient sends inputs in the binary tensor extension by default (JSON with
``binary_data=False``), asks for outputs in binary unless told otherwise, and reads responses with
the ``Inference-Header-Content-Length`` header: every path of that extension is exercised here as
real clients use it. The text model's side (BYTES inputs to ``sentiment``) is in
``test_text.py``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tests.server.conftest import CREDIT_DTYPES, CREDIT_FEATURES, NUMERIC_FEATURES
from tritonclient.utils import InferenceServerException

from berth.testing import running_server


@pytest.fixture(scope="module")
def triton(app) -> Iterator[Any]:
    with running_server(app) as base_url:
        client = httpclient.InferenceServerClient(url=base_url.removeprefix("http://"))
        try:
            yield client
        finally:
            client.close()


def _numpy(frame, feature: str) -> np.ndarray:
    values = frame[feature].to_numpy()
    return values.astype(object) if CREDIT_DTYPES[feature] == "BYTES" else values


def _credit_inputs(rows, binary: bool) -> list[Any]:
    inputs = []
    for f in CREDIT_FEATURES:
        item = httpclient.InferInput(f, [len(rows)], CREDIT_DTYPES[f])
        item.set_data_from_numpy(_numpy(rows, f), binary_data=binary)
        inputs.append(item)
    return inputs


def _outputs(binary: bool) -> list[Any]:
    return [
        httpclient.InferRequestedOutput("label", binary_data=binary),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
    ]


def _labels(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()]


# -- health and metadata -----------------------------------------------------------------------


def test_server_is_live_and_ready(triton) -> None:
    assert triton.is_server_live() is True
    assert triton.is_server_ready() is True


def test_server_metadata(triton) -> None:
    meta = triton.get_server_metadata()
    assert meta["name"] == "berth"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize(
    ("name", "version"), [("credit", ""), ("credit", "1"), ("credit", "staging"), ("credit", "2")]
)
def test_model_is_ready(triton, name: str, version: str) -> None:
    assert triton.is_model_ready(name, version) is True


def test_an_unknown_model_is_not_ready(triton) -> None:
    assert triton.is_model_ready("nope") is False


def test_model_metadata(triton) -> None:
    meta = triton.get_model_metadata("credit")
    assert meta["name"] == "credit"
    assert meta["versions"] == ["1", "2"]
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        (f, CREDIT_DTYPES[f]) for f in CREDIT_FEATURES
    ]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert triton.get_model_metadata("credit", "2")["parameters"]["version"] == 2


# -- inference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_one_input_per_feature(triton, served, binary_in: bool, binary_out: bool) -> None:
    rows = served.credit_rows
    result = triton.infer(
        "credit", _credit_inputs(rows, binary_in), outputs=_outputs(binary_out), request_id="t-1"
    )
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), served.credit_v1.predict_proba(rows), rtol=1e-12
    )
    assert _labels(result.as_numpy("label")) == served.credit_v1.predict(rows).tolist()
    response = result.get_response()
    assert response["id"] == "t-1"
    assert response["model_version"] == "1"
    assert len(response["parameters"]["prediction_ids"]) == len(rows)


def test_infer_without_requested_outputs(triton, served) -> None:
    # tritonclient then asks for every output in binary ("binary_data_output": true).
    rows = served.credit_rows
    result = triton.infer("credit", _credit_inputs(rows, True))
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), served.credit_v1.predict_proba(rows), rtol=1e-12
    )


def test_infer_a_version_by_number_and_by_alias(triton, served) -> None:
    rows = served.credit_rows
    for version in ("2", "staging"):
        result = triton.infer(
            "credit", _credit_inputs(rows, True), model_version=version, outputs=_outputs(True)
        )
        assert result.get_response()["model_version"] == "2"
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), served.credit_v2.predict_proba(rows), rtol=1e-12
        )


def test_infer_one_2d_fp64_input(triton, served) -> None:
    rows = served.numeric_rows
    matrix = rows[list(NUMERIC_FEATURES)].to_numpy(dtype=np.float64)
    item = httpclient.InferInput("input-0", list(matrix.shape), "FP64")
    item.set_data_from_numpy(matrix)
    result = triton.infer("numeric", [item], outputs=_outputs(True))
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), served.numeric.predict_proba(rows), rtol=1e-12
    )
    assert result.as_numpy("label").tolist() == served.numeric.predict(rows).tolist()


# -- errors reach the client as the server worded them -----------------------------------------


def test_an_unknown_model_raises_with_the_servers_message(triton, served) -> None:
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("nope", _credit_inputs(served.credit_rows, True))
    assert caught.value.status() == "404"
    assert "'nope'" in caught.value.message()


def test_an_unknown_category_raises_naming_the_feature(triton, served) -> None:
    rows = served.credit_rows.copy()
    rows["purpose"] = "boat"
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("credit", _credit_inputs(rows, True))
    assert caught.value.status() == "422"
    assert "'purpose'" in caught.value.message()
