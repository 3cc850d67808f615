"""API keys: created once, stored as a keyed hash only, verified, revoked, expired; and the
Python API acting as a key's principal on a shared database (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from tests.models import SumModel, numbers

from berth.app import Berth
from berth.config import Settings
from berth.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    UnauthorizedError,
)
from berth.registry.access import ANONYMOUS, LOCAL, PERMISSIONS, ROLES, Principal, acting_as
from berth.registry.keys import Keys, load_pepper, parse_duration
from berth.registry.tables import ApiKeyRow, utcnow

PEPPER = "a-test-pepper-of-some-length"


def _linear() -> Any:
    """A scikit-learn model (skops: registers without trust)."""
    from sklearn.linear_model import LinearRegression

    data = numbers()
    return LinearRegression().fit(data, data["a"] + data["b"])


def _register(c: Berth, name: str, **kwargs: Any) -> Any:
    return c.register(_linear(), name, training_data=numbers(), measure_latency=False, **kwargs)


@pytest.fixture
def keys(any_client: Berth) -> Keys:
    return Keys(any_client.db, PEPPER.encode())


def test_a_key_is_shown_once_and_only_its_hmac_is_stored(client: Berth) -> None:
    new = client.create_key("ci", "deployer", expires_in=timedelta(days=90))
    prefix, key_id, secret = new.key.split("_", 2)
    assert (prefix, key_id) == ("berth", new.info.id)
    assert len(secret) >= 43
    assert (new.info.role, new.info.created_by) == ("deployer", "tester")
    with client.db.read() as s:
        row = s.get(ApiKeyRow, key_id)
    assert row is not None
    pepper = load_pepper(None, client.settings.home)
    expected = hmac.new(pepper, new.key.encode(), hashlib.sha256).hexdigest()
    assert row.digest == "hmac-sha256:" + expected
    # Nowhere in the database file (nor its WAL) is the secret or the key.
    client.db.dispose()
    for path in client.settings.home.glob("berth.db*"):
        blob = path.read_bytes()
        assert secret.encode() not in blob, path
        assert new.key.encode() not in blob, path
    # Listing never shows it either.
    listed = client.list_keys()
    assert [k.name for k in listed] == ["ci"]
    assert secret not in repr(listed)


def test_the_pepper_file_is_private_and_reused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = load_pepper(None, home)
    path = home / "secrets" / "key-pepper"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_pepper(None, home) == first
    assert len(first) >= 32
    assert load_pepper(PEPPER, home) == PEPPER.encode()
    with pytest.raises(InvalidInputError, match="at least 16"):
        load_pepper("short", home)


def test_verify_names_why_and_never_which_part(keys: Keys) -> None:
    new = keys.create("app", "predictor", scopes=["credit"])
    principal = keys.verify(new.key)
    assert principal == Principal("app", "predictor", ("credit",), via="key")
    key_id = new.info.id
    wrong_secret = f"berth_{key_id}_{'x' * 43}"
    unknown_id = f"berth_{'0' * 12}_{new.key.split('_', 2)[2]}"
    for bad in (wrong_secret, unknown_id):
        with pytest.raises(UnauthorizedError) as caught:
            keys.verify(bad)
        assert str(caught.value) == "invalid API key: unknown, or not the key it claims"
    with pytest.raises(UnauthorizedError, match="not a Berth key"):
        keys.verify("berth_nope")
    # Another pepper (another server not given the shared one) cannot verify it.
    with pytest.raises(UnauthorizedError, match="invalid API key"):
        Keys(keys.db, b"another-pepper-entirely").verify(new.key)


def test_revocation_is_immediate_here_and_within_the_cache_elsewhere(keys: Keys) -> None:
    new = keys.create("app", "viewer")
    elsewhere = Keys(keys.db, PEPPER.encode(), cache_ttl_s=0.2)  # another process
    assert elsewhere.verify(new.key).name == "app"
    info = keys.revoke("app")
    assert (info.revoked_by, info.status()) == (LOCAL.name, "revoked")
    with pytest.raises(UnauthorizedError, match="'app' was revoked"):
        keys.verify(new.key)
    assert elsewhere.verify(new.key).name == "app"  # cached: within its TTL
    time.sleep(0.3)
    with pytest.raises(UnauthorizedError, match="revoked"):
        elsewhere.verify(new.key)
    with pytest.raises(ConflictError, match="already revoked"):
        keys.revoke("app")
    with pytest.raises(NotFoundError, match="no key named 'ghost'"):
        keys.revoke("ghost")


def test_an_expired_key_is_refused(keys: Keys) -> None:
    new = keys.create("short-lived", "viewer", expires_in=timedelta(days=1))
    with keys.db.write() as s:
        s.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.name == "short-lived")
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
    with pytest.raises(UnauthorizedError, match="'short-lived' expired on"):
        keys.verify(new.key)
    assert keys.list()[0].status() == "expired"


def test_a_cached_key_still_expires_on_time(keys: Keys) -> None:
    new = keys.create("blink", "viewer", expires_in=timedelta(seconds=1))
    assert keys.verify(new.key).name == "blink"
    time.sleep(1.1)
    with pytest.raises(UnauthorizedError, match="expired"):
        keys.verify(new.key)  # still in the 5 s cache, but past its expiry


def test_key_operations_need_the_keys_permission_and_are_audited(keys: Keys) -> None:
    for role in ("deployer", "predictor", "viewer"):
        with acting_as(Principal("someone", role)), pytest.raises(ForbiddenError):
            keys.create("x", "viewer")
    with acting_as(ANONYMOUS), pytest.raises(UnauthorizedError):
        keys.list()
    keys.create("ops", "admin")
    with acting_as(Principal("ops", "admin", via="key")):
        new = keys.create("app", "predictor")
        keys.revoke("app")
    from berth.registry.service import Registry

    events = Registry(keys.db, None).audit_log("key/")  # type: ignore[arg-type]
    assert [(e.action, e.subject, e.actor) for e in events] == [
        ("key.create", "key/ops", LOCAL.name),
        ("key.create", "key/app", "ops"),
        ("key.revoke", "key/app", "ops"),
    ]
    secret = new.key.split("_", 2)[2]
    assert all(secret not in repr(e.details) for e in events)


def test_bad_key_requests_are_named(keys: Keys) -> None:
    with pytest.raises(InvalidInputError, match="unknown role 'root'"):
        keys.create("a", "root")
    with pytest.raises(InvalidInputError, match="invalid key name"):
        keys.create("has space", "viewer")
    with pytest.raises(InvalidInputError, match="give them to a predictor key"):
        keys.create("a", "admin", scopes=["credit"])
    with pytest.raises(InvalidInputError, match="invalid model name"):
        keys.create("a", "predictor", scopes=["no/slash"])
    keys.create("a", "viewer")
    with pytest.raises(ConflictError, match="a key named 'a' exists"):
        keys.create("a", "viewer")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86400), ("12h", 43200), ("30m", 1800), ("2w", 14 * 86400), ("1d12h", 129600)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "90", "d", "90x", "0d", "-1d", "3 days"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidInputError, match="duration"):
        parse_duration(text)


# -- the Python API acting as a key's principal, on a shared database ------------------------


@pytest.fixture
def shared(request: pytest.FixtureRequest, home: Path) -> Iterator[Callable[..., Berth]]:
    """Clients of one database (SQLite, or PostgreSQL when marked): ``make(key)`` acts with a
    key (auth on), ``make()`` as the local admin (auth off)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    made: list[Berth] = []

    def make(key: str | None = None, **settings: Any) -> Berth:
        auth = key is not None or settings.pop("auth", False)
        c = Berth(
            Settings(
                home=home,
                database_url=url,
                user="tester",
                auth=auth,
                api_key=key,
                key_pepper=PEPPER,
                **settings,
            )
        )
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


SHARED = pytest.mark.parametrize(
    "shared", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def _ops(local: Berth) -> dict[str, tuple[str, Callable[[Berth], object]]]:
    """Each Python API operation: the permission it needs, and a call (with its set-up done
    by the local admin, so that each can run on its own)."""

    def delete_alias(c: Berth) -> object:
        local.set_alias("m", "gone", 1)
        return c.delete_alias("m", "gone")

    def delete_version(c: Berth) -> object:
        extra = _register(local, "m")
        return c.delete_version("m", extra.version)

    def create_key(c: Berth) -> object:
        name = f"k{os.urandom(4).hex()}"
        return c.create_key(name, "viewer")

    def revoke_key(c: Berth) -> object:
        name = f"k{os.urandom(4).hex()}"
        local.create_key(name, "viewer")
        return c.revoke_key(name)

    return {
        "list_models": ("read", lambda c: c.list_models()),
        "list_versions": ("read", lambda c: c.list_versions("m")),
        "get_version": ("read", lambda c: c.get_version("m")),
        "get_profile": ("read", lambda c: c.get_profile("m")),
        "alias_history": ("read", lambda c: c.alias_history("m")),
        "jobs.recent": ("read", lambda c: _as(c, lambda: c.jobs.recent())),
        "load": ("predict", lambda c: c.load("m").predict(numbers(2))),
        "load other": ("predict", lambda c: c.load("other")),
        "register": ("register", lambda c: _register(c, "m")),
        "register trusted": (
            "admin",
            lambda c: c.register(
                SumModel(), "m", training_data=numbers(), trusted=True, measure_latency=False
            ),
        ),
        "set_alias": ("alias", lambda c: c.set_alias("m", "staging", 1)),
        "delete_alias": ("alias", delete_alias),
        "delete_version": ("delete", delete_version),
        "collect_garbage": ("delete", lambda c: c.collect_garbage()),
        "list_keys": ("keys", lambda c: c.list_keys()),
        "create_key": ("keys", create_key),
        "revoke_key": ("keys", revoke_key),
    }


def _as(c: Berth, call: Callable[[], object]) -> object:
    with c.acting():
        return call()


@SHARED
def test_the_python_api_matrix(shared: Callable[..., Berth]) -> None:
    local = shared()
    _register(local, "m")
    _register(local, "other")
    local.set_alias("m", "production", 1)
    clients = {role: shared(local.create_key(f"{role}-key", role).key) for role in ROLES}
    clients["scoped"] = shared(local.create_key("scoped-key", "predictor", scopes=["m"]).key)
    ops = _ops(local)
    for role, c in clients.items():
        granted = PERMISSIONS["predictor" if role == "scoped" else role]  # type: ignore[index]
        for op, (permission, call) in ops.items():
            allowed = permission in granted and not (role == "scoped" and op == "load other")
            if allowed:
                call(c)
            else:
                with pytest.raises(ForbiddenError, match=f"'{role}-key' .* may not"):
                    call(c)
    # The audit log names the key, not the OS user.
    history = local.alias_history("m")
    assert {e.actor for e in history if e.subject == "m@staging"} == {"admin-key", "deployer-key"}
    versions = local.list_versions("m")
    assert {v.created_by for v in versions} >= {"tester", "admin-key", "deployer-key"}


@SHARED
def test_the_python_api_needs_a_good_key_when_auth_is_on(shared: Callable[..., Berth]) -> None:
    local = shared()
    new = local.create_key("app", "viewer")
    with pytest.raises(UnauthorizedError, match=r"auth is on .*BERTH_API_KEY"):
        shared(auth=True).list_models()
    with pytest.raises(UnauthorizedError, match="invalid API key"):
        shared(new.key[:-2] + "xx").list_models()
    local.revoke_key("app")
    with pytest.raises(UnauthorizedError, match="'app' was revoked"):
        shared(new.key).list_models()
