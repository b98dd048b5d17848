"""Properties of kale_py.analysis on generated input.

- Any text either analyses or raises CodeSyntaxError with a line inside the cell (or just
  past its end): never another exception, whatever the nesting, null bytes or magics.
- Valid Python is never changed by strip_magics.
- Soundness, checked by running generated module-level programs with a namespace that
  records every read and write: a name read while unbound at run time is in ``free``,
  a name written is in ``binds``. For straight-line programs ``free`` is exact.
"""

from __future__ import annotations

import ast
import builtins
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kale_py.analysis import CodeAnalysis, CodeSyntaxError, analyse_source, strip_magics

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# Generating whole programs is slower: fewer examples.
PROGRAM_SETTINGS = settings(SETTINGS, max_examples=150)
VARIABLES = ["a", "b", "c", "d", "e"]
BUILTIN_NAMES = frozenset(dir(builtins))


def line_count(text: str) -> int:
    return len(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def analyse_or_syntax_error(source: str) -> CodeAnalysis | None:
    try:
        return analyse_source(source)
    except CodeSyntaxError as error:
        assert 1 <= error.line <= line_count(source) + 1, (error.line, source)
        assert error.col >= 0
        assert isinstance(error.message, str) and error.message
        return None


# --- any input ---------------------------------------------------------------------------------


@SETTINGS
@given(st.text())
def test_any_text(source: str) -> None:
    analyse_or_syntax_error(source)


PYTHONISH = st.text(alphabet=st.sampled_from(
    list("abxy_019 \t\n\r\\()[]{}:;,.=+-*/%!?@#'\"<>&|^~") + ["\0", "é", "\x0c"]), max_size=80)


@SETTINGS
@given(PYTHONISH)
def test_python_alphabet(source: str) -> None:
    analyse_or_syntax_error(source)


LINES = st.sampled_from([
    "x = 1", "y = x + z", "del x", "print(x)", "for i in range(3):", "    total += i",
    "if x:", "else:", "    pass", "try:", "except Exception as err:", "finally:",
    "with open(p) as fh:", "    data = fh.read()", "def f(a, b=c):", "    return a + g",
    "class A:", "    n = 3", "    r = [n * i for i in range(3)]", "lambda q: q + w",
    "match x:", "    case [a, *rest] if a:", "        out = a", "    case _:",
    "ys = [y for v in xs if (y := v)]", "@deco", "global g", "nonlocal n",
    "%matplotlib inline", "%time y = f(x)", "!pip install x", "files = !ls",
    "%%bash", "%%capture out", "df.head?", "?np", "x = %sx ls", "%pip install a \\",
    "x = (", ")", "]", "def f(:", "'''", '"""', "s = 'abc", "if x", "x = = 1",
    "\\", "    \\", "\t\tx = 1", "(" * 120, "not " * 300 + "x", "-" * 5000 + "1",
    "x = " + "+".join(["1"] * 400), "y = df" + ".f()" * 300, "\0", "a = 'é\\x00'",
])


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 3), LINES), max_size=25))
def test_pythonish_lines(lines: list[tuple[int, str]]) -> None:
    source = "\n".join("    " * indent + line for indent, line in lines)
    analyse_or_syntax_error(source)


@SETTINGS
@given(st.integers(1, 400), st.sampled_from(["(", "[", "{", "-", "not ", "f(", "x."]))
def test_nesting(depth: int, opener: str) -> None:
    closer = {"(": ")", "[": "]", "{": "}", "f(": ")"}.get(opener, "")
    tail = "1" if opener in ("-", "not ") else "x" if opener == "x." else ""
    analyse_or_syntax_error("y = " + opener * depth + tail + closer * depth + "\n")


@SETTINGS
@given(st.integers(1, 120))
def test_nested_blocks(depth: int) -> None:
    lines = [" " * i + "if x:" for i in range(depth)] + [" " * depth + "y = 1"]
    analyse_or_syntax_error("\n".join(lines))


# --- generated module-level programs --------------------------------------------------------

variables = st.sampled_from(VARIABLES)


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0, branching: bool = True) -> str:
    """Integer expressions over the variables; ``branching`` allows ``x if c else y``."""
    choice = draw(st.integers(0, (5 if branching else 4) if depth < 2 else 1))
    if choice == 0:
        return draw(variables)
    if choice == 1:
        return str(draw(st.integers(0, 9)))
    sub = expressions(depth + 1, branching)
    if choice in (2, 3):
        return f"({draw(sub)} {draw(st.sampled_from(['+', '-']))} {draw(sub)})"
    if choice == 4:
        return f"({draw(variables)} := {draw(sub)})"
    return f"({draw(sub)} if {draw(sub)} > 3 else {draw(sub)})"


@st.composite
def simple_statements(draw: st.DrawFn, branching: bool = True) -> list[str]:
    kind = draw(st.integers(0, 4))
    expression = expressions(branching=branching)
    if kind == 0:
        return [f"{draw(variables)} = {draw(expression)}"]
    if kind == 1:
        return [f"{draw(variables)} += {draw(expression)}"]
    if kind == 2:
        return [f"del {draw(variables)}"]
    if kind == 3:
        return [f"{draw(variables)}, {draw(variables)} = {draw(expression)}, {draw(expression)}"]
    return [draw(expression)]


def indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


@st.composite
def blocks(draw: st.DrawFn, depth: int = 0) -> list[str]:
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        lines += draw(compound_statements(depth) if depth < 2 else simple_statements())
    return lines


@st.composite
def compound_statements(draw: st.DrawFn, depth: int) -> list[str]:
    kind = draw(st.integers(0, 8))
    body = blocks(depth + 1)
    cond = f"{draw(expressions())} > {draw(st.integers(0, 9))}"
    if kind == 0:
        lines = [f"if {cond}:", *indent(draw(body))]
        if draw(st.booleans()):
            lines += ["else:", *indent(draw(body))]
        return lines
    if kind == 1:
        lines = [f"for {draw(variables)} in range({draw(st.integers(0, 2))}):",
                 *indent(draw(body))]
        if draw(st.booleans()):
            lines += indent([f"if {cond}:", "    break"])
        if draw(st.booleans()):
            lines += ["else:", *indent(draw(body))]
        return lines
    if kind == 2:
        return ["while True:", *indent(draw(body)), "    break"]
    if kind == 3:
        raising = draw(st.sampled_from([
            [], [f"{draw(variables)} = 1 // 0"], [f"if {cond}:", "    1 // 0"]]))
        lines = ["try:", *indent(draw(body) + raising + draw(body)),
                 "except ZeroDivisionError:", *indent(draw(body))]
        if draw(st.booleans()):
            lines += ["else:", *indent(draw(body))]
        if draw(st.booleans()):
            lines += ["finally:", *indent(draw(body))]
        return lines
    if kind == 4:
        return [f"match {draw(expressions())}:",
                f"    case {draw(st.integers(0, 5))}:", *indent(indent(draw(body))),
                f"    case {draw(variables)} if {draw(variables)} > 2:",
                *indent(indent(draw(body))),
                *(["    case _:", *indent(indent(draw(body)))] if draw(st.booleans()) else [])]
    return draw(simple_statements())


class Recorder(dict[str, Any]):
    """A module namespace that records reads of unbound names (answering 1) and writes."""

    def __init__(self) -> None:
        super().__init__()
        self.read_unbound: set[str] = set()
        self.written: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        if name in BUILTIN_NAMES:
            raise KeyError(name)  # the interpreter goes on to the builtins
        self.read_unbound.add(name)
        return 1

    def __setitem__(self, name: str, value: Any) -> None:
        self.written.add(name)
        dict.__setitem__(self, name, value)

    def __delitem__(self, name: str) -> None:
        self.written.add(name)
        if dict.__contains__(self, name):
            dict.__delitem__(self, name)
        else:
            self.read_unbound.add(name)


def run(source: str) -> Recorder:
    namespace = Recorder()
    exec(compile(source, "<generated>", "exec"), {}, namespace)
    return namespace


def check_positions(source: str, analysis: CodeAnalysis) -> None:
    lines = source.split("\n")
    for use in analysis.free:
        assert lines[use.line - 1][use.col:].startswith(use.name), use


@PROGRAM_SETTINGS
@given(blocks())
def test_free_and_binds_are_sound(lines: list[str]) -> None:
    source = "\n".join(lines) + "\n"
    analysis = analyse_source(source)
    recorded = run(source)
    free = {use.name for use in analysis.free}
    assert recorded.read_unbound <= free, source
    assert recorded.written <= analysis.binds, source
    assert analysis.maybe_free <= free and analysis.partial_binds <= analysis.binds
    check_positions(source, analysis)


@SETTINGS
@given(st.lists(simple_statements(branching=False), min_size=1, max_size=12))
def test_free_is_exact_for_straight_line_code(statements: list[list[str]]) -> None:
    source = "\n".join(line for lines in statements for line in lines) + "\n"
    analysis = analyse_source(source)
    recorded = run(source)
    assert {use.name for use in analysis.free} == recorded.read_unbound, source
    assert analysis.binds == recorded.written, source
    assert analysis.maybe_free == frozenset()
    check_positions(source, analysis)


@PROGRAM_SETTINGS
@given(blocks())
def test_valid_python_is_never_rewritten(lines: list[str]) -> None:
    source = "\n".join(lines)
    assert strip_magics(source) == (source, ())


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 3), LINES), max_size=25))
def test_strip_magics_keeps_lines_and_valid_code(lines: list[tuple[int, str]]) -> None:
    source = "\n".join("    " * indent + line for indent, line in lines)
    text, magics = strip_magics(source)
    assert line_count(text) == line_count(source)
    assert all(1 <= m.line <= line_count(source) for m in magics)
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return
    assert (text, magics) == (source, ())


# --- deferred reads: code defined in one step, run in another ------------------------------
#
# Programs of several cells, each its own step: functions, lambdas, classes (``__init__``,
# methods, properties, operators, static and class methods), closures from factories,
# decorated functions, partials and values holding lambdas, defined in one cell, reading
# globals that cells bind before or after, and used in later cells (or in the same one,
# after a binding). Every program that runs top to bottom must pass ``check`` without an
# error, and run as a pipeline without NameError, computing the notebook's values. The
# pipeline is simulated in this process: each step gets a fresh namespace holding only
# what it loads, each value passed through cloudpickle and loaded the way the step
# runtime loads it (notebook code reads the loading step's globals).

DEFERRED_SETTINGS = settings(SETTINGS, max_examples=200,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.filter_too_much])
GLOBALS = ["a", "b", "c"]

DEFINITIONS = {
    "fn": "def {n}(v):\n    return v + {x}\n",
    "lam": "{n} = lambda v: v * {x}\n",
    "cls": ("class {n}:\n    def __init__(self, v):\n        self.v = v + {x}\n\n"
            "    def m(self):\n        return self.v + {y}\n\n"
            "    @property\n    def p(self):\n        return self.v * {y}\n\n"
            "    def __add__(self, other):\n        return self.v + other.v + {x}\n\n"
            "    @staticmethod\n    def s():\n        return {y}\n\n"
            "    @classmethod\n    def make(cls):\n        return cls({x})\n"),
    "fac": "def {n}(k):\n    def inner(v):\n        return v + k + {x}\n    return inner\n",
    "deco": ("def {n}_wrap(fn):\n    def wrapper(v):\n        return fn(v) + {x}\n"
             "    return wrapper\n\n\n@{n}_wrap\ndef {n}(v):\n    return v * {y}\n"),
    "part": "{n} = functools.partial(lambda v, w: v + w + {x}, 1)\n",
    "dict": "{n} = {{'k': lambda v: v - {x}}}\n",
    "hooks": "{n} = []\n{n}.append(lambda v: v + {x})\n",
}
USES = {
    "fn": ["{r} = {n}(1)", "{r} = sum(map({n}, [1, 2]))"],
    "lam": ["{r} = {n}(2)", "{r} = sorted([3, 1], key={n})[0]"],
    "cls": ["{r} = {n}(1).m()", "{r} = {n}(1).p", "{r} = {n}(1) + {n}(2)", "{r} = {n}.s()",
            "{r} = {n}.make().v", "{n}_i = {n}(3)"],
    "inst": ["{r} = {n}.m() + {n}.p"],
    "fac": ["{r} = {n}(2)(3)", "{n}_t = {n}(2)"],
    "clo": ["{r} = {n}(1)"],
    "deco": ["{r} = {n}(2)"],
    "part": ["{r} = {n}(2)"],
    "dict": ["{r} = {n}['k'](2)"],
    "hooks": ["{r} = {n}[0](1)"],
}


@st.composite
def deferred_programs(draw: st.DrawFn) -> list[str]:
    cells: list[str] = []
    defined: list[tuple[str, str]] = []
    for index in range(draw(st.integers(3, 7))):
        statements: list[str] = []
        for position in range(draw(st.integers(1, 3))):
            action = draw(st.sampled_from(["bind", "bind", "define", "define", "use", "use",
                                           "use"]))
            name = f"k{index}_{position}"
            if action == "bind" or (action == "use" and not defined):
                statements.append(f"{draw(st.sampled_from(GLOBALS))} = {draw(st.integers(0, 9))}\n")
            elif action == "define":
                kind = draw(st.sampled_from(sorted(DEFINITIONS)))
                statements.append(DEFINITIONS[kind].format(
                    n=name, x=draw(st.sampled_from(GLOBALS)), y=draw(st.sampled_from(GLOBALS))))
                defined.append((kind, name))
            else:
                kind, target = draw(st.sampled_from(defined))
                use = draw(st.sampled_from(USES[kind])).format(n=target, r=f"r_{name}")
                statements.append(use + "\n")
                if use.startswith(f"{target}_i ="):
                    defined.append(("inst", f"{target}_i"))
                elif use.startswith(f"{target}_t ="):
                    defined.append(("clo", f"{target}_t"))
        cells.append("".join(statements))
    # Code reading a name that no cell binds is an error even where it does not run (a
    # real mistake): every name is bound, at the latest here.
    cells.append("".join(f"{name} = {value}\n" for value, name in enumerate(GLOBALS, 7)))
    return cells


def _runs_top_to_bottom(cells: list[str]) -> dict[str, Any] | None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        exec("import functools\n", namespace)
        for cell in cells:
            exec(compile(cell, "<cell>", "exec"), namespace)
    except Exception:
        return None
    return namespace


def _deferred_notebook(cells: list[str]) -> dict[str, Any]:
    code = [{"cell_type": "code", "metadata": {"tags": ["imports"]},
             "source": "import functools\n", "outputs": [], "execution_count": None}]
    for index, cell in enumerate(cells):
        code.append({"cell_type": "code", "metadata": {"tags": [f"step:s{index}"]},
                     "source": cell, "outputs": [], "execution_count": None})
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": code}


def _run_as_pipeline(pipeline: Any) -> dict[str, dict[str, Any]]:
    """Each step in its own namespace, with only what it loads; the values it writes."""
    import cloudpickle

    from kale_py import marshal

    saved: dict[str, dict[str, bytes]] = {}
    written: dict[str, dict[str, Any]] = {}
    for step in pipeline.steps:
        io = pipeline.io[step.name]
        namespace: dict[str, Any] = {"__name__": "__main__"}
        exec("import functools\n", namespace)
        for name, provider in io.loads.items():
            data = memoryview(saved[provider][name])
            namespace[name] = marshal._unpickler("cloudpickle", data, [], namespace)()
        for cell in step.cells:
            exec(compile(cell.source, f"<step {step.name}>", "exec"), namespace)
        saved[step.name] = {name: cloudpickle.dumps(namespace[name], protocol=5)
                            for name in io.saves}
        written[step.name] = {name: namespace[name] for name in io.writes if name in namespace}
    return written


@DEFERRED_SETTINGS
@given(deferred_programs())
def test_deferred_reads_are_provided(cells: list[str]) -> None:
    from hypothesis import assume

    from kale_py.graph import build_pipeline
    from kale_py.notebook import notebook_from_dict

    kernel = _runs_top_to_bottom(cells)
    assume(kernel is not None)
    assert kernel is not None
    pipeline = build_pipeline(notebook_from_dict(_deferred_notebook(cells)))
    errors = [d.message for d in pipeline.diagnostics if d.is_error]
    assert errors == [], "".join(cells)
    written = _run_as_pipeline(pipeline)  # a NameError here is a missed deferred read
    last: dict[str, Any] = {}
    for step in pipeline.steps:
        last.update(written[step.name])
    for name, value in kernel.items():
        if isinstance(value, int) and not isinstance(value, bool):
            assert last.get(name) == value, (name, "".join(cells))
