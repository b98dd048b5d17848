"""Benchmark: ``nb2pipe runs`` on a notebook with 1,000 runs (target: under 1 s).

    python bench/bench_runs.py [--runs N]

Makes N finished runs of one notebook (a run.json each, as a two-step run writes it, plus a
log), then times ``nb2pipe runs NOTEBOOK`` in a fresh process against the baseline of
``nb2pipe --help`` in a fresh process (the interpreter's and the CLI's start-up), and the
listing function alone in this process. Medians of 5; printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_runs(folder: Path, count: int) -> Path:
    notebook = folder / "nb.ipynb"
    notebook.write_text("{}")
    runs = folder / ".nb2pipe" / "runs"
    for i in range(count):
        run_id = f"20250101T{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}.000Z-{i:06x}"
        path = runs / run_id
        (path / "logs").mkdir(parents=True)
        (path / "logs" / "one.log").write_text("hello\n" * 20)
        steps = {name: {"kfp_name": name, "status": "succeeded", "seconds": 1.5,
                        "peak_rss_bytes": 80_000_000, "cpu_seconds": 1.2}
                 for name in ("one", "two")}
        (path / "run.json").write_text(json.dumps({
            "run_id": run_id, "notebook": str(notebook.resolve()), "status": "succeeded",
            "started": "2025-01-01T00:00:00.000Z", "ended": "2025-01-01T00:00:03.000Z",
            "params": {}, "steps": steps, "metrics": {}, "size_bytes": 12_345_678,
            "runner_pid": 1, "runner_started": 1,
        }, indent=2))
    return notebook


def timed(command: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        notebook = make_runs(Path(scratch), args.runs)
        listing = [sys.executable, "-m", "kale_py", "runs", str(notebook)]
        baseline = [sys.executable, "-m", "kale_py", "--help"]
        runs_times, base_times, inner = [], [], []
        from kale_py.storage import read_all_runs, run_size

        for _ in range(5):
            runs_times.append(timed(listing))
            base_times.append(timed(baseline))
            start = time.perf_counter()
            found = read_all_runs(notebook.parent / ".nb2pipe" / "runs", notebook.resolve())
            sum(run_size(r) for r in found)
            inner.append(time.perf_counter() - start)
        assert len(found) == args.runs
    runs_s, base_s = statistics.median(runs_times), statistics.median(base_times)
    print(f"{args.runs} runs: nb2pipe runs {runs_s:.3f} s (target < 1 s: "
          f"{'PASS' if runs_s < 1 else 'FAIL'}); nb2pipe --help {base_s:.3f} s; "
          f"listing alone {statistics.median(inner):.3f} s; "
          f"listing over start-up {runs_s / base_s:.2f}x; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
