"""Registering a model object as a new immutable version.

The order matters for atomicity: the artifact is saved into a staging folder, sealed into the
content-addressed store, and only then is the version row inserted in one transaction. A crash at
any point leaves either no version or a complete one.

Between the two, the sealed artifact is loaded back as the server would load it and timed on rows
of the training data (:func:`time_predictions`), so that every version says what one row and a
batch cost before anyone deploys it. The figure goes into the version's lineage under
``"latency"``; a model that fails on its own training data, or takes too long, gets no figure.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from berth.config import ThreadLimits
from berth.errors import ForbiddenError, InvalidInputError
from berth.flavors import detect_flavor, get_flavor
from berth.flavors.base import TRUSTED_TYPES, Flavor
from berth.registry import access
from berth.registry import lineage as lineage_mod
from berth.registry.profile import fingerprint, observed_ranges, profile
from berth.registry.references import check_model_name
from berth.registry.service import NewVersion, Registry, VersionInfo
from berth.registry.signature import RangePolicy, Signature, infer_signature
from berth.runtime.codecs import to_columns
from berth.runtime.validation import validate
from berth.types import Predictor

TrainingData = pd.DataFrame | Sequence[str]

log = logging.getLogger("berth.registry")


@dataclass(frozen=True)
class LatencyProbe:
    """How registration times a new version's predictions (see :func:`time_predictions`)."""

    single_calls: int = 50
    """Single-row calls timed after one warm-up call, each on another row of the training data."""
    batch_rows: int = 1_000
    """Rows of the one batched call; fewer when the data has fewer or the budget is short."""
    budget_s: float = 0.5
    """Time for the calls after the load: the single rows get up to half, the batch the rest
    (its size is cut to what the single-row median says fits)."""
    timeout_s: float = 10.0
    """The longest a registration waits for the load and the calls; past it, no figure."""


LATENCY_PROBE = LatencyProbe()


def register_model(
    registry: Registry,
    model: object,
    name: str,
    *,
    actor: str,
    flavor: str | None = None,
    signature: Signature | Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
    training_data: TrainingData | None = None,
    tags: Mapping[str, str] | None = None,
    description: str = "",
    trusted: bool = False,
    code_path: Path | None = None,
    save_options: Mapping[str, Any] | None = None,
    source: str | None = None,
    measure_latency: bool = True,
    probe: LatencyProbe = LATENCY_PROBE,
    range_policy: RangePolicy | Mapping[str, RangePolicy] | None = None,
) -> VersionInfo:
    check_model_name(name)
    trusted_by = require_trust(trusted)
    checked_metrics = _metrics(metrics)
    checked_params = _jsonable(params or {}, "params")
    chosen = get_flavor(flavor) if flavor else detect_flavor(model)
    sig = _signature(chosen, model, signature, training_data)
    if not sig.outputs:
        sig = sig.with_outputs(chosen.outputs(model, sig))
    frame = None
    if training_data is not None:
        frame = validate(sig, to_columns(training_data, sig))
    lineage: dict[str, Any] = {
        "environment": lineage_mod.environment(chosen.packages),
        "code": lineage_mod.git_state(code_path or Path.cwd()),
        "training_data": _data_lineage(training_data),
    }
    if source:
        lineage["source"] = source
    reference = None
    if frame is not None:
        embed = chosen.embedder(model) if sig.kind == "text" else None
        reference = profile(frame, sig, embed=embed)
    if sig.kind == "tabular" or range_policy is not None:
        # The training data's range of each numeric feature, checked per request as the
        # policy says (warn by default): inferred signatures declare no range of their own.
        sig = sig.with_observed_ranges(observed_ranges(reference), range_policy)
    _check_save_options(chosen, save_options or {})
    with registry.store.staging() as stage:
        options = chosen.save(model, stage, trusted=trusted, **dict(save_options or {}))
        trusted_types = sealed_types(stage)
        artifact = registry.store.commit(stage)
    if trusted_by is not None or trusted_types:
        # Who decided, and what the artifact's sealed list lets a load build (shown by
        # `models show --json`; the load itself reads only the sealed list).
        lineage["trust"] = {"trusted": trusted, "by": trusted_by, "types": trusted_types}
    if measure_latency and frame is not None:
        latency = time_predictions(chosen, artifact.path, options, sig, frame, probe, label=name)
        if latency is not None:
            lineage["latency"] = latency
    new = NewVersion(
        model=name,
        digest=artifact.digest,
        size_bytes=artifact.size_bytes,
        flavor=chosen.name,
        signature=sig,
        flavor_options=options,
        metrics=checked_metrics,
        params=checked_params,
        lineage=lineage,
        profile=reference,
        tags={str(k): str(v) for k, v in (tags or {}).items()},
        description=description,
        trusted=trusted,
    )
    return registry.create_version(new, actor=actor)


def require_trust(trusted: bool) -> str | None:
    """The name of the principal giving trust, when ``trusted``: an artifact that runs code
    when loaded (pickle, joblib, cloudpickle, types skops does not vet) is trusted only by a
    principal with the ``admin`` permission; anyone else gets 403 (401 without credentials).
    Called before anything of the model is read or saved."""
    if not trusted:
        return None
    principal = access.current()
    if principal.anonymous or principal.can("admin"):
        return principal.require("admin").name
    raise ForbiddenError(
        f"{principal.name!r} ({principal.role}) may not trust an artifact: trusted=True lets "
        "its code run when it loads, an admin's decision"
    )


def sealed_types(folder: Path) -> dict[str, list[str]]:
    """The sealed lists of trusted types of an artifact being saved (empty lists left out)."""
    try:
        files = orjson.loads((folder / TRUSTED_TYPES).read_bytes())["files"]
    except FileNotFoundError:
        return {}
    return {str(k): list(v) for k, v in sorted(files.items()) if v}


def time_predictions(
    flavor: Flavor,
    folder: Path,
    options: Mapping[str, Any],
    signature: Signature,
    sample: pd.DataFrame,
    probe: LatencyProbe = LATENCY_PROBE,
    *,
    label: str = "model",
) -> dict[str, Any] | None:
    """Load the artifact in ``folder`` as the server does and time its predictor on ``sample``
    (validated rows); ``None`` when it fails or runs past ``probe.timeout_s`` (logged, never
    raised: a registration does not depend on it).

    The calls run on a thread of their own with the server's default thread limits for tabular
    models (one OpenMP thread; text models keep the process's torch threads), and time the
    predictor alone, the model's share of a request: validation and transport come on top.
    Returns milliseconds: ``single_row_ms`` (median) and ``single_row_p90_ms`` over
    ``single_row_calls`` calls, ``batch_rows`` and ``batch_ms_per_row`` (absent when the budget
    left no room for a batch), ``load_ms``, and ``openmp_threads`` for tabular models.
    """
    if not len(sample):
        return None
    outcome: dict[str, Any] = {}
    stop = threading.Event()

    def work() -> None:
        try:
            outcome["figures"] = _time_calls(
                flavor, folder, dict(options), signature, sample, probe, stop
            )
        except Exception as exc:  # any failure of the user's model only costs it the figure
            outcome["error"] = exc

    thread = threading.Thread(target=work, name=f"berth-latency-{label}", daemon=True)
    thread.start()
    thread.join(probe.timeout_s)
    if thread.is_alive():
        stop.set()
        log.warning(
            "%s: no latency figure: loading and timing took over %.3g s (the probe stops in "
            "the background when its current call returns)",
            label,
            probe.timeout_s,
        )
        return None
    error = outcome.get("error")
    if error is not None:
        log.warning(
            "%s: no latency figure: predicting on the training data failed: %s: %s",
            label,
            type(error).__name__,
            error,
        )
        return None
    figures: dict[str, Any] = outcome["figures"]
    return figures


def _time_calls(
    flavor: Flavor,
    folder: Path,
    options: dict[str, Any],
    signature: Signature,
    sample: pd.DataFrame,
    probe: LatencyProbe,
    stop: threading.Event,
) -> dict[str, Any]:
    threads = ThreadLimits().threads if flavor.modality == "tabular" else None
    with _openmp_limit(threads):
        started = time.perf_counter()
        predictor = flavor.load(folder, options, signature)
        loaded = time.perf_counter()
        figures = _single_rows(predictor, sample, probe, stop, until=loaded + probe.budget_s / 2)
        if not stop.is_set():
            median = figures["single_row_ms"] / 1e3
            figures.update(_batch(predictor, sample, probe, median, until=loaded + probe.budget_s))
    figures["load_ms"] = _ms(loaded - started)
    if threads is not None:
        figures["openmp_threads"] = threads
    return figures


def _single_rows(
    predictor: Predictor,
    sample: pd.DataFrame,
    probe: LatencyProbe,
    stop: threading.Event,
    *,
    until: float,
) -> dict[str, Any]:
    picks = np.unique(np.linspace(0, len(sample) - 1, probe.single_calls + 1).astype(np.intp))
    rows = [sample.iloc[[i]].reset_index(drop=True) for i in picks]
    predictor.predict(rows[0])  # a first call's set-up is not what a row costs
    seconds: list[float] = []
    for row in rows[1:] or rows:
        before = time.perf_counter()
        predictor.predict(row)
        seconds.append(time.perf_counter() - before)
        if before > until or stop.is_set():
            break
    return {
        "single_row_ms": _ms(float(np.median(seconds))),
        "single_row_p90_ms": _ms(float(np.percentile(seconds, 90))),
        "single_row_calls": len(seconds),
    }


def _batch(
    predictor: Predictor,
    sample: pd.DataFrame,
    probe: LatencyProbe,
    single_row_s: float,
    *,
    until: float,
) -> dict[str, Any]:
    """A small batch first (costed at the single-row median, an upper bound): what it costs a
    row says how large a batch the rest of the budget holds."""
    size = min(_TRIAL_ROWS, probe.batch_rows, len(sample))
    if size < 2 or time.perf_counter() + size * single_row_s > until:
        return {}
    per_row = _time_batch(predictor, sample, size)
    left = until - time.perf_counter()
    larger = min(probe.batch_rows, len(sample), int(left / per_row) if per_row > 0 else 0)
    if larger > size:
        size, per_row = larger, _time_batch(predictor, sample, larger)
    return {"batch_rows": size, "batch_ms_per_row": _ms(per_row)}


_TRIAL_ROWS = 8


def _time_batch(predictor: Predictor, sample: pd.DataFrame, rows: int) -> float:
    batch = sample.iloc[:rows].reset_index(drop=True)
    before = time.perf_counter()
    predictor.predict(batch)
    return (time.perf_counter() - before) / rows


def _openmp_limit(threads: int | None) -> contextlib.AbstractContextManager[object]:
    """OpenMP keeps its thread count per thread, so this limit ends with the probe's thread."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without it, the libraries' own defaults, as in the server
        return contextlib.nullcontext()
    limit: contextlib.AbstractContextManager[object] = threadpool_limits(
        limits=threads, user_api="openmp"
    )
    return limit


def _ms(seconds: float) -> float:
    return float(f"{seconds * 1e3:.4g}")


def _check_save_options(flavor: Flavor, options: Mapping[str, Any]) -> None:
    accepted = [
        name
        for name, p in inspect.signature(flavor.save).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "trusted"
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidInputError(
            f"the {flavor.name} flavor takes no save option {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted) or 'none'}"
        )


def _signature(
    flavor: Flavor,
    model: object,
    given: Signature | Mapping[str, Any] | None,
    training_data: TrainingData | None,
) -> Signature:
    if isinstance(given, Signature):
        return given
    if given is not None:
        return Signature.from_dict(dict(given))
    declared = flavor.signature(model)
    if declared is not None:
        return declared
    if training_data is not None:
        return infer_signature(training_data)
    raise InvalidInputError(
        "cannot tell this model's inputs: pass training_data= (a DataFrame of the features) "
        "or signature="
    )


def _data_lineage(data: TrainingData | None) -> dict[str, Any] | None:
    if data is None:
        return None
    if isinstance(data, pd.DataFrame):
        return {
            "fingerprint": fingerprint(data),
            "rows": len(data),
            "columns": [str(c) for c in data.columns],
        }
    texts = list(data)
    return {"fingerprint": fingerprint(texts), "rows": len(texts), "columns": ["text"]}


def _metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(f"metric {key!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InvalidInputError(f"metric {key!r} must be finite, got {value!r}")
        out[str(key)] = float(value)
    return out


def _jsonable(values: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return dict(
            orjson.loads(
                orjson.dumps(
                    dict(values), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                )
            )
        )
    except TypeError as exc:
        raise InvalidInputError(f"{what} must be JSON-serialisable: {exc}") from exc
