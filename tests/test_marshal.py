"""kale_py.marshal: round trips, the file format's guarantees, and every error path."""

from __future__ import annotations

import io
import json
import mmap
import os
import pickle
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from kale_py import marshal
from kale_py.marshal import StateError, VariableRecord

ROOT = Path(__file__).resolve().parent.parent
MARSHAL_SOURCE = ROOT / "kale_py" / "marshal.py"


def round_trip(tmp_path: Path, value: object, name: str = "x") -> tuple[object, VariableRecord]:
    state = tmp_path / "state"
    record = marshal.save_variable(name, value, state, step="producer")
    return marshal.load_variable(record, state, allowed_root=tmp_path), record


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def memory_owner(array: np.ndarray) -> object:
    base: object = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


def run_python(tmp_path: Path, name: str, code: str) -> str:
    """Run `code` as a script, so that what it defines lives in __main__ as in a notebook."""
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    0, -(2**100), 3.5, "text", "", None, True, b"\x00" * 10, b"\xff" * 200_000,
    bytearray(b"abc"), [1, [2, [3, {"k": (4, 5)}]]], {"a": {1, 2}, "b": frozenset({"x"})},
    {(1, 2): [None, 1.5, "s"]}, complex(1, 2), range(3), [],
], ids=repr)
def test_plain_values_round_trip(tmp_path: Path, value: object) -> None:
    loaded, record = round_trip(tmp_path, value)
    assert loaded == value
    assert type(loaded) is type(value)
    assert record.format == "pickle5"


def test_shared_references_survive(tmp_path: Path) -> None:
    inner = [1, 2]
    loaded, _ = round_trip(tmp_path, {"a": inner, "b": inner})
    assert isinstance(loaded, dict)
    assert loaded["a"] is loaded["b"]


@pytest.mark.parametrize("array", [
    np.arange(12.0).reshape(3, 4),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.arange(40.0).reshape(5, 8)[::2, 1::3],
    np.array(7.5),
    np.array([{"a": 1}, None, "s"], dtype=object),
    np.empty((0, 3)),
    np.arange(100_000, dtype=np.int64),
    np.asfortranarray(np.arange(300_000.0).reshape(300, 1000)),
    np.arange(400_000.0)[::2],  # large and non-contiguous: travels in-band
    np.array(["a", "bc"], dtype="U2"),
    np.zeros(3, dtype=[("x", "f4"), ("y", "i2")]),
], ids=["c", "fortran", "strided", "0d", "object", "empty", "large", "large-fortran",
        "large-strided", "unicode", "structured"])
def test_numpy_arrays_round_trip(tmp_path: Path, array: np.ndarray) -> None:
    loaded, _ = round_trip(tmp_path, array)
    assert isinstance(loaded, np.ndarray)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    assert np.array_equal(loaded, array) if array.dtype != object else list(loaded) == list(array)
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        assert loaded.flags.f_contiguous  # Fortran order is kept, not copied to C order


def test_large_array_is_backed_by_the_mapped_file_and_writable(tmp_path: Path) -> None:
    array = np.arange(1_000_000, dtype=np.float64)
    loaded, record = round_trip(tmp_path, array)
    assert isinstance(loaded, np.ndarray)
    owner = memory_owner(loaded)
    assert isinstance(owner, memoryview) and isinstance(owner.obj, mmap.mmap)
    assert loaded.flags.writeable
    loaded[:10] = -1  # copy-on-write: the file keeps what was saved
    assert marshal.hash_file(tmp_path / "state" / record.file) == record.hash
    again = marshal.load_variable(record, tmp_path / "state", allowed_root=tmp_path)
    assert np.array_equal(again, array)


def test_out_of_band_buffers_are_page_aligned(tmp_path: Path) -> None:
    _, record = round_trip(tmp_path, [np.ones(20_000), np.zeros(30_000), np.ones(10)])
    data = (tmp_path / "state" / record.file).read_bytes()
    length = int.from_bytes(data[12:16], "little")
    header = json.loads(data[16 : 16 + length])
    assert header["pickler"] == "pickle5" and header["name"] == "x"
    assert [n for _, n in header["buffers"]] == [160_000, 240_000]  # np.ones(10) stays in-band
    assert all(offset % 4096 == 0 for offset, _ in header["buffers"])


def test_read_only_array_stays_read_only(tmp_path: Path) -> None:
    array = np.arange(100_000.0)
    array.flags.writeable = False
    loaded, _ = round_trip(tmp_path, array)
    assert isinstance(loaded, np.ndarray)
    assert not loaded.flags.writeable
    assert np.array_equal(loaded, array)


def test_dataframe_with_mixed_dtypes_round_trips(tmp_path: Path) -> None:
    n = 50_000
    frame = pd.DataFrame({
        "f64": np.linspace(0, 1, n),
        "i64": np.arange(n, dtype=np.int64),
        "i32": np.arange(n, dtype=np.int32),
        "text": pd.Series([f"row {i}" for i in range(n)], dtype="str"),
        "objects": pd.Series([f"o{i}" if i % 5 else None for i in range(n)], dtype=object),
        "cat": pd.Categorical(["red", "green", "blue", "red"] * (n // 4)),
        "when": pd.date_range("2024-01-01", periods=n, freq="min"),
        "flag": np.arange(n) % 2 == 0,
    }, index=pd.RangeIndex(10, 10 + n, name="id"))
    loaded, record = round_trip(tmp_path, frame, "df")
    assert isinstance(loaded, pd.DataFrame)
    pd.testing.assert_frame_equal(loaded, frame)
    # pandas 3 names the class by its public module, pandas 2 by where it is defined
    assert record.type in ("pandas.DataFrame", "pandas.core.frame.DataFrame")
    assert record.format == "pickle5"


def test_fitted_model_predicts_the_same(tmp_path: Path) -> None:
    x, y = make_classification(n_samples=300, n_features=8, random_state=0)
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y)
    loaded, record = round_trip(tmp_path, model, "model")
    assert isinstance(loaded, RandomForestClassifier)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert np.array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert record.format == "pickle5"


def test_a_thousand_small_dicts_round_trip(tmp_path: Path) -> None:
    records = [{"id": i, "name": f"n{i}", "score": i / 3, "ok": i % 2 == 0, "tags": [i]}
               for i in range(1000)]
    loaded, _ = round_trip(tmp_path, {"records": records})
    assert loaded == {"records": records}


def test_several_variables_and_their_manifest(tmp_path: Path) -> None:
    state = tmp_path / "state"
    records = marshal.save_variables({"a": 1, "b": np.arange(100_000), "c": "three"}, state,
                                     step="prep")
    assert [r.name for r in records] == ["a", "b", "c"]
    path = marshal.write_manifest(state, "prep", records, seconds=1.5)
    assert path == state / marshal.MANIFEST_NAME
    manifest = marshal.read_manifest(state)
    assert manifest["step"] == "prep" and manifest["seconds"] == 1.5
    assert manifest["format_version"] == marshal.FORMAT_VERSION
    assert manifest["variables"]["b"] == {
        "name": "b", "type": "numpy.ndarray", "format": "pickle5", "bytes": records[1].bytes,
        "hash": records[1].hash, "file": "b.kpk"}
    entry = manifest["variables"]["b"]
    assert VariableRecord.from_dict(entry) == records[1]
    for how in (entry, records[1], "b.kpk", state / "b.kpk"):
        assert np.array_equal(marshal.load_variable(how, state, allowed_root=tmp_path),
                              np.arange(100_000))
    assert files_in(state) == ["a.kpk", "b.kpk", "c.kpk", "manifest.json"]


def test_hash_is_the_tree_hash_of_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    big = np.arange(5_000_000, dtype=np.float64)  # 40 MB: several blocks, hashed in threads
    one = marshal.save_variable("big", big, state)
    assert one.hash.startswith(f"{marshal.HASH_ALGORITHM}:")
    assert one.hash == marshal.hash_file(state / one.file)
    assert one.bytes == (state / one.file).stat().st_size
    assert marshal.save_variable("big", big.copy(), state).hash == one.hash
    big[-1] += 1
    assert marshal.save_variable("big", big, state).hash != one.hash


def test_a_large_in_band_object(tmp_path: Path) -> None:
    strided = np.arange(6_000_000.0)[::2]  # 24 MB that pickle copies into the main stream
    loaded, record = round_trip(tmp_path, {"view": strided, "blob": bytes(range(256)) * 40_000})
    assert isinstance(loaded, dict)
    assert np.array_equal(loaded["view"], strided) and loaded["blob"] == bytes(range(256)) * 40_000
    assert record.hash == marshal.hash_file(tmp_path / "state" / record.file)


def test_saving_again_replaces_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    marshal.save_variable("x", list(range(10)), state)
    record = marshal.save_variable("x", "new", state)
    assert marshal.load_variable(record, state, allowed_root=tmp_path) == "new"
    assert files_in(state) == ["x.kpk"]


def test_loads_without_mmap_support(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    record = marshal.save_variable("a", np.arange(100_000.0), state)

    def no_mmap(*args: Any, **kwargs: Any) -> None:
        raise OSError(19, "No such device")

    monkeypatch.setattr(marshal.mmap, "mmap", no_mmap)
    loaded = marshal.load_variable(record, state, allowed_root=tmp_path)
    assert isinstance(loaded, np.ndarray)
    assert np.array_equal(loaded, np.arange(100_000.0))
    assert loaded.flags.writeable


# --- functions and classes from notebook code ---------------------------------------------------

PRODUCER = """
import functools, json
from kale_py import marshal

FACTOR = 3
square = lambda x: x * x

def make_adder(n):
    def add(x):
        return x + n
    return add

def scale(x):
    return x * FACTOR

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2

values = {
    "square": square,
    "adder": make_adder(10),
    "scale": scale,
    "half": functools.partial(lambda a, b: a / b, b=2),
    "pipeline": {"steps": [scale, square]},
    "point": Point(3, 4),
    "points": [Point(1, 1), Point(2, 2)],
    "point_class": Point,
}
records = marshal.save_variables(values, "state", step="p")
marshal.write_manifest("state", "p", records)
print(json.dumps({r.name: r.format for r in records}))
"""

POINT_CLASS = """
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2
"""


def test_notebook_functions_travel_by_value_and_instances_by_reference(tmp_path: Path) -> None:
    formats = json.loads(run_python(tmp_path, "producer.py", PRODUCER))
    assert formats == {
        "square": "cloudpickle", "adder": "cloudpickle", "scale": "cloudpickle",
        "half": "cloudpickle", "pipeline": "cloudpickle", "point_class": "cloudpickle",
        "point": "pickle5", "points": "pickle5",
    }
    consumer = POINT_CLASS + """
import sys
from kale_py import marshal

def load(name):
    return marshal.load_variable(name + ".kpk", "state", allowed_root=".")

assert load("square")(7) == 49
assert load("adder")(1) == 11
assert load("scale")(2) == 6
assert load("half")(5) == 2.5
assert [f(3) for f in load("pipeline")["steps"]] == [9, 9]
point = load("point")
assert type(point) is Point and point.norm2() == 25
assert [p.norm2() for p in load("points")] == [2, 8]
assert load("point_class")(6, 8).norm2() == 100
print("consumer ok", "dill" in sys.modules)
"""
    assert run_python(tmp_path, "consumer.py", consumer).split() == ["consumer", "ok", "False"]


CACHED_PRODUCER = """
import functools, json
from kale_py import marshal

@functools.lru_cache(maxsize=None)
def fib(k):
    return k if k < 2 else fib(k - 1) + fib(k - 2)

@functools.lru_cache(maxsize=7, typed=True)
def square(x):
    'Squares.'
    return x * x

fib(25)
square.note = "kept"
values = {"fib": fib, "square": square, "both": [fib, square], "builtin_cached": len}
records = marshal.save_variables(values, "state", step="p")
marshal.write_manifest("state", "p", records)
print(json.dumps({r.name: r.format for r in records}))
"""


@pytest.mark.parametrize("by_value", ["cloudpickle", "dill"])
def test_cached_notebook_functions_travel_by_value(tmp_path: Path, by_value: str) -> None:
    """``lru_cache`` pickles its wrapper by name: a step that does not define the function
    could not load it. It travels by value, with its settings, its attributes and its
    recursion through the same wrapper; the cache starts empty, as a step does."""
    producer = CACHED_PRODUCER
    if by_value == "dill":  # as where cloudpickle is not installed
        producer = "import sys\nsys.modules['cloudpickle'] = None\n" + producer
    formats = json.loads(run_python(tmp_path, "producer.py", producer))
    assert formats == {"fib": by_value, "square": by_value, "both": by_value,
                       "builtin_cached": "pickle5"}
    consumer = """
from kale_py import marshal

def load(name):
    return marshal.load_variable(name + ".kpk", "state", allowed_root=".")

fib, square, both = load("fib"), load("square"), load("both")
assert fib(40) == 102334155 and fib.__wrapped__.__globals__["fib"] is fib
assert fib.cache_parameters() == {"maxsize": None, "typed": False}
assert square(3) == 9 and square.cache_parameters() == {"maxsize": 7, "typed": True}
assert square.__doc__ == "Squares." and square.note == "kept" and square.__name__ == "square"
assert square.cache_info().currsize == 1
assert both[0](10) == 55 and both[1](2) == 4
print("consumer ok")
"""
    assert run_python(tmp_path, "consumer.py", consumer).split() == ["consumer", "ok"]


def test_instance_of_a_class_the_consumer_does_not_define(tmp_path: Path) -> None:
    run_python(tmp_path, "producer.py", PRODUCER)
    with pytest.raises(StateError) as caught:
        marshal.load_variable("point.kpk", tmp_path / "state", allowed_root=tmp_path, step="c")
    message = str(caught.value)
    assert "'point'" in message and "step 'c'" in message and "Point" in message
    assert "tagged functions" in message
    assert caught.value.type_name == "__main__.Point"


@pytest.fixture
def notebook_namespace(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Code executed as if in a notebook cell: its definitions live in __main__."""
    main = sys.modules["__main__"]
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(textwrap.dedent("""
        class Cell:
            def __init__(self, v):
                self.v = v
        def double(x):
            return 2 * x
        import threading
        LOCK = threading.Lock()
        def locked():
            with LOCK:
                return 1
    """), namespace)
    for name in ("Cell", "double", "LOCK", "locked"):
        monkeypatch.setattr(main, name, namespace[name], raising=False)
    return namespace


def test_notebook_definitions_in_process(tmp_path: Path, notebook_namespace: dict[str, Any]
                                         ) -> None:
    cell, double = notebook_namespace["Cell"], notebook_namespace["double"]
    loaded, record = round_trip(tmp_path, [cell(1), cell(2)])
    assert record.format == "pickle5"
    assert isinstance(loaded, list) and [type(c) for c in loaded] == [cell, cell]
    loaded, record = round_trip(tmp_path, {"f": double})
    assert record.format == "cloudpickle"
    assert isinstance(loaded, dict) and loaded["f"](4) == 8
    _, record = round_trip(tmp_path, [cell, cell(3)])  # the class itself, before an instance
    assert record.format == "cloudpickle"
    # By value would need the lock it uses; by name works where the function is defined.
    loaded, record = round_trip(tmp_path, {"f": notebook_namespace["locked"]})
    assert record.format == "pickle5"
    assert isinstance(loaded, dict) and loaded["f"] is notebook_namespace["locked"]


def test_code_loaded_by_value_reads_the_loading_steps_globals(tmp_path: Path) -> None:
    """A method, a lambda in a dict and a closure saved where a global had one value (or
    none) read the value the loading step holds, as the notebook's code would."""
    producer: dict[str, Any] = {"__name__": "__main__", "base": 1, "helper_value": 5}
    exec(textwrap.dedent("""
        class M:
            def val(self):
                return base + helper()
        def helper():
            return helper_value
        def make(k):
            def inner(x):
                return x * k + shift
            return inner
        values = {"m": M(), "f": lambda: base * 10, "times": make(3)}
    """), producer)
    record = marshal.save_variable("values", producer["values"], tmp_path / "s")
    assert record.format == "cloudpickle"
    step: dict[str, Any] = {"__name__": "__main__", "base": 100, "shift": 7}
    kept_builtins = step.setdefault("__builtins__", __builtins__)
    loaded = marshal.load_variable(record, tmp_path / "s", allowed_root=tmp_path,
                                   namespace=step)
    assert isinstance(loaded, dict)
    assert loaded["m"].val() == 105  # this step's base; the saved helper fills the gap
    assert loaded["f"]() == 1000 and loaded["times"](2) == 13
    assert step["base"] == 100 and step["helper_value"] == 5
    assert step["__builtins__"] is kept_builtins
    plain = marshal.load_variable(record, tmp_path / "s", allowed_root=tmp_path)
    assert isinstance(plain, dict) and plain["f"]() == 10  # without: what it saw when saved


def test_without_cloudpickle_or_dill(tmp_path: Path, notebook_namespace: dict[str, Any],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marshal, "_by_value_picklers", lambda: iter(()))
    with pytest.raises(StateError, match="pip install cloudpickle"):
        marshal.save_variable("f", lambda x: x, tmp_path)
    # A notebook function still goes by name: fine for a consumer that defines it.
    _, record = round_trip(tmp_path, notebook_namespace["double"])
    assert record.format == "pickle5"
    with pytest.raises(StateError, match="a generator cannot be passed"):
        marshal.save_variable("g", [lambda: 1, (i for i in range(3))], tmp_path)


def test_saving_an_array_imports_neither_dill_nor_cloudpickle(tmp_path: Path) -> None:
    out = run_python(tmp_path, "check.py", """
        import sys
        import numpy as np
        from kale_py import marshal
        record = marshal.save_variable("a", np.arange(100_000.0), "state")
        marshal.load_variable(record, "state", allowed_root=".")
        print("dill" in sys.modules, "cloudpickle" in sys.modules)
        marshal.save_variable("f", lambda: 1, "state")
        print("dill" in sys.modules, "cloudpickle" in sys.modules)
    """)
    assert out.split() == ["False", "False", "False", "True"]


def test_works_as_a_top_level_module_copied_elsewhere(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    shutil.copy(MARSHAL_SOURCE, runtime / "kale_marshal.py")
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import kale_marshal
        record = kale_marshal.save_variable("v", {"k": list(range(100_000))}, sys.argv[2])
        print("kale_py" in sys.modules, record.file)
    """)
    done = subprocess.run([sys.executable, "-I", "-c", script, str(runtime), str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "v.kpk"]
    loaded = marshal.load_variable("v.kpk", tmp_path / "s", allowed_root=tmp_path)
    assert loaded == {"k": list(range(100_000))}


# --- what cannot be saved ---------------------------------------------------------------------


def numbers() -> Any:
    yield 1


class Exploding:
    """Pickling it fails half-way, after other data was already pickled."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> Any:
        raise self.error


@pytest.mark.parametrize(("make", "type_name", "what", "hint"), [
    (lambda tmp: numbers(), "generator", "a generator cannot be passed", "list(x)"),
    (lambda tmp: threading.Lock(), "_thread.lock", "a lock cannot be passed",
     "create them in the step that uses them, or mark the cell skip"),
    (lambda tmp: threading.RLock(), "_thread.RLock", "a lock cannot", "mark the cell skip"),
    (lambda tmp: open(tmp / "f.txt", "w"), "_io.TextIOWrapper",  # noqa: SIM115
     "an open file cannot", "mark the cell skip"),
    (lambda tmp: open(tmp / "f.bin", "rb"), "_io.BufferedReader",  # noqa: SIM115
     "an open file cannot", "mark the cell skip"),
    (lambda tmp: {"cfg": [threading.Lock()]}, "dict", "it contains a lock (_thread.lock)",
     "mark the cell skip"),
    (lambda tmp: socket.socket(), "socket.socket", "a socket cannot", "mark the cell skip"),
    (lambda tmp: sqlite3.connect(":memory:"), "sqlite3.Connection",
     "a database connection cannot", "mark the cell skip"),
    (lambda tmp: threading.Thread(target=print), "threading.Thread", "a thread cannot",
     "start them in the step"),
], ids=["generator", "lock", "rlock", "file-w", "file-r", "nested-lock", "socket", "sqlite",
        "thread"])
def test_resources_are_refused_in_the_producing_step(tmp_path: Path, make: Any, type_name: str,
                                                     what: str, hint: str) -> None:
    (tmp_path / "f.bin").write_bytes(b"data")
    value = make(tmp_path)
    state = tmp_path / "state"
    try:
        with pytest.raises(StateError) as caught:
            marshal.save_variable("res", value, state, step="train")
    finally:
        if hasattr(value, "close"):
            value.close()
    error = caught.value
    assert (error.variable, error.type_name, error.step) == ("res", type_name, "train")
    message = str(error)
    assert message.startswith(f"cannot save variable 'res' ({type_name}) in step 'train': ")
    assert what in message and hint in message
    assert files_in(state) == []


def test_lambda_next_to_a_resource_is_still_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="contains a generator"):
        marshal.save_variable("mixed", [lambda: 1, numbers()], tmp_path)


def test_in_memory_streams_are_plain_data(tmp_path: Path) -> None:
    loaded, _ = round_trip(tmp_path, [io.BytesIO(b"abc"), io.StringIO("xyz")])
    assert isinstance(loaded, list)
    assert loaded[0].getvalue() == b"abc" and loaded[1].getvalue() == "xyz"


@pytest.mark.parametrize("name", ["1x", "a-b", "class", "", "x.y", "../up", "a b"])
def test_names_must_be_identifiers(tmp_path: Path, name: str) -> None:
    with pytest.raises(StateError, match="not a Python identifier") as caught:
        marshal.save_variable(name, 1, tmp_path / "state", step="s")
    assert caught.value.variable == name
    assert files_in(tmp_path / "state") == []


def test_pickling_errors_are_wrapped(tmp_path: Path) -> None:
    with pytest.raises(StateError) as caught:
        marshal.save_variable("obj", Exploding(ValueError("no state")), tmp_path, step="s")
    assert "pickling it failed with ValueError: no state" in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.type_name == f"{__name__}.Exploding"


def test_too_deep_nesting_is_explained(tmp_path: Path) -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(StateError, match="nested too deeply"):
        marshal.save_variable("deep", deep, tmp_path)


def test_a_failure_mid_pickle_leaves_no_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    marshal.save_variable("keep", "old", state)
    value = [np.arange(1_000_000.0), Exploding(RuntimeError("boom"))]
    with pytest.raises(StateError):
        marshal.save_variable("x", value, state)
    with pytest.raises(KeyboardInterrupt):
        marshal.save_variable("x", [np.arange(10), Exploding(KeyboardInterrupt())], state)
    assert files_in(state) == ["keep.kpk"]


def test_a_failing_disk_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.mkdir()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(marshal.os, "fsync", disk_full)
    with pytest.raises(StateError, match=r"No space left on device.*has \d+ bytes free"):
        marshal.save_variable("big", np.arange(3_000_000.0), state, step="s")
    assert files_in(state) == []


def test_save_variables_is_all_or_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    values = {"a": np.arange(10_000_000.0), "b": 2, "c": numbers()}  # 80 MB: hashed in threads
    with pytest.raises(StateError, match="'c'"):
        marshal.save_variables(values, state, step="s")
    assert files_in(state) == []


def test_manifest_rejects_reserved_keys(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="variables"):
        marshal.write_manifest(tmp_path, "s", [], variables={})


def test_state_error_pickles(tmp_path: Path) -> None:
    with pytest.raises(StateError) as caught:
        marshal.save_variable("g", numbers(), tmp_path, step="s")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (str(copy), copy.variable, copy.type_name, copy.step) == (
        str(caught.value), "g", "generator", "s")


# --- what is never loaded -------------------------------------------------------------------


def test_files_outside_the_allowed_root_are_refused(tmp_path: Path) -> None:
    outside, inside = tmp_path / "outside", tmp_path / "run"
    record = marshal.save_variable("x", [1, 2], outside)
    with pytest.raises(StateError, match="outside the run's state directories"):
        marshal.load_variable(record, outside, allowed_root=inside)
    with pytest.raises(StateError, match="outside"):
        marshal.load_variable("../outside/x.kpk", inside / "state", allowed_root=inside)
    (inside / "state").mkdir(parents=True)
    (inside / "state" / "x.kpk").symlink_to(outside / "x.kpk")
    with pytest.raises(StateError, match="outside") as caught:
        marshal.load_variable("x.kpk", inside / "state", allowed_root=inside)
    assert caught.value.variable == "x"
    (tmp_path / "run2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StateError, match="outside"):
        marshal.load_variable("x.kpk", tmp_path / "run2", allowed_root=inside)
    assert marshal.load_variable(record, outside, allowed_root=tmp_path) == [1, 2]


def test_a_missing_file_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist") as caught:
        marshal.load_variable("nope.kpk", tmp_path, allowed_root=tmp_path, step="c")
    assert caught.value.variable == "nope" and caught.value.step == "c"


def corrupt_truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def corrupt_magic(data: bytes) -> bytes:
    return b"PK\x03\x04" + data[4:]


def corrupt_version(data: bytes) -> bytes:
    return data[:8] + (99).to_bytes(4, "little") + data[12:]


def corrupt_header(data: bytes) -> bytes:
    return data[:16] + b"[" + data[17:]


def corrupt_stream(data: bytes) -> bytes:
    length = int.from_bytes(data[12:16], "little")
    main = json.loads(data[16 : 16 + length])["main"]
    return data[: main[0]] + b"\xff" * main[1] + data[main[0] + main[1] :]


def corrupt_padding(data: bytes) -> bytes:
    return data + b"\x00" * 4096


@pytest.mark.parametrize(("damage", "what"), [
    (corrupt_truncated, "truncated"),
    (corrupt_magic, "not a kale_py state file"),
    (corrupt_version, "format version 99"),
    (corrupt_header, "header is damaged"),
    (corrupt_stream, "corrupt or unreadable"),
    (corrupt_padding, "truncated or damaged"),
    (lambda data: b"", "truncated (0 bytes)"),
    (lambda data: data[:10], "truncated (10 bytes)"),
], ids=["truncated", "magic", "version", "header", "stream", "trailing", "empty", "tiny"])
def test_damaged_files_are_state_errors_naming_the_file(tmp_path: Path, damage: Any, what: str
                                                        ) -> None:
    state = tmp_path / "state"
    marshal.save_variable("x", {"a": np.arange(100_000.0), "b": "text"}, state)
    path = state / "x.kpk"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StateError) as caught:
        marshal.load_variable("x.kpk", state, allowed_root=tmp_path)
    assert str(path) in str(caught.value) and what in str(caught.value)
    assert caught.value.path == str(path)


def test_a_file_that_does_not_match_its_record(tmp_path: Path) -> None:
    state = tmp_path / "state"
    record = marshal.save_variable("x", [1], state)
    marshal.save_variable("x", [1, 2, 3], state)
    with pytest.raises(StateError, match="damaged or was replaced"):
        marshal.load_variable(record, state, allowed_root=tmp_path)


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no manifest"):
        marshal.read_manifest(tmp_path)
    (tmp_path / marshal.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(StateError, match="cannot read the manifest"):
        marshal.read_manifest(tmp_path)
    (tmp_path / marshal.MANIFEST_NAME).write_text('{"step": "s", "variables": {}}')
    with pytest.raises(StateError, match="format version None"):
        marshal.read_manifest(tmp_path)
    with pytest.raises(StateError, match="not a manifest entry"):
        marshal.load_variable({"name": "x"}, tmp_path, allowed_root=tmp_path)


def test_content_hash_can_be_skipped(tmp_path: Path) -> None:
    data = np.arange(100_000, dtype=np.float64)
    hashed = marshal.save_variable("a", data, tmp_path / "h")
    plain = marshal.save_variable("a", data, tmp_path / "p", content_hash=False)
    assert hashed.hash == marshal.hash_file(tmp_path / "h" / hashed.file)
    assert plain.hash == ""
    # Without a digest there is nothing to verify against: such a record is never loaded.
    with pytest.raises(StateError, match="lists no digest for it, so it cannot be verified"):
        marshal.load_variable(plain, tmp_path / "p", allowed_root=tmp_path)
    loaded = marshal.load_variable(hashed, tmp_path / "h", allowed_root=tmp_path)
    assert np.array_equal(loaded, data)


# --- groups: names that share objects, saved as one file --------------------------------------


def save_group(tmp_path: Path, values: dict[str, object], *groups: tuple[str, ...]
               ) -> tuple[Path, list[VariableRecord]]:
    state = tmp_path / "state"
    records = marshal.save_variables(values, state, step="producer", groups=groups)
    marshal.write_manifest(state, "producer", records)
    return state, records


def test_a_group_keeps_object_identity(tmp_path: Path) -> None:
    model = RandomForestClassifier(n_estimators=2, random_state=0)
    other = {"k": [1, 2]}
    values = {"lr": model, "clf_list": [(model, "rf"), (other, "d")], "other": other,
              "alone": [1]}
    state, records = save_group(tmp_path, values, ("clf_list", "lr", "other"))
    assert files_in(state) == ["alone.kpk", "clf_list.group.kpk", "manifest.json"]
    assert {r.name: r.group for r in records} == {
        "alone": (), "clf_list": ("clf_list", "lr", "other"),
        "lr": ("clf_list", "lr", "other"), "other": ("clf_list", "lr", "other")}
    assert {r.name: r.type for r in records}["lr"].endswith("RandomForestClassifier")
    loaded = marshal.load_variables(records, state, allowed_root=tmp_path)
    assert loaded["clf_list"][0][0] is loaded["lr"]  # type: ignore[index]
    assert loaded["clf_list"][1][0] is loaded["other"]  # type: ignore[index]
    assert loaded["alone"] == [1]


def test_part_of_a_group_still_shares_with_the_rest_loaded(tmp_path: Path) -> None:
    """A consumer needing some names of a group gets them from one load of the file."""
    shared = [0]
    state, _ = save_group(tmp_path, {"a": shared, "b": {"x": shared}, "c": [shared]},
                          ("a", "b", "c"))
    manifest = marshal.read_manifest(state)["variables"]
    loaded = marshal.load_variables([manifest["a"], manifest["c"]], state, allowed_root=tmp_path)
    assert sorted(loaded) == ["a", "c"]
    assert loaded["c"][0] is loaded["a"]  # type: ignore[index]
    # One member alone loads too (the file is the group's).
    assert marshal.load_variable(manifest["b"], state, allowed_root=tmp_path) == {"x": [0]}


def test_a_group_keeps_numpy_views_views(tmp_path: Path) -> None:
    arr = np.arange(100_000.0)  # out-of-band: the view is rebuilt on the mapped file
    head = arr[:10]
    grid = np.arange(12.0).reshape(3, 4)  # itself a view of an array nobody saves
    column = grid[:, 1]
    flipped = grid[::-1, ::-2]
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    row = fortran[1]
    values = {"arr": arr, "head": head, "grid": grid, "column": column, "flipped": flipped,
              "fortran": fortran, "row": row}
    state, records = save_group(tmp_path, values, tuple(values))
    loaded: dict[str, Any] = marshal.load_variables(records, state, allowed_root=tmp_path)
    for name, value in values.items():
        assert np.array_equal(loaded[name], value), name
    loaded["head"][:] = -1
    loaded["column"] *= 10
    loaded["row"][:] = 7
    assert loaded["arr"][:10].tolist() == [-1] * 10 and loaded["arr"][10] == 10
    assert loaded["grid"][:, 1].tolist() == [10, 50, 90]
    assert loaded["flipped"].tolist() == [[11, 90], [7, 50], [3, 10]]
    assert loaded["fortran"].tolist() == [[0, 1, 2], [7, 7, 7]]
    assert memory_owner(loaded["arr"]) is memory_owner(loaded["head"])


def test_views_of_arrays_outside_the_group_are_copies(tmp_path: Path) -> None:
    base = np.arange(10.0)
    state, records = save_group(tmp_path, {"a": base[2:5], "b": [1]}, ("a", "b"))
    loaded: dict[str, Any] = marshal.load_variables(records, state, allowed_root=tmp_path)
    assert loaded["a"].tolist() == [2, 3, 4] and loaded["a"].base is not None
    assert loaded["a"].size == 3 and memory_owner(loaded["a"]) is not base


def test_a_group_member_that_cannot_be_saved_is_named(tmp_path: Path) -> None:
    lock = threading.Lock()
    with pytest.raises(StateError) as raised:
        marshal.save_variables({"ok": [1], "bad": [lock]}, tmp_path / "s", step="p",
                               groups=[("bad", "ok")])
    assert raised.value.variable == "bad"
    assert "'bad'" in str(raised.value) and "step 'p'" in str(raised.value)
    assert files_in(tmp_path / "s") == []


def test_a_group_file_without_the_member_is_a_state_error(tmp_path: Path) -> None:
    state, records = save_group(tmp_path, {"a": [1], "b": [2]}, ("a", "b"))
    forged = replace(records[0], name="c")
    with pytest.raises(StateError, match="its group file does not hold 'c'"):
        marshal.load_variable(forged, state, allowed_root=tmp_path)


def test_groups_of_one_present_name_are_plain_files(tmp_path: Path) -> None:
    state, records = save_group(tmp_path, {"a": [1], "b": [2]}, ("a", "missing"))
    assert files_in(state) == ["a.kpk", "b.kpk", "manifest.json"]
    assert "group" not in marshal.read_manifest(state)["variables"]["a"]
