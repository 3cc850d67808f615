"""BentoML 1.4 services for the peers benchmark, written as its docs show (run in the bentoml venv):

    PEER_ARTIFACT=.../numeric.joblib PEER_BATCHABLE=0 bentoml serve bento_service:Numeric \
        --host 127.0.0.1 --port 3000

- ``Numeric``: ``predict(input: np.ndarray) -> np.ndarray`` (the probabilities), the shape of
  BentoML's scikit-learn quickstart; JSON in ``{"input": [[30 floats], ...]}``, a nested list out.
- ``Sentiment``: ``predict(texts: list[str]) -> np.ndarray`` (the probabilities), the same encoder
  and head as every other server (peer_text.py).

``workers=1``, thread settings left to BentoML. ``PEER_BATCHABLE=1`` turns on adaptive batching
(``batchable=True``) with limits a user would pick: 32 sentences, or 1,024 rows (16 requests of
64), within ``max_latency_ms`` 1,000 (BentoML's default is 60 s; its dispatcher waits only as long
as its cost model says pays off).
"""

from __future__ import annotations

import os

import bentoml
import numpy as np

ARTIFACT = os.environ.get("PEER_ARTIFACT", "")
BATCHABLE = os.environ.get("PEER_BATCHABLE", "0") == "1"


@bentoml.service(workers=1)
class Numeric:
    def __init__(self) -> None:
        import joblib

        self.model = joblib.load(ARTIFACT)

    @bentoml.api(batchable=BATCHABLE, max_batch_size=1024, max_latency_ms=1000)
    def predict(self, input: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(input)  # type: ignore[no-any-return]


@bentoml.service(workers=1)
class Sentiment:
    def __init__(self) -> None:
        from peer_text import TextClassifier

        self.model = TextClassifier(ARTIFACT)

    @bentoml.api(batchable=BATCHABLE, max_batch_size=32, max_latency_ms=1000)
    def predict(self, texts: list[str]) -> np.ndarray:
        return self.model.predict_proba(texts)
