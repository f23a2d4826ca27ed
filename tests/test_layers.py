"""The package's layers import one way only: a lower layer never imports a higher one.

The order, lowest first, is the one ``docs/architecture.md`` names. A module may import its own
layer and any layer below it; ``dsq_chain/__init__.py`` (the public face) may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dsq_chain"

#: Lowest first. A module's layer is its first path component below ``dsq_chain``.
LAYERS: list[set[str]] = [
    {"types", "errors", "artifacts", "lifecycle", "constants", "money", "billing"},
    {"workloads"},
    {"matching"},
    {"executors"},
    {"sdk"},
    {"services"},
    {"web", "simulation", "akash"},
    {"cli", "demo", "__main__"},
]


def _layer(component: str) -> int:
    for i, names in enumerate(LAYERS):
        if component in names:
            return i
    raise AssertionError(f"dsq_chain/{component} belongs to no layer: add it to LAYERS and docs/architecture.md")


def _component(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; the package uses absolute imports")
            mod = node.module or ""
            if mod == "dsq_chain":
                found += [(node.lineno, f"dsq_chain.{a.name}") for a in node.names]
            elif mod.startswith("dsq_chain."):
                found.append((node.lineno, mod))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("dsq_chain.")]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    mine = _layer(_component(path))
    for lineno, target in _imports(path):
        theirs = _layer(target.split(".")[1])
        assert theirs <= mine, (
            f"{path.relative_to(PACKAGE.parent)}:{lineno} imports {target}: layer "
            f"{sorted(LAYERS[theirs])} is above {sorted(LAYERS[mine])}"
        )


def test_every_component_has_a_layer() -> None:
    for path in MODULES:
        _layer(_component(path))
