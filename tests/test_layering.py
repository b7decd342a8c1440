"""The packages' layering: ``contract`` is below ``hub`` and ``workers``, which never import each
other, and ``cli`` is above them all (it starts hubs and workers as processes). Read from the
source (every import, lazy ones inside functions too), and checked again at run time in a fresh
interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from helpers import ROOT

# package -> the top-level packages it must never import
FORBIDDEN = {
    "contract": {"hub", "workers", "cli"},
    "hub": {"workers", "cli"},
    "workers": {"hub", "cli"},
}


def imported_packages(path: str) -> set[str]:
    """The top-level packages that the module at ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text(), path)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_package_above_or_beside_it(package: str) -> None:
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py"))
    assert modules
    offending = {
        module: sorted(imported_packages(module) & FORBIDDEN[package]) for module in modules
    }
    assert {m: found for m, found in offending.items() if found} == {}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_every_module_of_a_package_loads_none_it_must_not(package: str) -> None:
    probe = (
        "import importlib, pkgutil, sys\n"
        f"import {package}\n"
        f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert set(run.stdout.split()) & FORBIDDEN[package] == set()
