"""sentence-transformers: MiniLM with and without a head, loaded back without sentence-transformers
and giving the same embeddings and probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from berth.app import Berth
from berth.errors import SchemaError, UntrustedArtifactError
from berth.flavors.sentence_transformers import SentenceClassifier

pytestmark = pytest.mark.text

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
