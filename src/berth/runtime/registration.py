"""Registering a model object as a new immutable version.

The order matters for atomicity: the artifact is saved into a staging folder, sealed into the
content-addressed store, and only then is the version row inserted in one transaction. A crash at
any point leaves either no version or a complete one.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from berth.errors import InvalidInputError
from berth.flavors import detect_flavor, get_flavor
from berth.flavors.base import Flavor
from berth.registry import lineage as lineage_mod
from berth.registry.profile import fingerprint, profile
from berth.registry.references import check_model_name
from berth.registry.service import NewVersion, Registry, VersionInfo
from berth.registry.signature import Signature, infer_signature
from berth.runtime.codecs import to_columns
from berth.runtime.validation import validate

TrainingData = pd.DataFrame | Sequence[str]


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
) -> VersionInfo:
    check_model_name(name)
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
    _check_save_options(chosen, save_options or {})
    with registry.store.staging() as stage:
        options = chosen.save(model, stage, trusted=trusted, **dict(save_options or {}))
        artifact = registry.store.commit(stage)
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
