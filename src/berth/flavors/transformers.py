"""Hugging Face text classifiers: a sequence-classification model plus its tokenizer.

Saved with ``save_pretrained`` (safetensors: no code runs on load) and loaded from the artifact
folder only, never from a hub. Probabilities stay float32, the precision the model computes in;
casting to float64 would only pretend to more.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import BerthError, InvalidInputError, UntrustedArtifactError
from berth.flavors.base import Flavor, TextFlavor, classifier_outputs, unreadable
from berth.registry.profile import Embedder
from berth.registry.signature import TEXT_INPUT, Output, Signature
from berth.types import Outputs, Predictor

_CONFIG = "config.json"


@dataclass
class TextClassifier:
    """A ``*ForSequenceClassification`` model with the tokenizer it was trained with.

    ``max_length`` truncates long texts (in tokens); ``batch_size`` bounds how many texts go
    through the model at once, which bounds memory on large batches.
    """

    model: Any
    tokenizer: Any
    max_length: int = 256
    batch_size: int = 32

    @property
    def labels(self) -> npt.NDArray[np.object_]:
        """Class names in id order, as strings (``config.id2label``)."""
        id2label = self.model.config.id2label
        return np.array([str(id2label[i]) for i in range(len(id2label))], dtype=object)

    def predict_proba(self, texts: list[str]) -> npt.NDArray[np.float32]:
        import torch

        parts = []
        with _evaluating(self.model), torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                logits = self.model(**self._encode(texts[start : start + self.batch_size])).logits
                parts.append(torch.softmax(logits.float(), dim=-1).numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Mean of the last hidden layer over real tokens: what the reference profile keeps."""
        import torch

        parts = []
        with _evaluating(self.model), torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                encoded = self._encode(texts[start : start + self.batch_size])
                hidden = self.model(**encoded, output_hidden_states=True).hidden_states[-1]
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                parts.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _encode(self, texts: list[str]) -> Any:
        limit = getattr(self.model.config, "max_position_embeddings", None) or self.max_length
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=min(self.max_length, limit),
            return_tensors="pt",
        )


class TransformersFlavor(TextFlavor):
    name = "transformers"
    extra = "text"

    packages = ("transformers", "torch", "tokenizers", "safetensors")

    def matches(self, model: object) -> bool:
        # Any transformers object: a bare model without its tokenizer is matched too, so that
        # save() can say what is missing instead of detection failing with a vaguer message.
        return isinstance(model, TextClassifier) or type(model).__module__.startswith(
            "transformers."
        )

    def save(
        self,
        model: object,
        path: Path,
        *,
        trusted: bool,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        classifier = _classifier(model)
        classifier = replace(
            classifier,
            max_length=classifier.max_length if max_length is None else max_length,
            batch_size=classifier.batch_size if batch_size is None else batch_size,
        )
        if classifier.max_length < 1 or classifier.batch_size < 1:
            raise InvalidInputError("max_length and batch_size must be at least 1")
        classifier.model.save_pretrained(str(path))
        classifier.tokenizer.save_pretrained(str(path))
        return {"max_length": classifier.max_length, "batch_size": classifier.batch_size}

    def read(self, source: Path, *, trusted: bool) -> object:
        if not (source / _CONFIG).is_file():
            raise InvalidInputError(f"{source} is not a save_pretrained folder (no {_CONFIG})")
        safe = any(source.glob("*.safetensors"))
        if not safe and not trusted:
            raise UntrustedArtifactError(
                f"{source} holds PyTorch pickles, not safetensors: pass --trusted only if you "
                "trust where they came from"
            )
        try:
            return _load(self, source, safetensors=safe)
        except BerthError:
            raise
        except Exception as exc:  # a user's folder: whatever transformers or torch raise
            raise unreadable(source, "transformers", exc) from exc

    def load(self, path: Path, options: dict[str, Any], signature: Signature) -> Predictor:
        classifier = _load(self, path, safetensors=True)
        classifier.max_length = int(options.get("max_length", classifier.max_length))
        classifier.batch_size = int(options.get("batch_size", classifier.batch_size))
        return TransformersPredictor(classifier)

    def signature(self, model: object) -> Signature:
        return Signature.for_text()

    def outputs(self, model: object, signature: Signature) -> list[Output]:
        return classifier_outputs(_classifier(model).labels, probability_dtype="float32")

    def embedder(self, model: object) -> Embedder:
        return _classifier(model).embed


class TransformersPredictor:
    def __init__(self, classifier: TextClassifier) -> None:
        self.classifier = classifier
        self.labels = classifier.labels

    def predict(self, batch: pd.DataFrame) -> Outputs:
        proba = self.classifier.predict_proba(batch[TEXT_INPUT].tolist())
        return {"label": self.labels[proba.argmax(axis=1)], "probabilities": proba}


def _classifier(model: object) -> TextClassifier:
    """A TextClassifier from itself or a text-classification pipeline; anything else is refused."""
    if isinstance(model, TextClassifier):
        found = model
    elif getattr(model, "task", None) in ("text-classification", "sentiment-analysis"):
        found = TextClassifier(model.model, model.tokenizer)  # type: ignore[attr-defined]
    else:
        raise InvalidInputError(
            f"the transformers flavor takes a text-classification pipeline or "
            f"TextClassifier(model, tokenizer), not a {type(model).__name__}"
        )
    config = getattr(found.model, "config", None)
    if config is None or not getattr(config, "id2label", None) or found.tokenizer is None:
        raise InvalidInputError(
            "the model needs a config with id2label and a tokenizer to be served as a classifier"
        )
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(found.tokenizer) > vocab:
        raise InvalidInputError(
            f"the tokenizer knows {len(found.tokenizer)} tokens but the model only {vocab}: "
            "they were not trained together"
        )
    return found


def _load(flavor: Flavor, folder: Path, *, safetensors: bool) -> TextClassifier:
    transformers = flavor.import_module("transformers")
    flavor.import_module("torch")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=safetensors
    )
    model.eval()
    return TextClassifier(model, tokenizer)


@contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """Dropout off while predicting, and the caller's model left in the mode it was in."""
    training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


FLAVOR = TransformersFlavor()
