"""Two FastAPI apps that serve one model each, no Berth inside (run in the Berth venv, which has
FastAPI, uvicorn, orjson, scikit-learn and transformers; nothing here imports ``berth``).

- ``--style bare``: what the FastAPI tutorial leads to: a sync ``def`` endpoint taking a pydantic
  request model (30 float fields per row), the answer as a dict through FastAPI's default JSON
  response, uvicorn with its defaults (access log on).
- ``--style simple``: the strongest simple app we could write: an ``async def`` endpoint that
  ``orjson.loads`` the body, builds the array with ``itemgetter`` and calls ``predict_proba``
  inline on the event loop (no thread hop per request), answers with ``orjson.dumps``; uvicorn
  without access log.

Both, for the tree model: ``OMP_NUM_THREADS=1`` before scikit-learn loads, and threadpoolctl's
OpenMP and BLAS limit of 1 after the model loads (one row's predict is fastest on one thread;
OpenMP keeps thread counts per thread, so the environment variable is what reaches the sync
endpoint's worker threads). For the text model torch keeps its default threads (one per core, as
Berth's default of cores / workers with one worker), so the variable is not set there: torch
would read it too. Request and answer shapes are Berth's /v1: ``{"records": [...]}`` or
``{"texts": [...]}`` in, ``{"predictions": [{"label": ..., "probabilities": {...}}]}`` out.

    .venv/bin/python bench/peers/simple_app.py --style simple --model numeric --port 8001 \
        --artifact /tmp/.../numeric.joblib
"""

from __future__ import annotations

import argparse
import os
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from peer_text import TextClassifier, rows_answer
from pydantic import BaseModel, create_model

FEATURES = [f"f{i:02d}" for i in range(30)]
Row: Any = create_model("Row", **{f: (float, ...) for f in FEATURES})  # type: ignore[call-overload]


class Rows(BaseModel):
    records: list[Row]  # type: ignore[valid-type]


class Texts(BaseModel):
    texts: list[str]


def _limit_threads() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")
    threadpool_limits(limits=1, user_api="blas")


def _ready(app: FastAPI) -> None:
    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}


def bare_numeric(model: Any, classes: list[str]) -> FastAPI:
    app = FastAPI()
    _ready(app)

    @app.post("/v1/predict/numeric")
    def predict(body: Rows) -> dict[str, Any]:
        x = np.array([[getattr(r, f) for f in FEATURES] for r in body.records])
        return {"predictions": rows_answer(model.predict_proba(x), classes)}

    return app


def simple_numeric(model: Any, classes: list[str]) -> FastAPI:
    get = itemgetter(*FEATURES)
    app = FastAPI()
    _ready(app)

    @app.post("/v1/predict/numeric")
    async def predict(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        x = np.array([get(r) for r in doc["records"]], dtype=np.float64)
        answer = {"predictions": rows_answer(model.predict_proba(x), classes)}
        return Response(orjson.dumps(answer), media_type="application/json")

    return app


def bare_sentiment(model: TextClassifier) -> FastAPI:
    app = FastAPI()
    _ready(app)

    @app.post("/v1/predict/sentiment")
    def predict(body: Texts) -> dict[str, Any]:
        return {"predictions": model.answer(body.texts)}

    return app


def simple_sentiment(model: TextClassifier) -> FastAPI:
    app = FastAPI()
    _ready(app)

    @app.post("/v1/predict/sentiment")
    async def predict(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        return Response(
            orjson.dumps({"predictions": model.answer(doc["texts"])}),
            media_type="application/json",
        )

    return app


def build(style: str, model_name: str, artifact: str) -> FastAPI:
    if model_name == "numeric":
        os.environ["OMP_NUM_THREADS"] = "1"  # before scikit-learn loads OpenMP
        import joblib

        model = joblib.load(artifact)
        _limit_threads()
        classes = [str(c) for c in model.classes_]
        return (bare_numeric if style == "bare" else simple_numeric)(model, classes)
    text = TextClassifier(artifact)
    return (bare_sentiment if style == "bare" else simple_sentiment)(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", choices=("bare", "simple"), required=True)
    parser.add_argument("--model", choices=("numeric", "sentiment"), required=True)
    parser.add_argument("--artifact", required=True, help="numeric.joblib or sentiment.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvicorn

    app = build(args.style, args.model, args.artifact)
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.style == "bare")


if __name__ == "__main__":
    main()
