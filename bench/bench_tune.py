"""Benchmark: `nb2pipe tune` against running the whole notebook once per trial, same run.

    python bench/bench_tune.py [--trials 6] [--repeats 2]

The iris sample notebook, tuning N_ESTIMATORS over a grid of ``--trials`` values. Two ways
to try the same values, interleaved, median of the repeats:

1. `nb2pipe tune ... --algorithm grid`: the first trial computes every step; the later ones
   take `load` and `split` (which read no tuned parameter) from the run cache;
2. the baseline a user has without kale_py: executing the notebook once per trial with
   nbclient, the parameter set by a cell injected after the parameters cell (as papermill
   does).

It prints both times, the ratio and the cached steps per trial.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_notebooks" / "iris_classifier.ipynb"


def _values(trials: int) -> list[int]:
    return [10 + 15 * i for i in range(trials)]


def run_tune(work: Path, trials: int) -> tuple[float, list[int]]:
    shutil.rmtree(work / ".nb2pipe", ignore_errors=True)
    spec = "N_ESTIMATORS=" + ",".join(map(str, _values(trials)))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "kale_py", "tune", str(work / SAMPLE.name), "--search", spec,
         "--objective", "accuracy", "--maximize", "--algorithm", "grid", "--format", "json"],
        capture_output=True, text=True, cwd=work, check=True)
    seconds = time.perf_counter() - start
    result = json.loads(done.stdout)
    return seconds, [t["cached_steps"] for t in result["trials"]]


def run_kernel_per_trial(work: Path, trials: int) -> float:
    import nbformat
    from nbclient import NotebookClient

    start = time.perf_counter()
    for value in _values(trials):
        nb = nbformat.read(work / SAMPLE.name, as_version=4)
        at = next(i for i, c in enumerate(nb.cells)
                  if "pipeline-parameters" in c.metadata.get("tags", []))
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"N_ESTIMATORS = {value}"))
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(work)}}).execute()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(SAMPLE, work / SAMPLE.name)
        tune_times, kernel_times, cached = [], [], []
        for _ in range(args.repeats):
            seconds, cached = run_tune(work, args.trials)
            tune_times.append(seconds)
            kernel_times.append(run_kernel_per_trial(work, args.trials))
    tune, kernel = statistics.median(tune_times), statistics.median(kernel_times)
    print(f"iris_classifier, {args.trials} trials (N_ESTIMATORS grid), median of "
          f"{args.repeats}:")
    print(f"  nb2pipe tune                  {tune:7.2f} s")
    print(f"  nbclient, notebook per trial  {kernel:7.2f} s")
    print(f"  ratio tune / per-trial runs   {tune / kernel:7.2f}x")
    print(f"  steps cached per trial        {cached} (of 4)")


if __name__ == "__main__":
    main()
