"""Signed versions: `berth models sign` with an ed25519 key, and clients and servers configured
with the public key that load only versions signed with it over what they are now."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sqlalchemy import select
from typer.testing import CliRunner, Result

from berth.app import Berth, build_server
from berth.cli.errors import EXIT_CODES
from berth.cli.main import app
from berth.config import PathOptions, ServeOptions, Settings
from berth.errors import ArtifactIntegrityError, InvalidInputError
from berth.registry import signing
from berth.registry.tables import VersionRow
from berth.testing import running_server

ENV = {"BERTH_HOME": None, "BERTH_DATABASE_URL": None, "BERTH_USER": "signer", "COLUMNS": "200"}


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    return pd.DataFrame(rng.normal(size=(80, 2)), columns=["a", "b"])


@pytest.fixture
def registered(home: Path, frame: pd.DataFrame) -> Path:
    """A home with m/1 and m/2 (two models, unsigned)."""
    y = (frame["a"] > 0).astype(int)
    with Berth(Settings(home=home, user="tester")) as client:
        for c in (1.0, 0.1):
            client.register(LogisticRegression(C=c).fit(frame, y), "m", training_data=frame)
    return home


def cli(home: Path, *args: str, public_key: Path | None = None) -> Result:
    env = dict(ENV)
    if public_key is not None:
        env["BERTH_SIGNING_PUBLIC_KEY"] = str(public_key)
    return CliRunner(env=env).invoke(app, ["--home", str(home), *args])


def keypair(folder: Path, name: str = "release") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return signing.generate_key(folder / f"{name}.pem")


def checking(home: Path, public: Path) -> Berth:
    return Berth(Settings(home=home, user="tester", signing_public_key=public))


def test_sign_round_trip_through_the_command_line(
    registered: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    made = cli(registered, "models", "sign", "--generate-key", str(tmp_path / "k.pem"))
    assert made.exit_code == 0, made.output
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    assert f"BERTH_SIGNING_PUBLIC_KEY={public}" in made.output
    again = cli(registered, "models", "sign", "--generate-key", str(private))
    assert again.exit_code == EXIT_CODES["invalid_input"]
    assert "not overwriting" in again.output

    signed = cli(registered, "models", "sign", "m/1", "--key", str(private))
    assert signed.exit_code == 0, signed.output
    assert "signed m/1" in signed.output
    record = orjson.loads((registered / "artifacts" / "signatures" / "m" / "1.json").read_bytes())
    assert record["key"] == signing.key_id(signing.load_public_key(public))
    assert record["signed_by"] == "signer"

    with checking(registered, public) as client:
        out = client.load("m/1").predict(frame)
        assert out["label"].shape == (len(frame),)
        with pytest.raises(ArtifactIntegrityError) as refused:
            client.load("m/2")
    assert str(refused.value) == (
        f"model version m/2 is not signed, and this process loads only versions signed for key "
        f"{record['key']} (berth models sign m/2 --key PRIVATE.pem)"
    )
    # The command line refuses it the same way: one line, the unavailable exit code.
    shown = cli(registered, "predict", "m/2", "--input", _rows(frame, tmp_path), public_key=public)
    assert shown.exit_code == EXIT_CODES["unavailable"], shown.output
    assert "m/2 is not signed" in shown.output
    assert "Traceback" not in shown.output


def _rows(frame: pd.DataFrame, tmp_path: Path) -> str:
    path = tmp_path / "rows.csv"
    frame.head(3).to_csv(path, index=False)
    return str(path)


def test_a_signature_by_another_key_is_refused(registered: Path, tmp_path: Path) -> None:
    mine_private, mine_public = keypair(tmp_path / "mine")
    other_private, _ = keypair(tmp_path / "other")
    with Berth(Settings(home=registered)) as client:
        info = client.get_version("m/1")
        signing.sign_version(
            client.store,
            model="m",
            version=1,
            digest=info.digest,
            trusted=info.trusted,
            private_key=other_private,
            signed_by="mallory",
        )
    mine = signing.key_id(signing.load_public_key(mine_public))
    other = signing.key_id(signing.load_private_key(other_private).public_key())
    with checking(registered, mine_public) as client, pytest.raises(ArtifactIntegrityError) as no:
        client.load("m/1")
    assert str(no.value) == (
        f"model version m/1: its signature does not verify: it was signed with key {other}, "
        f"not {mine}"
    )
    assert mine_private.exists()


def test_a_version_changed_in_the_database_after_signing_is_refused(
    registered: Path, tmp_path: Path
) -> None:
    private, public = keypair(tmp_path)
    for ref in ("m/1", "m/2"):
        assert cli(registered, "models", "sign", ref, "--key", str(private)).exit_code == 0
    with checking(registered, public) as client:
        client.load("m/2")  # signed: loads
        first = client.get_version("m/1")
        with client.db.write() as s:
            row = s.scalars(select(VersionRow).where(VersionRow.version == 2)).one()
            row.digest = first.digest  # m/2 now names m/1's (also signed) artifact
    # A new process (a loaded version stays loaded in the one that checked it).
    with checking(registered, public) as client:
        with pytest.raises(ArtifactIntegrityError, match=r"m/2: its signature does not verify"):
            client.load("m/2")
        client.load("m/1")
        with client.db.write() as s:
            row = s.scalars(select(VersionRow).where(VersionRow.version == 1)).one()
            row.trusted = True  # a flipped trust flag is a changed version too
    with (
        checking(registered, public) as client,
        pytest.raises(ArtifactIntegrityError, match="trust or artifact changed since"),
    ):
        client.load("m/1")


def test_a_signature_file_edited_on_disk_is_refused(registered: Path, tmp_path: Path) -> None:
    private, public = keypair(tmp_path)
    assert cli(registered, "models", "sign", "m/1", "--key", str(private)).exit_code == 0
    file = registered / "artifacts" / "signatures" / "m" / "1.json"
    record = orjson.loads(file.read_bytes())
    forged = bytearray(base64.b64decode(record["signature"]))
    forged[0] ^= 1
    record["signature"] = base64.b64encode(bytes(forged)).decode()
    file.write_bytes(orjson.dumps(record))
    with checking(registered, public) as client, pytest.raises(ArtifactIntegrityError):
        client.load("m/1")
    file.write_bytes(b"{not json")
    with (
        checking(registered, public) as client,
        pytest.raises(ArtifactIntegrityError, match="unreadable"),
    ):
        client.load("m/1")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_keys_made_by_openssl_work(registered: Path, frame: pd.DataFrame, tmp_path: Path) -> None:
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True
    )
    assert cli(registered, "models", "sign", "m@latest", "--key", str(private)).exit_code == 0
    with checking(registered, public) as client:
        assert client.load("m/2").predict(frame)["label"].shape == (len(frame),)


def test_bad_keys_are_one_line_errors(registered: Path, tmp_path: Path) -> None:
    private, _public = keypair(tmp_path)
    with pytest.raises(InvalidInputError, match="holds a private key: give the public key"):
        checking(registered, private)
    listed = cli(registered, "models", "list", public_key=private)
    assert listed.exit_code == EXIT_CODES["invalid_input"]
    assert listed.output.count("\n") == 1
    missing = cli(registered, "models", "sign", "m/1", "--key", str(tmp_path / "nope.pem"))
    assert missing.exit_code == EXIT_CODES["invalid_input"]
    assert "cannot read the private key" in missing.output
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    refused = cli(registered, "models", "sign", "m/1", "--key", str(junk))
    assert refused.exit_code == EXIT_CODES["invalid_input"]
    assert "is not an unencrypted PEM private key" in refused.output
    unknown = cli(registered, "models", "sign", "m/9", "--key", str(private))
    assert unknown.exit_code == EXIT_CODES["not_found"]
    assert cli(registered, "models", "sign", "m/1").exit_code == EXIT_CODES["invalid_input"]


def test_a_server_with_a_public_key_serves_signed_versions_and_refuses_others(
    registered: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    private, public = keypair(tmp_path)
    assert cli(registered, "models", "sign", "m/1", "--key", str(private)).exit_code == 0
    settings = Settings(home=registered, user="tester", signing_public_key=public)
    options = ServeOptions(path=PathOptions(poll_interval_s=0), access_log=False)
    rows = {"records": frame.head(2).to_dict(orient="records")}
    with running_server(build_server(settings, options)) as url:
        ok = httpx.post(f"{url}/v1/predict/m/1", json=rows, timeout=30)
        assert ok.status_code == 200, ok.text
        refused = httpx.post(f"{url}/v1/predict/m/2", json=rows, timeout=30)
        assert refused.status_code == 503
        assert "m/2 is not signed" in refused.json()["error"]
