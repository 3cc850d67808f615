"""The route matrix: every route of the app (the OpenAPI schema's, the dispatched inference
routes, and those kept out of the schema: docs, /metrics) with auth on, asked without a key
(401), with a role that lacks the right (403) and with one that has it (2xx, or the route's
normal 4xx for an empty body). A route added without a rule in ``auth.ROUTE_RIGHTS`` fails
here. Bad credentials of every kind get 401/403 JSON, never a 500."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from anyio.from_thread import start_blocking_portal
from sqlalchemy import update
from tests.server.conftest import (
    CREDIT_DTYPES,
    CREDIT_FEATURES,
    Served,
    assert_error,
    credit_tensors,
    tabular_home,
)

from berth.app import Berth, ServeOptions, build_server
from berth.config import PathOptions, Settings
from berth.registry.access import PERMISSIONS, ROLES
from berth.registry.tables import ApiKeyRow, utcnow
from berth.server import dispatch
from berth.server.auth import PROBES, ROUTE_RIGHTS

PEPPER = "route-matrix-test-pepper"
REMOTE = ("203.0.113.9", 40000)  # TEST-NET-3: not loopback
FILL = {"{name}": "credit", "{version}": "1", "{ref:path}": "credit"}


def settings(home: Path, **more: Any) -> Settings:
    return Settings(home=home, user="tester", key_pepper=PEPPER, **more)


def make_app(home: Path, **more: Any) -> Any:
    options = ServeOptions(path=PathOptions(poll_interval_s=0), access_log=False)
    return build_server(settings(home, **more), options)


class Clients:
    """A loopback and a remote in-process client of one app, its lifespan run once."""

    def __init__(self, portal: Any, local: httpx.AsyncClient, remote: httpx.AsyncClient) -> None:
        self.portal = portal
        self.local = local
        self.remote = remote

    def call(
        self, method: str, url: str, key: str | None = None, *, remote: bool = True, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        client = self.remote if remote else self.local
        return self.portal.call(
            functools.partial(client.request, method, url, headers=headers, **kw)
        )


@contextlib.asynccontextmanager
async def _clients(app: Any) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with app.router.lifespan_context(app):
        local = httpx.ASGITransport(app=app)
        remote = httpx.ASGITransport(app=app, client=REMOTE)
        async with (
            httpx.AsyncClient(transport=local, base_url="http://berth.test") as a,
            httpx.AsyncClient(transport=remote, base_url="http://berth.test") as b,
        ):
            yield a, b


@contextlib.contextmanager
def serving(app: Any) -> Iterator[Clients]:
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(_clients(app)) as (local, remote),
    ):
        yield Clients(portal, local, remote)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return tabular_home(tmp_path_factory.mktemp("auth-matrix") / "home")


@pytest.fixture(scope="module")
def keys(home: Served) -> dict[str, str]:
    with Berth(settings(home.home)) as local:
        made = {role: local.create_key(f"{role}-key", role).key for role in ROLES}
        made["scoped"] = local.create_key("scoped-key", "predictor", scopes=["numeric"]).key
    return made


@pytest.fixture(scope="module")
def server(home: Served, keys: dict[str, str]) -> Iterator[Clients]:
    with serving(make_app(home.home, auth=True)) as clients:
        yield clients


def routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route the app answers."""
    return {(method, path) for method, path in _walk(app.routes, "") if method != "HEAD"}


def _walk(found: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
    for route in found:
        inner = getattr(route, "original_router", None)  # an included router (FastAPI >= 0.16x)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _walk(inner.routes, prefix + getattr(context, "prefix", ""))
            continue
        for method in getattr(route, "methods", None) or ():
            yield method, prefix + route.path


def unruled(app: Any) -> set[tuple[str, str]]:
    return routes(app) - set(ROUTE_RIGHTS)


def url_of(path: str) -> str:
    for template, value in FILL.items():
        path = path.replace(template, value)
    return path


def succeeded(method: str, response: httpx.Response) -> bool:
    """2xx, or what the route answers an empty body when the caller may call it."""
    if 200 <= response.status_code < 300:
        return True
    return method == "POST" and response.status_code in (400, 422)


# -- every route has a rule, and the rule holds -------------------------------------------------


def test_every_route_has_a_rule(home: Served) -> None:
    app = make_app(home.home, auth=True)
    assert unruled(app) == set()
    assert set(ROUTE_RIGHTS) - routes(app) == set(), "a rule for a route that is gone"
    schema = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    templates = {(m, p.replace(":path", "")) for m, p in routes(app)}
    assert schema, "no route in the OpenAPI schema"
    assert schema <= templates, schema - templates
    # The dispatched inference routes (answered ahead of FastAPI) are among them.
    dispatched = {(m, p) for m, p in routes(app) if m == "POST" and dispatch.match(url_of(p))}
    assert len(dispatched) == 3, dispatched


def test_a_route_added_without_a_rule_is_caught(home: Served) -> None:
    app = make_app(home.home, auth=True)
    app.add_api_route("/v1/brand-new", lambda: {"ok": True}, methods=["GET"])
    assert unruled(app) == {("GET", "/v1/brand-new")}


RULES = sorted(ROUTE_RIGHTS.items())


@pytest.mark.parametrize(("route", "right"), RULES, ids=[f"{m} {p}" for (m, p), _ in RULES])
def test_the_route_matrix(
    server: Clients, keys: dict[str, str], route: tuple[str, str], right: str
) -> None:
    method, path = route
    url = url_of(path)
    needed = PROBES[path] if right == "probe" else right
    # No key: 401 from elsewhere; from loopback too, except the probes.
    assert_error(server.call(method, url), 401, "needs credentials")
    local = server.call(method, url, remote=False)
    if right == "probe":
        assert local.status_code == 200, (url, local.status_code, local.text)
    else:
        assert_error(local, 401, "needs credentials")
    for role in ROLES:
        response = server.call(method, url, keys[role])
        if needed in PERMISSIONS[role]:
            assert succeeded(method, response), (role, url, response.status_code, response.text)
        else:
            assert_error(response, 403, f"'{role}-key' ({role}) may not {needed}")


def test_the_matrix_covers_a_role_lacking_every_right_but_read() -> None:
    """Each right a route needs is lacked by some role (so its 403 is asserted), except
    ``read``, which every role has."""
    needed = {PROBES[p] if r == "probe" else r for (_m, p), r in ROUTE_RIGHTS.items()}
    for right in needed - {"read"}:
        assert any(right not in PERMISSIONS[role] for role in ROLES), right


def test_a_scoped_key_predicts_on_its_models_only(
    server: Clients, keys: dict[str, str], home: Served
) -> None:
    rows = home.numeric_rows.to_dict(orient="records")
    ok = server.call("POST", "/v1/predict/numeric", keys["scoped"], json={"records": rows})
    assert ok.status_code == 200, ok.text
    body = {"inputs": credit_tensors(home.credit_rows)}
    for url in (
        "/v1/predict/credit",
        "/v2/models/credit/infer",
        "/v2/models/credit/versions/2/infer",
    ):
        refused = server.call("POST", url, keys["scoped"], json=body)
        assert_error(refused, 403, "may not predict on 'credit'", "scoped to numeric")
    # Reads are not scoped: a scoped key still sees metadata.
    assert server.call("GET", "/v2/models/credit", keys["scoped"]).status_code == 200


def test_a_refused_prediction_is_refused_before_its_body_is_read(
    server: Clients, keys: dict[str, str]
) -> None:
    # A malformed body would be a 400 for whoever may predict; a viewer learns only 403.
    refused = server.call("POST", "/v1/predict/credit", keys["viewer"], content=b"{not json")
    assert_error(refused, 403, "may not predict")
    allowed = server.call("POST", "/v1/predict/credit", keys["predictor"], content=b"{not json")
    assert_error(allowed, 400, "not valid JSON")


# -- bad credentials ---------------------------------------------------------------------------

BAD = {
    "another scheme": "Basic dXNlcjpwYXNz",
    "empty bearer": "Bearer",
    "not a key": "Bearer hunter2",
    "a malformed key": "Bearer berth_zz_short",
    "a made-up key": "Bearer berth_0123456789ab_" + "A" * 43,
    "a JWT with no JWKS configured": "Bearer aaa.bbb.ccc",
    "a huge value": "Bearer berth_" + "x" * 20_000,
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_bad_credentials_are_401_json_on_every_route(server: Clients, what: str) -> None:
    for (method, path), _right in RULES:
        for remote in (True, False):
            response = server.call(
                method, url_of(path), headers={"Authorization": BAD[what]}, remote=remote
            )
            message = assert_error(response, 401)
            assert "berth_" not in message.replace("berth_<id>_<secret>", ""), message
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_wrong_key_is_named_as_such_but_not_which_part(
    server: Clients, keys: dict[str, str]
) -> None:
    prefix, key_id, secret = keys["viewer"].split("_", 2)
    wrong_secret = f"{prefix}_{key_id}_{secret[::-1]}"
    wrong_id = f"{prefix}_{'f' * 12}_{secret}"
    messages = {
        assert_error(server.call("GET", "/v1/models", key), 401) for key in (wrong_secret, wrong_id)
    }
    assert messages == {"invalid API key: unknown, or not the key it claims"}


def test_a_revoked_key_is_refused_within_the_cache_time(home: Served, server: Clients) -> None:
    with Berth(settings(home.home)) as other_process:
        key = other_process.create_key("to-revoke", "viewer").key
        assert server.call("GET", "/v1/models", key).status_code == 200  # now cached
        other_process.revoke_key("to-revoke")
    deadline = time.monotonic() + 10.0
    while (response := server.call("GET", "/v1/models", key)).status_code == 200:
        assert time.monotonic() < deadline, "still accepted 10 s after its revocation"
        time.sleep(0.25)
    assert_error(response, 401, "'to-revoke' was revoked")


def test_an_expired_key_is_refused(home: Served, server: Clients) -> None:
    with Berth(settings(home.home)) as local:
        key = local.create_key("expiring", "viewer", expires_in=timedelta(days=1)).key
        with local.db.write() as s:
            s.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.name == "expiring")
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
    assert_error(server.call("GET", "/v1/models", key), 401, "'expiring' expired on")


# -- probes, auth off --------------------------------------------------------------------------


def test_probes_can_be_closed_to_loopback_too(home: Served, keys: dict[str, str]) -> None:
    with serving(make_app(home.home, auth=True, auth_open_probes=False)) as closed:
        for path in PROBES:
            assert_error(closed.call("GET", path, remote=False), 401, "needs credentials")
        assert closed.call("GET", "/v2/health/ready", keys["predictor"]).status_code == 200
        assert closed.call("GET", "/metrics", keys["viewer"]).status_code == 200
        assert_error(closed.call("GET", "/metrics", keys["predictor"]), 403, "may not metrics")


def test_with_auth_off_every_route_answers_without_a_key(home: Served) -> None:
    with serving(make_app(home.home)) as open_server:
        for (method, path), _right in RULES:
            response = open_server.call(method, url_of(path))
            assert succeeded(method, response), (path, response.status_code, response.text)


# -- a real client over a socket ---------------------------------------------------------------


def test_tritonclient_sends_the_key_in_its_headers(home: Served, keys: dict[str, str]) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from berth.testing import running_server

    rows = home.credit_rows
    with running_server(make_app(home.home, auth=True)) as base_url:
        triton = httpclient.InferenceServerClient(url=base_url.removeprefix("http://"))
        try:
            inputs = []
            for f in CREDIT_FEATURES:
                item = httpclient.InferInput(f, [len(rows)], CREDIT_DTYPES[f])
                values = rows[f].to_numpy()
                item.set_data_from_numpy(
                    values.astype(object) if CREDIT_DTYPES[f] == "BYTES" else values
                )
                inputs.append(item)
            auth = {"Authorization": f"Bearer {keys['predictor']}"}
            result = triton.infer("credit", inputs, headers=auth)
            assert len(np.asarray(result.as_numpy("label")).ravel()) == len(rows)
            assert triton.is_server_live() is True  # a probe, from loopback
            with pytest.raises(InferenceServerException, match="needs credentials"):
                triton.infer("credit", inputs)
            with pytest.raises(InferenceServerException, match="may not predict"):
                triton.infer(
                    "credit", inputs, headers={"Authorization": f"Bearer {keys['viewer']}"}
                )
        finally:
            triton.close()
