"""Signed versions: an ed25519 signature over what a version is, checked before it loads.

The SHA-256 check of an artifact proves its files are the ones its digest names, but the digest
itself comes from the metadata database: someone who can write both the database and the store
can swap a version's artifact for another, and one who can write the database alone can point a
version at another model's artifact or flip its ``trusted`` flag. A signature closes that: an
admin holding the private key signs ``(model, version, digest, trusted, manifest)``
(:func:`payload`), and a process configured with the public key (``BERTH_SIGNING_PUBLIC_KEY``)
loads only versions whose signature verifies against what the database and the store say now.

Signatures are files beside the artifacts, ``signatures/MODEL/N.json`` (an artifact folder is
sealed: nothing may be added to it, and one artifact can serve several versions), so a worker
with the artifact store alone (a Ray worker) can check them too. Keys are PEM files (PKCS#8
private key, SubjectPublicKeyInfo public key), as ``openssl genpkey -algorithm ed25519`` and
``openssl pkey -pubout`` write them, or :func:`generate_key`. ``cryptography`` is imported only
here, when signing or checking (``pip install 'berth[signing]'``).
"""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from berth.errors import ArtifactIntegrityError, InvalidInputError, MissingExtraError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from berth.registry.artifacts import ArtifactStore

FORMAT = "berth-version-signature/1"
"""Names what is signed (the layout of :func:`payload`), so a later layout cannot be confused
with this one."""


def payload(model: str, version: int, digest: str, trusted: bool, manifest: bytes) -> bytes:
    """The bytes signed for a version: canonical JSON of its name, number, digest, trust flag
    and its artifact's manifest (every file's path, size and SHA-256)."""
    try:
        files = orjson.loads(manifest)
    except orjson.JSONDecodeError as exc:
        raise ArtifactIntegrityError(f"{model}/{version}: artifact manifest is unreadable") from exc
    body = {
        "format": FORMAT,
        "model": model,
        "version": version,
        "digest": digest,
        "trusted": bool(trusted),
        "manifest": files,
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key (the start of the SHA-256 of its raw 32 bytes), so that an
    error can say which key a signature was made with."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(path: Path) -> tuple[Path, Path]:
    """Write a new ed25519 private key to ``path`` (PEM, readable by its owner only) and its
    public key beside it (``NAME.pub.pem``); returns both paths. Refuses to overwrite."""
    crypto = _crypto()
    from cryptography.hazmat.primitives import serialization

    public_path = public_key_path(path)
    for target in (path, public_path):
        if target.exists():
            raise InvalidInputError(f"{target} exists: not overwriting a key")
    private = crypto.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        public_path.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    except OSError as exc:
        raise InvalidInputError(f"cannot write the key to {path}: {exc.strerror}") from exc
    return path, public_path


def public_key_path(private: Path) -> Path:
    """Where :func:`generate_key` puts the public key of ``private``: ``NAME.pub.pem``."""
    return private.with_name(f"{private.name.removesuffix('.pem')}.pub.pem")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted ed25519 private key from a PEM file; one-line errors for anything else."""
    _crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"{path} is not an unencrypted PEM private key ({_first_line(exc)}); make one with "
            "berth models sign --generate-key KEY.pem or openssl genpkey -algorithm ed25519"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInputError(f"{path} is a {type(key).__name__}, not an ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An ed25519 public key from a PEM file; one-line errors for anything else (a private key
    included: a server needs only the public half)."""
    _crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key(path, "public")
    if b"PRIVATE KEY" in data:
        raise InvalidInputError(
            f"{path} holds a private key: give the public key (its .pub.pem, or "
            f"openssl pkey -in {path.name} -pubout), and keep the private one off servers"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{path} is not a PEM public key ({_first_line(exc)})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInputError(f"{path} is a {type(key).__name__}, not an ed25519 public key")
    return key


def sign_version(
    store: ArtifactStore,
    *,
    model: str,
    version: int,
    digest: str,
    trusted: bool,
    private_key: Path,
    signed_by: str,
) -> Path:
    """Sign a version whose artifact passes its SHA-256 check and write the signature file;
    returns its path. Signing again (another key, a re-signing) replaces the file."""
    key = load_private_key(private_key)
    ref = f"{model}/{version}"
    store.verify(digest, label=f"model version {ref}")
    signed = payload(model, version, digest, trusted, store.manifest(digest))
    body = {
        "format": FORMAT,
        "model": model,
        "version": version,
        "digest": digest,
        "trusted": bool(trusted),
        "key": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(signed)).decode("ascii"),
        "signed_by": signed_by,
        "signed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    target = store.signature_path(model, version)
    store.write_file(target, orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return target


class SignatureCheck:
    """What a process configured with a public key checks before loading a version."""

    def __init__(self, public_key: Path, store: ArtifactStore) -> None:
        self.path = public_key
        self.key = load_public_key(public_key)
        self.key_id = key_id(self.key)
        self.store = store

    def check(self, model: str, version: int, digest: str, *, trusted: bool) -> None:
        """Raise ``ArtifactIntegrityError`` (a 503 on the server, like a broken artifact) unless
        the version has a signature by this key over what it is now. The artifact has already
        passed its SHA-256 check, so its manifest is the one its digest names."""
        from cryptography.exceptions import InvalidSignature

        ref = f"model version {model}/{version}"
        file = self.store.signature_path(model, version)
        try:
            record: Any = orjson.loads(file.read_bytes())
        except FileNotFoundError:
            raise ArtifactIntegrityError(
                f"{ref} is not signed, and this process loads only versions signed for key "
                f"{self.key_id} (berth models sign {model}/{version} --key PRIVATE.pem)"
            ) from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ArtifactIntegrityError(f"{ref}: its signature file is unreadable") from exc
        try:
            signature = base64.b64decode(str(record["signature"]), validate=True)
            signer = str(record.get("key", "?"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactIntegrityError(f"{ref}: its signature file is unreadable") from exc
        signed = payload(model, version, digest, trusted, self.store.manifest(digest))
        try:
            self.key.verify(signature, signed)
        except InvalidSignature:
            if signer != self.key_id:
                reason = f"it was signed with key {signer}, not {self.key_id}"
            else:
                reason = "its digest, trust or artifact changed since it was signed"
            raise ArtifactIntegrityError(
                f"{ref}: its signature does not verify: {reason}"
            ) from None


def _read_key(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the {kind} key {path}: {exc.strerror}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise MissingExtraError("cryptography", "signing", "signing versions") from exc
    return ed25519
