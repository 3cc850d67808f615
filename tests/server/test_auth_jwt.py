"""JWT bearer tokens from an identity provider, verified against a JWKS file with a key pair
made here: roles from a claim or from groups, subject as the principal, and every way a token
can be wrong answered 401/403 JSON."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.server.conftest import Served, assert_error, tabular_home
from tests.server.test_auth_matrix import Clients, make_app, serving

from berth.app import Berth
from berth.config import Settings
from berth.errors import InvalidInputError, UnauthorizedError

ISSUER = "https://idp.example.test"
AUDIENCE = "berth"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def signer() -> rsa.RSAPrivateKey:
    return _key()


@pytest.fixture(scope="module")
def jwks(tmp_path_factory: pytest.TempPathFactory, signer: rsa.RSAPrivateKey) -> Path:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signer.public_key()))
    public.update({"kid": "idp-1", "alg": "RS256", "use": "sig"})
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [public]}))
    return path


def token(key: Any, *, kid: str = "idp-1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice@example.test", "exp": now + 300}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, alg, {"kid": kid})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return tabular_home(tmp_path_factory.mktemp("auth-jwt") / "home")


@pytest.fixture(scope="module")
def server(home: Served, jwks: Path) -> Iterator[Clients]:
    app = make_app(
        home.home,
        auth=True,
        jwks_file=jwks,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_group_roles={"ml-platform": "deployer", "scoring": "predictor"},
    )
    with serving(app) as clients:
        yield clients


def _predict(server: Clients, bearer: str, home: Served, model: str = "numeric") -> Any:
    rows = home.numeric_rows if model == "numeric" else home.credit_rows
    body = {"records": rows.to_dict(orient="records")}
    return server.call("POST", f"/v1/predict/{model}", bearer, json=body)


def test_a_token_with_a_role_claim_acts_as_its_subject(
    server: Clients, signer: Any, home: Served
) -> None:
    predictor = token(signer, berth_role="predictor")
    assert _predict(server, predictor, home).status_code == 200
    viewer = token(signer, berth_role="viewer", sub="bob")
    assert_error(_predict(server, viewer, home), 403, "'bob' (viewer) may not predict")
    assert server.call("GET", "/v1/models", viewer).status_code == 200


def test_groups_map_to_the_strongest_role(server: Clients, signer: Any, home: Served) -> None:
    both = token(signer, groups=["scoring", "ml-platform", "unrelated"])
    assert server.call("GET", "/metrics", both).status_code == 200  # deployer has metrics
    scoring = token(signer, groups=["scoring"], sub="svc-scorer")
    assert_error(server.call("GET", "/metrics", scoring), 403, "'svc-scorer' (predictor)")


def test_a_scoped_token(server: Clients, signer: Any, home: Served) -> None:
    scoped = token(signer, berth_role="predictor", berth_scopes=["numeric"])
    assert _predict(server, scoped, home).status_code == 200
    assert_error(_predict(server, scoped, home, "credit"), 403, "scoped to numeric")


def test_a_token_without_a_role_is_forbidden(server: Clients, signer: Any) -> None:
    nobody = token(signer, groups=["unrelated"])
    assert_error(server.call("GET", "/v1/models", nobody), 403, "carries no Berth role")


WRONG: dict[str, tuple[dict[str, Any], str]] = {
    "expired": ({"exp": int(time.time()) - 3600}, "has expired"),
    "another audience": ({"aud": "someone-else"}, "configured issuer for this audience"),
    "another issuer": ({"iss": "https://evil.test"}, "configured issuer for this audience"),
    "no expiry": ({"exp": None}, "no 'exp' claim"),
    "no subject": ({"sub": None}, "no 'sub' claim"),
    "an unknown key id": ({"kid": "idp-2"}, "not signed by a trusted key"),
}


@pytest.mark.parametrize("what", sorted(WRONG))
def test_a_wrong_token_is_401_naming_why(server: Clients, signer: Any, what: str) -> None:
    claims, why = WRONG[what]
    bad = token(signer, berth_role="admin", **claims)
    response = server.call("GET", "/v1/models", bad)
    assert_error(response, 401, why)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_token_signed_by_another_key_is_refused(server: Clients) -> None:
    forged = token(_key(), berth_role="admin")
    assert_error(server.call("GET", "/v1/models", forged), 401, "bad signature")


def test_algorithm_confusion_is_refused(server: Clients, signer: Any) -> None:
    """An HS256 token whose HMAC key is the public key (which anyone may have) must not pass
    as signed by it."""
    public_pem = signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300}
    claims["berth_role"] = "admin"
    header = {"kid": "idp-1", "alg": "HS256", "typ": "JWT"}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(public_pem, signing.encode(), hashlib.sha256).digest()
    forged = f"{signing}.{b64(signature)}"
    assert_error(server.call("GET", "/v1/models", forged), 401, "not signed by a trusted key")
    unsigned = b64(json.dumps({"alg": "none", "kid": "idp-1"}).encode())
    none = f"{unsigned}.{b64(json.dumps(claims).encode())}."
    assert_error(server.call("GET", "/v1/models", none), 401)


def test_the_python_api_acts_with_a_token(home: Served, jwks: Path, signer: Any) -> None:
    common = {"home": home.home, "auth": True, "jwks_file": jwks, "jwt_audience": AUDIENCE}
    with Berth(Settings(**common, api_key=token(signer, berth_role="viewer"))) as viewer:
        assert {m.name for m in viewer.list_models()} >= {"credit", "numeric"}
        assert viewer.actor == "alice@example.test"
    expired = Berth(Settings(**common, api_key=token(signer, berth_role="viewer", exp=1)))
    with expired, pytest.raises(UnauthorizedError, match="expired"):
        expired.list_models()


def test_a_bad_jwks_file_is_named(home: Served, tmp_path: Path) -> None:
    broken = tmp_path / "jwks.json"
    broken.write_text("{not json")
    with pytest.raises(InvalidInputError, match=r"JWKS file .*jwks.json.* is not usable"):
        make_app(home.home, auth=True, jwks_file=broken)
    wrong_role = tmp_path / "ok.json"
    wrong_role.write_text(json.dumps({"keys": []}))
    with pytest.raises(InvalidInputError):
        make_app(home.home, auth=True, jwks_file=wrong_role)
