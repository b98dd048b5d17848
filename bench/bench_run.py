"""Benchmark: `nb2pipe run` against nbclient running the same notebook, in the same run.

    python bench/bench_run.py [--repeats 3] [--compute] [--step-seconds 2]

Notebooks that look like real ones, their imports cell loading numpy, pandas, scikit-learn
and matplotlib (about a second of CPU), each measured side by side, interleaved in random
order, median of the repeats, three ways: `nb2pipe run --no-cache` (steps forked from one
process that ran the imports, the default), `nb2pipe run --no-cache --isolation spawn`
(a fresh interpreter per step, as before) and nbclient (a kernel, cells top to bottom):

1. chain: 20 small steps in a chain (pandas and numpy on a small frame); target <= 1.0x;
2. five branches: a load step, 5 independent branches each fitting a model, a join;
   target <= 0.7x (the branches run in parallel, the kernel runs them one by one);
3. the sample notebooks (sample_notebooks/*.ipynb); target <= 1.0x each.

It also prints the per-step overhead (start, load and save beyond the step's own code,
from run.json's timings; target <= 50 ms median), and the memory of a run with 5 parallel
steps (the summed PSS of the step processes at their peak, forked against spawned; target:
forked below spawned). The machine is shared: the load average is printed with the table.

``--compute`` adds the earlier compute-bound notebooks (a 6-step chain and two branches
computing ``--step-seconds`` each, no imports; targets 1.15 and 0.7) and the all-cached
re-run of a 10-step notebook (target < 1 s).

nbclient's time includes starting the kernel, as `nb2pipe run` includes starting its step
processes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLES = REPO / "sample_notebooks"

IMPORTS = """\
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from sklearn.linear_model import LogisticRegression
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
"""

WORK = """\
def work(seconds, seed):
    import time
    total, n, end = 0, seed, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10000):
            n = (n * 1103515245 + 12345) % 2**31
            total += n % 7
    return total
"""


def _cell(source: str, *tags: str) -> dict[str, object]:
    return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": source,
            "outputs": [], "execution_count": None}


def _notebook(cells: list[dict[str, object]]) -> dict[str, object]:
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"}}}


def sequential(seconds: float, steps: int = 6) -> dict[str, object]:
    cells = [_cell(WORK, "functions"), _cell("data = list(range(100000))", "step:s0")]
    for i in range(1, steps + 1):
        cells.append(_cell(f"data = [x + 1 for x in data]\nscore_{i} = work({seconds}, {i})",
                           f"step:s{i}"))
    return _notebook(cells)


def branches(seconds: float) -> dict[str, object]:
    cells = [_cell(WORK, "functions"), _cell("data = list(range(100000))", "step:load")]
    for side in ("left", "right"):
        cells.append(_cell(f"{side} = sum(data) + work({3 * seconds}, 1)", f"step:{side}"))
    cells.append(_cell("total = left + right", "step:join"))
    return _notebook(cells)


def ten_steps() -> dict[str, object]:
    cells = [_cell("x0 = 1", "step:s0")]
    cells += [_cell(f"x{i} = x{i - 1} + 1", f"step:s{i}") for i in range(1, 10)]
    return _notebook(cells)


def chain(steps: int = 20) -> dict[str, object]:
    """20 small steps in a chain: a frame passed on, a column added, a number computed."""
    cells = [_cell(IMPORTS, "imports"),
             _cell("df = pd.DataFrame({'x': np.arange(1000.0)})", "step:s0")]
    for i in range(1, steps):
        cells.append(_cell(f"df['c{i}'] = df['x'] * {i} + np.sqrt(df['x'])\n"
                           f"m{i} = float(df['c{i}'].mean())", f"step:s{i}"))
    return _notebook(cells)


def five_branches(hold: float = 0.0) -> dict[str, object]:
    """A load step, 5 branches each fitting a model (holding ``hold`` s more), a join."""
    load = ("rng = np.random.default_rng(0)\nX = rng.normal(size=(4000, 30))\n"
            "y = (X[:, 0] + rng.normal(size=4000) > 0).astype(int)\n"
            "X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)")
    cells = [_cell(IMPORTS, "imports"), _cell(load, "step:load")]
    for b in range(5):
        fit = (f"model_{b} = RandomForestClassifier(n_estimators=60, max_depth=8, "
               f"random_state={b}, n_jobs=1)\nmodel_{b}.fit(X_train, y_train)\n"
               f"score_{b} = float(model_{b}.score(X_test, y_test))")
        if hold:
            fit += f"\nimport time\ntime.sleep({hold})"
        cells.append(_cell(fit, f"step:branch{b}"))
    cells.append(_cell("best = max([score_0, score_1, score_2, score_3, score_4])",
                       "step:join"))
    return _notebook(cells)


def run_nbclient(path: Path) -> float:
    code = ("import nbformat, sys; from nbclient import NotebookClient; "
            "nb = nbformat.read(sys.argv[1], as_version=4); "
            "NotebookClient(nb, timeout=600, kernel_name='python3').execute()")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True,
                   cwd=path.parent)
    return time.perf_counter() - start


def _env() -> dict[str, str]:
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


def run_nb2pipe(path: Path, *extra: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kale_py", "run", str(path), *extra],
                          capture_output=True, text=True, cwd=path.parent, env=_env())
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"nb2pipe run failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def last_manifest(path: Path) -> dict[str, object]:
    runs = path.parent / ".nb2pipe" / "runs"
    run_id = (runs / "latest").read_text().strip()
    manifest: dict[str, object] = json.loads((runs / run_id / "run.json").read_text())
    return manifest


def overheads(path: Path) -> tuple[list[float], list[float]]:
    """Each step's start + load + save seconds in the latest run of ``path``, and the CPU
    seconds of its process."""
    steps = last_manifest(path)["steps"]
    assert isinstance(steps, dict)
    found, cpu = [], []
    for record in steps.values():
        timings = record.get("timings") or {}
        if {"start", "load", "save"} <= set(timings):
            found.append(timings["start"] + timings["load"] + timings["save"])
        if "cpu" in timings:
            cpu.append(timings["cpu"])
    return found, cpu


def compare(path: Path, repeats: int) -> dict[str, float]:
    """Median seconds per way, the ways interleaved in random order; the forked runs'
    median per-step overhead."""
    ways: dict[str, Callable[[], float]] = {
        "fork": lambda: run_nb2pipe(path, "--no-cache"),
        "spawn": lambda: run_nb2pipe(path, "--no-cache", "--isolation", "spawn"),
        "nbclient": lambda: run_nbclient(path),
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    step_overheads: list[float] = []
    cpu: dict[str, list[float]] = {"fork": [], "spawn": []}
    for _ in range(repeats):
        order = list(ways)
        random.shuffle(order)
        for way in order:
            times[way].append(ways[way]())
            if way in cpu:
                found, step_cpu = overheads(path)
                cpu[way] += step_cpu
                step_overheads += found if way == "fork" else []
    medians = {way: statistics.median(t) for way, t in times.items()}
    medians["overhead"] = statistics.median(step_overheads) if step_overheads else float("nan")
    for way, values in cpu.items():
        medians[f"cpu_{way}"] = statistics.median(values) if values else float("nan")
    return medians


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _step_pids(marker: str) -> list[int]:
    """Step processes (spawned runtimes and forks of the warm process) of one run."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "--state-out" in cmdline or (
            marker in cmdline and "kale_py.warm" in cmdline
        ):
            pids.append(int(entry.name))
    return pids


def peak_memory(path: Path, *extra: str) -> float:
    """The highest summed PSS (MiB) of the run's processes, sampled while it runs."""
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(_pss_kib(p) for p in _step_pids(str(path.parent))))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run_nb2pipe(path, "--no-cache", *extra)
    finally:
        done.set()
        sampler.join()
    return peak / 1024


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def compute_rows(work: Path, args: argparse.Namespace) -> list[str]:
    """The earlier compute-bound notebooks and the all-cached re-run."""
    lines = []
    for name, nb, target in (("sequential", sequential(args.step_seconds), 1.15),
                             ("two branches", branches(args.step_seconds), 0.7)):
        path = work / f"{name.replace(' ', '_')}.ipynb"
        path.write_text(json.dumps(nb))
        m = compare(path, args.repeats)
        ratio = m["fork"] / m["nbclient"]
        lines.append(f"{name:<24} {m['fork']:>7.2f} {m['spawn']:>7.2f} {m['nbclient']:>9.2f} "
                     f"{ratio:>6.2f} {'<= ' + str(target):>8} "
                     f"{'PASS' if ratio <= target else 'FAIL'}")
    path = work / "ten_steps.ipynb"
    path.write_text(json.dumps(ten_steps()))
    shutil.rmtree(work / ".nb2pipe", ignore_errors=True)
    run_nb2pipe(path)
    warm = statistics.median(run_nb2pipe(path) for _ in range(max(3, args.repeats)))
    lines.append(f"10-step notebook, all cached re-run: {warm:.2f} s "
                 f"-> {'PASS' if warm < 1 else 'FAIL'} (target < 1 s)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compute", action="store_true",
                        help="also the compute-bound notebooks and the cached re-run")
    parser.add_argument("--step-seconds", type=float, default=2.0)
    args = parser.parse_args()
    load_before = _load()
    rows: list[dict[str, object]] = []
    extra: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [("chain (20 steps)", chain(), 1.0), ("five branches", five_branches(), 0.7)]
        cases += [(f"sample {p.stem}", json.loads(p.read_text()), 1.0)
                  for p in sorted(SAMPLES.glob("*.ipynb"))]
        for name, nb, target in cases:
            folder = work / name.split()[-1].strip("()")
            folder.mkdir()
            path = folder / "notebook.ipynb"
            path.write_text(json.dumps(nb))
            for data in SAMPLES.iterdir():  # the samples' data files, if any
                if not data.name.endswith(".ipynb") and data.is_file():
                    shutil.copy(data, folder / data.name)
            m = compare(path, args.repeats)
            rows.append({"notebook": name, **m, "ratio": m["fork"] / m["nbclient"],
                         "spawn_ratio": m["spawn"] / m["nbclient"], "target": target})
        folder = work / "memory"
        folder.mkdir()
        path = folder / "notebook.ipynb"
        path.write_text(json.dumps(five_branches(hold=2.0)))
        memory = {way: statistics.median(peak_memory(path, "--jobs", "5", "--isolation", way)
                                         for _ in range(max(1, args.repeats // 2)))
                  for way in ("fork", "spawn")}
        if args.compute:
            extra = compute_rows(work, args)
    print(f"\nload average before: {load_before}, after: {_load()} (2 shared cores)")
    print(f"{'notebook':<24} {'fork s':>7} {'spawn s':>7} {'nbclient':>9} {'ratio':>6} "
          f"{'target':>8}        {'spawn/nbclient':>14} {'overhead/step':>13} "
          f"{'step CPU fork/spawn':>20}")
    for r in rows:
        verdict = "PASS" if float(r["ratio"]) <= float(r["target"]) else "FAIL"  # type: ignore[arg-type]
        print(f"{r['notebook']:<24} {r['fork']:>7.2f} {r['spawn']:>7.2f} {r['nbclient']:>9.2f} "
              f"{r['ratio']:>6.2f} {'<= ' + str(r['target']):>8} {verdict:<6} "
              f"{r['spawn_ratio']:>14.2f} {1000 * float(r['overhead']):>10.0f} ms "  # type: ignore[arg-type]
              f"{1000 * float(r['cpu_fork']):>9.0f}/{1000 * float(r['cpu_spawn']):.0f} ms")  # type: ignore[arg-type]
    verdict = "PASS" if memory["fork"] < memory["spawn"] else "FAIL"
    print(f"\n5 parallel steps, peak PSS of the run's processes: forked {memory['fork']:.0f} MiB, "
          f"spawned {memory['spawn']:.0f} MiB -> {verdict} (target: forked below spawned)")
    for line in extra:
        print(line)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "run.json").write_text(json.dumps(
        {"rows": rows, "memory_mib": memory, "compute": extra,
         "load_before": load_before, "load_after": _load()}, indent=2))


if __name__ == "__main__":
    main()
