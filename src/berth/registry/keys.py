"""API keys and bearer tokens: how a credential becomes a :class:`~berth.registry.access.Principal`.

A key is ``berth_<id>_<secret>``: ``id`` (12 hex digits) is the public part that finds its row,
``secret`` is 32 random bytes (``secrets.token_urlsafe``). The key is shown once, when created;
the ``api_keys`` table keeps only ``HMAC-SHA256(pepper, key)``. API keys are random, not chosen
by people, so a slow password hash (argon2: ~110 ms a verify here) adds nothing against guessing
and would cost every request; the keyed hash (~1.5 us) means a copy of the database alone is not
enough to test guesses offline: the pepper lives outside it, in ``BERTH_KEY_PEPPER`` or a file
``$BERTH_HOME/secrets/key-pepper`` (0600, created on first use). Servers that share one
PostgreSQL database must share the pepper, through the environment.

Verification is cached per key digest for ``cache_ttl_s`` (default 5 s), so a request costs one
HMAC and a dict lookup, not a query; a revocation (or a new key) made by another process takes
effect within that time, at once in the process that made it. Expiry is checked on every use.

Bearer tokens that are JWTs (an organisation's identity provider) are verified with PyJWT against
a JWKS file, issuer and audience (:class:`TokenVerifier`); their ``sub`` is the principal's name
and a claim (``berth_role``, or groups mapped to roles) its role.

Every change of a key goes through :class:`Keys` (``create``, ``revoke``), which requires the
``keys`` permission and writes the audit event in the same transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from berth.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    MissingExtraError,
    NotFoundError,
    UnauthorizedError,
)
from berth.registry.access import ROLES, Principal, Role, require
from berth.registry.references import check_model_name
from berth.registry.tables import ApiKeyRow, utcnow, write_audit

if TYPE_CHECKING:
    from berth.config import Settings
    from berth.registry.db import Database

log = logging.getLogger("berth.auth")

KEY_PREFIX = "berth_"
_KEY = re.compile(r"berth_([0-9a-f]{12})_([A-Za-z0-9_-]{43,128})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_SCHEME = "hmac-sha256:"
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
PEPPER_FILE = Path("secrets") / "key-pepper"
CACHE_TTL_S = 5.0
"""How long a verified (or refused) credential is answered from memory."""
_CACHE_MAX = 4096
_ROLE_RANK: dict[str, int] = {"viewer": 0, "predictor": 1, "deployer": 2, "admin": 3}


class InvalidCredentialsError(UnauthorizedError):
    """A credential that was sent but is not good: malformed, unknown, wrong, expired, revoked."""


@dataclass(frozen=True)
class KeyInfo:
    """What ``berth keys list`` shows of a key: never its secret nor its hash."""

    name: str
    id: str
    role: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None

    def status(self, now: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"


@dataclass(frozen=True)
class NewKey:
    """A key just created: ``key`` is the only time the secret exists outside its holder."""

    key: str
    info: KeyInfo


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w``, ``3600s`` (or ``1d12h``) as a timedelta."""
    given = text.strip().lower()
    parts = _DURATION.findall(given)
    if not parts or _DURATION.sub("", given).strip():
        raise InvalidInputError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w (e.g. 90d)"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in parts)
    if seconds <= 0:
        raise InvalidInputError(f"invalid duration {text!r}: it must be longer than nothing")
    return timedelta(seconds=seconds)


def load_pepper(secret: str | None, home: Path, *, shared_database: bool = False) -> bytes:
    """The pepper of key hashes: ``secret`` (BERTH_KEY_PEPPER) when given, else the one in
    ``home``'s pepper file, created (0600, in a 0700 folder) on first use. Two processes creating
    it at once agree on one: it is written aside and linked into place, which only one wins."""
    if secret is not None:
        if len(secret) < 16:
            raise InvalidInputError("BERTH_KEY_PEPPER must be at least 16 characters long")
        return secret.encode()
    path = home.resolve() / PEPPER_FILE
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
                if shared_database:
                    log.warning(
                        "created the API key pepper %s on this host: every server of a shared "
                        "database needs the same one (set BERTH_KEY_PEPPER on all of them)",
                        path,
                    )
        finally:
            aside.unlink(missing_ok=True)
    try:
        pepper = path.read_text().strip()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the API key pepper {path}: {exc.strerror}") from exc
    if len(pepper) < 16:
        raise InvalidInputError(f"the API key pepper {path} is damaged (too short)")
    return pepper.encode()


class _Cache:
    """Answers (a principal, or the refusal) for a few seconds, bounded: a flood of bad
    credentials cannot grow it without limit."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[bytes, tuple[float, Principal | None, str, float | None]] = {}

    def get(self, digest: bytes) -> Principal | None:
        """The cached principal; raises the cached refusal; None when not cached."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        until, principal, refusal, expires = entry
        if until <= time.monotonic():
            self._entries.pop(digest, None)
            return None
        if principal is None:
            raise InvalidCredentialsError(refusal)
        if expires is not None and expires <= time.time():
            raise InvalidCredentialsError("the credential has expired")
        return principal

    def put(
        self,
        digest: bytes,
        principal: Principal | None,
        refusal: str = "",
        expires: float | None = None,
        ttl_s: float | None = None,
    ) -> None:
        if len(self._entries) >= _CACHE_MAX:
            now = time.monotonic()
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= _CACHE_MAX:
                self._entries.clear()
        until = time.monotonic() + (self.ttl_s if ttl_s is None else ttl_s)
        self._entries[digest] = (until, principal, refusal, expires)

    def clear(self) -> None:
        self._entries.clear()


class Keys:
    """The ``api_keys`` table's service: create, list, revoke (each requiring the ``keys``
    permission of the current principal) and verify (how a request gets its principal).

    ``pepper`` is the HMAC key or a function giving it (read on first use, so that opening a
    registry creates no secret file)."""

    def __init__(
        self,
        db: Database,
        pepper: bytes | Callable[[], bytes],
        *,
        cache_ttl_s: float = CACHE_TTL_S,
    ) -> None:
        self.db = db
        self._pepper = pepper
        self._mac: hmac.HMAC | None = None
        self._cache = _Cache(cache_ttl_s)

    @property
    def pepper(self) -> bytes:
        if callable(self._pepper):
            self._pepper = self._pepper()
        return self._pepper

    def digest(self, key: str) -> bytes:
        """``HMAC-SHA256(pepper, key)``, from a keyed state made once and copied: OpenSSL 3
        looks the algorithm up again on every ``hmac.digest``, which cost a server 40-50 us a
        request (against 1 us for a copy)."""
        mac = self._mac
        if mac is None:
            mac = self._mac = hmac.new(self.pepper, digestmod=hashlib.sha256)
        copy = mac.copy()
        copy.update(key.encode("utf-8", "surrogateescape"))
        return copy.digest()

    # -- changes -----------------------------------------------------------------------------

    def create(
        self,
        name: str,
        role: str,
        *,
        scopes: Sequence[str] = (),
        expires_in: timedelta | None = None,
        actor: str | None = None,
    ) -> NewKey:
        """A new key for ``role`` (scoped to the models or deployments ``scopes`` names, for
        inference and feedback), valid for ``expires_in`` (None: until revoked)."""
        from berth.registry.service import audit_actor

        who = audit_actor("keys", actor=actor)
        if not _NAME.fullmatch(name):
            raise InvalidInputError(
                f"invalid key name {name!r}: start with a letter or digit; letters, digits, "
                "'.', '_', '@' or '-' (128 at most)"
            )
        if role not in ROLES:
            raise InvalidInputError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        scoped = tuple(dict.fromkeys(check_model_name(s) for s in scopes))
        if scoped and role in ("admin", "deployer"):
            raise InvalidInputError(
                f"scopes narrow inference and feedback: give them to a predictor key, not "
                f"to {role!r} (whose other rights they would not narrow)"
            )
        now = utcnow()
        expires_at = now + expires_in if expires_in is not None else None
        for _attempt in range(3):
            key_id = secrets.token_hex(6)
            key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            row = ApiKeyRow(
                id=key_id,
                name=name,
                role=role,
                scopes=list(scoped),
                digest=_SCHEME + self.digest(key).hex(),
                created_at=now,
                created_by=who,
                expires_at=expires_at,
            )
            try:
                with self.db.write() as s:
                    if s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.name == name)) is not None:
                        raise ConflictError(
                            f"a key named {name!r} exists; revoke it or choose another name"
                        )
                    s.add(row)
                    details: dict[str, Any] = {"id": key_id, "role": role, "scopes": list(scoped)}
                    if expires_at is not None:
                        details["expires_at"] = expires_at.isoformat()
                    write_audit(s, who, "key.create", f"key/{name}", details)
                    s.flush()
                    info = _info(row)
                self._cache.clear()
                return NewKey(key, info)
            except IntegrityError:
                continue  # an id taken meanwhile (48 random bits), or the name: look again
        raise ConflictError(f"a key named {name!r} exists; revoke it or choose another name")

    def revoke(self, name: str, *, actor: str | None = None) -> KeyInfo:
        """Revoke a key for good: this process refuses it at once, others within the cache's
        few seconds."""
        from berth.registry.service import audit_actor

        who = audit_actor("keys", actor=actor)
        with self.db.write() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name))
            if row is None:
                raise NotFoundError(f"no key named {name!r}; see berth keys list")
            if row.revoked_at is not None:
                raise ConflictError(
                    f"key {name!r} was already revoked on {row.revoked_at:%Y-%m-%d %H:%M} UTC "
                    f"by {row.revoked_by}"
                )
            row.revoked_at, row.revoked_by = utcnow(), who
            write_audit(s, who, "key.revoke", f"key/{name}", {"id": row.id})
            s.flush()
            info = _info(row)
        self._cache.clear()
        return info

    # -- reads -------------------------------------------------------------------------------

    def list(self) -> list[KeyInfo]:
        require("keys")
        with self.db.read() as s:
            return [_info(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.name))]

    def cached(self, key: str) -> Principal | None:
        """The principal of ``key`` from memory (raising its remembered refusal); None when
        only the database can tell (call :meth:`verify`, off the event loop)."""
        return self._cache.get(self.digest(key))

    def verify(self, key: str) -> Principal:
        """The principal of ``key``; raises :class:`InvalidCredentialsError` naming why (not a
        key, unknown or wrong, expired, revoked: never which part of it was wrong)."""
        digest = self.digest(key)
        found = self._cache.get(digest)
        if found is not None:
            return found
        try:
            principal, expires = self._lookup(key, digest)
        except InvalidCredentialsError as exc:
            self._cache.put(digest, None, str(exc))
            raise
        self._cache.put(digest, principal, expires=expires)
        return principal

    def _lookup(self, key: str, digest: bytes) -> tuple[Principal, float | None]:
        match = _KEY.fullmatch(key)
        if match is None:
            raise InvalidCredentialsError("invalid API key: not a Berth key (berth_<id>_<secret>)")
        with self.db.read() as s:
            row = s.get(ApiKeyRow, match.group(1))
        if row is None or not hmac.compare_digest(row.digest, _SCHEME + digest.hex()):
            raise InvalidCredentialsError("invalid API key: unknown, or not the key it claims")
        if row.revoked_at is not None:
            raise InvalidCredentialsError(f"API key {row.name!r} was revoked")
        if row.expires_at is not None and row.expires_at <= utcnow():
            raise InvalidCredentialsError(
                f"API key {row.name!r} expired on {row.expires_at:%Y-%m-%d %H:%M} UTC"
            )
        if row.role not in ROLES:
            raise InvalidCredentialsError(f"API key {row.name!r} has an unknown role")
        principal = Principal(row.name, row.role, tuple(row.scopes or ()), via="key")
        expires = row.expires_at.timestamp() if row.expires_at is not None else None
        return principal, expires


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(
        name=row.name,
        id=row.id,
        role=row.role,
        scopes=tuple(row.scopes or ()),
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
    )


# -- JWT bearer tokens -------------------------------------------------------------------------

ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
"""Algorithms a token may be signed with: public-key ones only (an HS256 token "signed" with a
public key, the algorithm-confusion attack, is refused)."""
_ALGORITHMS = (*ASYMMETRIC, "EdDSA")


class TokenVerifier:
    """Verifies JWTs against a JWKS file: signature by one of its keys, ``exp``, and the
    configured ``iss`` and ``aud``. Maps ``sub`` to the principal's name and ``role_claim`` (or
    the strongest role of the groups in ``groups_claim`` that ``group_roles`` names) to its
    role; a ``berth_scopes`` list claim scopes it like a key."""

    def __init__(
        self,
        jwks_file: Path,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        role_claim: str = "berth_role",
        groups_claim: str = "groups",
        group_roles: Mapping[str, str] | None = None,
        cache_ttl_s: float = CACHE_TTL_S,
    ) -> None:
        try:
            import jwt
        except ImportError:
            raise MissingExtraError("jwt", "auth", "verifying JWT bearer tokens") from None
        self._jwt = jwt
        try:
            doc = json.loads(Path(jwks_file).read_text())
            keyset = jwt.PyJWKSet.from_dict(doc)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise InvalidInputError(f"JWKS file {str(jwks_file)!r} is not usable: {exc}") from exc
        self.keys = {k.key_id: k for k in keyset.keys}
        self.issuer = issuer
        self.audience = audience
        self.role_claim = role_claim
        self.groups_claim = groups_claim
        self.group_roles = dict(group_roles or {})
        for group, role in self.group_roles.items():
            if role not in ROLES:
                raise InvalidInputError(
                    f"jwt_group_roles: group {group!r} maps to unknown role {role!r}; roles: "
                    + ", ".join(ROLES)
                )
        self._cache = _Cache(cache_ttl_s)

    def cached(self, token: str) -> Principal | None:
        return self._cache.get(_token_digest(token))

    def verify(self, token: str) -> Principal:
        digest = _token_digest(token)
        found = self._cache.get(digest)
        if found is not None:
            return found
        try:
            principal, expires = self._decode(token)
        except InvalidCredentialsError as exc:
            self._cache.put(digest, None, str(exc))
            raise
        self._cache.put(digest, principal, expires=expires)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float | None]:
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidCredentialsError("invalid bearer token: not a JWT") from None
        kid = header.get("kid")
        key = self.keys.get(kid) if kid is not None else None
        if key is None and kid is None and len(self.keys) == 1:
            key = next(iter(self.keys.values()))
        if key is None:
            raise InvalidCredentialsError("invalid bearer token: not signed by a trusted key")
        algorithm = header.get("alg")
        if algorithm not in _ALGORITHMS or key.algorithm_name != algorithm:
            raise InvalidCredentialsError("invalid bearer token: not signed by a trusted key")
        required = ["exp", "sub"] + ["iss"] * bool(self.issuer) + ["aud"] * bool(self.audience)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=30,
                options={"require": required, "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidCredentialsError("bearer token has expired") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise InvalidCredentialsError(
                "invalid bearer token: not issued by the configured issuer for this audience"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidCredentialsError(f"invalid bearer token: no {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise InvalidCredentialsError("invalid bearer token: bad signature") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidCredentialsError("invalid bearer token: its 'sub' is not a name")
        role = self._role(claims)
        if role is None:
            raise ForbiddenError(
                f"token of {subject!r} carries no Berth role (claim {self.role_claim!r}, or a "
                f"group of {self.groups_claim!r} mapped to a role)"
            )
        scopes = claims.get("berth_scopes") or ()
        if not isinstance(scopes, list | tuple) or not all(isinstance(s, str) for s in scopes):
            raise InvalidCredentialsError("invalid bearer token: 'berth_scopes' is not a list")
        exp = claims.get("exp")
        expires = float(exp) if isinstance(exp, int | float) else None
        return Principal(subject[:128], role, tuple(scopes), via="token"), expires

    def _role(self, claims: Mapping[str, Any]) -> Role | None:
        given = claims.get(self.role_claim)
        if isinstance(given, str) and given in ROLES:
            return given
        groups = claims.get(self.groups_claim)
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list):
            return None
        roles = [
            self.group_roles[g] for g in groups if isinstance(g, str) and g in self.group_roles
        ]
        if not roles:
            return None
        return cast(Role, max(roles, key=_ROLE_RANK.__getitem__))


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Authenticator:
    """A bearer credential to a principal: an API key, or (when configured) a JWT."""

    def __init__(self, keys: Keys, tokens: TokenVerifier | None = None) -> None:
        self.keys = keys
        self.tokens = tokens

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> Authenticator:
        secret = settings.key_pepper.get_secret_value() if settings.key_pepper else None
        home = settings.home
        shared = db.dialect != "sqlite"
        keys = Keys(db, lambda: load_pepper(secret, home, shared_database=shared))
        tokens = None
        if settings.jwks_file is not None:
            tokens = TokenVerifier(
                settings.jwks_file,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                role_claim=settings.jwt_role_claim,
                groups_claim=settings.jwt_groups_claim,
                group_roles=settings.jwt_group_roles,
            )
        return cls(keys, tokens)

    def cached(self, credential: str) -> Principal | None:
        """From memory alone (see :meth:`Keys.cached`): what the server asks on the event loop."""
        if credential.startswith(KEY_PREFIX):
            return self.keys.cached(credential)
        if self.tokens is not None and credential.count(".") == 2:
            return self.tokens.cached(credential)
        return None

    def principal(self, credential: str) -> Principal:
        """The principal ``credential`` stands for; raises ``InvalidCredentialsError`` (a
        token without a role: ``ForbiddenError``), may query the database."""
        if credential.startswith(KEY_PREFIX):
            return self.keys.verify(credential)
        if credential.count(".") == 2:
            if self.tokens is None:
                raise InvalidCredentialsError(
                    "bearer tokens (JWT) are not accepted here: no JWKS file is configured "
                    "(BERTH_JWKS_FILE)"
                )
            return self.tokens.verify(credential)
        raise InvalidCredentialsError("invalid API key: not a Berth key (berth_<id>_<secret>)")
