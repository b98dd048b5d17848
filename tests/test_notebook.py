"""Reading .ipynb files and percent scripts; every broken input is a diagnostic."""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import nbformat
import pytest

from kale_py.diagnostics import NotebookError
from kale_py.notebook import read_notebook


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path) -> tuple[str, int | None, str]:
    with pytest.raises(NotebookError) as info:
        read_notebook(path)
    d = info.value.diagnostics[0]
    return d.code, d.cell, d.message


def test_reads_cells_sources_and_tags(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell("x = 1\ny = 2", metadata={"tags": ["step:a", " prev:b "]}),
    ]
    path = _write(tmp_path, "a.ipynb", nbformat.writes(nb))
    notebook = read_notebook(path)
    assert [(c.index, c.kind) for c in notebook.cells] == [(1, "markdown"), (2, "code")]
    assert notebook.cells[1].source == "x = 1\ny = 2"
    assert notebook.cells[1].tags == ("step:a", "prev:b")


def test_source_as_list_of_lines(tmp_path: Path) -> None:
    data = {
        "nbformat": 4,
        "nbformat_minor": 2,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "source": ["a = 1\n", "b = 2"],
                "metadata": {},
                "outputs": [],
                "execution_count": None,
            }
        ],
    }
    notebook = read_notebook(_write(tmp_path, "a.ipynb", json.dumps(data)))
    assert notebook.cells[0].source == "a = 1\nb = 2"


@pytest.mark.parametrize(
    ("text", "code", "cell", "fragment"),
    [
        ("{not json", "NB001", None, "not valid JSON at line 1"),
        ("[1, 2]", "NB001", None, "not a notebook"),
        ('{"hello": 1}', "NB001", None, "not a notebook"),
        ('{"nbformat": 4, "cells": 3}', "NB002", None, "no 'cells' list"),
        ('{"nbformat": 4, "cells": [{"source": "x"}]}', "NB002", 1, "cell_type"),
        ('{"nbformat": 4, "cells": [{"cell_type": "code", "source": 5}]}', "NB002", 1, "source"),
        (
            '{"nbformat": 4, "cells": [{"cell_type": "code", "source": "", '
            '"metadata": {"tags": "a"}}]}',
            "NB002",
            1,
            "tags",
        ),
        ('{"nbformat": 5, "cells": []}', "NB001", None, "newer"),
    ],
    ids=[
        "bad-json",
        "json-list",
        "json-object",
        "cells-not-list",
        "no-cell-type",
        "bad-source",
        "bad-tags",
        "future-version",
    ],
)
def test_broken_notebooks(
    tmp_path: Path, text: str, code: str, cell: int | None, fragment: str
) -> None:
    found_code, found_cell, message = _error(_write(tmp_path, "bad.ipynb", text))
    assert (found_code, found_cell) == (code, cell)
    assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    code, _, message = _error(tmp_path / "nope.ipynb")
    assert code == "NB001" and "no such file" in message


def test_directory_and_binary(tmp_path: Path) -> None:
    assert _error(tmp_path)[0] == "NB001"
    path = tmp_path / "bin.ipynb"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert "UTF-8" in _error(path)[2]


def test_nbformat3_is_upgraded(tmp_path: Path) -> None:
    v3 = {
        "nbformat": 3,
        "nbformat_minor": 0,
        "metadata": {"name": ""},
        "worksheets": [
            {
                "cells": [
                    {"cell_type": "heading", "level": 2, "source": "Load", "metadata": {}},
                    {
                        "cell_type": "code",
                        "input": "x = 1",
                        "language": "python",
                        "outputs": [],
                        "metadata": {"tags": ["step:load"]},
                    },
                ]
            }
        ],
    }
    notebook = read_notebook(_write(tmp_path, "old.ipynb", json.dumps(v3)))
    assert [(c.kind, c.source, c.tags) for c in notebook.cells] == [
        ("markdown", "## Load", ()),
        ("code", "x = 1", ("step:load",)),
    ]


PERCENT = """\
# %% [markdown]
# # Title
# Some text

# %% tags=["imports"]
import math

# %% tags=["step:load", "limit:cpu:1"]
x = 2

# %%
y = math.sqrt(x)

# %% Plot title [markdown] tags=["skip"]
# not code
"""


def test_percent_script(tmp_path: Path) -> None:
    notebook = read_notebook(_write(tmp_path, "script.py", PERCENT))
    cells = [(c.index, c.kind, c.tags, c.first_line) for c in notebook.cells]
    assert cells == [
        (1, "markdown", (), 2),
        (2, "code", ("imports",), 6),
        (3, "code", ("step:load", "limit:cpu:1"), 9),
        (4, "code", (), 12),
        (5, "markdown", ("skip",), 15),
    ]
    assert notebook.cells[2].source == "x = 2"
    assert notebook.cells[0].source == "# Title\nSome text"


def test_percent_script_agrees_with_jupytext(tmp_path: Path) -> None:
    path = _write(tmp_path, "script.py", PERCENT)
    ours = read_notebook(path)
    theirs = jupytext.read(path)
    assert [(c.kind, c.source, c.tags) for c in ours.cells] == [
        (c.cell_type, c.source, tuple(c.metadata.get("tags", []))) for c in theirs.cells
    ]


def test_percent_script_bad_tags(tmp_path: Path) -> None:
    code, cell, message = _error(_write(tmp_path, "s.py", "# %% tags=[step:a]\nx = 1\n"))
    assert (code, cell) == ("NB002", 1) and "JSON list" in message
