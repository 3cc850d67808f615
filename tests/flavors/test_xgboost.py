from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from tests.models import classification

from berth.app import Berth
from berth.errors import InvalidInputError, MissingExtraError
from berth.flavors import detect_flavor
from berth.flavors.xgboost import FLAVOR
from berth.registry.signature import infer_signature

_data = classification


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("fmt", ["ubj", "json"])
def test_classifier_round_trips_through_the_registry(
    client: Berth, n_classes: int, fmt: str
) -> None:
    frame, y = _data(n_classes)
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(frame, y)
    assert detect_flavor(model) is FLAVOR

    version = client.register(model, "xgb-clf", training_data=frame, save_options={"format": fmt})
    assert version.flavor_options["estimator"] == "XGBClassifier"
    assert version.flavor_options["file"] == f"model.{fmt}"
    assert version.signature.outputs[1].classes == tuple(range(n_classes))
    out = client.load(version.ref).predict(frame)

    np.testing.assert_array_equal(out["label"], model.predict(frame))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame), rtol=1e-6)


def test_regressor_round_trips_through_the_registry(client: Berth) -> None:
    frame, _ = _data()
    target = frame["f0"] * 2 - frame["f1"]
    model = xgb.XGBRegressor(n_estimators=10, n_jobs=1).fit(frame, target)

    version = client.register(model, "xgb-reg", training_data=frame)
    assert [o.name for o in version.signature.outputs] == ["prediction"]
    out = client.load(version.ref).predict(frame.to_dict(orient="records"))
    np.testing.assert_allclose(out["prediction"], model.predict(frame), rtol=1e-6)


def test_raw_booster_with_a_probability_objective_is_a_classifier(client: Berth) -> None:
    frame, y = _data(3)
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "nthread": 1},
        xgb.DMatrix(frame.to_numpy(), label=y),  # no feature names: the model learns positions
        num_boost_round=5,
    )
    version = client.register(booster, "xgb-booster", training_data=frame)
    assert version.flavor_options["classes"] == [0, 1, 2]
    out = client.load(version.ref).predict(frame)

    expected = booster.predict(xgb.DMatrix(frame.to_numpy()))
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-6)
    np.testing.assert_array_equal(out["label"], expected.argmax(axis=1))


def test_raw_regression_booster_gives_predictions(tmp_path: Path) -> None:
    frame, _ = _data()
    booster = xgb.train(
        {"objective": "reg:squarederror", "nthread": 1},
        xgb.DMatrix(frame, label=frame["f2"]),
        num_boost_round=5,
    )
    options = FLAVOR.save(booster, tmp_path, trusted=False)
    assert "classes" not in options
    out = FLAVOR.load(tmp_path, options, infer_signature(frame)).predict(frame)
    np.testing.assert_allclose(out["prediction"], booster.predict(xgb.DMatrix(frame)), rtol=1e-6)


def test_columns_follow_the_models_order_not_the_signatures(tmp_path: Path) -> None:
    frame, y = _data()
    model = xgb.XGBClassifier(n_estimators=5, n_jobs=1).fit(frame, y)
    options = FLAVOR.save(model, tmp_path, trusted=False)
    reversed_frame = frame[frame.columns[::-1]]
    out = FLAVOR.load(tmp_path, options, infer_signature(reversed_frame)).predict(reversed_frame)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame), rtol=1e-6)
    renamed = frame.rename(columns={"f0": "age"})
    with pytest.raises(InvalidInputError, match="trained on features f0, f1"):
        FLAVOR.load(tmp_path, options, infer_signature(renamed))


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_read_files_saved_by_xgboost(tmp_path: Path, client: Berth, suffix: str) -> None:
    frame, y = _data()
    classifier = xgb.XGBClassifier(n_estimators=5, n_jobs=1).fit(frame, y)
    classifier.save_model(tmp_path / f"clf{suffix}")
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(frame, label=y), 5)
    booster.save_model(tmp_path / f"booster{suffix}")
    regressor = xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(frame, label=y), 5)
    regressor.save_model(tmp_path / f"reg{suffix}")

    read = FLAVOR.read(tmp_path / f"clf{suffix}", trusted=False)
    assert isinstance(read, xgb.XGBClassifier)
    np.testing.assert_allclose(read.predict_proba(frame), classifier.predict_proba(frame))
    # a bare Booster with a probability objective comes back as a classifier of 0 and 1
    wrapped = FLAVOR.read(tmp_path / f"booster{suffix}", trusted=False)
    assert isinstance(wrapped, xgb.XGBClassifier)
    version = client.register(wrapped, "xgb-read", training_data=frame)
    out = client.load(version.ref).predict(frame)
    np.testing.assert_allclose(
        out["probabilities"][:, 1], booster.predict(xgb.DMatrix(frame)), rtol=1e-6
    )
    assert isinstance(FLAVOR.read(tmp_path / f"reg{suffix}", trusted=False), xgb.Booster)


def test_read_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"not": "xgboost"}')
    with pytest.raises(InvalidInputError, match="not an XGBoost model"):
        FLAVOR.read(tmp_path / "model.json", trusted=False)
    with pytest.raises(InvalidInputError, match=r"\.json or \.ubj"):
        FLAVOR.read(tmp_path / "model.pkl", trusted=False)


def test_save_refusals(tmp_path: Path) -> None:
    frame, y = _data()
    model = xgb.XGBClassifier(n_estimators=2, n_jobs=1).fit(frame, y)
    with pytest.raises(InvalidInputError, match="unknown format"):
        FLAVOR.save(model, tmp_path, trusted=False, format="pickle")
    with pytest.raises(InvalidInputError, match="not fitted"):
        FLAVOR.save(xgb.XGBRegressor(), tmp_path, trusted=False)


def test_a_missing_framework_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)  # import xgboost now fails
    with pytest.raises(MissingExtraError, match=r"berth\[xgboost\]"):
        FLAVOR.read(tmp_path / "model.json", trusted=False)
