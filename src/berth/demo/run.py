"""``berth demo``: train and register both demo models, once; a second run changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from berth.errors import NotFoundError
from berth.registry.service import VersionInfo

from . import credit, sentiment

if TYPE_CHECKING:
    from berth.app import Berth

Say = Callable[[str], None]
TAG = "berth.demo"


def run_demo(client: Berth, say: Say) -> list[VersionInfo]:
    """Register what is missing of the demo; returns every demo version, registered or found."""
    versions = [*_credit_risk(client, say), *_sentiment(client, say)]
    _write_samples(client.settings.home / "demo")
    return versions


def _existing(client: Berth, name: str) -> dict[str, VersionInfo]:
    try:
        found = client.list_versions(name)
    except NotFoundError:
        return {}
    return {v.tags[TAG]: v for v in found if TAG in v.tags}


def _credit_risk(client: Berth, say: Say) -> list[VersionInfo]:
    name = "credit-risk"
    have = _existing(client, name)
    wanted = [f"{name}/v{i}" for i in (1, 2)]
    if all(w in have for w in wanted):
        say(
            f"{name}: already registered (versions {have[wanted[0]].version}, "
            f"{have[wanted[1]].version})"
        )
        return [have[w] for w in wanted]
    say(f"{name}: generating {credit.ROWS:,} loan applications")
    data = credit.split(credit.generate())
    features = list(credit.FEATURES)
    out: list[VersionInfo] = []
    for number, key in enumerate(wanted, start=1):
        if key in have:
            out.append(have[key])
            continue
        say(f"{name}: training demo version {number}")
        model, metrics, params = credit.train(number, data)
        out.append(
            client.register(
                model,
                name,
                flavor="sklearn",
                training_data=data.train[features],
                metrics=metrics,
                params=params,
                tags={
                    TAG: key,
                    "task": "binary-classification",
                    "sensitive": ",".join(credit.SENSITIVE),
                },
                description="Probability that a loan applicant defaults (synthetic data, planted "
                "historical bias against sex=female; see CREDIT_DATA.md).",
                code_path=Path(__file__).parent,
            )
        )
    _alias_if_unset(client, name, "production", out[0].version)
    _alias_if_unset(client, name, "staging", out[1].version)
    for v in out:
        say(f"{name}/{v.version}: AUC {v.metrics['auc']:.4f}")
    return out


def _sentiment(client: Berth, say: Say) -> list[VersionInfo]:
    name = "sentiment"
    have = _existing(client, name)
    key = f"{name}/v1"
    if key in have:
        say(f"{name}: already registered (version {have[key].version})")
        return [have[key]]
    say(f"{name}: encoding {len(sentiment.load_data())} labeled sentences with MiniLM")
    model, metrics, params, texts = sentiment.train()
    info = client.register(
        model,
        name,
        flavor="sentence_transformers",
        training_data=texts,
        metrics=metrics,
        params=params,
        tags={TAG: key, "task": "text-classification"},
        description="Sentiment of a short English review: MiniLM (BERT-family) encoder with a "
        "logistic-regression head.",
        code_path=Path(__file__).parent,
    )
    _alias_if_unset(client, name, "production", info.version)
    say(f"{name}/{info.version}: held-out accuracy {info.metrics['accuracy']:.3f}")
    return [info]


def _alias_if_unset(client: Berth, name: str, alias: str, version: int) -> None:
    current = {a for v in client.list_versions(name) for a in v.aliases}
    if alias not in current:
        client.set_alias(name, alias, version)


def _write_samples(folder: Path) -> None:
    """Ready-made inputs for ``berth predict`` (and, later, curl)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = credit.generate(rows=3, seed=1)[list(credit.FEATURES)].to_dict(orient="records")
    oip = {
        "inputs": [
            {
                "name": k,
                "shape": [len(rows)],
                "datatype": _oip_type(rows[0][k]),
                "data": [r[k] for r in rows],
            }
            for k in rows[0]
        ]
    }
    samples: dict[str, Any] = {
        "credit-risk.json": {"records": rows},
        "credit-risk-oip.json": oip,
        "sentiment.json": {
            "texts": [
                "The staff were kind and the room was spotless.",
                "Two hours on hold and nobody solved my problem.",
            ]
        },
    }
    for file, body in samples.items():
        (folder / file).write_bytes(
            orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
    # A customer table for ``berth batch run``: new applicants, same features, an id to keep.
    customers = credit.generate(rows=50_000, seed=2)[list(credit.FEATURES)]
    customers.insert(0, "customer_id", range(100_000, 100_000 + len(customers)))
    tmp = folder / ".customers.parquet.tmp"
    customers.to_parquet(tmp, index=False, row_group_size=10_000)
    tmp.replace(folder / "customers.parquet")


def _oip_type(value: object) -> str:
    if isinstance(value, str):
        return "BYTES"
    return "INT64" if isinstance(value, int) else "FP64"
