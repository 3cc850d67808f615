"""sentence-transformers: MiniLM with and without a head, loaded back without sentence-transformers
and giving the same embeddings and probabilities."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from berth.app import Berth
from berth.cli.errors import EXIT_CODES
from berth.cli.main import app
from berth.errors import InvalidInputError, SchemaError, UntrustedArtifactError
from berth.flavors.sentence_transformers import FLAVOR, SentenceClassifier
from berth.registry.service import NewVersion

pytestmark = pytest.mark.text

import torch  # noqa: E402

TEXTS = [
    "The room was spotless and the staff were lovely.",
    "Terrible support, I waited an hour.",
    "ok",
    "A long and winding review that goes on about many things, some good and some bad, "
    "before finally deciding that the overall experience was pleasant enough.",
]
LABELS = ["positive", "negative", "positive", "positive"]


def test_encoder_alone_round_trips(client: Berth, minilm) -> None:
    v = client.register(minilm, "encoder", training_data=TEXTS)
    assert v.flavor == "sentence_transformers"
    assert v.flavor_options["format"] == "transformers"
    assert v.signature.kind == "text"
    assert v.signature.outputs[0].shape == (-1, 384)
    loaded = client.load(v.ref)
    got = loaded.predict(TEXTS)["embedding"]
    want = minilm.encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_classifier_round_trips_and_profiles_embeddings(client: Berth, minilm) -> None:
    model = SentenceClassifier(minilm, head=None, normalize=True)
    model.head = LogisticRegression().fit(model.embed(TEXTS), LABELS)
    v = client.register(model, "sentiment", training_data=TEXTS, metrics={"accuracy": 1.0})
    assert v.signature.outputs[0].classes == ("negative", "positive")
    out = client.load(v.ref).predict({"texts": TEXTS})
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(TEXTS), atol=1e-5)
    np.testing.assert_array_equal(out["label"], model.predict(TEXTS))
    text = client.get_profile(v.ref)["features"]["text"]
    assert text["length_words"]["max"] == max(len(t.split()) for t in TEXTS)
    assert text["embedding"]["dimensions"] == 384
    assert text["embedding"]["sample"] == len(TEXTS)


def test_batching_and_order_do_not_change_results(client: Berth, minilm) -> None:
    v = client.register(minilm, "encoder", training_data=TEXTS)
    loaded = client.load(v.ref)
    together = loaded.predict(TEXTS)["embedding"]
    alone = np.vstack([loaded.predict([t])["embedding"] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-5)


def test_text_model_rejects_non_text(client: Berth, minilm) -> None:
    v = client.register(minilm, "encoder", training_data=TEXTS)
    with pytest.raises(SchemaError, match="feature 'text' expects string"):
        client.load(v.ref).predict({"text": ["fine", 3]})


def test_a_logistic_head_is_stored_as_arrays_and_matches(client: Berth, minilm) -> None:
    model = SentenceClassifier(minilm, head=None, normalize=True)
    model.head = LogisticRegression().fit(model.embed(TEXTS), LABELS)
    v = client.register(model, "sentiment", training_data=TEXTS)
    assert v.flavor_options["head_format"] == "linear"
    folder = client.store.path(v.digest)
    assert (folder / "head.npz").exists()
    assert not (folder / "head.skops").exists()
    out = client.load(v.ref).predict(TEXTS)
    assert out["label"].tolist() == model.predict(TEXTS).tolist()
    assert all(type(label) is str for label in out["label"])


def test_other_heads_stay_skops(client: Berth, minilm) -> None:
    from sklearn.ensemble import RandomForestClassifier

    model = SentenceClassifier(minilm, head=None, normalize=True)
    model.head = RandomForestClassifier(n_estimators=5, random_state=0).fit(
        model.embed(TEXTS), LABELS
    )
    with pytest.raises(UntrustedArtifactError, match=r"sklearn\.tree\._tree\.Tree"):
        client.register(model, "forest", training_data=TEXTS)
    v = client.register(model, "forest", training_data=TEXTS, trusted=True)
    assert v.flavor_options["head_format"] == "skops"
    np.testing.assert_allclose(
        client.load(v.ref).predict(TEXTS)["probabilities"], model.predict_proba(TEXTS)
    )
    # The head's types are sealed in the artifact, not kept in the database.
    assert "head_trusted_types" not in v.flavor_options
    sealed = (client.store.path(v.digest) / "trusted_types.json").read_bytes()
    assert b"sklearn.tree._tree.Tree" in sealed


# -- trust before anything is loaded -----------------------------------------------------------


@pytest.fixture(scope="module")
def saved_minilm(minilm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("st") / "minilm"
    minilm.save(str(folder))
    return folder


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def _pickled_weights(saved_minilm: Path, to: Path, payload: Any) -> Path:
    """The folder as sentence-transformers saves it without safetensors: pytorch_model.bin."""
    folder = _copy(saved_minilm, to)
    (folder / "model.safetensors").unlink()
    torch.save(payload, folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_without_trust_are_refused_in_one_line(
    saved_minilm: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    folder = _pickled_weights(saved_minilm, tmp_path / "evil", _Evil(marker))
    with pytest.raises(UntrustedArtifactError) as refused:
        FLAVOR.read(folder, trusted=False)
    assert str(refused.value).startswith("pytorch_model.bin in evil is a pickle")
    assert "only safetensors load without trust" in str(refused.value)
    # Through the command line: one line, the refusal's exit code, no traceback.
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path / "home"), "models", "register", str(folder), "--name", "x"]
    )
    assert result.exit_code == EXIT_CODES["forbidden"], result.output
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output
    assert "pytorch_model.bin" in result.output
    assert not marker.exists()


def test_trusted_pickled_weights_load_with_weights_only(
    client: Berth, saved_minilm: Path, minilm, tmp_path: Path
) -> None:
    """Trust lets a weights-only torch.load read them: plain tensors load, a pickle that calls
    a function is still refused, in one line."""
    from safetensors.torch import load_file

    weights = load_file(str(saved_minilm / "model.safetensors"))
    folder = _pickled_weights(saved_minilm, tmp_path / "bin", weights)
    read = FLAVOR.read(folder, trusted=True)
    np.testing.assert_allclose(
        read.encode(TEXTS, convert_to_numpy=True), minilm.encode(TEXTS), atol=2e-5
    )
    v = client.register(read, "from-bin", training_data=TEXTS, trusted=True)
    stored = client.store.path(v.digest)
    assert not [p for p in stored.rglob("*.bin")]  # saved back as safetensors
    np.testing.assert_allclose(
        client.load(v.ref).predict(TEXTS)["embedding"], minilm.encode(TEXTS), atol=2e-5
    )
    marker = tmp_path / "ran"
    evil = _pickled_weights(saved_minilm, tmp_path / "evil", _Evil(marker))
    with pytest.raises(InvalidInputError, match="cannot load it: Weights only load failed"):
        FLAVOR.read(evil, trusted=True)
    assert not marker.exists()


def test_modules_from_outside_sentence_transformers_need_trust(
    saved_minilm: Path, tmp_path: Path
) -> None:
    folder = _copy(saved_minilm, tmp_path / "custom")
    modules = orjson.loads((folder / "modules.json").read_bytes())
    modules[1]["type"] = "my_package.MyPooling"
    (folder / "modules.json").write_bytes(orjson.dumps(modules))
    with pytest.raises(UntrustedArtifactError, match=r"modules\.json names modules from outside"):
        FLAVOR.read(folder, trusted=False)
    modules[1]["type"] = "sentence_transformers.models.Pooling"
    modules[1]["path"] = "../../elsewhere"
    (folder / "modules.json").write_bytes(orjson.dumps(modules))
    with pytest.raises(UntrustedArtifactError, match="outside its folder"):
        FLAVOR.read(folder, trusted=False)


def test_an_artifact_holding_a_pickle_is_refused_at_load(
    client: Berth, minilm, tmp_path: Path
) -> None:
    """A version whose artifact holds a pickle (not one Berth saved) and is not trusted is
    refused before any of it is read, whatever its options say."""
    marker = tmp_path / "ran"
    v = client.register(minilm, "encoder", training_data=TEXTS)
    with client.store.staging() as stage:
        shutil.copytree(client.store.path(v.digest), stage, dirs_exist_ok=True)
        (stage / "MANIFEST.json").unlink()
        for part in stage.rglob("*"):
            part.chmod(0o755 if part.is_dir() else 0o644)
        (stage / "encoder" / "model.safetensors").unlink()
        torch.save(_Evil(marker), stage / "encoder" / "pytorch_model.bin")
        artifact = client.store.commit(stage)
    info = client.registry.create_version(
        NewVersion(
            model="encoder",
            digest=artifact.digest,
            size_bytes=artifact.size_bytes,
            flavor="sentence_transformers",
            signature=v.signature,
            flavor_options=v.flavor_options,
        ),
        actor="crafter",
    )
    with pytest.raises(
        UntrustedArtifactError,
        match=r"^encoder/2: encoder/pytorch_model\.bin in its artifact is a pickle.*not registered",
    ):
        client.load(info.ref)
    assert not marker.exists()
