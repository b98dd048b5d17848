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


# --- Jupyter entry points: the REST API of the JupyterLab panel and the prebuilt extension ---


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "kale_py"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    # Used by `jupyter-builder develop` to link kale_py/labextension for live rebuilds.
    return [{"src": "labextension", "dest": "kale-py"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Add kale_py's routes to a starting jupyter-server (enabled by jupyter_server_config.d)."""
    # Imported here: `import kale_py` must not pull in tornado and jupyter_server.
    from .server import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("kale_py: pipeline REST API at %s", server_app.base_url + "kale-py/")
