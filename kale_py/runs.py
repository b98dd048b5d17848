"""Local runs as the Jupyter server sees them: start one in the background, list them,
read their manifest, logs and reports.

A run started here is ``python -m kale_py run NOTEBOOK --progress quiet`` in a process of
its own session: it outlives the request, and the server's Ctrl-C does not reach it. Its
id is chosen up front, and its run.json written before this returns, so the panel can poll
it at once.

>>> started = start_local_run("churn.ipynb", {"EPOCHS": 3}, [], None)  # doctest: +SKIP
>>> get_run("churn.ipynb", started["run_id"])["status"]  # doctest: +SKIP
'running'
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .diagnostics import CheckError, RunError, error
from .local import (
    STATE_DIR_NAME,
    RunDirectory,
    RunOptions,
    RunPlan,
    kale_py_environment,
    new_run_id,
    pid_exists,
    plan_run,
    read_json,
    read_runs,
    write_json_atomic,
)

# Run ids and step names end up in file names: plain names only, no path in them.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_STEP = re.compile(r"[A-Za-z0-9_-]+")


def start_local_run(
    path: str | Path, params: Mapping[str, Any], only: Sequence[str] | None, from_step: str | None
) -> dict[str, str]:
    """Check the notebook and start a local run of it in the background.

    ``params`` maps parameter names to values: JSON values, or text as on the command
    line. Problems in the notebook or the request raise a
    :class:`~kale_py.diagnostics.KalePyError` before anything starts. Returns
    ``{"run_id", "run_dir"}`` at once.
    """
    from .api import check_notebook

    path = Path(path).resolve()
    pipeline = check_notebook(path)
    if not pipeline.ok:
        raise CheckError([d for d in pipeline.diagnostics if d.is_error])
    overrides = {name: _as_text(value) for name, value in params.items()}
    run_id = new_run_id()
    options = RunOptions(
        params=overrides,
        only=tuple(only or ()),
        from_step=from_step,
        run_id=run_id,
        progress="quiet",
    )
    plan = plan_run(pipeline, options)
    run = RunDirectory.create(plan.run_root / "runs", run_id)
    write_json_atomic(run.path / "run.json", _starting_manifest(run_id, path, plan))
    pid = _spawn(path, options, run.path)
    (run.path / "runner.pid").write_text(f"{pid}\n", encoding="utf-8")
    return {"run_id": run_id, "run_dir": str(run.path)}


def _as_text(value: Any) -> str:
    """A parameter value as ``--param`` text: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _starting_manifest(run_id: str, notebook: Path, plan: RunPlan) -> dict[str, Any]:
    # What the panel sees until the runner writes its own run.json, a moment later.
    taking_part = set(plan.selected) | set(plan.reuse)
    steps = {
        s.name: {
            "kfp_name": s.kfp_name,
            "status": "pending" if s.name in taking_part else "skipped",
        }
        for s in plan.pipeline.steps
    }
    return {
        "run_id": run_id,
        "notebook": str(notebook),
        "status": "running",
        "started": None,
        "ended": None,
        "params": {},
        "steps": steps,
        "metrics": {},
    }


def _spawn(notebook: Path, options: RunOptions, run_dir: Path) -> int:
    command = [
        sys.executable,
        "-m",
        "kale_py",
        "run",
        str(notebook),
        "--progress",
        "quiet",
        "--run-id",
        str(options.run_id),
    ]
    for name, value in options.params.items():
        command += ["--param", f"{name}={value}"]
    for step in options.only:
        command += ["--only", step]
    if options.from_step is not None:
        command += ["--from", options.from_step]
    env = kale_py_environment()
    with (run_dir / "runner.log").open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=notebook.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Reap it when it ends, so that no zombie is left in the server.
    threading.Thread(target=process.wait, daemon=True, name=f"kale_py-run-{options.run_id}").start()
    return process.pid


def list_runs(path: str | Path) -> list[dict[str, Any]]:
    """The notebook's local runs, newest first: ``run_id``, ``status``, ``started``,
    ``ended``, ``duration`` (seconds, None while running), ``params`` and ``metrics``."""
    runs_dir = _runs_dir(path)
    found = []
    # Notebooks of one directory share .nb2pipe/: only this notebook's runs.
    for manifest in read_runs(runs_dir, Path(path).resolve()):
        manifest = _with_lost_runner(manifest, runs_dir / manifest["run_id"])
        summary = {k: manifest.get(k) for k in ("run_id", "status", "started", "ended")}
        summary["duration"] = _duration(manifest.get("started"), manifest.get("ended"))
        summary["params"] = manifest.get("params") or {}
        summary["metrics"] = manifest.get("metrics") or {}
        found.append(summary)
    return found


def cancel_run(path: str | Path, run_id: str) -> dict[str, Any]:
    """Stop a running run as Ctrl-C would: its runner ends the step processes and records
    the run as cancelled. Returns the run's manifest as it is now."""
    manifest = get_run(path, run_id)
    if manifest.get("status") != "running":
        raise RunError(
            error("NB504", f"run {run_id} is not running (it {manifest.get('status')})")
        )
    pid = _runner_pid(manifest, _runs_dir(path) / run_id)
    if pid is None:
        raise RunError(error("NB504", f"run {run_id} has no runner process to stop"))
    # A runner that ended meanwhile has said how in its run.json.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return manifest


def _duration(started: Any, ended: Any) -> float | None:
    if not isinstance(started, str) or not isinstance(ended, str):
        return None
    try:
        begin = datetime.fromisoformat(started.replace("Z", "+00:00"))
        end = datetime.fromisoformat(ended.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((end - begin).total_seconds(), 3)


def get_run(path: str | Path, run_id: str) -> dict[str, Any]:
    """A run's manifest (run.json): its status, each step's status, error and timing."""
    return _with_lost_runner(_manifest(path, run_id), _runs_dir(path) / run_id)


def read_log(path: str | Path, run_id: str, step: str) -> str:
    """A step's output so far (stdout and stderr); empty before the step starts."""
    kfp = _step_file_name(_manifest(path, run_id), step)
    log = _runs_dir(path) / run_id / "logs" / f"{kfp}.log"
    try:
        return log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def read_report(path: str | Path, run_id: str, step: str) -> str:
    """A step's HTML report (its displayed outputs)."""
    kfp = _step_file_name(_manifest(path, run_id), step)
    report = _runs_dir(path) / run_id / "reports" / f"{kfp}.html"
    try:
        return report.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise RunError(
            error(
                "NB504",
                f"step {step!r} of run {run_id} has no report (it did not "
                "run, or its report is disabled with report:disabled)",
                step=step,
            )
        ) from None


def _runs_dir(path: str | Path) -> Path:
    return Path(path).resolve().parent / STATE_DIR_NAME / "runs"


def _manifest(path: str | Path, run_id: str) -> dict[str, Any]:
    if not _RUN_ID.fullmatch(run_id):
        raise RunError(error("NB504", f"{run_id!r} is not a run id"))
    manifest = read_json(_runs_dir(path) / run_id / "run.json")
    if not isinstance(manifest, dict):
        raise RunError(error("NB504", f"no run {run_id} for {Path(path).name}"))
    return manifest


def _step_file_name(manifest: Mapping[str, Any], step: str) -> str:
    """The step's file name (its Kubeflow name), given its notebook or Kubeflow name."""
    if _STEP.fullmatch(step):
        for name, record in manifest.get("steps", {}).items():
            kfp = record.get("kfp_name")
            if step in (name, kfp) and isinstance(kfp, str) and _STEP.fullmatch(kfp):
                return kfp
    raise RunError(error("NB504", f"run {manifest.get('run_id')} has no step {step!r}"))


def _with_lost_runner(manifest: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A run whose runner process is gone without finishing is reported failed."""
    if manifest.get("status") != "running":
        return manifest
    if "runner_started" in manifest:  # the runner's own record: it names its process exactly
        from .storage import settle_lost

        return settle_lost(manifest, run_dir)
    pid = _runner_pid(manifest, run_dir)
    if pid is None or pid_exists(pid):
        return manifest
    lost = dict(manifest, status="failed")
    lost["error"] = (
        "the run's process ended before the run finished; its output is in "
        f"{run_dir / 'runner.log'}"
    )
    return lost


def _runner_pid(manifest: Mapping[str, Any], run_dir: Path) -> int | None:
    pid = manifest.get("runner_pid")
    if isinstance(pid, int):
        return pid
    text = (run_dir / "runner.pid").read_text() if (run_dir / "runner.pid").is_file() else ""
    return int(text) if text.strip().isdigit() else None

