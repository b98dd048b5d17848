"""Benchmark: `nb2pipe compile` against Kale 2.3's CLI, and kfp.local against `nb2pipe run`.

    python bench/bench_compile.py            # everything (installs Kale on first use)
    python bench/bench_compile.py --no-kale  # skip the Kale comparison

Measured in one run:

1. end-to-end wall time of `nb2pipe compile` and of Kale's `kale --nb` (which always
   compiles to KFP YAML) on the same notebooks: the iris sample and generated 10- and
   50-step notebooks; target nb2pipe >= 10x faster. Kale gets the metrics cell as bare
   `print(name)` lines: it rejects the `print("label:", name)` form its docs show;
2. a 200-step notebook compiled end to end (target < 2 s), and the YAML bytes per step;
3. the compiled iris pipeline executed by KFP's own local runner (kfp.local, through the
   test shim that lets it run container components) against `nb2pipe run` on the same
   notebook.

Kale is installed into bench/.venv-kale on first use (see bench_check.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_check import kale_binary  # noqa: E402


def chain_notebook(steps: int) -> dict[str, object]:
    """A linear pipeline whose steps pass a value on, as Kale can compile it too."""
    cells: list[dict[str, object]] = [
        {"cell_type": "code", "metadata": {"tags": ["imports"]}, "source": "import math",
         "outputs": [], "execution_count": None},
        {"cell_type": "code", "metadata": {"tags": ["step:s0"]}, "source": "v0 = 1.0",
         "outputs": [], "execution_count": None},
    ]
    for i in range(1, steps):
        cells.append({"cell_type": "code", "metadata": {"tags": [f"step:s{i}", f"prev:s{i - 1}"]},
                      "source": f"v{i} = math.sqrt(v{i - 1} + {i})", "outputs": [],
                      "execution_count": None})
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kubeflow_notebook": {"pipeline_name": f"chain-{steps}",
                                               "experiment_name": "bench"}}}


def kale_compatible(path: Path) -> Path:
    """The same notebook in the subset Kale's parser accepts: metrics as bare print(name)."""
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if "pipeline-metrics" in cell["metadata"].get("tags", []):
            source = "".join(cell["source"])
            names = [re.findall(r"(\w+)\)?\s*$", line) for line in source.splitlines()]
            cell["source"] = "\n".join(f"print({found[0]})" for found in names if found)
    target = path.with_name(f"{path.stem}_for_kale.ipynb")
    target.write_text(json.dumps(notebook))
    return target


def timed(cmd: list[str], cwd: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{done.stdout[-1500:]}\n"
                             f"{done.stderr[-1500:]}")
    return statistics.median(times)


def compile_cmd(path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "kale_py", "compile", str(path), "-o", str(out)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-kale", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    kale = None if args.no_kale else kale_binary()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        notebooks = {"iris sample": work / "iris_classifier.ipynb"}
        shutil.copy(ROOT / "sample_notebooks" / "iris_classifier.ipynb", notebooks["iris sample"])
        for steps in (10, 50, 200):
            path = work / f"chain_{steps}.ipynb"
            path.write_text(json.dumps(chain_notebook(steps)))
            notebooks[f"{steps} steps"] = path
        rows = []
        for label, path in notebooks.items():
            ours = timed(compile_cmd(path, work / f"{path.stem}.yaml"), work, args.repeats)
            size = (work / f"{path.stem}.yaml").stat().st_size
            steps = json.loads(path.read_text())["cells"]
            n_steps = sum(any(t.startswith("step:") for t in c["metadata"].get("tags", []))
                          for c in steps)
            theirs = None
            if kale is not None and label != "200 steps":
                kale_path = kale_compatible(path)
                theirs = timed([str(kale), "--nb", str(kale_path)], work,
                               1 if "steps" in label else args.repeats)
            rows.append({"notebook": label, "steps": n_steps, "nb2pipe_s": ours,
                         "kale_s": theirs, "ratio": theirs / ours if theirs else None,
                         "yaml_bytes": size, "bytes_per_step": size // max(n_steps, 1)})
        results["compile"] = rows
        results["kfp_local"] = kfp_local_vs_run(work)
    print(f"\n{'notebook':<12} {'steps':>5} {'nb2pipe s':>10} {'kale s':>8} {'kale/nb2pipe':>13} "
          f"{'YAML bytes/step':>16}")
    for r in rows:
        kale_s = f"{r['kale_s']:.2f}" if r["kale_s"] else "-"
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] else "-"
        print(f"{r['notebook']:<12} {r['steps']:>5} {r['nb2pipe_s']:>10.2f} {kale_s:>8} "
              f"{ratio:>13} {r['bytes_per_step']:>16}")
    big = next(r for r in rows if r["notebook"] == "200 steps")
    print(f"\ntarget: 200 steps compiled in < 2 s: {'PASS' if big['nb2pipe_s'] < 2 else 'FAIL'} "
          f"({big['nb2pipe_s']:.2f} s)")
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    if ratios:
        print(f"target: >= 10x faster than Kale: {'PASS' if min(ratios) >= 10 else 'FAIL'} "
              f"(min {min(ratios):.1f}x)")
    k = results["kfp_local"]
    assert isinstance(k, dict)
    print(f"iris on kfp.local {k['kfp_local_s']:.1f} s vs nb2pipe run {k['nb2pipe_run_s']:.1f} s "
          f"(kfp.local / nb2pipe = {k['kfp_local_s'] / k['nb2pipe_run_s']:.2f})")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "compile.json").write_text(json.dumps(results, indent=2))


def kfp_local_vs_run(work: Path) -> dict[str, float]:
    sample = work / "iris"
    shutil.copytree(ROOT / "sample_notebooks", sample)
    nb = sample / "iris_classifier.ipynb"
    subprocess.run([sys.executable, "-m", "kale_py", "compile", str(nb), "-o",
                    str(work / "iris.yaml")], check=True, capture_output=True)
    code = ("import sys; sys.path.insert(0, sys.argv[3]); "
            "from pathlib import Path; from kfp import components; "
            "from kfp_local_shim import container_components_as_subprocesses as c\n"
            "with c(pipeline_root=Path(sys.argv[2])):\n"
            "    components.load_component_from_file(sys.argv[1])()")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(work / "iris.yaml"), str(work / "kfp"),
                    str(ROOT / "tests")], check=True, capture_output=True, cwd=sample)
    kfp_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kale_py", "run", str(nb), "--no-cache"], check=True,
                   capture_output=True, cwd=sample)
    return {"kfp_local_s": kfp_s, "nb2pipe_run_s": time.perf_counter() - start}


if __name__ == "__main__":
    main()
