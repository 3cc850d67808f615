"""Where a version came from: the code's commit, the interpreter and the packages that matter."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from berth.registry.redaction import strip_credentials

# Always recorded when installed; flavors add the framework they save with.
_CORE_PACKAGES = ("berth", "numpy", "pandas", "scikit-learn", "pyarrow")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in dict.fromkeys((*_CORE_PACKAGES, *extra)):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_state(where: Path) -> dict[str, Any] | None:
    """The commit checked out at ``where`` and whether the tree had uncommitted changes."""
    try:
        commit = _git(where, "rev-parse", "HEAD")
        dirty = bool(_git(where, "status", "--porcelain", "--untracked-files=no"))
        remote = _git(where, "config", "--get", "remote.origin.url", check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    state: dict[str, Any] = {"commit": commit, "dirty": dirty}
    if remote:
        state["remote"] = strip_credentials(remote)  # https://user:TOKEN@host/...: never stored
    return state


def _git(where: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["git", "-C", str(where), *args],
        capture_output=True,
        text=True,
        timeout=5,
        check=check,
    )
    return done.stdout.strip()


def environment(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(terse=True),
        "packages": package_versions(extra_packages),
    }
