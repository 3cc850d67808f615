"""The peer baseline of bench/serve_bench.py: the smallest FastAPI app that serves the same models.

It loads each model once from the Berth registry (``berth.connect(home).load(...)``) and then calls
the framework directly: for ``credit-risk`` a one-row ``pandas.DataFrame`` built from the JSON body
goes to the scikit-learn pipeline's ``predict_proba``; for ``sentiment`` the sentence goes to the
encoder and its logistic head. No signature validation, prediction records, metrics, micro-batching,
access log, prediction ids or alias routing.

Choices, so that the comparison is with the strongest simple app rather than a strawman:

- ``async def`` endpoints that call the model inline on the event loop: for a sub-millisecond
  model this is faster than FastAPI's threadpool (``def`` endpoints hop to a worker thread on
  every request), and for the text model it keeps one predict in flight at a time, as Berth does.
- uvicorn with the same settings as ``berth serve``: one worker, uvloop/httptools when installed
  (``loop="auto"``, ``http="auto"``), no access log.
- The same thread limits as ``berth serve --threads 1``: threadpoolctl sets OpenMP and BLAS pools
  to 1 thread (set after loading, since threadpoolctl reaches only libraries already loaded), and
  torch to the cores divided by the workers (2 on the 2-core machines), as Berth's default.

    .venv/bin/python bench/minimal_app.py --home H --port 8001 [--models credit-risk,sentiment]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import berth


def build(home: str, models: list[str], threads: int, torch_threads: int) -> FastAPI:
    client = berth.connect(home=home)
    loaded = {name: client.load(f"{name}@production") for name in models}
    _limit_threads(threads, torch_threads)
    app = FastAPI(title="minimal")

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    if "credit-risk" in loaded:
        credit_predictor: Any = loaded["credit-risk"].predictor
        pipeline = credit_predictor.model  # the scikit-learn Pipeline
        credit_classes = [str(c) for c in pipeline.classes_]

        @app.post("/v1/predict/credit-risk")
        async def credit_risk(request: Request) -> JSONResponse:
            body = await request.json()
            frame = pd.DataFrame(body["records"])
            proba = pipeline.predict_proba(frame)
            return JSONResponse(
                {
                    "predictions": [
                        {
                            "label": credit_classes[int(np.argmax(p))],
                            "probabilities": dict(zip(credit_classes, p.tolist(), strict=True)),
                        }
                        for p in proba
                    ]
                }
            )

    if "sentiment" in loaded:
        text_predictor: Any = loaded["sentiment"].predictor
        classifier = text_predictor.model  # encoder + logistic head
        text_classes = [str(c) for c in classifier.head.classes_]

        @app.post("/v1/predict/sentiment")
        async def sentiment(request: Request) -> JSONResponse:
            body = await request.json()
            proba = classifier.predict_proba(body["texts"])
            return JSONResponse(
                {
                    "predictions": [
                        {
                            "label": text_classes[int(np.argmax(p))],
                            "probabilities": dict(zip(text_classes, p.tolist(), strict=True)),
                        }
                        for p in proba
                    ]
                }
            )

    return app


def _limit_threads(threads: int, torch_threads: int) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="openmp")
    threadpool_limits(limits=threads, user_api="blas")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(torch_threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--models", default="credit-risk,sentiment")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS threads")
    parser.add_argument(
        "--torch-threads", type=int, default=max(1, os.cpu_count() or 1), help="torch threads"
    )
    args = parser.parse_args()
    import uvicorn

    app = build(args.home, args.models.split(","), args.threads, args.torch_threads)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_config=None)


if __name__ == "__main__":
    main()
