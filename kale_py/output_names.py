"""IPython's output names: ``_``, ``__``, ``___``, ``Out`` and ``_N`` across steps.

In a kernel, a cell whose last expression shows a value (not None, no trailing ``;``)
sets ``_`` to it, shifting the older values to ``__`` and ``___``, and records it as
``Out[N]`` and ``_N``, N being the cell's execution count. The step runtime does the
same (``record_output`` in :mod:`kale_py.runtime`); the graph treats a displaying cell as
(maybe) binding those names (:func:`displaying_counts`), so a later step reading ``_``
loads it from the step whose cell last displayed a value, like any variable.

N is the cell's position among the notebook's code cells: the count a kernel gives it
when the notebook runs top to bottom once.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterable, Mapping

from .analysis import strip_magics
from .notebook import Cell, Notebook

__all__ = [
    "HISTORY",
    "displaying_counts",
    "displays",
    "execution_counts",
    "reads_output_name",
]

# The names every display shifts or updates, and what a step that saves one of them must
# start from: its ``__`` after one display is the ``_`` it loaded.
HISTORY: dict[str, tuple[str, ...]] = {
    "_": ("_",), "__": ("__", "_"), "___": ("___", "__", "_"), "Out": ("Out",),
}


def execution_counts(notebook: Notebook) -> dict[int, int]:
    """Cell index -> the execution count a top-to-bottom run gives it (code cells)."""
    counts: dict[int, int] = {}
    for cell in notebook.cells:
        if cell.kind == "code":
            counts[cell.index] = len(counts) + 1
    return counts


def reads_output_name(name: str) -> bool:
    """Whether a name a step reads is one of IPython's output names."""
    return name in HISTORY or (name[:1] == "_" and name[1:].isdigit())


def displays(source: str) -> bool:
    """Whether a cell's last statement is an expression whose value the kernel shows."""
    text = strip_magics(source)[0] if ("%" in source or "!" in source) else source
    if text.rstrip().endswith(";"):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return bool(tree.body) and isinstance(tree.body[-1], ast.Expr)


def displaying_counts(cells: Iterable[Cell], counts: Mapping[int, int]) -> list[int]:
    """The execution counts of the cells that may display a value, in order."""
    return [counts[c.index] for c in cells if c.index in counts and displays(c.source)]
