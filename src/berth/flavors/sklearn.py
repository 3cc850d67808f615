"""scikit-learn: saved with skops (no code runs on load); pickle or joblib only when trusted."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from berth.errors import ArtifactIntegrityError, InvalidInputError, UntrustedArtifactError
from berth.flavors.base import (
    IMPORT_LOCK,
    Flavor,
    classifier_outputs,
    dtype_name,
    sealed_trusted_types,
    write_trusted_types,
)
from berth.registry.signature import NUMERIC, Output, Signature
from berth.types import Outputs, Predictor

VETTED_TYPES = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "functools.partial",
    "sklearn.utils.validation.check_array",
)
"""Types skops does not trust by default that we have read and found to be plain data holders:
the fitted trees of HistGradientBoosting*, and the partial(check_array) its categorical
preprocessing keeps (skops checks the function a partial wraps on its own). A file may use
these without an admin's trust; each version still trusts only those its own file needs, listed
in its sealed :data:`~berth.flavors.base.TRUSTED_TYPES`. Versions registered before the lists
were sealed kept theirs in the database: such a list is accepted only within these."""
SERIALIZERS = ("skops", "pickle", "joblib")
_FILES = {"skops": "model.skops", "pickle": "model.pkl", "joblib": "model.joblib"}


def skops_types(
    flavor: Flavor,
    data: bytes,
    *,
    trusted: bool,
    what: str,
    hint: str = "register with trusted=True",
) -> list[str]:
    """The types beyond skops' defaults that the skops ``data`` needs, refused (named) when any
    is outside :data:`VETTED_TYPES` and ``trusted`` is false: that trust is an admin's."""
    needed = sorted(set(import_skops(flavor).get_untrusted_types(data=data)))
    extra = [t for t in needed if t not in VETTED_TYPES]
    if extra and not trusted:
        raise UntrustedArtifactError(
            f"{what} holds types that skops does not trust by default: {', '.join(extra)}; "
            f"vet them, then {hint}"
        )
    return needed


def save_skops(flavor: Flavor, folder: Path, file: str, data: bytes, *, trusted: bool) -> None:
    """Write a skops file and, beside it in the artifact, the list of the types it may load."""
    what = "the model" if file == _FILES["skops"] else file
    needed = skops_types(flavor, data, trusted=trusted, what=what)
    (folder / file).write_bytes(data)
    write_trusted_types(folder, {file: needed})


def load_skops(flavor: Flavor, folder: Path, file: str, legacy: object = None) -> Any:
    """Load the skops ``file`` of a sealed artifact with the types its sealed list trusts,
    refusing one that needs a type outside it (named, before anything is built).

    ``legacy`` is the list a version registered before the lists were sealed kept in the
    database: accepted only when every type in it is one of :data:`VETTED_TYPES` (a list
    widened there could otherwise make a load build anything); else the version must be
    registered again."""
    trusted = sealed_trusted_types(folder, file)
    if trusted is None:
        trusted = _legacy_types(legacy)
    sio = import_skops(flavor)
    path = folder / file
    outside = sorted(set(sio.get_untrusted_types(file=path)) - set(trusted))
    if outside:
        raise UntrustedArtifactError(
            f"{file} needs types its trusted list does not name: {', '.join(outside)}"
        )
    try:
        return sio.load(path, trusted=trusted)
    except sio.exceptions.UntrustedTypesFoundException as exc:  # pragma: no cover - checked above
        raise UntrustedArtifactError(f"{file}: {exc}") from exc


def _legacy_types(listed: object) -> list[str]:
    types = [str(t) for t in listed] if isinstance(listed, list) else []
    unvetted = sorted(set(types) - set(VETTED_TYPES))
    if unvetted:
        raise UntrustedArtifactError(
            "it was registered before Berth sealed trusted types in the artifact, and the list "
            f"in the database names types outside the vetted ones ({', '.join(unvetted)}): "
            "register it again (an admin's trusted=True, after vetting them)"
        )
    return types


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
            save_skops(
                self, path, _FILES["skops"], import_skops(self).dumps(model), trusted=trusted
            )
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
            data = source.read_bytes()
            needed = skops_types(
                self, data, trusted=trusted, what=source.name, hint="pass --trusted"
            )
            return import_skops(self).loads(data, trusted=needed)
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
        # The artifact's own file says how it was saved, not the options in the database.
        serializer = next((k for k, name in _FILES.items() if (path / name).is_file()), None)
        if serializer is None:
            raise ArtifactIntegrityError(f"its artifact holds none of {', '.join(_FILES.values())}")
        file = path / _FILES[serializer]
        if serializer == "skops":
            model = load_skops(self, path, file.name, options.get("trusted_types"))
        elif serializer == "joblib":
            model = self.import_module("joblib").load(file)
        else:
            import pickle

            model = pickle.loads(file.read_bytes())
        if options.get("input") != "frame":
            return SklearnPredictor(model, as_frame=False)
        unnamed = array_form(model, signature)
        if unnamed is not None:
            return SklearnPredictor(unnamed, as_frame=False, model=model)
        return SklearnPredictor(model, as_frame=True)

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
    is the most probable class, as scikit-learn's own ``predict`` does for these estimators).

    ``model`` is the estimator as registered; ``estimator`` the one called, which may be its
    :func:`array_form`."""

    def __init__(self, estimator: Any, *, as_frame: bool, model: Any = None) -> None:
        self.estimator = estimator
        self.model = estimator if model is None else model
        self.as_frame = as_frame
        self.classes = getattr(estimator, "classes_", None)
        self.has_proba = self.classes is not None and hasattr(estimator, "predict_proba")

    def predict(self, batch: pd.DataFrame) -> Outputs:
        return predict_with(self.estimator, batch if self.as_frame else batch.to_numpy())


def predict_with(estimator: Any, x: Any) -> Outputs:
    classes = getattr(estimator, "classes_", None)
    if classes is not None and hasattr(estimator, "predict_proba"):
        proba = np.asarray(estimator.predict_proba(x), dtype=np.float64)
        return {"label": np.asarray(classes)[proba.argmax(axis=1)], "probabilities": proba}
    result = np.asarray(estimator.predict(x))
    return {"label" if classes is not None else "prediction": result}


# Steps that may pick columns by name, or run code of the user's that might.
_NAMED_COLUMN_STEPS = ("ColumnTransformer", "FunctionTransformer")


def array_form(model: Any, signature: Signature) -> Any | None:
    """The estimator as it would be had it been fitted on a plain array, when that gives the same
    predictions; else None.

    scikit-learn spends more on a DataFrame than on the model for small batches: a one-row
    ``predict_proba`` of a 100-tree HistGradientBoosting on 30 float columns costs about 1.25 ms
    with a DataFrame and 0.74 ms with its array, the difference being pandas dtype checks and
    the feature-name comparison. Validation has already put the columns in the signature's
    order, which is the fitted order, so the names carry nothing the array lacks. Fitted names
    cannot be switched off (an array makes scikit-learn warn on every call), so the array form
    is a shallow copy (the fitted trees and coefficients are shared) whose first step forgets
    them. Only estimators that cannot need names qualify: every input numeric, the fitted names
    equal to the signature's, no step that may select columns by name; and a parity check on a
    sample drawn from the signature must give identical outputs both ways.
    """
    names = [f.name for f in signature.inputs]
    if signature.kind != "tabular" or any(f.dtype not in NUMERIC for f in signature.inputs):
        return None
    if [str(n) for n in getattr(model, "feature_names_in_", ())] != names:
        return None
    if any(type(step).__name__ in _NAMED_COLUMN_STEPS for step in _estimators(model)):
        return None
    unnamed = _without_names(model)
    if unnamed is None:
        return None
    sample = _sample(signature)
    try:
        framed = predict_with(model, pd.DataFrame(sample, columns=names))
        plain = predict_with(unnamed, sample)
    except Exception:  # the parity check is a probe: any failure keeps the DataFrame path
        return None
    return unnamed if _same(framed, plain) else None


def _same(a: Outputs, b: Outputs) -> bool:
    """Labels identical; numbers equal but for the last bits (a frame's columns and its array
    may reach BLAS in another memory order, which changes the order of a sum)."""
    if a.keys() != b.keys():
        return False
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.dtype.kind == "f":
            if not np.allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def _estimators(model: Any) -> list[Any]:
    found = [model]
    if hasattr(model, "get_params"):
        found += [v for v in model.get_params(deep=True).values() if hasattr(v, "get_params")]
    return found


def _without_names(model: Any) -> Any | None:
    """A shallow copy whose first step has no ``feature_names_in_``; None if the names sit
    somewhere this does not know."""
    import copy

    steps = getattr(model, "steps", None)
    if isinstance(steps, list) and steps:
        first = _without_names(steps[0][1])
        if first is None:
            return None
        pipeline = copy.copy(model)
        pipeline.steps = [(steps[0][0], first), *steps[1:]]
        return pipeline
    if "feature_names_in_" not in vars(model):
        return None
    unnamed = copy.copy(model)
    del unnamed.feature_names_in_
    return unnamed


def _sample(signature: Signature, rows: int = 64) -> np.ndarray[Any, Any]:
    """Rows at several scales (0.1 to 1,000), kept in each feature's declared range and dtype."""
    rng = np.random.default_rng(0)
    scales = np.resize([0.1, 1.0, 10.0, 1e3], rows)
    columns = []
    for feature in signature.inputs:
        values = rng.normal(0.0, scales)
        lo, hi = feature.minimum, feature.maximum
        if lo is not None or hi is not None:
            values = np.clip(values, lo, hi)
        if feature.dtype.startswith(("int", "uint")):
            values = np.round(values)
            if feature.dtype.startswith("uint"):
                values = np.abs(values)
        columns.append(values.astype(feature.dtype))
    return np.column_stack(columns)


FLAVOR = SklearnFlavor()
