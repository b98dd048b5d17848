"""Reading notebooks: ``.ipynb`` (nbformat 4, older versions upgraded) and percent scripts.

The reader is deliberately small and stdlib-only: validating with ``nbformat`` costs
seconds of import time (jsonschema), and a broken notebook must become a diagnostic,
never a traceback.

>>> nb = read_notebook("sample_notebooks/churn.ipynb")   # doctest: +SKIP
>>> [c.index for c in nb.cells if c.kind == "code"][:3]   # doctest: +SKIP
[2, 3, 5]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .diagnostics import NotebookError, error


@dataclass(frozen=True)
class Cell:
    """One notebook cell. ``index`` counts from 1 in notebook order, markdown included.

    For percent scripts ``first_line`` is the file line of the cell's first source line,
    so diagnostics can be given in the ``file:line`` form editors link.
    """

    index: int
    kind: str  # "code" | "markdown" | "raw"
    source: str
    tags: tuple[str, ...] = ()
    first_line: int | None = None


@dataclass(frozen=True)
class Notebook:
    path: Path | None
    cells: tuple[Cell, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    format: str = "ipynb"  # "ipynb" | "percent"

    @property
    def code_cells(self) -> tuple[Cell, ...]:
        return tuple(c for c in self.cells if c.kind == "code")

    @property
    def name(self) -> str:
        return self.path.name if self.path else "notebook.ipynb"


def read_notebook(path: str | Path) -> Notebook:
    """Read an ``.ipynb`` or a percent-format ``.py`` file.

    Raises :class:`NotebookError` (code NB001/NB002) for anything unreadable.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotebookError(error("NB001", f"{path}: no such file")) from None
    except IsADirectoryError:
        raise NotebookError(error("NB001", f"{path}: is a directory, not a notebook")) from None
    except UnicodeDecodeError as exc:
        raise NotebookError(error("NB001", f"{path}: not UTF-8 text ({exc.reason})")) from None
    except OSError as exc:
        raise NotebookError(error("NB001", f"{path}: cannot be read ({exc.strerror})")) from None
    if path.suffix == ".py":
        return percent_script_to_notebook(text, path)
    return ipynb_text_to_notebook(text, path)


def ipynb_text_to_notebook(text: str, path: Path | None = None) -> Notebook:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookError(
            error(
                "NB001",
                f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; "
                "is this an .ipynb notebook?",
            )
        ) from None
    return notebook_from_dict(data, path)


def notebook_from_dict(data: Any, path: Path | None = None) -> Notebook:
    """Build a :class:`Notebook` from parsed ``.ipynb`` JSON (nbformat 3 or 4)."""
    if not isinstance(data, dict):
        raise NotebookError(
            error("NB001", "the file is JSON but not a notebook (no top-level object)")
        )
    major = data.get("nbformat")
    if major is None and "cells" not in data and "worksheets" not in data:
        raise NotebookError(
            error("NB001", "the file is JSON but not a notebook (no 'nbformat' or 'cells')")
        )
    if isinstance(major, int) and major < 4:
        data = _upgrade_v3(data)
    elif isinstance(major, int) and major > 4:
        raise NotebookError(
            error(
                "NB001", f"nbformat {major} is newer than this version of kale_py understands (4)"
            )
        )
    cells_data = data.get("cells")
    if not isinstance(cells_data, list):
        raise NotebookError(error("NB002", "the notebook has no 'cells' list"))
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise NotebookError(error("NB002", "the notebook's 'metadata' is not an object"))
    cells = tuple(_cell_from_dict(raw, i) for i, raw in enumerate(cells_data, start=1))
    return Notebook(path=path, cells=cells, metadata=metadata, format="ipynb")


def _cell_from_dict(raw: Any, index: int) -> Cell:
    if not isinstance(raw, dict):
        raise NotebookError(error("NB002", "the cell is not a JSON object", cell=index))
    kind = raw.get("cell_type")
    if kind not in ("code", "markdown", "raw"):
        raise NotebookError(
            error(
                "NB002",
                f"the cell has no valid 'cell_type' (found {kind!r}; expected code, "
                "markdown or raw)",
                cell=index,
            )
        )
    source = _join_source(raw.get("source", ""), index)
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise NotebookError(error("NB002", "the cell's 'metadata' is not an object", cell=index))
    tags = meta.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise NotebookError(
            error("NB002", "the cell's 'metadata.tags' is not a list of strings", cell=index)
        )
    return Cell(
        index=index, kind=kind, source=source, tags=tuple(t.strip() for t in tags if t.strip())
    )


def _join_source(source: Any, index: int) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        return "".join(source)
    raise NotebookError(
        error("NB002", "the cell's 'source' is neither text nor a list of lines", cell=index)
    )


def _upgrade_v3(data: dict[str, Any]) -> dict[str, Any]:
    """nbformat 3 → 4 for what kale_py reads: cells, their source and tags, metadata."""
    worksheets = data.get("worksheets")
    if not isinstance(worksheets, list):
        raise NotebookError(error("NB002", "nbformat 3 notebook without 'worksheets'"))
    cells: list[dict[str, Any]] = []
    for sheet in worksheets:
        for raw in (sheet or {}).get("cells", []) if isinstance(sheet, dict) else []:
            if not isinstance(raw, dict):
                raise NotebookError(
                    error("NB002", "a cell is not a JSON object", cell=len(cells) + 1)
                )
            kind = raw.get("cell_type")
            if kind == "code":
                cells.append(
                    {
                        "cell_type": "code",
                        "source": raw.get("input", ""),
                        "metadata": raw.get("metadata") or {},
                    }
                )
            elif kind == "heading":
                level = raw.get("level", 1)
                text = _join_source(raw.get("source", ""), len(cells) + 1)
                cells.append(
                    {
                        "cell_type": "markdown",
                        "source": "#" * int(level) + " " + text,
                        "metadata": raw.get("metadata") or {},
                    }
                )
            else:
                cells.append(
                    {
                        "cell_type": kind if kind in ("markdown", "raw") else "raw",
                        "source": raw.get("source", ""),
                        "metadata": raw.get("metadata") or {},
                    }
                )
    return {
        "nbformat": 4,
        "nbformat_minor": 0,
        "metadata": data.get("metadata") or {},
        "cells": cells,
    }


# --- percent scripts (jupytext "percent" format, as VS Code, Spyder and jupytext write them) ----


def percent_script_to_notebook(text: str, path: Path | None = None) -> Notebook:
    """Split a ``# %%`` script into cells as jupytext does (see :mod:`kale_py.percent`)."""
    from .percent import read_percent

    return read_percent(text, path)
