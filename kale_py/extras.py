"""Which ``pip install`` brings a Python package that a command needs and does not find.

``check``, ``graph`` and ``run`` need only the standard library; ``compile`` and ``submit`` need
the base dependencies (kfp-pipeline-spec, protobuf, PyYAML, kubernetes); what else a feature
imports lives in an extra of ``pyproject.toml``. A missing one ends the command with one line
(NB010) that names the extra, never a traceback.

>>> missing_package(ModuleNotFoundError("No module named 'kfp'", name="kfp")).message
"this needs the Python package 'kfp', which is not installed: pip install 'kale_py[kfp]'"
"""

from __future__ import annotations

from .diagnostics import Diagnostic, error

#: top-level module -> the extra of kale_py that installs it
EXTRAS: dict[str, str] = {
    "cloudpickle": "state",
    "nbformat": "nbformat",
    "kfp": "kfp",
    "optuna": "tune",
    "jupyterlab": "lab",
    "numpy": "samples",
    "pandas": "samples",
    "sklearn": "samples",
    "matplotlib": "samples",
}

#: module (or its package) -> the base dependency that provides it
BASE: dict[str, str] = {
    "google.rpc": "googleapis-common-protos",
    "google.protobuf": "protobuf",
    "google": "protobuf",
    "yaml": "PyYAML",
    "kubernetes": "kubernetes",
    "jupyter_server": "jupyter_server",
}


def missing_package(exc: ModuleNotFoundError) -> Diagnostic:
    """The one-line NB010 diagnostic for an import that failed."""
    name = exc.name or "?"
    module = name.partition(".")[0]
    base = next((BASE[m] for m in _prefixes(name) if m in BASE), None)
    if module in EXTRAS:
        how = f"pip install 'kale_py[{EXTRAS[module]}]'"
    elif base:
        module = next(m for m in _prefixes(name) if m in BASE)
        how = f"it is a dependency of kale_py: pip install --force-reinstall kale_py {base}"
    else:
        how = f"pip install {module}"
    return error("NB010", f"this needs the Python package {module!r}, which is not installed: "
                          f"{how}")


def _prefixes(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]``: the most specific package first."""
    parts = name.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
