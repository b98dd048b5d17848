"""IPython's output names (kale_py.output_names, kale_py.runtime.record_output).

IPython's own shell is the oracle: which cells set ``_`` and what ``_``, ``__``, ``___``,
``Out`` and ``_N`` hold afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from kale_py.output_names import displays
from kale_py.runtime import record_output

CELLS = [
    "3 + 4",
    "x = 5",
    "x * 2",
    "print('shown, not a value')",
    "x + 1;",
    "for i in range(2):\n    i",
    "None",
    "[x, x]  # a comment",
    "%time x - 1",
    "def f():\n    return 1\nf()",
]


@pytest.fixture(scope="module")
def shell() -> Any:
    instance = InteractiveShell.instance()
    yield instance
    InteractiveShell.clear_instance()


def test_displays_and_record_output_match_ipython(shell: Any) -> None:
    shell.reset()
    ours: dict[str, Any] = {"_": "", "__": "", "___": "", "Out": {}}
    for count, source in enumerate(CELLS, 1):
        before = shell.user_ns.get("_", "")
        shell.execution_count = count
        shell.run_cell(source, store_history=True)
        # what the runtime does: run the cell, show the last expression's value
        exec("\n".join(line for line in source.splitlines() if not line.startswith("%")),
             ours)
        if displays(source):
            text = source.replace("%time ", "").splitlines()[-1].split("#")[0]
            value = eval(text, ours)
            if value is not None:
                record_output(ours, value, count)
        changed = shell.user_ns.get("_", "") is not before
        assert displays(source) or not changed, source
        for name in ("_", "__", "___"):
            assert ours[name] == shell.user_ns.get(name, ""), (source, name)
    assert ours["Out"] == dict(shell.user_ns["Out"])
    assert {k: v for k, v in ours.items() if k[1:].isdigit()} == {
        k: v for k, v in shell.user_ns.items() if k.startswith("_") and k[1:].isdigit()
    }


def test_a_step_reading_its_own_cells_output_number_is_no_error(tmp_path: Any) -> None:
    import json

    from kale_py.api import check_notebook

    cells = [(["step:a"], "3 + 4"), ([], "seven = _1")]
    path = tmp_path / "own.ipynb"
    path.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {"tags": tags},
                   "source": source, "outputs": [], "execution_count": None}
                  for i, (tags, source) in enumerate(cells)],
    }))
    pipeline = check_notebook(path)
    assert pipeline.ok and [d for d in pipeline.diagnostics if d.severity != "info"] == []
