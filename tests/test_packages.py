"""Opt-in package installation in Kubeflow steps: pinned imports, installed at step start."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from kale_py.api import check_notebook, compile_notebook
from kale_py.notebook import Cell
from kale_py.packages import imported_modules, pinned_requirements


def test_imported_modules_top_level_and_absolute_only() -> None:
    cells = [
        Cell(
            1,
            "code",
            "import os.path\nimport numpy as np\nfrom pandas import DataFrame\n"
            "from . import local\n%pip install x\nimport sklearn.metrics",
        ),
        Cell(2, "code", "def f():\n    import yaml\n    return yaml"),
    ]
    assert imported_modules(cells) == {"os", "numpy", "pandas", "sklearn", "yaml"}


def test_pins_come_from_this_environment() -> None:
    from importlib import metadata

    pins, unknown = pinned_requirements(["os", "json", "yaml", "sklearn", "surely_not_a_module"])
    assert pins == sorted(
        [
            f"PyYAML=={metadata.version('PyYAML')}",
            f"scikit-learn=={metadata.version('scikit-learn')}",
        ]
    )
    assert unknown == ["surely_not_a_module"]


def _notebook(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "nb.ipynb"
    path.write_text(
        json.dumps(
            {
                "nbformat": 4,
                "nbformat_minor": 5,
                "metadata": {},
                "cells": [
                    {
                        "cell_type": "code",
                        "metadata": {"tags": ["step:a"]},
                        "source": source,
                        "outputs": [],
                        "execution_count": None,
                    }
                ],
            }
        )
    )
    return path


def test_off_by_default(tmp_path: Path) -> None:
    path = _notebook(tmp_path, "import yaml\nx = 1")
    spec = next(yaml.safe_load_all(Path(compile_notebook(path)["path"]).read_text()))
    container = spec["deploymentSpec"]["executors"]["exec-a"]["container"]
    assert container["command"][0] == "python3"
    assert "KALE_PY_PACKAGES" not in json.dumps(container)


def test_unknown_import_is_a_warning(tmp_path: Path) -> None:
    path = _notebook(tmp_path, "import surely_not_a_module_here\nx = 1")
    result = compile_notebook(path, install_packages=True)
    assert [(d["code"], d["severity"]) for d in result["diagnostics"]] == [("KF003", "warning")]


def test_compiled_step_installs_then_runs_on_kfp_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's `sh -c` command pip-installs its pins (already satisfied here: no network)
    and then runs the step; executed by kfp.local through tests/kfp_local_shim.py."""
    from importlib import metadata

    from kfp import components
    from kfp_local_shim import container_components_as_subprocesses

    path = _notebook(
        tmp_path,
        "import yaml\nwith open('out.txt', 'w') as f:\n    f.write(yaml.safe_dump({'ok': 1}))",
    )
    assert check_notebook(path).ok
    result = compile_notebook(path, install_packages=True)
    spec = next(yaml.safe_load_all(Path(result["path"]).read_text()))
    container = spec["deploymentSpec"]["executors"]["exec-a"]["container"]
    assert container["command"][:2] == ["sh", "-c"]
    assert {
        "name": "KALE_PY_PACKAGES",
        "value": f"PyYAML=={metadata.version('PyYAML')}",
    } in container["env"]
    bin_dir = tmp_path / "bin"  # `python3` inside the shell command is this interpreter
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    with container_components_as_subprocesses(pipeline_root=tmp_path / "kfp"):
        components.load_component_from_file(result["path"])()
    assert (tmp_path / "out.txt").read_text() == "ok: 1\n"
