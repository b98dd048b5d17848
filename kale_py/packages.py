"""Pinned requirements of a step, for the opt-in package installation in Kubeflow pods.

By default step pods install nothing: the image must hold the notebook's libraries. With
``--install-packages`` each step installs, at start, the distributions that provide the
modules its cells import, pinned to the versions installed where the notebook runs.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import metadata

from .analysis import strip_magics
from .notebook import Cell


def imported_modules(cells: Iterable[Cell]) -> set[str]:
    """Top-level modules imported by the cells (absolute imports only)."""
    modules: set[str] = set()
    for cell in cells:
        try:
            tree = ast.parse(strip_magics(cell.source)[0])
        except (SyntaxError, ValueError, RecursionError):
            continue  # the check reports syntax errors; nothing to pin here
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


@lru_cache(maxsize=1)
def _distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


def pinned_requirements(modules: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(["pandas==3.1.1", ...], [modules not installed here])``; stdlib is left out."""
    pins: set[str] = set()
    unknown: list[str] = []
    for module in sorted(set(modules)):
        if module in sys.stdlib_module_names or module in ("kale_py", "__future__"):
            continue
        distributions = _distributions().get(module)
        if not distributions:
            unknown.append(module)
            continue
        for name in distributions:
            try:
                pins.add(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                unknown.append(module)
    return sorted(pins), unknown
