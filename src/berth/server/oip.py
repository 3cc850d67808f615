"""Open Inference Protocol v2 routes. A Berth model is an OIP model; its OIP version is a number
or an alias (``/v2/models/credit-risk/versions/staging``); no version means the ``production``
alias, else the newest. ``credit-risk@staging`` is accepted as a model name too.

Each handler converts and calls the inference path: the envelope first (request id, parameters,
unit id), then ``resolve``, then the tensors decoded against the target's signature, then ``run``.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

import berth
from berth.errors import InvalidInputError
from berth.registry.references import Reference
from berth.runtime import oip
from berth.runtime.outputs import FROM_OIP
from berth.runtime.path import InferencePath

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
                                "datatype": {"type": "string", "enum": sorted(FROM_OIP)},
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


def _path(request: Request) -> InferencePath:
    path: InferencePath = request.app.state.path
    return path


async def live() -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    ok = _path(request).ready
    return json_response({"ready": ok}, status=200 if ok else 503)


async def server_metadata() -> Response:
    return json_response(
        {
            "name": "berth",
            "version": berth.__version__,
            "extensions": ["binary_tensor_data", "model_repository"],
        }
    )


async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    path = _path(request)
    info = await path.describe(Reference.of(name, version))
    model = info.model
    versions = [str(v.version) for v in await asyncio.to_thread(path.registry.list_versions, model)]
    body = oip.metadata(model, versions, info.signature, f"berth_{info.flavor}")
    body["parameters"] = {"version": info.version, "aliases": list(info.aliases)}
    return json_response(body)


async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    path = _path(request)
    reference, choice = await path.route(Reference.of(name, version))
    model, number = reference.name, choice.version
    state = path.status(model, number)
    if state is not None and state.state == "ready":
        return json_response({"name": model, "version": str(number), "ready": True})
    if state is not None and state.state == "failed":
        return error_response(503, f"{model}/{number} is not ready: {state.reason}", ready=False)
    asyncio.get_running_loop().create_task(_load_quietly(path, Reference(model, version=number)))
    return json_response(
        {"name": model, "version": str(number), "ready": False, "state": "loading"},
        status=503,
    )


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    body = await request.body()
    content, header_length = await infer_body(
        _path(request),
        Reference.of(name, version),
        body,
        length_header=request.headers.get(oip.HEADER_LENGTH),
        unit_header=request.headers.get("x-berth-unit"),
    )
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={oip.HEADER_LENGTH: str(header_length)},
    )


async def infer_body(
    path: InferencePath,
    reference: Reference,
    body: bytes,
    *,
    length_header: str | None,
    unit_header: str | None,
) -> tuple[bytes, int | None]:
    """The answer to an infer request's body, and its JSON header's length when it carries
    binary tensors: what both the route and the fast dispatch (``dispatch.InferenceRoutes``)
    answer."""
    length = _header_length(length_header, len(body))
    try:
        envelope = oip.decode_envelope(body, length)
    except InvalidInputError:
        await path.route(reference)  # an unknown model or version is the first thing to say
        raise
    target = await path.resolve(reference, envelope.context(unit_header))
    inputs = oip.decode_inputs(envelope, target.info.signature)
    result = await path.run(target, inputs.columns, mode="realtime")
    return oip.encode(
        model=reference.name,
        version=result.info.version,
        request_id=envelope.id or result.prediction_ids[0],
        outputs=result.outputs,
        signature=result.info.signature,
        requested=inputs.outputs,
        prediction_ids=list(result.prediction_ids),
        parameters=result.parameters,
    )


def router() -> APIRouter:
    api = APIRouter(tags=["Open Inference Protocol v2"])
    api.add_api_route("/v2/health/live", live, methods=["GET"])
    api.add_api_route("/v2/health/ready", ready, methods=["GET"])
    api.add_api_route("/v2", server_metadata, methods=["GET"])
    api.add_api_route("/v2/models/{name}", model_metadata, methods=["GET"])
    api.add_api_route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"])
    api.add_api_route("/v2/models/{name}/ready", model_ready, methods=["GET"])
    api.add_api_route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"])
    for route in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        api.add_api_route(route, infer, methods=["POST"], openapi_extra={"requestBody": INFER_BODY})
    return api


def _header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > body_length:
        raise InvalidInputError(
            f"{oip.HEADER_LENGTH} must be a byte count within the body ({body_length} bytes)"
        )
    return int(value)


async def _load_quietly(path: InferencePath, reference: Reference) -> None:
    try:
        await path.resolve(reference)
    except Exception:  # the state records the failure for the next ready check
        return
