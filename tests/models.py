"""Tiny models for tests that need a registered version but not a real framework."""

from __future__ import annotations

import numpy as np
import pandas as pd


class SumModel:
    """Predicts the row sum of its inputs: a model we own, so every output is known."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return frame.to_numpy(dtype=np.float64).sum(axis=1)


def numbers(rows: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.random(rows), "b": rng.random(rows)})


class SlowToSave(SumModel):
    """Announces through ``marker`` that pickling has started, then stalls: a registration that
    can be killed while its artifact is half-written."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __getstate__(self) -> dict[str, str]:
        import pathlib
        import time

        pathlib.Path(self.marker).write_text("saving")
        time.sleep(60)
        return {"marker": self.marker}


def classification(n_classes: int = 2) -> tuple[pd.DataFrame, np.ndarray]:
    """300 rows, six numeric features ``f0..f5``: the round-trip data of the tree flavors."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=300,
        n_features=6,
        n_informative=4,
        n_redundant=0,
        n_classes=n_classes,
        random_state=0,
    )
    return pd.DataFrame(x, columns=[f"f{i}" for i in range(6)]), y


class SlowSum(SumModel):
    """A row sum that takes ``seconds`` per call: a batch job slow enough to be killed half-way."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        import time

        time.sleep(self.seconds)
        return super().predict(frame)
