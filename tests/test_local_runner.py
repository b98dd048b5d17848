"""``nb2pipe run``: real notebooks run as real step processes.

Each test writes a small notebook into its own directory (so each has its own
``.nb2pipe/``), runs it through the command line's ``main`` or :func:`run_local`, and
reads what the run left: exit code, output, run.json, logs, state.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest

from kale_py import runs
from kale_py.api import check_notebook
from kale_py.cli import main
from kale_py.diagnostics import RunError
from kale_py.local import RunOptions, run_local

REPO = Path(__file__).resolve().parent.parent

Cell = tuple[Sequence[str], str]


def write_notebook(path: Path, cells: Sequence[Cell | str]) -> Path:
    """A notebook of code cells ``(tags, source)``; a plain string is a markdown cell."""
    nb = nbformat.v4.new_notebook()
    for cell in cells:
        if isinstance(cell, str):
            nb.cells.append(nbformat.v4.new_markdown_cell(cell))
        else:
            code = nbformat.v4.new_code_cell(cell[1])
            code.metadata["tags"] = list(cell[0])
            nb.cells.append(code)
    nbformat.write(nb, str(path))
    return path


def edit_cell(path: Path, index: int, source: str) -> None:
    """Replace the source of cell ``index`` (1-based, as diagnostics count)."""
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[index - 1].source = source
    nbformat.write(nb, str(path))


def edit_tags(path: Path, index: int, tags: list[str]) -> None:
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[index - 1].metadata["tags"] = tags
    nbformat.write(nb, str(path))


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def last_run(notebook: Path) -> dict[str, Any]:
    runs_dir = notebook.parent / ".nb2pipe" / "runs"
    run_id = (runs_dir / "latest").read_text().strip()
    manifest: dict[str, Any] = json.loads((runs_dir / run_id / "run.json").read_text())
    return manifest


def statuses(manifest: dict[str, Any]) -> dict[str, str]:
    return {name: step["status"] for name, step in manifest["steps"].items()}


def seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


CHAIN: list[Cell | str] = [
    "# A chain of three steps",
    (["imports"], "import math"),
    (["pipeline-parameters"], "N = 4"),
    (["step:load"], "data = list(range(N))\nprint('loaded', len(data))"),
    (["step:square"], "squares = [x * x for x in data]\nprint('squares', squares)"),
    (["step:total"], "total = math.fsum(squares)\nprint('total', total)"),
    (["pipeline-metrics"], "print('total:', total)"),
]

# load -> (left, right) -> join; each branch sleeps one second
FAN: list[Cell | str] = [
    (["step:load"], "data = [1, 2, 3]"),
    (["step:left"], "from time import sleep\nleft = data[0] * 10\nsleep(1)"),
    (["step:right"], "from time import sleep\nright = data[-1] * 100\nsleep(1)"),
    (["step:join"], "both = left + right\nprint('both', both)"),
    (["pipeline-metrics"], "print('both:', both)"),
]


# first -> slow -> after; slow starts a child process, writes both pids, then sleeps
LONG: list[Cell | str] = [
    (["imports"], "import os\nimport subprocess\nfrom time import sleep"),
    (["step:first"], "x = 1"),
    (
        ["step:slow"],
        "child = subprocess.Popen(['sleep', '120'])\n"
        "open('pids.txt', 'w').write(f'{os.getpid()} {child.pid}')\n"
        "sleep(120)\ny = x",
    ),
    (["step:after"], "z = y"),
]


# --- a whole run -------------------------------------------------------------------------


def test_chain_runs_each_step_and_passes_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)
    before = notebook.read_bytes()

    code, out, _ = cli(capsys, "run", notebook)

    assert code == 0, out
    manifest = last_run(notebook)
    assert manifest["status"] == "succeeded"
    assert statuses(manifest) == {"load": "succeeded", "square": "succeeded", "total": "succeeded"}
    assert manifest["metrics"] == {"total": 14.0}
    assert manifest["params"] == {"N": 4}
    for name in ("load", "square", "total"):
        step = manifest["steps"][name]
        assert step["exit_code"] == 0 and step["error"] is None
        assert seconds(step["started"]) <= seconds(step["ended"])
    # each step starts after the one it loads from has ended
    steps = manifest["steps"]
    assert seconds(steps["load"]["ended"]) <= seconds(steps["square"]["started"])
    assert seconds(steps["square"]["ended"]) <= seconds(steps["total"]["started"])

    # live output, prefixed with the step name; the same lines, unprefixed, in the logs
    assert "[load] loaded 4" in out
    assert "[square] squares [0, 1, 4, 9]" in out
    run_dir = tmp_path / ".nb2pipe" / "runs" / manifest["run_id"]
    assert (run_dir / "logs" / "total.log").read_text() == "total 14.0\n"
    for sub, suffix in (("steps", ".py"), ("steps", ".json"), ("results", ".json")):
        assert sorted(p.name for p in (run_dir / sub).glob(f"*{suffix}")) == [
            f"load{suffix}",
            f"square{suffix}",
            f"total{suffix}",
        ]
    saved = json.loads((run_dir / "state" / "square" / "manifest.json").read_text())
    assert set(saved["variables"]) == {"squares"}
    assert notebook.read_bytes() == before


def test_independent_branches_run_at_the_same_time(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "fan.ipynb", FAN)

    result = run_local(
        check_notebook(notebook), RunOptions(jobs=2, progress="quiet"), io.StringIO()
    )

    assert result.status == "succeeded" and result.exit_code == 0
    assert result.metrics == {"both": 310.0}
    steps = last_run(notebook)["steps"]
    left = seconds(steps["left"]["started"]), seconds(steps["left"]["ended"])
    right = seconds(steps["right"]["started"]), seconds(steps["right"]["ended"])
    assert left[0] < right[1] and right[0] < left[1], (left, right)  # the intervals overlap
    assert seconds(steps["join"]["started"]) >= max(left[1], right[1])


def test_jobs_1_runs_one_step_at_a_time(tmp_path: Path) -> None:
    # the same graph, without the sleeps: the order alone shows the limit
    cells = [c if isinstance(c, str) else (c[0], c[1].replace("sleep(1)", "")) for c in FAN]
    notebook = write_notebook(tmp_path / "fan.ipynb", cells)

    result = run_local(
        check_notebook(notebook), RunOptions(jobs=1, progress="quiet"), io.StringIO()
    )

    assert result.status == "succeeded"
    steps = last_run(notebook)["steps"]
    first, second = sorted((steps["left"], steps["right"]), key=lambda s: s["started"])
    assert seconds(first["ended"]) <= seconds(second["started"])


def test_terminal_gets_a_status_line_redrawn_in_place(tmp_path: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)
    out = Terminal()

    run_local(check_notebook(notebook), RunOptions(), out)

    text = out.getvalue()
    assert "\r\x1b[K" in text and "running (load)" in text
    assert "[load] loaded 4\n" in text


# --- parameters --------------------------------------------------------------------------


PARAMS: list[Cell | str] = [
    (["pipeline-parameters"], "EPOCHS = 1\nNAME = 'default'\nSIZES = [1]\nVERBOSE = False"),
    (
        ["step:show"],
        "print('epochs', EPOCHS * 2)\nprint('name', repr(NAME))\n"
        "print('sizes', sum(SIZES))\nprint('verbose', VERBOSE)",
    ),
]


def test_param_overrides_reach_the_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notebook = write_notebook(tmp_path / "params.ipynb", PARAMS)
    name = 'it\'s "quoted"\nand on two lines'

    code, out, _ = cli(
        capsys,
        "run",
        notebook,
        "--param",
        "EPOCHS=21",
        "--param",
        f"NAME={name}",
        "--param",
        "SIZES=[1, 2, 3.5]",
        "--param",
        "VERBOSE=yes",
    )

    assert code == 0, out
    log = tmp_path / ".nb2pipe" / "runs" / last_run(notebook)["run_id"] / "logs" / "show.log"
    assert log.read_text().splitlines() == [
        "epochs 42",
        f"name {name!r}",
        "sizes 6.5",
        "verbose True",
    ]
    assert last_run(notebook)["params"] == {
        "EPOCHS": 21,
        "NAME": name,
        "SIZES": [1, 2, 3.5],
        "VERBOSE": True,
    }


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("EPOCH=3", "--param EPOCH: no such pipeline parameter; did you mean EPOCHS?"),
        ("EPOCHS=three", "--param EPOCHS='three': expected an integer"),
        ('SIZES={"a": 1}', "expected a JSON list, got an object"),
        ("VERBOSE=maybe", "expected true or false"),
        ("EPOCHS", "expected NAME=VALUE"),
    ],
)
def test_bad_param_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], param: str, message: str
) -> None:
    notebook = write_notebook(tmp_path / "params.ipynb", PARAMS)

    code, out, err = cli(capsys, "run", notebook, "--param", param)

    assert code == 1
    assert message in err
    if "=" in param:
        assert ":cell 1" in err  # the parameters cell
    assert not (tmp_path / ".nb2pipe").exists()


def test_pipeline_with_errors_is_refused(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "broken.ipynb", [(["step:a"], "x = 1"), (["step:b"], "y = undefined_name + x")]
    )

    with pytest.raises(RunError) as caught:
        run_local(check_notebook(notebook), RunOptions(progress="quiet"), io.StringIO())

    assert [(d.code, d.cell, d.line) for d in caught.value.diagnostics] == [("NB103", 2, 1)]
    assert not (tmp_path / ".nb2pipe").exists()


# --- failure -----------------------------------------------------------------------------


FAILING: list[Cell | str] = [
    "# load -> (bad -> after_bad), good",
    (["step:load"], "data = [1, 2, 3]"),
    (["step:bad"], "value = data[0]\nratio = value / 0"),
    (["step:after_bad"], "print(ratio)"),
    (["step:good"], "fine = data[-1]\nprint('good', fine)"),
]


def test_failed_step_stops_its_descendants_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = write_notebook(tmp_path / "failing.ipynb", FAILING)

    code, out, _ = cli(capsys, "run", notebook)

    assert code == 1
    manifest = last_run(notebook)
    assert manifest["status"] == "failed"
    assert statuses(manifest) == {
        "load": "succeeded",
        "bad": "failed",
        "after_bad": "skipped",
        "good": "succeeded",
    }
    error = manifest["steps"]["bad"]["error"]
    assert (error["cell"], error["line"]) == (3, 2)
    assert error["message"] == "ZeroDivisionError: division by zero"
    assert manifest["steps"]["bad"]["exit_code"] != 0
    assert manifest["steps"]["after_bad"]["reason"] == "bad failed"
    # the summary names the step, the cell and line, the error and the log
    log = Path(".nb2pipe") / "runs" / manifest["run_id"] / "logs" / "bad.log"
    summary = out[out.index("run " + manifest["run_id"]) :]
    assert "step bad failed: ZeroDivisionError: division by zero (cell 3, line 2)" in summary
    assert str(log) in summary or str(tmp_path / log) in summary
    assert "ZeroDivisionError" in (tmp_path / log).read_text()
    assert "[good] good 3" in out


def test_step_that_runs_too_long_times_out(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "slow.ipynb",
        [
            (["imports"], "from time import sleep"),
            (["step:slow", "timeout:1"], "sleep(60)"),
        ],
    )

    result = run_local(check_notebook(notebook), RunOptions(progress="quiet"), io.StringIO())

    assert result.status == "failed"
    assert [(step, e.message) for step, e in result.failed] == [
        ("slow", "timed out after 1 s (timeout:1)")
    ]


def test_failed_step_is_retried(tmp_path: Path) -> None:
    # fails the first time only: the attempts are counted in a file
    notebook = write_notebook(
        tmp_path / "flaky.ipynb",
        [
            (["imports"], "from pathlib import Path"),
            (
                ["step:flaky", "retry:2"],
                "tries = Path('tries.txt')\n"
                "tries.write_text(tries.read_text() + 'x' if tries.exists() else 'x')\n"
                "assert tries.read_text() == 'xx', 'not yet'",
            ),
        ],
    )

    result = run_local(check_notebook(notebook), RunOptions(progress="quiet"), io.StringIO())

    assert result.status == "succeeded"
    step = last_run(notebook)["steps"]["flaky"]
    assert step["attempts"] == 2
    assert (tmp_path / "tries.txt").read_text() == "xx"  # in the notebook's directory
    log = tmp_path / ".nb2pipe" / "runs" / result.run_id / "logs" / "flaky.log"
    assert "AssertionError: not yet" in log.read_text()


def test_step_process_that_dies_without_a_result_fails_the_step(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)
    crash = (sys.executable, "-c", "import sys; print('crashing'); sys.exit(3)")

    result = run_local(
        check_notebook(notebook), RunOptions(progress="quiet", runtime_command=crash), io.StringIO()
    )

    assert result.steps == {"load": "failed", "square": "skipped", "total": "skipped"}
    ((step, failure),) = result.failed
    assert failure.message == "the step process exited with code 3 without a result; see its log"
    assert failure.log is not None and failure.log.read_text() == "crashing\n"
    assert last_run(notebook)["steps"]["load"]["exit_code"] == 3


def test_pipeline_with_errors_is_refused_by_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = write_notebook(
        tmp_path / "broken.ipynb", [(["step:a"], "x = 1"), (["step:b"], "y = undefined_name + x")]
    )

    code, _, err = cli(capsys, "run", notebook)

    assert code == 1
    assert "broken.ipynb:cell 2:1: error NB103" in err
    assert not (tmp_path / ".nb2pipe").exists()


# --- Ctrl-C ------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_cancels_the_run_and_its_processes(tmp_path: Path, sig: signal.Signals) -> None:
    notebook = write_notebook(tmp_path / "long.ipynb", LONG)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    with (tmp_path / "out.txt").open("wb") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "kale_py", "run", str(notebook), "--progress", "plain"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            pids = _wait_for(tmp_path / "pids.txt")
            runner.send_signal(sig)
            code = runner.wait(timeout=30)
        finally:
            runner.kill()
            runner.wait()

    assert code == 128 + sig, (tmp_path / "out.txt").read_text()
    assert [pid for pid in pids if _alive(pid)] == []
    assert _processes_mentioning(str(tmp_path)) == []
    manifest = last_run(notebook)
    assert manifest["status"] == "cancelled"
    assert statuses(manifest) == {"first": "succeeded", "slow": "cancelled", "after": "skipped"}
    assert manifest["ended"] is not None


def _wait_for(path: Path) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if len(text.split()) == 2:
            return [int(pid) for pid in text.split()]
        time.sleep(0.05)
    raise AssertionError(f"the step never wrote {path.name}")


# --- the cache ---------------------------------------------------------------------------


def test_unchanged_steps_come_from_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)
    assert cli(capsys, "run", notebook)[0] == 0
    first = last_run(notebook)

    code, out, _ = cli(capsys, "run", notebook)

    assert code == 0
    second = last_run(notebook)
    assert second["run_id"] != first["run_id"]
    assert set(statuses(second).values()) == {"cached"}
    assert second["metrics"] == {"total": 14.0}
    run_dir = tmp_path / ".nb2pipe" / "runs" / second["run_id"]
    assert (run_dir / "state" / "square" / "manifest.json").is_file()
    assert (run_dir / "logs" / "total.log").read_text() == "total 14.0\n"
    assert "[load]" not in out

    # a changed cell runs again, and so does every step after it whose inputs changed
    edit_cell(notebook, 5, "squares = [x * x * 2 for x in data]\nprint('squares', squares)")
    assert cli(capsys, "run", notebook)[0] == 0
    third = last_run(notebook)
    assert statuses(third) == {"load": "cached", "square": "succeeded", "total": "succeeded"}
    assert third["metrics"] == {"total": 28.0}

    # a new parameter value runs the steps that read it, and those after
    assert cli(capsys, "run", notebook, "--param", "N=2")[0] == 0
    assert set(statuses(last_run(notebook)).values()) == {"succeeded"}

    assert cli(capsys, "run", notebook, "--no-cache")[0] == 0
    assert set(statuses(last_run(notebook)).values()) == {"succeeded"}


def test_cache_disabled_tag_always_runs_the_step(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)
    edit_tags(notebook, 5, ["step:square", "cache:disabled"])
    pipeline = check_notebook(notebook)
    run_local(pipeline, RunOptions(progress="quiet"), io.StringIO())

    result = run_local(pipeline, RunOptions(progress="quiet"), io.StringIO())

    # the step ran again, produced the same values, so the step after it is cached
    assert result.steps == {"load": "cached", "square": "succeeded", "total": "cached"}


# --- partial runs ------------------------------------------------------------------------


def test_only_and_from_reuse_the_latest_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)

    code, _, err = cli(capsys, "run", notebook, "--only", "total")
    assert code == 1
    assert "step 'square' must run first" in err and "--only/--from" in err
    assert not (tmp_path / ".nb2pipe" / "runs").exists()

    assert cli(capsys, "run", notebook)[0] == 0
    full = last_run(notebook)["run_id"]

    code, out, _ = cli(capsys, "run", notebook, "--only", "total", "--no-cache")
    assert code == 0, out
    only = last_run(notebook)
    assert statuses(only) == {"load": "skipped", "square": "reused", "total": "succeeded"}
    assert only["steps"]["square"]["reused_from"] == full
    assert only["metrics"] == {"total": 14.0}
    assert "[total] total 14.0" in out

    code, out, _ = cli(capsys, "run", notebook, "--from", "square", "--no-cache")
    assert code == 0, out
    from_square = last_run(notebook)
    assert statuses(from_square) == {"load": "reused", "square": "succeeded", "total": "succeeded"}
    assert from_square["steps"]["load"]["reused_from"] == full


def test_reuse_ignores_other_notebooks_in_the_same_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_notebook(tmp_path / "other.ipynb", CHAIN)
    assert cli(capsys, "run", tmp_path / "other.ipynb")[0] == 0
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)

    code, _, err = cli(capsys, "run", notebook, "--only", "total")

    assert code == 1 and "step 'square' must run first" in err


def test_unknown_step_names_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)

    code, _, err = cli(capsys, "run", notebook, "--only", "totl", "--from", "nothing")

    assert code == 1
    assert "--only totl: no step has this name; did you mean total?" in err
    assert "--from nothing: no step has this name" in err


# --- the server's view -------------------------------------------------------------------


def test_background_run_is_listed_and_readable(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)

    started = runs.start_local_run(notebook, {"N": 3}, [], None)

    run_id = started["run_id"]
    assert runs.get_run(notebook, run_id)["status"] == "running"  # readable at once
    deadline = time.monotonic() + 30
    while runs.get_run(notebook, run_id)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    manifest = runs.get_run(notebook, run_id)
    assert manifest["status"] == "succeeded", (Path(started["run_dir"]) / "runner.log").read_text()
    assert manifest["params"]["N"] == 3 and manifest["metrics"] == {"total": 5.0}
    assert [r["run_id"] for r in runs.list_runs(notebook)] == [run_id]
    assert runs.list_runs(write_notebook(tmp_path / "other.ipynb", CHAIN)) == []
    assert runs.read_log(notebook, run_id, "load") == "loaded 3\n"
    assert "<html" in runs.read_report(notebook, run_id, "total").lower()


def test_background_run_lists_its_duration_parameters_and_metrics(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)
    started = runs.start_local_run(notebook, {"N": 3}, [], None)
    _wait_until_done(notebook, started["run_id"])
    [listed] = runs.list_runs(notebook)
    assert listed["status"] == "succeeded"
    assert listed["params"]["N"] == 3 and listed["metrics"] == {"total": 5.0}
    assert isinstance(listed["duration"], float) and 0 < listed["duration"] < 60


def test_background_run_can_be_cancelled(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "long.ipynb", LONG)
    started = runs.start_local_run(notebook, {}, [], None)
    pids = _wait_for(tmp_path / "pids.txt")

    runs.cancel_run(notebook, started["run_id"])

    manifest = _wait_until_done(notebook, started["run_id"])
    assert manifest["status"] == "cancelled"
    assert statuses(manifest) == {"first": "succeeded", "slow": "cancelled", "after": "skipped"}
    assert [pid for pid in pids if _alive(pid)] == []
    # the runner itself exits just after it writes the cancelled record
    deadline = time.monotonic() + 15
    while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(tmp_path)) == []
    with pytest.raises(RunError, match="is not running"):
        runs.cancel_run(notebook, started["run_id"])


def _wait_until_done(notebook: Path, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while runs.get_run(notebook, run_id)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    return runs.get_run(notebook, run_id)


def test_background_run_refuses_bad_requests(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)

    with pytest.raises(RunError, match="did you mean N"):
        runs.start_local_run(notebook, {"NN": 3}, [], None)
    with pytest.raises(RunError, match="must run first"):
        runs.start_local_run(notebook, {}, ["total"], None)
    assert runs.list_runs(notebook) == []


def test_run_ids_and_step_names_must_be_plain_names(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "chain.ipynb", CHAIN)
    run_id = run_local(check_notebook(notebook), RunOptions(progress="quiet"), io.StringIO()).run_id
    (tmp_path / ".nb2pipe" / "secret.log").write_text("secret")
    assert runs.read_log(notebook, run_id, "load") == "loaded 4\n"

    for bad_run, bad_step in [
        ("../chain", "load"),
        ("..", "load"),
        (".hidden", "load"),
        ("a/b", "load"),
        (run_id, "../../secret"),
        (run_id, "load/../x"),
        (run_id, "nostep"),
        ("missing", "load"),
    ]:
        with pytest.raises(RunError):
            runs.read_log(notebook, bad_run, bad_step)
        with pytest.raises(RunError):
            runs.read_report(notebook, bad_run, bad_step)
    with pytest.raises(RunError):
        runs.get_run(notebook, "../runs")
