"""Whether the process recorded as running a job still does.

A job row holds its process's id and host, and the time the process last wrote to it. On the same
host the job is gone when no process has that id, or when the process that has it started after
that last write: the kernel gave the id of a dead owner to another process, which cannot have
written to the job before it existed. No start time needs storing for that. From another host
nothing can be told (a process there may be alive), so such a job stays ``running``.
"""

from __future__ import annotations

import os
from datetime import datetime

from berth.registry.artifacts import Owner

SLACK_S = 2.0
"""How much later than the job's last write a process may seem to have started and still be its
owner: the boot time the kernel reports is whole seconds."""


def gone(host: str, pid: int | None, last_write: datetime) -> bool:
    """True only when this host can tell that the job's process no longer runs."""
    if pid is None or pid == os.getpid():
        return False
    state = Owner(pid, host).state()
    if state != "running":
        return state == "gone"
    started = started_at(pid)
    return started is not None and started > last_write.timestamp() + SLACK_S


def started_at(pid: int) -> float | None:
    """When a process started, in seconds since the epoch (Linux; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: clock ticks
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None
