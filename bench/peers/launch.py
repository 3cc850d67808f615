"""How each server of the peers benchmark is launched: command, environment, working folder.

Berth servers serve every model of the home (both phases); the others serve one model each and
are named ``KIND-MODEL`` (``mlserver-numeric``, ``bentoml-batch-omp1-sentiment``). A kind ending
in ``-omp1`` is the same server with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from peers import models
from peers.mlserver_runtime import write_repository
from peers.servers import Server, free_port, stop_all

PEERS_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


@dataclass
class Context:
    work: Path
    prepared: models.Prepared
    pythons: dict[str, Path]  # venv name -> python
    env: dict[str, str]  # the environment every server starts from


def berth_server(ctx: Context, name: str, *extra: str) -> Server:
    cmd = [str(BIN / "berth"), "serve", "--port", "{port}", *extra]
    env = {**ctx.env, "BERTH_HOME": str(ctx.prepared.home)}
    return Server(name, cmd, ctx.work / "logs" / f"{name}.log", env=env)


def artifact(ctx: Context, model: str) -> Path:
    p = ctx.prepared
    return p.numeric_joblib if model == "numeric" else p.sentiment_spec


def app_server(ctx: Context, style: str, model: str) -> Server:
    cmd = [sys.executable, str(PEERS_DIR / "simple_app.py"), "--style", style, "--model", model]
    cmd += ["--artifact", str(artifact(ctx, model)), "--port", "{port}"]
    env = {**ctx.env, "PYTHONPATH": str(PEERS_DIR)}
    return Server(f"{style}-{model}", cmd, ctx.work / "logs" / f"{style}-{model}.log", env=env)


def mlserver_server(ctx: Context, name: str, model: str) -> Server:
    """MLServer reads its ports from settings.json: they are chosen and written here."""
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    folder = write_repository(ctx.work / name, model, artifact(ctx, model), ports)
    cmd = [str(ctx.pythons["mlserver"].parent / "mlserver"), "start", "."]
    env = {**ctx.env, "PYTHONPATH": str(PEERS_DIR)}
    log = ctx.work / "logs" / f"{name}.log"
    return Server(name, cmd, log, env=env, cwd=folder, port=ports["http"])


def bentoml_server(ctx: Context, name: str, model: str, batchable: bool) -> Server:
    service = f"bento_service:{model.capitalize()}"
    cmd = [str(ctx.pythons["bentoml"].parent / "bentoml"), "serve", service]
    cmd += ["--host", "127.0.0.1", "--port", "{port}", "--working-dir", str(PEERS_DIR)]
    env = {
        **ctx.env,
        "PYTHONPATH": str(PEERS_DIR),
        "BENTOML_HOME": str(ctx.work / "bentoml-home"),
        "PEER_ARTIFACT": str(artifact(ctx, model)),
        "PEER_BATCHABLE": "1" if batchable else "0",
    }
    log = ctx.work / "logs" / f"{name}.log"
    return Server(name, cmd, log, health="/readyz", env=env, cwd=ctx.work)


def make_server(ctx: Context, name: str) -> Server:
    if name == "berth":
        return berth_server(ctx, name)
    if name == "berth-no-records":
        return berth_server(ctx, name, "--no-records")
    if name == "berth-no-access-log":
        return berth_server(ctx, name, "--no-access-log")
    kind, model = name.rsplit("-", 1)
    if kind in ("bare", "simple"):
        return app_server(ctx, kind, model)
    if kind.startswith("mlserver"):
        server = mlserver_server(ctx, name, model)
    else:
        server = bentoml_server(ctx, name, model, batchable=kind.startswith("bentoml-batch"))
    if kind.endswith("-omp1"):
        server.env["OMP_NUM_THREADS"] = "1"
    return server


def start_all(ctx: Context, servers: dict[str, Server], wanted: list[str]) -> None:
    """Stop the running servers not in ``wanted``, start the missing ones, wait for all."""
    stop_all([servers.pop(n) for n in list(servers) if n not in wanted])
    fresh = [n for n in wanted if n not in servers]
    for name in fresh:
        servers[name] = make_server(ctx, name)
        servers[name].start()
    for name in fresh:
        servers[name].wait_ready(timeout_s=300)
        print(f"  {name} ready on :{servers[name].port} after {servers[name].ready_s:.1f}s")
