from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx as onnx
import onnxruntime  # noqa: F401
import pandas as pd
import pytest
import skl2onnx as skl2onnx
from sklearn import datasets as sklearn_datasets
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from berth.app import Berth
from berth.errors import InvalidInputError, MissingExtraError
from berth.flavors import detect_flavor
from berth.flavors.onnx import FLAVOR
from berth.registry.signature import Output, infer_signature


def _data(n_classes: int = 2) -> tuple[pd.DataFrame, np.ndarray]:
    x, y = sklearn_datasets.make_classification(
        n_samples=200,
        n_features=5,
        n_informative=3,
        n_redundant=0,
        n_classes=n_classes,
        random_state=0,
    )
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(5)])
    return frame, y


def _convert(model: Any, sample: Any, zipmap: bool = False) -> Any:
    options = None if zipmap else {id(model): {"zipmap": False}}
    return skl2onnx.to_onnx(model, sample, options=options)


@pytest.mark.parametrize(
    "estimator",
    [LogisticRegression(max_iter=500), RandomForestClassifier(n_estimators=10, random_state=0)],
    ids=["logistic", "forest"],
)
def test_matrix_input_round_trips_through_the_registry(client: Berth, estimator: Any) -> None:
    # skl2onnx cannot convert HistGradientBoostingClassifier with scikit-learn 1.9 (it builds a
    # TreeEnsembleClassifier node onnx rejects), so a random forest stands in for trees.
    frame, y = _data(n_classes=3)
    model = estimator.fit(frame.to_numpy(), y)
    proto = _convert(model, frame.to_numpy()[:1])
    assert detect_flavor(proto) is FLAVOR
    assert FLAVOR.signature(proto) is None  # one [N, 5] matrix names no features

    version = client.register(proto, "onnx-matrix", training_data=frame)
    probabilities = next(o for o in version.signature.outputs if o.name == "probabilities")
    assert probabilities.classes == (0, 1, 2)
    out = client.load(version.ref).predict(frame)

    np.testing.assert_array_equal(out["label"], model.predict(frame.to_numpy()))
    np.testing.assert_allclose(
        out["probabilities"], model.predict_proba(frame.to_numpy()), rtol=1e-4, atol=1e-6
    )


def test_per_feature_inputs_declare_the_signature(client: Berth) -> None:
    frame, y = _data()
    frame["f4"] = (frame["f4"] > 0).astype(np.int64)
    scaled = ["f0", "f1", "f2", "f3"]
    model = make_pipeline(
        ColumnTransformer([("s", StandardScaler(), scaled), ("p", "passthrough", ["f4"])]),
        LogisticRegression(),
    ).fit(frame, y)
    proto = _convert(model, frame[:1])

    declared = FLAVOR.signature(proto)
    assert declared is not None
    assert [(f.name, f.dtype) for f in declared.inputs] == [
        *((n, "float32") for n in scaled),
        ("f4", "int64"),
    ]

    version = client.register(proto, "onnx-columns")  # no training data needed
    out = client.load(version.ref).predict(frame.to_dict(orient="records"))
    np.testing.assert_array_equal(out["label"], model.predict(frame))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame), rtol=1e-4)


def test_zipmap_output_becomes_a_probability_matrix(client: Berth) -> None:
    frame, y = _data()
    model = LogisticRegression().fit(frame.to_numpy(), np.array(["no", "yes"])[y])
    proto = _convert(model, frame.to_numpy()[:1], zipmap=True)
    assert {o.name for o in proto.graph.output} == {"output_label", "output_probability"}

    version = client.register(proto, "onnx-zipmap", training_data=frame)
    assert version.signature.outputs[0].classes == ("no", "yes")
    out = client.load(version.ref).predict(frame)

    assert out["label"].tolist() == model.predict(frame.to_numpy()).tolist()
    assert out["probabilities"].shape == (len(frame), 2)
    np.testing.assert_allclose(
        out["probabilities"], model.predict_proba(frame.to_numpy()), rtol=1e-4
    )


def test_read_a_file_saved_by_onnx(tmp_path: Path, client: Berth) -> None:
    frame, y = _data()
    model = LogisticRegression().fit(frame.to_numpy(), y)
    onnx.save_model(_convert(model, frame.to_numpy()[:1]), str(tmp_path / "clf.onnx"))

    proto = FLAVOR.read(tmp_path / "clf.onnx", trusted=False)
    version = client.register(proto, "onnx-read", training_data=frame)
    out = client.load(version.ref).predict(frame)
    np.testing.assert_array_equal(out["label"], model.predict(frame.to_numpy()))
    np.testing.assert_allclose(
        out["probabilities"], model.predict_proba(frame.to_numpy()), rtol=1e-4
    )


def test_read_rejects_what_is_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf\xff" * 4)
    with pytest.raises(InvalidInputError, match="not a readable ONNX model"):
        FLAVOR.read(tmp_path / "junk.onnx", trusted=False)
    with pytest.raises(InvalidInputError, match=r"ends in \.onnx"):
        FLAVOR.read(tmp_path / "model.pb", trusted=False)


def test_a_signature_that_does_not_fit_the_matrix_fails_at_load(tmp_path: Path) -> None:
    frame, y = _data()
    model = LogisticRegression().fit(frame.to_numpy(), y)
    path = _saved(_convert(model, frame.to_numpy()[:1]), tmp_path)
    with pytest.raises(InvalidInputError, match="takes 5 features but the signature has 4"):
        FLAVOR.load(path, {}, infer_signature(frame.drop(columns="f4")))


def test_large_graphs_keep_their_weights_in_a_side_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import berth.flavors.onnx as module

    monkeypatch.setattr(module, "_EXTERNAL_ABOVE", 0)
    weights = np.random.default_rng(0).normal(size=(5, 300)).astype(np.float32)
    proto = _matmul_graph(weights)
    before = proto.SerializeToString()
    path = _saved(proto, tmp_path)

    assert proto.SerializeToString() == before  # the caller's graph is untouched
    assert (path / "model.onnx.data").stat().st_size >= weights.nbytes
    frame, _ = _data()
    signature = infer_signature(frame)
    assert FLAVOR.outputs(proto, signature) == [
        Output(name="scores", dtype="float32", shape=(-1, 300))
    ]
    out = FLAVOR.load(path, {"threads": 2}, signature).predict(frame)
    np.testing.assert_allclose(out["scores"], frame.to_numpy() @ weights, rtol=1e-4, atol=1e-5)


def _matmul_graph(weights: np.ndarray) -> Any:
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["scores"])],
        "matmul",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [None, weights.shape[0]])],
        [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [None, weights.shape[1]])],
        initializer=[onnx.numpy_helper.from_array(weights, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_matches_only_model_protos() -> None:
    assert not FLAVOR.matches(LogisticRegression())
    assert not FLAVOR.matches(b"onnx")


def _saved(proto: Any, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    FLAVOR.save(proto, path, trusted=False)
    return path


def test_a_missing_framework_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails
    with pytest.raises(MissingExtraError, match=r"berth\[onnx\]"):
        FLAVOR.read(tmp_path / "model.onnx", trusted=False)
