"""Imports flow one way: models -> inputs -> ipi_driver -> (i-PI) -> analysis, benchmarks on top.

Every module of the installed packages is parsed (ast, nothing is imported) and each import
of another ``ipi_ncforces`` subpackage must be an allowed edge below. The dispatcher
``ipi_ncforces/cli.py`` (and the package ``__init__``) may import any subpackage, but only
lazily, inside a function, so ``import ipi_ncforces`` stays cheap. Test modules share
code through conftest.py fixtures, never by importing each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("models", "inputs", "ipi_driver", "analysis", "benchmarks")

# importer -> subpackages it may import (its own included). analysis reads what i-PI
# wrote and must not depend on how it was driven, hence no ipi_driver (nor inputs).
ALLOWED = {
    "models": {"models"},
    "inputs": {"inputs", "models"},
    "ipi_driver": {"ipi_driver", "inputs", "models"},
    "analysis": {"analysis", "models"},
    "benchmarks": {"benchmarks", "ipi_driver", "inputs", "models", "analysis"},
}


def imported_modules(source: str, package: str) -> list[tuple[str, int, bool]]:
    """(absolute module name, line, at module level) of every import in ``source``, a
    module of ``ipi_ncforces.<package>``; relative imports are resolved; ``from X import
    name`` also yields ``X.name`` (it may be a submodule)."""
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ["ipi_ncforces", package] if package in SUBPACKAGES else [package]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out.append((base, node.lineno, id(node) in top_level))
            out += [(f"{base}.{alias.name}", node.lineno, id(node) in top_level) for alias in node.names]
    return out


def subpackage_of(module: str) -> str | None:
    """'models' for 'ipi_ncforces.models.base'; None outside the five subpackages."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ipi_ncforces" and parts[1] in SUBPACKAGES else None


def violations(source: str, package: str, where: str) -> list[str]:
    """Imports in ``source`` (a module of ``package``) that run against the allowed edges."""
    bad = []
    for module, line, top in imported_modules(source, package):
        target = subpackage_of(module)
        if target is None:
            continue
        if package == "ipi_ncforces":
            if top:
                bad.append(f"{where}:{line}: imports {module} at module level (import lazily, inside the function)")
        elif target not in ALLOWED[package]:
            bad.append(f"{where}:{line}: {package} must not import {target} ({module})")
    return sorted(set(bad))


def product_modules():
    for package in SUBPACKAGES + ("ipi_ncforces",):
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def test_every_import_follows_the_allowed_edges():
    modules = list(product_modules())
    assert len(modules) > 40  # the tree was found
    bad = [v for package, path in modules for v in violations(path.read_text(), package, str(path.relative_to(ROOT)))]
    assert not bad, "imports against the intended direction:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "package, source, flagged",
    [
        ("models", "from ipi_ncforces.ipi_driver.pes import X\n", True),
        ("models", "def f():\n    import ipi_ncforces.analysis.drift\n", True),  # lazy is no excuse
        ("inputs", "from ..ipi_driver import launch\n", True),  # relative, resolved
        ("analysis", "from ipi_ncforces import ipi_driver\n", True),
        ("analysis", "from ipi_ncforces.models.structure_io import read_structure\n", False),
        ("ipi_driver", "from ipi_ncforces.inputs import make\nfrom . import launch\n", False),
        ("ipi_ncforces", "from ipi_ncforces.models import base\n", True),
        ("ipi_ncforces", "def main():\n    from ipi_ncforces.benchmarks import cli\n", False),
        ("ipi_ncforces", "from . import analysis\n", True),
    ],
)
def test_the_checker_flags_upward_imports(package, source, flagged):
    assert bool(violations(source, package, "x.py")) == flagged


def test_test_modules_do_not_import_each_other():
    tests = ROOT / "tests"
    local = {p.stem for p in tests.glob("*.py")}
    bad = []
    for path in sorted(tests.glob("*.py")):
        for module, line, _ in imported_modules(path.read_text(), "tests"):
            head = module.split(".")[0]
            if head == "tests" or head in local:
                bad.append(f"{path.name}:{line}: imports {module} (share it as a conftest.py fixture)")
    assert not bad, "\n".join(bad)
