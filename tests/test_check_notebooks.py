"""Every notebook in tests/notebooks states what `check` must find; compare it.

The expectations live in each notebook's metadata (``kale_py_test``), next to the cells
they talk about, so a case is one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kale_py.api import check_notebook

NOTEBOOKS = sorted((Path(__file__).parent / "notebooks").glob("*.ipynb"))


def _expectations(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["metadata"]["kale_py_test"]  # type: ignore[no-any-return]


def _key(d: list[Any]) -> tuple[Any, ...]:
    return tuple(-1 if x is None else x for x in d)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(path: Path) -> None:
    expected = _expectations(path)
    pipeline = check_notebook(path)
    found = [
        [d.severity, d.code, d.cell, d.line] for d in pipeline.diagnostics if d.severity != "info"
    ]
    assert sorted(found, key=_key) == sorted(expected["diagnostics"], key=_key), [
        d.message for d in pipeline.diagnostics
    ]
    if "message" in expected:
        first_error = next(d for d in pipeline.diagnostics if d.is_error or d.severity == "warning")
        assert expected["message"] in first_error.message
    for name, step in expected.get("steps", {}).items():
        io = pipeline.io[name]
        actual = {
            "cells": [c.index for c in pipeline.step(name).cells],
            "loads": dict(io.loads),
            "saves": list(io.saves),
        }
        assert actual == step, name
    if "edges" in expected:
        edges = [[e.source, e.target, e.kind, list(e.variables)] for e in pipeline.edges]
        assert sorted(edges) == sorted(expected["edges"])
