"""The Ray engine: a job's predictions on Ray Data, everything else as on one machine.

The driver reads, validates, records and checkpoints chunks exactly as the local engine does (so
inputs, resume, errors, records and the output are the same); the inference path hands windows of
validated chunks to this backend, whose Ray Data workers predict them in parallel across the
cluster and hand the outputs back in order.

Workers load the version from the artifact store by its digest, verified as on any load, and keep
it for the next window: Ray reuses its worker processes, so a model loads once per worker, not
once per window. On a cluster the artifact store must be a path every node sees (a shared
volume).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from berth.errors import MissingExtraError, UnavailableError
from berth.registry.artifacts import ArtifactStore
from berth.registry.service import VersionInfo
from berth.runtime.loading import LoadedModel, load_resolved
from berth.runtime.outputs import from_plain_columns, to_plain_columns

if TYPE_CHECKING:
    from berth.types import Outputs

_CHUNK = "__berth_chunk"
_LOADED: dict[tuple[str, int, str], LoadedModel] = {}
"""Per worker process: versions already loaded (two versions may share an artifact but not a
signature, so the key is the version and its digest)."""


class RayBackend:
    """A :class:`berth.runtime.path.Backend` on a Ray cluster (a local one without an
    address). Use as a context manager: Ray starts on entry and, if it started here, stops on
    exit."""

    def __init__(self, artifact_root: Path, address: str | None) -> None:
        self.artifact_root = artifact_root
        self.address = address
        self.cpus = 1
        self._ray: Any = None
        self._started_here = False

    @property
    def window(self) -> int:
        """Chunks handed over at once: enough to keep every core busy."""
        return 2 * self.cpus

    def __enter__(self) -> RayBackend:
        ray = _ray()
        self._started_here = not ray.is_initialized()
        if self._started_here:
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except ConnectionError as exc:
                raise UnavailableError(
                    f"cannot reach the Ray cluster at {self.address}: {exc}"
                ) from exc
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # a plan line per window
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))
        self._ray = ray
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here:
            self._ray.shutdown()

    def predict(self, info: VersionInfo, frames: list[pd.DataFrame]) -> list[Outputs]:
        if not frames:
            return []
        tagged = [frame.assign(**{_CHUNK: i}) for i, frame in enumerate(frames)]
        dataset = self._ray.data.from_pandas(tagged).map_batches(
            _predict_block,
            fn_kwargs={"info": info, "artifact_root": str(self.artifact_root)},
            batch_size=None,
            batch_format="pandas",
            concurrency=min(self.cpus, len(frames)),
        )
        scored = dataset.to_pandas()
        results: dict[int, Outputs] = {}
        for index, rows in scored.groupby(_CHUNK, sort=False):
            results[int(index)] = from_plain_columns(rows.drop(columns=[_CHUNK]))
        out = []
        for i, frame in enumerate(frames):
            outputs = results.get(i, {})
            if len(next(iter(outputs.values()), ())) != len(frame):
                raise UnavailableError("Ray returned a wrong number of rows for a chunk")
            out.append(outputs)
        return out


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as exc:
        raise MissingExtraError(exc.name or "ray", "ray", "--engine ray") from exc
    return ray


def _predict_block(frame: pd.DataFrame, *, info: VersionInfo, artifact_root: str) -> pd.DataFrame:
    """On a Ray worker: the path's predict step for one validated chunk, outputs as 1-D columns
    (what a DataFrame block carries)."""
    key = (info.model, info.version, info.digest)
    model = _LOADED.get(key)
    if model is None:
        model = load_resolved(ArtifactStore(Path(artifact_root)), info)
        _LOADED[key] = model
    chunk = frame.pop(_CHUNK).to_numpy()
    outputs = model.predict_validated(frame.reset_index(drop=True))
    return pd.DataFrame({_CHUNK: chunk, **to_plain_columns(outputs)})
