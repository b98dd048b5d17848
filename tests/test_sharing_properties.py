"""Generated notebooks whose cells alias and mutate lists, run two ways and compared.

Each program is a few steps over lists ``a``..``e`` that are held by one another
(``a = [b]``, ``d = {"k": c}``, ``a.append(b)``), aliased (``a = b``), iterated
(``for v in list(a)``) and changed in place through any of those names. Run top to bottom
in one namespace, every name ends with some value; run as the pipeline would (each step
in a fresh namespace that has only what the graph says it loads, from the files its
providers saved with kale_py.marshal, groups included), a last step that reads every name
must see the same values, shared sub-objects included (compared by pickle, which records
sharing within a value), and the same sharing between names.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kale_py import marshal
from kale_py.graph import build_pipeline
from kale_py.notebook import percent_script_to_notebook

NAMES = ["a", "b", "c", "d", "e"]
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def statement(draw: st.DrawFn) -> str:
    x, y = draw(st.sampled_from(NAMES)), draw(st.sampled_from(NAMES))
    k = draw(st.integers(0, 9))
    return draw(st.sampled_from([
        f"{x} = [{k}]",
        f"{x} = {y}",
        f"{x} = [{y}, {k}]",
        f"{x} = {{'k': {y}}}",
        f"{x}.append({y}) if isinstance({x}, list) else {x}.update(k={y})",
        f"{x}.append({k}) if isinstance({x}, list) else {x}.update(k={k})",
        f"if isinstance({x}, list):\n    {x} += [{k}]",
        f"for v in list({x}.values() if isinstance({x}, dict) else {x}):\n"
        f"    if isinstance(v, list):\n        v.append({k})",
        f"{x} = {y}['k'] if isinstance({y}, dict) else {y}",
        f"{x} = list({y}) if isinstance({y}, list) else [{y}]",
    ]))


@st.composite
def program(draw: st.DrawFn) -> list[str]:
    first = "\n".join(f"{n} = [{i}]" for i, n in enumerate(NAMES))
    steps = [first]
    for _ in range(draw(st.integers(2, 5))):
        steps.append("\n".join(draw(st.lists(statement(), min_size=1, max_size=3))))
    return steps


READ_ALL = f"seen = ({', '.join(NAMES)})"


def sequential(steps: list[str]) -> bytes:
    namespace: dict[str, Any] = {}
    for code in [*steps, READ_ALL]:
        exec(code, namespace)
    return pickle.dumps(namespace["seen"])


def as_pipeline(steps: list[str], state: Path) -> bytes:
    steps = [*steps, READ_ALL]
    text = "".join(f'# %% tags=["step:s{i}"]\n{code}\n\n' for i, code in enumerate(steps))
    built = build_pipeline(percent_script_to_notebook(text))
    assert built.ok, built.diagnostics
    for step in built.steps:
        io = built.io[step.name]
        namespace: dict[str, Any] = {}
        by_provider: dict[str, list[str]] = {}
        for name, provider in io.loads.items():
            by_provider.setdefault(provider, []).append(name)
        for provider, names in by_provider.items():
            directory = state / provider
            records = marshal.read_manifest(directory)["variables"]
            namespace.update(marshal.load_variables([records[n] for n in names], directory,
                                                    allowed_root=state))
        for cell in step.cells:
            exec(cell.source, namespace)
        saved = marshal.save_variables({n: namespace[n] for n in io.saves if n in namespace},
                                       state / step.name, step=step.name, groups=io.groups)
        marshal.write_manifest(state / step.name, step.name, saved)
    return pickle.dumps(namespace["seen"])


@SETTINGS
@given(program())
def test_pipeline_values_equal_the_sequential_run(tmp_path_factory: Any, steps: list[str]
                                                  ) -> None:
    expected = sequential(steps)
    actual = as_pipeline(steps, tmp_path_factory.mktemp("state"))
    # One pickle of all the names: equal bytes mean equal values and the same objects
    # shared, within a value and between names (values may hold themselves: no ==).
    assert actual == expected, steps
