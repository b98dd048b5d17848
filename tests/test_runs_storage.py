"""``nb2pipe runs``, the storage limit, and local runs that behave as the cluster would:
limit:memory enforced, peak memory and CPU time recorded, steps that die with their runner.

Real runs of small notebooks through the command line, real step processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_local_runner import REPO, _alive, _wait_for, last_run, statuses, write_notebook

from kale_py.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def state_notebook(tmp_path: Path, mib: int = 8) -> Path:
    return write_notebook(
        tmp_path / "nb.ipynb",
        [
            (["imports"], "import numpy as np"),
            (["step:one"], f"arr = np.arange({mib} * 2**17, dtype=np.int64)"),
            (["step:two", "prev:one"], "print('SUM', int(arr.sum()))"),
        ],
    )


def runs_dir(notebook: Path) -> Path:
    return notebook.parent / ".nb2pipe" / "runs"


# --- memory and CPU ---------------------------------------------------------------------------


def test_a_step_over_its_memory_limit_fails_as_on_the_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = write_notebook(
        tmp_path / "hungry.ipynb",
        [
            (["imports"], "import numpy as np"),
            (["step:one", "limit:memory:150Mi"], "big = np.ones(50_000_000)\nx = 1"),
            (["step:two"], "y = x + 1"),
        ],
    )
    code, out = run(capsys, "run", notebook, "--progress", "plain")
    assert code == 1, out
    assert "step one used " in out
    assert "over its limit 150Mi: on the cluster it would be OOM-killed" in out
    manifest = last_run(notebook)
    assert statuses(manifest) == {"one": "failed", "two": "skipped"}
    step = manifest["steps"]["one"]
    assert step["peak_rss_bytes"] > 150 * 2**20
    assert "OOM-killed" in step["error"]["message"]


def test_peak_memory_and_cpu_time_are_recorded_shown_and_suggested(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = write_notebook(
        tmp_path / "nb.ipynb",
        [
            (["imports"], "import numpy as np"),
            (["step:one"], "big = np.ones(12_500_000)  # 100 MB\nx = float(big.sum())\n"
                           "spin = sum(range(20_000_000))"),
            (["step:two", "prev:one"], "y = x + 1"),
        ],
    )
    code, out = run(capsys, "run", notebook, "--progress", "plain", "--suggest-resources")
    assert code == 0, out
    steps = last_run(notebook)["steps"]
    assert steps["one"]["peak_rss_bytes"] > 100_000_000
    assert steps["two"]["peak_rss_bytes"] < steps["one"]["peak_rss_bytes"]
    assert steps["one"]["cpu_seconds"] > 0.1
    assert "peak memory: one 1" in out and "MiB" in out
    lines = [line.strip() for line in out.splitlines() if "request:memory:" in line]
    assert [line.split(":")[0] for line in lines] == ["one", "two"]
    request = int(lines[0].split("request:memory:")[1].split("Mi")[0])
    assert request * 2**20 >= steps["one"]["peak_rss_bytes"]
    assert f"limit:memory:{request * 2}Mi" in lines[0]

    code, out = run(capsys, "runs", "show", notebook, last_run(notebook)["run_id"])
    assert code == 0
    assert "PEAK MEMORY" in out
    one = next(line for line in out.splitlines() if line.strip().startswith("one "))
    assert "MiB" in one and "succeeded" in one


# --- the runner's death and signals -------------------------------------------------------------


def test_a_killed_runner_takes_its_steps_with_it_and_reads_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = write_notebook(
        tmp_path / "long.ipynb",
        [
            (["imports"], "import os\nimport subprocess\nfrom time import sleep"),
            (["step:slow"], "child = subprocess.Popen(['sleep', '120'])\n"
                            "open('pids.txt', 'w').write(f'{os.getpid()} {child.pid}')\n"
                            "sleep(120)\ny = 1"),
            (["step:after"], "z = y"),
        ],
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    runner = subprocess.Popen(
        [sys.executable, "-m", "kale_py", "run", str(notebook), "--progress", "quiet"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        pids = _wait_for(tmp_path / "pids.txt")  # the step, and a process it started
        # the runner records the step as running a moment after starting it
        deadline = time.monotonic() + 30
        while (last_run(notebook).get("steps", {}).get("slow", {}).get("status") != "running"
               and time.monotonic() < deadline):
            time.sleep(0.05)
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.kill()
        runner.wait()
    assert [pid for pid in pids if _alive(pid)] == []

    code, out = run(capsys, "runs", notebook)
    assert code == 0
    assert " failed " in out and "running" not in out
    manifest = last_run(notebook)
    assert manifest["status"] == "failed"
    assert manifest["error"].startswith("driver lost")
    assert manifest["ended"] is not None
    assert manifest["steps"]["slow"]["status"] == "failed"
    # a step still waiting when the driver died never ran: nothing is left pending
    assert (manifest["steps"]["after"]["status"], manifest["steps"]["after"]["reason"]) == (
        "skipped", "driver lost")
    code, out = run(capsys, "runs", "show", notebook, manifest["run_id"])
    assert "driver lost" in out and f"at {manifest['ended']}" in out


# --- listing and removing runs ------------------------------------------------------------------


def test_runs_are_listed_shown_and_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    notebook = state_notebook(tmp_path)
    code, out = run(capsys, "runs", notebook)
    assert (code, out.strip()) == (0, f"no runs of {notebook} yet")
    for _ in range(2):
        assert run(capsys, "run", notebook, "--progress", "quiet", "--no-cache")[0] == 0
    ids = sorted(p.name for p in runs_dir(notebook).iterdir() if p.is_dir())

    code, out = run(capsys, "runs", "list", notebook)
    assert code == 0
    rows = out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ids
    assert all(row.split()[1] == "succeeded" and "MiB" in row for row in rows)

    code, out = run(capsys, "runs", "rm", notebook, ids[0])
    assert (code, out.strip()) == (0, "removed 1 run")
    assert not (runs_dir(notebook) / ids[0]).exists()
    code, out = run(capsys, "runs", "show", notebook, ids[0])
    assert code == 1 and "NB504" in out and f"no run {ids[0]}" in out


def test_a_running_run_is_not_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notebook = state_notebook(tmp_path)
    assert run(capsys, "run", notebook, "--progress", "quiet")[0] == 0
    record = runs_dir(notebook) / last_run(notebook)["run_id"] / "run.json"
    manifest = json.loads(record.read_text())
    # As a run in progress writes it: this process stands for its runner.
    from kale_py.local import _process_start

    manifest.update(status="running", runner_pid=os.getpid(),
                    runner_started=_process_start(os.getpid()))
    record.write_text(json.dumps(manifest))

    code, out = run(capsys, "runs", "rm", notebook, manifest["run_id"])
    assert code == 1
    assert f"run {manifest['run_id']} is still running" in out
    assert record.exists()


def test_runs_and_the_cache_share_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notebook = state_notebook(tmp_path)
    assert run(capsys, "run", notebook, "--progress", "quiet")[0] == 0
    manifest = last_run(notebook)
    in_run = runs_dir(notebook) / manifest["run_id"] / "state" / "one" / "arr.kpk"
    key = manifest["steps"]["one"]["cache_key"]
    in_cache = notebook.parent / ".nb2pipe" / "cache" / key / "state" / "arr.kpk"
    assert in_run.stat().st_ino == in_cache.stat().st_ino
    assert run(capsys, "run", notebook, "--progress", "quiet")[0] == 0
    again = runs_dir(notebook) / last_run(notebook)["run_id"] / "state" / "one" / "arr.kpk"
    assert again.stat().st_ino == in_cache.stat().st_ino


# --- the storage limit --------------------------------------------------------------------------


def test_the_storage_limit_removes_old_state_first_and_keeps_the_latest_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = state_notebook(tmp_path, mib=8)  # each run's state: 8 MiB
    for _ in range(2):
        assert run(capsys, "run", notebook, "--progress", "quiet", "--no-cache")[0] == 0
    first, second = sorted(p.name for p in runs_dir(notebook).iterdir() if p.is_dir())
    monkeypatch.setenv("NB2PIPE_STORAGE_LIMIT", "20M")

    code, out = run(capsys, "run", notebook, "--progress", "quiet", "--no-cache")

    assert code == 0, out
    removal = [line for line in out.splitlines() if line.startswith("storage:")]
    assert len(removal) == 1, out
    assert "removed the state of 2 runs" in removal[0]
    assert "NB2PIPE_STORAGE_LIMIT=20M" in removal[0]
    latest = last_run(notebook)["run_id"]
    assert not (runs_dir(notebook) / first / "state").exists()
    assert not (runs_dir(notebook) / second / "state").exists()
    assert (runs_dir(notebook) / first / "run.json").exists()  # records outlive state
    assert (runs_dir(notebook) / first / "logs" / "two.log").exists()
    assert (runs_dir(notebook) / latest / "state" / "one" / "arr.kpk").exists()
    total = sum(f.stat().st_blocks * 512 for f in {
        (p.stat().st_ino): p for p in (tmp_path / ".nb2pipe").rglob("*") if p.is_file()
    }.values())
    assert total <= 20_000_000
    code, out = run(capsys, "run", notebook, "--only", "two", "--no-cache", "--progress", "plain")
    assert code == 0, out
    assert f"SUM {sum(range(8 * 2**17))}" in out
    code, out = run(capsys, "runs", notebook)
    assert f"{first}" in out and "*" in out


def test_a_limit_smaller_than_the_latest_run_warns_and_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = state_notebook(tmp_path, mib=8)
    monkeypatch.setenv("NB2PIPE_STORAGE_LIMIT", "1M")
    code, out = run(capsys, "run", notebook, "--progress", "quiet")
    assert code == 0, out
    assert "the runs kept (the latest of each notebook, running ones) exceed the limit" in out
    assert "NB2PIPE_STORAGE_LIMIT=1M" in out and "kept them" in out
    assert (runs_dir(notebook) / last_run(notebook)["run_id"] / "state" / "one").is_dir()


@pytest.mark.parametrize("value", ["lots", "-5G", "0"])
def test_a_bad_storage_limit_is_a_usage_error_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    value: str,
) -> None:
    notebook = state_notebook(tmp_path)
    monkeypatch.setenv("NB2PIPE_STORAGE_LIMIT", value)
    code, out = run(capsys, "run", notebook)
    assert code == 2
    assert out.startswith("nb2pipe run: error: NB2PIPE_STORAGE_LIMIT: ")
    assert not runs_dir(notebook).exists()
    code, out = run(capsys, "runs", "prune", notebook)
    assert code == 2 and "NB2PIPE_STORAGE_LIMIT" in out


def test_the_user_setting_sets_the_limit_and_prune_applies_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = state_notebook(tmp_path, mib=8)
    for _ in range(2):
        assert run(capsys, "run", notebook, "--progress", "quiet", "--no-cache")[0] == 0
    monkeypatch.delenv("NB2PIPE_STORAGE_LIMIT", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    settings = tmp_path / "config" / "kale_py" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"storage_limit": "12M"}))
    code, out = run(capsys, "runs", "prune", notebook)
    assert code == 0
    assert out.startswith("storage: removed the state of 1 run")
    assert f"storage_limit in {settings}" in out
    settings.write_text(json.dumps({"storage_limit": "twelve"}))
    code, out = run(capsys, "runs", "prune", notebook)
    assert code == 2 and f"storage_limit in {settings}: 'twelve' is not a size" in out


def test_the_notebook_metadata_sets_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat

    notebook = state_notebook(tmp_path, mib=8)
    for _ in range(2):
        assert run(capsys, "run", notebook, "--progress", "quiet", "--no-cache")[0] == 0
    monkeypatch.delenv("NB2PIPE_STORAGE_LIMIT", raising=False)
    nb = nbformat.read(str(notebook), as_version=4)
    nb.metadata["kubeflow_notebook"] = {"storage_limit": "12M"}
    nbformat.write(nb, str(notebook))
    code, out = run(capsys, "check", notebook)
    assert code == 0 and "NB003" not in out
    code, out = run(capsys, "run", notebook, "--progress", "quiet", "--no-cache")
    assert code == 0, out
    assert "removed the state of 2 runs" in out
    assert "storage_limit in the notebook's metadata.kubeflow_notebook (12M)" in out
    nb.metadata["kubeflow_notebook"] = {"storage_limit": "a lot"}
    nbformat.write(nb, str(notebook))
    code, out = run(capsys, "run", notebook)
    assert code == 2
    assert ("storage_limit in the notebook's metadata.kubeflow_notebook: 'a lot' is not a "
            "size") in out
