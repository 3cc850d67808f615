"""A logistic-regression head kept as plain arrays.

Why: loading a scikit-learn head through skops imports every scikit-learn module (and torch, which
sklearn's array-API shim pulls in): about 5 s of a text model's cold start, for a head that is one
matrix product. A head that is exactly a fitted ``LogisticRegression`` is saved as ``.npz`` arrays
(read with ``allow_pickle=False``: no code runs) and served with numpy; anything else stays skops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FILE = "head.npz"


@dataclass(frozen=True)
class LinearHead:
    coef: npt.NDArray[np.float64]
    intercept: npt.NDArray[np.float64]
    classes_: npt.NDArray[Any]

    def predict_proba(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        z = np.asarray(x, dtype=np.float64) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # binary: scikit-learn's sigmoid on one decision value
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.column_stack([1.0 - p, p])
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def save(self, folder: Path) -> None:
        np.savez(folder / FILE, coef=self.coef, intercept=self.intercept, classes=self.classes_)

    @classmethod
    def load(cls, folder: Path) -> LinearHead:
        with np.load(folder / FILE, allow_pickle=False) as data:
            classes = data["classes"]
            if classes.dtype.kind == "U":
                classes = classes.astype(object)  # labels as Python str, like scikit-learn's
            return cls(data["coef"], data["intercept"], classes)

    @classmethod
    def from_estimator(cls, estimator: Any) -> LinearHead | None:
        """The arrays of a fitted LogisticRegression, if it predicts exactly like them."""
        kind = type(estimator)
        if (kind.__module__, kind.__qualname__) != (
            "sklearn.linear_model._logistic",
            "LogisticRegression",
        ) or not hasattr(estimator, "coef_"):
            return None
        classes = np.asarray(estimator.classes_)
        if classes.dtype.kind not in "iuU" and not all(isinstance(c, str) for c in classes):
            return None
        if classes.dtype.kind == "O":
            classes = classes.astype(str)
        head = cls(
            np.asarray(estimator.coef_, dtype=np.float64),
            np.asarray(estimator.intercept_, dtype=np.float64),
            classes,
        )
        probe = np.random.default_rng(0).normal(size=(16, head.coef.shape[1]))
        if not np.allclose(head.predict_proba(probe), estimator.predict_proba(probe), atol=1e-9):
            return None
        return head
