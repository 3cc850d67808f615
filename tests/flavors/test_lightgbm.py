from __future__ import annotations

import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from tests.models import classification

from berth.app import Berth
from berth.errors import InvalidInputError, MissingExtraError
from berth.flavors import detect_flavor
from berth.flavors.lightgbm import FLAVOR
from berth.registry.signature import infer_signature

_data = classification


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_round_trips_through_the_registry(client: Berth, n_classes: int) -> None:
    frame, y = _data(n_classes)
    labels = np.array(["ant", "bee", "cat"])[y]  # string classes survive through the options
    model = lgb.LGBMClassifier(n_estimators=10, num_leaves=7, n_jobs=1, verbose=-1)
    model.fit(frame, labels)
    assert detect_flavor(model) is FLAVOR

    version = client.register(model, "lgbm-clf", training_data=frame)
    options = version.flavor_options
    assert options["classes"] == ["ant", "bee", "cat"][:n_classes]
    assert options["objective"] == ("binary" if n_classes == 2 else "multiclass")
    assert options["num_threads"] == 1
    out = client.load(version.ref).predict(frame)

    assert out["label"].tolist() == model.predict(frame).tolist()
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame), rtol=1e-9)


def test_regressor_round_trips_through_the_registry(client: Berth) -> None:
    frame, _ = _data()
    model = lgb.LGBMRegressor(n_estimators=10, n_jobs=1, verbose=-1)
    model.fit(frame, frame["f0"] * 2 - frame["f1"])

    version = client.register(model, "lgbm-reg", training_data=frame)
    assert [o.name for o in version.signature.outputs] == ["prediction"]
    out = client.load(version.ref).predict(frame.to_dict(orient="records"))
    np.testing.assert_allclose(out["prediction"], model.predict(frame), rtol=1e-9)


def test_categorical_features_are_served_from_strings(client: Berth) -> None:
    frame, y = _data()
    colour = np.array(["red", "green", "blue"])[np.arange(len(frame)) % 3]
    frame["colour"] = pd.Categorical(colour)
    y = np.where(colour == "red", 1 - y, y)  # make the category matter
    model = lgb.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1, min_child_samples=5)
    model.fit(frame, y)

    version = client.register(model, "lgbm-cat", training_data=frame)
    assert version.signature.feature("colour").categories == ("blue", "green", "red")
    records = frame.astype({"colour": object}).to_dict(orient="records")
    out = client.load(version.ref).predict(records)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame), rtol=1e-9)


def test_raw_booster_with_a_classifier_objective(client: Berth) -> None:
    frame, y = _data(3)
    booster = lgb.train(
        {"objective": "softmax", "num_class": 3, "verbose": -1, "num_threads": 1},  # an alias
        lgb.Dataset(frame.to_numpy(), label=y),  # no names: features are Column_0...
        num_boost_round=5,
    )
    version = client.register(booster, "lgbm-booster", training_data=frame)
    assert version.flavor_options["classes"] == [0, 1, 2]
    assert version.flavor_options["objective"] == "multiclass"
    out = client.load(version.ref).predict(frame)

    expected = booster.predict(frame.to_numpy())
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-9)
    np.testing.assert_array_equal(out["label"], expected.argmax(axis=1))


def test_read_a_file_saved_by_lightgbm(tmp_path: Path) -> None:
    frame, y = _data()
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(frame, label=y), 5)
    booster.save_model(tmp_path / "model.txt")

    read = FLAVOR.read(tmp_path / "model.txt", trusted=False)
    assert isinstance(read, lgb.Booster)
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    options = FLAVOR.save(read, artifact, trusted=False)
    assert options["classes"] == [0, 1]
    out = FLAVOR.load(artifact, options, infer_signature(frame)).predict(frame)
    expected = booster.predict(frame)
    np.testing.assert_allclose(out["probabilities"], np.column_stack([1 - expected, expected]))


def test_columns_follow_the_models_order_not_the_signatures(tmp_path: Path) -> None:
    frame, y = _data()
    model = lgb.LGBMClassifier(n_estimators=5, n_jobs=1, verbose=-1).fit(frame, y)
    options = FLAVOR.save(model, tmp_path, trusted=False)
    reversed_frame = frame[frame.columns[::-1]]
    out = FLAVOR.load(tmp_path, options, infer_signature(reversed_frame)).predict(reversed_frame)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame), rtol=1e-9)


def test_refusals(tmp_path: Path) -> None:
    (tmp_path / "junk.txt").write_text("not a model\n")
    with pytest.raises(InvalidInputError, match="not a LightGBM model"):
        FLAVOR.read(tmp_path / "junk.txt", trusted=False)
    with pytest.raises(InvalidInputError, match=r"ends in \.txt"):
        FLAVOR.read(tmp_path / "model.pkl", trusted=False)
    with pytest.raises(InvalidInputError, match="not fitted"):
        FLAVOR.save(lgb.LGBMClassifier(), tmp_path, trusted=False)


def test_a_missing_framework_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # import lightgbm now fails
    with pytest.raises(MissingExtraError, match=r"berth\[lightgbm\]"):
        FLAVOR.read(tmp_path / "model.txt", trusted=False)
