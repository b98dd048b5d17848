"""The Python API: what the command line, the Jupyter server and users' scripts call.

>>> from kale_py.api import check_notebook
>>> pipeline = check_notebook("sample_notebooks/churn.ipynb")  # doctest: +SKIP
>>> pipeline.ok, [s.name for s in pipeline.steps]  # doctest: +SKIP
(True, ['load', 'features', 'train', 'evaluate'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .graph import Pipeline, build_pipeline
from .notebook import notebook_from_dict, read_notebook


def check_notebook(path: str | Path) -> Pipeline:
    """Read, split, analyse and connect a notebook; problems are in ``.diagnostics``.

    Raises :class:`~kale_py.diagnostics.NotebookError` only when the file cannot be read
    as a notebook at all.
    """
    return build_pipeline(read_notebook(path))


def analyse(path: str | Path, notebook: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pipeline as JSON-ready data (steps, edges, levels, parameters, diagnostics).

    ``notebook`` is the live notebook content (nbformat 4 JSON) when it differs from the
    file on disk, as in an editor with unsaved changes.
    """
    from .render import pipeline_to_dict

    path = Path(path)
    nb = notebook_from_dict(notebook, path) if notebook is not None else read_notebook(path)
    return pipeline_to_dict(build_pipeline(nb))
