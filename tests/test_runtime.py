"""The step runtime, run for real: one step program in a fresh process per test.

Each test writes a small notebook, generates its step programs and runs one or two steps
with `python -m kale_py.runtime`, exactly as the local runner and the Kubeflow pods do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kale_py.api import check_notebook
from kale_py.codegen import cell_to_python, generate_programs


def _notebook(tmp_path: Path, cells: list[tuple[list[str], str]]) -> Path:
    data = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"tags": tags},
                "source": src,
                "outputs": [],
                "execution_count": None,
            }
            for tags, src in cells
        ],
    }
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(data))
    return path


class Steps:
    """Runs the steps of a notebook one after the other with the real runtime."""

    def __init__(self, path: Path):
        self.path, self.run = path, path.parent / "run"
        self.pipeline = check_notebook(path)
        assert self.pipeline.ok, self.pipeline.diagnostics
        self.programs = generate_programs(self.pipeline)

    def step(
        self, name: str, params: dict[str, str] | None = None, rendered: bool = False
    ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        program = self.programs[name]
        steps = self.run / "steps"
        steps.mkdir(parents=True, exist_ok=True)
        (steps / f"{name}.py").write_text(program.source)
        (steps / f"{name}.json").write_text(json.dumps(program.spec))
        cmd = [
            sys.executable,
            "-m",
            "kale_py.runtime",
            "--program",
            str(steps / f"{name}.py"),
            "--spec",
            str(steps / f"{name}.json"),
            "--state-out",
            str(self.run / "state" / name),
            "--report-out",
            str(self.run / f"{name}.html"),
            "--result-out",
            str(self.run / f"{name}.result.json"),
            "--metrics-out",
            str(self.run / f"{name}.metrics.json"),
            "--workdir",
            str(self.path.parent),
            "--allowed-root",
            str(self.run),
        ]
        for producer in sorted(set(program.spec["inputs"].values())):
            cmd += ["--state-in", f"{producer}={self.run / 'state' / producer}"]
        for key, value in (params or {}).items():
            cmd += ["--param", f"{key}={value}"]
            if rendered:
                cmd += ["--param-type", f"{key}={program.spec['parameters'][key]}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        result = json.loads((self.run / f"{name}.result.json").read_text())
        return done, result

    def report(self, name: str) -> str:
        return (self.run / f"{name}.html").read_text()


def test_string_parameter_round_trips(tmp_path: Path) -> None:
    value = 'it\'s "quoted"\\ and\non two lines'
    path = _notebook(
        tmp_path,
        [
            (["pipeline-parameters"], 'NAME = "x"'),
            (["step:a"], "with open('out.txt', 'w') as f:\n    f.write(NAME)"),
        ],
    )
    steps = Steps(path)
    done, result = steps.step("a", {"NAME": json.dumps(value)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.txt").read_text() == value
    done, _ = steps.step("a", {"NAME": value}, rendered=True)  # as Kubeflow renders it
    assert (tmp_path / "out.txt").read_text() == value


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("int", "3.0", 3),
        ("float", "0.5", 0.5),
        ("bool", "false", False),
        ("list", "[1, 2]", [1, 2]),
        ("dict", '{"a": 1}', {"a": 1}),
        ("none", "", None),
    ],
)
def test_rendered_parameters_are_typed(tmp_path: Path, kind: str, text: str, expected: Any) -> None:
    literal = {
        "int": "1",
        "float": "1.0",
        "bool": "True",
        "list": "[]",
        "dict": "{}",
        "none": "None",
    }[kind]
    path = _notebook(
        tmp_path,
        [
            (["pipeline-parameters"], f"P = {literal}"),
            (["step:a"], "import json\nopen('p.json', 'w').write(json.dumps(P))"),
        ],
    )
    done, _ = Steps(path).step("a", {"P": text}, rendered=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "p.json").read_text()) == expected


def test_traceback_names_notebook_cell_and_line(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (["imports"], "import math"),
            (["step:a"], "x = 1\n\ndef f(v):\n    return v / 0\n\ny = f(x)"),
        ],
    )
    done, result = Steps(path).step("a")
    assert done.returncode == 1
    assert result["status"] == "failed"
    assert result["error"]["cell"] == 2 and result["error"]["line"] == 4  # the deepest frame
    assert result["error"]["type"] == "ZeroDivisionError"
    assert 'File "nb.ipynb, cell 2", line 4, in f' in done.stderr
    assert "return v / 0" in done.stderr
    assert "kale_py/runtime.py" not in done.stderr  # no generated or runtime frames
    assert "step 'a' failed in cell 2, line 4: ZeroDivisionError" in done.stderr


def test_values_pass_between_steps_and_only_needed_ones_are_saved(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (["step:a"], "import numpy as np\ndata = np.arange(100000)\nscratch = 5"),
            (["step:b"], "total = int(data.sum())\nprint(total)"),
        ],
    )
    steps = Steps(path)
    assert steps.step("a")[0].returncode == 0
    manifest = json.loads((steps.run / "state" / "a" / "manifest.json").read_text())
    assert sorted(manifest["variables"]) == ["data"]
    done, _ = steps.step("b")
    assert done.returncode == 0 and "4999950000" in done.stdout


def test_functions_and_lambdas_defined_in_steps_travel(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (
                ["step:a"],
                "K = 10\nscale = lambda v: v * K\nclass Box:\n    def __init__(self, v):\n"
                "        self.v = v\nbox = Box(4)",
            ),
            (["step:b"], "K = 100\nprint(scale(2), box.v)"),
        ],
    )
    steps = Steps(path)
    assert steps.step("a")[0].returncode == 0, steps.step("a")[0].stderr
    done, _ = steps.step("b")
    assert done.returncode == 0, done.stderr
    assert "200 4" in done.stdout  # the lambda sees this step's K, as in the notebook


def test_display_last_expression_and_figures_in_report(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (["imports"], "import pandas as pd\nimport matplotlib.pyplot as plt"),
            (
                ["step:a"],
                "df = pd.DataFrame({'a': [1, 2]})\ndisplay(df)\nplt.plot([1, 2])\ndf.shape",
            ),
            ([], "value = 41\nvalue + 1;"),
        ],
    )
    steps = Steps(path)
    done, _ = steps.step("a")
    assert done.returncode == 0, done.stderr
    html = steps.report("a")
    assert "<table" in html  # the DataFrame's HTML from display()
    assert "(2, 1)" in html  # the last expression of cell 2
    assert "data:image/png;base64," in html  # the figure, as the inline backend shows it
    assert ">42<" not in html  # a trailing ';' hides the value, as in Jupyter
    assert "(2, 1)" in done.stdout  # text forms also reach the log


def test_shell_and_magics(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (
                ["step:a"],
                "%matplotlib inline\n!echo from-shell\nfiles = !ls\nn = len(files)\n"
                "%env KALE_PY_TEST_VAR=ok\nimport os\nprint(os.environ['KALE_PY_TEST_VAR'])\n"
                "%time total = n * 2\n%pip install pytest",
            ),
            ([], "%%bash\necho bash-cell $((6 * 7))"),
            ([], "%%writefile note.txt\nhello\n"),
            ([], "%%capture captured\nprint('hidden')"),
            ([], "print('captured:', captured.stdout.strip())"),
        ],
    )
    done, _ = Steps(path).step("a")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "from-shell" in out and "bash-cell 42" in out and "ok" in out
    assert "Wall time" in out and "captured: hidden" in out
    assert "pytest already installed; skipped" in done.stderr  # %pip does not reinstall
    assert (tmp_path / "note.txt").read_text() == "hello\n"


def test_unsavable_variable_fails_in_the_producing_step(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (["step:a"], "def gen():\n    yield 1\nitems = gen()"),
            (["step:b"], "print(next(items))"),
        ],
    )
    done, result = Steps(path).step("a")
    assert done.returncode == 1
    assert "items" in result["error"]["message"] and "generator" in result["error"]["message"]
    assert "Traceback" not in done.stderr


def test_metrics_are_reported(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (["step:a"], "acc = 0.93\nlabel = 'x'"),
            (["pipeline-metrics"], "print('accuracy:', acc)"),
        ],
    )
    steps = Steps(path)
    assert steps.step("a")[0].returncode == 0
    assert json.loads((steps.run / "a.metrics.json").read_text()) == {"accuracy": 0.93}


@pytest.mark.parametrize(
    ("source", "python"),
    [
        ("!ls -l", "_kp.shell('ls -l')"),
        ("files = !ls", "files = _kp.shell('ls', capture=True)"),
        ("%pip install x", "_kp.line_magic('pip', 'install x')"),
        ("if True:\n    !echo hi", "if True:\n    _kp.shell('echo hi')"),
        ("%time y = 1", "with _kp.timed('time'): y = 1"),
        ("df?", "pass  # df?"),
        ("x = 1 % 2", "x = 1 % 2"),
        ("s = '''\n%not a magic\n'''", "s = '''\n%not a magic\n'''"),
    ],
)
def test_magics_become_runtime_calls_line_for_line(source: str, python: str) -> None:
    assert cell_to_python(source) == (python, None)


def test_cell_magics() -> None:
    assert cell_to_python("%%bash\necho 1") == ("_kp.cell_magic('bash', '', 'echo 1\\n')", None)
    assert cell_to_python("%%capture out\nprint(1)") == (
        "pass  # %%capture out\nprint(1)",
        ("capture", "out"),
    )


def test_instances_of_functions_cell_classes_stay_the_same_class(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (["functions"], "class Point:\n    def __init__(self, x):\n        self.x = x"),
            (["step:a"], "p = Point(3)\ncheck = lambda v: isinstance(v, Point)"),
            (["step:b"], "print(isinstance(p, Point), check(p), p.x)"),
        ],
    )
    steps = Steps(path)
    assert steps.step("a")[0].returncode == 0
    done, _ = steps.step("b")
    assert done.returncode == 0, done.stderr
    assert "True True 3" in done.stdout  # by name: the class every step defines


def test_an_object_that_cannot_be_restored_fails_in_the_producing_step(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (
                ["step:a"],
                "class Fragile:\n"
                "    def __setstate__(self, state):\n"
                "        raise ValueError('rebuilt only where it was made')\n"
                "obj = Fragile()\n"
                "obj.value = 1",
            ),
            (["step:b"], "print(obj)"),
        ],
    )
    done, result = Steps(path).step("a")
    assert done.returncode == 1
    message = result["error"]["message"]
    assert "cannot save variable 'obj' (__main__.Fragile) in step 'a'" in message
    assert "it can be saved but not restored in another step" in message
    assert "ValueError: rebuilt only where it was made" in message
    assert "corrupt" not in message and "Traceback" not in done.stderr
