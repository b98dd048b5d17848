"""What ``pip install kale_py`` alone gives: the wheel, installed with no extras into a fresh
virtual environment, checks, draws, runs and compiles a notebook from outside the source tree.

The environment is prepared at install time by ``.ci/plain_install.sh`` (part of the README's
test command): the wheel built from this checkout (``SKIP_JUPYTER_BUILDER=1``: the JupyterLab
bundle plays no part in the command line), installed with pip resolving the base dependencies
from the package registry as a user's ``pip install`` does, so that these tests download
nothing. Nothing in the fresh environment can import the checkout: the commands run in a
temporary directory with a clean ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kale_py.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _cell(source: str, tags: list[str]) -> dict[str, object]:
    return {"cell_type": "code", "metadata": {"tags": tags}, "source": source,
            "outputs": [], "execution_count": None}


NOTEBOOK = {
    "nbformat": 4, "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"},
                 "kubeflow_notebook": {"pipeline_name": "plain-install"}},
    "cells": [
        _cell("import json\nimport statistics", ["imports"]),
        _cell("numbers = [3, 1, 4, 1, 5]", ["step:load"]),
        _cell("mean = statistics.mean(numbers)\nsummary = json.dumps({'mean': mean})",
              ["step:summarize"]),
        _cell("print(summary)", ["step:report"]),
    ],
}


@pytest.fixture(scope="module")
def plain_install() -> Path:
    """The fresh virtual environment with the kale_py wheel and its base dependencies only."""
    venv_dir = ROOT / ".venv-plain"
    if not (venv_dir / "bin" / "nb2pipe").exists():
        pytest.fail("no plain install to test: run `bash .ci/plain_install.sh` first (the "
                    "README's test command does)")
    return venv_dir


def _clean_env(venv_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _nb2pipe(venv_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv_dir / "bin" / "nb2pipe"), *args], cwd=cwd,
                          env=_clean_env(venv_dir), capture_output=True, text=True, timeout=300)


def test_plain_install_checks_graphs_runs_and_compiles(plain_install: Path,
                                                       tmp_path: Path) -> None:
    (tmp_path / "plain.ipynb").write_text(json.dumps(NOTEBOOK))
    installed = subprocess.run(
        [str(plain_install / "bin" / "python"), "-c",
         "import kale_py, importlib.util as u; print(kale_py.__file__, u.find_spec('kfp.dsl'))"],
        cwd=tmp_path, env=_clean_env(plain_install), capture_output=True, text=True,
        check=True).stdout
    assert str(plain_install) in installed and installed.split()[1] == "None"  # no kfp SDK

    checked = _nb2pipe(plain_install, tmp_path, "check", "plain.ipynb")
    assert checked.returncode == 0, checked.stderr
    assert "3 steps, 0 errors" in checked.stdout + checked.stderr

    graph = _nb2pipe(plain_install, tmp_path, "graph", "plain.ipynb", "--format", "json")
    assert graph.returncode == 0, graph.stderr
    steps = [s["name"] for s in json.loads(graph.stdout)["steps"]]
    assert steps == ["load", "summarize", "report"]

    ran = _nb2pipe(plain_install, tmp_path, "run", "plain.ipynb")
    assert ran.returncode == 0, ran.stderr
    assert '{"mean": 2.8}' in ran.stdout + ran.stderr

    compiled = _nb2pipe(plain_install, tmp_path, "compile", "plain.ipynb", "-o", "plain.yaml")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    assert "Traceback" not in compiled.stderr
    spec = next(yaml.safe_load_all((tmp_path / "plain.yaml").read_text()))
    assert {"load", "summarize", "report"} <= set(spec["root"]["dag"]["tasks"])


def test_missing_package_is_one_line_naming_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A package the command imports and does not find: NB010, the extra or the package."""
    (tmp_path / "plain.ipynb").write_text(json.dumps(NOTEBOOK))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now fails as if absent
    assert main(["compile", "plain.ipynb", "-o", "plain.yaml"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "NB010" in err and "'yaml'" in err and "PyYAML" in err
    assert not (tmp_path / "plain.yaml").exists()


def test_missing_extra_names_it() -> None:
    from kale_py.extras import missing_package

    found = missing_package(ModuleNotFoundError("No module named 'cloudpickle'",
                                                name="cloudpickle"))
    assert found.code == "NB010" and "pip install 'kale_py[state]'" in found.message
    rpc = missing_package(ModuleNotFoundError("No module named 'google.rpc'", name="google.rpc"))
    assert "googleapis-common-protos" in rpc.message and "'google.rpc'" in rpc.message
