"""Plain Python objects with a ``predict`` method, saved with cloudpickle.

Loading a pickle runs code, so this flavor always needs ``trusted=True``: there is no safe format
for arbitrary Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from berth.errors import InvalidInputError, UntrustedArtifactError
from berth.flavors.base import Flavor
from berth.registry.signature import Output, Signature
from berth.types import Outputs, Predictor

_FILE = "model.cloudpickle"


class PythonFlavor(Flavor):
    name = "python"
    extra = "python"
    packages = ("cloudpickle",)

    def matches(self, model: object) -> bool:
        return callable(getattr(model, "predict", None))

    def save(self, model: object, path: Path, *, trusted: bool) -> dict[str, Any]:
        if not trusted:
            raise UntrustedArtifactError(
                "the python flavor saves with cloudpickle, which runs code on load: "
                "register with trusted=True"
            )
        import cloudpickle

        (path / _FILE).write_bytes(cloudpickle.dumps(model))
        return {"serializer": "cloudpickle"}

    def requires_trust(self, options: dict[str, Any]) -> bool:
        return True

    def load(self, path: Path, options: dict[str, Any], signature: Signature) -> Predictor:
        import cloudpickle

        return PythonPredictor(cloudpickle.loads((path / _FILE).read_bytes()))

    def outputs(self, model: object, signature: Signature) -> list[Output]:
        declared = getattr(model, "outputs", None)
        if declared is None:
            return [Output(name="prediction", dtype="float64")]
        return [o if isinstance(o, Output) else Output.model_validate(o) for o in declared]


class PythonPredictor:
    """The object's ``predict(frame)`` may return one array (named ``prediction``) or a dict of
    named arrays."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, batch: pd.DataFrame) -> Outputs:
        result = self.model.predict(batch)
        if isinstance(result, dict):
            return {str(k): np.asarray(v) for k, v in result.items()}
        if isinstance(result, pd.DataFrame):
            return {str(c): result[c].to_numpy() for c in result.columns}
        array = np.asarray(result)
        if array.ndim == 0:
            raise InvalidInputError("the model's predict returned a scalar, not one value per row")
        return {"prediction": array}


FLAVOR = PythonFlavor()
