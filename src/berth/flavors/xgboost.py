"""XGBoost: the scikit-learn estimators and raw Boosters, saved in XGBoost's own format.

``save_model`` writes UBJSON (or JSON) that holds trees and parameters only, so loading runs no
code. The options record which class to rebuild and, for classifiers, the classes in the order of
the probability columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import InvalidInputError, UnavailableError
from berth.flavors.base import Flavor, classifier_outputs
from berth.registry.signature import Output, Signature
from berth.types import Outputs, Predictor

FORMATS = ("ubj", "json")
# Classes the options may name; load never calls getattr on xgboost with anything else.
_ESTIMATORS = ("XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor", "Booster")
# Objectives whose raw predictions are class probabilities: one column (binary) or one per class.
_PROBABILITY_OBJECTIVES = ("binary:logistic", "multi:softprob")


class XGBoostFlavor(Flavor):
    name = "xgboost"
    extra = "xgboost"
    packages = ("xgboost", "xgboost-cpu")

    def matches(self, model: object) -> bool:
        return type(model).__module__.startswith("xgboost.") and type(model).__name__ in _ESTIMATORS

    def save(
        self, model: object, path: Path, *, trusted: bool, format: str = "ubj", nthread: int = 1
    ) -> dict[str, Any]:
        if format not in FORMATS:
            raise InvalidInputError(f"unknown format {format!r}; use one of {FORMATS}")
        if nthread < 1:
            raise InvalidInputError(f"nthread must be at least 1, got {nthread}")
        estimator = type(model).__name__
        if estimator not in _ESTIMATORS:
            raise InvalidInputError(f"the xgboost flavor cannot save a {estimator}")
        if estimator != "Booster":
            try:
                model.get_booster()  # type: ignore[attr-defined]
            except (AttributeError, ValueError) as exc:  # XGBoost's NotFittedError is both
                raise InvalidInputError(f"the {estimator} is not fitted: nothing to save") from exc
        file = f"model.{format}"
        model.save_model(str(path / file))  # type: ignore[attr-defined]
        options: dict[str, Any] = {"file": file, "estimator": estimator, "nthread": nthread}
        classes = _classes(model)
        if classes is not None:
            options["classes"] = classes
        return options

    def read(self, source: Path, *, trusted: bool) -> object:
        if source.suffix.lower() not in (".json", ".ubj"):
            raise InvalidInputError(f"{source.name}: an XGBoost model file ends in .json or .ubj")
        xgb = self.import_module("xgboost")
        try:
            booster = xgb.Booster(model_file=str(source))
        except xgb.core.XGBoostError as exc:
            raise InvalidInputError(f"{source.name} is not an XGBoost model: {exc}") from exc
        kind = _sklearn_type(booster)
        if kind == "classifier" or (
            kind is None and _objective(booster) in _PROBABILITY_OBJECTIVES
        ):
            classifier = xgb.XGBClassifier()
            classifier.load_model(str(source))
            return classifier
        if kind == "regressor":
            regressor = xgb.XGBRegressor()
            regressor.load_model(str(source))
            return regressor
        return booster

    def load(self, path: Path, options: dict[str, Any], signature: Signature) -> Predictor:
        xgb = self.import_module("xgboost")
        estimator = options.get("estimator", "Booster")
        if estimator not in _ESTIMATORS:
            raise UnavailableError(f"unknown XGBoost estimator {estimator!r} in the version")
        file = str(path / options.get("file", "model.ubj"))
        model = getattr(xgb, estimator)()
        model.load_model(file)
        # One thread by default: XGBoost otherwise uses every core, which costs more than it saves
        # on the small batches of a realtime request and oversubscribes a machine running several
        # workers. Batch scoring can raise it with save_options={"nthread": n}.
        nthread = int(options.get("nthread", 1))
        if estimator == "Booster":
            model.set_param({"nthread": nthread})
        else:
            model.set_params(n_jobs=nthread)  # the wrapper passes it on to its Booster
        return XGBoostPredictor(model, options.get("classes"), signature)

    def outputs(self, model: object, signature: Signature) -> list[Output]:
        classes = _classes(model)
        if classes is not None:
            return classifier_outputs(classes, probability_dtype="float32")
        return [Output(name="prediction", dtype="float32")]


class XGBoostPredictor:
    """Classifiers give ``label`` (the most probable class, as XGBoost's own ``predict`` does)
    and ``probabilities`` (float32, XGBoost's precision); anything else gives ``prediction``.

    A scikit-learn estimator predicts through its own ``predict_proba``, which knows its
    objective; a raw Booster with a probability objective is read the same way by hand.
    """

    def __init__(self, model: Any, classes: list[Any] | None, signature: Signature) -> None:
        self.model = model
        self.raw = type(model).__name__ == "Booster"
        self.booster = model if self.raw else model.get_booster()
        self.features = self.booster.feature_names
        if self.features and set(self.features) != set(signature.names):
            # XGBoost checks names on every call: fail once, at load, with both lists
            raise InvalidInputError(
                f"the model was trained on features {', '.join(self.features)} but the "
                f"signature names {', '.join(signature.names)}"
            )
        self.classes = _label_array(classes) if classes is not None else None

    def predict(self, batch: pd.DataFrame) -> Outputs:
        frame = _in_model_order(batch, self.features)
        if self.classes is None:
            values = self.booster.inplace_predict(frame) if self.raw else self.model.predict(frame)
            return {"prediction": np.asarray(values)}
        if self.raw:
            proba = np.asarray(self.booster.inplace_predict(frame), dtype=np.float32)
            if proba.ndim == 1:
                proba = np.column_stack([1.0 - proba, proba])
        else:
            proba = np.asarray(self.model.predict_proba(frame), dtype=np.float32)
        return {"label": self.classes[proba.argmax(axis=1)], "probabilities": proba}


def _in_model_order(batch: pd.DataFrame, features: list[str] | None) -> pd.DataFrame:
    """The batch's columns in the order the model was trained with, when it knows their names."""
    if features and list(batch.columns) != features and set(batch.columns) == set(features):
        return batch[features]
    return batch


def _classes(model: object) -> list[Any] | None:
    """The classes of a classifier, or of a raw Booster trained with a probability objective."""
    classes = getattr(model, "classes_", None)
    if classes is not None:
        return [c.item() if isinstance(c, np.generic) else c for c in np.asarray(classes).tolist()]
    if type(model).__name__ == "Booster" and _objective(model) in _PROBABILITY_OBJECTIVES:
        return list(range(_class_count(model)))
    return None


def _config(booster: Any) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(booster.save_config())["learner"]
    return config


def _objective(booster: Any) -> str:
    return str(_config(booster)["objective"]["name"])


def _class_count(booster: Any) -> int:
    return max(2, int(_config(booster)["learner_model_param"].get("num_class", "0")))


def _sklearn_type(booster: Any) -> str | None:
    """What the scikit-learn wrapper recorded when it saved the model, if it did."""
    attribute = booster.attr("scikit_learn")
    if not attribute:
        return None
    kind = json.loads(attribute).get("_estimator_type")
    return str(kind) if kind else None


def _label_array(classes: list[Any]) -> npt.NDArray[Any]:
    labels = np.asarray(classes)
    return labels.astype(object) if labels.dtype.kind == "U" else labels


FLAVOR = XGBoostFlavor()
