"""The array-only logistic head predicts exactly like scikit-learn's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression, SGDClassifier

from berth.flavors.linear_head import LinearHead


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("labels", ["int", "str"])
def test_matches_sklearn_after_a_round_trip(tmp_path: Path, classes: int, labels: str) -> None:
    x, y = make_classification(
        n_samples=200, n_features=8, n_informative=5, n_classes=classes, random_state=0
    )
    if labels == "str":
        y = np.array(["a", "b", "c"], dtype=object)[y]
    model = LogisticRegression(max_iter=500).fit(x, y)
    head = LinearHead.from_estimator(model)
    assert head is not None
    head.save(tmp_path)
    loaded = LinearHead.load(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(x), model.predict_proba(x), atol=1e-12)
    assert loaded.classes_.tolist() == model.classes_.tolist()


def test_other_estimators_are_not_converted() -> None:
    x, y = make_classification(n_samples=50, n_features=4, random_state=0)
    assert LinearHead.from_estimator(SGDClassifier(loss="log_loss").fit(x, y)) is None
    assert LinearHead.from_estimator(LogisticRegression()) is None  # not fitted
