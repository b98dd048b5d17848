"""Percent scripts read as jupytext reads them; jupytext is the oracle.

Every notebook in tests/notebooks/ and sample_notebooks/ is written as a percent script by
jupytext (with its kubeflow_notebook metadata in the YAML header), then read back by kale_py:
the cells must be jupytext's, and the pipeline the same as the .ipynb's: steps, their cells,
loads and saves, edges, and diagnostics, whose cell and line point at the same text in the script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pytest

from kale_py.api import check_notebook
from kale_py.diagnostics import KalePyError
from kale_py.notebook import Notebook, read_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted([*(ROOT / "tests" / "notebooks").glob("*.ipynb"),
                    *(ROOT / "sample_notebooks").glob("*.ipynb")])


def _cells(nb: Notebook) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.kind, c.source, c.tags) for c in nb.cells]


def _jupytext_cells(nb: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source, tuple(t.strip() for t in c.metadata.get("tags", [])
                                           if t.strip()))
            for c in nb.cells]


def _as_nbformat(ipynb: Path) -> Any:
    """The notebook as an nbformat node (no validation: test notebooks may lack cell ids)."""
    data = json.loads(ipynb.read_text())
    for cell in data["cells"]:
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
    return nbformat.from_dict(data)


def _same_as_jupytext(path: Path) -> Notebook:
    ours = read_notebook(path)
    theirs = jupytext.read(path)
    assert _cells(ours) == _jupytext_cells(theirs)
    expected = {k: v for k, v in theirs.metadata.items() if k != "jupytext"}
    assert {k: v for k, v in ours.metadata.items() if k != "jupytext"} == expected
    return ours


def _summary(path: Path) -> dict[str, Any]:
    try:
        pipeline = check_notebook(path)
    except KalePyError as e:
        return {"error": [(d.code, d.cell, d.line) for d in e.diagnostics]}
    return {
        "steps": {s.name: [c.index for c in s.cells] for s in pipeline.steps},
        "io": {n: (dict(io.loads), list(io.saves)) for n, io in pipeline.io.items()},
        "edges": sorted((e.source, e.target, e.kind, tuple(e.variables))
                        for e in pipeline.edges),
        "diagnostics": sorted((d.severity, d.code, d.cell or 0, d.line or 0)
                              for d in pipeline.diagnostics),
    }


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_jupytext_round_trip_gives_the_same_pipeline(ipynb: Path, tmp_path: Path) -> None:
    nb = _as_nbformat(ipynb)
    nb.metadata.setdefault("jupytext", {})["notebook_metadata_filter"] = "kubeflow_notebook"
    script = tmp_path / f"{ipynb.stem}.py"
    jupytext.write(nb, script, fmt="py:percent")
    ours = _same_as_jupytext(script)
    if "kubeflow_notebook" in nb.metadata:
        assert ours.metadata["kubeflow_notebook"] == nb.metadata["kubeflow_notebook"]

    from_script, from_ipynb = _summary(script), _summary(ipynb)
    assert from_script == from_ipynb
    # Each diagnostic's cell and line point at the same text in the script as in the notebook.
    original = read_notebook(ipynb)
    lines = script.read_text().splitlines()
    for _, _, cell, line in from_ipynb.get("diagnostics", []):
        if not cell or not line:
            continue
        source_line = original.cells[cell - 1].source.splitlines()[line - 1]
        first = ours.cells[cell - 1].first_line
        assert first is not None
        in_file = lines[first + line - 2]
        if line == 1 and source_line.startswith("%%"):  # a language="..." cell: its marker
            assert in_file.startswith("# %%") and f'language="{source_line[2:]}"' in in_file
        else:
            assert in_file in (source_line, f"# {source_line}"), (cell, line)


CORNER_CASES = {
    "header_and_kinds": """\
# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   kubeflow_notebook:
#     pipeline_name: demo
#     base_image: python:3.12
# ---

# %% [md]
# # Title

# %% [markdown] tags=["skip"]
# Some *text*

# %% [raw]
# raw text
""",
    "magics_commented": """\
# %% tags=["imports"]
# %matplotlib inline
import os

# %% tags=["step:a"]
# %pip install requests
# !ls -l
# files = !ls
# cd /tmp
# ?print
# # %time kept as a comment
# a plain comment
count = len(files)  # %% not a marker

# %% tags=["step:b"] language="bash"
# echo hello $USER
# ls
""",
    "markers_in_strings": '''\
# %% tags=["step:a"]
x = """
# %% inside a string
"""
y = 'a'  # quote ' in a comment
# %% tags=["step:b"]
z = x + """
# %%
"""


# %% My title tags=["step:c"]
w = z
''',
    "before_first_marker_and_shebang": """\
#!/usr/bin/env python
# -*- coding: utf-8 -*-
import math


# %% {"tags": ["step:a"]}
a = math.pi

# %%%% sub cell
b = 2

# %%magic_looking_comment
c = 3
""",
    "blank_lines": """\

# %%



x = 1



# %%
y = 2
""",
    "fence_in_markdown": """\
# %% [markdown]
# ```python
# # %% not a marker in a fence
# ```

# %%
x = 1
""",
    "other_header_keys": """\
# ---
# title: A report
# jupyter:
#   kubeflow_notebook:
#     pipeline_name: demo
# ---

# %%
x = 1
""",
    "continued_magic": """\
# %%
# !echo a \\
#   b
y = 1
""",
}


@pytest.mark.parametrize("name", sorted(CORNER_CASES))
def test_corner_cases_read_as_jupytext_reads_them(name: str, tmp_path: Path) -> None:
    script = tmp_path / f"{name}.py"
    script.write_text(CORNER_CASES[name])
    _same_as_jupytext(script)


def test_header_metadata_reaches_the_pipeline(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(CORNER_CASES["header_and_kinds"] + '\n# %% tags=["step:a"]\nx = 1\n')
    assert read_notebook(script).metadata["kubeflow_notebook"] == {
        "pipeline_name": "demo", "base_image": "python:3.12"}
    pipeline = check_notebook(script)
    assert [s.name for s in pipeline.steps] == ["a"]  # no step made of the header


def test_language_cell_lines_map_to_the_file(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(CORNER_CASES["magics_commented"])
    nb = read_notebook(script)
    bash = nb.cells[2]
    assert bash.source.splitlines()[0] == "%%bash" and bash.first_line == 15
    lines = script.read_text().splitlines()
    assert lines[bash.first_line + 1 - 1] == "# echo hello $USER"


def test_bad_yaml_header_is_a_diagnostic(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("# ---\n# jupyter:\n#   kubeflow_notebook: {pipeline_name: [demo}\n"
                      "# ---\n\n# %%\nx = 1\n")
    with pytest.raises(KalePyError) as caught:
        read_notebook(script)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "NB002" and diagnostic.message.startswith("line 3:") \
        and "YAML header" in diagnostic.message


def test_ipynb_and_script_agree_on_json(tmp_path: Path) -> None:
    """The same notebook through nbformat's JSON writer and jupytext: the same cells."""
    ipynb = ROOT / "sample_notebooks" / "magics.ipynb"
    nb = _as_nbformat(ipynb)
    script = tmp_path / "magics.py"
    jupytext.write(nb, script, fmt="py:percent")
    assert _cells(read_notebook(script)) == _cells(read_notebook(ipynb))
    assert json.loads(ipynb.read_text())["nbformat"] == 4


JUPYTEXT_HEADER = """\
jupyter:
  jupytext:
    text_representation:
      extension: .py
      format_name: percent
      format_version: '1.3'
      jupytext_version: 1.19.7
  kernelspec:
    display_name: Python 3
    language: python
    name: python3
  kubeflow_notebook:
    pipeline_name: demo
    base_image: python:3.12
    enable_caching: true
    retries: 3
    cpu: 0.5
    kfp_host: http://localhost:8080/pipeline"""

YAML_VALUES = ["yes", "No", "on", "2024-01-01", "[1, 2]", "{a: 1}", "010", "0x1f", "1:30", "1e3",
               ".inf", ".NaN", "~", "null", "NULL", "x # comment", "'it''s'", '"a\\tb"', "3.10",
               "1_000", "-7", "+7", "&anchor x", "*alias", "!!str 1", "| text", "> text",
               "a: b", "python:3.12", "s3://bucket/key", "Python 3", "1.19.7", "'1.3'", "True"]


@pytest.mark.parametrize("value", YAML_VALUES)
def test_header_fast_path_agrees_with_pyyaml(value: str) -> None:
    """Headers are read without PyYAML when they are plain block mappings; anything else is
    left to PyYAML, and what the fast path reads is what PyYAML reads."""
    import yaml

    from kale_py.percent import _simple_yaml

    text = f"jupyter:\n  kubeflow_notebook:\n    key: {value}\n    other: 1"
    ours = _simple_yaml(text.splitlines())
    try:
        theirs = yaml.safe_load(text)
    except yaml.YAMLError:
        assert ours is None
        return
    assert ours is None or ours == theirs


def test_jupytext_headers_take_the_fast_path() -> None:
    import yaml

    from kale_py.percent import _simple_yaml

    ours = _simple_yaml(JUPYTEXT_HEADER.splitlines())
    assert ours is not None and ours == yaml.safe_load(JUPYTEXT_HEADER)
