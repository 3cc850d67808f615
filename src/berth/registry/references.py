"""Model references: ``NAME``, ``NAME/VERSION``, ``NAME@ALIAS``.

A bare name means the newest version (the same as ``NAME@latest``); production code should name an
alias so that a promotion or rollback changes what it serves without a redeploy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth.errors import InvalidInputError, InvalidReferenceError

LATEST = "latest"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Reference:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return f"{self.name}@{self.alias or LATEST}"


def parse_reference(ref: str) -> Reference:
    ref = ref.strip()
    if "/" in ref:
        name, _, version = ref.partition("/")
        check_model_name(name, ref)
        if not is_number(version) or int(version) < 1:
            raise InvalidReferenceError(ref, f"version {version!r} is not a positive integer")
        return Reference(name, version=int(version))
    if "@" in ref:
        name, _, alias = ref.partition("@")
        check_model_name(name, ref)
        check_alias(alias, ref)
        return Reference(name, alias=alias)
    check_model_name(ref, ref)
    return Reference(ref, alias=LATEST)


def is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts characters like '²' that ``int`` refuses."""
    return text.isascii() and text.isdigit()


def check_model_name(name: str, ref: str | None = None) -> str:
    if not _NAME.match(name):
        reason = (
            f"model name {name!r} must start with a letter or digit and hold only letters, "
            "digits, '.', '_' or '-' (128 at most)"
        )
        if ref is not None and ref != name:
            raise InvalidReferenceError(ref, reason)
        raise InvalidInputError(f"invalid {reason}")
    return name


def check_alias(alias: str, ref: str | None = None) -> str:
    if not _ALIAS.match(alias):
        reason = (
            f"alias {alias!r} must start with a lower-case letter and hold only a-z, 0-9, "
            "'_' or '-' (64 at most)"
        )
        if ref is not None:
            raise InvalidReferenceError(ref, reason)
        raise InvalidInputError(f"invalid {reason}")
    return alias
