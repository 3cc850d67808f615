"""Loading a version from the artifact store into a predictor, verified byte for byte."""

from __future__ import annotations

import time
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


@dataclass
class LoadedModel:
    """A version's predictor. Only the inference path calls it, with validated batches."""

    version: VersionInfo
    predictor: Predictor
    load_seconds: float = field(default=0.0)

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
    predictor = flavor.load(path, info.flavor_options, info.signature)
    return LoadedModel(info, predictor, time.perf_counter() - started)
