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
        (
            {
                "kind": "tabular",
                "inputs": [{"name": "x", "dtype": "string", "observed_minimum": 1}],
            },
            "observed range needs a numeric dtype",
        ),
        (
            {
                "kind": "tabular",
                "inputs": [
                    {"name": "x", "dtype": "int64", "observed_minimum": 2, "observed_maximum": 1}
                ],
            },
            "observed range minimum is above maximum",
        ),
        (
            {"kind": "tabular", "inputs": [{"name": "x", "dtype": "int64", "range_policy": "x"}]},
            "inputs.0.range_policy",
        ),
    ],
)
def test_invalid_signatures_say_what_is_wrong(data: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Signature.from_dict(data, source="signature.json")


# -- observed ranges and their policy ------------------------------------------------------------

TRAIN = pd.DataFrame(
    {"age": np.array([18, 40, 79]), "income": [1000.0, 2000.0, 3000.0], "plan": ["a", "b", "a"]}
)
RANGES = {"age": (18.0, 79.0), "income": (1000.0, 3000.0)}


def test_observed_ranges_are_recorded_with_warn_by_default() -> None:
    sig = infer_signature(TRAIN).with_observed_ranges(RANGES)
    age, income, plan = sig.inputs
    assert (age.observed_minimum, age.observed_maximum, age.range_policy) == (18, 79, "warn")
    assert (income.observed_minimum, income.observed_maximum) == (1000.0, 3000.0)
    assert not plan.observed
    assert age.minimum is None  # observed, not declared: nothing is enforced by default
    assert Signature.from_dict(sig.to_dict()) == sig


def test_a_policy_for_every_numeric_feature_or_per_feature() -> None:
    every = infer_signature(TRAIN).with_observed_ranges(RANGES, "refuse")
    assert [f.range_policy for f in every.inputs[:2]] == ["refuse", "refuse"]
    some = infer_signature(TRAIN).with_observed_ranges(RANGES, {"income": "refuse"})
    assert [f.range_policy for f in some.inputs[:2]] == ["warn", "refuse"]


def test_a_declared_observed_range_is_kept() -> None:
    sig = Signature(
        kind="tabular",
        inputs=(Feature(name="age", dtype="int64", observed_minimum=0, observed_maximum=120),),
    )
    again = sig.with_observed_ranges({"age": (18.0, 79.0)}, "refuse")
    assert (again.inputs[0].observed_minimum, again.inputs[0].observed_maximum) == (0, 120)
    assert again.inputs[0].range_policy == "refuse"


@pytest.mark.parametrize(
    ("ranges", "policy", "message"),
    [
        (RANGES, "never", "range_policy 'never': use one of warn, refuse"),
        (RANGES, {"age": "maybe"}, "range_policy 'maybe' for 'age'"),
        (RANGES, {"height": "refuse"}, "unknown feature 'height'; features: age, income, plan"),
        (RANGES, {"plan": "refuse"}, "'plan': a range policy applies to numeric features only"),
        ({}, "refuse", "no observed range to apply it to"),
        ({"age": (18.0, 79.0)}, {"income": "refuse"}, "for 'income': no observed range"),
    ],
)
def test_a_bad_range_policy_is_refused_naming_it(
    ranges: dict, policy: object, message: str
) -> None:
    with pytest.raises(InvalidInputError) as exc:
        infer_signature(TRAIN).with_observed_ranges(ranges, policy)  # type: ignore[arg-type]
    assert message in str(exc.value)
