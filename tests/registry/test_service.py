"""The registry service on SQLite and on PostgreSQL: numbering, aliases, deletes, listing."""

from __future__ import annotations

import numpy as np
import pytest
from tests.models import SumModel, numbers

from berth.app import Berth
from berth.errors import (
    AliasNotFoundError,
    ConflictError,
    InvalidInputError,
    InvalidReferenceError,
    ModelNotFoundError,
    VersionNotFoundError,
)


def _register(client: Berth, name: str = "summer", **kwargs: object):
    return client.register(SumModel(), name, training_data=numbers(), trusted=True, **kwargs)


def test_versions_are_numbered_per_model(any_client: Berth) -> None:
    assert [_register(any_client).version for _ in range(3)] == [1, 2, 3]
    assert _register(any_client, "other").version == 1
    assert [v.version for v in any_client.list_versions("summer")] == [1, 2, 3]


def test_resolve_by_number_alias_and_latest(any_client: Berth) -> None:
    _register(any_client)
    _register(any_client)
    any_client.set_alias("summer", "production", 1)
    assert any_client.get_version("summer/2").version == 2
    assert any_client.get_version("summer@production").version == 1
    assert any_client.get_version("summer").version == 1  # production, when there is one
    assert any_client.get_version("summer@latest").version == 2
    assert any_client.get_version("summer@latest").version == 2
    assert any_client.get_version("summer/1").aliases == ("production",)


def test_loaded_version_predicts_like_the_original(any_client: Berth) -> None:
    data = numbers(5, seed=3)
    _register(any_client)
    out = any_client.load("summer/1").predict(data)
    np.testing.assert_allclose(out["prediction"], data["a"] + data["b"])


def test_alias_moves_are_recorded_with_who_when_from_to(any_client: Berth) -> None:
    _register(any_client)
    _register(any_client)
    assert any_client.set_alias("summer", "production", 1) is None
    assert any_client.set_alias("summer", "production", 2) == 1
    assert any_client.delete_alias("summer", "production") == 2
    moves = any_client.alias_history("summer")
    assert [(e.action, e.details["from"], e.details["to"]) for e in moves] == [
        ("alias.set", None, 1),
        ("alias.set", 1, 2),
        ("alias.delete", 2, None),
    ]
    assert {e.actor for e in moves} == {"tester"}
    assert moves[0].at <= moves[1].at <= moves[2].at


def test_alias_to_missing_version_is_refused(any_client: Berth) -> None:
    _register(any_client)
    with pytest.raises(VersionNotFoundError, match=r"no version 7; versions: 1"):
        any_client.set_alias("summer", "production", 7)


def test_latest_is_a_reserved_alias(any_client: Berth) -> None:
    _register(any_client)
    with pytest.raises(InvalidInputError, match="reserved"):
        any_client.set_alias("summer", "latest", 1)


def test_delete_is_refused_while_an_alias_points_at_the_version(any_client: Berth) -> None:
    _register(any_client)
    any_client.set_alias("summer", "production", 1)
    with pytest.raises(ConflictError, match="production"):
        any_client.delete_version("summer", 1)
    assert any_client.get_version("summer/1").version == 1


def test_deleted_numbers_are_never_reused(any_client: Berth) -> None:
    first = _register(any_client)
    second = _register(any_client)
    any_client.delete_version("summer", 2)
    assert _register(any_client).version == 3
    with pytest.raises(VersionNotFoundError, match=r"versions: 1, 3"):
        any_client.get_version("summer/2")
    # Same content, same artifact: deleting v2 must not remove what v1 and v3 still use.
    assert first.digest == second.digest
    assert any_client.load("summer/1").predict(numbers(2))["prediction"].shape == (2,)


def test_delete_removes_an_unshared_artifact(any_client: Berth) -> None:
    v = _register(any_client)
    any_client.set_alias("summer", "staging", 1)
    any_client.delete_alias("summer", "staging")
    any_client.delete_version("summer", 1)
    assert not any_client.store.exists(v.digest)


def test_listing_and_search(any_client: Berth) -> None:
    _register(any_client, "credit-risk", description="loan defaults")
    _register(any_client, "credit-risk")
    _register(any_client, "sentiment", description="reviews")
    any_client.set_alias("credit-risk", "production", 1)
    models = {m.name: m for m in any_client.list_models()}
    assert models["credit-risk"].versions == 2
    assert models["credit-risk"].latest_version == 2
    assert models["credit-risk"].aliases == {"production": 1}
    assert [m.name for m in any_client.list_models("LOAN")] == ["credit-risk"]
    assert [m.name for m in any_client.list_models("senti")] == ["sentiment"]


def test_versions_filter_by_tags(any_client: Berth) -> None:
    _register(any_client, tags={"team": "risk"})
    _register(any_client, tags={"team": "growth"})
    assert [v.version for v in any_client.list_versions("summer", tags={"team": "growth"})] == [2]


def test_lineage_and_metrics_are_stored(any_client: Berth) -> None:
    v = _register(any_client, metrics={"auc": 0.9}, params={"depth": 3, "features": ["a", "b"]})
    got = any_client.get_version(v.ref)
    assert got.metrics == {"auc": 0.9}
    assert got.params == {"depth": 3, "features": ["a", "b"]}
    assert got.lineage["training_data"]["rows"] == 20
    assert len(got.lineage["training_data"]["fingerprint"]) == 64
    assert got.lineage["environment"]["python"]
    assert "numpy" in got.lineage["environment"]["packages"]
    assert got.trusted is True
    profile = any_client.get_profile(v.ref)
    assert profile is not None
    assert set(profile["features"]) == {"a", "b"}


def test_errors_name_what_is_missing(any_client: Berth) -> None:
    _register(any_client)
    with pytest.raises(ModelNotFoundError, match=r"model 'nope' not found; models: summer"):
        any_client.get_version("nope")
    with pytest.raises(AliasNotFoundError, match=r"no alias 'prod'; aliases: none"):
        any_client.get_version("summer@prod")
    with pytest.raises(InvalidReferenceError, match="not a positive integer"):
        any_client.get_version("summer/x")


@pytest.mark.parametrize("name", ["", "has space", "a/b", "x@y", "-lead", "é"])
def test_bad_model_names_are_refused(client: Berth, name: str) -> None:
    with pytest.raises(InvalidInputError):
        _register(client, name)


def test_non_numeric_metric_is_refused_and_nothing_is_registered(client: Berth) -> None:
    with pytest.raises(InvalidInputError, match="metric 'auc'"):
        _register(client, metrics={"auc": "high"})
    assert client.list_models() == []


def test_names_that_differ_only_in_case_are_refused_naming_the_model(any_client: Berth) -> None:
    _register(any_client, "credit-risk")
    for twin in ("Credit-Risk", "CREDIT-RISK"):
        with pytest.raises(ConflictError, match=r"'Credit-Risk'|'CREDIT-RISK'") as caught:
            _register(any_client, twin)
        assert "collides with the existing model 'credit-risk'" in str(caught.value)
    assert [m.name for m in any_client.list_models()] == ["credit-risk"]
    assert any_client.registry.referenced_digests() == {
        v.digest for v in any_client.list_versions("credit-risk")
    }
    assert (
        _register(any_client, "credit-risk").version == 2
    )  # the model itself still takes versions


def test_every_version_has_its_record_beside_the_artifacts(any_client: Berth) -> None:
    """What a rebuild reads: written on registration, marked on delete, aliases on each move."""
    import orjson

    first = _register(any_client, description="sums")
    _register(any_client)
    any_client.set_alias("summer", "production", 1)
    any_client.delete_version("summer", 2)
    records = any_client.store.versions
    one = orjson.loads(records.path("summer", 1).read_bytes())
    assert (one["model"], one["version"], one["digest"]) == ("summer", 1, first.digest)
    assert one["signature"] == first.signature.to_dict()
    assert one["profile"] == any_client.get_profile("summer/1")
    assert one["model_description"] == "sums"
    assert "deleted_at" not in one
    assert orjson.loads(records.path("summer", 2).read_bytes())["deleted_at"]
    aliases = orjson.loads((records.root / "summer" / "aliases.json").read_bytes())
    assert aliases == {"aliases": {"production": 1}}
    any_client.delete_alias("summer", "production")
    assert orjson.loads((records.root / "summer" / "aliases.json").read_bytes()) == {"aliases": {}}
