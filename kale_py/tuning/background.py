"""Tunings as the Jupyter server sees them: start one in the background, list them, read one.

A tuning started here is ``python -m kale_py tune NOTEBOOK ... --format json`` in a process
of its own session, so that it outlives the request. The search is checked before it starts
(a bad search is an error of the request), and its ``tune.json`` exists before this returns.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kale_py.diagnostics import CheckError, RunError, error
from kale_py.local import STATE_DIR_NAME, kale_py_environment, new_run_id, read_json
from kale_py.local import write_json_atomic as _write_json

_TUNE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def start_tune(path: str | Path, search: Sequence[str], *, objective: str | None = None,
               maximize: bool | None = None, trials: int | None = None,
               parallel: int | None = None, algorithm: str | None = None) -> dict[str, str]:
    """Check the search and start it; ``{"tune_id"}`` at once."""
    from kale_py.api import check_notebook
    from kale_py.tuning.space import build_search

    path = Path(path).resolve()
    pipeline = check_notebook(path)
    if not pipeline.ok:
        raise CheckError([d for d in pipeline.diagnostics if d.is_error])
    spec = build_search(pipeline, list(search), objective, maximize, algorithm, trials, parallel)
    tune_id = new_run_id()
    directory = _tunes_dir(path) / tune_id
    directory.mkdir(parents=True)
    _write_json(directory / "tune.json", {
        "tune_id": tune_id, "status": "running", "notebook": str(path),
        "objective": spec.objective, "direction": "maximize" if spec.maximize else "minimize",
        "algorithm": spec.algorithm, "trials": [], "best": None, "seconds": 0.0,
        "planned_trials": spec.trials})
    command = [sys.executable, "-m", "kale_py", "tune", str(path), "--format", "json",
               "--tune-id", tune_id, "--objective", spec.objective,
               "--maximize" if spec.maximize else "--minimize",
               "--trials", str(spec.trials), "--parallel", str(spec.parallel),
               "--algorithm", spec.algorithm]
    for item in search:
        command += ["--search", item]
    with (directory / "tuner.log").open("ab") as log:
        process = subprocess.Popen(command, cwd=path.parent, env=kale_py_environment(),
                                   stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    threading.Thread(target=process.wait, daemon=True, name=f"kale_py-tune-{tune_id}").start()
    return {"tune_id": tune_id}


def list_tunes(path: str | Path) -> list[dict[str, Any]]:
    """The notebook's tunings, newest first: id, status, objective, best value, trials."""
    notebook = str(Path(path).resolve())
    root = _tunes_dir(path)
    found = []
    for entry in sorted(root.iterdir(), reverse=True) if root.is_dir() else []:
        record = read_json(entry / "tune.json")
        if isinstance(record, dict) and record.get("notebook") == notebook:
            best = record.get("best") or {}
            found.append({"tune_id": entry.name, "status": record.get("status"),
                          "objective": record.get("objective"),
                          "direction": record.get("direction"),
                          "best": best.get("value"), "trials": len(record.get("trials", []))})
    return found


def get_tune(path: str | Path, tune_id: str) -> dict[str, Any]:
    """A tuning's record (tune.json): its trials so far, best one, status."""
    record = read_json(_tune_dir(path, tune_id) / "tune.json")
    if not isinstance(record, dict):
        raise RunError(error("NB504", f"no tuning {tune_id} for {Path(path).name}"))
    return record


def read_tune_report(path: str | Path, tune_id: str) -> str:
    """A tuning's HTML report (table and plot)."""
    report = _tune_dir(path, tune_id) / "report.html"
    try:
        return report.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(error("NB504", f"tuning {tune_id} has no report yet")) from None


def _tunes_dir(path: str | Path) -> Path:
    return Path(path).resolve().parent / STATE_DIR_NAME / "tunes"


def _tune_dir(path: str | Path, tune_id: str) -> Path:
    if not _TUNE_ID.fullmatch(tune_id):
        raise RunError(error("NB504", f"{tune_id!r} is not a tuning id"))
    return _tunes_dir(path) / tune_id

