"""Codecs: every input shape users send becomes one DataFrame; a shape that cannot be read is an
InvalidInputError that says what to send instead; outputs become one JSON-ready dict per row."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from berth.errors import InvalidInputError
from berth.registry.signature import Feature, Output, Signature
from berth.runtime.codecs import to_frame
from berth.runtime.outputs import to_rows as to_records
from berth.runtime.validation import validate

TABULAR = Signature(
    kind="tabular",
    inputs=(Feature(name="age", dtype="float64"), Feature(name="plan", dtype="string")),
)
TEXT = Signature.for_text()


def as_columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
    return {str(k): v for k, v in frame.to_dict("list").items()}


# -- accepted shapes ---------------------------------------------------------------------------


def test_dataframe_passes_through() -> None:
    frame = pd.DataFrame({"age": [1.0], "plan": ["pro"]})
    assert to_frame(frame, TABULAR) is frame


@pytest.mark.parametrize(
    "data",
    [
        [{"age": 30, "plan": "basic"}, {"plan": "pro", "age": 41.5}],
        {"records": [{"age": 30, "plan": "basic"}, {"plan": "pro", "age": 41.5}]},
        {"age": [30, 41.5], "plan": ["basic", "pro"]},
        {"age": np.array([30, 41.5]), "plan": ("basic", "pro")},
        np.array([[30, "basic"], [41.5, "pro"]], dtype=object),
        pa.table({"age": [30.0, 41.5], "plan": ["basic", "pro"]}),
    ],
    ids=["records", "records-key", "columns", "columns-array-tuple", "2d-array", "arrow"],
)
def test_tabular_shapes(data: Any) -> None:
    frame = to_frame(data, TABULAR)
    assert as_columns(frame) == {"age": [30, 41.5], "plan": ["basic", "pro"]}
    # and every shape is then valid for the signature
    out = validate(TABULAR, frame)
    assert out["age"].tolist() == [30.0, 41.5]


def test_records_with_a_missing_key_give_a_missing_value() -> None:
    frame = to_frame([{"age": 30, "plan": "basic"}, {"plan": "pro"}], TABULAR)
    assert frame["age"].isna().tolist() == [False, True]


def test_2d_array_takes_signature_order() -> None:
    sig = Signature(
        kind="tabular",
        inputs=(Feature(name="b", dtype="float64"), Feature(name="a", dtype="float64")),
    )
    frame = to_frame(np.array([[1.0, 2.0], [3.0, 4.0]]), sig)
    assert list(frame.columns) == ["b", "a"]
    assert frame["a"].tolist() == [2.0, 4.0]


@pytest.mark.parametrize(
    "data",
    [
        {"texts": ["good", "bad"]},
        ["good", "bad"],
        ("good", "bad"),
        np.array(["good", "bad"]),
    ],
    ids=["texts-key", "list", "tuple", "1d-array"],
)
def test_text_shapes(data: Any) -> None:
    frame = to_frame(data, TEXT)
    assert as_columns(frame) == {"text": ["good", "bad"]}
    assert validate(TEXT, frame)["text"].tolist() == ["good", "bad"]


def test_one_string_is_one_text() -> None:
    assert as_columns(to_frame("lovely", TEXT)) == {"text": ["lovely"]}


# -- shapes that cannot be read ----------------------------------------------------------------


@pytest.mark.parametrize(
    "records", [{"age": 1}, "age", [1, 2], [{"age": 1}, "pro"], None], ids=repr
)
def test_records_must_be_a_list_of_objects(records: Any) -> None:
    with pytest.raises(InvalidInputError, match="'records' must be a list of objects"):
        to_frame({"records": records}, TABULAR)


def test_top_level_list_mixing_objects_and_scalars() -> None:
    with pytest.raises(InvalidInputError, match="records") as exc:
        to_frame([{"age": 1, "plan": "pro"}, 2], TABULAR)
    assert "list of objects" in str(exc.value)


@pytest.mark.parametrize(("texts", "row"), [(["fine", 3], 1), ([2.5], 0), (["a", "b", None], 2)])
def test_texts_must_be_strings(texts: list[Any], row: int) -> None:
    with pytest.raises(InvalidInputError) as exc:
        to_frame({"texts": texts}, TEXT)
    assert f"row {row}" in str(exc.value)
    assert "not a string" in str(exc.value)


def test_texts_must_be_a_list() -> None:
    with pytest.raises(InvalidInputError, match="list of strings"):
        to_frame({"texts": "one long text"}, TEXT)


def test_bare_list_with_a_number_for_a_text_model() -> None:
    with pytest.raises(InvalidInputError, match="list of strings"):
        to_frame(["fine", 3], TEXT)


def test_columns_of_different_lengths() -> None:
    with pytest.raises(InvalidInputError, match="different lengths") as exc:
        to_frame({"age": [1, 2, 3], "plan": ["pro"]}, TABULAR)
    assert "[1, 3]" in str(exc.value)


@pytest.mark.parametrize("value", [30, "basic", None], ids=repr)
def test_a_column_must_be_a_list(value: Any) -> None:
    with pytest.raises(InvalidInputError, match="column 'age' must be a list"):
        to_frame({"age": value, "plan": ["pro"]}, TABULAR)


@pytest.mark.parametrize("shape", [(2, 3), (2, 1), (4,), (1, 2, 1)])
def test_array_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInputError) as exc:
        to_frame(np.zeros(shape), TABULAR)
    message = str(exc.value)
    assert str(shape) in message
    assert "2 features" in message
    assert "age, plan" in message


@pytest.mark.parametrize(
    "data", [{"texts": ["good"]}, ["good", "bad"], "good"], ids=["texts-key", "list", "str"]
)
def test_texts_sent_to_a_tabular_model(data: Any) -> None:
    with pytest.raises(InvalidInputError, match="not texts") as exc:
        to_frame(data, TABULAR)
    assert "age, plan" in str(exc.value)


@pytest.mark.parametrize("data", [42, None, 3.5, b"bytes", {1, 2}], ids=repr)
def test_unreadable_types_say_what_to_send(data: Any) -> None:
    with pytest.raises(InvalidInputError) as exc:
        to_frame(data, TABULAR)
    message = str(exc.value)
    assert type(data).__name__ in message
    assert "records" in message
    assert "columns" in message


# -- outputs -----------------------------------------------------------------------------------

CLASSIFIER = TABULAR.with_outputs(
    [
        Output(name="label", dtype="string", classes=("stay", "churn")),
        Output(name="probabilities", dtype="float64", shape=(-1, 2), classes=("stay", "churn")),
    ]
)


def test_records_key_probabilities_by_class_name() -> None:
    outputs = {
        "label": np.array(["stay", "churn"]),
        "probabilities": np.array([[0.9, 0.1], [0.25, 0.75]]),
    }
    assert to_records(outputs, CLASSIFIER) == [
        {"label": "stay", "probabilities": {"stay": 0.9, "churn": 0.1}},
        {"label": "churn", "probabilities": {"stay": 0.25, "churn": 0.75}},
    ]


def test_records_are_json_ready() -> None:
    sig = TABULAR.with_outputs(
        [
            Output(name="label", dtype="int64", classes=(0, 1)),
            Output(name="probabilities", dtype="float32", shape=(-1, 2), classes=(0, 1)),
        ]
    )
    outputs = {
        "label": np.array([1], dtype=np.int64),
        "probabilities": np.array([[0.25, 0.75]], dtype=np.float32),
    }
    rows = to_records(outputs, sig)
    assert rows == [{"label": 1, "probabilities": {"0": 0.25, "1": 0.75}}]
    assert type(rows[0]["label"]) is int
    assert orjson.loads(orjson.dumps(rows)) == rows  # plain Python types only


def test_records_without_classes_keep_vectors() -> None:
    outputs = {"prediction": np.array([1.5, 2.5]), "embedding": np.array([[1.0, 2.0], [3.0, 4.0]])}
    assert to_records(outputs, TABULAR) == [
        {"prediction": 1.5, "embedding": [1.0, 2.0]},
        {"prediction": 2.5, "embedding": [3.0, 4.0]},
    ]


def test_records_with_class_count_mismatch_keep_vectors() -> None:
    outputs = {"probabilities": np.array([[0.2, 0.3, 0.5]])}
    assert to_records(outputs, CLASSIFIER) == [{"probabilities": [0.2, 0.3, 0.5]}]


def test_no_outputs_give_no_rows() -> None:
    assert to_records({}, CLASSIFIER) == []


def test_one_object_of_scalars_is_one_record() -> None:
    frame = to_frame({"age": 30, "plan": "basic"}, TABULAR)
    assert as_columns(frame) == {"age": [30], "plan": ["basic"]}
