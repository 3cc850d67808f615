"""Who is calling: the server's one authentication step, as pure ASGI middleware.

:class:`Authenticate` maps ``Authorization: Bearer KEY`` (an API key, or a JWT when a JWKS file is
configured; tritonclient sends it through ``headers=``) to a principal and sets it as the current
one (``access.set_current``) for the rest of the request. It does not decide what a principal may
do: the service functions and the inference path do (``access.require``), for every entry point
at once. It only refuses what no service would serve:

- an invalid, expired or revoked credential: 401 naming why (never which part of a key);
- no credential at all: 401, except on the probes (``/v2/health/*`` and ``/metrics``) from a
  loopback client while ``auth_open_probes`` is on (Kubernetes probes, a local Prometheus);
- the routes with no service behind them (the docs, the OpenAPI document, server metadata,
  the probes asked from elsewhere): the right :data:`FRONT` names.

Every refusal is ``{"error": ...}`` JSON with ``WWW-Authenticate: Bearer`` on a 401.
:data:`ROUTE_RIGHTS` says what each route of the app needs; the route matrix test checks that
every route is listed and behaves so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Literal

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.errors import BerthError
from berth.registry.access import ANONYMOUS, Permission, Principal, reset_current, set_current
from berth.registry.keys import Authenticator

from .errors import status_of

log = logging.getLogger("berth.server")

PRINCIPAL = "berth.principal"
"""Scope key holding the request's :class:`Principal` (for the access log and rate limits)."""

PROBES: dict[str, Permission] = {
    "/v2/health/live": "read",
    "/v2/health/ready": "read",
    "/metrics": "metrics",
}
"""Open to loopback clients while ``auth_open_probes`` is on; else this right."""

FRONT: dict[str, Permission] = {
    "/openapi.json": "read",
    "/docs": "read",
    "/docs/oauth2-redirect": "read",
    "/redoc": "read",
    "/v2": "read",
}
"""Routes that call no service (which would check): the middleware checks them."""

Right = Permission | Literal["probe"]

ROUTE_RIGHTS: dict[tuple[str, str], Right] = {
    ("GET", "/v2/health/live"): "probe",
    ("GET", "/v2/health/ready"): "probe",
    ("GET", "/metrics"): "probe",
    ("GET", "/v2"): "read",
    ("GET", "/v2/models/{name}"): "read",
    ("GET", "/v2/models/{name}/versions/{version}"): "read",
    ("GET", "/v2/models/{name}/ready"): "read",
    ("GET", "/v2/models/{name}/versions/{version}/ready"): "read",
    ("POST", "/v2/models/{name}/infer"): "predict",
    ("POST", "/v2/models/{name}/versions/{version}/infer"): "predict",
    ("POST", "/v1/predict/{ref:path}"): "predict",
    ("GET", "/v1/models"): "read",
    ("GET", "/openapi.json"): "read",
    ("GET", "/docs"): "read",
    ("GET", "/docs/oauth2-redirect"): "read",
    ("GET", "/redoc"): "read",
}
"""What each route needs (``probe``: see :data:`PROBES`). A route added to the app without an
entry here fails the route matrix test (tests/server/test_auth_matrix.py)."""

_NEEDS_KEY = (
    "this needs credentials: send an API key as 'Authorization: Bearer KEY' (berth keys create)"
)


class Authenticate:
    """Sets the principal of each request from its bearer credential (see the module doc)."""

    def __init__(self, app: ASGIApp, auth: Authenticator, *, open_probes: bool = True) -> None:
        self.app = app
        self.auth = auth
        self.open_probes = open_probes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # none are served; never one without a check
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)  # the lifespan
            return
        credential = _bearer(scope)
        principal = ANONYMOUS
        if credential is not None:
            try:
                found = self.auth.cached(credential)
                if found is None:  # the database, off the event loop
                    found = await asyncio.to_thread(self.auth.principal, credential)
                principal = found
            except BerthError as exc:  # a bad credential (401/403), the database down (503)
                await _refuse(send, status_of(exc), str(exc), invalid=True)
                return
        path: str = scope["path"]
        probe = PROBES.get(path)
        if probe is not None:
            if not (self.open_probes and _loopback(scope)) and not principal.can(probe):
                await self._forbid(send, principal, probe)
                return
        else:
            front = FRONT.get(path)
            if principal.anonymous or (front is not None and not principal.can(front)):
                await self._forbid(send, principal, front or "read")
                return
        scope[PRINCIPAL] = principal
        token = set_current(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_current(token)

    async def _forbid(self, send: Send, principal: Principal, permission: Permission) -> None:
        if principal.anonymous:
            await _refuse(send, 401, _NEEDS_KEY)
            return
        try:
            principal.require(permission)
        except BerthError as exc:
            await _refuse(send, status_of(exc), str(exc))


def _bearer(scope: Scope) -> str | None:
    """The credential of ``Authorization: Bearer X``; a header of another scheme is an
    empty credential (refused as invalid, not taken as none)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, credential = text.strip().partition(" ")
            if scheme.lower() != "bearer":
                return ""
            return credential.strip()
    return None


def _loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


async def _refuse(send: Send, status: int, message: str, *, invalid: bool = False) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status == 401:
        challenge = b'Bearer realm="berth"' + (b', error="invalid_token"' if invalid else b"")
        headers.append((b"www-authenticate", challenge))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
