"""LightGBM: the scikit-learn estimators and raw Boosters, saved as LightGBM's text model.

The text format holds trees and parameters only, so loading runs no code. It does not hold the
scikit-learn wrapper's classes, so the options keep them, in the order of the probability columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import InvalidInputError
from berth.flavors.base import Flavor, classifier_outputs
from berth.registry.signature import Output, Signature
from berth.types import Outputs, Predictor

_FILE = "model.txt"
_ESTIMATORS = ("LGBMClassifier", "LGBMRegressor", "LGBMRanker", "Booster")
# Objectives (LightGBM's canonical names, as written in the model file) that give probabilities.
_CLASSIFIER_OBJECTIVES = ("binary", "multiclass", "multiclassova")


class LightGBMFlavor(Flavor):
    name = "lightgbm"
    extra = "lightgbm"
    packages = ("lightgbm",)

    def matches(self, model: object) -> bool:
        return type(model).__module__.startswith("lightgbm.") and type(model).__name__ in (
            _ESTIMATORS
        )

    def save(
        self, model: object, path: Path, *, trusted: bool, num_threads: int = 1
    ) -> dict[str, Any]:
        if num_threads < 1:
            raise InvalidInputError(f"num_threads must be at least 1, got {num_threads}")
        booster = _booster(model)
        objective = _header(booster.model_to_string(num_iteration=1)).get("objective", "")
        classes = _classes(model)
        if classes is not None and objective not in _CLASSIFIER_OBJECTIVES:
            raise InvalidInputError(
                f"a classifier trained with the {objective!r} objective gives raw scores, not "
                f"probabilities, once reloaded from LightGBM's text format; use one of "
                f"{', '.join(_CLASSIFIER_OBJECTIVES)}"
            )
        booster.save_model(str(path / _FILE))
        options: dict[str, Any] = {
            "file": _FILE,
            "estimator": type(model).__name__,
            "objective": objective,
            "num_threads": num_threads,
        }
        if classes is not None:
            options["classes"] = classes
        return options

    def read(self, source: Path, *, trusted: bool) -> object:
        if source.suffix.lower() != ".txt":
            raise InvalidInputError(f"{source.name}: a LightGBM model file ends in .txt")
        lgb = self.import_module("lightgbm")
        try:
            return lgb.Booster(model_file=str(source))
        except lgb.basic.LightGBMError as exc:
            raise InvalidInputError(f"{source.name} is not a LightGBM model: {exc}") from exc

    def load(self, path: Path, options: dict[str, Any], signature: Signature) -> Predictor:
        lgb = self.import_module("lightgbm")
        booster = lgb.Booster(model_file=str(path / options.get("file", _FILE)))
        categorical = [f.name for f in signature.inputs if f.dtype == "string"]
        return LightGBMPredictor(
            booster,
            options.get("classes"),
            categorical,
            num_threads=int(options.get("num_threads", 1)),
        )

    def outputs(self, model: object, signature: Signature) -> list[Output]:
        classes = _classes(model)
        if classes is not None:
            return classifier_outputs(classes)
        return [Output(name="prediction", dtype="float64")]


class LightGBMPredictor:
    """Classifiers give ``label`` (the most probable class) and ``probabilities`` (float64, as
    LightGBM computes them); anything else gives ``prediction``.

    String features become pandas categoricals with the categories the model was trained with
    (LightGBM keeps them in the model file): validated batches carry strings, and LightGBM only
    reads categories. A category it never saw becomes missing, as in LightGBM itself.
    """

    def __init__(
        self, booster: Any, classes: list[Any] | None, categorical: list[str], *, num_threads: int
    ) -> None:
        self.booster = booster
        self.features = booster.feature_name()
        self.classes = _label_array(classes) if classes is not None else None
        known = booster.pandas_categorical or []
        self.categories = dict(zip(categorical, known, strict=False))
        # One thread by default: LightGBM otherwise uses every core, which costs more than it
        # saves on a realtime request's few rows and oversubscribes a machine running several
        # workers. Batch scoring can raise it with save_options={"num_threads": n}.
        self.num_threads = num_threads

    def predict(self, batch: pd.DataFrame) -> Outputs:
        frame = batch
        if self.categories:
            frame = batch.assign(**{
                name: pd.Categorical(batch[name], categories=cats)
                for name, cats in self.categories.items()
            })  # fmt: skip
        if list(frame.columns) != self.features and set(frame.columns) == set(self.features):
            frame = frame[self.features]
        values = np.asarray(self.booster.predict(frame, num_threads=self.num_threads))
        if self.classes is None:
            return {"prediction": values}
        proba = values.astype(np.float64, copy=False)
        if proba.ndim == 1:
            proba = np.column_stack([1.0 - proba, proba])
        return {"label": self.classes[proba.argmax(axis=1)], "probabilities": proba}


def _booster(model: object) -> Any:
    if type(model).__name__ == "Booster":
        return model
    booster = getattr(model, "booster_", None)
    if booster is None:
        raise InvalidInputError(f"the {type(model).__name__} is not fitted: nothing to save")
    return booster


def _classes(model: object) -> list[Any] | None:
    """The wrapper's classes, or 0..k-1 for a raw Booster trained with a classifier objective."""
    classes = getattr(model, "classes_", None) if type(model).__name__ != "Booster" else None
    if classes is not None:
        return [c.item() if isinstance(c, np.generic) else c for c in np.asarray(classes).tolist()]
    header = _header(_booster(model).model_to_string(num_iteration=1))
    if header.get("objective") not in _CLASSIFIER_OBJECTIVES:
        return None
    return list(range(max(2, int(header.get("num_class", "1")))))


def _header(text: str) -> dict[str, str]:
    """The ``key=value`` lines before the first tree; ``objective`` keeps its first word only."""
    header: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Tree="):
            break
        key, sep, value = line.partition("=")
        if sep:
            header[key] = value
    if "objective" in header:
        header["objective"] = header["objective"].split(" ")[0]
    return header


def _label_array(classes: list[Any]) -> npt.NDArray[Any]:
    labels = np.asarray(classes)
    return labels.astype(object) if labels.dtype.kind == "U" else labels


FLAVOR = LightGBMFlavor()
