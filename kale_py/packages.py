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


def third_party_modules(cells: Iterable[Cell]) -> list[str]:
    """The modules the cells import that are neither the standard library nor kale_py."""
    return sorted(m for m in imported_modules(cells)
                  if m not in sys.stdlib_module_names and m not in ("kale_py", "__future__"))


def default_image_message(image: str, imports: Mapping[str, list[str]]) -> str:
    """KF008's text: which steps import what the default ``image`` lacks, and the ways out.

    ``imports`` maps each step that runs in the default image to its third-party modules.
    """
    modules = sorted({m for found in imports.values() for m in found})
    steps = ", ".join(sorted(imports))
    return (f"step{'s' if len(imports) > 1 else ''} {steps} import {', '.join(modules)}, which "
            f"the default image {image} does not have: set base_image in the notebook metadata "
            "(or --image), pass --install-packages to pip-install them when the steps start, "
            "or build a step image with --step-image")
