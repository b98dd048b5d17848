"""Sequential equivalence, proved on the sample notebooks.

Each sample runs three ways — top to bottom in a real Jupyter kernel (nbclient), as a
local pipeline (through `nb2pipe verify`, which compares stable digests), and as compiled
Kubeflow YAML executed by KFP's own local runner — and every variable the steps write must
have the same final value everywhere.
The pipeline's value of a variable is the one saved by the last step that writes it (the
runtime exports every variable a step writes when KALE_PY_EXPORT_ALL is set).
"""

from __future__ import annotations

import json
import pickle
import shutil
import types
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from kale_py import marshal
from kale_py.api import check_notebook, compile_notebook
from kale_py.graph import Pipeline
from kale_py.verify import READER_STEP, reader_source, verify_notebook

SAMPLES = Path(__file__).parent.parent / "sample_notebooks"
PATTERNS = Path(__file__).parent / "notebooks"


def _equivalence_notebooks(runner: str) -> list[Path]:
    """Sample notebooks, and test notebooks whose ``kale_py_test.equivalence`` lists ``runner``.

    A test notebook opts in with ``"equivalence": ["local"]`` or ``["local", "kfp"]`` in its
    ``metadata.kale_py_test``: it is then run by a kernel and as a pipeline, every variable
    compared, like the samples.
    """
    chosen = sorted(SAMPLES.glob("*.ipynb"))
    for path in sorted(PATTERNS.glob("*.ipynb")):
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
        if runner in meta.get("kale_py_test", {}).get("equivalence", []):
            chosen.append(path)
    return chosen


LOCAL_NOTEBOOKS = _equivalence_notebooks("local")
KFP_NOTEBOOKS = _equivalence_notebooks("kfp")


def _final_writers(pipeline: Pipeline) -> dict[str, str]:
    """Each variable and the step whose value the notebook ends with (the last writer)."""
    writers: dict[str, str] = {}
    for step in pipeline.steps:
        for name in pipeline.io[step.name].writes:
            writers[name] = step.kfp_name
    return writers


def _copy_notebook(source: Path, tmp_path: Path) -> Path:
    """The notebook's folder copied (data files beside it included), without run state."""
    target = tmp_path / source.stem
    shutil.copytree(
        source.parent, target, ignore=shutil.ignore_patterns(".nb2pipe", "*.yaml", "*.py")
    )
    return target / source.name


def _add_reader(path: Path, names: list[str]) -> None:
    """A last step reading ``names``, as ``nb2pipe verify`` adds one: each name's last
    writer then holds it, also one it may only change through another name."""
    nb = nbformat.read(path, as_version=4)
    tags = {"tags": [f"step:{READER_STEP}"]}
    nb.cells.append(nbformat.v4.new_code_cell(reader_source(names), metadata=tags))
    nbformat.write(nb, path)


def _kernel_values(path: Path, names: list[str], out: Path) -> dict[str, Any]:
    """Run the notebook top to bottom in a real kernel; pickle the named variables."""
    nb = nbformat.read(path, as_version=4)
    skip = [c for c in nb.cells if "skip" in c.get("metadata", {}).get("tags", [])]
    for cell in skip:
        nb.cells.remove(cell)
    dump = (
        "import pickle as _p\n_values = {}\n"
        f"for _n in {names!r}:\n"
        # notebook functions and classes are code, not data (see same()), and pickle by
        # a reference to this kernel's __main__ that the test process cannot resolve
        "    if _n in globals() and getattr(globals()[_n], '__module__', '') != '__main__':\n"
        "        try:\n"
        # Notebook code and instances of notebook classes pickle by reference to the
        # kernel's __main__ and cannot load here: the values computed from them compare.
        "            if b'__main__' not in _p.dumps(globals()[_n]):\n"
        "                _values[_n] = globals()[_n]\n"
        "        except Exception:\n"
        "            pass\n"
        f"with open({str(out)!r}, 'wb') as _f:\n"
        "    _p.dump(_values, _f)\n"
    )
    nb.cells.append(nbformat.v4.new_code_cell(dump))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    with out.open("rb") as f:
        return pickle.load(f)  # type: ignore[no-any-return]


def _exported(export: Path, writers: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, step in writers.items():
        manifest = marshal.read_manifest(export / step)
        record = manifest["variables"].get(name)
        if record is not None:
            values[name] = marshal.load_variable(record["file"], export / step, allowed_root=export)
    return values


def same(a: Any, b: Any, depth: int = 0) -> bool:
    if type(a) is not type(b):
        return False
    if depth > 30:
        return pickle.dumps(a) == pickle.dumps(b)
    if isinstance(a, (types.ModuleType, types.FunctionType, type)):
        return True  # code, not data: both runs execute the same definitions
    if isinstance(a, (np.dtype, np.generic, str, bytes, int, float, complex, type(None))):
        return bool(a == b) or (a != a and b != b)  # NaN equals NaN here
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, (pd.DataFrame, pd.Series, pd.Index)):
        return bool(a.equals(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, depth + 1) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], depth + 1) for k in a)
    if type(a).__module__.startswith("matplotlib"):
        return True  # figures and axes: the report shows them; no value equality exists
    if type(a).__eq__ is object.__eq__:
        # estimators and other plain objects: equal when what pickling keeps of them is
        return same(_reduced(a), _reduced(b), depth + 1)
    return bool(a == b)


def _reduced(obj: Any) -> tuple[Any, ...]:
    reduced = obj.__reduce_ex__(4)
    assert isinstance(reduced, tuple)
    return tuple(x for x in reduced[1:3])


def _compare(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert expected, "the kernel run produced no values to compare"
    missing = sorted(set(expected) - set(actual))
    assert missing == [], f"variables the pipeline did not save: {missing}"
    different = sorted(n for n in expected if not same(expected[n], actual[n]))
    assert different == [], f"variables that differ from the notebook: {different}"


@pytest.mark.parametrize("source", LOCAL_NOTEBOOKS, ids=lambda p: p.stem)
def test_local_run_matches_notebook(source: Path, tmp_path: Path) -> None:
    """`nb2pipe verify` is the engine: a kernel run and a local run, every name compared."""
    path = _copy_notebook(source, tmp_path)
    result = verify_notebook(path)
    assert result.pipeline_status == "succeeded", [s.error for s in result.steps if s.error]
    assert result.compared > 0, "the kernel run produced no values to compare"
    assert [d.to_dict() for d in result.differences] == [], "variables that differ"
    assert path.read_bytes() == source.read_bytes()


def test_a_generated_notebook_computes_what_the_kernel_computes(tmp_path: Path) -> None:
    """The synthetic notebook of the analysis benchmarks (bench/gen_notebook.py): scoping
    corner cases, functions from earlier steps (``lru_cache`` ones too), objects changed
    through arguments and through other names of their groups. Every one of its ~550 names
    must end as in the kernel."""
    import importlib.util
    import sys

    generator = sys.modules.get("gen_notebook")
    if generator is None:
        spec = importlib.util.spec_from_file_location(
            "gen_notebook", Path(__file__).resolve().parents[1] / "bench" / "gen_notebook.py")
        assert spec is not None and spec.loader is not None
        generator = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = generator  # dataclasses look their module up
        spec.loader.exec_module(generator)
    path = tmp_path / "generated.ipynb"
    path.write_text(json.dumps(generator.generate_notebook(100, seed=27)), encoding="utf-8")
    result = verify_notebook(path)
    assert result.pipeline_status == "succeeded", [s.error for s in result.steps if s.error]
    assert result.compared > 500
    assert [d.to_dict() for d in result.differences] == []


@pytest.mark.parametrize("source", KFP_NOTEBOOKS, ids=lambda p: p.stem)
def test_compiled_yaml_on_kfp_local_matches_notebook(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The YAML that would be submitted, executed by kfp.local (see tests/kfp_local_shim.py)."""
    from kfp import components
    from kfp_local_shim import container_components_as_subprocesses

    path = _copy_notebook(source, tmp_path)
    writers = _final_writers(check_notebook(path))
    expected = _kernel_values(path, sorted(writers), tmp_path / "kernel.pkl")
    _add_reader(path, sorted(expected))  # (the names bound as the notebook ends)
    compiled = compile_notebook(path, tmp_path / "pipeline.yaml")
    export = tmp_path / "export"
    monkeypatch.setenv("KALE_PY_EXPORT_ALL", str(export))
    monkeypatch.chdir(path.parent)  # kfp.local runs steps in the current directory
    with container_components_as_subprocesses(pipeline_root=tmp_path / "kfp"):
        components.load_component_from_file(compiled["path"])()
    _compare(expected, _exported(export, writers))
