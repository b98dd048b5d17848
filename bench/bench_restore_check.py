"""Benchmark: the producing step's round-trip check (marshal.save_variable(namespace=...)).

    python bench/bench_restore_check.py

Saving a library object restores it once, so that an object that saves but cannot be
rebuilt is reported by the step that made it. This prints the save time without and with
that check, and their ratio, for a statsmodels formula model (whose restore re-evaluates
its formula) and a scikit-learn random forest; best of 5, no content hash.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from kale_py import marshal


def best_save(obj: object, **options: Any) -> float:
    best = float("inf")
    for _ in range(5):
        with tempfile.TemporaryDirectory() as directory:
            started = time.perf_counter()
            marshal.save_variable("v", obj, directory, content_hash=False, **options)
            best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    namespace: dict[str, Any] = {"np": np, "smf": smf}
    frame = pd.DataFrame({"x": np.arange(1.0, 20_001.0)})
    frame["y"] = np.log(frame["x"]) + np.random.default_rng(0).normal(size=len(frame))
    namespace["df"] = frame
    exec("results = smf.ols('y ~ np.log(x)', df).fit()", namespace)
    features, labels = make_classification(5000, 20, random_state=0)
    forest = RandomForestClassifier(100, random_state=0).fit(features, labels)
    print(f"{'object':34} {'no check ms':>12} {'round trip ms':>14} {'ratio':>6}")
    for name, obj in [("statsmodels OLS results, 20k rows", namespace["results"]),
                      ("random forest, 100 trees", forest)]:
        plain, checked = best_save(obj), best_save(obj, namespace=namespace)
        print(f"{name:34} {plain * 1000:12.1f} {checked * 1000:14.1f} {checked / plain:6.2f}")


if __name__ == "__main__":
    main()
