"""A sentence encoder run on plain ``transformers``: tokenizer, model, pooling, normalisation.

Why not load with sentence-transformers: importing it costs about 9 s on these machines against
3.5 s for ``transformers`` alone, and a cold start is what users wait for when a server scales up.
The encoder also sorts texts by length before batching, so short sentences are not padded to the
longest one in the request.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from berth.errors import MissingExtraError
from berth.flavors.base import IMPORT_LOCK

CONFIG = "encoder.json"
Pooling = Literal["mean", "cls", "max"]


@dataclass(frozen=True)
class EncoderConfig:
    pooling: Pooling
    normalize: bool
    max_seq_length: int


def describe(model: Any) -> EncoderConfig | None:
    """The config of a SentenceTransformer made of Transformer, Pooling and (optionally)
    Normalize modules; None for any other composition, which then loads with
    sentence-transformers itself."""
    modules = [type(m).__name__ for m in model]
    if modules not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    pooling = getattr(model[1], "pooling_mode", None)
    if pooling not in ("mean", "cls", "max") or not getattr(model[1], "include_prompt", True):
        return None
    if getattr(model[0], "do_lower_case", False) or not hasattr(model[0], "auto_model"):
        return None
    return EncoderConfig(pooling, len(modules) == 3, int(model[0].max_seq_length))


def save(model: Any, config: EncoderConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model[0].auto_model.save_pretrained(str(folder))
    model[0].tokenizer.save_pretrained(str(folder))
    (folder / CONFIG).write_bytes(orjson.dumps(asdict(config)))


class TransformerEncoder:
    def __init__(self, folder: Path) -> None:
        self.torch = _import("torch")
        transformers = _import("transformers")
        transformers.utils.logging.disable_progress_bar()
        self.config = EncoderConfig(**orjson.loads((folder / CONFIG).read_bytes()))
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True
        )
        # Safetensors only: a pickled weight file is never read here (Berth writes none).
        self.model = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
        self.model.eval()

    def encode(self, texts: list[str], batch_size: int = 64) -> npt.NDArray[np.float32]:
        if not texts:
            return np.empty((0, int(self.model.config.hidden_size)), dtype=np.float32)
        out = np.empty((len(texts), int(self.model.config.hidden_size)), dtype=np.float32)
        with self.torch.inference_mode():
            for rows in length_groups(texts, batch_size):
                out[rows] = self._batch([texts[i] for i in rows])
        return out

    def _batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        torch = self.torch
        tokens = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.config.max_seq_length,
            return_tensors="pt",
        )
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.config.pooling == "mean":
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        elif self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().numpy()  # type: ignore[no-any-return]


def length_groups(texts: list[str], batch_size: int, spread: float = 2.0) -> list[list[int]]:
    """Row numbers grouped by length, longest first: a group closes when it is full or when the
    next text is over ``spread`` times shorter than the group's longest, since every text in a
    group is padded to that one."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (
            len(current) >= batch_size or len(texts[i]) * spread < len(texts[current[0]])
        ):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def _import(module: str) -> Any:
    try:
        with IMPORT_LOCK:
            return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, "text", "loading a text encoder") from exc
