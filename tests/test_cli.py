"""The nb2pipe command line: exit codes, output forms, no tracebacks, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parent / "notebooks"
SAMPLES = Path(__file__).parent.parent / "sample_notebooks"


def nb2pipe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kale_py", *args], capture_output=True, text=True, cwd=cwd
    )


def test_check_ok() -> None:
    done = nb2pipe("check", str(SAMPLES / "iris_classifier.ipynb"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("4 steps, 0 errors, 0 warnings")


def test_check_error_names_cell_and_line() -> None:
    path = NOTEBOOKS / "undefined_name.ipynb"
    done = nb2pipe("check", str(path))
    assert done.returncode == 1
    assert (
        f"{path}:cell 2:2: error NB103: 'x' is used but no earlier step defines it" in done.stdout
    )
    assert "[step a]" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_check_json() -> None:
    done = nb2pipe("check", str(NOTEBOOKS / "syntax_error.ipynb"), "--format", "json")
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert out["ok"] is False
    assert [
        (d["code"], d["cell"], d["line"], d["severity"], d["step"]) for d in out["diagnostics"]
    ] == [("NB101", 1, 2, "error", "a")]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_unreadable_notebook_is_a_diagnostic(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_text("{ this is not json")
    done = nb2pipe("check", str(path), "--format", fmt)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    text = done.stdout + done.stderr
    assert "NB001" in text and "not valid JSON at line 1" in text
    if fmt == "json":
        assert json.loads(done.stdout)["diagnostics"][0]["code"] == "NB001"


def test_missing_notebook(tmp_path: Path) -> None:
    done = nb2pipe("check", str(tmp_path / "nope.ipynb"))
    assert done.returncode == 1 and "NB001" in done.stderr and "no such file" in done.stderr


def test_bad_usage_exits_2() -> None:
    assert nb2pipe("check").returncode == 2
    assert nb2pipe("frobnicate", "x.ipynb").returncode == 2
    assert nb2pipe("graph", "x.ipynb", "--format", "png").returncode == 2


def test_percent_script_diagnostic_uses_file_lines(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text('# %% tags=["step:a"]\nx = 1\n\n# %% tags=["step:b"]\ny = 2\nz = q + y\n')
    done = nb2pipe("check", str(script))
    assert done.returncode == 1
    assert f"{script}:6: error NB103: 'q' is used but no earlier step defines it" in done.stdout
    assert "(cell 2)" in done.stdout


def test_check_writes_nothing(tmp_path: Path) -> None:
    nb = tmp_path / "nb.ipynb"
    nb.write_bytes((SAMPLES / "iris_classifier.ipynb").read_bytes())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert nb2pipe("check", str(nb), cwd=tmp_path).returncode == 0
    assert nb2pipe("graph", str(nb), cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert nb.read_bytes() == (SAMPLES / "iris_classifier.ipynb").read_bytes()


def test_graph_text() -> None:
    done = nb2pipe("graph", str(SAMPLES / "fan_out_fan_in.ipynb"))
    assert done.returncode == 0
    assert "level 1: linear, tree" in done.stdout
    assert "loads X_test, X_train, y_test, y_train from prepare" in done.stdout


def test_graph_mermaid_and_dot() -> None:
    mermaid = nb2pipe("graph", str(NOTEBOOKS / "prev_without_data.ipynb"), "--format", "mermaid")
    assert mermaid.stdout.splitlines() == [
        "flowchart TD",
        '    s_a["a"]',
        '    s_b["b"]',
        '    s_c["c"]',
        '    s_a -->|"x"| s_c',
        "    s_b -.-> s_c",
    ]
    dot = nb2pipe("graph", str(NOTEBOOKS / "prev_without_data.ipynb"), "--format", "dot")
    assert '"a" -> "c" [label="x"];' in dot.stdout and '"b" -> "c" [style=dashed];' in dot.stdout


def test_graph_json() -> None:
    done = nb2pipe("graph", str(SAMPLES / "fan_out_fan_in.ipynb"), "--format", "json")
    data = json.loads(done.stdout)
    assert data["levels"] == [["prepare"], ["linear", "tree"], ["compare"]]
    compare = next(s for s in data["steps"] if s["name"] == "compare")
    assert compare["loads"] == {"linear_score": "linear", "tree_score": "tree"}
    assert {m["name"]: m["step"] for m in data["metrics"]} == {
        "best accuracy": "compare",
        "linear_score": "linear",
        "tree_score": "tree",
    }
    assert {
        "source": "prepare",
        "target": "linear",
        "kind": "data",
        "variables": ["X_test", "X_train", "y_test", "y_train"],
    } in data["edges"]


def test_graph_refuses_broken_notebook() -> None:
    done = nb2pipe("graph", str(NOTEBOOKS / "prev_unknown_step.ipynb"))
    assert done.returncode == 1 and "NB203" in done.stderr and done.stdout == ""


def test_cli_imports_stay_light() -> None:
    code = (
        "import sys; from kale_py.cli import main; "
        f"rc = main(['check', {str(SAMPLES / 'iris_classifier.ipynb')!r}]); "
        "heavy = sorted(m for m in ('kfp', 'kubernetes', 'IPython', 'pandas', 'numpy', 'nbformat', "
        "'jsonschema', 'yaml', 'tornado', 'jupyter_server') if m in sys.modules); "
        "print('HEAVY', heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr


def test_python_dash_m_and_console_script_agree() -> None:
    done = nb2pipe("--help")
    assert done.returncode == 0 and "check" in done.stdout and "graph" in done.stdout


def test_readme_documents_every_diagnostic_code() -> None:
    from kale_py.diagnostics import CODES

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [code for code in CODES if f"`{code}`" not in readme]
    assert missing == []


def test_every_code_used_in_the_package_is_documented() -> None:
    import re

    from kale_py.diagnostics import CODES

    package = Path(__file__).parent.parent / "kale_py"
    used = set()
    for path in package.rglob("*.py"):
        used |= set(re.findall(r'"((?:NB|KF)\d{3})"', path.read_text()))
    assert sorted(used - set(CODES)) == []


def test_failed_run_of_a_percent_script_points_at_the_file_line(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text('# %% tags=["step:a"]\nx = 1\n\n# %% tags=["step:b"]\ny = x\nz = y / 0\n')
    done = nb2pipe("run", str(script), cwd=tmp_path)
    assert done.returncode == 1
    assert "step b failed: ZeroDivisionError: division by zero (cell 2, line 2)" in done.stdout
    assert f"at {script.name}:6" in done.stdout or f"at {script}:6" in done.stdout
