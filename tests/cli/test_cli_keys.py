"""``berth keys`` and the CLI acting as a key's principal on a shared database (SQLite and
PostgreSQL): every command checked (exit 6 and one line for a role lacking the right, 5 without a
key); and ``berth serve`` refusing a reachable address with auth off."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.models import numbers
from typer.testing import CliRunner, Result

from berth.app import Berth
from berth.cli.errors import EXIT_CODES
from berth.cli.main import app
from berth.config import Settings
from berth.registry.access import PERMISSIONS, ROLES

PEPPER = "cli-keys-test-pepper-value"
BASE_ENV: dict[str, str | None] = {
    "BERTH_HOME": None,
    "BERTH_DATABASE_URL": None,
    "BERTH_ARTIFACT_ROOT": None,
    "BERTH_USER": "cli-tester",
    "BERTH_AUTH": None,
    "BERTH_API_KEY": None,
    "BERTH_KEY_PEPPER": PEPPER,
    "FORCE_COLOR": None,
    "COLUMNS": "200",
}

Invoke = Callable[..., Result]


def one_line_error(result: Result, kind: str, *fragments: str) -> str:
    assert result.exit_code == EXIT_CODES[kind], (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared(request: pytest.FixtureRequest, home: Path) -> tuple[Path, str | None]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return home, url


@pytest.fixture
def cli(shared: tuple[Path, str | None]) -> Invoke:
    home, url = shared
    runner = CliRunner(env={**BASE_ENV, "BERTH_HOME": str(home), "BERTH_DATABASE_URL": url})

    def invoke(*args: str, key: str | None = None, auth: bool | None = None) -> Result:
        env: dict[str, str | None] = {}
        if key is not None or auth:
            env["BERTH_AUTH"] = "1"
        if key is not None:
            env["BERTH_API_KEY"] = key
        return runner.invoke(app, list(args), env=env)

    return invoke


def _local(shared: tuple[Path, str | None]) -> Berth:
    home, url = shared
    return Berth(Settings(home=home, database_url=url, user="cli-tester", key_pepper=PEPPER))


def test_keys_create_prints_the_key_once(cli: Invoke, shared: tuple[Path, str | None]) -> None:
    made = cli("keys", "create", "--name", "ci", "--role", "predictor", "--scope", "m")
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("berth_")
    assert len(key.splitlines()) == 1
    assert "shown this once" in made.stderr
    assert "scoped to m" in made.stderr
    secret = key.split("_", 2)[2]
    listed = cli("keys", "list")
    assert listed.exit_code == 0
    assert "ci" in listed.stdout
    assert "predictor" in listed.stdout
    as_json = cli("keys", "list", "--json")
    assert secret not in listed.output + as_json.output
    assert '"scopes": [\n      "m"\n    ]' in as_json.stdout
    with _local(shared) as local:
        assert local.auth.keys.verify(key).name == "ci"
    revoked = cli("keys", "revoke", "ci")
    assert revoked.exit_code == 0
    assert "within 5 s" in revoked.stdout
    assert '"status": "revoked"' in cli("keys", "list", "--json").stdout
    one_line_error(cli("keys", "revoke", "ci"), "conflict", "already revoked")
    expiring = cli("keys", "create", "--name", "tmp", "--role", "viewer", "--expires", "90d")
    assert expiring.exit_code == 0
    assert "expires" in expiring.stderr
    one_line_error(
        cli("keys", "create", "--name", "x", "--role", "viewer", "--expires", "soon"),
        "invalid_input",
        "invalid duration 'soon'",
    )
    one_line_error(cli("keys", "create", "--name", "x", "--role", "god"), "invalid_input", "role")


def _setup(shared: tuple[Path, str | None], tmp_path: Path) -> dict[str, str]:
    """Models m (v1 production) and a CSV to score; one key per role."""
    from sklearn.linear_model import LinearRegression

    data = numbers()
    with _local(shared) as local:
        for _ in range(2):
            local.register(
                LinearRegression().fit(data, data["a"]),
                "m",
                training_data=data,
                measure_latency=False,
            )
        local.set_alias("m", "production", 1)
        keys = {role: local.create_key(f"{role}-key", role).key for role in ROLES}
    data.head(3).to_csv(tmp_path / "in.csv", index=False)
    return keys


def _commands(tmp_path: Path, local: Callable[[], Berth]) -> list[tuple[str, list[str], Any]]:
    """(permission, argv, set-up) of each command: set-up (by the local admin) makes the
    command runnable again for the next role."""
    csv = str(tmp_path / "in.csv")

    def new_version() -> None:
        from sklearn.linear_model import LinearRegression

        data = numbers()
        with local() as c:
            c.register(
                LinearRegression().fit(data, data["b"]),
                "m",
                training_data=data,
                measure_latency=False,
            )

    def an_alias() -> None:
        with local() as c:
            c.set_alias("m", "temp", 1)

    return [
        ("read", ["models", "list"], None),
        ("read", ["models", "versions", "m"], None),
        ("read", ["models", "show", "m"], None),
        ("read", ["models", "history", "m"], None),
        ("read", ["batch", "list"], None),
        ("read", ["batch", "schedules"], None),
        ("predict", ["predict", "m", "-i", csv], None),
        ("alias", ["models", "alias", "m", "staging", "2"], None),
        ("alias", ["models", "alias", "m", "temp", "--delete"], an_alias),
        ("delete", ["models", "delete", "LATEST", "--yes"], new_version),
        ("delete", ["gc"], None),
        ("deploy", ["batch", "run", "m", "-i", csv, "-o", "OUT", "--overwrite"], None),
        ("keys", ["keys", "list"], None),
        ("keys", ["keys", "create", "--name", "NEWKEY", "--role", "viewer"], None),
    ]


def test_the_cli_matrix(cli: Invoke, shared: tuple[Path, str | None], tmp_path: Path) -> None:
    keys = _setup(shared, tmp_path)
    commands = _commands(tmp_path, lambda: _local(shared))
    counter = 0
    for role in ROLES:
        for permission, argv, setup in commands:
            counter += 1
            if setup is not None:
                setup()
            args = [_fill(a, tmp_path, counter, shared) for a in argv]
            result = cli(*args, key=keys[role])
            if permission in PERMISSIONS[role]:
                assert result.exit_code == 0, (role, args, result.output)
            else:
                one_line_error(result, "forbidden", f"'{role}-key' ({role}) may not")
    with _local(shared) as local:
        moved = [e.actor for e in local.alias_history("m") if e.subject == "m@staging"]
    assert moved == ["admin-key", "deployer-key"]


def _fill(arg: str, tmp_path: Path, counter: int, shared: tuple[Path, str | None]) -> str:
    if arg == "OUT":
        return str(tmp_path / f"out-{counter}.parquet")
    if arg == "NEWKEY":
        return f"new-{counter}"
    if arg == "LATEST":
        with _local(shared) as local:
            return local.list_versions("m")[-1].ref
    return arg


def test_the_cli_needs_a_good_key_when_auth_is_on(
    cli: Invoke, shared: tuple[Path, str | None], tmp_path: Path
) -> None:
    keys = _setup(shared, tmp_path)
    one_line_error(cli("models", "list", auth=True), "unauthorized", "BERTH_API_KEY")
    bad = keys["viewer"][:-3] + "abc"
    one_line_error(cli("models", "list", key=bad), "unauthorized", "invalid API key")
    flag = cli("--api-key", keys["viewer"], "models", "list", auth=True)
    assert flag.exit_code == 0, flag.output
    # Auth off: the local user, an admin, as before.
    assert cli("keys", "list").exit_code == 0


# -- secure by default -------------------------------------------------------------------------


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """``berth serve`` up to the point where uvicorn would bind (the tests bind nothing
    beyond 127.0.0.1): what it would have served."""
    served: list[tuple[str, int]] = []
    monkeypatch.setattr(
        "berth.cli.serve._run", lambda _s, _o, host, port, _w, *_tls: served.append((host, port))
    )
    return served


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "berth.example.test"])
def test_serve_refuses_a_reachable_address_with_auth_off(
    cli: Invoke, no_server: list[tuple[str, int]], host: str
) -> None:
    result = cli("serve", "--host", host)
    line = one_line_error(result, "invalid_input", "--insecure", "berth keys create", host)
    assert "auth off" in line
    assert no_server == []


def test_serve_with_insecure_warns_loudly(cli: Invoke, no_server: list[tuple[str, int]]) -> None:
    result = cli("serve", "--host", "0.0.0.0", "--insecure")
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.stderr
    assert "WITH AUTH OFF (--insecure)" in result.stderr
    assert no_server == [("0.0.0.0", 8000)]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_serve_on_loopback_needs_nothing(
    cli: Invoke, no_server: list[tuple[str, int]], host: str
) -> None:
    assert cli("serve", "--host", host).exit_code == 0
    assert no_server == [(host, 8000)]


def test_serve_with_auth_on_needs_no_key_itself(
    cli: Invoke, no_server: list[tuple[str, int]]
) -> None:
    result = cli("serve", "--host", "0.0.0.0", auth=True)
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.stderr
    assert no_server == [("0.0.0.0", 8000)]
