"""The peers' virtual environments, built from the pinned files beside this one.

``bench/peers/.venvs/NAME`` comes from ``requirements-NAME.txt``: ``torch==2.13.0`` first and alone
(the CPU wheel on this disk; a torch resolved later could be a multi-GB CUDA build), then the
peer's packages, with a constraints file written from the Berth venv so that scikit-learn, numpy,
joblib, transformers and tokenizers are the very versions Berth serves with (the same fitted
model, the same encoder). A stamp file holds a hash of all of that: a second run with nothing
changed does nothing.

    .venv/bin/python bench/peers/venvs.py [mlserver bentoml]
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE / ".venvs"
NAMES = ("mlserver", "bentoml")
TORCH = "torch==2.13.0"
# Held to the Berth venv's versions in every peer venv.
SHARED = (
    "scikit-learn",
    "scipy",
    "numpy",
    "joblib",
    "threadpoolctl",
    "transformers",
    "tokenizers",
    "safetensors",
    "huggingface-hub",
)
STAMP = ".bench-stamp"


def python(name: str) -> Path:
    return ROOT / name / "bin" / "python"


def constraints() -> str:
    """Pins of the shared libraries, read from the interpreter running this (the Berth venv)."""
    lines = [TORCH]
    for package in SHARED:
        try:
            lines.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def _stamp(name: str, pins: str) -> str:
    text = (HERE / f"requirements-{name}.txt").read_text() + pins + sys.version
    return hashlib.sha256(text.encode()).hexdigest()


def ensure(name: str, say: bool = True) -> Path:
    """The peer venv's python, built first if missing or out of date."""
    pins = constraints()
    folder = ROOT / name
    wanted = _stamp(name, pins)
    stamp = folder / STAMP
    if stamp.exists() and stamp.read_text().strip() == wanted and python(name).exists():
        return python(name)
    if say:
        print(f"building the {name} venv in {folder} (a few minutes, once) ...", flush=True)
    ROOT.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    pin_file = folder / "constraints.txt"
    pin_file.write_text(pins)
    pip = [str(python(name)), "-m", "pip", "install", "--quiet", "-c", str(pin_file)]
    log = folder / "pip.log"
    _run([*pip, TORCH], log)  # first and alone: never another torch
    _run([*pip, "-r", str(HERE / f"requirements-{name}.txt")], log)
    _run([str(python(name)), "-c", "import torch, sklearn"], log)
    stamp.write_text(wanted + "\n")
    return python(name)


def _run(cmd: list[str], log: Path) -> None:
    """Run a pip step with its chatter in ``log``; its tail in the error if it fails."""
    with log.open("a") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({done.returncode}):\n{tail}")


def freeze(name: str) -> dict[str, str]:
    """Every package of a peer venv with its version (for the results)."""
    done = subprocess.run(
        [str(python(name)), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = (line.split("==", 1) for line in done.stdout.splitlines() if "==" in line)
    return {k: v for k, v in pairs}


if __name__ == "__main__":
    for wanted_name in sys.argv[1:] or NAMES:
        print(ensure(wanted_name))
