"""Plain Python classes: cloudpickle, so always trusted; one array or a dict of arrays out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.models import SumModel, numbers

from berth.app import Berth
from berth.errors import UntrustedArtifactError
from berth.flavors import detect_flavor


class TwoOutputs:
    outputs = ({"name": "total", "dtype": "float64"}, {"name": "bigger", "dtype": "bool"})

    def predict(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        total = frame["a"].to_numpy() + frame["b"].to_numpy()
        return {"total": total, "bigger": frame["a"].to_numpy() > frame["b"].to_numpy()}


def test_needs_trust(client: Berth) -> None:
    with pytest.raises(UntrustedArtifactError, match="trusted=True"):
        client.register(SumModel(), "py", training_data=numbers())


def test_round_trip_with_named_outputs(client: Berth) -> None:
    data = numbers(6)
    v = client.register(TwoOutputs(), "py", training_data=data, trusted=True)
    assert [o.name for o in v.signature.outputs] == ["total", "bigger"]
    out = client.load(v.ref).predict(data)
    np.testing.assert_allclose(out["total"], data["a"] + data["b"])
    np.testing.assert_array_equal(out["bigger"], data["a"] > data["b"])


def test_a_class_defined_in_a_function_round_trips(client: Berth) -> None:
    class Doubler:
        def predict(self, frame: pd.DataFrame) -> np.ndarray:
            return frame["a"].to_numpy() * 2

    v = client.register(Doubler(), "local", training_data=numbers(), trusted=True)
    assert v.flavor == "python"
    assert client.load(v.ref).predict({"a": [1.5], "b": [0.0]})["prediction"].tolist() == [3.0]


def test_detection_falls_back_to_python() -> None:
    assert detect_flavor(SumModel()).name == "python"
