"""The one resolver: a reference and a request's envelope in, the version that answers out.

Resolution is two steps. The reference becomes a version number by the one rule of
:func:`berth.registry.references.pick_version` (numbers, aliases, ``latest``, and a bare name
meaning ``production`` else the newest). Then the model's :class:`TrafficStrategy` chooses the
version that serves this request, from that number and the envelope. Today's only strategy is
:class:`Direct` (the alias or the number); deployments add canary, sticky A/B and shadow strategies
here, without any adapter knowing.

A server resolves many requests a second and must not query the database for each: the resolver
keeps every model's aliases (refreshed by the pool's poller) and each model's newest version
(for at most ``latest_ttl_s``) in memory. Synchronous callers (the CLI, batch jobs, the Python
API) ask the registry every time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from berth.registry.references import DEFAULT_ALIAS, LATEST, Reference, pick_version

if TYPE_CHECKING:
    from berth.registry.service import Registry, VersionInfo
    from berth.runtime.envelope import RequestContext


@dataclass(frozen=True)
class Candidates:
    """What a strategy chooses from: the reference asked for and the version it resolves to."""

    reference: Reference
    version: int


@dataclass(frozen=True)
class Choice:
    version: int
    variant: str | None = None
    """The arm of an experiment or the side of a canary that served, for the records."""
    deployment: str | None = None


class TrafficStrategy(Protocol):
    """Chooses the version that serves one request. Called on the request path for every
    request: it must not block (no I/O) and must be deterministic for a sticky assignment."""

    def choose(self, candidates: Candidates, context: RequestContext) -> Choice: ...


class Direct:
    """The alias or the number asked for, nothing else."""

    def choose(self, candidates: Candidates, context: RequestContext) -> Choice:
        return Choice(candidates.version)


DIRECT = Direct()


@dataclass(frozen=True)
class Target:
    """The version that answers one request, with the request's envelope: what ``run`` needs."""

    info: VersionInfo
    reference: Reference
    context: RequestContext
    variant: str | None = None
    deployment: str | None = None

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def version(self) -> int:
        return self.info.version


class Resolver:
    def __init__(
        self,
        registry: Registry,
        *,
        latest_ttl_s: float = 1.0,
        strategies: Mapping[str, TrafficStrategy] | None = None,
    ) -> None:
        self.registry = registry
        self.latest_ttl_s = latest_ttl_s
        self.strategies = dict(strategies or {})
        self._aliases: dict[str, dict[str, int]] = {}
        self._latest: dict[str, tuple[int, float]] = {}
        self._known: set[tuple[str, int]] = set()

    # -- the one rule, on the registry (sync callers) or the in-memory table (the server) -------

    def lookup(self, reference: Reference) -> VersionInfo:
        """The version ``reference`` means now, asking the registry."""
        info = self.registry.resolve(reference)
        self._learn(reference, info)
        return info

    def number(self, reference: Reference) -> int:
        return self.lookup(reference).version

    def cached(self, reference: Reference) -> int | None:
        """The version number from memory alone; None when memory cannot tell (the caller asks
        the registry with :meth:`number`, which also teaches memory)."""
        name = reference.name
        if reference.version is not None:
            return reference.version if (name, reference.version) in self._known else None
        aliases = self._aliases.get(name)
        if aliases is None:
            return None
        if reference.alias not in (None, LATEST) and reference.alias not in aliases:
            return None  # perhaps set since the last refresh: the registry knows
        latest = None
        if reference.alias == LATEST or (reference.is_default and DEFAULT_ALIAS not in aliases):
            found = self._latest.get(name)
            if found is None or found[1] <= time.monotonic():
                return None
            latest = found[0]
        return pick_version(reference, aliases, latest)

    def choose(self, reference: Reference, number: int, context: RequestContext) -> Choice:
        strategy = self.strategies.get(reference.name, DIRECT)
        return strategy.choose(Candidates(reference, number), context)

    # -- the in-memory table ---------------------------------------------------------------------

    def read_aliases(self) -> dict[str, dict[str, int]]:
        """Every model's aliases, from the registry (blocking)."""
        return {m.name: dict(m.aliases) for m in self.registry.list_models()}

    def set_aliases(self, table: Mapping[str, Mapping[str, int]]) -> None:
        """Replace what memory knows of aliases with ``table`` (every model, even alias-less)."""
        self._aliases = {name: dict(aliases) for name, aliases in table.items()}

    def route(self, name: str, alias: str, version: int) -> None:
        """Point one alias in memory (the pool does it once the version is loaded)."""
        self._publish(name, {**self._aliases.get(name, {}), alias: version})

    def routes(self) -> dict[tuple[str, str], int]:
        """Every alias known in memory: ``(model, alias) -> version``."""
        return {(n, a): v for n, table in self._aliases.items() for a, v in table.items()}

    def forget(self) -> None:
        self._aliases = {}
        self._latest = {}
        self._known = set()

    def _publish(self, name: str, table: dict[str, int]) -> None:
        # Copy on write: a published table is never changed in place, so the event loop may
        # iterate it while a lookup in a worker thread teaches memory something new.
        self._aliases = {**self._aliases, name: table}

    def _learn(self, reference: Reference, info: VersionInfo) -> None:
        """Remember what the registry said. Aliases are learnt only into a model's table that a
        refresh made complete: a partial table would make a bare name miss ``production``."""
        self._known.add((info.model, info.version))
        table = self._aliases.get(info.model)
        if reference.alias not in (None, LATEST):
            if table is not None:
                self._publish(info.model, {**table, str(reference.alias): info.version})
        elif reference.version is None and (
            reference.alias == LATEST or DEFAULT_ALIAS not in info.aliases
        ):  # the newest version (a bare name without production also means it)
            self._latest[info.model] = (info.version, time.monotonic() + self.latest_ttl_s)
