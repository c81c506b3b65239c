"""The layout's rules, read from the source with ``ast`` (docs/architecture.md).

Layers, bottom to top: ``common`` -> ``crobim`` -> ``pipelines`` -> ``jobs``. A module imports only its own layer and
those below; the core pipeline never imports the demo package (``pipelines.demo``); no import cycles between modules
(imports inside functions and under ``TYPE_CHECKING`` count); no function over 80 lines; no module over 400 lines.
``crobim`` imports with torch, timm, transformers and safetensors alone (the GPU machine has nothing else).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Packages by layer, bottom first.
LAYERS = ("common", "crobim", "pipelines", "jobs")
#: Subpackages that sit beside their package's core: the core never imports them.
SIDE_PACKAGES = {"pipelines.demo": "pipelines"}
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400


@dataclass
class Report:
    """Everything that breaks the rules in one tree."""

    upward: list[str] = field(default_factory=list)
    into_side_packages: list[str] = field(default_factory=list)
    cycles: list[list[str]] = field(default_factory=list)
    long_functions: list[str] = field(default_factory=list)
    long_modules: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.upward or self.into_side_packages or self.cycles or self.long_functions or self.long_modules
        )


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for pkg in LAYERS:
        for path in sorted((root / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _imports(name: str, path: Path, tree: ast.AST, mods: dict[str, Path]) -> set[str]:
    deps = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(name, path, node):
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
    return deps


def _cycles(edges: dict[str, set[str]], mods: dict[str, Path]) -> list[list[str]]:
    """Strongly connected components of more than one module (a package importing its own submodule is no edge)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if mods[v].name == "__init__.py" and w.startswith(v + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def _in_side_package(module: str) -> str | None:
    return next((side for side in SIDE_PACKAGES if module == side or module.startswith(side + ".")), None)


def check_tree(root: Path) -> Report:
    """Read every module of ``root``'s layer packages and report what breaks the rules."""
    mods = _modules(root)
    report = Report()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        source = path.read_text()
        tree = ast.parse(source)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            report.long_modules.append(f"{name} {len(source.splitlines())}")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    report.long_functions.append(f"{name}:{node.name} {lines}")
        edges[name] = _imports(name, path, tree, mods)
        for dep in sorted(edges[name]):
            if _layer(dep) > _layer(name):
                report.upward.append(f"{name} -> {dep}")
            side = _in_side_package(dep)
            if side and not _in_side_package(name) and name.split(".")[0] == SIDE_PACKAGES[side]:
                report.into_side_packages.append(f"{name} -> {dep}")
    report.cycles = _cycles(edges, mods)
    return report


def test_the_repository_keeps_the_layers_and_size_limits():
    report = check_tree(REPO)
    assert report.upward == [], "imports from a higher layer (common -> crobim -> pipelines -> jobs)"
    assert report.into_side_packages == [], "the core pipeline imports the demo package"
    assert report.cycles == [], "import cycles"
    assert report.long_functions == [], f"functions over {MAX_FUNCTION_LINES} lines"
    assert report.long_modules == [], f"modules over {MAX_MODULE_LINES} lines"
    assert len((REPO / "pipelines" / "region.py").read_text().splitlines()) <= 300


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_check_flags_upward_imports_cycles_side_packages_and_sizes(tmp_path):
    good = {
        "common/__init__.py": "",
        "common/storage.py": "import os\n",
        "crobim/__init__.py": "",
        "crobim/model.py": "from common import storage\n",
        "pipelines/__init__.py": "",
        "pipelines/region.py": "import crobim.model\n",
        "pipelines/demo/__init__.py": "",
        "pipelines/demo/setup.py": "from pipelines import region\n",
        "jobs/run.py": "from pipelines.demo import setup\nfrom pipelines.region import x\n",
    }
    assert check_tree(_tree(tmp_path / "good", good)).ok
    bad = {
        **good,
        # upward, hidden inside a function
        "crobim/model.py": "from common import storage\n\ndef f():\n    from pipelines.region import plan\n",
        # a cycle through a relative and a type-only import
        "pipelines/a.py": "from .b import x\n",
        "pipelines/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipelines import a\n",
        # the core importing the demo package
        "pipelines/region.py": "import crobim.model\nfrom pipelines.demo.setup import DEMO_OUT\n",
        "pipelines/long.py": "def f():\n" + "    x = 1\n" * 80 + "\n" * 330,
    }
    report = check_tree(_tree(tmp_path / "bad", bad))
    assert report.upward == ["crobim.model -> pipelines.region"]
    assert report.into_side_packages == ["pipelines.region -> pipelines.demo.setup"]
    assert ["pipelines.a", "pipelines.b"] in report.cycles
    assert report.long_functions == ["pipelines.long:f 81"] and report.long_modules == ["pipelines.long 411"]


def test_crobim_imports_without_ray_geo_or_storage_packages():
    code = (
        "import sys, crobim, crobim.modeling.build, crobim.weights, crobim.inference, crobim.transforms\n"
        "heavy = sorted(m for m in ('ray', 'rasterio', 'fsspec', 'pyproj', 'geopandas', 'pipelines') if m in sys.modules)\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
