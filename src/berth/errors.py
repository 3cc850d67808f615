"""The exception tree, neutral about transports.

Every error a user can cause or meet is a :class:`BerthError` with a ``kind``. Each transport maps
the kind once: the server to an HTTP status and ``{"error": ...}``, the CLI to an exit code and one
line, the stream adapter to retry or dead-letter. Messages are built from structured arguments so
that they name the thing that is wrong.

    BerthError
    ├── NotFoundError            kind "not_found"
    │   ├── ModelNotFoundError
    │   └── VersionNotFoundError
    ├── InvalidInputError        kind "invalid_input"
    │   ├── InvalidReferenceError
    │   ├── SchemaError          (a batch that does not fit a signature)
    │   └── TooLargeError        (more than a limit allows: rows per request, a body)
    ├── ConflictError            kind "conflict"
    ├── UnauthorizedError        kind "unauthorized"
    ├── ForbiddenError           kind "forbidden"
    │   └── UntrustedArtifactError
    └── UnavailableError         kind "unavailable"
        ├── ArtifactIntegrityError
        ├── MissingExtraError
        ├── RetryLaterError      (unavailable now; ``retry_after_s`` says when to try again)
        └── DeadlineExceededError (not answered within the request's deadline)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Literal

ErrorKind = Literal[
    "not_found", "invalid_input", "conflict", "unauthorized", "forbidden", "unavailable"
]


class BerthError(Exception):
    """Base of every error Berth raises on purpose."""

    kind: ClassVar[ErrorKind] = "invalid_input"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFoundError(BerthError):
    kind = "not_found"


class InvalidInputError(BerthError):
    kind = "invalid_input"


class ConflictError(BerthError):
    kind = "conflict"


class UnauthorizedError(BerthError):
    kind = "unauthorized"


class ForbiddenError(BerthError):
    kind = "forbidden"


class UnavailableError(BerthError):
    kind = "unavailable"


def _listing(items: Iterable[object]) -> str:
    values = [str(i) for i in items]
    return ", ".join(values) if values else "none"


class ModelNotFoundError(NotFoundError):
    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        known = list(known)
        hint = f"; models: {_listing(known[:20])}" if known else ""
        super().__init__(f"model {name!r} not found{hint}")
        self.name = name


class VersionNotFoundError(NotFoundError):
    def __init__(self, name: str, version: int | str, known: Iterable[int] = ()) -> None:
        super().__init__(f"model {name!r} has no version {version}; versions: {_listing(known)}")
        self.name = name
        self.version = version


class AliasNotFoundError(NotFoundError):
    def __init__(self, name: str, alias: str, known: Iterable[str] = ()) -> None:
        super().__init__(f"model {name!r} has no alias {alias!r}; aliases: {_listing(known)}")
        self.name = name
        self.alias = alias


class InvalidReferenceError(InvalidInputError):
    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(
            f"invalid model reference {ref!r}: {reason} (use NAME, NAME/VERSION or NAME@ALIAS)"
        )
        self.ref = ref


class SchemaError(InvalidInputError):
    """A batch that does not fit a version's signature; ``feature`` names the culprit."""

    def __init__(self, message: str, feature: str | None = None) -> None:
        super().__init__(message)
        self.feature = feature


class TooLargeError(InvalidInputError):
    """A request over one of the limits of what a request may ask (HTTP 413)."""


class UntrustedArtifactError(ForbiddenError):
    pass


class ArtifactIntegrityError(UnavailableError):
    pass


class MissingExtraError(UnavailableError):
    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package {module!r}: pip install 'berth[{extra}]'"
        )
        self.module = module
        self.extra = extra


class RetryLaterError(UnavailableError):
    """Unavailable now but likely not for long (every slot for on-demand versions busy, a load
    that failed moments ago): transports tell the client when to try again (HTTP
    ``Retry-After``) instead of it hammering the server or giving up."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(UnavailableError):
    """A request that was not answered in time; its work was dropped (HTTP 504)."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(
            f"{what} was not answered within its deadline of {seconds:g} s; the work was "
            "dropped (a smaller request, or a longer timeout_s in the serving config)"
        )
        self.seconds = seconds
