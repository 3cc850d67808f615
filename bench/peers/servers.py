"""The servers of the peers benchmark: how each is started, checked for readiness and stopped.

Every server is a subprocess in a session of its own (``start_new_session``) on a free ephemeral
port of 127.0.0.1, output to a log file (never a pipe, which could fill and stall it). Stopping
sends SIGTERM to its process group, waits, then SIGKILLs every process left of its tree (BentoML's
worker runs in a process group of its own, so the tree is collected from /proc before the signal).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process on the machine."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                out[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def ticks(pids: list[int]) -> int:
    """utime + stime of these processes (all threads), in jiffies; gone processes count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class Server:
    """One server process; ``{port}`` and ``{port:NAME}`` in ``args`` are filled at start."""

    name: str
    args: list[str]
    log: Path
    health: str = "/v2/health/ready"
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_s: float | None = None
    family: list[int] = field(default_factory=list)  # the tree when SIGTERM went out

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = self.port or free_port()  # a port set beforehand is kept (MLServer's)
        cmd = [a.replace("{port}", str(self.port)) for a in self.args]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}{self.health}", timeout=2) as r:
                    if r.status == 200:
                        self.ready_s = time.perf_counter() - self.started_at
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.tail()}")

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return tree(self.proc.pid)

    def terminate(self) -> None:
        """SIGTERM to the server's process group; its tree is remembered for ``finish``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.family = self.pids()
        _signal_group(self.proc.pid, signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait for the server until ``deadline`` (perf_counter), then SIGKILL what is left."""
        if self.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
        for pid in set(self.family) | set(self.pids()):
            _signal_group(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> None:
        self.terminate()
        self.finish(time.perf_counter() + timeout_s)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def post(self, path: str, body: bytes) -> object:
        request = urllib.request.Request(
            f"{self.base}{path}", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())


def stop_all(servers: list[Server], timeout_s: float = 20.0) -> None:
    """Stop servers together: SIGTERM to all, then wait and SIGKILL what is left."""
    for server in servers:
        server.terminate()
    deadline = time.perf_counter() + timeout_s
    for server in servers:
        server.finish(deadline)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (each server leads its own session)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
