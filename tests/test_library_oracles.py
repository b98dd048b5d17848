"""The field's libraries as oracles for kale_py's own fast paths.

kale_py reads notebooks without nbformat and orders steps without networkx because importing them
costs more than a whole ``nb2pipe check`` of a small notebook (see README, "Dependencies"). Here
they check that the fast paths agree with them: nbformat on every test and sample notebook (and
on the nbformat 3 upgrade), networkx on every pipeline's step order and levels.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import nbformat
import networkx as nx
import pytest
from nbformat.warnings import MissingIDFieldWarning

from kale_py.api import check_notebook
from kale_py.notebook import notebook_from_dict, read_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted([*(ROOT / "tests" / "notebooks").glob("*.ipynb"),
                    *(ROOT / "sample_notebooks").glob("*.ipynb")])


def _valid(path: Path) -> Any:
    """The notebook as nbformat reads and validates it (test notebooks may lack cell ids)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingIDFieldWarning)
        nb = nbformat.reads(path.read_text(), as_version=4)
        nbformat.validate(nb)
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_reader_agrees_with_nbformat(path: Path) -> None:
    nb = _valid(path)  # every notebook kale_py ships or tests with is valid nbformat 4
    ours = read_notebook(path)
    assert [(c.kind, c.source, list(c.tags)) for c in ours.cells] == [
        (c.cell_type, c.source, [t.strip() for t in c.metadata.get("tags", []) if t.strip()])
        for c in nb.cells]
    assert dict(ours.metadata) == dict(nb.metadata)


def test_nbformat3_upgrade_agrees_with_nbformat() -> None:
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": "old"},
          "worksheets": [{"cells": [
              {"cell_type": "heading", "level": 2, "source": "Load", "metadata": {}},
              {"cell_type": "code", "input": "x = 1\ny = 2", "language": "python",
               "outputs": [], "metadata": {"tags": ["step:load"]}},
              {"cell_type": "markdown", "source": "Some *text*", "metadata": {}},
              {"cell_type": "raw", "source": "raw", "metadata": {}}]}]}
    theirs = nbformat.convert(nbformat.from_dict(copy.deepcopy(v3)), 4)
    ours = notebook_from_dict(copy.deepcopy(v3))
    assert [(c.kind, c.source, c.tags) for c in ours.cells] == [
        (c.cell_type, c.source, tuple(c.metadata.get("tags", []))) for c in theirs.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_step_order_and_levels_agree_with_networkx(path: Path) -> None:
    pipeline = check_notebook(path)
    graph = nx.DiGraph()
    order = [s.name for s in pipeline.steps]
    graph.add_nodes_from(order)
    graph.add_edges_from((e.source, e.target) for e in pipeline.edges)
    assert nx.is_directed_acyclic_graph(graph)
    position = {name: i for i, name in enumerate(order)}
    assert all(position[a] < position[b] for a, b in graph.edges)  # order is topological
    generations = [sorted(g, key=position.__getitem__)
                   for g in nx.topological_generations(graph)]
    assert [list(level) for level in pipeline.levels] == generations
