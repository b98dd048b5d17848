"""Dynamic proof of the analysis on an executable synthetic notebook.

Each code cell is analysed knowing the functions of earlier cells (as the graph builder
does), then runs twice: once in a namespace holding *only* builtins and the names the
analysis says the cell needs (its free names plus the call-time globals of the functions
it uses, transitively), and once in the full reference namespace where all earlier cells
ran. Functions from earlier cells are re-created with the small namespace as their
globals (closures and ``lru_cache`` wrappers included), so a global they read that the
analysis missed shows up as a ``NameError`` too. Then:

- the small run raises no ``NameError`` (free names and function closures are complete);
- every name the reference run binds, rebinds or deletes is in ``binds``;
- every needed name whose value the reference run changed in place is in ``binds``,
  ``mutates`` or the writes of the functions the cell calls;
- the values the cell binds are the same in both runs.

Limit: methods of classes from earlier cells keep the reference namespace as globals.
"""

from __future__ import annotations

import builtins
import copy
import functools
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kale_py.analysis import (
    FunctionInfo,
    analyse_source,
    function_writes,
    strip_magics,
)

BUILTIN_NAMES = frozenset(dir(builtins))
N_CELLS = 150


def _load_generator() -> types.ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "gen_notebook.py"
    spec = importlib.util.spec_from_file_location("gen_notebook", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gen_notebook = _load_generator()


@dataclass
class Report:
    cells: int = 0
    names_loaded: int = 0
    name_errors: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)
    unreported_binds: list[str] = field(default_factory=list)
    unreported_mutations: list[str] = field(default_factory=list)
    value_mismatches: list[str] = field(default_factory=list)


class _Isolator:
    """Copies of reference values for the small namespace: data is deep-copied, so the
    small run cannot disturb the reference run; notebook functions get ``ns`` as globals."""

    def __init__(self, reference: dict[str, Any], ns: dict[str, Any]) -> None:
        self.reference = reference
        self.ns = ns
        self.memo: dict[int, Any] = {}

    def copy(self, value: Any) -> Any:
        if id(value) in self.memo:
            return self.memo[id(value)]
        if isinstance(value, types.FunctionType) and value.__globals__ is self.reference:
            result: Any = self._function(value)
        elif isinstance(value, functools._lru_cache_wrapper) and _is_notebook(
                value.__wrapped__, self.reference):
            result = functools.lru_cache(maxsize=None)(self.copy(value.__wrapped__))
        elif isinstance(value, (type, types.ModuleType, types.FunctionType)):
            result = value
        else:
            try:
                result = copy.deepcopy(value)
            except Exception:
                result = value
        self.memo[id(value)] = result
        return result

    def _function(self, function: types.FunctionType) -> types.FunctionType:
        cells = None
        if function.__closure__ is not None:
            cells = tuple(self._cell(c) for c in function.__closure__)
        rebound = types.FunctionType(function.__code__, self.ns, function.__name__,
                                     function.__defaults__, cells)
        self.memo[id(function)] = rebound
        rebound.__kwdefaults__ = function.__kwdefaults__
        rebound.__dict__.update(function.__dict__)
        return rebound

    def _cell(self, cell: Any) -> Any:
        try:
            contents = cell.cell_contents
        except ValueError:
            return types.CellType()
        return types.CellType(self.copy(contents))


def _is_notebook(value: Any, reference: dict[str, Any]) -> bool:
    return isinstance(value, types.FunctionType) and value.__globals__ is reference


def _fingerprint(value: Any) -> str | None:
    """A comparable rendering of plain data and notebook objects; None for the rest."""
    plain = (int, float, str, bool, type(None), tuple, list, dict, set, frozenset)
    if isinstance(value, plain):
        return repr(value)
    if isinstance(value, (type, types.ModuleType, types.FunctionType,
                          functools._lru_cache_wrapper)):
        return None
    if hasattr(value, "__dict__"):
        return repr(sorted(vars(value).items()))
    return None


def validate(sources: list[str]) -> Report:
    report = Report()
    reference: dict[str, Any] = {"__name__": "__main__"}
    functions: dict[str, FunctionInfo] = {}
    held: dict[str, frozenset[str]] = {}
    for index, source in enumerate(sources):
        report.cells += 1
        where = f"cell {index}"
        analysis = analyse_source(source, functions, held)
        code = compile(strip_magics(source)[0], f"<{where}>", "exec")
        free = [use.name for use in analysis.free]
        called = [name for name in free if name in functions]
        # What the graph loads: the free names (calls of earlier functions included) and
        # the reads of code handed on or held by values, where some cell provides them.
        callbacks = {use.name for use in analysis.callback_free}
        needed = (set(free) | callbacks) & reference.keys()
        report.names_loaded += len(needed)

        ns: dict[str, Any] = {"__name__": "__main__"}
        isolator = _Isolator(reference, ns)
        for name in needed:
            ns[name] = isolator.copy(reference[name])
        try:
            exec(code, ns)
        except NameError as error:
            report.name_errors.append(f"{where}: {error}")
        except Exception as error:
            report.other_errors.append(f"{where}: {type(error).__name__}: {error}")

        before = dict(reference)
        prints = {name: _fingerprint(reference[name]) for name in needed}
        exec(code, reference)

        changed = {n for n in reference.keys() | before.keys()
                   if reference.get(n, before) is not before.get(n, reference)}
        # Module-level annotations create __annotations__: interpreter bookkeeping, not data.
        for name in sorted(changed - analysis.binds - {"__builtins__", "__annotations__"}):
            report.unreported_binds.append(f"{where}: {name}")
        allowed = analysis.binds | analysis.mutates | function_writes(called, functions)
        for name, print_before in prints.items():
            if print_before is None or name in allowed or name not in reference:
                continue
            if _fingerprint(reference[name]) != print_before:
                report.unreported_mutations.append(f"{where}: {name}")
        for name in analysis.binds & ns.keys() & reference.keys():
            mine, theirs = _fingerprint(ns[name]), _fingerprint(reference[name])
            if mine is not None and mine != theirs:
                report.value_mismatches.append(f"{where}: {name}: {mine} != {theirs}")
        functions.update(analysis.functions)
        for name in analysis.binds - analysis.partial_binds:
            held.pop(name, None)
        for name, reads in analysis.code_held.items():
            held[name] = held.get(name, frozenset()) | reads
    return report


@pytest.fixture(scope="module")
def report() -> Report:
    notebook = gen_notebook.generate_notebook(N_CELLS, seed=0)
    return validate(gen_notebook.code_cells(notebook))


def test_every_cell_ran(report: Report) -> None:
    assert report.cells == N_CELLS
    assert report.names_loaded > N_CELLS  # the cells really depend on each other
    assert report.other_errors == []


def test_no_cell_misses_a_name(report: Report) -> None:
    assert report.name_errors == []


def test_every_rebinding_is_reported(report: Report) -> None:
    assert report.unreported_binds == []


def test_every_mutation_is_reported(report: Report) -> None:
    assert report.unreported_mutations == []


def test_the_small_namespace_computes_the_same_values(report: Report) -> None:
    assert report.value_mismatches == []


def test_the_notebook_covers_the_tricky_constructs() -> None:
    notebook = gen_notebook.generate_notebook(N_CELLS, seed=0)
    text = "".join(gen_notebook.code_cells(notebook))
    for construct in ("nonlocal", "global g_counter", "@functools.lru_cache", ":=", "match ",
                      "case {", "| Pt_", "contextlib.suppress", "finally:", "@property",
                      "@staticmethod", "@classmethod", "del j", "while True", "lambda",
                      "%matplotlib inline", "*middle_", "note_"):
        assert construct in text, construct
    tags = [c["metadata"].get("tags", []) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert tags[0] == ["imports"]
    assert sum(1 for t in tags if t and t[0].startswith("step:")) > 10
    assert any(c["cell_type"] == "markdown" for c in notebook["cells"])


def test_a_missing_name_is_caught() -> None:
    """The harness itself: an analysis that forgets a name must fail it."""
    sources = ["a = 1\ndef f():\n    return a\n", "b = f()\n"]
    assert validate(sources).name_errors == []
    broken = ["a = 1\ndef f():\n    return a\n", "exec('b = a')\n"]
    assert validate(broken).name_errors != []
