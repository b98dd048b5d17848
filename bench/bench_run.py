"""Benchmark: pipeline overhead of `nb2pipe run` against nbclient running the same notebook.

    python bench/bench_run.py [--repeats 3] [--step-seconds 2]

Three notebooks, generated here, each measured side by side in the same run (interleaved,
median of the repeats):

1. sequential: 6 steps in a chain, each computing for ``--step-seconds`` (CPU-bound work on a
   list of numbers that is passed on); target nb2pipe/nbclient <= 1.15;
2. two branches: one load step, then two equal independent branches of
   ``--step-seconds`` x 3 each, then a join; on 2 cores target <= 0.7 (the branches run in
   parallel, the kernel runs them one after the other);
3. warm re-run with the cache: a 10-step notebook run once, then again unchanged; target
   the second `nb2pipe run` under 1 s, end to end.

nbclient's time includes starting the kernel, as `nb2pipe run` includes starting its step
processes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

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


def run_nbclient(path: Path) -> float:
    code = ("import nbformat, sys; from nbclient import NotebookClient; "
            "nb = nbformat.read(sys.argv[1], as_version=4); "
            "NotebookClient(nb, timeout=600, kernel_name='python3').execute()")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True)
    return time.perf_counter() - start


def run_nb2pipe(path: Path, *extra: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kale_py", "run", str(path), *extra],
                          capture_output=True, text=True, cwd=path.parent)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"nb2pipe run failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def compare(path: Path, repeats: int) -> tuple[float, float]:
    ours, theirs = [], []
    for _ in range(repeats):
        order = [("ours", path), ("theirs", path)]
        random.shuffle(order)
        for who, p in order:
            if who == "ours":
                ours.append(run_nb2pipe(p, "--no-cache"))
            else:
                theirs.append(run_nbclient(p))
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=2.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, nb, target in (("sequential", sequential(args.step_seconds), 1.15),
                                 ("two branches", branches(args.step_seconds), 0.7)):
            path = work / f"{name.replace(' ', '_')}.ipynb"
            path.write_text(json.dumps(nb))
            ours, theirs = compare(path, args.repeats)
            rows.append((name, ours, theirs, ours / theirs, target))
        path = work / "ten_steps.ipynb"
        path.write_text(json.dumps(ten_steps()))
        shutil.rmtree(work / ".nb2pipe", ignore_errors=True)
        cold = run_nb2pipe(path)
        warm = statistics.median(run_nb2pipe(path) for _ in range(max(3, args.repeats)))
    print(f"\n{'notebook':<14} {'nb2pipe s':>10} {'nbclient s':>11} {'ratio':>7} {'target':>8}")
    for name, ours, theirs, ratio, target in rows:
        verdict = "PASS" if ratio <= target else "FAIL"
        print(f"{name:<14} {ours:>10.2f} {theirs:>11.2f} {ratio:>7.2f} {'<= ' + str(target):>8} "
              f"{verdict}")
    print(f"\n10-step notebook: first run {cold:.2f} s, warm re-run (all cached) {warm:.2f} s "
          f"-> {'PASS' if warm < 1 else 'FAIL'} (target < 1 s)")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    keys = ("notebook", "nb2pipe_s", "nbclient_s", "ratio", "target")
    table = [dict(zip(keys, r, strict=True)) for r in rows]
    (out / "run.json").write_text(json.dumps({"rows": table, "cold_s": cold, "warm_s": warm},
                                             indent=2))


if __name__ == "__main__":
    main()
