"""The Ray engine: a job's prediction stage on Ray Data, everything else as on one machine.

The driver reads, validates and checkpoints chunks exactly as the local engine does (so inputs,
resume, errors, records and the output are the same); windows of validated chunks go to Ray Data,
whose workers predict in parallel across the cluster and hand the outputs back in order.

Workers load the version from the artifact store by its digest, verified as on any load, and keep
it for the next window: Ray reuses its worker processes, so a model loads once per worker, not
once per window. On a cluster the artifact store must be a path every node sees (a shared
volume).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from berth.batch.scoring import Prepared
from berth.errors import MissingExtraError, UnavailableError
from berth.registry.artifacts import ArtifactStore
from berth.registry.service import VersionInfo
from berth.runtime.loading import LoadedModel, load_resolved

if TYPE_CHECKING:
    from berth.types import Outputs

_CHUNK = "__berth_chunk"
_SEP = "\x1f"
_LOADED: dict[str, LoadedModel] = {}
"""Per worker process: versions already loaded, by digest."""


def predict_on_ray(
    prepared: Iterator[Prepared],
    info: VersionInfo,
    artifact_root: Path,
    address: str | None,
    *,
    window: int | None = None,
) -> Iterator[tuple[Prepared, Outputs, float]]:
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except ConnectionError as exc:
            raise UnavailableError(f"cannot reach the Ray cluster at {address}: {exc}") from exc
    try:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # a plan line per window
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        cpus = max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))
        size = window or 2 * cpus
        group: list[Prepared] = []
        for item in prepared:
            group.append(item)
            if len(group) == size:
                yield from _window(ray, group, info, artifact_root, cpus)
                group = []
        if group:
            yield from _window(ray, group, info, artifact_root, cpus)
    finally:
        if started_here:
            ray.shutdown()


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as exc:
        raise MissingExtraError(exc.name or "ray", "ray", "--engine ray") from exc
    return ray


def _window(
    ray: Any, group: list[Prepared], info: VersionInfo, root: Path, cpus: int
) -> Iterator[tuple[Prepared, Outputs, float]]:
    started = time.perf_counter()
    scorable = [p for p in group if len(p.kept)]
    results: dict[int, Outputs] = {}
    if scorable:
        frames = [p.checked.frame.assign(**{_CHUNK: p.chunk.index}) for p in scorable]
        dataset = ray.data.from_pandas(frames).map_batches(
            _predict_block,
            fn_kwargs={"info": info, "artifact_root": str(root)},
            batch_size=None,
            batch_format="pandas",
            concurrency=min(cpus, len(frames)),
        )
        scored = dataset.to_pandas()
        for index, rows in scored.groupby(_CHUNK, sort=False):
            results[int(index)] = _outputs(rows.drop(columns=[_CHUNK]))
    latency_ms = (time.perf_counter() - started) * 1000.0 / max(1, len(group))
    for item in group:
        outputs = results.get(item.chunk.index, {})
        if len(item.kept) and len(next(iter(outputs.values()), ())) != len(item.kept):
            raise UnavailableError(
                f"Ray returned a wrong number of rows for chunk {item.chunk.index}"
            )
        yield item, outputs, latency_ms


def _predict_block(frame: pd.DataFrame, *, info: VersionInfo, artifact_root: str) -> pd.DataFrame:
    """On a Ray worker: one validated chunk in, its outputs as flat columns out."""
    model = _LOADED.get(info.digest)
    if model is None:
        model = load_resolved(ArtifactStore(Path(artifact_root)), info)
        _LOADED[info.digest] = model
    chunk = frame.pop(_CHUNK).to_numpy()
    outputs = model.predict_validated(frame.reset_index(drop=True))
    columns: dict[str, Any] = {_CHUNK: chunk}
    for name, values in outputs.items():
        if values.ndim == 2:
            for i in range(values.shape[1]):
                columns[f"{name}{_SEP}{i}"] = values[:, i]
        else:
            columns[name] = values
    return pd.DataFrame(columns)


def _outputs(frame: pd.DataFrame) -> Outputs:
    """The flat columns back as the predictor's outputs (2-D ones put together again)."""
    outputs: dict[str, Any] = {}
    wide: dict[str, list[str]] = {}
    for column in frame.columns:
        name, sep, _ = str(column).partition(_SEP)
        if sep:
            wide.setdefault(name, []).append(str(column))
        else:
            outputs[name] = frame[column].to_numpy()
    for name, columns in wide.items():
        ordered = sorted(columns, key=lambda c: int(c.rsplit(_SEP, 1)[1]))
        outputs[name] = np.column_stack([frame[c].to_numpy() for c in ordered])
    return outputs
