"""Reference profiles of training data, and its fingerprint.

Drift monitoring compares production traffic against the profile stored with each version, so a
profile keeps what drift tests need (quantiles and histograms for numbers, frequencies for
categories, lengths and an embedding summary for text) and nothing that identifies a person: no raw
values beyond category labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.registry.signature import NUMERIC, Signature

QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
HISTOGRAM_BINS = 20
MAX_CATEGORIES = 100
EMBEDDING_SAMPLE = 512

Embedder = Callable[[list[str]], npt.NDArray[np.floating[Any]]]


def fingerprint(data: pd.DataFrame | Sequence[str]) -> str:
    """SHA-256 of the data's content, column names and dtypes, independent of its row index."""
    digest = hashlib.sha256()
    if isinstance(data, pd.DataFrame):
        digest.update(repr([(str(c), str(t)) for c, t in data.dtypes.items()]).encode())
        hashed = pd.util.hash_pandas_object(data, index=False).to_numpy()
        digest.update(hashed.tobytes())
    else:
        for text in data:
            digest.update(text.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()


def profile(
    data: pd.DataFrame | Sequence[str],
    signature: Signature,
    *,
    embed: Embedder | None = None,
) -> dict[str, Any]:
    if signature.kind == "text":
        texts = data["text"].tolist() if isinstance(data, pd.DataFrame) else list(data)
        return {"rows": len(texts), "features": {"text": _text_profile(texts, embed)}}
    assert isinstance(data, pd.DataFrame)
    features = {f.name: _column_profile(data[f.name], f.dtype) for f in signature.inputs}
    return {"rows": len(data), "features": features}


def observed_ranges(reference: dict[str, Any] | None) -> dict[str, tuple[float, float]]:
    """Each numeric feature's minimum and maximum in a profile's training data (features with no
    value there have none): the observed ranges registration records in the signature."""
    ranges: dict[str, tuple[float, float]] = {}
    for name, summary in ((reference or {}).get("features") or {}).items():
        if summary.get("type") == "numeric" and summary.get("min") is not None:
            ranges[name] = (float(summary["min"]), float(summary["max"]))
    return ranges


def _column_profile(column: pd.Series, dtype: str) -> dict[str, Any]:
    missing = int(column.isna().sum())
    values = column.dropna()
    base: dict[str, Any] = {"count": len(values), "missing": missing}
    if dtype in NUMERIC:
        return base | {"type": "numeric"} | _numeric_summary(values.to_numpy(dtype=np.float64))
    counts = values.astype(str).value_counts()
    top = counts.iloc[:MAX_CATEGORIES]
    return base | {
        "type": "categorical",
        "distinct": len(counts),
        "frequencies": {str(k): int(v) for k, v in top.items()},
        "other": int(counts.iloc[MAX_CATEGORIES:].sum()),
    }


def _numeric_summary(x: npt.NDArray[np.float64]) -> dict[str, Any]:
    if x.size == 0:
        return {"mean": None, "std": None, "quantiles": {}, "histogram": None}
    lo, hi = float(x.min()), float(x.max())
    counts, edges = np.histogram(x, bins=HISTOGRAM_BINS, range=(lo, hi if hi > lo else lo + 1.0))
    qs = np.quantile(x, QUANTILES)
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": lo,
        "max": hi,
        "quantiles": {f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, qs, strict=True)},
        "histogram": {"edges": edges.tolist(), "counts": counts.astype(int).tolist()},
    }


def _text_profile(texts: list[str], embed: Embedder | None) -> dict[str, Any]:
    chars = np.fromiter((len(t) for t in texts), dtype=np.float64, count=len(texts))
    words = np.fromiter((len(t.split()) for t in texts), dtype=np.float64, count=len(texts))
    out: dict[str, Any] = {
        "type": "text",
        "count": len(texts),
        "missing": 0,
        "length_chars": _numeric_summary(chars),
        "length_words": _numeric_summary(words),
        "embedding": None,
    }
    if embed is not None and texts:
        rng = np.random.default_rng(0)
        take = min(EMBEDDING_SAMPLE, len(texts))
        sample = [texts[i] for i in sorted(rng.choice(len(texts), size=take, replace=False))]
        out["embedding"] = _embedding_summary(np.asarray(embed(sample), dtype=np.float64))
    return out


def _embedding_summary(emb: npt.NDArray[np.float64]) -> dict[str, Any]:
    """Enough to test for a shift without keeping any text: the centroid, the spread per
    dimension, and the distribution of each embedding's cosine similarity to the centroid."""
    mean = emb.mean(axis=0)
    norms = np.linalg.norm(emb, axis=1)
    unit_mean = mean / (np.linalg.norm(mean) or 1.0)
    cosine = (emb @ unit_mean) / np.where(norms == 0, 1.0, norms)
    return {
        "sample": int(emb.shape[0]),
        "dimensions": int(emb.shape[1]),
        "mean": np.round(mean, 6).tolist(),
        "std": np.round(emb.std(axis=0), 6).tolist(),
        "norm": _numeric_summary(norms),
        "cosine_to_mean": _numeric_summary(cosine),
    }
