"""scikit-learn: saved with skops (no code runs on load); pickle or joblib only when trusted."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from berth.errors import InvalidInputError, UntrustedArtifactError
from berth.flavors.base import IMPORT_LOCK, Flavor, classifier_outputs, dtype_name
from berth.registry.signature import Output, Signature
from berth.types import Outputs, Predictor

# Types skops does not trust by default that we have read and found to be plain data holders:
# the fitted trees of HistGradientBoosting*, and the partial(check_array) its categorical
# preprocessing keeps. skops still checks every other type and function in a file on its own.
VETTED_TYPES = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "functools.partial",
    "sklearn.utils.validation.check_array",
)
SERIALIZERS = ("skops", "pickle", "joblib")
_FILES = {"skops": "model.skops", "pickle": "model.pkl", "joblib": "model.joblib"}


def import_skops(flavor: Flavor) -> Any:
    """Import skops.io without dragging torch in.

    skops lists scikit-learn's estimators with ``all_estimators()``, whose package walk imports
    ``sklearn.externals.array_api_compat.torch`` and so torch (over 2 s here) when torch is
    installed, though no estimator lives there. While torch is not loaded, a placeholder module
    stands in for that one package during the import (the walk does not descend into it), and is
    removed afterwards so that a later real import of it works.
    """
    with IMPORT_LOCK:  # also keeps others from seeing a half-imported skops.io
        if "skops.io" in sys.modules:
            return sys.modules["skops.io"]
        placeholder = None
        if "torch" not in sys.modules and _TORCH_SHIM not in sys.modules:
            placeholder = types.ModuleType(_TORCH_SHIM, "stands in while skops starts")
            sys.modules[_TORCH_SHIM] = placeholder
        try:
            return flavor.import_module("skops.io")
        finally:
            if placeholder is not None and sys.modules.get(_TORCH_SHIM) is placeholder:
                del sys.modules[_TORCH_SHIM]


_TORCH_SHIM = "sklearn.externals.array_api_compat.torch"


class SklearnFlavor(Flavor):
    name = "sklearn"
    extra = "sklearn"
    packages = ("scikit-learn", "skops")

    def matches(self, model: object) -> bool:
        return type(model).__module__.startswith("sklearn.") and hasattr(model, "predict")

    def save(
        self, model: object, path: Path, *, trusted: bool, serializer: str = "skops"
    ) -> dict[str, Any]:
        if serializer not in SERIALIZERS:
            raise InvalidInputError(f"unknown serializer {serializer!r}; use one of {SERIALIZERS}")
        options: dict[str, Any] = {
            "serializer": serializer,
            "input": "frame" if hasattr(model, "feature_names_in_") else "array",
        }
        if serializer == "skops":
            sio = import_skops(self)
            data = sio.dumps(model)
            extra = sorted(set(sio.get_untrusted_types(data=data)) - set(VETTED_TYPES))
            if extra and not trusted:
                raise UntrustedArtifactError(
                    f"the model holds types that skops does not trust by default: "
                    f"{', '.join(extra)}; vet them, then register with trusted=True"
                )
            (path / _FILES["skops"]).write_bytes(data)
            options["trusted_types"] = sorted({*VETTED_TYPES, *extra})
            return options
        if not trusted:
            raise UntrustedArtifactError(
                f"saving with {serializer} runs code on load: register with trusted=True"
            )
        if serializer == "joblib":
            self.import_module("joblib").dump(model, path / _FILES["joblib"])
        else:
            import pickle

            (path / _FILES["pickle"]).write_bytes(pickle.dumps(model, protocol=5))
        return options

    def requires_trust(self, options: dict[str, Any]) -> bool:
        return bool(options.get("serializer") != "skops")

    def read(self, source: Path, *, trusted: bool) -> object:
        suffix = source.suffix.lower()
        if suffix == ".skops":
            sio = import_skops(self)
            found = set(sio.get_untrusted_types(file=source)) - set(VETTED_TYPES)
            if found and not trusted:
                raise UntrustedArtifactError(
                    f"{source.name} holds types that skops does not trust by default: "
                    f"{', '.join(sorted(found))}; vet them, then pass --trusted"
                )
            return sio.load(source, trusted=sorted({*VETTED_TYPES, *found}))
        if suffix in (".pkl", ".pickle", ".joblib"):
            if not trusted:
                raise UntrustedArtifactError(
                    f"{source.name} is a pickle, which runs code when loaded: pass --trusted "
                    "only if you trust where it came from"
                )
            return self.import_module("joblib").load(source)
        raise InvalidInputError(
            f"{source.name}: a scikit-learn model file ends in .skops, .pkl or .joblib"
        )

    def load(self, path: Path, options: dict[str, Any], signature: Signature) -> Predictor:
        serializer = options.get("serializer", "skops")
        file = path / _FILES[serializer]
        if serializer == "skops":
            model = import_skops(self).load(file, trusted=options["trusted_types"])
        elif serializer == "joblib":
            model = self.import_module("joblib").load(file)
        else:
            import pickle

            model = pickle.loads(file.read_bytes())
        return SklearnPredictor(model, as_frame=options.get("input") == "frame")

    def outputs(self, model: object, signature: Signature) -> list[Output]:
        classes = getattr(model, "classes_", None)
        if classes is not None and hasattr(model, "predict_proba"):
            return classifier_outputs(classes)
        if classes is not None:
            labels = np.asarray(classes)
            return [Output(name="label", dtype=dtype_name(labels), classes=tuple(labels.tolist()))]
        return [Output(name="prediction", dtype="float64")]


class SklearnPredictor:
    """Classifiers give ``label`` and ``probabilities`` from one ``predict_proba`` call (the label
    is the most probable class, as scikit-learn's own ``predict`` does for these estimators)."""

    def __init__(self, model: Any, *, as_frame: bool) -> None:
        self.model = model
        self.as_frame = as_frame
        self.classes = getattr(model, "classes_", None)
        self.has_proba = self.classes is not None and hasattr(model, "predict_proba")

    def predict(self, batch: pd.DataFrame) -> Outputs:
        x = batch if self.as_frame else batch.to_numpy()
        if self.has_proba:
            proba = np.asarray(self.model.predict_proba(x), dtype=np.float64)
            return {"label": np.asarray(self.classes)[proba.argmax(axis=1)], "probabilities": proba}
        result = np.asarray(self.model.predict(x))
        return {"label" if self.classes is not None else "prediction": result}


FLAVOR = SklearnFlavor()
