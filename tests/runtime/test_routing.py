"""The routing seam: the envelope is decoded before the inputs, a traffic strategy chooses the
version from it, and the inputs are decoded against the chosen version's signature. Also the
resolver's in-memory rule agrees with the registry's."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.models import SumModel

from berth.app import Berth
from berth.config import PathOptions
from berth.errors import InvalidInputError, NotFoundError
from berth.registry.references import Reference
from berth.runtime.envelope import RequestContext, first_unit_id
from berth.runtime.path import InferencePath
from berth.runtime.record_reader import RecordReader
from berth.runtime.records import RecordProducer
from berth.runtime.routing import Candidates, Choice
from berth.server.app import create_app
from berth.testing import asgi_client


class ByUnit:
    """Units starting with "b" get version 2 (the treatment); everyone else what was asked."""

    def __init__(self) -> None:
        self.seen: list[RequestContext] = []

    def choose(self, candidates: Candidates, context: RequestContext) -> Choice:
        self.seen.append(context)
        if context.unit_id and context.unit_id.startswith("b"):
            return Choice(2, variant="treatment")
        return Choice(candidates.version, variant="control")


@pytest.fixture
def two_shapes(client: Berth) -> Berth:
    """``ab`` v1 takes features a, b; v2 takes a, b, c: decoding must follow the choice."""
    two = pd.DataFrame({"a": [0.1, 0.2], "b": [0.3, 0.4]})
    client.register(SumModel(), "ab", training_data=two, trusted=True)
    client.register(SumModel(), "ab", training_data=two.assign(c=[1.0, 2.0]), trusted=True)
    client.set_alias("ab", "production", 1)
    return client


def test_a_strategy_chooses_from_the_envelope_before_the_inputs_are_decoded(
    two_shapes: Berth, tmp_path: Path
) -> None:
    strategy = ByUnit()
    root = tmp_path / "records"
    path = InferencePath(
        two_shapes.registry,
        PathOptions(poll_interval_s=0),
        records=RecordProducer(root),
        strategies={"ab": strategy},
    )

    async def go() -> list[dict]:
        async with asgi_client(create_app(path)) as http:
            answers = []
            for unit, row in [
                ("a-1", {"a": 1.0, "b": 2.0}),
                ("b-7", {"a": 1.0, "b": 2.0, "c": 3.0}),
            ]:
                r = await http.post("/v1/predict/ab", json={"records": [row], "unit_id": unit})
                assert r.status_code == 200, r.text
                answers.append(r.json())
            # The header gives the unit when the body does not; OIP reads parameters.unit_id.
            r = await http.post(
                "/v2/models/ab/infer",
                json={
                    "parameters": {"unit_id": "b-9"},
                    "inputs": [
                        {"name": n, "datatype": "FP64", "shape": [1], "data": [1.0]} for n in "abc"
                    ],
                },
            )
            assert r.status_code == 200, r.text
            answers.append({"version": int(r.json()["model_version"])})
            r = await http.post(
                "/v1/predict/ab",
                json={"records": [{"a": 1.0, "b": 1.0, "c": 1.0}]},
                headers={"X-Berth-Unit": "b-2"},
            )
            answers.append(r.json())
            return answers

    answers = asyncio.run(go())
    assert [a["version"] for a in answers] == [1, 2, 2, 2]
    assert answers[1]["predictions"][0]["prediction"] == 6.0
    assert [c.unit_id for c in strategy.seen] == ["a-1", "b-7", "b-9", "b-2"]
    records = RecordReader(root).read("ab").to_pylist()
    assert [(r["unit_id"], r["version"], r["variant"]) for r in records] == [
        ("a-1", 1, "control"),
        ("b-7", 2, "treatment"),
        ("b-9", 2, "treatment"),
        ("b-2", 2, "treatment"),
    ]


def test_the_sync_face_routes_the_same_way(two_shapes: Berth) -> None:
    path = InferencePath(two_shapes.registry, strategies={"ab": ByUnit()})
    target = path.resolve_sync("ab", RequestContext(unit_id="b-1"))
    assert (target.version, target.variant) == (2, "treatment")
    result = path.run_sync(
        target, {"a": np.array([1.0]), "b": np.array([1.0]), "c": np.array([1.0])}
    )
    assert result.outputs["prediction"].tolist() == [3.0]
    assert path.resolve_sync("ab", RequestContext(unit_id="a-1")).version == 1


def test_a_unit_id_must_be_a_string_wherever_it_comes_from() -> None:
    assert first_unit_id(None, "header") == "header"
    assert first_unit_id("body", "header") == "body"
    assert first_unit_id(None, None) is None
    with pytest.raises(InvalidInputError, match="'unit_id' must be a string"):
        first_unit_id(7, "header")


def test_the_cached_rule_is_the_registrys_rule(client: Berth) -> None:
    """Whatever the aliases, memory and the registry agree on every reference form."""
    frame = pd.DataFrame({"a": [0.1], "b": [0.2]})
    for _ in range(3):
        client.register(SumModel(), "r", training_data=frame, trusted=True)
    path = InferencePath(client.registry, PathOptions(poll_interval_s=5))
    forms = [Reference("r"), Reference("r", alias="latest"), Reference("r", version=2)]
    for aliases in ({}, {"production": 1}, {"production": 2, "staging": 3}, {"staging": 1}):
        for alias in ("production", "staging"):
            if alias in aliases:
                client.set_alias("r", alias, aliases[alias])
            else:
                with contextlib.suppress(NotFoundError):  # not set: nothing to delete
                    client.delete_alias("r", alias)
        path.resolver.set_aliases(path.resolver.read_aliases())
        for ref in forms + [Reference("r", alias=a) for a in aliases]:
            truth = client.registry.resolve(ref).version
            path.resolver.number(ref)  # teach memory what it may cache
            cached = path.resolver.cached(ref)
            assert cached in (None, truth), (aliases, ref, cached, truth)
            assert asyncio.run(path.route(ref))[1].version == truth, (aliases, ref)
