"""``nb2pipe runs``: list, show, remove and prune a notebook's local runs.

    nb2pipe runs [list] NOTEBOOK        id, status, start, duration, size (oldest first)
    nb2pipe runs show NOTEBOOK RUN      steps, timings, peak memory, CPU time, metrics
    nb2pipe runs rm NOTEBOOK RUN...     remove runs (never a running one)
    nb2pipe runs prune NOTEBOOK         apply the storage limit now (see kale_py.storage)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VERBS = ("list", "show", "rm", "prune")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = sub.add_parser(
        "runs",
        help="list, show, remove or prune a notebook's local runs",
        description="A notebook's local runs in .nb2pipe/runs/ next to it. Without a verb: list.",
    )
    verbs = runs.add_subparsers(metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="id, status, start, duration and size of each run")
    listing.add_argument("notebook", type=Path)
    listing.set_defaults(command=_list)
    show = verbs.add_parser("show", help="one run: its steps, timings, peak memory, metrics")
    show.add_argument("notebook", type=Path)
    show.add_argument("run_id", metavar="RUN")
    show.set_defaults(command=_show)
    rm = verbs.add_parser("rm", help="remove runs (their records and state)")
    rm.add_argument("notebook", type=Path)
    rm.add_argument("run_ids", metavar="RUN", nargs="+")
    rm.set_defaults(command=_rm)
    prune = verbs.add_parser("prune", help="apply the storage limit now")
    prune.add_argument("notebook", type=Path)
    prune.set_defaults(command=_prune)


def with_default_verb(argv: Sequence[str]) -> list[str]:
    """``nb2pipe runs NOTEBOOK`` means ``nb2pipe runs list NOTEBOOK``."""
    args = list(argv)
    if len(args) >= 2 and args[0] == "runs" and args[1] not in (*VERBS, "-h", "--help"):
        args.insert(1, "list")
    return args


def _root(notebook: Path) -> Path:
    from .local import STATE_DIR_NAME

    return notebook.resolve().parent / STATE_DIR_NAME


def _runs(notebook: Path) -> list[Any]:
    from .storage import read_all_runs

    return read_all_runs(_root(notebook) / "runs", notebook.resolve())


def _list(args: argparse.Namespace) -> int:
    from .resources import format_bytes
    from .storage import duration, run_size

    runs = _runs(args.notebook)
    if not runs:
        print(f"no runs of {args.notebook} yet")
        return 0
    print(f"{'RUN':32} {'STATUS':10} {'STARTED':24} {'DURATION':>9} {'SIZE':>10}")
    for run in runs:
        seconds = duration(run.manifest)
        took = f"{seconds:.1f}s" if seconds is not None else "-"
        size = format_bytes(run_size(run))
        if run.manifest.get("state_removed"):
            size += "*"
        started = str(run.manifest.get("started") or "-")
        print(f"{run.run_id:32} {run.status:10} {started:24} {took:>9} {size:>10}")
    if any(r.manifest.get("state_removed") for r in runs):
        print("* its state was removed to stay under the storage limit; its records remain")
    return 0


def _find(notebook: Path, run_id: str) -> Any:
    from .diagnostics import RunError, error

    for run in _runs(notebook):
        if run.run_id == run_id:
            return run
    raise RunError(error("NB504", f"no run {run_id} of {notebook.name}; see nb2pipe runs "
                                  f"{notebook}"))


def _show(args: argparse.Namespace) -> int:
    from .resources import format_bytes
    from .storage import duration

    run = _find(args.notebook, args.run_id)
    m = run.manifest
    seconds = duration(m)
    print(f"run {run.run_id} {run.status}"
          + (f" in {seconds:.1f}s" if seconds is not None else "")
          + f", started {m.get('started')}")
    if m.get("error"):
        print(f"  {m['error']}" + (f" at {m.get('ended')}" if m.get("ended") else ""))
    if m.get("params"):
        print("  parameters: " + ", ".join(f"{k}={v}" for k, v in m["params"].items()))
    print(f"  {'STEP':20} {'STATUS':10} {'SECONDS':>8} {'PEAK MEMORY':>12} {'CPU s':>7}")
    for name, step in m.get("steps", {}).items():
        took = step.get("seconds")
        peak = step.get("peak_rss_bytes")
        cpu = step.get("cpu_seconds")
        print(f"  {name:20} {step.get('status', '-'):10} "
              f"{'-' if took is None else f'{took:.1f}':>8} "
              f"{'-' if peak is None else format_bytes(peak):>12} "
              f"{'-' if cpu is None else f'{cpu:.1f}':>7}")
        error = step.get("error")
        if isinstance(error, dict) and error.get("message"):
            print(f"    {error['message']}")
    if m.get("metrics"):
        print("  metrics: " + ", ".join(f"{k}={v}" for k, v in m["metrics"].items()))
    if m.get("state_removed"):
        print(f"  state removed {m['state_removed']} (storage limit); records kept")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from .local import runner_alive
    from .storage import remove_run

    runs = [_find(args.notebook, run_id) for run_id in args.run_ids]
    running = [r.run_id for r in runs if r.status == "running" and runner_alive(r.manifest)]
    if running:
        print(f"nb2pipe runs rm: run {', '.join(running)} is still running: cancel it first "
              "(Ctrl-C in its terminal, or the panel's Cancel); nothing was removed",
              file=sys.stderr)
        return 1
    for run in runs:
        remove_run(run)
    print(f"removed {len(runs)} run{'s' * (len(runs) > 1)}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from .storage import LimitError, enforce, storage_limit

    root = _root(args.notebook)
    try:
        limit = storage_limit(root, _metadata(args.notebook))
    except LimitError as exc:
        print(f"nb2pipe runs prune: error: {exc}", file=sys.stderr)
        return 2
    line = enforce(root, limit).line(limit)
    print(line or f"storage: under the limit {limit.source}, nothing removed")
    return 0


def _metadata(notebook: Path) -> dict[str, Any]:
    """The notebook's metadata (for its storage_limit), without parsing its cells."""
    import json

    try:
        data = json.loads(notebook.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    metadata = data.get("metadata") if isinstance(data, dict) else None
    return metadata if isinstance(metadata, dict) else {}
