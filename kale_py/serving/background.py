"""Local serving as the Jupyter server sees it: ``nb2pipe serve`` started in the background.

One model server per notebook: ``python -m kale_py serve NOTEBOOK --port P`` in a process of its
own session, so that it outlives the request, listening on 127.0.0.1 (reachable from the
notebook's kernel and terminals on the same machine or pod). What it serves and where is kept
in ``.nb2pipe/serving/<notebook>.json``; its output in the ``.log`` beside it. The model is
found before anything starts (no run, no ``serve:VAR``: an error of the request), and the
answer comes once the server reports the model ready, or with the server's own one-line error.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kale_py.diagnostics import CheckError, RunError, error
from kale_py.local import (
    STATE_DIR_NAME,
    kale_py_environment,
    pid_exists,
    read_json,
    write_json_atomic,
)

_DIAGNOSTIC = re.compile(r"\b(NB\d{3}): (.*)$")
#: the servers this process started, by pid: kept, so that they are reaped when they end
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def start_serving(path: str | Path, variable: str | None = None, run_id: str | None = None,
                  port: int | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Serve the notebook's ``serve:VAR`` model from a local run; where it listens."""
    from kale_py.api import check_notebook
    from kale_py.serving import service_name
    from kale_py.serving.local import find_served

    path = Path(path).resolve()
    pipeline = check_notebook(path)
    if not pipeline.ok:
        raise CheckError([d for d in pipeline.diagnostics if d.is_error])
    saved = find_served(pipeline, variable, run_id)  # NB801, NB802 before anything starts
    stop_serving(path)
    port = port or _free_port()
    name = service_name(saved.variable)
    record_file, log_file = _files(path)
    record_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "kale_py", "serve", str(path), "--port", str(port),
               "--variable", saved.variable, "--run", saved.run_id]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, cwd=path.parent, env=kale_py_environment(),
                                   stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    _STARTED[process.pid] = process
    record = {"notebook": str(path), "pid": process.pid, "port": port, "name": name,
              "variable": saved.variable, "step": saved.step, "run_id": saved.run_id,
              "url": f"http://127.0.0.1:{port}/v2/models/{name}/infer",
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(record_file, record)
    deadline = time.monotonic() + timeout
    while not _ready(port, name):
        if process.poll() is not None:
            record_file.unlink(missing_ok=True)
            _STARTED.pop(process.pid, None)
            raise _failure(log_file)
        if time.monotonic() > deadline:
            stop_serving(path)
            raise RunError(error("NB805", f"the model server did not report {name!r} ready "
                                 f"within {timeout:g} s; its output is in {log_file}"))
        time.sleep(0.2)
    return record


def serving_state(path: str | Path) -> dict[str, Any] | None:
    """The notebook's running model server (as :func:`start_serving` answered), or None."""
    record_file, _ = _files(Path(path).resolve())
    record = read_json(record_file)
    if not isinstance(record, dict) or not _alive(record.get("pid")):
        record_file.unlink(missing_ok=True)
        return None
    return record


def stop_serving(path: str | Path) -> dict[str, Any] | None:
    """Stop the notebook's model server; what it was serving, or None if none was running."""
    record = serving_state(path)
    if record is None:
        return None
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(int(record["pid"]), signal.SIGTERM)
    for _ in range(100):  # the server finishes its requests and exits
        if not _alive(record["pid"]):
            break
        time.sleep(0.05)
    else:
        with suppress(ProcessLookupError):
            os.killpg(int(record["pid"]), signal.SIGKILL)
    _files(Path(path).resolve())[0].unlink(missing_ok=True)
    return record


def _files(path: Path) -> tuple[Path, Path]:
    directory = path.parent / STATE_DIR_NAME / "serving"
    key = f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    return directory / f"{key}.json", directory / f"{key}.log"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    if pid in _STARTED:
        if _STARTED[pid].poll() is None:
            return True
        del _STARTED[pid]
        return False
    return pid_exists(pid)  # started by another server process: only ask whether it exists


def _ready(port: int, name: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{name}/ready",
                                    timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _failure(log_file: Path) -> RunError:
    """The model server's own one-line error (it exits 1 with a diagnostic)."""
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        found = _DIAGNOSTIC.search(line)
        if found:
            return RunError(error(found.group(1), found.group(2)))
    tail = lines[-1] if lines else "no output"
    return RunError(error("NB805", f"the model server stopped before it was ready ({tail}); "
                          f"its output is in {log_file}"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
