"""Benchmark: kale_py.marshal against dill and against the disk's raw limit.

    python bench/bench_state.py [--quick] [--repeats N] [--objects abcd] [--dir DIR]

Objects: (a) a 1 GiB float64 array, (b) a 10-million-row DataFrame (float64, int64, int32,
strings, category), (c) a fitted RandomForestClassifier (100 trees, 2000x20), (d) a million
small dicts. ``--quick`` divides the sizes by 16.

Methods, interleaved in a shuffled order within each repeat (the machine is shared, so
only same-run comparisons mean anything):

- marshal: save_variable (write + fsync + rename, content digest) / load_variable of the
  manifest's record, which verifies every byte against the digest before unpickling (the
  product's path: verification is always on);
- marshal-unverified: the same without the digest, loaded by path without verification
  (a diagnostic: the cost of computing and checking the digest);
- marshal-group: the object saved under two names as one group (one file that keeps
  identity and numpy views), loaded (verified) with load_variables;
- dill: dill.dump + fsync / dill.load;
- raw: the same number of bytes written + fsync / read back through mmap, touching every page.

"cold" loads run after the file's pages were dropped from the page cache
(posix_fadvise DONTNEED after fsync); "warm" loads right after. Every load touches the
data: one byte per page of every array and column, every tree, every record. Medians and minimums
are printed and written to bench/results/state-<time>.json, and so are paired ratios (each
repeat's raw time over the method's in the same repeat, their median), which a shared machine's
drift moves less. Targets are printed, not asserted (on the medians' ratios).
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dill  # noqa: E402  (imported after the path is set, like the package)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kale_py import marshal  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PAGE = 4096


# --- the objects --------------------------------------------------------------------------


def make_array(scale: int) -> Any:
    return np.random.default_rng(0).random((1 << 27) // scale)  # 1 GiB of float64


def make_frame(scale: int) -> Any:
    n = 10_000_000 // scale
    rng = np.random.default_rng(1)
    return pd.DataFrame({
        "f64": rng.random(n),
        "i64": np.arange(n, dtype=np.int64),
        "i32": rng.integers(0, 1 << 30, n, dtype=np.int32),
        "text": pd.Series(np.char.add("id-", np.arange(n).astype(str)), dtype="str"),
        "cat": pd.Categorical.from_codes(rng.integers(0, 5, n), ["a", "b", "c", "d", "e"]),
    })


def make_forest(scale: int) -> Any:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(n_samples=2000 // scale, n_features=20, random_state=0)
    return RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y)


def make_dicts(scale: int) -> Any:
    n = 1_000_000 // scale
    return {"records": [
        {"id": i, "name": f"user{i}", "score": i * 0.5, "active": i % 3 == 0,
         "tags": [i % 7, i % 11]}
        for i in range(n)
    ]}


# --- touching what a load returned ----------------------------------------------------------


def touch_array(array: Any) -> int:
    """One byte per page: every page of the array's memory is faulted in."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.hasobject:
        # Python objects (strings without pyarrow): unpickling built every one of them;
        # reading each reference is the touch
        return sum(1 for item in flat if item is not None)
    return int(flat.view(np.uint8)[::PAGE].sum()) if flat.size else 0


def touch_frame(frame: Any) -> int:
    # Not through pickle: pandas' __getstate__ copies every Arrow-backed column.
    total = 0
    for name in frame.columns:
        values = frame[name].array
        if isinstance(values, pd.Categorical):
            total += touch_array(values.codes)
        elif getattr(values.dtype, "storage", None) == "python":
            total += len(values)  # object array: unpickling already built every string
        elif hasattr(values, "__arrow_array__"):  # pyarrow-backed strings (when installed)
            for chunk in values.__arrow_array__().chunks:
                total += sum(touch_array(np.frombuffer(b, np.uint8))
                             for b in chunk.buffers() if b is not None)
        else:
            total += touch_array(values)
    return total


def touch_forest(forest: Any) -> int:
    # predict() would cost more than the load itself; the round-trip check runs it once.
    return sum(int(tree.tree_.threshold.sum() != 0) for tree in forest.estimators_)


def touch_dicts(obj: Any) -> int:
    return sum(len(record) for record in obj["records"])


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, pd.DataFrame):
        return bool(a.equals(b))
    if hasattr(a, "predict"):
        x = np.random.default_rng(2).random((50, 20))
        return bool((a.predict(x) == b.predict(x)).all())
    return bool(a == b)


@dataclass
class Case:
    key: str
    title: str
    make: Callable[[int], Any]
    touch: Callable[[Any], int]
    repeats: int


CASES = [
    Case("a", "(a) float64 array, 1 GiB", make_array, touch_array, 5),
    Case("b", "(b) DataFrame, 10M rows x 5", make_frame, touch_frame, 5),
    Case("c", "(c) RandomForestClassifier, 100 trees", make_forest, touch_forest, 7),
    Case("d", "(d) {'records': 1M small dicts}", make_dicts, touch_dicts, 3),
]


# --- the methods --------------------------------------------------------------------------


def drop_cache(path: Path) -> None:
    """Evict the file's (clean, fsynced) pages from the page cache: the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fsync_file(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


class Method:
    name = ""

    def __init__(self, workdir: Path, case: Case) -> None:
        self.workdir = workdir
        self.case = case
        self.path = workdir / f"{self.name}-{case.key}"

    def save(self, obj: Any) -> None:
        raise NotImplementedError

    def load(self) -> Any:
        raise NotImplementedError

    def load_and_touch(self) -> int:
        return self.case.touch(self.load())


class Marshal(Method):
    name = "marshal"

    def __init__(self, workdir: Path, case: Case) -> None:
        super().__init__(workdir, case)
        self.state = workdir / "state"
        self.path = self.state / f"{case.key}{marshal.SUFFIX}"

    def save(self, obj: Any) -> None:
        self.record = marshal.save_variable(self.case.key, obj, self.state, step="bench")

    def load(self) -> Any:
        # From the record, as steps load: the file is verified against its digest first.
        return marshal.load_variable(self.record, self.state, allowed_root=self.workdir)


class MarshalUnverified(Marshal):
    """A diagnostic, not a product path: the format's cost without the digest's."""

    name = "marshal-unverified"

    def __init__(self, workdir: Path, case: Case) -> None:
        super().__init__(workdir, case)
        self.state = workdir / "state-unverified"
        self.path = self.state / f"{case.key}{marshal.SUFFIX}"

    def save(self, obj: Any) -> None:
        self.record = marshal.save_variable(self.case.key, obj, self.state, step="bench",
                                            content_hash=False)

    def load(self) -> Any:
        return marshal.load_variable(self.path, self.state, allowed_root=self.workdir)


class MarshalGroup(Marshal):
    """Names that may share objects: one file, identity kept (the object under two names)."""

    name = "marshal-group"

    def __init__(self, workdir: Path, case: Case) -> None:
        super().__init__(workdir, case)
        self.state = workdir / "state-group"
        self.path = self.state / f"{case.key}.group{marshal.SUFFIX}"

    def save(self, obj: Any) -> None:
        names = (self.case.key, self.case.key + "_alias")
        self.records = marshal.save_variables(dict.fromkeys(names, obj), self.state,
                                              step="bench", groups=[names])

    def load(self) -> Any:
        loaded = marshal.load_variables(self.records, self.state, allowed_root=self.workdir)
        assert loaded[self.case.key] is loaded[self.case.key + "_alias"]
        return loaded[self.case.key]


class Dill(Method):
    name = "dill"

    def save(self, obj: Any) -> None:
        with open(self.path, "wb") as f:
            dill.dump(obj, f)
            fsync_file(f)

    def load(self) -> Any:
        with open(self.path, "rb") as f:
            return dill.load(f)


class Raw(Method):
    """The disk's limit for the same number of bytes: plain write + fsync, mmap read."""

    name = "raw"

    def __init__(self, workdir: Path, case: Case, size: int) -> None:
        super().__init__(workdir, case)
        # Random bytes, faulted in before timing, as the objects' memory is.
        self.source = np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8)

    def save(self, obj: Any) -> None:
        with open(self.path, "wb", buffering=0) as f:
            f.write(self.source.data)
            os.fsync(f.fileno())

    def load_and_touch(self) -> int:
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pages = np.frombuffer(mm, np.uint8)[::PAGE]
            total = int(pages.sum())
            del pages  # release the export before the map closes
        return total


# --- running --------------------------------------------------------------------------------


@dataclass
class Timings:
    save: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    # CPU seconds of this process (every thread): what the digest costs whatever the load
    save_cpu: list[float] = field(default_factory=list)
    cold_cpu: list[float] = field(default_factory=list)


def timed(fn: Callable[[], Any], cpu: list[float] | None = None) -> float:
    gc.collect()  # earlier garbage must not be collected inside the measurement
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    del result
    return elapsed


def measure_once(method: Method, obj: Any, timings: Timings) -> None:
    method.path.unlink(missing_ok=True)  # every method writes a new file
    timings.save.append(timed(lambda: method.save(obj), timings.save_cpu))
    drop_cache(method.path)
    timings.cold.append(timed(method.load_and_touch, timings.cold_cpu))
    timings.warm.append(timed(method.load_and_touch))


def check_round_trips(case: Case, obj: Any, methods: list[Method]) -> dict[str, bool]:
    ok = {}
    for method in methods:
        if isinstance(method, Raw):
            continue
        method.save(obj)
        ok[method.name] = same(obj, method.load())
    gc.collect()
    return ok


def run_case(case: Case, scale: int, repeats: int, workdir: Path) -> dict[str, Any]:
    print(f"\n{case.title}{' / 16' if scale > 1 else ''}: building...", flush=True)
    obj = case.make(scale)
    marshal_method, dill_method = Marshal(workdir, case), Dill(workdir, case)
    ok = check_round_trips(case, obj, [marshal_method, dill_method])
    size = marshal_method.record.bytes
    methods: list[Method] = [marshal_method, MarshalUnverified(workdir, case), dill_method,
                             MarshalGroup(workdir, case), Raw(workdir, case, size)]
    timings = {m.name: Timings() for m in methods}
    for repeat in range(repeats):
        random.shuffle(methods)
        for method in methods:
            measure_once(method, obj, timings[method.name])
        print(f"  repeat {repeat + 1}/{repeats}: "
              + ", ".join(f"{m.name} {timings[m.name].save[-1]:.3f}/{timings[m.name].cold[-1]:.3f}"
                          for m in methods), flush=True)
    for method in methods:
        method.path.unlink(missing_ok=True)
    return {"title": case.title, "file_bytes": size, "repeats": repeats, "round_trip_ok": ok,
            "marshal_format": marshal_method.record.format,
            "times": {name: vars(t) for name, t in timings.items()}}


# --- reporting ------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(key: str, result: dict[str, Any]) -> dict[str, Any]:
    t = {name: {phase: median(v) for phase, v in phases.items()}
         for name, phases in result["times"].items()}
    best = {name: {phase: min(v) for phase, v in phases.items()}
            for name, phases in result["times"].items()}
    summary: dict[str, Any] = {
        "marshal_vs_raw_write_rate": t["raw"]["save"] / t["marshal"]["save"],
        "marshal_vs_raw_cold_read_rate": t["raw"]["cold"] / t["marshal"]["cold"],
        "dill_over_marshal_save_time": t["dill"]["save"] / t["marshal"]["save"],
        "dill_over_marshal_cold_load_time": t["dill"]["cold"] / t["marshal"]["cold"],
        "marshal_without_hash_vs_raw_write_rate":
            t["raw"]["save"] / t["marshal-unverified"]["save"],
        "unverified_vs_raw_cold_read_rate": t["raw"]["cold"] / t["marshal-unverified"]["cold"],
        "group_vs_raw_write_rate": t["raw"]["save"] / t["marshal-group"]["save"],
        "group_vs_raw_cold_read_rate": t["raw"]["cold"] / t["marshal-group"]["cold"],
        # the same ratios from the fastest repeat of each, less sensitive to a busy machine
        "best_of": {
            "marshal_vs_raw_write_rate": best["raw"]["save"] / best["marshal"]["save"],
            "marshal_vs_raw_cold_read_rate": best["raw"]["cold"] / best["marshal"]["cold"],
            "dill_over_marshal_save_time": best["dill"]["save"] / best["marshal"]["save"],
            "marshal_without_hash_vs_raw_write_rate":
                best["raw"]["save"] / best["marshal-unverified"]["save"],
            "unverified_vs_raw_cold_read_rate":
                best["raw"]["cold"] / best["marshal-unverified"]["cold"],
            "group_vs_raw_write_rate": best["raw"]["save"] / best["marshal-group"]["save"],
            "group_vs_raw_cold_read_rate": best["raw"]["cold"] / best["marshal-group"]["cold"],
        },
    }
    # each repeat's raw time over the method's, same repeat: the machine's drift cancels out
    raw_times = result["times"]["raw"]
    summary["paired"] = {
        ratio: median([r / m for r, m in zip(raw_times[phase], result["times"][name][phase],
                                             strict=True)])
        for ratio, phase, name in (
            ("marshal_vs_raw_write_rate", "save", "marshal"),
            ("marshal_without_hash_vs_raw_write_rate", "save", "marshal-unverified"),
            ("marshal_vs_raw_cold_read_rate", "cold", "marshal"),
            ("unverified_vs_raw_cold_read_rate", "cold", "marshal-unverified"),
        )
    }
    if key in ("a", "b"):
        summary["target"] = "write and verified cold read >= 0.9 of raw"
        summary["pass"] = (summary["marshal_vs_raw_write_rate"] >= 0.9
                           and summary["marshal_vs_raw_cold_read_rate"] >= 0.9)
    elif key == "d":
        summary["target"] = "save >= 5x faster than dill"
        summary["pass"] = summary["dill_over_marshal_save_time"] >= 5
    return summary


def print_case(result: dict[str, Any]) -> None:
    size = result["file_bytes"]
    print(f"\n{result['title']}: file {size / 1e6:.1f} MB, {result['repeats']} repeats, "
          f"marshal format {result['marshal_format']}, round trips ok: {result['round_trip_ok']}")
    print("  median s [min]     | save (write+fsync) | cold load+touch | warm load+touch "
          "| save GB/s | cold GB/s | save CPU s | cold load CPU s")
    for name, phases in result["times"].items():
        cells = [f"{median(phases[p]):8.3f} [{min(phases[p]):.3f}]"
                 for p in ("save", "cold", "warm")]
        rates = [f"{size / median(phases[p]) / 1e9:9.2f}" for p in ("save", "cold")]
        cpu = [f"{median(phases[p]):10.3f}" for p in ("save_cpu", "cold_cpu")]
        print(f"  {name:18s} | {cells[0]:>18s} | {cells[1]:>15s} | {cells[2]:>15s} | "
              f"{rates[0]} | {rates[1]} | {cpu[0]} | {cpu[1]:>15s}")


def ratio_cell(summary: dict[str, Any], name: str, width: int, digits: int) -> str:
    median_value, best_value = summary[name], summary["best_of"][name]
    return f"{median_value:.{digits}f} [{best_value:.{digits}f}]".rjust(width)


def print_summary(cases: dict[str, dict[str, Any]]) -> None:
    print("\nmedians [best repeat]")
    print("object | marshal/raw write rate | (without the digest) | verified/raw cold read rate "
          "| (unverified) | dill/marshal save time | dill/marshal cold load time "
          "| target (on medians)")
    for key, result in cases.items():
        s = result["summary"]
        verdict = f"{s['target']}: {'PASS' if s['pass'] else 'FAIL'}" if "target" in s else "-"
        print(f"({key})    | {ratio_cell(s, 'marshal_vs_raw_write_rate', 22, 2)} | "
              f"{ratio_cell(s, 'marshal_without_hash_vs_raw_write_rate', 20, 2)} | "
              f"{ratio_cell(s, 'marshal_vs_raw_cold_read_rate', 27, 2)} | "
              f"{ratio_cell(s, 'unverified_vs_raw_cold_read_rate', 12, 2)} | "
              f"{ratio_cell(s, 'dill_over_marshal_save_time', 22, 1)} | "
              f"{s['dill_over_marshal_cold_load_time']:27.1f} | {verdict}")
    print("\npaired: the median over repeats of raw time / method time in the same repeat")
    print("object | marshal/raw write rate | (without the digest) | verified/raw cold read rate "
          "| (unverified)")
    for key, result in cases.items():
        p = result["summary"]["paired"]
        print(f"({key})    | {p['marshal_vs_raw_write_rate']:22.2f} | "
              f"{p['marshal_without_hash_vs_raw_write_rate']:20.2f} | "
              f"{p['marshal_vs_raw_cold_read_rate']:27.2f} | "
              f"{p['unverified_vs_raw_cold_read_rate']:12.2f}")
    print("\nshared names (one group file, identity kept)")
    print("object | group/raw write rate | group/raw cold read rate")
    for key, result in cases.items():
        s = result["summary"]
        print(f"({key})    | {ratio_cell(s, 'group_vs_raw_write_rate', 20, 2)} | "
              f"{ratio_cell(s, 'group_vs_raw_cold_read_rate', 24, 2)}")


def environment() -> dict[str, Any]:
    import cloudpickle
    import sklearn

    pressure = Path("/proc/pressure/cpu")
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "numpy": np.__version__, "pandas": pd.__version__, "sklearn": sklearn.__version__,
        "dill": dill.__version__, "cloudpickle": cloudpickle.__version__,
        "cpus": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg(),
        "cpu_pressure": pressure.read_text().splitlines()[0] if pressure.exists() else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/16 of the sizes")
    parser.add_argument("--repeats", type=int, help="repeats for every object (default: 5/5/7/3)")
    parser.add_argument("--objects", default="abcd", help="which objects, e.g. 'ad'")
    parser.add_argument("--dir", type=Path, help="scratch directory (default: under bench/results)")
    args = parser.parse_args(argv)
    scale = 16 if args.quick else 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="scratch-", dir=args.dir or RESULTS))
    report: dict[str, Any] = {"environment_start": environment(), "quick": args.quick, "cases": {}}
    print(json.dumps(report["environment_start"]))
    try:
        for case in CASES:
            if case.key in args.objects:
                result = run_case(case, scale, args.repeats or case.repeats, workdir)
                result["summary"] = summarize(case.key, result)
                report["cases"][case.key] = result
                print_case(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["environment_end"] = environment()
    print_summary(report["cases"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"state-{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out.relative_to(ROOT)}; load average now {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
