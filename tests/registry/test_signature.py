"""Signatures: inference from training data, declared JSON, and the errors that name the field."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from berth.errors import InvalidInputError
from berth.registry.signature import Feature, Signature, infer_signature


def test_inference_from_a_frame() -> None:
    frame = pd.DataFrame(
        {
            "age": np.array([30, 40], dtype=np.int64),
            "income": [1.5, np.nan],
            "sex": ["f", "m"],
            "flag": [True, False],
            "band": pd.Categorical(["a", "b"], categories=["a", "b", "c"]),
        }
    )
    sig = infer_signature(frame)
    got = {f.name: (f.dtype, f.nullable, f.categories) for f in sig.inputs}
    assert got == {
        "age": ("int64", False, None),
        "income": ("float64", True, None),
        "sex": ("string", False, ("f", "m")),
        "flag": ("bool", False, None),
        "band": ("string", False, ("a", "b", "c")),
    }
    assert sig.feature("age").minimum is None
    assert infer_signature(frame, ranges=True).feature("age").maximum == 40


def test_many_distinct_strings_are_free_text_not_categories() -> None:
    frame = pd.DataFrame({"id": [f"user-{i}" for i in range(500)]})
    assert infer_signature(frame).feature("id").categories is None


def test_texts_give_a_text_signature() -> None:
    assert infer_signature(["a", "b"]) == Signature.for_text()
    with pytest.raises(InvalidInputError, match="sequence of strings"):
        infer_signature(["a", 3])  # type: ignore[list-item]


def test_round_trip_through_json() -> None:
    sig = Signature(kind="tabular", inputs=(Feature(name="x", dtype="float32", minimum=0.0),))
    assert Signature.from_dict(sig.to_dict()) == sig


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "tabular", "inputs": []}, "at least one input"),
        ({"kind": "tabular", "inputs": [{"name": "x", "dtype": "complex"}]}, "inputs.0.dtype"),
        (
            {"kind": "tabular", "inputs": [{"name": "x", "dtype": "int64", "categories": ["a"]}]},
            "categories need dtype 'string'",
        ),
        (
            {
                "kind": "tabular",
                "inputs": [{"name": "x", "dtype": "int64", "minimum": 2, "maximum": 1}],
            },
            "minimum is above maximum",
        ),
        (
            {
                "kind": "tabular",
                "inputs": [{"name": "x", "dtype": "int64"}, {"name": "x", "dtype": "int64"}],
            },
            "unique",
        ),
        ({"kind": "text", "inputs": [{"name": "body", "dtype": "string"}]}, "named 'text'"),
    ],
)
def test_invalid_signatures_say_what_is_wrong(data: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Signature.from_dict(data, source="signature.json")
