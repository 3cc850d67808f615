"""MLServer 1.7 as the peers benchmark runs it: a model repository per model, written by
``write_repository`` (run in the Berth venv), served by ``mlserver start`` in the mlserver venv.

- ``numeric``: MLServer's own scikit-learn runtime (``mlserver_sklearn.SKLearnModel``) on the
  joblib file, ``predict_fn: predict_proba`` in the model settings (the documented way to get
  probabilities), everything else at its defaults, as a new user has it.
- ``sentiment``: a custom runtime (``SentimentRuntime`` below, the shape of MLServer's custom
  runtime examples) with adaptive batching at 32 requests / 5 ms.

Server settings: ``parallel_workers: 0`` (inference in the server process, one process like the
other servers; the default is one extra worker process), 127.0.0.1, free ports for HTTP, gRPC and
metrics; the rest (debug logging and access log on, metrics on) at MLServer's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

try:  # the Berth venv only writes the settings files; the mlserver venv runs the runtime
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec, StringCodec
    from mlserver.types import InferenceRequest, InferenceResponse
except ImportError:
    MLModel = object  # type: ignore[assignment,misc]


class SentimentRuntime(MLModel):  # type: ignore[misc,valid-type]
    """One BYTES tensor of texts in; ``probabilities`` (FP64 [n, 2]) and ``label`` out."""

    async def load(self) -> bool:
        from peer_text import TextClassifier

        self._model = TextClassifier(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        proba = self._model.predict_proba(texts)
        labels = [self._model.classes[i] for i in proba.argmax(axis=1).tolist()]
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("probabilities", proba),
                StringCodec.encode_output("label", labels),
            ],
        )


def write_repository(folder: Path, model: str, artifact: Path, ports: dict[str, int]) -> Path:
    """settings.json and MODEL/model-settings.json under ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": ports["http"],
        "grpc_port": ports["grpc"],
        "metrics_port": ports["metrics"],
        "parallel_workers": 0,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings: dict[str, Any]
    if model == "numeric":
        model_settings = {
            "name": "numeric",
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(artifact), "extra": {"predict_fn": "predict_proba"}},
        }
    else:
        model_settings = {
            "name": "sentiment",
            "implementation": "mlserver_runtime.SentimentRuntime",
            "max_batch_size": 32,
            "max_batch_time": 0.005,
            "parameters": {"uri": str(artifact)},
        }
    (folder / model).mkdir(exist_ok=True)
    (folder / model / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return folder
