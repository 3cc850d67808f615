"""Loading a version from the artifact store into a predictor, verified byte for byte, and what
it costs in memory."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from berth.errors import UnavailableError, UntrustedArtifactError
from berth.flavors import get_flavor

if TYPE_CHECKING:
    import pandas as pd

    from berth.registry.artifacts import ArtifactStore
    from berth.registry.service import VersionInfo
    from berth.registry.signature import Signature
    from berth.types import Outputs, Predictor

log = logging.getLogger("berth.path")


@dataclass(frozen=True)
class Footprint:
    """What a version costs in memory, measured once, at its load: the growth of the process's
    resident set across the load (None where the platform does not tell), and its artifact's
    size on disk. :attr:`bytes` is the larger of the two: memory a load reuses (freed by an
    earlier unload) does not grow the resident set, and a model is rarely smaller in memory than
    in its file. Allocations after the load (a first prediction's buffers) are not counted."""

    resident_bytes: int | None
    artifact_bytes: int

    @property
    def bytes(self) -> int:
        return max(self.resident_bytes or 0, self.artifact_bytes)


@dataclass
class LoadedModel:
    """A version's predictor. Only the inference path calls it, with validated batches."""

    version: VersionInfo
    predictor: Predictor
    load_seconds: float = field(default=0.0)
    footprint: Footprint | None = None
    """Set by :func:`measured_load`; None when loaded without measuring (the sync face)."""

    @property
    def signature(self) -> Signature:
        return self.version.signature

    def predict_validated(self, batch: pd.DataFrame) -> Outputs:
        outputs = self.predictor.predict(batch)
        for name, values in outputs.items():
            if len(values) != len(batch):
                raise UnavailableError(
                    f"{self.version.ref} returned {len(values)} values of {name!r} "
                    f"for {len(batch)} rows"
                )
        return outputs


def load_resolved(
    store: ArtifactStore, info: VersionInfo, *, started: float | None = None
) -> LoadedModel:
    """Load a version already resolved, from the artifact store alone: what a worker process
    without the metadata database (a Ray worker) does too."""
    started = time.perf_counter() if started is None else started
    flavor = get_flavor(info.flavor)
    if flavor.requires_trust(info.flavor_options) and not info.trusted:
        raise UntrustedArtifactError(
            f"{info.ref} loads with code execution but was not registered as trusted"
        )
    path = store.verify(info.digest, label=f"model version {info.ref}")
    if store.signatures is not None:  # a public key is configured: only signed versions load
        store.signatures.check(info.model, info.version, info.digest, trusted=info.trusted)
    try:
        # Before the flavor reads a byte: the artifact's own files decide what needs trust.
        flavor.check_trust(path, info.flavor_options, trusted=info.trusted)
        predictor = flavor.load(path, info.flavor_options, info.signature)
    except UntrustedArtifactError as exc:
        raise UntrustedArtifactError(f"{info.ref}: {exc}") from exc
    return LoadedModel(info, predictor, time.perf_counter() - started)


_MEASURING = threading.Lock()


def measured_load(load: Callable[[], LoadedModel], artifact_bytes: int) -> LoadedModel:
    """Run ``load`` and record its :class:`Footprint`. Measured loads take turns (a lock), so
    two loads at once do not count each other's memory; other threads' allocations meanwhile
    (requests served during the load) still blur the figure, which is an estimate."""
    with _MEASURING:
        before = resident_bytes()
        loaded = load()
        after = resident_bytes()
    grown = None if before is None or after is None else max(0, after - before)
    loaded.footprint = Footprint(grown, max(0, artifact_bytes))
    return loaded


def resident_bytes() -> int | None:
    """This process's resident set size now (Linux ``/proc/self/statm``); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def release_memory() -> None:
    """After an unload: collect what the version left in reference cycles and hand freed pages
    back to the system, so the resident set shows the unload. The pool freezes the heap after
    each load (``gc.freeze``: frozen objects are never collected), so the heap is unfrozen for
    one full collection and frozen again; that collection walks every live object once (a
    pause of up to a few hundred ms with large models), paid per unload, not per request."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _trim()


MMAP_THRESHOLD = 4 * 1024 * 1024
"""Blocks of at least this size get a mapping of their own (see :func:`bound_allocator`)."""

_bounded = False


def bound_allocator() -> None:
    """Make freed model memory go back to the system (once per process; glibc only).

    glibc maps large blocks (model weights, big arrays) on their own and unmaps them when
    freed, but raises that threshold each time such a block is freed (up to 32 MB), so after
    one unload the next versions' arrays live in its heap, where their pages stay resident
    when freed: a server that unloaded versions grew anyway (measured: 95 MB resident for one
    16 MB version loaded at a time, after eight had been loaded and unloaded). A threshold set
    once is fixed: blocks of ``MMAP_THRESHOLD`` and more are always mapped and unmapped."""
    global _bounded
    if _bounded:
        return
    _bounded = True
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD


def _trim() -> None:
    """glibc keeps freed heap pages mapped; ``malloc_trim`` returns them (no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    try:
        trim(0)
    except OSError:  # pragma: no cover - a libc that refuses
        log.debug("malloc_trim failed", exc_info=True)
