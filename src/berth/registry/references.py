"""Model references: ``NAME``, ``NAME/VERSION``, ``NAME@ALIAS`` and ``NAME@latest``.

A reference is parsed once, here, into a :class:`Reference`; every entry point (the server's two
APIs, the CLI, batch jobs, the Python API) resolves it by the one rule of :func:`pick_version`:

- ``NAME/3`` is version 3;
- ``NAME@staging`` is the version the alias points at;
- ``NAME@latest`` is the newest version;
- a bare ``NAME`` is the ``production`` alias when the model has one, else the newest version.

So a promotion (moving ``production``) changes what a bare name serves everywhere at once, and a
model that was never promoted still answers with its newest version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from berth.errors import (
    AliasNotFoundError,
    InvalidInputError,
    InvalidReferenceError,
    VersionNotFoundError,
)

LATEST = "latest"
DEFAULT_ALIAS = "production"
"""What a bare model name means, when the model has it; else the newest version."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Reference:
    """A parsed reference: a version number, an alias, or neither (the default rule)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.alias is not None:
            raise InvalidInputError(f"reference to {self.name!r} names a version and an alias")

    @property
    def is_default(self) -> bool:
        """A bare name: the ``production`` alias when there is one, else the newest version."""
        return self.version is None and self.alias is None

    @property
    def selector(self) -> str | None:
        """The version number or alias as text (an OIP model version), None for a bare name."""
        return str(self.version) if self.version is not None else self.alias

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name

    @classmethod
    def of(cls, name: str, selector: str | None = None) -> Reference:
        """A model name and an optional version number or alias, as the Open Inference
        Protocol gives them (``/v2/models/NAME/versions/SELECTOR``). ``NAME@ALIAS`` is
        accepted as a name when no selector is given."""
        if selector is None:
            return parse_reference(name)
        check_model_name(name)
        if is_number(selector):  # 0 or a huge number: the registry says it has no such version
            return cls(name, version=int(selector))
        text = f"{name}@{selector}"
        check_alias(selector, text)
        return cls(name, alias=selector)


def parse_reference(ref: str | Reference) -> Reference:
    if isinstance(ref, Reference):
        return ref
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
    return Reference(ref)


def pick_version(reference: Reference, aliases: Mapping[str, int], latest: int | None) -> int:
    """The one resolution rule (see the module docstring), given the model's aliases and its
    newest version number. Whether a numbered version exists is the caller's check."""
    if reference.version is not None:
        return reference.version
    if reference.alias is not None and reference.alias != LATEST:
        if reference.alias not in aliases:
            raise AliasNotFoundError(reference.name, reference.alias, sorted(aliases))
        return aliases[reference.alias]
    if reference.is_default and DEFAULT_ALIAS in aliases:
        return aliases[DEFAULT_ALIAS]
    if latest is None:
        raise VersionNotFoundError(reference.name, LATEST)
    return latest


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
