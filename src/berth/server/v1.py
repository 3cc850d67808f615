"""Berth's /v1 JSON API: predictions for people without a tensor client, and model status."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from berth.errors import InvalidInputError
from berth.runtime.codecs import to_columns
from berth.runtime.envelope import RequestContext, first_unit_id
from berth.runtime.outputs import to_rows
from berth.runtime.path import InferencePath

from .responses import json_response

PREDICT_BODY = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "records": {"type": "array", "items": {"type": "object"}},
                    "texts": {"type": "array", "items": {"type": "string"}},
                    "unit_id": {"type": "string"},
                    "request_id": {"type": "string"},
                },
            },
            "example": {"texts": ["The staff were lovely"]},
        }
    },
    "required": True,
}


async def predict(request: Request, ref: str) -> Response:
    """Predict for ``{"records": [...]}`` or ``{"texts": [...]}``; REF is NAME, NAME/VERSION
    or NAME@ALIAS (a bare name serves the production alias, else the newest version)."""
    body = await request.body()
    content = await predict_json(
        request.app.state.path, ref, body, request.headers.get("x-berth-unit")
    )
    return Response(content, media_type="application/json")


async def predict_json(
    path: InferencePath, ref: str, body: bytes, unit_header: str | None
) -> bytes:
    """The JSON answer to a /v1 prediction request's body: what both the route and the fast
    dispatch (``dispatch.InferenceRoutes``) answer."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not ({"records", "texts"} & set(doc)):
        raise InvalidInputError('send {"records": [{...}, ...]} or {"texts": ["...", ...]}')
    request_id = doc.pop("request_id", None)
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError("'request_id' must be a string")
    context = RequestContext(
        unit_id=first_unit_id(doc.pop("unit_id", None), unit_header),
        request_id=request_id,
    )
    target = await path.resolve(ref, context)
    result = await path.run(target, to_columns(doc, target.info.signature), mode="realtime")
    rows = to_rows(result.outputs, result.info.signature)
    for row, pid in zip(rows, result.prediction_ids, strict=True):
        row["prediction_id"] = pid
    answer: dict[str, Any] = {
        "model": result.info.model,
        "version": result.info.version,
        "predictions": rows,
    }
    if result.parameters:
        answer["parameters"] = result.parameters
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


async def models(request: Request) -> Response:
    """Every model with its aliases and which versions this server process has loaded, and
    why each is in memory: ``residency`` per version says its aliases (kept loaded) or, for a
    version loaded on demand, how long it has been idle (unloaded least recently used first),
    its requests in flight and its measured footprint; ``memory`` gives the budget of on-demand
    versions and what they hold. With ``--workers N`` each worker answers for itself (``pid``)."""
    path: InferencePath = request.app.state.path
    pool = path.pool
    summaries = await asyncio.to_thread(path.registry.list_models)
    loaded = path.loaded()
    residency: dict[str, dict[str, dict[str, Any]]] = {}
    on_demand, on_demand_bytes = 0, 0
    now = time.time()
    for r in pool.residency():
        entry: dict[str, Any] = {
            "state": r.state,
            "why": "on demand" if r.on_demand else "aliased",
            "aliases": list(r.aliases),
            "in_flight": r.in_flight,
        }
        if r.idle_s is not None:
            entry["idle_s"] = round(r.idle_s, 3)
            entry["last_used"] = _iso(now - r.idle_s)
        if r.state == "ready":
            entry["memory_bytes"] = r.memory_bytes
            entry["resident_bytes"] = r.resident_bytes
            entry["artifact_bytes"] = r.artifact_bytes
            if r.on_demand:
                on_demand += 1
                on_demand_bytes += r.memory_bytes or 0
        if r.reason is not None:
            entry["reason"] = r.reason
        residency.setdefault(r.model, {})[str(r.version)] = entry
    out: list[dict[str, Any]] = []
    for m in summaries:
        states = {
            str(v): state.state if state.reason is None else f"{state.state}: {state.reason}"
            for (name, v), state in loaded.items()
            if name == m.name
        }
        out.append(
            {
                "name": m.name,
                "versions": m.versions,
                "latest": m.latest_version,
                "aliases": m.aliases,
                "loaded": states,
                "residency": residency.get(m.name, {}),
            }
        )
    budget = pool.budget
    memory = {
        "pid": os.getpid(),
        "resident_bytes": pool.resident_bytes(),
        "max_unaliased_versions": budget.max_versions,
        "max_unaliased_bytes": budget.max_bytes,
        "unaliased_loaded": on_demand,
        "unaliased_bytes": on_demand_bytes,
    }
    return json_response({"models": out, "memory": memory})


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def router() -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["Berth JSON API"])
    api.add_api_route(
        "/predict/{ref:path}",
        predict,
        methods=["POST"],
        openapi_extra={"requestBody": PREDICT_BODY},
    )
    api.add_api_route("/models", models, methods=["GET"])
    return api
