"""Open Inference Protocol v2 routes. A Berth model is an OIP model; its OIP version is a number
or an alias (``/v2/models/credit-risk/versions/staging``); no version means the ``production``
alias, else the newest. ``credit-risk@staging`` is accepted as a model name too."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

import berth
from berth.errors import InvalidInputError
from berth.registry.references import Reference, check_model_name
from berth.runtime import oip
from berth.runtime.path import Decoded, InferencePath, ServedModel

from .errors import error_response
from .responses import json_response

INFER_BODY = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "shape", "datatype", "data"],
                            "properties": {
                                "name": {"type": "string"},
                                "shape": {"type": "array", "items": {"type": "integer"}},
                                "datatype": {"type": "string", "enum": sorted(oip.FROM_OIP)},
                                "parameters": {"type": "object"},
                                "data": {"type": "array"},
                            },
                        },
                    },
                    "outputs": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                },
            }
        }
    },
    "required": True,
}


def split_name(name: str, version: str | None) -> tuple[str, str | None]:
    if "@" in name and version is None:
        name, _, version = name.partition("@")
    check_model_name(name)
    return name, version


def router(path: InferencePath) -> APIRouter:
    api = APIRouter(tags=["Open Inference Protocol v2"])
    pool = path.pool

    @api.get("/v2/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @api.get("/v2/health/ready")
    async def ready() -> Response:
        ok = pool.ready
        return json_response({"ready": ok}, status=200 if ok else 503)

    @api.get("/v2")
    async def server_metadata() -> Response:
        return json_response(
            {
                "name": "berth",
                "version": berth.__version__,
                "extensions": ["binary_tensor_data", "model_repository"],
            }
        )

    async def model_metadata(name: str, version: str | None) -> Response:
        model, selector = split_name(name, version)
        number = await pool.route(model, selector)
        info = await asyncio.to_thread(pool.registry.resolve, Reference(model, version=number))
        versions = [
            str(v.version) for v in await asyncio.to_thread(pool.registry.list_versions, model)
        ]
        body = oip.metadata(model, versions, info.signature, f"berth_{info.flavor}")
        body["parameters"] = {"version": number, "aliases": list(info.aliases)}
        return json_response(body)

    @api.get("/v2/models/{name}")
    async def metadata(name: str) -> Response:
        return await model_metadata(name, None)

    @api.get("/v2/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str) -> Response:
        return await model_metadata(name, version)

    async def model_ready(name: str, version: str | None) -> Response:
        model, selector = split_name(name, version)
        number = await pool.route(model, selector)
        state = pool.status(model, number)
        if state is not None and state.state == "ready":
            return json_response({"name": model, "version": str(number), "ready": True})
        if state is not None and state.state == "failed":
            return error_response(
                503, f"{model}/{number} is not ready: {state.reason}", ready=False
            )
        asyncio.get_running_loop().create_task(_load_quietly(path, model, str(number)))
        return json_response(
            {"name": model, "version": str(number), "ready": False, "state": "loading"},
            status=503,
        )

    @api.get("/v2/models/{name}/ready")
    async def ready_model(name: str) -> Response:
        return await model_ready(name, None)

    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def ready_version(name: str, version: str) -> Response:
        return await model_ready(name, version)

    async def infer(request: Request, name: str, version: str | None) -> Response:
        model, selector = split_name(name, version)
        body = await request.body()
        header = request.headers.get(oip.HEADER_LENGTH)
        length = _header_length(header, len(body))
        holder: dict[str, oip.OipRequest] = {}

        def decode(served: ServedModel) -> Decoded:
            decoded = oip.decode(body, length, served.info.signature)
            holder["request"] = decoded
            unit = decoded.parameters.get("unit_id")
            return Decoded(decoded.frame, unit if isinstance(unit, str) else None)

        result = await path.infer(
            model, selector, decode, unit_id=request.headers.get("x-berth-unit")
        )
        decoded = holder["request"]
        content, header_length = oip.encode(
            model=model,
            version=result.info.version,
            request_id=decoded.id or result.prediction_ids[0],
            outputs=result.outputs,
            signature=result.info.signature,
            requested=decoded.outputs,
            prediction_ids=result.prediction_ids,
        )
        headers = {}
        if header_length is not None:
            headers[oip.HEADER_LENGTH] = str(header_length)
        return Response(
            content,
            media_type="application/json" if header_length is None else "application/octet-stream",
            headers=headers,
        )

    @api.post("/v2/models/{name}/infer", openapi_extra={"requestBody": INFER_BODY})
    async def infer_model(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @api.post(
        "/v2/models/{name}/versions/{version}/infer", openapi_extra={"requestBody": INFER_BODY}
    )
    async def infer_version(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    return api


def _header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > body_length:
        raise InvalidInputError(
            f"{oip.HEADER_LENGTH} must be a byte count within the body ({body_length} bytes)"
        )
    return int(value)


async def _load_quietly(path: InferencePath, model: str, selector: str) -> None:
    try:
        await path.pool.get(model, selector)
    except Exception:  # the state records the failure for the next ready check
        return
