"""Who is acting, and what their role lets them do: the one access model every entry point shares.

A :class:`Principal` is the actor of a request or a command: an API key's name, a token's
subject, or the local OS user. It is set for the current context with :func:`acting_as` (the
server's auth middleware per request, the CLI and the Python API once per client) and read where
the decision is made: the service functions that change state (which also write the audit event
with ``principal.name``) and the inference path's resolve. So authorization holds in every mode
without a check per route. A context with no principal set acts as :data:`LOCAL` (the embedded
default: whoever can run the process and open the database is its admin).

Roles and what they may do (``PERMISSIONS``):

- ``admin``: everything, keys included;
- ``deployer``: read, register, move and delete aliases and versions, deploy, conclude experiments;
- ``predictor``: inference and feedback, optionally scoped to some models or deployments;
- ``viewer``: read metadata, record summaries and metrics.

This module lives in the registry layer because the registry's service functions enforce it; it
imports nothing above ``errors``.
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

from berth.errors import ForbiddenError, UnauthorizedError

Role = Literal["admin", "deployer", "predictor", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)

Permission = Literal[
    "read",  # models, versions, aliases, signatures, metadata routes, /docs
    "records",  # prediction record summaries and exports
    "metrics",  # /metrics
    "predict",  # inference on a model or deployment
    "feedback",  # outcomes joined to prediction ids
    "register",  # new versions
    "alias",  # move or delete an alias
    "delete",  # delete a version, collect garbage
    "deploy",  # deployments, batch jobs and schedules
    "experiment",  # start, conclude and stop experiments
    "keys",  # create, list and revoke keys
    "admin",  # trust artifacts, override gates, rebuild the registry
]

_VIEW: frozenset[Permission] = frozenset({"read", "records", "metrics"})
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    "admin": frozenset(get_args(Permission)),
    "deployer": _VIEW
    | frozenset({"predict", "feedback", "register", "alias", "delete", "deploy", "experiment"}),
    "predictor": frozenset({"predict", "feedback", "read"}),
    "viewer": _VIEW,
}
SCOPED: frozenset[Permission] = frozenset({"predict", "feedback"})
"""Permissions a key's scopes narrow to some models or deployments (others are global)."""


@dataclass(frozen=True)
class Principal:
    """An actor: ``name`` is what the audit log records (a key's name, a token's subject or the
    OS user); ``scopes`` (empty: all) narrow a predictor to some models or deployments."""

    name: str
    role: Role
    scopes: tuple[str, ...] = ()
    via: Literal["local", "key", "token", "anonymous"] = "local"

    @property
    def anonymous(self) -> bool:
        return self.via == "anonymous"

    def can(self, permission: Permission, subject: str | None = None) -> bool:
        if self.anonymous or permission not in PERMISSIONS[self.role]:
            return False
        if self.scopes and permission in SCOPED and subject is not None:
            return subject in self.scopes
        return True

    def require(self, permission: Permission, subject: str | None = None) -> Principal:
        """This principal, if it may; else 401 (no credentials) or 403 (not this right)."""
        if self.can(permission, subject):
            return self
        if self.anonymous:
            raise UnauthorizedError(
                "this needs credentials: send an API key as 'Authorization: Bearer KEY' "
                "(berth keys create)"
            )
        on = f" on {subject!r}" if subject is not None else ""
        raise ForbiddenError(
            f"{self.name!r} ({self.role}) may not {permission}{on}"
            + (f"; its key is scoped to {', '.join(self.scopes)}" if self.scopes else "")
        )


def local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


LOCAL = Principal(local_user(), "admin", via="local")
"""The embedded default: whoever can run the process and open the database."""

ANONYMOUS = Principal("anonymous", "viewer", via="anonymous")
"""A request without credentials to a server with auth on: every check answers 401."""

_CURRENT: contextvars.ContextVar[Principal] = contextvars.ContextVar("berth_principal")


def current() -> Principal:
    """The principal of the current context (:data:`LOCAL` when none was set)."""
    return _CURRENT.get(LOCAL)


def require(permission: Permission, subject: str | None = None) -> Principal:
    """The current principal if it may do ``permission`` (on ``subject``); raises 401/403."""
    return _CURRENT.get(LOCAL).require(permission, subject)


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[Principal]:
    """Run the block as ``principal`` (contextvars follow asyncio tasks and to_thread)."""
    token = _CURRENT.set(principal)
    try:
        yield principal
    finally:
        _CURRENT.reset(token)


def set_current(principal: Principal) -> contextvars.Token[Principal]:
    """For pure ASGI middleware that sets the principal for the rest of a request."""
    return _CURRENT.set(principal)


def reset_current(token: contextvars.Token[Principal]) -> None:
    _CURRENT.reset(token)
