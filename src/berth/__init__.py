"""Berth: take a trained model to production and keep it healthy there.

The Python API. Module-level functions act on a default :class:`Berth` client built from the
environment (``BERTH_HOME``, ``BERTH_DATABASE_URL``) on first use; :func:`connect` gives an explicit
one. Importing ``berth`` loads no web framework, deep-learning library or broker client.

>>> import berth
>>> version = berth.register(model, "credit-risk", training_data=X_train)  # doctest: +SKIP
>>> berth.set_alias("credit-risk", "production", version.version)  # doctest: +SKIP
>>> berth.load("credit-risk@production").predict(X_new)  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berth.errors import (
    ArtifactIntegrityError,
    BerthError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    SchemaError,
    UnauthorizedError,
    UnavailableError,
    UntrustedArtifactError,
)

if TYPE_CHECKING:
    from berth.app import Berth
    from berth.registry.service import ModelSummary, VersionInfo
    from berth.runtime.handle import ModelHandle

__version__ = "0.1.0"

_lock = threading.Lock()
_default: Berth | None = None


def connect(
    home: str | Path | None = None, database_url: str | None = None, user: str | None = None
) -> Berth:
    """A client on the given home and database; unset arguments come from the environment."""
    from berth.app import Berth
    from berth.config import Settings

    overrides: dict[str, Any] = {}
    if home is not None:
        overrides["home"] = Path(home)
    if database_url is not None:
        overrides["database_url"] = database_url
    if user is not None:
        overrides["user"] = user
    return Berth(Settings(**overrides))


def _client() -> Berth:
    global _default
    with _lock:
        if _default is None:
            _default = connect()
        return _default


def register(model: object, name: str, **kwargs: Any) -> VersionInfo:
    """Register ``model`` as the next version of ``name``; see :meth:`Berth.register`."""
    return _client().register(model, name, **kwargs)


def load(ref: str, *, record: bool = False) -> ModelHandle:
    """Load ``name`` (the production alias, else the newest version), ``name/3``,
    ``name@alias`` or ``name@latest`` as a validated predictor; see :meth:`Berth.load`."""
    return _client().load(ref, record=record)


def set_alias(name: str, alias: str, version: int) -> int | None:
    """Point ``alias`` at ``version``; returns the version it pointed at before."""
    return _client().set_alias(name, alias, version)


def list_models(search: str | None = None) -> list[ModelSummary]:
    return _client().list_models(search)


def list_versions(name: str, **kwargs: Any) -> list[VersionInfo]:
    return _client().list_versions(name, **kwargs)


def get_version(ref: str) -> VersionInfo:
    return _client().get_version(ref)


__all__ = [
    "ArtifactIntegrityError",
    "BerthError",
    "ConflictError",
    "ForbiddenError",
    "InvalidInputError",
    "NotFoundError",
    "SchemaError",
    "UnauthorizedError",
    "UnavailableError",
    "UntrustedArtifactError",
    "__version__",
    "connect",
    "get_version",
    "list_models",
    "list_versions",
    "load",
    "register",
    "set_alias",
]
