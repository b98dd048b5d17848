"""What ``.nb2pipe/`` holds, and keeping it under a storage limit: ``nb2pipe runs``.

A run's directory holds its records (run.json, logs, reports, metrics) and its state (the
saved variables). The cache holds entries by derivation. Runs and cache entries share their
files as hard links, so a byte counts once however many runs and entries hold it.

After each run, :func:`enforce` keeps ``.nb2pipe/`` under the storage limit: first the
state of the oldest runs goes, then the least recently used cache entries, then (only if
that was not enough) the oldest runs' records. The latest successful run of each notebook
stays whole (``--from`` and ``--only`` need its state), and nothing a running run uses is
touched. The limit is ``NB2PIPE_STORAGE_LIMIT`` (``300M``, ``20G``, ``512Mi``), else
``storage_limit`` in the notebook's ``kubeflow_notebook`` metadata, else the user setting
``storage_limit`` in ``~/.config/kale_py/settings.json``, else the smaller of 10 GiB and a
fifth of the volume's free space.

Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .resources import format_bytes, parse_bytes

LIMIT_ENV = "NB2PIPE_STORAGE_LIMIT"
DEFAULT_CAP = 10 * 2**30


class LimitError(ValueError):
    """A storage limit setting that is not a size (a usage error: exit 2)."""


# --- the limit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """A storage limit in bytes and where it came from (for the messages)."""

    bytes: int
    source: str  # "NB2PIPE_STORAGE_LIMIT=300M", "the default (...)"


def settings_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "kale_py" / "settings.json"


def storage_limit(root: Path, metadata: Mapping[str, Any] | None = None) -> Limit:
    """The limit in force for the state folder ``root``; LimitError naming a bad setting.

    ``metadata``: the notebook's metadata, whose ``kubeflow_notebook.storage_limit`` comes
    after the environment and before the user setting.
    """
    text = os.environ.get(LIMIT_ENV)
    if text is not None:
        return Limit(_parse(text, LIMIT_ENV), f"{LIMIT_ENV}={text}")
    settings = (metadata or {}).get("kubeflow_notebook")
    value = settings.get("storage_limit") if isinstance(settings, dict) else None
    if value is not None:
        name = "storage_limit in the notebook's metadata.kubeflow_notebook"
        return Limit(_parse(str(value), name), f"{name} ({value})")
    user = _user_setting()
    if user is not None:
        name = f"storage_limit in {settings_path()}"
        return Limit(_parse(user, name), f"{name} ({user})")
    probe = root if root.exists() else root.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    value = min(DEFAULT_CAP, free // 5)
    return Limit(value, f"the default: the smaller of 10 GiB and a fifth of the free space "
                        f"({format_bytes(value)}); set {LIMIT_ENV} to change it")


def _user_setting() -> str | None:
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("storage_limit") if isinstance(data, dict) else None
    return None if value is None else str(value)


def _parse(text: str, name: str) -> int:
    try:
        value = parse_bytes(text)
    except ValueError:
        raise LimitError(f"{name}: {text!r} is not a size; write it like 300M, 20G or "
                         "512Mi") from None
    if value <= 0:
        raise LimitError(f"{name}: the storage limit must be more than 0, got {text!r}")
    return value


# --- what is there ----------------------------------------------------------------------------


@dataclass
class _Files:
    """Every file under the state folder, by inode, with who holds it."""

    sizes: dict[tuple[int, int], int] = field(default_factory=dict)
    holders: dict[tuple[int, int], set[str]] = field(default_factory=dict)

    def add(self, holder: str, directory: Path, skip: str | None = None) -> None:
        for path in _files(directory, skip):
            try:
                info = path.lstat()
            except OSError:
                continue
            inode = (info.st_dev, info.st_ino)
            self.sizes[inode] = info.st_blocks * 512
            self.holders.setdefault(inode, set()).add(holder)

    def total(self) -> int:
        return sum(self.sizes.values())

    def freed_by(self, holders: set[str]) -> int:
        return sum(self.sizes[i] for i, h in self.holders.items() if h and h <= holders)


def _files(directory: Path, skip: str | None = None) -> Iterator[Path]:
    for folder, subfolders, names in os.walk(directory):
        if skip is not None and folder == str(directory) and skip in subfolders:
            subfolders.remove(skip)
        for name in names:
            yield Path(folder) / name


@dataclass(frozen=True)
class RunInfo:
    """One run as ``nb2pipe runs`` lists it."""

    run_id: str
    path: Path
    manifest: Mapping[str, Any]

    @property
    def status(self) -> str:
        return str(self.manifest.get("status"))

    @property
    def notebook(self) -> str:
        return str(self.manifest.get("notebook"))


def read_all_runs(runs_dir: Path, notebook: Path | None = None) -> list[RunInfo]:
    """Every run in ``runs_dir`` (of ``notebook`` if given), oldest first; a run whose
    runner died reads failed (driver lost) and is recorded so."""
    if not runs_dir.is_dir():
        return []
    found = []
    for entry in sorted(os.scandir(runs_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        path = Path(entry.path)
        manifest = _read(path / "run.json")
        if not isinstance(manifest, dict) or manifest.get("run_id") != entry.name:
            continue
        if notebook is not None and manifest.get("notebook") != str(notebook):
            continue
        found.append(RunInfo(entry.name, path, settle_lost(manifest, path)))
    return found


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def settle_lost(manifest: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A run still marked running whose runner is gone (killed, the machine restarted):
    it failed, at the time its record was last written. The record is rewritten so."""
    from .local import runner_alive, write_json_atomic

    if manifest.get("status") != "running" or "runner_pid" not in manifest:
        return manifest
    if runner_alive(manifest):
        return manifest
    try:
        last = (run_dir / "run.json").stat().st_mtime
    except OSError:
        return manifest
    ended = datetime.fromtimestamp(last, timezone.utc).isoformat(timespec="milliseconds")
    lost = dict(manifest, status="failed", ended=ended.replace("+00:00", "Z"))
    lost["error"] = "driver lost: the process running it ended before the run finished"
    # nothing is left waiting: a step that was running failed with the driver; one that was
    # still pending never ran
    lost["steps"] = {
        name: dict(step, status="failed", error={"message": "driver lost"})
        if step.get("status") == "running"
        else dict(step, status="skipped", reason="driver lost")
        if step.get("status") == "pending" else step
        for name, step in manifest.get("steps", {}).items()
    }
    with contextlib.suppress(OSError):
        write_json_atomic(run_dir / "run.json", lost)
    return lost


def run_size(run: RunInfo) -> int:
    """The bytes a run's directory holds (shared files counted in full)."""
    recorded = run.manifest.get("size_bytes")
    if isinstance(recorded, int) and run.status != "running":
        return recorded
    files = _Files()
    files.add(run.run_id, run.path)
    return files.total()


def duration(manifest: Mapping[str, Any]) -> float | None:
    started, ended = manifest.get("started"), manifest.get("ended")
    if not (isinstance(started, str) and isinstance(ended, str)):
        return None
    parse = datetime.fromisoformat
    return (parse(ended.replace("Z", "+00:00")) - parse(started.replace("Z", "+00:00"))
            ).total_seconds()


# --- removing -----------------------------------------------------------------------------------


def protected(runs: Sequence[RunInfo]) -> set[str]:
    """The runs whose state stays: each notebook's latest successful run, and runs that
    still run (their steps may read any earlier run's state they reuse)."""
    keep: set[str] = set()
    latest: dict[str, str] = {}
    for run in runs:  # oldest first: the last one seen wins
        if run.status == "succeeded":
            latest[run.notebook] = run.run_id
        if run.status == "running":
            keep.add(run.run_id)
            keep.update(_reused_from(run.manifest))
    return keep | set(latest.values())


def _reused_from(manifest: Mapping[str, Any]) -> Iterable[str]:
    for step in manifest.get("steps", {}).values():
        source = step.get("reused_from")
        if isinstance(source, str):
            yield source


def remove_state(run: RunInfo) -> None:
    """Remove a run's saved variables; its records (run.json, logs, reports) stay."""
    from .local import write_json_atomic

    trash = run.path / ".state.removed"
    try:
        os.rename(run.path / "state", trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
    from .local import directory_bytes

    manifest = dict(run.manifest)
    manifest["state_removed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["size_bytes"] = directory_bytes(run.path)
    write_json_atomic(run.path / "run.json", manifest)


def remove_run(run: RunInfo) -> None:
    """Remove a whole run directory (renamed away first: no reader sees half of it)."""
    trash = run.path.parent / f".{run.run_id}.removed"
    os.rename(run.path, trash)
    shutil.rmtree(trash, ignore_errors=True)


@dataclass(frozen=True)
class Removal:
    """What :func:`enforce` removed, and what it could not."""

    states: int = 0
    entries: int = 0
    records: int = 0
    freed: int = 0
    over_by: int = 0  # still over the limit by this much (the kept runs alone exceed it)

    def line(self, limit: Limit) -> str | None:
        """One line for the user, or None when nothing happened."""
        parts = []
        if self.states:
            parts.append(f"the state of {self.states} run{'s' * (self.states > 1)}")
        if self.entries:
            parts.append(f"{self.entries} cache entr{'ies' if self.entries > 1 else 'y'}")
        if self.records:
            parts.append(f"{self.records} old run record{'s' * (self.records > 1)}")
        text = ""
        if parts:
            text = (f"storage: removed {' and '.join(parts)} ({format_bytes(self.freed)}) "
                    f"to stay under {format_bytes(limit.bytes)} ({limit.source})")
        if self.over_by:
            text += ("; " if text else "warning: storage: ") + (
                f"the runs kept (the latest of each notebook, running ones) exceed the limit "
                f"{format_bytes(limit.bytes)} ({limit.source}) by {format_bytes(self.over_by)}: "
                "kept them")
        return text or None


def enforce(root: Path, limit: Limit, keep: Iterable[str] = (),
            ending: Mapping[str, str] | None = None) -> Removal:
    """Bring ``root`` (a ``.nb2pipe`` folder) under ``limit``; ``keep``: run ids to spare;
    ``ending``: the final status of runs that are about to record it (the caller's run)."""
    runs = [RunInfo(r.run_id, r.path, dict(r.manifest, status=(ending or {})[r.run_id]))
            if r.run_id in (ending or {}) else r for r in read_all_runs(root / "runs")]
    spared = protected(runs) | set(keep)
    files = _Files()
    for run in runs:
        files.add(f"run:{run.run_id}", run.path / "state")
        files.add(f"record:{run.run_id}", run.path, skip="state")
    entries = _cache_entries(root / "cache")
    for entry in entries:
        files.add(f"cache:{entry.name}", entry)
    total = files.total()
    if total <= limit.bytes:
        return Removal()
    gone: set[str] = set()
    states = records = cache = 0

    def over() -> bool:
        return total - files.freed_by(gone) > limit.bytes

    for run in runs:  # the oldest first
        if not over():
            break
        if run.run_id in spared or not (run.path / "state").exists():
            continue
        remove_state(run)
        gone.add(f"run:{run.run_id}")
        states += 1
    for entry in entries:  # the least recently used first
        if not over():
            break
        name = f"cache:{entry.name}"
        if files.freed_by(gone | {name}) == files.freed_by(gone):
            continue  # its files are a kept run's too: removing it would free nothing
        shutil.rmtree(entry, ignore_errors=True)
        gone.add(name)
        cache += 1
    for run in runs:
        if not over():
            break
        if run.run_id in spared:
            continue
        remove_run(run)
        gone |= {f"run:{run.run_id}", f"record:{run.run_id}"}
        records += 1
    freed = files.freed_by(gone)
    return Removal(states, cache, records, freed, max(0, total - freed - limit.bytes))


def _cache_entries(cache_dir: Path) -> list[Path]:
    """Cache entries, least recently used (restored or stored) first."""
    if not cache_dir.is_dir():
        return []
    entries = [Path(e.path) for e in os.scandir(cache_dir)
               if e.is_dir() and not e.name.startswith(".")]
    return sorted(entries, key=lambda p: p.stat().st_mtime)
