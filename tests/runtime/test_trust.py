"""Trusted artifacts only: what a version may load is sealed in its artifact, trust is an admin's
decision recorded with who made it, and whatever would run code of an untrusted artifact is
refused in one line before anything of it is read."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sqlalchemy import select

from berth.app import Berth
from berth.errors import ArtifactIntegrityError, ForbiddenError, UntrustedArtifactError
from berth.flavors.base import TRUSTED_TYPES
from berth.flavors.sklearn import VETTED_TYPES
from berth.registry import access
from berth.registry.service import NewVersion, VersionInfo
from berth.registry.signature import infer_signature
from berth.registry.tables import AuditRow, VersionRow
from berth.runtime.registration import register_model

TREES = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"


class Sneaky(LogisticRegression):
    """A type skops does not know: loading it needs an admin's trust."""


@pytest.fixture
def data() -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(120, 3)), columns=["a", "b", "c"])
    return frame, (frame["a"] + rng.normal(0, 0.3, 120) > 0).astype(int).to_numpy()


def _sealed(client: Berth, info: VersionInfo) -> dict[str, list[str]]:
    files: dict[str, list[str]] = orjson.loads(
        (client.store.path(info.digest) / TRUSTED_TYPES).read_bytes()
    )["files"]
    return files


def _set_options(client: Berth, info: VersionInfo, options: dict[str, Any]) -> None:
    """What a rogue operator with the database does: edit a version's row."""
    with client.db.write() as s:
        row = s.scalars(
            select(VersionRow).where(
                VersionRow.digest == info.digest, VersionRow.version == info.version
            )
        ).one()
        row.flavor_options = options


def _craft(
    client: Berth,
    name: str,
    files: dict[str, bytes],
    options: dict[str, Any],
    frame: pd.DataFrame,
    *,
    trusted: bool = False,
) -> VersionInfo:
    """A version whose artifact Berth's own save would never write (another tool, an older
    Berth, or someone with write access to the store): sealed and registered as it is."""
    with client.store.staging() as stage:
        for rel, body in files.items():
            (stage / rel).write_bytes(body)
        artifact = client.store.commit(stage)
    return client.registry.create_version(
        NewVersion(
            model=name,
            digest=artifact.digest,
            size_bytes=artifact.size_bytes,
            flavor="sklearn",
            signature=infer_signature(frame),
            flavor_options=options,
            trusted=trusted,
        ),
        actor="crafter",
    )


# -- the list is sealed in the artifact, and only what the file needs ------------------------


def test_a_version_trusts_only_the_types_its_file_needs_sealed_in_its_artifact(
    client: Berth, data
) -> None:
    frame, y = data
    hgb = client.register(
        HistGradientBoostingClassifier(max_iter=5).fit(frame, y), "hgb", training_data=frame
    )
    assert _sealed(client, hgb) == {"model.skops": [TREES]}  # not functools.partial & co
    assert "trusted_types" not in hgb.flavor_options  # nothing of it in the database
    assert hgb.lineage["trust"] == {"trusted": False, "by": None, "types": {"model.skops": [TREES]}}
    plain = client.register(LogisticRegression().fit(frame, y), "plain", training_data=frame)
    assert _sealed(client, plain) == {"model.skops": []}
    # The list is part of the manifest, so of the digest.
    manifest = orjson.loads(client.store.manifest(plain.digest))
    assert TRUSTED_TYPES in manifest["files"]


def test_a_tampered_list_on_disk_fails_the_sha256_check(client: Berth, data) -> None:
    frame, y = data
    info = client.register(
        HistGradientBoostingClassifier(max_iter=5).fit(frame, y), "hgb", training_data=frame
    )
    file = client.store.path(info.digest) / TRUSTED_TYPES
    file.chmod(0o644)
    file.write_bytes(orjson.dumps({"format": 1, "files": {"model.skops": [TREES, "posix.system"]}}))
    with pytest.raises(ArtifactIntegrityError, match=r"trusted_types\.json.*SHA-256"):
        client.load(info.ref)


def test_a_list_widened_in_the_database_is_not_read(client: Berth, data) -> None:
    """The artifact's file needs Sneaky, its sealed list names nothing: the database saying
    Sneaky is trusted (and that the version is) changes nothing."""
    frame, y = data
    body = sio.dumps(Sneaky().fit(frame, y))
    sealed = orjson.dumps({"format": 1, "files": {"model.skops": []}})
    info = _craft(
        client,
        "sneaky",
        {"model.skops": body, TRUSTED_TYPES: sealed},
        {"serializer": "skops", "input": "frame"},
        frame,
    )
    with pytest.raises(UntrustedArtifactError) as refused:
        client.load(info.ref)
    message = str(refused.value)
    assert "\n" not in message
    assert "sneaky/1" in message
    assert "Sneaky" in message
    assert "trusted list" in message
    widened = {
        "serializer": "skops",
        "input": "frame",
        "trusted_types": [f"{Sneaky.__module__}.Sneaky"],
    }
    _set_options(client, info, widened)
    with client.db.write() as s:
        s.scalars(select(VersionRow).where(VersionRow.digest == info.digest)).one().trusted = True
    with pytest.raises(UntrustedArtifactError, match="Sneaky"):
        client.load(info.ref)


def test_a_skops_file_needing_an_untrusted_type_is_refused_before_anything_is_built(
    client: Berth, data, tmp_path: Path
) -> None:
    """A skops file may hold a call of anything (here ``os.system`` in a partial): a type the
    sealed list does not name is refused by name, in one line, and nothing runs."""
    frame, _y = data
    import functools

    marker = tmp_path / "ran"
    body = sio.dumps({"step": functools.partial(os.system, f"touch {marker}")})
    sealed = orjson.dumps({"format": 1, "files": {"model.skops": ["functools.partial"]}})
    info = _craft(
        client,
        "evil",
        {"model.skops": body, TRUSTED_TYPES: sealed},
        {"serializer": "skops", "input": "frame"},
        frame,
    )
    with pytest.raises(
        UntrustedArtifactError,
        match=r"evil/1: model\.skops needs types its trusted list does not name: posix\.system$",
    ):
        client.load(info.ref)
    assert not marker.exists()


# -- versions registered before the lists were sealed ------------------------------------------


def test_an_older_version_loads_when_its_database_list_stays_within_the_vetted_types(
    client: Berth, data
) -> None:
    frame, y = data
    model = HistGradientBoostingClassifier(max_iter=5).fit(frame, y)
    legacy = {"serializer": "skops", "input": "frame", "trusted_types": sorted(VETTED_TYPES)}
    info = _craft(client, "old", {"model.skops": sio.dumps(model)}, legacy, frame)
    out = client.load(info.ref).predict(frame)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame))


def test_an_older_version_whose_database_list_goes_beyond_them_must_be_registered_again(
    client: Berth, data
) -> None:
    frame, y = data
    sneaky = f"{Sneaky.__module__}.Sneaky"
    legacy = {"serializer": "skops", "input": "frame", "trusted_types": [*VETTED_TYPES, sneaky]}
    info = _craft(
        client,
        "old",
        {"model.skops": sio.dumps(Sneaky().fit(frame, y))},
        legacy,
        frame,
        trusted=True,
    )
    with pytest.raises(
        UntrustedArtifactError,
        match=rf"old/1: .*outside the vetted ones \({sneaky}\): register it again",
    ):
        client.load(info.ref)


# -- trust is an admin's decision, recorded with who made it -----------------------------------


def test_trust_needs_an_admin_and_records_who_gave_it(client: Berth, data) -> None:
    frame, y = data
    model = Sneaky().fit(frame, y)
    deployer = access.Principal("dana", "deployer", via="key")
    with (
        access.acting_as(deployer),
        pytest.raises(ForbiddenError, match=r"'dana' \(deployer\) may not trust"),
    ):
        register_model(
            client.registry,
            model,
            "s",
            actor="dana",
            flavor="sklearn",
            training_data=frame,
            trusted=True,
        )
    with (
        access.acting_as(deployer),
        pytest.raises(UntrustedArtifactError, match=r"Sneaky.*trusted=True"),
    ):
        register_model(
            client.registry, model, "s", actor="dana", flavor="sklearn", training_data=frame
        )
    assert client.list_models() == []
    assert not client.store.digests()  # refused before anything was saved
    admin = access.Principal("ada", "admin", via="key")
    with access.acting_as(admin):
        info = register_model(
            client.registry,
            model,
            "s",
            actor="ada",
            flavor="sklearn",
            training_data=frame,
            trusted=True,
        )
    sneaky = f"{Sneaky.__module__}.Sneaky"
    assert info.trusted is True
    assert info.lineage["trust"] == {
        "trusted": True,
        "by": "ada",
        "types": {"model.skops": [sneaky]},
    }
    assert _sealed(client, info) == {"model.skops": [sneaky]}
    with client.db.read() as s:
        event = s.scalars(select(AuditRow).where(AuditRow.action == "version.create")).one()
    assert (event.actor, event.details["trusted"], event.details["digest"]) == (
        "ada",
        True,
        info.digest,
    )
    np.testing.assert_allclose(
        client.load(info.ref).predict(frame)["probabilities"], model.predict_proba(frame)
    )


def test_anonymous_trust_is_unauthorized(client: Berth, data) -> None:
    frame, y = data
    from berth.errors import UnauthorizedError

    with access.acting_as(access.ANONYMOUS), pytest.raises(UnauthorizedError):
        register_model(
            client.registry,
            LogisticRegression().fit(frame, y),
            "x",
            actor="?",
            training_data=frame,
            trusted=True,
        )


# -- a pickle in an artifact is trusted or refused, whatever the database says ---------------------


def test_a_pickle_in_an_untrusted_artifact_is_refused_whatever_the_options_say(
    client: Berth, data, tmp_path: Path
) -> None:
    frame, _y = data
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    info = _craft(client, "p", {"model.pkl": pickle.dumps(Evil())}, {"serializer": "skops"}, frame)
    with pytest.raises(
        UntrustedArtifactError, match=r"^p/1: its artifact holds model\.pkl, a pickle"
    ):
        client.load(info.ref)
    assert not marker.exists()


def test_a_pickle_registered_by_an_admin_loads(client: Berth, data) -> None:
    frame, y = data
    model = LogisticRegression().fit(frame, y)
    info = client.register(
        model, "p", training_data=frame, trusted=True, save_options={"serializer": "pickle"}
    )
    assert info.lineage["trust"]["trusted"] is True
    # The artifact decides how it loads: a database saying "skops" does not break it.
    _set_options(client, info, {"serializer": "skops", "input": "frame"})
    np.testing.assert_allclose(
        client.load(info.ref).predict(frame)["probabilities"], model.predict_proba(frame)
    )


def test_the_command_line_refuses_trust_from_a_deployer_before_reading_the_file(
    home: Path, tmp_path: Path
) -> None:
    """Reading a pickle runs it, so `register --trusted` checks the role first."""
    from typer.testing import CliRunner

    from berth.cli.errors import EXIT_CODES
    from berth.cli.main import app
    from berth.config import Settings

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    with Berth(Settings(home=home)) as admin:
        deployer = admin.create_key("ci", "deployer").key
    env = {"BERTH_HOME": str(home), "BERTH_AUTH": "1", "BERTH_API_KEY": deployer, "COLUMNS": "200"}
    args = ["models", "register", str(tmp_path / "evil.pkl"), "--name", "evil", "--trusted"]
    result = CliRunner(env=env).invoke(app, args)
    assert result.exit_code == EXIT_CODES["forbidden"], result.output
    assert "'ci' (deployer) may not trust an artifact" in result.output
    assert result.output.count("\n") == 1
    assert not marker.exists()
