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
import re
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


# --- percent scripts (jupytext "percent" format, as VS Code and Spyder write them) -------------

_CELL_MARKER = re.compile(r"^# ?%%(?!%)(?P<rest>.*)$")
_KIND = re.compile(r"\[(markdown|md|raw)\]")


def percent_script_to_notebook(text: str, path: Path | None = None) -> Notebook:
    """Split a ``# %%`` script into cells; ``# %% tags=["step:a"]`` carries the tags.

    Lines before the first marker form a code cell when they hold code (jupytext does the
    same, minus a leading header of comments, which we keep as code: it is harmless).
    """
    lines = text.splitlines()
    cells: list[Cell] = []
    start, header = 0, None
    for lineno, line in enumerate(lines):
        match = _CELL_MARKER.match(line)
        if not match:
            continue
        _add_percent_cell(cells, lines[start:lineno], header, start + 1)
        start, header = lineno + 1, match.group("rest")
    _add_percent_cell(cells, lines[start:], header, start + 1)
    metadata: dict[str, Any] = {}
    return Notebook(path=path, cells=tuple(cells), metadata=metadata, format="percent")


def _add_percent_cell(
    cells: list[Cell], body: list[str], header: str | None, first_line: int
) -> None:
    if header is None and not any(line.strip() for line in body):
        return  # nothing before the first marker
    kind, tags = "code", tuple[str, ...]()
    if header is not None:
        kind_match = _KIND.search(header)
        if kind_match:
            kind = "raw" if kind_match.group(1) == "raw" else "markdown"
        tags = _percent_tags(header, len(cells) + 1, first_line - 1)
    while body and not body[-1].strip():
        body = body[:-1]
    if kind == "markdown":
        body = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body]
    cells.append(
        Cell(
            index=len(cells) + 1,
            kind=kind,
            source="\n".join(body),
            tags=tags,
            first_line=first_line,
        )
    )


_TAGS = re.compile(r"\btags\s*=\s*(\[[^\]]*\])")


def _percent_tags(header: str, cell: int, file_line: int) -> tuple[str, ...]:
    match = _TAGS.search(header)
    if not match:
        return ()
    try:
        tags = json.loads(match.group(1))
    except json.JSONDecodeError:
        raise NotebookError(
            error(
                "NB002",
                f'line {file_line}: tags must be a JSON list of strings, like tags=["step:load"]',
                cell=cell,
                line=0,
            )
        ) from None
    if not all(isinstance(t, str) for t in tags):
        raise NotebookError(error("NB002", f"line {file_line}: tags must be strings", cell=cell))
    return tuple(t.strip() for t in tags if t.strip())
