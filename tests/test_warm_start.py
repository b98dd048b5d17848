"""Warm step starts: steps forked from one process that ran the imports and functions cells.

Real runs through :func:`run_local` and the command line. Whether a step was forked is read
from the step itself: a forked step's parent is the warm process, a spawned step's parent
is the runner (this test process).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from kale_py import marshal
from kale_py.api import check_notebook
from kale_py.local import RunOptions, RunResult, run_local
from tests.test_local_runner import (
    REPO,
    Cell,
    _processes_mentioning,
    cli,
    last_run,
    write_notebook,
)

PRELUDE: list[Cell] = [
    (["pipeline-parameters"], "K = 2\nN = 5"),
    (["imports"], "import os\nimport random\nimport numpy as np"),
    (
        ["functions"],
        "class Box:\n    def __init__(self, v):\n        self.v = v\n\n"
        "def scaled(x, k=K):\n    return x * k",
    ),
]

PARALLEL: list[Cell] = [
    *PRELUDE,
    (
        ["step:load"],
        "data = np.arange(N) * 1.5\nbox = Box(scaled(3) + 0 * K)\nbox_v = box.v\n"
        "parent_load = os.getppid()",
    ),
    (
        ["step:left"],
        "left = float(data.sum()) + box.v + 0 * K\n"
        "left_draw = (random.random(), np.random.rand(3).tolist())"
        "\nparent_left = os.getppid()",
    ),
    (
        ["step:right"],
        "right = scaled(data, K).tolist()\n"
        "right_draw = (random.random(), np.random.rand(3).tolist())"
        "\nparent_right = os.getppid()",
    ),
    (["step:join"], "both = (left, right, box.v, K)"),
]


EXPORTS: dict[str, Path] = {}  # run id -> where its steps exported every variable


def run(notebook: Path, **options: Any) -> tuple[RunResult, str]:
    """Run with every variable each step writes exported (KALE_PY_EXPORT_ALL)."""
    out = io.StringIO()
    export = notebook.parent / f"export-{len(list(notebook.parent.glob('export-*')))}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KALE_PY_EXPORT_ALL", str(export))
        result = run_local(check_notebook(notebook), RunOptions(progress="plain", **options), out)
    EXPORTS[result.run_id] = export
    return result, out.getvalue()


def values(result: RunResult, step: str, skip: tuple[str, ...] = ("box",)) -> dict[str, Any]:
    """Every variable the step wrote, as it exported them (instances of notebook classes,
    pickled by reference to the step's ``__main__``, are left out)."""
    directory = EXPORTS[result.run_id] / step
    manifest = marshal.read_manifest(str(directory))
    return {
        name: marshal.load_variable(record["file"], str(directory), allowed_root=str(directory))
        for name, record in manifest["variables"].items()
        if name not in skip
    }


def test_forked_and_spawned_steps_compute_the_same_values(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "par.ipynb", PARALLEL)

    forked, forked_out = run(notebook, isolation="fork", params={"K": "3"})
    spawned, spawned_out = run(notebook, isolation="spawn", params={"K": "3"}, cache=False)

    assert forked.status == spawned.status == "succeeded", forked_out + spawned_out
    for step in ("load", "left", "right"):
        mine, theirs = values(forked, step), values(spawned, step)
        assert mine.keys() == theirs.keys()
        for name in mine:
            if name.startswith("parent_") or name.endswith("_draw"):
                continue
            assert repr(mine[name]) == repr(theirs[name]), name
    # the prelude's function default reads the parameter: K=3 reached it in both
    assert values(forked, "load")["box_v"] == values(spawned, "load")["box_v"] == 9
    assert values(forked, "left")["left"] == 15.0 + 9
    # forked: every step's parent is the one warm process; spawned: the runner
    parents = {values(forked, s)[f"parent_{s}"] for s in ("load", "left", "right")}
    assert len(parents) == 1 and parents != {os.getpid()}
    assert {values(spawned, s)[f"parent_{s}"] for s in ("load", "left")} == {os.getpid()}
    manifest = json.loads((forked.run_dir / "run.json").read_text())
    assert manifest["step_start"]["isolation"] == "fork"
    assert manifest["step_start"]["notes"] == []
    assert manifest["step_start"]["prelude_seconds"] > 0
    assert "imports and functions cells:" in forked_out
    assert "imports and functions cells:" not in spawned_out


def test_each_forked_step_gets_its_own_random_streams(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "par.ipynb", PARALLEL)

    first, _ = run(notebook, isolation="fork")
    second, _ = run(notebook, isolation="fork", cache=False)

    draws = [
        values(result, step)[f"{step}_draw"]
        for result in (first, second)
        for step in ("left", "right")
    ]
    pythons = [d[0] for d in draws]
    numpys = [tuple(d[1]) for d in draws]
    assert len(set(pythons)) == 4 and len(set(numpys)) == 4


def test_a_prelude_that_seeds_gives_the_forks_the_seeded_stream(tmp_path: Path) -> None:
    seeded: list[Cell] = [
        (["imports"], "import random\nimport numpy as np\nnp.random.seed(7)\nrandom.seed(7)"),
        (["step:a"], "a = (random.random(), np.random.rand(2).tolist())"),
        (["step:b"], "b = (random.random(), np.random.rand(2).tolist())"),
    ]
    notebook = write_notebook(tmp_path / "seeded.ipynb", seeded)

    forked, _ = run(notebook, isolation="fork")
    spawned, _ = run(notebook, isolation="spawn", cache=False)

    import random

    import numpy as np

    np.random.seed(7)
    random.seed(7)
    # as in the notebook: a draws first after the seed, b goes on from there (the global
    # streams travel from step to step)
    first = (random.random(), np.random.rand(2).tolist())
    second = (random.random(), np.random.rand(2).tolist())
    for result in (forked, spawned):
        assert values(result, "a")["a"] == first
        assert values(result, "b")["b"] == second


def test_threads_left_by_the_imports_fall_back_to_fresh_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cells: list[Cell] = [
        (
            ["imports"],
            "import os, threading, time\n"
            "poller = threading.Thread(target=time.sleep, args=(30,), name='poller', daemon=True)\n"
            "poller.start()",
        ),
        (["step:a"], "parent = os.getppid()"),
    ]
    notebook = write_notebook(tmp_path / "threads.ipynb", cells)
    monkeypatch.setenv("KALE_PY_EXPORT_ALL", str(tmp_path / "export"))

    code, out, _ = cli(capsys, "run", notebook, "--progress", "plain")

    assert code == 0
    note = (
        "steps ran in fresh processes, not forked: the imports and functions cells left "
        "1 thread(s) running (poller)"
    )
    assert out.count(note) == 1
    manifest = last_run(notebook)
    assert manifest["step_start"] == {"isolation": "auto", "notes": [note], "prelude_seconds": None}
    export = notebook.parent / "export" / "a"
    state = marshal.read_manifest(str(export))
    parent = marshal.load_variable(
        state["variables"]["parent"]["file"], str(export), allowed_root=str(export)
    )
    assert parent == os.getpid()  # the command ran in this process: a fresh step process

    # --isolation fork forks anyway, and says so
    code, out, _ = cli(capsys, "run", notebook, "--isolation", "fork", "--no-cache")
    assert code == 0
    assert "steps forked although the imports and functions cells left 1 thread(s)" in out


def test_the_notebook_setting_chooses_fresh_processes(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "nb.ipynb", [(["step:a"], "import os\nparent = os.getppid()")]
    )
    nb = nbformat.read(str(notebook), as_version=4)
    nb.metadata["kubeflow_notebook"] = {"local_isolation": "spawn"}
    nbformat.write(nb, str(notebook))

    result, out = run(notebook)

    assert values(result, "a")["parent"] == os.getpid()
    manifest = json.loads((result.run_dir / "run.json").read_text())
    assert manifest["step_start"] == {"isolation": "spawn", "notes": [], "prelude_seconds": None}
    assert "not forked" not in out


def test_a_bad_isolation_setting_is_a_diagnostic(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "nb.ipynb", [(["step:a"], "x = 1")])
    nb = nbformat.read(str(notebook), as_version=4)
    nb.metadata["kubeflow_notebook"] = {"local_isolation": "threads"}
    nbformat.write(nb, str(notebook))

    found = [(d.code, d.message) for d in check_notebook(notebook).diagnostics]

    assert (
        "NB004",
        "metadata.kubeflow_notebook.local_isolation must be auto, fork or spawn",
    ) in found


def test_a_segfault_in_a_forked_step_fails_it_and_the_other_branch_finishes(
    tmp_path: Path,
) -> None:
    cells: list[Cell] = [
        (["imports"], "import ctypes\nimport time"),
        (["step:load"], "x = 1"),
        (["step:crash"], "y = x\nctypes.string_at(0)"),
        (["step:after_crash"], "z = y"),
        (["step:fine"], "time.sleep(0.5)\nw = x + 1"),
    ]
    notebook = write_notebook(tmp_path / "crash.ipynb", cells)

    result, _ = run(notebook, isolation="fork")

    assert result.steps == {
        "load": "succeeded",
        "crash": "failed",
        "after_crash": "skipped",
        "fine": "succeeded",
    }
    ((step, failure),) = result.failed
    assert (step, failure.message) == ("crash", "the step process was killed by SIGSEGV")
    assert values(result, "fine") == {"w": 2}


def test_forked_step_that_runs_too_long_times_out_and_ends(tmp_path: Path) -> None:
    cells: list[Cell] = [
        (["imports"], "import os\nfrom time import sleep"),
        (["step:slow", "timeout:1"], "open('pid.txt', 'w').write(str(os.getpid()))\nsleep(60)"),
    ]
    notebook = write_notebook(tmp_path / "slow.ipynb", cells)

    result, _ = run(notebook, isolation="fork")

    assert [(s, e.message) for s, e in result.failed] == [
        ("slow", "timed out after 1 s (timeout:1)")
    ]
    pid = int((tmp_path / "pid.txt").read_text())
    assert not Path(f"/proc/{pid}").exists()  # ended, and reaped by the warm process


def test_a_failing_imports_cell_runs_once_and_stops_the_run(tmp_path: Path) -> None:
    cells: list[Cell] = [
        (
            ["imports"],
            "import math\nopen('prelude.txt', 'a').write('ran\\n')\nimport no_such_module_here",
        ),
        (["step:a"], "open('a.txt', 'w').write('a')\nx = 1"),
        (["step:b"], "open('b.txt', 'w').write('b')\ny = 2"),
        (["step:c"], "z = x + y"),
    ]
    notebook = write_notebook(tmp_path / "broken.ipynb", cells)

    result, out = run(notebook, isolation="fork")

    assert result.status == "failed"
    assert result.steps == {"a": "failed", "b": "skipped", "c": "skipped"}
    ((_, failure),) = result.failed
    assert failure.describe() == (
        "ModuleNotFoundError: No module named 'no_such_module_here' (cell 1, line 3)"
    )
    assert failure.log is not None
    assert "No module named 'no_such_module_here'" in failure.log.read_text()
    reasons = {n: s["reason"] for n, s in last_run(notebook)["steps"].items()}
    assert reasons == {"a": None, "b": "an imports or functions cell failed", "c": "a failed"}
    assert (tmp_path / "prelude.txt").read_text() == "ran\n"  # once, in the warm process
    assert not (tmp_path / "a.txt").exists() and not (tmp_path / "b.txt").exists()
    assert "step a failed: ModuleNotFoundError" in out


def test_prelude_output_heads_each_forked_step_log(tmp_path: Path) -> None:
    cells: list[Cell] = [
        (["imports"], "import math\nprint('prelude says hi')"),
        (["step:a"], "print('a runs')\nx = 1"),
        (["step:b"], "print('b runs')\ny = x"),
    ]
    notebook = write_notebook(tmp_path / "out.ipynb", cells)

    result, out = run(notebook, isolation="fork")

    logs = result.run_dir / "logs"
    assert (logs / "a.log").read_text() == "prelude says hi\na runs\n"
    assert (logs / "b.log").read_text() == "prelude says hi\nb runs\n"
    assert out.count("prelude says hi") == 1
    manifest = json.loads((result.run_dir / "run.json").read_text())
    timings = manifest["steps"]["a"]["timings"]
    assert set(timings) == {"start", "load", "code", "save", "cpu"}
    assert all(v >= 0 for v in timings.values())
    assert "  a: start " in out


def test_ctrl_c_while_the_imports_cell_runs_ends_the_warm_process(tmp_path: Path) -> None:
    cells: list[Cell] = [
        (["imports"], "import time\nopen('started.txt', 'w').write('x')\ntime.sleep(60)"),
        (["step:a"], "x = 1"),
    ]
    notebook = write_notebook(tmp_path / "slow_imports.ipynb", cells)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    runner = subprocess.Popen(
        [sys.executable, "-m", "kale_py", "run", str(notebook), "--progress", "plain"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "started.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_mentioning(str(tmp_path / ".nb2pipe")) != []  # the warm process
        runner.send_signal(signal.SIGINT)
        code = runner.wait(timeout=20)
    finally:
        runner.kill()
        runner.wait()

    assert code == 130
    assert _processes_mentioning(str(tmp_path)) == []
    manifest = last_run(notebook)
    assert manifest["status"] == "cancelled"
    assert manifest["steps"]["a"]["status"] == "skipped"


def test_a_generator_made_from_os_entropy_in_the_imports_differs_per_step(
    tmp_path: Path,
) -> None:
    cells: list[Cell] = [
        (
            ["imports"],
            "import random\nimport numpy as np\nrng = np.random.default_rng()\n"
            "gen = random.Random()",
        ),
        (["step:a"], "a = (rng.random(), gen.random())"),
        (["step:b"], "b = (rng.random(), gen.random())"),
    ]
    notebook = write_notebook(tmp_path / "gen.ipynb", cells)

    result, _ = run(notebook, isolation="fork")

    a, b = values(result, "a")["a"], values(result, "b")["b"]
    assert a[0] != b[0] and a[1] != b[1]


def test_steps_that_bind_different_prelude_parameters_fork_from_different_processes(
    tmp_path: Path,
) -> None:
    cells: list[Cell] = [
        (["pipeline-parameters"], "K = 2"),
        (["imports"], "import os"),
        (["functions"], "def k_or_none():\n    return globals().get('K')"),
        (["step:a"], "a = (K, k_or_none())\nparent_a = os.getppid()"),
        (["step:b"], "b = k_or_none()\nparent_b = os.getppid()"),
    ]
    notebook = write_notebook(tmp_path / "params.ipynb", cells)

    forked, _ = run(notebook, isolation="fork", params={"K": "5"})
    spawned, _ = run(notebook, isolation="spawn", params={"K": "5"}, cache=False)

    for result in (forked, spawned):
        assert values(result, "a")["a"] == (5, 5)
        assert values(result, "b")["b"] is None  # b is not given K, in either mode
    assert values(forked, "a")["parent_a"] != values(forked, "b")["parent_b"]
    assert os.getpid() not in (values(forked, "a")["parent_a"], values(forked, "b")["parent_b"])
