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
        "'jsonschema', 'yaml', 'tornado', 'jupyter_server', 'kale_py.cli_commands', "
        "'kale_py.runs_command') if m in sys.modules); "
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


# --- nb2pipe verify: a real kernel (nbclient) and a real local run --------------------------


def _write_notebook(path: Path, cells: list[tuple[list[str], str]]) -> Path:
    path.write_text(
        json.dumps(
            {
                "nbformat": 4,
                "nbformat_minor": 5,
                "metadata": {},
                "cells": [
                    {
                        "id": f"c{i}",
                        "cell_type": "code",
                        "metadata": {"tags": tags},
                        "source": source,
                        "outputs": [],
                        "execution_count": None,
                    }
                    for i, (tags, source) in enumerate(cells)
                ],
            }
        )
    )
    return path


def test_verify_passes_on_a_notebook_the_pipeline_computes(tmp_path: Path) -> None:
    source = NOTEBOOKS / "seeded_rng_across_steps.ipynb"
    path = tmp_path / source.name
    path.write_bytes(source.read_bytes())
    done = nb2pipe("verify", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{path}: 7 names compared, the pipeline computes what the notebook computes" in (
        done.stdout
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]  # nothing left behind


def test_verify_reads_every_name_as_a_later_step_would(tmp_path: Path) -> None:
    """The last step changes ``pair`` only through ``a``: it loads ``pair`` only for a later
    step, and verify's run has one. A name the check says a step may delete (the name of
    an ``except`` clause that did not run) is left out of that reading step: verify still
    runs, and names it."""
    path = _write_notebook(tmp_path / "nb.ipynb", [
        (["step:make"], "a = [1]\nb = [2]\npair = [a, b]\ne = 5"),
        (["step:grow"], "a.append(3)\ntry:\n    n = 1\nexcept ValueError as e:\n    n = 0"),
    ])
    done = nb2pipe("verify", str(path), "--format", "json")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["pipeline_status"] == "succeeded" and result["compared"] == 5
    assert [(d["name"], d["step"]) for d in result["differences"]] == [("e", "grow")]
    assert [s["step"] for s in result["steps"]] == ["make", "grow"]


def test_verify_names_what_differs_and_its_step(tmp_path: Path) -> None:
    path = NOTEBOOKS / "process_setting_not_carried.ipynb"
    done = nb2pipe("verify", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "differs: depth (step later): kernel 5000; pipeline " in done.stdout
    assert "1 differ" in done.stdout and "Traceback" not in done.stdout + done.stderr
    done = nb2pipe("verify", str(path), "--format", "json")
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert out["ok"] is False and out["compared"] == 2
    assert [(d["name"], d["step"], d["kernel"]) for d in out["differences"]] == [
        ("depth", "later", "5000")
    ]
    assert [(s["step"], s["compared"], s["differences"]) for s in out["steps"]] == [
        ("deep", 1, []),
        ("later", 1, ["depth"]),
    ]


def test_verify_reports_unstable_names_apart_with_two_runs(tmp_path: Path) -> None:
    path = _write_notebook(
        tmp_path / "clock.ipynb",
        [
            (["imports"], "import time"),
            (["step:a"], "stamp = time.time_ns()\nn = 3"),
            (["step:b"], "m = n * 2"),
        ],
    )
    done = nb2pipe("verify", str(path), "--runs", "2", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] is True and out["differences"] == [] and out["compared"] == 3
    assert [(u["name"], u["step"]) for u in out["unstable"]] == [("stamp", "a")]
    assert out["steps"][0]["unstable"] == ["stamp"]
    done = nb2pipe("verify", str(path))  # one kernel run: the clock is a difference
    assert done.returncode == 1
    assert "differs: stamp (step a)" in done.stdout


def test_verify_applies_parameters_to_both_runs(tmp_path: Path) -> None:
    path = _write_notebook(
        tmp_path / "params.ipynb",
        [
            (["pipeline-parameters"], "N = 2\nLABEL = 'x'"),
            (["step:a"], "xs = [LABEL] * N"),
        ],
    )
    done = nb2pipe("verify", str(path), "--param", "N=4", "--param", "LABEL=y", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["compared"] == 1
    done = nb2pipe("verify", str(path), "--param", "N=four")
    assert done.returncode == 1
    assert "NB307" in done.stderr and "Traceback" not in done.stderr


def test_verify_a_notebook_failing_in_the_kernel_names_the_cell(tmp_path: Path) -> None:
    path = _write_notebook(
        tmp_path / "broken.ipynb",
        [(["step:a"], "x = 1"), (["step:b"], "y = x\nz = y / 0")],
    )
    done = nb2pipe("verify", str(path))
    assert done.returncode == 1
    assert f"{path}:cell 2:2: error NB702: the notebook fails when run top to bottom" in (
        done.stderr
    )
    assert "ZeroDivisionError" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["verify"],
        ["verify", "nb.ipynb", "--runs", "0"],
        ["verify", "nb.ipynb", "--runs", "two"],
        ["verify", "nb.ipynb", "--format", "xml"],
    ],
)
def test_verify_bad_usage_is_exit_2(args: list[str]) -> None:
    done = nb2pipe(*args)
    assert done.returncode == 2
    assert "usage: nb2pipe verify" in done.stderr


def test_verify_without_nbclient_says_what_to_install(tmp_path: Path) -> None:
    path = _write_notebook(tmp_path / "nb.ipynb", [(["step:a"], "x = 1")])
    code = (
        "import sys; sys.modules['nbclient'] = None\n"  # as if nbclient were not installed
        "from kale_py.cli import main\n"
        f"sys.exit(main(['verify', {str(path)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert "error NB701: nb2pipe verify runs the notebook in a Jupyter kernel" in done.stderr
    assert "pip install 'kale_py[verify]'" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nb.ipynb"]


def test_verify_reports_a_step_that_fails_only_in_the_pipeline(tmp_path: Path) -> None:
    """The recursion limit is not carried (NB105): the kernel recurses, the step cannot."""
    path = _write_notebook(
        tmp_path / "deep.ipynb",
        [
            (["imports"], "import sys"),
            (["step:a"], "sys.setrecursionlimit(20000)\nn = 5000"),
            (["step:b"], "def deep(k):\n    return 0 if k == 0 else 1 + deep(k - 1)\nd = deep(n)"),
        ],
    )
    done = nb2pipe("verify", str(path), "--format", "json")
    assert done.returncode == 1, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] is False and out["pipeline_status"] == "failed"
    assert [(d["name"], d["step"], d["kernel"], d["pipeline"]) for d in out["differences"]] == [
        ("d", "b", "5000", "(step 'b' failed)"),
        ("deep", "b", "code deep", "(step 'b' failed)"),
    ]
    [b] = [s for s in out["steps"] if s["step"] == "b"]
    assert b["status"] == "failed" and "RecursionError" in b["error"] and "cell 3" in b["error"]
    done = nb2pipe("verify", str(path))
    assert "step b failed: RecursionError" in done.stdout
    assert "differs: d (step b): kernel 5000; pipeline (step 'b' failed)" in done.stdout


def test_verify_drops_only_pyzmqs_closed_socket_race_from_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    """At the end of a kernel run pyzmq may log a ZMQError ENOTSOCK (a stream's callback on a
    socket just closed) with a traceback; verify drops that record and nothing else."""
    import errno
    import logging

    import zmq

    from kale_py.verify import quiet_closed_sockets

    logger = logging.getLogger("tornado.general")

    def log(exc: BaseException) -> None:
        try:
            raise exc
        except BaseException:
            logger.error("Uncaught exception in ZMQStream callback", exc_info=True)

    with quiet_closed_sockets():
        log(zmq.error.ZMQError(errno.ENOTSOCK))
        log(zmq.error.ZMQError(errno.EAGAIN))
        log(ValueError("a real problem"))
    log(zmq.error.ZMQError(errno.ENOTSOCK))  # outside a kernel run: as pyzmq logs it
    kept = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert kept == ["Resource temporarily unavailable", "a real problem",
                    "Socket operation on non-socket"]
