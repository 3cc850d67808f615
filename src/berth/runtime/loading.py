"""Loading a version from the registry into a validated predictor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from berth.errors import UnavailableError, UntrustedArtifactError
from berth.flavors import get_flavor
from berth.registry.artifacts import ArtifactStore
from berth.registry.references import Reference
from berth.registry.service import Registry, VersionInfo
from berth.registry.signature import Signature
from berth.runtime.codecs import to_columns, to_records
from berth.runtime.validation import validate
from berth.types import Outputs, Predictor


@dataclass
class LoadedModel:
    """A version behind validation: ``predict`` accepts what users send and checks it against the
    signature before the framework sees it."""

    version: VersionInfo
    predictor: Predictor
    load_seconds: float = field(default=0.0)

    @property
    def signature(self) -> Signature:
        return self.version.signature

    def predict(self, data: Any) -> Outputs:
        """Validate ``data`` (records, columns, texts, DataFrame...) and predict on it."""
        return self.predict_validated(validate(self.signature, to_columns(data, self.signature)))

    def predict_validated(self, batch: pd.DataFrame) -> Outputs:
        outputs = self.predictor.predict(batch)
        for name, values in outputs.items():
            if len(values) != len(batch):
                raise UnavailableError(
                    f"{self.version.ref} returned {len(values)} values of {name!r} "
                    f"for {len(batch)} rows"
                )
        return outputs

    def predict_records(self, data: Any) -> list[dict[str, Any]]:
        return to_records(self.predict(data), self.signature)


def load_version(registry: Registry, ref: str | Reference) -> LoadedModel:
    """Resolve, verify every artifact byte against its SHA-256, and load with the flavor."""
    started = time.perf_counter()
    info = registry.resolve(ref)
    return load_resolved(registry.store, info, started=started)


def load_resolved(
    store: ArtifactStore, info: VersionInfo, *, started: float | None = None
) -> LoadedModel:
    """Load a version already resolved, from the artifact store alone: what a worker process
    without the metadata database (a Ray worker) does."""
    started = time.perf_counter() if started is None else started
    flavor = get_flavor(info.flavor)
    if flavor.requires_trust(info.flavor_options) and not info.trusted:
        raise UntrustedArtifactError(
            f"{info.ref} loads with code execution but was not registered as trusted"
        )
    path = store.verify(info.digest, label=f"model version {info.ref}")
    predictor = flavor.load(path, info.flavor_options, info.signature)
    return LoadedModel(info, predictor, time.perf_counter() - started)
