"""Flavors: one module per framework, imported only when a model of that framework is used."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from berth.errors import InvalidInputError

if TYPE_CHECKING:
    from berth.flavors.base import Flavor

# name -> module holding a ``FLAVOR`` instance; modules import their framework lazily.
_MODULES = {
    "sklearn": "berth.flavors.sklearn",
    "onnx": "berth.flavors.onnx",
    "sentence_transformers": "berth.flavors.sentence_transformers",
    "transformers": "berth.flavors.transformers",
    "xgboost": "berth.flavors.xgboost",
    "lightgbm": "berth.flavors.lightgbm",
    "python": "berth.flavors.python",
}
# Detection order: specific frameworks first, the catch-all ``python`` flavor last.
_DETECTION = (
    "sentence_transformers", "transformers", "xgboost", "lightgbm", "onnx", "sklearn", "python"
)  # fmt: skip

FLAVOR_NAMES = tuple(_MODULES)


def get_flavor(name: str) -> Flavor:
    if name not in _MODULES:
        raise InvalidInputError(f"unknown flavor {name!r}; flavors: {', '.join(_MODULES)}")
    flavor: Flavor = importlib.import_module(_MODULES[name]).FLAVOR
    return flavor


def detect_flavor(model: object) -> Flavor:
    for name in _DETECTION:
        flavor = get_flavor(name)
        if flavor.matches(model):
            return flavor
    raise InvalidInputError(
        f"cannot tell the flavor of a {type(model).__module__}.{type(model).__qualname__}: "
        f"give flavor= one of {', '.join(_MODULES)}, or an object with a predict method"
    )


def flavor_for_path(path: Path) -> str:
    """Guess the flavor of a saved model file or folder from its name and contents."""
    if path.is_dir():
        if (path / "config_sentence_transformers.json").exists() or (
            path / "encoder" / "config_sentence_transformers.json"
        ).exists():
            return "sentence_transformers"
        if (path / "config.json").exists():
            return "transformers"
    suffix = path.suffix.lower()
    by_suffix = {
        ".skops": "sklearn",
        ".pkl": "sklearn",
        ".pickle": "sklearn",
        ".joblib": "sklearn",
        ".onnx": "onnx",
        ".ubj": "xgboost",
    }
    if suffix in by_suffix:
        return by_suffix[suffix]
    raise InvalidInputError(
        f"cannot tell the flavor of {path.name!r}: pass --flavor (one of {', '.join(_MODULES)})"
    )


__all__ = ["FLAVOR_NAMES", "detect_flavor", "flavor_for_path", "get_flavor"]
