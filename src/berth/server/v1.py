"""Berth's /v1 JSON API: predictions for people without a tensor client, and model status."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from berth.errors import InvalidInputError
from berth.registry.references import parse_reference
from berth.runtime.codecs import to_columns, to_records
from berth.runtime.path import Decoded, InferencePath, ServedModel

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
                },
            },
            "example": {"texts": ["The staff were lovely"]},
        }
    },
    "required": True,
}


def router(path: InferencePath) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["Berth JSON API"])

    @api.post("/predict/{ref:path}", openapi_extra={"requestBody": PREDICT_BODY})
    async def predict(request: Request, ref: str) -> Response:
        """Predict for ``{"records": [...]}`` or ``{"texts": [...]}``; REF is NAME, NAME/VERSION
        or NAME@ALIAS (a bare name serves the production alias, else the newest version)."""
        reference = parse_reference(ref)
        selector = (
            None
            if "@" not in ref and "/" not in ref
            else (str(reference.version) if reference.version is not None else reference.alias)
        )
        body = await request.body()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"request body is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or not ({"records", "texts"} & set(doc)):
            raise InvalidInputError('send {"records": [{...}, ...]} or {"texts": ["...", ...]}')
        unit = doc.pop("unit_id", None)
        if unit is not None and not isinstance(unit, str):
            raise InvalidInputError("'unit_id' must be a string")

        def decode(served: ServedModel) -> Decoded:
            return Decoded(to_columns(doc, served.info.signature), unit)

        result = await path.infer(
            reference.name, selector, decode, unit_id=request.headers.get("x-berth-unit")
        )
        rows = to_records(result.outputs, result.info.signature)
        for row, pid in zip(rows, result.prediction_ids, strict=True):
            row["prediction_id"] = pid
        return json_response(
            {
                "model": result.info.model,
                "version": result.info.version,
                "predictions": rows,
            }
        )

    @api.get("/models")
    async def models() -> Response:
        """Every model with its aliases and which versions this server has loaded."""
        summaries = await asyncio.to_thread(path.pool.registry.list_models)
        out: list[dict[str, Any]] = []
        for m in summaries:
            loaded = {
                str(v): state.state if state.reason is None else f"{state.state}: {state.reason}"
                for (name, v), state in path.pool.states.items()
                if name == m.name
            }
            out.append(
                {
                    "name": m.name,
                    "versions": m.versions,
                    "latest": m.latest_version,
                    "aliases": m.aliases,
                    "loaded": loaded,
                }
            )
        return json_response({"models": out})

    return api
