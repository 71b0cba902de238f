"""The packages' import directions hold: each sodd package imports only what its docstring allows.

Every `import` and `from ... import` in the source counts, including those inside functions: a lazy
import is still a dependency. Generated code (sodd.v1, sodd.oip) is a leaf and is not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOW = {"sodd.errors"}
# unit -> the units it may import (besides itself). A unit is a sodd sub-package, a top-level sodd
# module, or hw_plugins.
ALLOWED: dict[str, set[str]] = {
    "sodd.errors": set(),
    "sodd.model": LOW,
    "sodd.plugins": LOW | {"sodd.model"},
    "sodd.config": LOW | {"sodd.model", "sodd.plugins"},
    "sodd.observability": LOW | {"sodd.config"},
    "sodd.datasets": LOW | {"sodd.model"},
    "hw_plugins": LOW | {"sodd.model", "sodd.plugins", "sodd.observability"},
    "sodd.runtime": LOW | {"sodd.model", "sodd.plugins", "sodd.config", "sodd.observability", "sodd.datasets",
                           "hw_plugins"},
    "sodd.training": LOW | {"sodd.model", "sodd.plugins", "sodd.config", "sodd.observability", "sodd.datasets",
                            "sodd.runtime", "hw_plugins"},
    "sodd.serving": LOW | {"sodd.model", "sodd.plugins", "sodd.config", "sodd.observability", "sodd.runtime",
                           "sodd.v1", "sodd.oip"},
    "sodd.paddlex_api": LOW | {"sodd.model", "sodd.plugins", "sodd.config", "sodd.observability", "sodd.runtime",
                               "sodd.datasets"},
    "sodd.__init__": {"sodd.observability", "sodd.paddlex_api"},
}
# May import anything in sodd but the command line (tools) or anything at all (commands, cli).
ANYTHING_BUT_CLI = {"sodd.tools"}
ANYTHING = {"sodd.commands", "sodd.cli"}
GENERATED = {"sodd.v1", "sodd.oip"}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "hw_plugins":
        return "hw_plugins"
    if parts[0] != "sodd":
        return None
    return "sodd.__init__" if len(parts) == 1 else f"sodd.{parts[1]}"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sodd":  # `from sodd import engine` names a sub-module
                found += [(node.lineno, f"sodd.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def source_files() -> list[Path]:
    files = sorted((ROOT / "sodd").rglob("*.py")) + sorted((ROOT / "hw_plugins").rglob("*.py"))
    return [f for f in files if unit_of(".".join(f.relative_to(ROOT).with_suffix("").parts)) not in GENERATED]


def violations() -> list[str]:
    found = []
    for path in source_files():
        rel = path.relative_to(ROOT)
        source = unit_of(".".join(rel.with_suffix("").parts))
        if source == "sodd.__init__" and rel.parts[-1] != "__init__.py":
            source = f"sodd.{rel.stem}"
        for line, module in imported_modules(path):
            target = unit_of(module)
            if target is None or target == source or source in ANYTHING:
                continue
            ok = target not in ANYTHING if source in ANYTHING_BUT_CLI else target in ALLOWED[source]
            if not ok:
                found.append(f"{rel}:{line}: {source} imports {module}")
    return found


def test_every_unit_has_rules() -> None:
    units = set()
    for path in source_files():
        rel = path.relative_to(ROOT)
        unit = unit_of(".".join(rel.with_suffix("").parts))
        units.add(f"sodd.{rel.stem}" if unit == "sodd.__init__" and rel.name != "__init__.py" else unit)
    unknown = units - set(ALLOWED) - ANYTHING - ANYTHING_BUT_CLI
    assert not unknown, f"packages without import rules (add them here and to their docstring): {unknown}"


def test_import_directions_hold() -> None:
    assert violations() == []


@pytest.mark.parametrize("package", sorted(p.name for p in (ROOT / "sodd").iterdir()
                                           if (p / "__init__.py").is_file() and p.name not in ("v1", "oip")))
def test_each_package_says_what_it_owns(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "sodd" / package / "__init__.py").read_text()))
    assert doc and len(doc) > 40, f"sodd/{package}/__init__.py needs a docstring saying what it owns"
