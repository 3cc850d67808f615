"""Reference profiles: what drift monitoring will compare production traffic against."""

from __future__ import annotations

import numpy as np
import pandas as pd

from berth.registry.profile import QUANTILES, fingerprint, observed_ranges, profile
from berth.registry.signature import Signature, infer_signature


def test_numeric_and_categorical_profiles() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(10, 2, 5000),
            "colour": rng.choice(["red", "blue", "green"], 5000, p=[0.5, 0.3, 0.2]).astype(object),
        }
    )
    frame.loc[:9, "x"] = np.nan
    prof = profile(frame, infer_signature(frame))
    x = prof["features"]["x"]
    assert prof["rows"] == 5000
    assert (x["count"], x["missing"]) == (4990, 10)
    assert abs(x["mean"] - 10) < 0.1
    assert abs(x["std"] - 2) < 0.1
    assert len(x["quantiles"]) == len(QUANTILES)
    assert x["quantiles"]["p50"] == np.nanmedian(frame["x"])
    assert sum(x["histogram"]["counts"]) == 4990
    assert len(x["histogram"]["edges"]) == len(x["histogram"]["counts"]) + 1
    colour = prof["features"]["colour"]
    assert colour["distinct"] == 3
    assert sum(colour["frequencies"].values()) == 5000
    assert colour["frequencies"]["red"] > colour["frequencies"]["green"]


def test_text_profile_with_embeddings() -> None:
    texts = ["short", "a somewhat longer sentence here", "mid length text"]

    def embed(batch: list[str]) -> np.ndarray:
        return np.array([[len(t), 1.0] for t in batch])

    prof = profile(texts, Signature.for_text(), embed=embed)["features"]["text"]
    assert prof["length_words"]["max"] == 5
    assert prof["length_chars"]["min"] == 5
    assert prof["embedding"]["dimensions"] == 2
    assert prof["embedding"]["sample"] == 3
    assert prof["embedding"]["mean"][1] == 1.0


def test_fingerprint_follows_content_not_index() -> None:
    a = pd.DataFrame({"x": [1, 2, 3]})
    assert fingerprint(a) == fingerprint(a.set_axis([7, 8, 9]))
    assert fingerprint(a) != fingerprint(pd.DataFrame({"x": [1, 2, 4]}))
    assert fingerprint(a) != fingerprint(pd.DataFrame({"y": [1, 2, 3]}))
    assert fingerprint(["a", "b"]) != fingerprint(["ab"])


def test_observed_ranges_are_each_numeric_features_minimum_and_maximum() -> None:
    frame = pd.DataFrame(
        {
            "age": np.array([31, 18, 79]),
            "x": [np.nan, -2.5, 4.0],
            "empty": [np.nan, np.nan, np.nan],
            "colour": ["red", "blue", "red"],
        }
    )
    ranges = observed_ranges(profile(frame, infer_signature(frame)))
    assert ranges == {"age": (18.0, 79.0), "x": (-2.5, 4.0)}
    assert observed_ranges(None) == {}
