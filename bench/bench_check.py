"""Benchmark: analysis and `nb2pipe check` on generated notebooks, against Kale 2.3's CLI.

    python bench/bench_check.py                 # 50, 500, 5000 cells; Kale at 50 and 500
    python bench/bench_check.py --quick         # 50 and 500 cells, no Kale
    python bench/bench_check.py --kale-max 5000 # also try Kale on 5000 cells (hours)
    python bench/bench_check.py --quick --baseline ../old  # this checkout vs another one

``--baseline DIR``: a checkout of another commit (its ``kale_py`` is imported from there).
Its ``nb2pipe check`` runs in turn with this checkout's, run by run, and the table gives
the median of the run-by-run ratios (this / baseline), as for the in-process analysis
(each measured in a process of its own, so that both import their own code).

What it measures, all in one run so the ratios compare like with like:

1. in-process analysis (read + split + analyse + graph) per notebook size: total time and
   time per cell, which must stay flat (linear growth);
2. wall time of the `nb2pipe check` command (a fresh process: start-up included);
3. wall time of Kale's `kale --nb` on the same notebook (minus its `%matplotlib` lines,
   which Kale's parser rejects) (Kale has no check-only mode: its
   CLI always parses, resolves dependencies and compiles). Kale is installed by this script
   into its own virtual environment (bench/.venv-kale) on first use.

The generated notebooks are executable Python (bench/gen_notebook.py), tagged with a step
every few cells.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from gen_notebook import generate_notebook  # noqa: E402

KALE_VENV = HERE / ".venv-kale"
KALE_VERSION = "kubeflow-kale==2.3.0"


def kale_binary() -> Path:
    kale = KALE_VENV / "bin" / "kale"
    if not kale.exists():
        print(f"installing {KALE_VERSION} into {KALE_VENV} (first run only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(KALE_VENV)], check=True)
        subprocess.run([str(KALE_VENV / "bin" / "pip"), "install", "-q", KALE_VERSION], check=True)
    return kale


def without_magics(notebook: dict[str, Any]) -> dict[str, Any]:
    """Kale's parser stops at `%matplotlib inline` lines: give it the notebook without them."""
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        cell["source"] = "\n".join(line for line in source.split("\n")
                                   if not line.lstrip().startswith("%"))
    notebook["metadata"]["kubeflow_notebook"] = {"pipeline_name": "bench", "experiment_name": "b"}
    return notebook


def time_analysis(path: Path, repeats: int) -> float:
    from kale_py.api import check_notebook

    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        pipeline = check_notebook(path)
        times.append(time.perf_counter() - start)
        assert pipeline.ok, [d for d in pipeline.diagnostics if d.is_error][:3]
    return statistics.median(times)


def time_command(cmd: list[str], cwd: Path, repeats: int, timeout: float,
                 env: dict[str, str] | None = None) -> float | None:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                  env=env)
        except subprocess.TimeoutExpired:
            return None
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return statistics.median(times)


def checkout_env(root: Path) -> dict[str, str]:
    """The environment that makes ``python -m kale_py`` import the checkout at ``root``."""
    return {**os.environ, "PYTHONPATH": str(root)}


def time_pair(cmd: list[str], env: dict[str, str], base_env: dict[str, str], cwd: Path,
              repeats: int, timeout: float) -> tuple[float, float, float]:
    """Median wall times of ``cmd`` under ``env`` and ``base_env``, run in turn (one, then
    the other, ``repeats`` times), and the median of the run-by-run ratios."""
    times: list[float] = []
    base_times: list[float] = []
    for _ in range(repeats):
        for environment, found in ((env, times), (base_env, base_times)):
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=cwd, env=environment, capture_output=True, text=True,
                                  timeout=timeout)
            found.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"{cmd} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    ratios = [a / b for a, b in zip(times, base_times, strict=True)]
    return statistics.median(times), statistics.median(base_times), statistics.median(ratios)


ANALYSIS = """
import gc, statistics, sys, time
from pathlib import Path
from kale_py.graph import build_pipeline
from kale_py.notebook import read_notebook
notebook = read_notebook(Path(sys.argv[1]))
build_pipeline(notebook)
times = []
for _ in range(int(sys.argv[2])):
    gc.collect()
    start = time.perf_counter()
    build_pipeline(notebook)
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def time_analysis_in(root: Path, path: Path, repeats: int) -> float:
    """The median in-process analysis time of the checkout at ``root``."""
    done = subprocess.run([sys.executable, "-c", ANALYSIS, str(path), str(repeats)],
                          cwd=path.parent, env=checkout_env(root), capture_output=True,
                          text=True, check=True)
    return float(done.stdout)


def compare(baseline: Path, sizes: list[int], repeats: int) -> None:
    """This checkout against ``baseline``: analysis in process and ``nb2pipe check``."""
    if not (baseline / "kale_py").is_dir():
        raise SystemExit(f"{baseline}: no kale_py/ there")
    env, base_env = checkout_env(ROOT), checkout_env(baseline.resolve())
    nb2pipe = [sys.executable, "-m", "kale_py", "check"]
    print(f"this checkout: {ROOT}\nbaseline:      {baseline.resolve()}\n")
    print(f"{'cells':>6} {'analysis s':>11} {'baseline s':>11} {'ratio':>6} "
          f"{'check wall s':>13} {'baseline s':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in sizes:
            path = work / f"synthetic_{n}.ipynb"
            path.write_text(json.dumps(generate_notebook(n, seed=1)))
            inner = 3 if n <= 500 else 1
            analysis = [(time_analysis_in(ROOT, path, inner),
                         time_analysis_in(baseline, path, inner)) for _ in range(repeats)]
            analysis_ratio = statistics.median(a / b for a, b in analysis)
            check, base_check, check_ratio = time_pair(
                [*nb2pipe, str(path)], env, base_env, work, repeats, 600)
            print(f"{n:>6} {statistics.median(a for a, _ in analysis):>11.3f} "
                  f"{statistics.median(b for _, b in analysis):>11.3f} {analysis_ratio:>6.2f} "
                  f"{check:>13.3f} {base_check:>11.3f} {check_ratio:>6.2f}")
    print("\nratio: median of the run-by-run ratios, this checkout / baseline")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kale-max", type=int, default=500, help="largest notebook to give Kale")
    parser.add_argument("--no-kale", action="store_true")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="compare with the checkout in DIR instead of Kale (see above)")
    parser.add_argument("--repeats", type=int, default=11, metavar="N",
                        help="paired runs per notebook with --baseline (default 11)")
    args = parser.parse_args()
    if args.baseline is not None:
        compare(args.baseline, [50, 500] if args.quick else [50, 500, 5000], args.repeats)
        return
    sizes = [50, 500] if args.quick else [50, 500, 5000]
    use_kale = not (args.quick or args.no_kale)
    kale = kale_binary() if use_kale else None
    nb2pipe = [sys.executable, "-m", "kale_py", "check"]
    env = checkout_env(ROOT)  # this checkout, whatever is installed
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in sizes:
            path = work / f"synthetic_{n}.ipynb"
            path.write_text(json.dumps(generate_notebook(n, seed=1)))
            analysis = time_analysis(path, repeats=3 if n <= 500 else 1)
            check = time_command([*nb2pipe, str(path)], work, 3 if n <= 500 else 1, 600, env)
            kale_time = None
            if kale is not None and n <= args.kale_max:
                kale_path = work / f"synthetic_{n}_for_kale.ipynb"
                kale_path.write_text(json.dumps(without_magics(generate_notebook(n, seed=1))))
                env_cmd = [str(kale), "--nb", str(kale_path)]
                kale_time = time_command(env_cmd, work, 3 if n <= 50 else 1, 3600)
            rows.append(
                {
                    "cells": n,
                    "analysis_s": analysis,
                    "ms_per_cell": 1000 * analysis / n,
                    "check_wall_s": check,
                    "kale_wall_s": kale_time,
                    "kale_over_check": (kale_time / check) if kale_time and check else None,
                }
            )
    print(
        f"\n{'cells':>6} {'analysis s':>11} {'ms/cell':>8} {'check wall s':>13} "
        f"{'kale wall s':>12} "
        f"{'kale/check':>11}"
    )
    for r in rows:
        kale_s = f"{r['kale_wall_s']:.2f}" if r["kale_wall_s"] else "-"
        ratio = f"{r['kale_over_check']:.1f}x" if r["kale_over_check"] else "-"
        print(
            f"{r['cells']:>6} {r['analysis_s']:>11.3f} {r['ms_per_cell']:>8.2f} "
            f"{r['check_wall_s']:>13.2f} {kale_s:>12} {ratio:>11}"
        )
    largest = rows[-1]
    print(
        f"\ntarget: {largest['cells']} cells analysed in < 5 s: "
        f"{'PASS' if largest['analysis_s'] < 5 else 'FAIL'} ({largest['analysis_s']:.2f} s)"
    )
    flat = rows[-1]["ms_per_cell"] / rows[0]["ms_per_cell"]
    print(f"time per cell, largest / smallest: {flat:.2f} (flat means linear growth)")
    ratios = [r["kale_over_check"] for r in rows if r["kale_over_check"]]
    if ratios:
        print(
            f"target: nb2pipe check >= 10x faster than Kale's CLI: "
            f"{'PASS' if min(ratios) >= 10 else 'FAIL'} (min {min(ratios):.1f}x)"
        )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "check.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
