"""A step's derivation: what its outputs are a function of, as the local cache's key.

The key covers the step's program and spec, the parameter values it receives, the keys of
the steps whose variables it loads (so a key is known before anything is read, and no saved
byte has to be hashed to find it), the Python and kale_py versions, and the versions of the
packages the step imports. A producer whose key is unknown (its outputs came from an older
run) is stood for by the content digests of the variables it provides.

    >>> step_key("x = 1", {}, {"p": 1}, {"df": "key:ab12"}, {"numpy": "2.1.0"})[:8]
    ... # doctest: +SKIP
    'c0ffee12'

Standard library only.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from collections.abc import Mapping
from functools import cache
from typing import Any

from . import __version__


def step_key(
    source: str,
    spec: Mapping[str, Any],
    params: Mapping[str, Any],
    inputs: Mapping[str, str | None],
    versions: Mapping[str, str],
) -> str:
    """The cache key (hex SHA-256) of one step's derivation."""
    payload = json.dumps(
        {
            "program": source,
            "spec": spec,
            "parameters": dict(params),
            "inputs": dict(inputs),
            "imports": dict(versions),
            "python": ".".join(map(str, sys.version_info[:3])),
            "kale_py": __version__,
        },
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def import_versions(source: str) -> dict[str, str]:
    """The version of every top-level package the program imports (standard library and
    modules that are not installed left out): a library upgrade invalidates the cache."""
    found: dict[str, str] = {}
    for name in sorted(_imported(source)):
        version = package_version(name)
        if version:
            found[name] = version
    return found


def _imported(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "kale_py"}


@cache
def package_version(name: str) -> str:
    """The installed distribution version of a top-level module, or a fingerprint of its
    file when no distribution carries its name; "" when it is not installed."""
    import importlib.metadata
    import importlib.util
    import os

    try:
        return importlib.metadata.version(name)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        pass
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return ""
    origin = spec.origin if spec is not None else None
    if not origin or not os.path.exists(origin):
        return ""
    info = os.stat(origin)
    return f"file:{info.st_size}:{info.st_mtime_ns}"
