"""KF008: steps that import third-party packages and run in the built-in default image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kale_py.api import check_notebook
from kale_py.cli import main
from kale_py.kubeflow.compile import DEFAULT_IMAGE, compile_pipeline


def _notebook(tmp_path: Path, metadata: dict[str, object] | None = None) -> Path:
    def cell(source: str, tags: list[str]) -> dict[str, object]:
        return {"cell_type": "code", "metadata": {"tags": tags}, "source": source,
                "outputs": [], "execution_count": None}

    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kubeflow_notebook": metadata or {}},
          "cells": [cell("import json\nimport numpy as np", ["imports"]),
                    cell("data = [1, 2]", ["step:load"]),
                    cell("import pandas as pd\nframe = pd.DataFrame({'a': data})",
                         ["step:frame"]),
                    cell("from sklearn import tree\nmodel = tree", ["step:fit", "prev:load"]),
                    cell("text = json.dumps(data)", ["step:dump", "prev:load"])]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture(autouse=True)
def _no_image_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KALE_PY_IMAGE", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_default_image_with_imports_warns_naming_packages_and_ways_out(tmp_path: Path) -> None:
    compiled = compile_pipeline(check_notebook(_notebook(tmp_path)))
    (warning,) = [d for d in compiled.diagnostics if d.code == "KF008"]
    assert warning.severity == "warning"
    # the prelude's numpy reaches every step; pandas and sklearn only theirs
    assert warning.message.startswith("steps dump, fit, frame, load import numpy, pandas, "
                                      f"sklearn, which the default image {DEFAULT_IMAGE}")
    for way_out in ("base_image", "--install-packages", "--step-image"):
        assert way_out in warning.message


@pytest.mark.parametrize("how", ["base_image", "--image", "--install-packages", "step image"])
def test_no_warning_once_an_image_or_installation_is_chosen(tmp_path: Path, how: str) -> None:
    metadata: dict[str, object] = {"base_image": "me/ml:1"} if how == "base_image" else {}
    path = _notebook(tmp_path, metadata)
    pipeline = check_notebook(path)
    if how == "step image":
        source = path.read_text().replace('"step:load"', '"step:load", "image:me/ml:1"')
        path.write_text(source.replace('"step:frame"', '"step:frame", "image:me/ml:1"')
                        .replace('"step:fit"', '"step:fit", "image:me/ml:1"')
                        .replace('"step:dump"', '"step:dump", "image:me/ml:1"'))
        pipeline = check_notebook(path)
    compiled = compile_pipeline(pipeline, image="me/ml:1" if how == "--image" else None,
                                install_packages=how == "--install-packages")
    assert [d for d in compiled.diagnostics if d.code == "KF008"] == []


def test_stdlib_only_steps_need_no_image(tmp_path: Path) -> None:
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "code", "metadata": {"tags": ["step:a"]},
                     "source": "import os, json\nx = os.sep", "outputs": [],
                     "execution_count": None}]}
    path = tmp_path / "std.ipynb"
    path.write_text(json.dumps(nb))
    assert compile_pipeline(check_notebook(path)).diagnostics == ()


def test_cli_prints_the_warning_and_still_writes(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = _notebook(tmp_path)
    assert main(["compile", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning KF008: steps dump, fit, frame, load import numpy" in err
    assert path.with_suffix(".yaml").is_file()
