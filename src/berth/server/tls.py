"""TLS for ``berth serve``: the certificate files checked before any worker starts, uvicorn's
TLS settings from them, and HSTS on every response served over TLS.

uvicorn builds the ``ssl.SSLContext`` itself (``Config.load``, in each worker process, so the
settings must be plain file names a spawned worker can be handed). :func:`tls_config` checks the
files first by building the same context here, so that a missing or unreadable file, a PEM that
is not a certificate or a key, or a key that does not belong to the certificate is one line
naming the file, not a traceback from every worker. With a CA file (``--tls-ca``) clients must
present a certificate that CA signed (mutual TLS); the handshake fails otherwise.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.errors import InvalidInputError

HSTS = b"max-age=31536000"
"""``Strict-Transport-Security`` on responses served over TLS: browsers use HTTPS only for a
year. No ``includeSubDomains``: Berth cannot know what else its domain serves."""

CIPHERS = "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
"""TLS 1.2 cipher suites (Python's own default; uvicorn's ``TLSv1`` would allow SHA-1 ones).
TLS 1.3's suites are not set by this and are all strong; TLS below 1.2 is refused."""


def tls_config(cert: str | None, key: str | None, ca: str | None) -> dict[str, Any]:
    """uvicorn ``Config`` keywords serving TLS with these files (none: plain HTTP); raises
    :class:`InvalidInputError` naming the file that is wrong."""
    if cert is None and key is None:
        if ca is not None:
            raise InvalidInputError("--tls-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
        return {}
    if cert is None or key is None:
        raise InvalidInputError("TLS needs both --tls-cert FILE and --tls-key FILE")
    context = server_context(cert, key, ca)
    del context  # built only to check the files; uvicorn builds its own in each worker
    options: dict[str, Any] = {
        "ssl_certfile": str(Path(cert).resolve()),
        "ssl_keyfile": str(Path(key).resolve()),
        "ssl_ciphers": CIPHERS,
    }
    if ca is not None:
        options["ssl_ca_certs"] = str(Path(ca).resolve())
        options["ssl_cert_reqs"] = int(ssl.CERT_REQUIRED)
    return options


def server_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """A server context from these files, as uvicorn would build it (for checks and tests)."""
    texts: dict[str, str] = {}
    for flag, file in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if file is None:
            continue
        path = Path(file)
        if not path.is_file():
            raise InvalidInputError(f"{flag} {file!r} does not exist or is not a file")
        try:
            texts[flag] = path.read_bytes().decode("ascii", errors="replace")
        except OSError as exc:
            raise InvalidInputError(f"{flag} {file!r} cannot be read: {exc.strerror}") from exc
    for flag, file in (("--tls-cert", cert), ("--tls-ca", ca)):
        if file is not None and "-----BEGIN CERTIFICATE-----" not in texts[flag]:
            raise InvalidInputError(f"{flag} {file!r} is not a PEM certificate file")
    if "PRIVATE KEY-----" not in texts["--tls-key"]:
        raise InvalidInputError(f"--tls-key {key!r} is not a PEM private key file")
    if "ENCRYPTED" in texts["--tls-key"]:  # OpenSSL would ask for its passphrase on the tty
        raise InvalidInputError(f"--tls-key {key!r} is encrypted: give the key unencrypted")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    try:
        context.load_cert_chain(cert, key, password=b"")  # never a passphrase prompt
    except ssl.SSLError as exc:
        raise InvalidInputError(_chain_problem(cert, key, exc)) from exc
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise InvalidInputError(
                f"--tls-ca {ca!r} is not a PEM file of CA certificates ({exc.reason or exc})"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _chain_problem(cert: str, key: str, exc: ssl.SSLError) -> str:
    reason = str(exc.reason or "")
    if "KEY_VALUES_MISMATCH" in reason:
        return f"--tls-key {key!r} is not the private key of the certificate in --tls-cert {cert!r}"
    return (
        f"--tls-cert {cert!r} and --tls-key {key!r} cannot be used: a damaged PEM certificate "
        f"or key ({reason.lower().replace('_', ' ') or exc})"
    )


class StrictTransportSecurity:
    """Adds ``Strict-Transport-Security`` to every response of a request that came over TLS
    (``scope["scheme"] == "https"``, which uvicorn sets when it serves TLS, or from a trusted
    proxy's ``X-Forwarded-Proto``); a plain HTTP response never carries it (RFC 6797 8.1)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def strict(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((b"strict-transport-security", HSTS))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, strict)
