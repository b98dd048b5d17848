"""Process-wide state between steps: what the analysis sees, and what the runtime carries.

The runtime half runs for real: each step is a fresh `python -m kale_py.runtime` process
(see tests/test_runtime.py), so a setting reaches the second step only if it was saved by
the first and restored in the second. The equivalence notebooks in tests/notebooks/
(`*_in_step`, `seeded_rng_across_steps`) compare whole runs with a kernel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_runtime import Steps, _notebook

from kale_py.api import check_notebook
from kale_py.hazards import find_hazards


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("sklearn.set_config(transform_output='pandas')", ("setting", "sklearn")),
        ("set_config(assume_finite=True)", ("setting", "sklearn")),
        ("pd.set_option('display.max_rows', 5)", ("setting", "pandas")),
        ("pd.options.display.precision = 2", ("setting", "pandas")),
        ("np.set_printoptions(precision=3)", ("setting", "numpy")),
        ("np.seterr(all='raise')", ("setting", "numpy")),
        ("plt.rcParams['lines.linewidth'] = 2", ("setting", "matplotlib")),
        ("mpl.rcParams.update({'axes.grid': True})", ("setting", "matplotlib")),
        ("plt.style.use('ggplot')", ("setting", "matplotlib")),
        ("matplotlib.rc('font', size=9)", ("setting", "matplotlib")),
        ("sns.set_theme()", ("setting", "matplotlib")),
        ("warnings.filterwarnings('ignore')", ("setting", "warnings")),
        ("warnings.simplefilter('error')", ("setting", "warnings")),
        ("logging.basicConfig(level=logging.INFO)", ("setting", "logging")),
        ("torch.set_default_dtype(torch.float64)", ("setting", "torch")),
        ("np.random.seed(0)", ("seed", "numpy")),
        ("random.setstate(saved)", ("seed", "random")),
        ("torch.manual_seed(0)", ("seed", "torch")),
        ("x = np.random.rand(3)", ("random", "numpy")),
        ("x = random.choice(xs)", ("random", "random")),
        ("x = torch.randn(3)", ("random", "torch")),
        ("a, b = train_test_split(X)", ("random", "numpy")),
        ("a, b = train_test_split(X, random_state=None)", ("random", "numpy")),
        ("part = df.sample(frac=0.5)", ("random", "numpy")),
        ("sys.setrecursionlimit(10**5)", ("uncarried", "sys.setrecursionlimit")),
        ("locale.setlocale(locale.LC_ALL, '')", ("uncarried", "locale.setlocale")),
    ],
)
def test_process_state_calls_are_found(source: str, expected: tuple[str, str]) -> None:
    assert [(h.kind, h.detail) for h in find_hazards(source)] == [expected]


@pytest.mark.parametrize(
    "source",
    [
        "rng = np.random.default_rng(0)",
        "rs = np.random.RandomState(0)",
        "r = random.Random(4)",
        "a, b = train_test_split(X, random_state=0)",
        "part = df.sample(frac=0.5, random_state=1)",
        "with sklearn.config_context(assume_finite=True):\n    pass",
        "rc('font', size=9)",  # a bare rc(...) is not known to be matplotlib's
    ],
)
def test_not_process_state(source: str) -> None:
    assert find_hazards(source) == []


def test_unprovided_draw_loads_nothing_and_settings_reach_every_later_step(
    tmp_path: Path,
) -> None:
    path = _notebook(
        tmp_path,
        [
            (["imports"], "import numpy as np\nimport pandas as pd"),
            (["step:a"], "x = np.random.rand(2)"),  # unseeded: nothing to continue from
            (["step:b"], "pd.set_option('display.width', 100)"),
            (["step:c"], "y = 1"),
            (["step:d"], "z = 2"),
        ],
    )
    pipeline = check_notebook(path)
    assert pipeline.ok and not pipeline.diagnostics
    assert dict(pipeline.io["a"].loads) == {}
    assert pipeline.io["a"].saves == ()  # no later step draws
    assert dict(pipeline.io["c"].loads) == {"@settings.pandas": "b"}
    assert dict(pipeline.io["d"].loads) == {"@settings.pandas": "b"}
    assert pipeline.levels == (("a", "b"), ("c", "d"))  # c and d stay parallel


def test_a_function_that_draws_makes_its_callers_draw(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (["imports"], "import random"),
            (["functions"], "def roll():\n    return random.randint(1, 6)"),
            (["step:a"], "random.seed(1)\n\ndef flip():\n    return random.random() < 0.5"),
            (["step:b"], "r = roll()"),
            (["step:c"], "f = flip()"),
        ],
    )
    pipeline = check_notebook(path)
    assert dict(pipeline.io["b"].loads) == {"@rng.random": "a"}
    assert pipeline.io["c"].loads["@rng.random"] == "b"
    assert pipeline.io["c"].loads["flip"] == "a"


def test_settings_change_starts_from_the_earlier_settings(tmp_path: Path) -> None:
    """Changing one option keeps the others an earlier step set, as in the kernel."""
    path = _notebook(
        tmp_path,
        [
            (["imports"], "import pandas as pd"),
            (["step:a"], "pd.set_option('display.max_rows', 7)"),
            (["step:b"], "pd.set_option('display.max_columns', 3)"),
            (
                ["step:c"],
                "import json\nopen('o.json', 'w').write(json.dumps("
                "[pd.get_option('display.max_rows'), pd.get_option('display.max_columns')]))",
            ),
        ],
    )
    steps = Steps(path)
    assert dict(steps.pipeline.io["b"].loads) == {"@settings.pandas": "a"}
    assert dict(steps.pipeline.io["c"].loads) == {"@settings.pandas": "b"}
    for name in "abc":
        done, result = steps.step(name)
        assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "o.json").read_text()) == [7, 3]


def test_numpy_options_and_logging_reach_the_next_step(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (["imports"], "import logging\nimport numpy as np"),
            (
                ["step:a"],
                "np.set_printoptions(precision=2)\nnp.seterr(divide='raise')\n"
                "logging.basicConfig(level=logging.INFO, format='%(levelname)s|%(message)s')",
            ),
            (
                ["step:b"],
                "import json\nroot = logging.getLogger()\n"
                "seen = [np.get_printoptions()['precision'], np.geterr()['divide'], root.level,\n"
                "        [h.formatter._fmt for h in root.handlers]]\n"
                "open('o.json', 'w').write(json.dumps(seen))\n"
                "logging.info('hello')",
            ),
        ],
    )
    steps = Steps(path)
    assert set(steps.pipeline.io["b"].loads) == {"@settings.numpy", "@settings.logging"}
    done, _ = steps.step("a")
    assert done.returncode == 0, done.stderr
    done, _ = steps.step("b")
    assert done.returncode == 0, done.stderr
    seen = json.loads((tmp_path / "o.json").read_text())
    assert seen == [2, "raise", 20, ["%(levelname)s|%(message)s"]]
    assert "INFO|hello" in done.stderr


def test_random_stream_continues_in_the_next_step(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            (["imports"], "import random"),
            (["step:a"], "random.seed(3)\nfirst = random.random()"),
            (["step:b"], "open('o.txt', 'w').write(repr(random.random()))"),
        ],
    )
    steps = Steps(path)
    for name in "ab":
        done, _ = steps.step(name)
        assert done.returncode == 0, done.stderr
    import random

    expected = random.Random(3)
    expected.random()
    assert float((tmp_path / "o.txt").read_text()) == expected.random()


def test_warning_class_defined_in_a_step_is_left_out_not_fatal(tmp_path: Path) -> None:
    """A filter on a class the consumer does not define cannot be rebuilt: it is dropped."""
    path = _notebook(
        tmp_path,
        [
            (["imports"], "import warnings"),
            (
                ["step:a"],
                "class Mine(UserWarning):\n    pass\n"
                "warnings.simplefilter('error', Mine)\n"
                "warnings.simplefilter('error', RuntimeWarning)",
            ),
            (
                ["step:b"],
                "try:\n    warnings.warn('x', RuntimeWarning)\n    out = 'no'\n"
                "except RuntimeWarning:\n    out = 'raised'\nopen('o.txt', 'w').write(out)",
            ),
        ],
    )
    steps = Steps(path)
    for name in "ab":
        done, _ = steps.step(name)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.txt").read_text() == "raised"
