"""sentence-transformers encoders, alone (text in, embedding out) or with a classification head
(text in, label and probabilities out). Loaded from the artifact folder only: never from a hub."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd

from berth.errors import BerthError, InvalidInputError, UntrustedArtifactError
from berth.flavors import text_encoder
from berth.flavors.base import Flavor, TextFlavor, classifier_outputs, pickled_files, unreadable
from berth.flavors.linear_head import LinearHead
from berth.flavors.sklearn import import_skops, load_skops, save_skops, skops_types
from berth.registry.profile import Embedder
from berth.registry.signature import TEXT_INPUT, Output, Signature
from berth.types import Outputs, Predictor

_ENCODER = "encoder"
_HEAD = "head.skops"
_MARKER = "config_sentence_transformers.json"


@dataclass
class SentenceClassifier:
    """An encoder plus a scikit-learn classifier trained on its embeddings.

    ``normalize`` must match how the head's training embeddings were made.
    """

    encoder: Any
    head: Any
    normalize: bool = True
    batch_size: int = 64

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return np.asarray(  # type: ignore[no-any-return]
            self.encoder.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=self.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )

    def predict_proba(self, texts: list[str]) -> npt.NDArray[np.float64]:
        return np.asarray(self.head.predict_proba(self.embed(texts)), dtype=np.float64)

    def predict(self, texts: list[str]) -> npt.NDArray[Any]:
        best = self.predict_proba(texts).argmax(axis=1)
        return np.asarray(self.head.classes_)[best]  # type: ignore[no-any-return]


class SentenceTransformersFlavor(TextFlavor):
    name = "sentence_transformers"
    extra = "text"

    packages = ("sentence-transformers", "transformers", "torch", "tokenizers")

    def matches(self, model: object) -> bool:
        return isinstance(model, SentenceClassifier) or type(model).__module__.startswith(
            "sentence_transformers."
        )

    def save(self, model: object, path: Path, *, trusted: bool) -> dict[str, Any]:
        if isinstance(model, SentenceClassifier):
            encoder, head = model.encoder, model.head
            options: dict[str, Any] = {"normalize": model.normalize, "batch_size": model.batch_size}
        else:
            encoder, head = model, None
            options = {"normalize": False, "batch_size": 64}
        quiet_transformers()
        config = text_encoder.describe(encoder)
        if config is not None:
            text_encoder.save(encoder, config, path / _ENCODER)
            options["format"] = "transformers"
        else:
            encoder.save(str(path / _ENCODER))
            options["format"] = "sentence-transformers"
        # The encoder's own Normalize module already makes unit vectors.
        options["normalize"] = options["normalize"] and not (config and config.normalize)
        linear = LinearHead.from_estimator(head) if head is not None else None
        if linear is not None:
            linear.save(path)
            options["head_format"] = "linear"
        elif head is not None:
            data = import_skops(self).dumps(head)
            save_skops(self, path, _HEAD, data, trusted=trusted)
            options["head_format"] = "skops"
        return options

    def read(self, source: Path, *, trusted: bool) -> object:
        if not (source / _MARKER).exists() and not (source / _ENCODER / _MARKER).exists():
            raise InvalidInputError(
                f"{source} is not a sentence-transformers folder (no {_MARKER})"
            )
        if not trusted:  # before anything of the folder is read: nothing of it may run code
            untrusted_parts(source)
        encoder_dir = source / _ENCODER if (source / _ENCODER).is_dir() else source
        try:
            encoder = _load_encoder(self, encoder_dir, trusted=trusted)
        except BerthError:
            raise
        except Exception as exc:  # a user's folder: whatever sentence-transformers or torch raise
            raise unreadable(source, "sentence-transformers", exc) from exc
        if (source / _HEAD).exists():
            data = (source / _HEAD).read_bytes()
            needed = skops_types(self, data, trusted=trusted, what=_HEAD, hint="pass --trusted")
            return SentenceClassifier(encoder, import_skops(self).loads(data, trusted=needed))
        return encoder

    def check_trust(self, path: Path, options: dict[str, Any], *, trusted: bool) -> None:
        """A pickled weight file, or a module class sentence-transformers would import from
        outside itself, needs a trusted version: the same rule as :meth:`read`."""
        if not trusted:
            untrusted_parts(path, stored=True)

    def load(self, path: Path, options: dict[str, Any], signature: Signature) -> Predictor:
        if options.get("format") == "transformers":
            encoder: Any = _FastEncoder(text_encoder.TransformerEncoder(path / _ENCODER))
        else:
            # Safetensors only: Berth saved this artifact, and it writes no pickles.
            encoder = _load_encoder(self, path / _ENCODER, trusted=False)
        head: Any = None
        if options.get("head_format") == "linear":
            head = LinearHead.load(path)
        elif (path / _HEAD).exists():
            head = load_skops(self, path, _HEAD, options.get("head_trusted_types"))
        return SentenceTransformerPredictor(
            encoder,
            head,
            normalize=options.get("normalize", False),
            batch_size=options.get("batch_size", 64),
        )

    def signature(self, model: object) -> Signature:
        return Signature.for_text()

    def outputs(self, model: object, signature: Signature) -> list[Output]:
        if isinstance(model, SentenceClassifier):
            return classifier_outputs(model.head.classes_)
        # sentence-transformers 6 renamed the method; older releases only have the old name.
        old_name = "get_sentence_embedding_dimension"
        getter = getattr(model, "get_embedding_dimension", None) or getattr(model, old_name)
        dim = int(getter())
        return [Output(name="embedding", dtype="float32", shape=(-1, dim))]

    def embedder(self, model: object) -> Embedder:
        if isinstance(model, SentenceClassifier):
            return model.embed
        return lambda texts: np.asarray(
            model.encode(texts, convert_to_numpy=True, show_progress_bar=False)  # type: ignore[attr-defined]
        )


class SentenceTransformerPredictor:
    def __init__(self, encoder: Any, head: Any, *, normalize: bool, batch_size: int) -> None:
        self.model = SentenceClassifier(encoder, head, normalize=normalize, batch_size=batch_size)

    def predict(self, batch: pd.DataFrame) -> Outputs:
        texts = batch[TEXT_INPUT].tolist()
        embeddings = self.model.embed(texts)
        if self.model.head is None:
            return {"embedding": embeddings}
        proba = np.asarray(self.model.head.predict_proba(embeddings), dtype=np.float64)
        labels = np.asarray(self.model.head.classes_)[proba.argmax(axis=1)]
        return {"label": labels, "probabilities": proba}


class _FastEncoder:
    """The slice of SentenceTransformer's interface that SentenceClassifier uses."""

    def __init__(self, encoder: text_encoder.TransformerEncoder) -> None:
        self.encoder = encoder

    def encode(
        self,
        texts: list[str],
        *,
        batch_size: int = 64,
        normalize_embeddings: bool = False,
        **_: Any,
    ) -> npt.NDArray[np.float32]:
        out = self.encoder.encode(texts, batch_size=batch_size)
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def _load_encoder(flavor: Flavor, folder: Path, *, trusted: bool) -> Any:
    """``trusted`` lets transformers fall back to pickled weights (``torch.load`` with
    ``weights_only=True``) where a folder has no safetensors; otherwise only safetensors load."""
    st = flavor.import_module("sentence_transformers")
    quiet_transformers()
    return st.SentenceTransformer(
        str(folder),
        device="cpu",
        local_files_only=True,
        model_kwargs=None if trusted else {"use_safetensors": True},
    )


def untrusted_parts(folder: Path, *, stored: bool = False) -> None:
    """Refuse (one line, naming it) what would run code of the folder's when it is loaded
    without trust: a pickle (``pytorch_model.bin`` and the like: only safetensors load without
    trust), or a module in ``modules.json`` that sentence-transformers would import from
    outside its own package, or from outside the folder. Reads names only, never a weight.
    ``stored``: the folder is a registered version's artifact, not a user's to register."""
    hint = (
        "it was not registered as trusted (an admin's trusted=True)"
        if stored
        else "pass --trusted (trusted=True, an admin's) only if you trust where it came from"
    )
    found = pickled_files(folder)
    if found:
        where = "its artifact" if stored else folder.name
        raise UntrustedArtifactError(
            f"{found[0]} in {where} is a pickle (PyTorch weights saved without safetensors), "
            f"which runs code when loaded: only safetensors load without trust, and {hint}"
        )
    for modules in sorted(folder.rglob(_MODULES)):
        name = modules.relative_to(folder).as_posix()
        try:
            listed = orjson.loads(modules.read_bytes())
            types = [str(m["type"]) for m in listed]
            paths = [str(m.get("path", "")) for m in listed]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInputError(f"{name} is not a readable list of modules: {exc}") from exc
        root = modules.parent.resolve()
        escaping = [p for p in paths if not (root / p).resolve().is_relative_to(root)]
        if escaping:
            raise UntrustedArtifactError(
                f"{name} loads modules from outside its folder: {escaping[0]}"
            )
        outside = [t for t in types if not t.startswith(_OWN_MODULES)]
        if outside:
            raise UntrustedArtifactError(
                f"{name} names modules from outside sentence-transformers "
                f"({', '.join(outside)}), whose code would run on load, and {hint}"
            )


_MODULES = "modules.json"
_OWN_MODULES = "sentence_transformers."


FLAVOR = SentenceTransformersFlavor()


def quiet_transformers() -> None:
    """Progress bars for reading a 90 MB local file are noise in a CLI and in server logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
