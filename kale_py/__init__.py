"""kale_py: turn a tagged Jupyter notebook into a multi-step pipeline.

Run it on this machine or compile it for Kubeflow Pipelines::

    >>> import kale_py
    >>> pipeline = kale_py.check_notebook("sample_notebooks/churn.ipynb")  # doctest: +SKIP
    >>> [s.name for s in pipeline.steps]  # doctest: +SKIP
    ['load', 'features', 'train', 'evaluate']

Importing the package is cheap: the submodules load when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> defining submodule
_EXPORTS = {
    "check_notebook": "api",
    "read_notebook": "notebook",
    "build_pipeline": "graph",
    "Pipeline": "graph",
    "Notebook": "notebook",
    "Diagnostic": "diagnostics",
    "KalePyError": "diagnostics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kale_py' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
