"""Objects whose own restore code runs when they are loaded (kale_py.marshal).

A formula model re-evaluates its formula when unpickled, looking names up in its
caller's frames: it must restore in the loading step's namespace, and a failure of such
restore code is reported as what it is, never as a damaged file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kale_py import marshal
from kale_py.marshal import StateError


class Fragile:
    """Pickles fine; its restore code raises, as a library object's may."""

    def __init__(self) -> None:
        self.value = 1

    def __setstate__(self, state: dict[str, Any]) -> None:
        raise ValueError("this object cannot be rebuilt here")


def test_an_exception_of_the_objects_restore_code_is_not_called_corruption(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    marshal.save_variable("obj", Fragile(), state, step="make")
    with pytest.raises(StateError) as caught:
        marshal.load_variable("obj.kpk", state, allowed_root=tmp_path, step="use")
    message = str(caught.value)
    assert "restoring it raised ValueError: this object cannot be rebuilt here" in message
    assert "own restore code (test_restore_errors.__setstate__)" in message
    assert "not because the file is damaged" in message and "corrupt" not in message
    assert caught.value.variable == "obj" and caught.value.type_name.endswith("Fragile")


def test_the_producing_step_reports_an_object_that_cannot_be_restored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(StateError) as caught:
        marshal.save_variable("obj", Fragile(), state, step="make", namespace={})
    message = str(caught.value)
    assert message.startswith("cannot save variable 'obj' (test_restore_errors.Fragile) in "
                              "step 'make': it can be saved but not restored in another step")
    assert "ValueError: this object cannot be rebuilt here" in message
    assert not state.exists() or list(state.iterdir()) == []


def _fitted(namespace: dict[str, Any]) -> Any:
    """A statsmodels formula model fitted in a notebook-like namespace."""
    exec(
        "import numpy as np\nimport pandas as pd\nimport statsmodels.formula.api as smf\n"
        "def shifted(v):\n    return v + 1.0\n"
        "df = pd.DataFrame({'x': np.arange(1.0, 11.0)})\n"
        "df['y'] = 3 * np.log(df['x'] + 1.0)\n"
        "results = smf.ols('y ~ np.log(shifted(x))', data=df).fit()\n",
        namespace,
    )
    return namespace["results"]


def test_a_formula_model_restores_in_the_loading_steps_namespace(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    producer: dict[str, Any] = {}
    results = _fitted(producer)
    state = tmp_path / "state"
    marshal.save_variable("results", results, state, step="fit", namespace=producer)
    consumer = {"np": np, "shifted": producer["shifted"]}
    loaded: Any = marshal.load_variable("results.kpk", state, allowed_root=tmp_path,
                                        namespace=consumer)
    new = pd.DataFrame({"x": [2.0, 4.0]})
    assert list(loaded.predict(new).round(9)) == list(results.predict(new).round(9))


def test_a_formula_model_missing_a_notebook_name_says_so(tmp_path: Path) -> None:
    import numpy as np

    producer: dict[str, Any] = {}
    state = tmp_path / "state"
    marshal.save_variable("results", _fitted(producer), state, namespace=producer)
    with pytest.raises(StateError) as caught:
        marshal.load_variable("results.kpk", state, allowed_root=tmp_path, step="use",
                              namespace={"np": np})
    message = str(caught.value)
    assert "name 'shifted' is not defined" in message
    assert "own restore code (statsmodels.base.data.__setstate__)" in message
    assert "define what it names in an imports or functions cell" in message
    assert "corrupt" not in message
