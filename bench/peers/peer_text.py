"""The sentiment model as the peers run it: plain ``transformers`` and numpy, from the files of
Berth's registered artifact (the ``encoder/`` folder and ``head.npz``; see models.py).

The same computation as Berth's flavor (src/berth/flavors/text_encoder.py and linear_head.py):
tokenize with padding and truncation at the encoder's ``max_seq_length``, mean pooling over the
attention mask, L2 normalisation when the encoder's config says so, then the logistic head's
sigmoid on one decision value. Texts of one call go through the model as one padded batch, as a
user's code would (Berth additionally groups texts by length; that is its own optimisation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


class TextClassifier:
    def __init__(self, spec_file: str | Path) -> None:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()
        spec = json.loads(Path(spec_file).read_text())
        folder = Path(spec["encoder"])
        self.torch = torch
        self.config = json.loads((folder / "encoder.json").read_text())
        self.extra_normalize = bool(spec.get("normalize", False))
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True
        )
        self.model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.model.eval()
        with np.load(spec["head"], allow_pickle=False) as head:
            self.coef = head["coef"]
            self.intercept = head["intercept"]
            self.classes = [str(c) for c in head["classes"]]

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        torch = self.torch
        tokens = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=int(self.config["max_seq_length"]),
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.config.get("normalize", False):
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        out: npt.NDArray[np.float32] = pooled.float().numpy()
        if self.extra_normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def predict_proba(self, texts: list[str]) -> npt.NDArray[np.float64]:
        z = self.embed(texts).astype(np.float64) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.column_stack([1.0 - p, p])
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def answer(self, texts: list[str]) -> list[dict[str, Any]]:
        """Berth's /v1 shape: a label and the probabilities by class, per text."""
        return rows_answer(self.predict_proba(texts), self.classes)


def rows_answer(proba: npt.NDArray[np.float64], classes: list[str]) -> list[dict[str, Any]]:
    best = proba.argmax(axis=1)
    return [
        {"label": classes[int(b)], "probabilities": dict(zip(classes, p, strict=True))}
        for b, p in zip(best.tolist(), proba.tolist(), strict=True)
    ]
