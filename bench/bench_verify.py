"""Benchmark: `nb2pipe run` and `nb2pipe verify` against nbclient, on the sample notebooks.

    python bench/bench_verify.py [--repeats 1]

For each notebook in sample_notebooks/, side by side in the same run (interleaved, median of
the repeats), each a fresh process as a user would start it:

- nbclient: the notebook top to bottom in a Jupyter kernel (the baseline);
- `nb2pipe run --no-cache`: the local pipeline;
- `nb2pipe verify`: one kernel run plus one pipeline run plus the comparison, so about the
  sum of the two; the ratio verify / (nbclient + run) shows what the comparison itself costs
  (digests in the steps and in the kernel), target <= 1.15.

Each notebook runs in a copy of sample_notebooks/ (data files beside it), so nothing is
left behind.
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
SAMPLES = HERE.parent / "sample_notebooks"
TARGET = 1.15


def run_nbclient(path: Path) -> float:
    code = (
        "import nbformat, sys; from nbclient import NotebookClient; "
        "nb = nbformat.read(sys.argv[1], as_version=4); "
        "NotebookClient(nb, timeout=600, kernel_name='python3', "
        "resources={'metadata': {'path': sys.argv[2]}}).execute()"
    )
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code, str(path), str(path.parent)], check=True, capture_output=True
    )
    return time.perf_counter() - start


def run_nb2pipe(command: str, path: Path, *extra: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "kale_py", command, str(path), *extra],
        capture_output=True,
        text=True,
        cwd=path.parent,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"nb2pipe {command} {path.name} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def measure(path: Path, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"nbclient": [], "run": [], "verify": []}
    for _ in range(repeats):
        order = list(times)
        random.shuffle(order)
        for who in order:
            if who == "nbclient":
                times[who].append(run_nbclient(path))
            elif who == "run":
                times[who].append(run_nb2pipe("run", path, "--no-cache", "--progress", "quiet"))
            else:
                times[who].append(run_nb2pipe("verify", path))
    return {who: statistics.median(values) for who, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "samples"
        shutil.copytree(SAMPLES, copy, ignore=shutil.ignore_patterns(".nb2pipe", "*.yaml"))
        for path in sorted(copy.glob("*.ipynb")):
            t = measure(path, args.repeats)
            rows.append((path.stem, t["nbclient"], t["run"], t["verify"]))
    print(
        f"\n{'notebook':<18} {'nbclient s':>10} {'run s':>7} {'run/nbc':>8} {'verify s':>9} "
        f"{'verify/nbc':>11} {'verify/(nbc+run)':>17}"
    )
    for name, nbc, run, verify in rows:
        both = verify / (nbc + run)
        print(
            f"{name:<18} {nbc:>10.2f} {run:>7.2f} {run / nbc:>8.2f} {verify:>9.2f} "
            f"{verify / nbc:>11.2f} {both:>17.2f} {'PASS' if both <= TARGET else 'FAIL'}"
        )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    keys = ("notebook", "nbclient_s", "run_s", "verify_s")
    (out / "bench_verify.json").write_text(
        json.dumps([dict(zip(keys, row, strict=True)) for row in rows], indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
