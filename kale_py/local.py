"""Running a pipeline on this machine: what ``nb2pipe run`` does.

Each step runs as its own Python process (``python -m kale_py.runtime``) in its own process
group, with the notebook's directory as working directory; independent steps run in
parallel, up to ``jobs`` at a time. By default a step process is a fork of one process that
ran the imports and functions cells once (:mod:`kale_py.warm`), else a fresh interpreter.
A step starts once every step before it (data and ``prev:`` edges) has succeeded, or was
taken from the cache or an earlier run.

Everything a run produces lives in its run directory, ``<notebook dir>/.nb2pipe/runs/<id>/``::

    run.json        the run manifest, rewritten atomically at every status change
    steps/          the generated step programs (<step>.py) and their specs (<step>.json)
    state/<step>/   the variables a step saved, with their manifest.json
    logs/<step>.log the step's output (stdout and stderr, in order)
    reports/ metrics/ results/

Unchanged steps come from a content-addressed cache (``.nb2pipe/cache/<key>/``): the key
covers the step program, its spec, the parameter values it receives, the hashes of its
input variables, the Python version and kale_py's version.

>>> from kale_py.api import check_notebook
>>> result = run_local(check_notebook("churn.ipynb"), RunOptions(params={"EPOCHS": "3"}))
...     # doctest: +SKIP
>>> result.status, result.steps  # doctest: +SKIP
('succeeded', {'load': 'cached', 'train': 'succeeded'})

Standard library only: the command line must start fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Literal, TextIO

from . import __version__
from .diagnostics import Diagnostic, RunError, error
from .process_state import STATE_VARIABLE, is_pseudo
from .warm import Isolation, StepProcess, StepStart, StepStarter, prelude_params

if TYPE_CHECKING:
    from .codegen import StepProgram
    from .graph import Pipeline
    from .resources import Guardian, MemoryWatch, Usage

Progress = Literal["auto", "live", "plain", "quiet"]

#: Statuses after which a step's outputs are available to the steps after it.
DONE = frozenset({"succeeded", "cached", "reused"})
STATUS_ORDER = (
    "succeeded",
    "cached",
    "reused",
    "failed",
    "cancelled",
    "skipped",
    "running",
    "pending",
)
RUNTIME_MODULE = "kale_py.runtime"
STATE_DIR_NAME = ".nb2pipe"
LATEST = "latest"


@dataclass(frozen=True)
class RunOptions:
    """How to run a pipeline locally (the flags of ``nb2pipe run``).

    ``params`` holds the raw text of ``--param NAME=TEXT`` overrides, parsed by each
    parameter's type. ``only`` and ``from_step`` select a partial run; the outputs of the
    steps left out come from earlier runs. ``jobs`` defaults to the number of CPUs,
    ``run_root`` to ``<notebook dir>/.nb2pipe``.
    """

    params: Mapping[str, str] = field(default_factory=dict)
    only: tuple[str, ...] = ()
    from_step: str | None = None
    jobs: int | None = None
    cache: bool = True
    progress: Progress = "auto"
    run_root: Path | None = None
    #: Chosen by the caller when it must know the id before the run starts (the server).
    run_id: str | None = None
    #: The step runtime command; ``None`` is ``[sys.executable, "-m", "kale_py.runtime"]``.
    runtime_command: tuple[str, ...] | None = None
    #: Seconds between SIGTERM and SIGKILL when steps are cancelled or time out.
    grace_seconds: float = 5.0
    #: How steps start: ``fork`` a process that ran the imports and functions cells once,
    #: ``spawn`` a fresh one, ``auto`` fork when that is safe. ``None``: the notebook's
    #: ``local_isolation`` setting, else ``auto``.
    isolation: Isolation | None = None
    #: Extra environment variables of the step processes (``nb2pipe verify`` sets
    #: ``KALE_PY_EXPORT_DIGESTS`` through it).
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StepError:
    """Why a step failed: the message, where in the notebook, and its log file."""

    message: str
    cell: int | None
    line: int | None
    log: Path | None

    def describe(self) -> str:
        """``ZeroDivisionError: division by zero (cell 7, line 3)``."""
        where = []
        if self.cell is not None:
            where.append(f"cell {self.cell}")
        if self.line is not None:
            where.append(f"line {self.line}")
        return f"{self.message} ({', '.join(where)})" if where else self.message


@dataclass(frozen=True)
class RunResult:
    """The outcome of :func:`run_local`."""

    run_id: str
    run_dir: Path
    status: str  # succeeded | failed | cancelled
    steps: Mapping[str, str]  # step -> final status
    metrics: Mapping[str, Any]
    failed: tuple[tuple[str, StepError], ...]
    #: The signal that cancelled the run (SIGINT, SIGTERM), if one did.
    signal_number: int | None = None

    @property
    def exit_code(self) -> int:
        """The command line's exit code: 0 succeeded, 1 failed, 128 + the signal when a
        signal cancelled it (130 for Ctrl-C, 143 for SIGTERM), 130 for another cancel."""
        if self.status == "cancelled":
            return 128 + (self.signal_number or signal.SIGINT)
        return 0 if self.status == "succeeded" else 1


# --- planning: what runs, what is reused ---------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """A validated run request: nothing has been written yet."""

    pipeline: Pipeline
    params: Mapping[str, Any]  # every parameter's value (defaults and overrides)
    selected: tuple[str, ...]  # the steps to execute, in notebook order
    reuse: Mapping[str, str]  # step left out -> the earlier run whose outputs it lends
    run_root: Path
    workdir: Path
    environment: Mapping[str, str] = field(default_factory=dict)


def plan_run(pipeline: Pipeline, options: RunOptions) -> RunPlan:
    """Check that the run can start; raise :class:`RunError` with diagnostics otherwise.

    Nothing is written: the server calls this to refuse a run before starting it.
    """
    from .parameters import parse_param_overrides

    if not pipeline.ok:
        raise RunError([d for d in pipeline.diagnostics if d.is_error])
    if pipeline.notebook.path is None:
        raise RunError(error("NB503", "the notebook must be saved to a file before it can run"))
    notebook = pipeline.notebook.path.resolve()
    run_root = (options.run_root or notebook.parent / STATE_DIR_NAME).resolve()
    problems: list[Diagnostic] = []
    params: dict[str, Any] = {}
    selected: tuple[str, ...] = ()
    try:
        params = parse_param_overrides(pipeline.parameters, options.params)
    except RunError as exc:
        problems += exc.diagnostics
    try:
        selected = _selected_steps(pipeline, options)
    except RunError as exc:
        problems += exc.diagnostics
    if problems:  # every mistake in the command at once
        raise RunError(problems)
    earlier = [r for r in read_runs(run_root / "runs", notebook) if r["run_id"] != options.run_id]
    reuse = _reuse_sources(pipeline, selected, run_root / "runs", earlier)
    return RunPlan(
        pipeline, params, selected, reuse, run_root, notebook.parent, dict(options.environment)
    )


def _selected_steps(pipeline: Pipeline, options: RunOptions) -> tuple[str, ...]:
    names = [s.name for s in pipeline.steps]
    if not options.only and options.from_step is None:
        return tuple(names)
    problems: list[Diagnostic] = []
    chosen: set[str] = set()
    requests = [("--only", n) for n in options.only]
    if options.from_step is not None:
        requests.append(("--from", options.from_step))
    for flag, requested in requests:
        name = _resolve_step(pipeline, requested)
        if name is None:
            problems.append(error("NB501", _unknown_step_message(pipeline, flag, requested)))
        elif flag == "--from":
            chosen |= {name} | _descendants(pipeline, name)
        else:
            chosen.add(name)
    if problems:
        raise RunError(problems)
    return tuple(n for n in names if n in chosen)


def _resolve_step(pipeline: Pipeline, name: str) -> str | None:
    """The step called ``name``, by its notebook name or its Kubeflow name."""
    for step in pipeline.steps:
        if name in (step.name, step.kfp_name):
            return step.name
    return None


def _unknown_step_message(pipeline: Pipeline, flag: str, name: str) -> str:
    import difflib

    names = [s.name for s in pipeline.steps]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{flag} {name}: no step has this name; {hint}steps: {', '.join(names)}"


def _descendants(pipeline: Pipeline, name: str) -> set[str]:
    children: dict[str, list[str]] = {}
    for edge in pipeline.edges:
        children.setdefault(edge.source, []).append(edge.target)
    found: set[str] = set()
    todo = [name]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _reuse_sources(
    pipeline: Pipeline,
    selected: Sequence[str],
    runs_dir: Path,
    earlier: Sequence[Mapping[str, Any]],
) -> dict[str, str]:
    """For each step left out whose variables a selected step loads: the latest earlier
    run that saved them."""
    consumers: dict[str, dict[str, list[str]]] = {}  # producer -> consumer -> variables
    for name in selected:
        for var, producer in pipeline.io[name].loads.items():
            if producer not in selected:
                consumers.setdefault(producer, {}).setdefault(name, []).append(var)
    if not consumers:
        return {}
    found: dict[str, str] = {}
    problems: list[Diagnostic] = []
    for step in pipeline.steps:
        if step.name not in consumers:
            continue
        run_id = _latest_run_with_state(earlier, runs_dir, step.name, step.kfp_name)
        if run_id is None:
            problems.append(_missing_state(step.name, step.position, consumers[step.name]))
        else:
            found[step.name] = run_id
    if problems:
        raise RunError(problems)
    return found


def _latest_run_with_state(
    runs: Sequence[Mapping[str, Any]], runs_dir: Path, name: str, kfp_name: str
) -> str | None:
    for run in runs:
        record = run.get("steps", {}).get(name, {})
        run_id = str(run["run_id"])
        state = runs_dir / run_id / "state" / kfp_name / "manifest.json"
        if record.get("status") in DONE and state.is_file():
            return run_id
    return None


def _missing_state(step: str, cell: int, consumers: Mapping[str, list[str]]) -> Diagnostic:
    needs = "; ".join(f"step {c!r} needs {', '.join(v)}" for c, v in consumers.items())
    return error(
        "NB502",
        f"step {step!r} must run first: no earlier run of this notebook saved its outputs "
        f"({needs}); run the whole pipeline once (without --only/--from), or add --only {step}",
        cell=cell,
        step=step,
    )


def read_runs(runs_dir: Path, notebook: Path) -> list[dict[str, Any]]:
    """The manifests of ``notebook``'s runs in ``runs_dir``, newest first (run ids sort by
    time). Notebooks of one directory share it."""
    if not runs_dir.is_dir():
        return []
    runs = []
    for entry in sorted(runs_dir.iterdir(), key=lambda p: p.name, reverse=True):
        manifest = read_json(entry / "run.json") if entry.is_dir() else None
        if (
            isinstance(manifest, dict)
            and manifest.get("run_id") == entry.name
            and manifest.get("notebook") == str(notebook)
        ):
            runs.append(manifest)
    return runs


# --- files ---------------------------------------------------------------------------------


def new_run_id() -> str:
    """A run id that sorts by start time: ``20250101T120000.123Z-1a2b3c``."""
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{os.urandom(3).hex()}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` if it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _process_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot): with its pid, it names the process
    even after the pid is reused. None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runner_alive(manifest: Mapping[str, Any]) -> bool:
    """Whether the runner that wrote a run.json still runs (False once it died)."""
    pid, started = manifest.get("runner_pid"), manifest.get("runner_started")
    if not isinstance(pid, int):
        return False
    if started is None:  # no /proc: ask the kernel whether the pid exists
        return pid_exists(pid)
    return _process_start(pid) == started and _state(pid) not in ("Z", "X", None)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (cheap, and safe: files are replaced, never
    rewritten in place), copying across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _link_tree(source: Path, target: Path) -> None:
    for directory, _, files in os.walk(source):
        here = target / Path(directory).relative_to(source)
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            _link_or_copy(Path(directory) / name, here / name)


@dataclass(frozen=True)
class RunDirectory:
    """The paths of one run's directory."""

    path: Path

    @classmethod
    def create(cls, runs_dir: Path, run_id: str | None) -> RunDirectory:
        # A caller-chosen id may already have its directory (the server creates it to
        # answer at once); a generated one never does.
        path = runs_dir / (run_id or new_run_id())
        path.mkdir(parents=True, exist_ok=run_id is not None)
        for sub in ("steps", "state", "logs", "reports", "metrics", "results"):
            (path / sub).mkdir(exist_ok=True)
        write_text_atomic(runs_dir / LATEST, path.name + "\n")
        return cls(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def program(self, kfp_name: str) -> Path:
        return self.path / "steps" / f"{kfp_name}.py"

    def spec(self, kfp_name: str) -> Path:
        return self.path / "steps" / f"{kfp_name}.json"

    def state(self, kfp_name: str) -> Path:
        return self.path / "state" / kfp_name

    def log(self, kfp_name: str) -> Path:
        return self.path / "logs" / f"{kfp_name}.log"

    def report(self, kfp_name: str) -> Path:
        return self.path / "reports" / f"{kfp_name}.html"

    def metrics(self, kfp_name: str) -> Path:
        return self.path / "metrics" / f"{kfp_name}.json"

    def result(self, kfp_name: str) -> Path:
        return self.path / "results" / f"{kfp_name}.json"

    def outputs(self, kfp_name: str) -> dict[str, Path]:
        """A step's files besides its state, by the name they have in the cache."""
        return {
            "report.html": self.report(kfp_name),
            "metrics.json": self.metrics(kfp_name),
            "result.json": self.result(kfp_name),
            "log.txt": self.log(kfp_name),
        }

    def adopt(self, kfp_name: str, state: Path, outputs: Mapping[str, Path]) -> None:
        """Link another run's (or the cache's) outputs of a step into this run."""
        _link_tree(state, self.state(kfp_name))
        for key, target in self.outputs(kfp_name).items():
            source = outputs.get(key)
            if source is not None and source.is_file():
                _link_or_copy(source, target)

    def forget(self, kfp_name: str) -> None:
        """Remove what a failed :meth:`adopt` left behind."""
        self.clear(kfp_name)
        self.log(kfp_name).unlink(missing_ok=True)

    def clear(self, kfp_name: str) -> None:
        """Remove a step's state, report, metrics and result (not its log)."""
        shutil.rmtree(self.state(kfp_name), ignore_errors=True)
        for path in (self.report(kfp_name), self.metrics(kfp_name), self.result(kfp_name)):
            path.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- the run manifest --------------------------------------------------------------------


@dataclass
class _StepRecord:
    """One step's entry in run.json."""

    kfp_name: str
    status: str = "pending"  # pending running succeeded failed skipped cached reused cancelled
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    exit_code: int | None = None
    error: dict[str, Any] | None = None
    cache_key: str | None = None
    reused_from: str | None = None
    reason: str | None = None  # why a step was skipped
    attempts: int = 0
    program_hash: str | None = None  # of the step program and spec, to tell stale reuse
    peak_rss_bytes: int | None = None  # the step process's peak resident memory
    cpu_seconds: float | None = None  # its user + system CPU time
    warnings: list[str] = field(default_factory=list)  # e.g. a damaged cache entry removed
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] | None = None  # seconds: start, load, code, save, cpu

    def to_dict(self) -> dict[str, Any]:
        return {
            "kfp_name": self.kfp_name,
            "status": self.status,
            "started": self.started,
            "ended": self.ended,
            "seconds": self.seconds,
            "exit_code": self.exit_code,
            "error": self.error,
            "cache_key": self.cache_key,
            "reused_from": self.reused_from,
            "reason": self.reason,
            "attempts": self.attempts,
            "program_hash": self.program_hash,
            "peak_rss_bytes": self.peak_rss_bytes,
            "cpu_seconds": self.cpu_seconds,
            "warnings": self.warnings,
            "timings": self.timings,
        }


@dataclass
class _RunManifest:
    """run.json: written whole, atomically, by the one thread that changes it."""

    directory: RunDirectory
    notebook: Path
    params: Mapping[str, Any]
    steps: dict[str, _StepRecord]
    request: Mapping[str, Any]
    status: str = "running"
    started: str = field(default_factory=_now)
    ended: str | None = None
    size_bytes: int | None = None
    #: How the steps started: isolation, notes (why not forked), prelude_seconds.
    start: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for record in self.steps.values():
            if record.status in DONE:
                merged.update(record.metrics)
        return merged

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.directory.run_id,
            "notebook": str(self.notebook),
            "status": self.status,
            "started": self.started,
            "ended": self.ended,
            "params": dict(self.params),
            "request": dict(self.request),
            "steps": {name: r.to_dict() for name, r in self.steps.items()},
            "metrics": self.metrics(),
            "size_bytes": self.size_bytes,
            "runner_pid": os.getpid(),
            "runner_started": _process_start(os.getpid()),
            "step_start": self.start,
            "kale_py": __version__,
        }

    def write(self) -> None:
        write_json_atomic(self.directory.path / "run.json", self.to_dict())


# --- the cache -----------------------------------------------------------------------------


class DamagedEntry(Exception):
    """A cache entry failed its checks; it has been removed. The message says why."""


@dataclass(frozen=True)
class StepCache:
    """Step outputs by derivation (see kale_py.derivation):
    ``<root>/<key>/{state/,report.html,...,seal}``.

    Entries hold hard links to the run's files (never copies where links work). An entry is
    served only when its seal (kale_py.integrity), its signed manifest and every file's
    digest check out; otherwise it is removed and the step runs again.
    """

    root: Path
    secret: bytes | None = None

    @staticmethod
    def key(program: StepProgram, params: Mapping[str, Any], inputs: Mapping[str, Any]) -> str:
        from .derivation import import_versions, step_key

        versions = import_versions(program.source)
        return step_key(program.source, program.spec, params, inputs, versions)

    def restore(self, key: str, run: RunDirectory, kfp_name: str, step: str) -> bool:
        """Link the cached outputs into the run; False on a miss. Raises DamagedEntry
        (after removing the entry) when an entry is there but fails its checks."""
        entry = self.root / key
        if not (entry / "result.json").is_file():
            return False
        problem = self._problem(key, entry, step)
        if problem is not None:
            self.evict(key)
            raise DamagedEntry(problem)
        try:
            cached = {name: entry / name for name in run.outputs(kfp_name)}
            run.adopt(kfp_name, entry / "state", cached)
        except OSError:
            run.forget(kfp_name)
            return False
        with contextlib.suppress(OSError):
            os.utime(entry)  # least recently used entries go first when space runs out
        return True

    def _problem(self, key: str, entry: Path, step: str) -> str | None:
        if self.secret is None:
            return None
        from . import integrity, marshal

        if not integrity.sealed(self.secret, key, entry):
            return "its seal does not match (edited, moved, or written by someone else)"
        try:
            manifest = marshal.read_manifest(entry / "state", key=self.secret, producer=step)
            marshal.check_state(entry / "state", manifest, allowed_root=entry, producer=step)
        except marshal.StateError as exc:  # names the variable and the file
            return str(exc).split(". Hint:")[0]
        return None

    def evict(self, key: str) -> None:
        """Remove an entry (renamed away first, so no reader sees half of it)."""
        entry = self.root / key
        trash = self.root / f".{key}.{os.getpid()}.evicted"
        try:
            os.rename(entry, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def store(self, key: str, run: RunDirectory, kfp_name: str) -> None:
        """Keep a succeeded step's outputs; the entry appears whole (rename) or not at all."""
        entry = self.root / key
        if entry.exists():
            return
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        try:
            _link_tree(run.state(kfp_name), tmp / "state")
            for name, path in run.outputs(kfp_name).items():
                if path.is_file():
                    _link_or_copy(path, tmp / name)
            if self.secret is not None:
                from .integrity import SEAL_NAME, seal

                (tmp / SEAL_NAME).write_text(seal(self.secret, key, tmp) + "\n")
            os.rename(tmp, entry)
        except OSError:
            # A full disk or a concurrent run storing the same key: the cache is an
            # optimisation, the run goes on without it.
            shutil.rmtree(tmp, ignore_errors=True)


# --- terminal output -----------------------------------------------------------------------


class _Console:
    """Step output lines prefixed with the step name, event lines, and in a terminal a
    status line redrawn in place. Called from the output threads: everything is locked."""

    def __init__(self, out: TextIO, progress: Progress) -> None:
        if progress == "auto":
            progress = "live" if _isatty(out) else "plain"
        self.out = out
        self.mode = progress
        self.lock = threading.Lock()
        self.status_text = ""
        self.symbols = _symbols(out)

    def step_output(self, step: str, line: str) -> None:
        if self.mode != "quiet":
            self._print(f"[{step}] {line}")

    def event(self, kind: str, text: str) -> None:
        """An event line: ``kind`` is started, done, failed, skipped, retry, warning or
        cancelled."""
        if self.mode == "live" and kind == "started":
            return  # the status line shows what runs
        if self.mode != "quiet":
            self._print(f"{self.symbols[kind]} {text}")

    def summary(self, lines: Iterable[str]) -> None:
        for line in lines:
            self._print(line)

    def status(self, text: str) -> None:
        if self.mode != "live" or text == self.status_text:
            return
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.status_text = text
            self._redraw()

    def close(self) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            if self.status_text:
                self.out.write("\r\x1b[K")
                self.status_text = ""
            self.out.flush()

    def _print(self, line: str) -> None:
        with self.lock:
            try:
                if self.status_text:
                    self.out.write("\r\x1b[K")
                self.out.write(line + "\n")
                self._redraw()
            except (OSError, ValueError):
                # The reader went away (`nb2pipe run ... | head`): the run goes on, its
                # output is in the logs.
                self.mode, self.status_text = "quiet", ""

    def _redraw(self) -> None:
        if self.status_text:
            width = shutil.get_terminal_size().columns
            self.out.write("\r\x1b[K" + self.status_text[: max(width - 1, 10)])
        self.out.flush()


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _symbols(out: TextIO) -> dict[str, str]:
    fancy = {
        "started": "▶",
        "done": "✔",
        "failed": "✘",
        "skipped": "–",
        "retry": "↻",
        "cancelled": "■",
        "reused": "✔",
        "warning": "⚠",
        "sep": " · ",
    }
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        "".join(fancy.values()).encode(encoding)
        return fancy
    except (UnicodeEncodeError, LookupError):
        return {
            "started": ">",
            "done": "ok",
            "failed": "FAILED",
            "skipped": "-",
            "retry": "retry",
            "cancelled": "cancelled",
            "reused": "ok",
            "warning": "warning:",
            "sep": ", ",
        }


# --- interrupts ----------------------------------------------------------------------------


class _Interrupts:
    """SIGINT and SIGTERM set a flag the scheduler polls, instead of raising in the middle
    of bookkeeping: run.json must never be left half-updated."""

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None  # the first signal received
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.first is None:
            self.first = signum


# --- running steps -------------------------------------------------------------------------


@dataclass
class _Process:
    name: str
    proc: StepProcess
    started: float  # monotonic
    deadline: float | None
    attempt: int
    exited_at: float | None = None
    timed_out: bool = False
    reader: threading.Thread | None = None
    memory: MemoryWatch | None = None  # the step's limit:memory, watched while it runs
    over_memory: bool = False
    usage: Usage | None = None  # peak memory and CPU time, once it has exited


@dataclass(frozen=True)
class _Context:
    plan: RunPlan
    programs: Mapping[str, StepProgram]
    run: RunDirectory
    manifest: _RunManifest
    cache: StepCache
    use_cache: bool
    console: _Console
    interrupts: _Interrupts
    jobs: int
    runtime: tuple[str, ...]
    grace: float
    starter: StepStarter
    key_file: Path | None = None  # the user's key, which signs the steps' manifests
    guardian: Guardian | None = None  # kills the step process groups if the runner dies


class _Scheduler:
    """Starts steps as their predecessors finish, up to ``jobs`` at a time."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.steps = {s.name: s for s in ctx.plan.pipeline.steps}
        self.order = [s.name for s in ctx.plan.pipeline.steps]
        self.records = ctx.manifest.steps
        self.preds, self.children = _adjacency(ctx.plan)
        self.running: dict[str, _Process] = {}
        self.events: queue.Queue[tuple[str, int, int]] = queue.Queue()
        self.looked_up: set[str] = set()
        self.started = time.monotonic()

    def run(self) -> None:
        """Run every selected step; return when all are done, or cancelled."""
        try:
            while not self.ctx.interrupts.count:
                self._start_ready()
                if not self.running:
                    break
                self._wait(0.1)
                self._watch()
                self._show_status()
        finally:
            # Also reached on a bug (an exception): never leave children behind.
            if self.running or self.ctx.interrupts.count:
                self._cancel()
        reason = "run cancelled" if self.ctx.interrupts.count else "not run"
        for name in self.order:
            if self.records[name].status == "pending":
                self._set(name, "skipped", reason=reason)

    # -- starting ------------------------------------------------------------------------

    def _start_ready(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for name in self.order:
                if self.ctx.interrupts.count:
                    return
                if self.records[name].status != "pending" or not self._ready(name):
                    continue
                if self._from_cache(name):
                    progressed = True
                elif len(self.running) < self.ctx.jobs:
                    self._launch(name, attempt=1)

    def _prelude_output(self, log: Path, output: bytes) -> list[str]:
        """What the imports and functions cells printed in the warm process: first in
        every forked step's log, as a fresh process prints it; the lines to show once."""
        if not output:
            return []
        with log.open("ab") as f:
            f.write(output)
        if not self.ctx.starter.show_prelude_output():
            return []
        return output.decode("utf-8", "replace").splitlines()

    def _ready(self, name: str) -> bool:
        return all(self.records[p].status in DONE for p in self.preds[name])

    def _from_cache(self, name: str) -> bool:
        record, kfp = self.records[name], self.steps[name].kfp_name
        if name in self.looked_up:
            return False
        # The key is recorded even when the cache is not read: the outputs of a run with
        # --no-cache (or cache:disabled) refresh the cache for the next run.
        self.looked_up.add(name)
        record.cache_key = self._cache_key(name)
        if (
            record.cache_key is None
            or not self.ctx.use_cache
            or not _cache_enabled(self.ctx.plan.pipeline, name)
        ):
            return False
        try:
            if not self.ctx.cache.restore(record.cache_key, self.ctx.run, kfp, name):
                return False
        except DamagedEntry as damaged:
            text = (
                f"{name}: the cached outputs are damaged or not yours ({damaged}); "
                "removed from the cache, running the step again"
            )
            record.warnings.append(text)
            self.ctx.console.event("warning", text)
            return False
        result = read_json(self.ctx.run.result(kfp)) or {}
        self.records[name].metrics = dict(result.get("metrics") or {})
        now = _now()
        self._set(name, "cached", started=now, ended=now, seconds=0.0)
        self.ctx.console.event("done", f"{name} cached")
        return True

    def _cache_key(self, name: str) -> str | None:
        program = self.ctx.programs[name]
        inputs: dict[str, Any] = {}
        for var, producer in program.spec.get("inputs", {}).items():
            # A producer's derivation stands for its outputs, unless its cache is off (it
            # may read something outside the notebook): then the content digest does.
            derived = self.records[producer].cache_key
            if derived and _cache_enabled(self.ctx.plan.pipeline, producer):
                inputs[var] = f"derivation:{derived}"
                continue
            state = self.ctx.run.state(self.steps[producer].kfp_name)
            manifest = read_json(state / "manifest.json")
            if not isinstance(manifest, dict):
                return None
            # pseudo-variables (library settings, generators) travel in one record
            saved = STATE_VARIABLE if is_pseudo(var) else var
            inputs[var] = (manifest.get("variables", {}).get(saved) or {}).get("hash")
        params = {p: self.ctx.plan.params[p] for p in program.spec.get("parameters", {})}
        return StepCache.key(program, params, inputs)

    def _launch(self, name: str, attempt: int) -> None:
        if self.ctx.starter.prelude_failed and (
            self.running or any(r.status == "failed" for r in self.records.values())
        ):
            # One step shows the failure with its cell and line; the others cannot run.
            self._set(name, "skipped", reason="an imports or functions cell failed")
            self.ctx.console.event("skipped", f"{name} skipped (an imports cell failed)")
            return
        kfp = self.steps[name].kfp_name
        command = _step_command(self.ctx, name)
        log = self.ctx.run.log(kfp)
        if attempt > 1:
            with log.open("ab") as f:
                f.write(f"--- attempt {attempt} ---\n".encode())
        else:
            log.write_bytes(b"")
        self.ctx.run.clear(kfp)  # a retry must not see what the failed attempt left
        try:
            started = self.ctx.starter.start(
                _step_start(self.ctx, name, command), lambda: bool(self.ctx.interrupts.count)
            )
        except OSError as exc:
            self._set(name, "running", started=_now(), attempts=attempt)
            self._failed(name, StepError(f"the step process cannot start: {exc}", None, None, log))
            return
        if started is None:
            return  # interrupted while the imports cell ran: the run is being cancelled
        proc, prelude_output = started
        shown = self._prelude_output(log, prelude_output)
        from .resources import memory_limit

        if self.ctx.guardian is not None:
            self.ctx.guardian.watch(proc.pid)  # the step leads its own process group
        settings = _settings(self.ctx.plan.pipeline, name)
        timeout = settings.timeout
        now = time.monotonic()
        process = _Process(name, proc, now, now + timeout if timeout else None, attempt)
        process.memory = memory_limit(dict(settings.limits))
        process.reader = threading.Thread(
            target=_pump,
            args=(process, log, self.ctx.console, self.events),
            daemon=True,
            name=f"kale_py-{kfp}",
        )
        for line in shown:
            self.ctx.console.step_output(name, line)
        process.reader.start()
        self.running[name] = process
        record = self.records[name]
        record.attempts = attempt
        if attempt == 1:
            self._set(name, "running", started=_now())
            self.ctx.console.event("started", f"{name} started")
        else:
            self.ctx.manifest.write()

    # -- finishing -----------------------------------------------------------------------

    def _wait(self, timeout: float) -> None:
        with contextlib.suppress(queue.Empty):
            event = self.events.get(timeout=timeout)
            while True:
                self._finish(*event)
                event = self.events.get_nowait()

    def _finish(self, name: str, attempt: int, code: int) -> None:
        process = self.running.get(name)
        if process is None or process.attempt != attempt:
            return
        del self.running[name]
        _kill_group(process.proc.pid, signal.SIGKILL)  # whatever the step left running
        self._released(process)
        kfp = self.steps[name].kfp_name
        result = read_json(self.ctx.run.result(kfp))
        _measured_peak(process, result)
        failure = _memory_failure(process, self.ctx.run.log(kfp)) or _failure(
            process, code, result, self.ctx.run.log(kfp)
        )
        self._record_usage(name, process)
        retries = _settings(self.ctx.plan.pipeline, name).retry or 0
        if failure is not None and attempt <= retries:
            self.ctx.console.event(
                "retry",
                f"{name} failed ({failure.describe()}); retrying "
                f"(attempt {attempt + 1} of {retries + 1})",
            )
            self._launch(name, attempt + 1)
            return
        record = self.records[name]
        record.exit_code = code
        record.timings = (result or {}).get("timings") or None
        if failure is None:
            record.metrics = dict((result or {}).get("metrics") or {})
            if record.cache_key is not None:
                self.ctx.cache.store(record.cache_key, self.ctx.run, kfp)
            self._finished(name, "succeeded")
            self.ctx.console.event("done", f"{name} {record.seconds:.1f}s")
        else:
            self._failed(name, failure, ((result or {}).get("error") or {}).get("type"))

    def _released(self, process: _Process) -> None:
        if self.ctx.guardian is not None:
            self.ctx.guardian.release(process.proc.pid)

    def _record_usage(self, name: str, process: _Process) -> None:
        record = self.records[name]
        if process.usage is not None:
            record.peak_rss_bytes = process.usage.peak_rss_bytes
            record.cpu_seconds = process.usage.cpu_seconds

    def _failed(self, name: str, failure: StepError, kind: str | None = None) -> None:
        self.records[name].error = {
            "message": failure.message,
            "cell": failure.cell,
            "line": failure.line,
            "type": kind,
        }
        self._finished(name, "failed")
        self.ctx.console.event("failed", f"{name} failed: {failure.describe()}")
        self._skip_descendants(name)

    def _finished(self, name: str, status: str) -> None:
        record, ended = self.records[name], _now()
        seconds = _parse_time(ended) - _parse_time(record.started) if record.started else None
        self._set(name, status, ended=ended, seconds=None if seconds is None else round(seconds, 3))

    def _skip_descendants(self, failed: str) -> None:
        todo = [failed]
        while todo:
            for child in self.children[todo.pop()]:
                if self.records[child].status == "pending":
                    self.records[child].status = "skipped"
                    self.records[child].reason = f"{failed} failed"
                    self.ctx.console.event("skipped", f"{child} skipped ({failed} failed)")
                    todo.append(child)
        self.ctx.manifest.write()

    def _watch(self) -> None:
        """Time-outs, and steps that exited while something they started holds their output."""
        now = time.monotonic()
        for process in list(self.running.values()):
            if process.deadline is not None and now > process.deadline and not process.timed_out:
                process.timed_out = True
                _terminate(process, self.ctx.grace)
            if process.memory is not None and not process.over_memory and (
                process.memory.over(process.proc.pid)
            ):
                process.over_memory = True
                _kill_group(process.proc.pid, signal.SIGKILL)
            if process.exited_at is None and _exited(process):
                process.exited_at = now
            elif process.exited_at is not None and now - process.exited_at > 1.0:
                _kill_group(process.proc.pid, signal.SIGKILL)

    # -- cancelling ----------------------------------------------------------------------

    def _cancel(self) -> None:
        """Stop every step: SIGTERM to each process group, SIGKILL after the grace period
        (or at once on a second Ctrl-C)."""
        for process in self.running.values():
            _kill_group(process.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.ctx.grace
        while self.running and time.monotonic() < deadline and self.ctx.interrupts.count < 2:
            with contextlib.suppress(queue.Empty):
                self._cancelled(self.events.get(timeout=0.05)[0])
            self._show_status()
        for name in list(self.running):
            self._cancelled(name)

    def _cancelled(self, name: str) -> None:
        process = self.running.pop(name, None)
        if process is None:
            return
        _kill_group(process.proc.pid, signal.SIGKILL)
        self._released(process)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.proc.wait(timeout=self.ctx.grace)
        if process.reader is not None:
            process.reader.join(timeout=1.0)
        self.records[name].exit_code = process.proc.returncode
        self._finished(name, "cancelled")
        self.ctx.console.event("cancelled", f"{name} cancelled")

    # -- bookkeeping ---------------------------------------------------------------------

    def _set(self, name: str, status: str, **fields: Any) -> None:
        record = self.records[name]
        record.status = status
        for key, value in fields.items():
            setattr(record, key, value)
        self.ctx.manifest.write()
        self._show_status()

    def _show_status(self) -> None:
        counts = dict.fromkeys(("done", "failed"), 0)
        for record in self.records.values():
            if record.status in DONE:
                counts["done"] += 1
            elif record.status == "failed":
                counts["failed"] += 1
        total = len(self.ctx.plan.selected) + len(self.ctx.plan.reuse)
        running = f"{len(self.running)} running"
        if self.running:
            running += f" ({', '.join(self.running)})"
        elapsed = f"{time.monotonic() - self.started:.0f}s"
        parts = [f"{counts['done']}/{total} done", running, f"{counts['failed']} failed", elapsed]
        self.ctx.console.status(self.ctx.console.symbols["sep"].join(parts))


def _adjacency(plan: RunPlan) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Predecessors and children among the steps that take part in the run.

    A step left out of a partial run is not waited for; the steps whose variables are
    needed were reused before scheduling starts.
    """
    taking_part = set(plan.selected) | set(plan.reuse)
    preds: dict[str, list[str]] = {s.name: [] for s in plan.pipeline.steps}
    children: dict[str, list[str]] = {s.name: [] for s in plan.pipeline.steps}
    for edge in plan.pipeline.edges:
        if edge.source in taking_part and edge.target in taking_part:
            preds[edge.target].append(edge.source)
            children[edge.source].append(edge.target)
    return preds, children


def _pump(
    process: _Process, log: Path, console: _Console, events: queue.Queue[tuple[str, int, int]]
) -> None:
    """Copy a step's output to its log and the console, line by line, as it comes."""
    stream = process.proc.stdout
    assert stream is not None
    log_file: IO[bytes] | None = None
    try:
        log_file = log.open("ab")
        for raw in iter(stream.readline, b""):
            if log_file is not None:
                log_file = _append(log_file, raw)
            console.step_output(process.name, raw.decode("utf-8", "replace").rstrip("\r\n"))
    finally:
        # Whatever happened here, the scheduler must hear that the step ended.
        if log_file is not None:
            log_file.close()
        stream.close()
        events.put((process.name, process.attempt, _reaped(process)))


def _reaped(process: _Process) -> int:
    """Wait for the step process, keeping its peak memory and CPU time."""
    from .resources import reap

    proc = process.proc
    if not isinstance(proc, subprocess.Popen):  # a fork of the warm process: not our child
        return proc.wait()
    code, usage = reap(proc.pid)
    if usage is None:  # reaped elsewhere (a cancel): no usage figures
        return proc.wait()
    process.usage = usage
    proc.returncode = code
    return code


def _append(log_file: IO[bytes], raw: bytes) -> IO[bytes] | None:
    """Write one line to the log; on a write error (a full disk) stop logging, but keep
    reading: a step blocked on a full pipe would never end."""
    try:
        log_file.write(raw)
        log_file.flush()
        return log_file
    except OSError:
        log_file.close()
        return None


def _measured_peak(process: _Process, result: Any) -> None:
    """The peak a step reports for itself is its own; the kernel's rusage of an exec'd child
    also counts the parent's memory at the fork (a large runner would inflate it)."""
    from .resources import Usage

    own = result.get("peak_rss_bytes") if isinstance(result, dict) else None
    cpu = result.get("cpu_seconds") if isinstance(result, dict) else None
    seen = process.memory.seen if process.memory is not None else 0
    if process.usage is None:  # a forked step: only what it reports (and what was seen)
        if isinstance(own, int) or seen:
            peak = max(own, seen) if isinstance(own, int) else seen
            process.usage = Usage(peak, float(cpu) if isinstance(cpu, (int, float)) else 0.0)
    elif isinstance(own, int) or seen:
        peak = max(own, seen) if isinstance(own, int) else seen
        process.usage = Usage(peak, process.usage.cpu_seconds)


def _memory_failure(process: _Process, log: Path) -> StepError | None:
    """A step over its limit:memory fails as the cluster's OOM killer would fail it."""
    watch, usage = process.memory, process.usage
    peak = usage.peak_rss_bytes if usage is not None else 0
    if watch is None or not (process.over_memory or peak > watch.limit):
        return None
    return StepError(watch.message(process.name, peak), None, None, log)


def _failure(process: _Process, code: int, result: Any, log: Path) -> StepError | None:
    """Why a step failed, from its result file and exit code; None if it succeeded."""
    error_info = result.get("error") if isinstance(result, dict) else None
    if process.timed_out:
        seconds = int((process.deadline or process.started) - process.started)
        return StepError(f"timed out after {seconds} s (timeout:{seconds})", None, None, log)
    if code == 0 and isinstance(result, dict) and result.get("status") == "succeeded":
        return None
    if isinstance(error_info, dict):
        kind, message = error_info.get("type"), str(error_info.get("message") or "")
        text = f"{kind}: {message}" if kind and not message.startswith(f"{kind}") else message
        return StepError(
            text or "the step failed", error_info.get("cell"), error_info.get("line"), log
        )
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return StepError(f"the step process was killed by {name}", None, None, log)
    return StepError(
        f"the step process exited with code {code} without a result; see its log", None, None, log
    )


def _exited(process: _Process) -> bool:
    from .resources import exited

    proc = process.proc
    if not isinstance(proc, subprocess.Popen):  # a fork: the warm process reports its exit
        return proc.poll() is not None
    return proc.returncode is not None or exited(proc.pid)


def _kill_group(pid: int, sig: int) -> None:
    # The step is its process group's leader: the group id outlives it while any process
    # of the group lives, so it cannot name someone else's processes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _terminate(process: _Process, grace: float) -> None:
    """SIGTERM now, SIGKILL after ``grace`` seconds if the step is still there."""
    _kill_group(process.proc.pid, signal.SIGTERM)
    timer = threading.Timer(grace, _kill_group, args=(process.proc.pid, signal.SIGKILL))
    timer.daemon = True
    timer.start()


def _step_command(ctx: _Context, name: str) -> list[str]:
    run, program = ctx.run, ctx.programs[name]
    kfp = program.kfp_name
    command = [*ctx.runtime, "--program", str(run.program(kfp)), "--spec", str(run.spec(kfp))]
    kfp_names = {s.name: s.kfp_name for s in ctx.plan.pipeline.steps}
    for producer in sorted(set(program.spec.get("inputs", {}).values())):
        command += ["--state-in", f"{producer}={run.state(kfp_names[producer])}"]
    command += [
        "--state-out",
        str(run.state(kfp)),
        "--report-out",
        str(run.report(kfp)),
        "--metrics-out",
        str(run.metrics(kfp)),
        "--result-out",
        str(run.result(kfp)),
    ]
    for param in program.spec.get("parameters", {}):
        command += ["--param", f"{param}={json.dumps(ctx.plan.params[param])}"]
    command += ["--workdir", str(ctx.plan.workdir), "--allowed-root", str(run.path)]
    if ctx.key_file is not None:
        command += ["--key-file", str(ctx.key_file)]
    return command


def _step_start(ctx: _Context, name: str, command: Sequence[str]) -> StepStart:
    program, kfp = ctx.programs[name], ctx.programs[name].kfp_name
    params = {p: json.dumps(ctx.plan.params[p]) for p in program.spec.get("parameters", {})}
    return StepStart(
        tuple(command[len(ctx.runtime) :]),
        ctx.run.program(kfp),
        ctx.run.spec(kfp),
        ctx.plan.workdir,
        prelude_params(program.source, program.spec["cells"], params),
    )


def _step_environment() -> dict[str, str]:
    from .resources import PARENT_ENV

    env = kale_py_environment()
    env[PARENT_ENV] = str(os.getpid())  # a step dies with its runner (see resources.py)
    # Output must reach the log as it is printed, not when a buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def kale_py_environment() -> dict[str, str]:
    """This process's environment, in which ``python -m kale_py...`` imports this kale_py
    from any working directory, installed or not (a source checkout)."""
    import site

    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    # An installed kale_py is found anyway; putting site-packages on PYTHONPATH would
    # place it before the standard library.
    if package_parent in {*site.getsitepackages(), site.getusersitepackages()}:
        return env
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([package_parent, *paths])
    return env


def _settings(pipeline: Pipeline, name: str) -> Any:
    return pipeline.step(name).settings.merged_over(pipeline.settings.steps_defaults)


def _cache_enabled(pipeline: Pipeline, name: str) -> bool:
    cache = _settings(pipeline, name).cache
    return bool(cache if cache is not None else pipeline.settings.enable_caching)


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- the entry point -----------------------------------------------------------------------


def run_local(
    pipeline: Pipeline, options: RunOptions | None = None, out: TextIO | None = None
) -> RunResult:
    """Run a checked pipeline on this machine and wait for the end.

    Raises :class:`RunError` before anything runs if the pipeline has errors or the
    options do not fit it. A failed or cancelled step does not raise: see
    :attr:`RunResult.status` and :attr:`RunResult.failed`.
    """
    from .codegen import generate_programs
    from .integrity import key_path, user_key
    from .resources import Guardian
    from .storage import storage_limit

    options = options or RunOptions()
    out = out if out is not None else sys.stdout
    plan = plan_run(pipeline, options)
    secret = user_key()  # before anything is written: an unreadable key stops the run
    # a bad setting, too (LimitError: a usage error)
    limit = storage_limit(plan.run_root, pipeline.notebook.metadata)
    programs = generate_programs(pipeline)
    run = RunDirectory.create(plan.run_root / "runs", options.run_id)
    manifest = _new_manifest(plan, run, options, programs)
    console = _Console(out, options.progress)
    starter = _starter(plan, options)
    with _Interrupts() as interrupts:
        try:
            _write_programs(run, programs)
            manifest.write()
            _reuse(plan, run, manifest, console)
            guardian = Guardian()
            ctx = _Context(
                plan,
                programs,
                run,
                manifest,
                StepCache(plan.run_root / "cache", secret),
                options.cache,
                console,
                interrupts,
                options.jobs or os.cpu_count() or 1,
                options.runtime_command or (sys.executable, "-m", RUNTIME_MODULE),
                options.grace_seconds,
                starter,
                key_path(),
                guardian,
            )
            try:
                _Scheduler(ctx).run()
            finally:
                guardian.close()
            manifest.status = _final_status(manifest)
        except BaseException as exc:
            _abandon(manifest, exc)
            raise
        finally:
            starter.close()
            manifest.start = _start_record(starter)
            manifest.ended = _now()
            manifest.size_bytes = directory_bytes(run.path)
            # Before the final status: whoever waits for it finds the runner done.
            removed = _keep_under_limit(plan.run_root, limit, run, manifest.status)
            manifest.write()
            console.close()
    result = dataclasses.replace(_result(manifest, run), signal_number=interrupts.first)
    console.summary(_summary(result, manifest, console.symbols, pipeline))
    if removed:
        console.summary([removed])
    return result


def directory_bytes(path: Path) -> int:
    """The disk space a run's directory holds (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(folder, name))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
    return total


def _keep_under_limit(root: Path, limit: Any, run: RunDirectory, status: str) -> str | None:
    """After the run: older runs' state and unused cache entries go when over the limit.
    Returns the line that says what was removed, if anything was."""
    from .storage import enforce

    try:
        return enforce(root, limit, keep=[run.run_id], ending={run.run_id: status}).line(limit)
    except OSError as exc:
        return f"warning: storage: could not clean up {root}: {exc}"
def _starter(plan: RunPlan, options: RunOptions) -> StepStarter:
    isolation = options.isolation or plan.pipeline.settings.local_isolation
    env = {**_step_environment(), **plan.environment}
    return StepStarter(isolation, sys.executable, options.runtime_command, plan.workdir, env)


def _start_record(starter: StepStarter) -> dict[str, Any]:
    """run.json's ``step_start``: how the steps started, and why not forked."""
    return {
        "isolation": starter.isolation,
        "notes": list(starter.notes),
        "prelude_seconds": starter.prelude_seconds,
    }


def _new_manifest(
    plan: RunPlan, run: RunDirectory, options: RunOptions, programs: Mapping[str, StepProgram]
) -> _RunManifest:
    records = {
        s.name: _StepRecord(s.kfp_name, program_hash=_program_hash(programs[s.name]))
        for s in plan.pipeline.steps
    }
    for name, record in records.items():
        if name not in plan.selected and name not in plan.reuse:
            record.status, record.reason = "skipped", "not selected"
    request = {
        "only": list(options.only),
        "from": options.from_step,
        "cache": options.cache,
        "overrides": dict(options.params),
    }
    assert plan.pipeline.notebook.path is not None
    return _RunManifest(run, plan.pipeline.notebook.path.resolve(), plan.params, records, request)


def _program_hash(program: StepProgram) -> str:
    text = program.source + json.dumps(program.spec, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_programs(run: RunDirectory, programs: Mapping[str, StepProgram]) -> None:
    for program in programs.values():
        run.program(program.kfp_name).write_text(program.source, encoding="utf-8")
        spec = json.dumps(program.spec, indent=2, sort_keys=True) + "\n"
        run.spec(program.kfp_name).write_text(spec, encoding="utf-8")


def _reuse(plan: RunPlan, run: RunDirectory, manifest: _RunManifest, console: _Console) -> None:
    """Link the outputs of the steps a partial run leaves out from the earlier runs."""
    for name, source_id in plan.reuse.items():
        kfp = plan.pipeline.step(name).kfp_name
        source = RunDirectory(run.path.parent / source_id)
        try:
            run.adopt(kfp, source.state(kfp), source.outputs(kfp))
        except OSError as exc:
            run.forget(kfp)
            raise RunError(
                error(
                    "NB502",
                    f"step {name!r}: the outputs of run {source_id} cannot "
                    f"be reused ({exc}); run the step again",
                    step=name,
                )
            ) from None
        record = manifest.steps[name]
        record.status, record.reused_from = "reused", source_id
        record.started = record.ended = _now()
        record.metrics = dict((read_json(source.result(kfp)) or {}).get("metrics") or {})
        earlier = (read_json(source.path / "run.json") or {}).get("steps", {}).get(name, {})
        stale = earlier.get("program_hash") != record.program_hash
        record.cache_key = None if stale else earlier.get("cache_key")
        note = "; its code has changed since: run it to update" if stale else ""
        console.event("reused", f"{name} reused from run {source_id}{note}")
    manifest.write()


def _final_status(manifest: _RunManifest) -> str:
    records = manifest.steps.values()
    # A Ctrl-C after the last step ended does not cancel a finished run.
    if any(r.status == "cancelled" or r.reason == "run cancelled" for r in records):
        return "cancelled"
    return "failed" if any(r.status == "failed" for r in records) else "succeeded"


def _abandon(manifest: _RunManifest, exc: BaseException) -> None:
    """The run stopped on an exception before its steps ended: say so in run.json."""
    cancelled = isinstance(exc, KeyboardInterrupt)
    manifest.status = "cancelled" if cancelled else "failed"
    for record in manifest.steps.values():
        if record.status == "running":
            record.status = "cancelled"
        elif record.status == "pending":
            record.status, record.reason = "skipped", "run cancelled" if cancelled else "not run"


def _result(manifest: _RunManifest, run: RunDirectory) -> RunResult:
    failed = []
    for name, record in manifest.steps.items():
        if record.status == "failed" and record.error is not None:
            failed.append(
                (
                    name,
                    StepError(
                        record.error["message"],
                        record.error.get("cell"),
                        record.error.get("line"),
                        run.log(record.kfp_name),
                    ),
                )
            )
    return RunResult(
        run.run_id,
        run.path,
        manifest.status,
        {name: r.status for name, r in manifest.steps.items()},
        manifest.metrics(),
        tuple(failed),
    )


def _summary(
    result: RunResult, manifest: _RunManifest, symbols: Mapping[str, str], pipeline: Pipeline
) -> Iterator[str]:
    statuses = list(result.steps.values())
    tally = ", ".join(f"{statuses.count(s)} {s}" for s in STATUS_ORDER if s in statuses)
    elapsed = _parse_time(manifest.ended or _now()) - _parse_time(manifest.started)
    symbol = symbols[{"succeeded": "done", "failed": "failed"}.get(result.status, "cancelled")]
    yield f"{symbol} run {result.run_id} {result.status} in {elapsed:.1f}s ({tally})"
    for name, failure in result.failed:
        yield f"  step {name} failed: {failure.describe()}"
        if failure.cell is not None:  # file:line, which editors turn into a link
            yield f"    at {_failure_location(pipeline, failure)}"
        yield f"    log: {_display_path(failure.log)}"
    yield from _start_summary(manifest)
    if result.metrics:
        yield "  metrics: " + ", ".join(f"{k}={v}" for k, v in result.metrics.items())
    usage = _usage_line(manifest)
    if usage:
        yield usage
    yield f"  run directory: {_display_path(result.run_dir)}"


def _usage_line(manifest: _RunManifest) -> str:
    """``  peak memory: one 45.2 MiB (0.3 s CPU), two 1.0 GiB (2.1 s CPU)``."""
    from .resources import format_bytes

    parts = [
        f"{name} {format_bytes(r.peak_rss_bytes)} ({r.cpu_seconds or 0:.1f} s CPU)"
        for name, r in manifest.steps.items()
        if r.peak_rss_bytes is not None and r.status in ("succeeded", "failed")
    ]
    return "  peak memory: " + ", ".join(parts) if parts else ""
def _start_summary(manifest: _RunManifest) -> Iterator[str]:
    """How the steps started, once, then where each step's time went."""
    for note in manifest.start.get("notes", []):
        yield f"  {note}"
    prelude = manifest.start.get("prelude_seconds")
    if prelude is not None:
        yield f"  imports and functions cells: {prelude:.2f}s, once (steps forked from them)"
    for name, record in manifest.steps.items():
        if record.timings:
            phases = ", ".join(
                f"{phase} {record.timings[phase]:.3f}s"
                for phase in ("start", "load", "code", "save")
                if phase in record.timings
            )
            yield f"  {name}: {phases}"


def _failure_location(pipeline: Pipeline, failure: StepError) -> str:
    from .render import location

    notebook = pipeline.notebook
    label = _display_path(notebook.path) if notebook.path else notebook.name
    return location(notebook, label, failure.cell, failure.line)[0]


def _display_path(path: Path | None) -> str:
    if path is None:
        return "-"
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)
