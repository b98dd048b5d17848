"""Stable digests (kale_py.digest): what counts as the same value for `nb2pipe verify`.

The digests of two processes must agree on equal values: the cross-process case is the
subprocess test below; the rest compares values built twice in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from kale_py.digest import describe, digest, digest_all, same


def _same(a: object, b: object) -> bool:
    return same(json.loads(json.dumps(digest(a))), json.loads(json.dumps(digest(b))))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1.0, 1.0 + 1e-12),
        (float("nan"), float("nan")),
        (np.float64(0.1) * 3, 0.30000000000000004),
        (np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(2, 3) * (1 + 1e-12)),
        (np.arange(100_000), np.arange(100_000)),
        (
            pd.DataFrame({"a": [1.5, 2.5], "b": ["x", "y"]}),
            pd.DataFrame({"a": [1.5, 2.5], "b": ["x", "y"]}),
        ),
        ({"b", "a", "c"}, {"c", "b", "a"}),
        ({"k": [1, (2, 3)]}, {"k": [1, (2, 3)]}),
        (list(range(10_000)), list(range(10_000))),
        (threading.Lock(), threading.Lock()),  # unpicklable: compared by type
    ],
    ids=[
        "float-tolerance",
        "nan",
        "numpy-scalar",
        "float-array-tolerance",
        "int-array",
        "dataframe",
        "set-order",
        "nested",
        "large-list",
        "unpicklable-by-type",
    ],
)
def test_equal_values_have_the_same_digest(a: object, b: object) -> None:
    assert _same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1.0, 1.001),
        (1, 1.0),
        (np.arange(6.0), np.arange(6.0)[::-1]),
        (np.arange(100_000), np.arange(1, 100_001)),
        (pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"b": [1, 2]})),
        (pd.Series([1, 2], index=[0, 1]), pd.Series([1, 2], index=[1, 0])),
        ([1, 2], (1, 2)),
        (list(range(10_000)), list(range(1, 10_001))),
    ],
    ids=[
        "float",
        "int-vs-float",
        "float-array",
        "int-array",
        "columns",
        "index",
        "list-vs-tuple",
        "large-list",
    ],
)
def test_different_values_have_different_digests(a: object, b: object) -> None:
    assert not _same(a, b)


def test_estimators_by_parameters_and_fitted_attributes() -> None:
    X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    y = np.array([0, 1, 1, 0])
    fitted = LogisticRegression().fit(X, y)
    assert _same(fitted, LogisticRegression().fit(X, y))
    assert not _same(fitted, LogisticRegression())  # not fitted
    assert not _same(fitted, LogisticRegression(C=0.5).fit(X, y))  # other parameters
    assert describe(digest(fitted)).endswith(
        "LogisticRegression (parameters and fitted attributes)"
    )


def test_digests_agree_across_processes() -> None:
    """Another interpreter (another hash seed) digests equal values the same way."""
    code = (
        "import json, numpy as np, pandas as pd\n"
        "from kale_py.digest import digest_all\n"
        "values = {'s': {'x', 'y', 'z'}, 'a': np.linspace(0, 1, 50), "
        "'df': pd.DataFrame({'k': ['p', 'q'], 'v': [1.0, 2.0]}), 'd': {'u': 1}}\n"
        "print(json.dumps(digest_all(values)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "123", **_path_env()},
    )
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)
    values = {
        "s": {"x", "y", "z"},
        "a": np.linspace(0, 1, 50),
        "df": pd.DataFrame({"k": ["p", "q"], "v": [1.0, 2.0]}),
        "d": {"u": 1},
    }
    ours = json.loads(json.dumps(digest_all(values)))
    assert ours.keys() == theirs.keys()
    assert all(same(ours[k], theirs[k]) for k in ours)


def _path_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}


def test_modules_are_left_out_and_a_broken_value_is_digested_by_type() -> None:
    class Broken:
        def __getattribute__(self, name: str) -> object:
            raise RuntimeError("no attributes here")

    out = digest_all({"np": np, "b": Broken(), "x": 1})
    assert set(out) == {"b", "x"}
    assert out["b"][0] == "type"


def test_a_cached_function_is_code_whatever_its_cache_holds() -> None:
    """``lru_cache`` wrappers compare as the code they run, like functions: a step that
    loads one starts with an empty cache, the kernel's is warm."""
    import functools

    def make() -> object:
        @functools.cache
        def area(side: int) -> int:
            return side * side
        return area

    warm, cold = make(), make()
    warm(3)  # type: ignore[operator]
    assert digest(warm) == ["code", "test_a_cached_function_is_code_whatever_its_cache_holds"
                            ".<locals>.make.<locals>.area"]
    assert _same(warm, cold)
    assert digest(functools.partial(len, "ab"))[0] != "code"  # a wrapper without a cache
