"""``berth serve`` over TLS, as a real process on an ephemeral port with a certificate and CAs
made here (``cryptography``), called by a real TLS client (httpx verifying against the CA):
HTTPS with HSTS, with one worker and with the SO_REUSEPORT workers; mutual TLS refusing a client
without a certificate, or with one another CA signed; HSTS absent over plain HTTP; and every bad
certificate file one line and a non-zero exit before anything starts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from berth.app import ServeOptions, build_server
from berth.cli.main import app as cli_app
from berth.config import PathOptions, Settings
from berth.server.tls import HSTS
from berth.testing import asgi_client

STARTED = re.compile(r"Uvicorn running on (https?)://127\.0\.0\.1:(\d+)")
READY = "Application startup complete."


# -- certificates made here ----------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_path, key_path)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class Authority:
    """A CA that signs server and client certificates."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.issued = _write(folder, name, self.cert, self.key)

    def issue(self, name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return _write(self.folder, name, builder.sign(self.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: Authority
    server: Issued
    client: Issued
    stranger: Issued
    """A client certificate another CA signed."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder, "berth-test-ca")
    other = Authority(folder, "other-ca")
    return Pki(
        ca,
        server=ca.issue("server", server=True),
        client=ca.issue("client", server=False),
        stranger=other.issue("stranger", server=False),
    )


def client_context(pki: Pki, cert: Issued | None = None) -> ssl.SSLContext:
    """A TLS client trusting only the test CA, presenting ``cert`` if given."""
    context = ssl.create_default_context(cafile=str(pki.ca.issued.cert))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


# -- a real server -------------------------------------------------------------------------------


class ServerProcess:
    """``berth --home H serve --port 0 ...`` as a child process in its own process group; the
    scheme and port from its log."""

    def __init__(
        self, home: Path, *args: str, workers: int = 1, env: Mapping[str, str] | None = None
    ) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        clean.pop("PROMETHEUS_MULTIPROC_DIR", None)
        clean.update(BERTH_USER="server", **(env or {}))
        exe = Path(sys.executable).parent / "berth"
        self.workers = workers
        self.proc = subprocess.Popen(
            [
                *(str(exe), "--home", str(home), "serve", "--port", "0"),
                *("--workers", str(workers), "--poll-interval", "0", "--no-access-log", *args),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def url(self, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while self.log.count(READY) < self.workers or not STARTED.search(self.log):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the server did not start:\n" + self.log)
            time.sleep(0.05)
        found = STARTED.search(self.log)
        assert found is not None
        return f"{found.group(1)}://127.0.0.1:{found.group(2)}"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def server_process(home: Path, *args: str, **kw: object) -> Iterator[tuple[ServerProcess, str]]:
    server = ServerProcess(home, *args, **kw)  # type: ignore[arg-type]
    try:
        yield server, server.url()
    finally:
        server.stop()


def tls_args(pki: Pki, *, mutual: bool = False) -> tuple[str, ...]:
    args = ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    return (*args, "--tls-ca", str(pki.ca.issued.cert)) if mutual else args


# -- over the network ----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_https_with_hsts_and_a_verified_certificate(tmp_path: Path, pki: Pki, workers: int) -> None:
    with server_process(tmp_path / "home", *tls_args(pki), workers=workers) as (server, url):
        assert url.startswith("https://")
        assert "on https://127.0.0.1:0" in server.log  # berth serve says https
        with httpx.Client(verify=client_context(pki)) as client:
            for _ in range(4):  # fresh connections reach both workers' sockets
                r = client.get(f"{url}/v2/health/ready", headers={"Connection": "close"})
                assert r.status_code == 200
                assert r.headers["strict-transport-security"] == HSTS.decode()
            r = client.get(f"{url}/v2/models/nothing")  # an error answer carries it too
            assert r.status_code == 404
            assert r.headers["strict-transport-security"] == HSTS.decode()
        # A client that does not trust the test CA refuses the server...
        with httpx.Client() as stranger, pytest.raises(httpx.ConnectError, match="CERTIFICATE"):
            stranger.get(f"{url}/v2/health/ready")
        # ...and plain HTTP on the TLS port gets no answer.
        plain = url.replace("https://", "http://")
        with httpx.Client() as client, pytest.raises(httpx.TransportError):
            client.get(f"{plain}/v2/health/ready")


@pytest.mark.parametrize("workers", [1, 2])
def test_mutual_tls_needs_a_client_certificate_the_ca_signed(
    tmp_path: Path, pki: Pki, workers: int
) -> None:
    args = tls_args(pki, mutual=True)
    with server_process(tmp_path / "home", *args, workers=workers) as (server, url):
        assert "mutual TLS" in server.log
        with httpx.Client(verify=client_context(pki, pki.client)) as client:
            for _ in range(4):
                r = client.get(f"{url}/v2/health/ready", headers={"Connection": "close"})
                assert r.status_code == 200
                assert "strict-transport-security" in r.headers
        for cert in (None, pki.stranger):
            # TLS 1.2: the server checks the client's certificate inside the handshake, which
            # fails; TLS 1.3: the client's handshake ends before the server has checked, and the
            # server then drops the connection unanswered.
            tls12 = client_context(pki, cert)
            tls12.maximum_version = ssl.TLSVersion.TLSv1_2
            with (
                httpx.Client(verify=tls12) as client,
                pytest.raises(httpx.ConnectError, match=r"EOF|alert|certificate"),
            ):
                client.get(f"{url}/v2/health/ready")
            with (
                httpx.Client(verify=client_context(pki, cert)) as client,
                pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)),
            ):
                client.get(f"{url}/v2/health/ready")


def test_plain_http_has_no_hsts(tmp_path: Path) -> None:
    with server_process(tmp_path / "home") as (_server, url):
        assert url.startswith("http://")
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 200
        assert "strict-transport-security" not in r.headers


def test_hsts_follows_the_requests_scheme_in_process(tmp_path: Path) -> None:
    """Behind a TLS proxy uvicorn takes the scheme from X-Forwarded-Proto: what the client
    used decides, for every answer (an auth refusal too)."""
    options = ServeOptions(path=PathOptions(poll_interval_s=0), access_log=False)
    app = build_server(Settings(home=tmp_path / "home", auth=True, key_pepper="p"), options)

    async def go() -> None:
        async with asgi_client(app, base_url="https://berth.test") as https:
            r = await https.get("/v2/models/x")
            assert r.status_code == 401
            assert r.headers["strict-transport-security"] == HSTS.decode()
        async with asgi_client(app) as http:
            r = await http.get("/v2/models/x")
            assert r.status_code == 401
            assert "strict-transport-security" not in r.headers

    asyncio.run(go())


# -- bad files: one line, non-zero, nothing started ----------------------------------------------


def _serve(tmp_path: Path, *args: str) -> tuple[int, str]:
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["--home", str(tmp_path / "home"), "serve", "--port", "0", *args]
    )
    return result.exit_code, result.output


def _one_line(code: int, output: str) -> str:
    assert code != 0, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_bad_tls_files_are_one_line_and_a_non_zero_exit(tmp_path: Path, pki: Pki) -> None:
    cert, key, ca = str(pki.server.cert), str(pki.server.key), str(pki.ca.issued.cert)
    missing = str(tmp_path / "nowhere.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    damaged = tmp_path / "damaged.crt"
    text = pki.server.cert.read_text().splitlines()
    damaged.write_text("\n".join([text[0], text[1][::-1], *text[2:]]) + "\n")
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes(pki.server.key.read_bytes())
    unreadable.chmod(0)
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = {
        "missing cert": (("--tls-cert", missing, "--tls-key", key), "--tls-cert"),
        "missing key": (("--tls-cert", cert, "--tls-key", missing), "--tls-key"),
        "cert alone": (("--tls-cert", cert), "both --tls-cert"),
        "key alone": (("--tls-key", key), "both --tls-cert"),
        "ca alone": (("--tls-ca", ca), "--tls-ca needs"),
        "mismatched key": (
            ("--tls-cert", cert, "--tls-key", str(pki.client.key)),
            "is not the private key of the certificate",
        ),
        "garbage cert": (("--tls-cert", str(garbage), "--tls-key", key), "not a PEM"),
        "garbage ca": (
            ("--tls-cert", cert, "--tls-key", key, "--tls-ca", str(garbage)),
            "--tls-ca",
        ),
        "key is a folder": (("--tls-cert", cert, "--tls-key", str(tmp_path)), "not a file"),
        "missing ca": (("--tls-cert", cert, "--tls-key", key, "--tls-ca", missing), "--tls-ca"),
    }
    if os.geteuid() != 0:  # root reads a file whatever its mode
        cases["unreadable key"] = (
            ("--tls-cert", cert, "--tls-key", str(unreadable)),
            "cannot be read",
        )
    for what, (args, expected) in cases.items():
        line = _one_line(*_serve(tmp_path, *args))
        assert expected in line, (what, line)
        assert "Uvicorn running" not in line
