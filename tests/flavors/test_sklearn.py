"""scikit-learn: skops by default, pickle and joblib only when trusted; identical predictions."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from berth.app import Berth
from berth.errors import UntrustedArtifactError
from berth.flavors import detect_flavor, get_flavor


@pytest.fixture
def tabular() -> tuple[pd.DataFrame, np.ndarray]:
    x, y = make_classification(n_samples=300, n_features=4, random_state=0)
    frame = pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"])
    frame["colour"] = np.where(x[:, 0] > 0, "red", "blue").astype(object)
    return frame, y


def _pipeline(frame: pd.DataFrame, y: np.ndarray):
    encode = make_column_transformer((OneHotEncoder(), ["colour"]), remainder="passthrough")
    return make_pipeline(encode, LogisticRegression(max_iter=500)).fit(frame, y)


def test_pipeline_round_trips_through_the_registry(client: Berth, tabular) -> None:
    frame, y = tabular
    model = _pipeline(frame, y)
    v = client.register(model, "pipe", training_data=frame)
    assert v.flavor == "sklearn"
    assert v.flavor_options["serializer"] == "skops"
    assert v.trusted is False
    out = client.load(v.ref).predict(frame)
    np.testing.assert_array_equal(out["label"], model.predict(frame))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame))
    assert [o.name for o in v.signature.outputs] == ["label", "probabilities"]
    assert v.signature.outputs[1].classes == (0, 1)


def test_hist_gradient_boosting_needs_no_trust(client: Berth, tabular) -> None:
    frame, y = tabular
    numeric = frame.drop(columns="colour")
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(numeric, y)
    v = client.register(model, "hgb", training_data=numeric)
    np.testing.assert_allclose(
        client.load(v.ref).predict(numeric)["probabilities"], model.predict_proba(numeric)
    )


def test_model_trained_on_arrays_gets_arrays(client: Berth, tabular) -> None:
    frame, y = tabular
    numeric = frame.drop(columns="colour")
    model = LogisticRegression().fit(numeric.to_numpy(), y)
    v = client.register(model, "arrays", training_data=numeric)
    assert v.flavor_options["input"] == "array"
    np.testing.assert_array_equal(
        client.load(v.ref).predict(numeric)["label"], model.predict(numeric.to_numpy())
    )


def test_regressor_outputs_prediction(client: Berth) -> None:
    x, y = make_regression(n_samples=50, n_features=3, random_state=0)
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    model = LinearRegression().fit(frame, y)
    v = client.register(model, "reg", training_data=frame)
    np.testing.assert_allclose(
        client.load(v.ref).predict(frame)["prediction"], model.predict(frame)
    )


@pytest.mark.parametrize("serializer", ["pickle", "joblib"])
def test_pickle_formats_need_trust_and_are_recorded(client: Berth, tabular, serializer) -> None:
    frame, y = tabular
    model = _pipeline(frame, y)
    with pytest.raises(UntrustedArtifactError, match="trusted=True"):
        client.register(model, "p", training_data=frame, save_options={"serializer": serializer})
    assert client.list_models() == []
    v = client.register(
        model, "p", training_data=frame, trusted=True, save_options={"serializer": serializer}
    )
    assert v.trusted is True
    assert v.flavor_options["serializer"] == serializer
    np.testing.assert_allclose(
        client.load(v.ref).predict(frame)["probabilities"], model.predict_proba(frame)
    )


def test_untrusted_types_are_named(client: Berth, tabular) -> None:
    frame, y = tabular

    class Custom(LogisticRegression):
        pass

    Custom.__module__ = "sklearn.custom_for_test"
    model = Custom().fit(frame.drop(columns="colour"), y)
    with pytest.raises(UntrustedArtifactError, match="Custom"):
        get_flavor("sklearn").save(model, Path("/nonexistent"), trusted=False)


def test_read_refuses_a_pickle_without_trust(tmp_path: Path, tabular) -> None:
    frame, y = tabular
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_pipeline(frame, y)))
    flavor = get_flavor("sklearn")
    with pytest.raises(UntrustedArtifactError, match="--trusted"):
        flavor.read(path, trusted=False)
    assert hasattr(flavor.read(path, trusted=True), "predict_proba")


def test_read_a_skops_file(tmp_path: Path, tabular) -> None:
    import skops.io

    frame, y = tabular
    model = _pipeline(frame, y)
    skops.io.dump(model, tmp_path / "model.skops")
    loaded = get_flavor("sklearn").read(tmp_path / "model.skops", trusted=False)
    np.testing.assert_allclose(loaded.predict_proba(frame), model.predict_proba(frame))


def test_detection(tabular) -> None:
    frame, y = tabular
    assert detect_flavor(_pipeline(frame, y)).name == "sklearn"


def test_unknown_save_option_is_named(client: Berth, tabular) -> None:
    from berth.errors import InvalidInputError

    frame, y = tabular
    with pytest.raises(InvalidInputError, match=r"no save option 'bogus'; it takes: serializer"):
        client.register(_pipeline(frame, y), "p", training_data=frame, save_options={"bogus": 1})


def _loaded(client: Berth, ref: str):
    return client.load(ref).predictor


def test_numeric_model_fitted_on_a_frame_is_called_with_its_array(client: Berth, tabular) -> None:
    """The served estimator is an unnamed shallow copy: same answers, no per-call DataFrame
    checks, no warning (the suite turns warnings into errors), the registered model untouched."""
    frame, y = tabular
    numeric = frame.drop(columns="colour")
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(numeric, y)
    v = client.register(model, "hgb", training_data=numeric)
    predictor = _loaded(client, v.ref)
    assert predictor.as_frame is False
    assert not hasattr(predictor.estimator, "feature_names_in_")
    assert list(predictor.model.feature_names_in_) == ["f0", "f1", "f2", "f3"]
    assert predictor.estimator._predictors is predictor.model._predictors  # trees shared
    out = client.load(v.ref).predict(numeric)
    np.testing.assert_array_equal(out["probabilities"], model.predict_proba(numeric))
    np.testing.assert_array_equal(out["label"], model.predict(numeric))


def test_a_pipeline_forgets_names_in_its_first_step_only(client: Berth, tabular) -> None:
    from sklearn.preprocessing import StandardScaler

    frame, y = tabular
    numeric = frame.drop(columns="colour")
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(numeric, y)
    v = client.register(model, "scaled", training_data=numeric)
    predictor = _loaded(client, v.ref)
    assert predictor.as_frame is False
    assert not hasattr(predictor.estimator, "feature_names_in_")
    assert hasattr(model, "feature_names_in_")  # the caller's model is not changed
    np.testing.assert_allclose(
        client.load(v.ref).predict(numeric)["probabilities"], model.predict_proba(numeric)
    )


def test_models_that_may_need_names_keep_the_frame(client: Berth, tabular) -> None:
    frame, y = tabular
    v = client.register(_pipeline(frame, y), "pipe", training_data=frame)
    assert _loaded(client, v.ref).as_frame is True  # a category column
    numeric = frame.drop(columns="colour")
    by_name = make_pipeline(
        make_column_transformer(("passthrough", ["f0", "f1"]), remainder="drop"),
        LogisticRegression(),
    ).fit(numeric, y)
    v = client.register(by_name, "picked", training_data=numeric)
    assert _loaded(client, v.ref).as_frame is True  # a step selects columns by name
    np.testing.assert_allclose(
        client.load(v.ref).predict(numeric)["probabilities"], by_name.predict_proba(numeric)
    )


def test_array_form_needs_the_signatures_order_and_identical_answers(tabular) -> None:
    from berth.flavors.sklearn import array_form
    from berth.registry.signature import infer_signature

    frame, y = tabular
    numeric = frame.drop(columns="colour")
    model = LogisticRegression().fit(numeric, y)
    signature = infer_signature(numeric)
    assert array_form(model, signature) is not None
    reordered = infer_signature(numeric[["f3", "f2", "f1", "f0"]])
    assert array_form(model, reordered) is None

    class Liar(LogisticRegression):  # answers differently for arrays: the parity check sees it
        def predict_proba(self, x):
            proba = super().predict_proba(x)
            return proba if isinstance(x, pd.DataFrame) else proba[:, ::-1]

    liar = Liar().fit(numeric, y)
    assert array_form(liar, signature) is None
