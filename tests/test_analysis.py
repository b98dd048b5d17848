"""Focused cases for kale_py.analysis: one behaviour per case."""

from __future__ import annotations

import builtins
import sys
import textwrap
from dataclasses import dataclass

import pytest

from kale_py.analysis import (
    CodeAnalysis,
    CodeSyntaxError,
    FunctionInfo,
    MagicLine,
    NameUse,
    analyse_source,
    function_closure,
    function_writes,
    strip_magics,
)

BUILTINS = frozenset(dir(builtins))


def analyse(source: str) -> CodeAnalysis:
    return analyse_source(textwrap.dedent(source))


def free(a: CodeAnalysis) -> set[str]:
    return {use.name for use in a.free} - BUILTINS


def words(text: str) -> set[str]:
    return set(text.split())


@dataclass
class Case:
    id: str
    source: str
    free: str | None = None      # exact set of free names (builtins left out), if given
    binds: str | None = None     # exact set, if given
    maybe_free: str | None = None
    partial: str | None = None
    since: tuple[int, int] = (3, 10)  # the Python version that parses the source
    callback: str | None = None  # exact set of callback_free names, if given

    def check(self) -> None:
        if sys.version_info < self.since:
            pytest.skip(f"needs Python {self.since[0]}.{self.since[1]}")
        a = analyse(self.source)
        if self.free is not None:
            assert free(a) == words(self.free), "free"
        if self.binds is not None:
            assert set(a.binds) == words(self.binds), "binds"
        if self.maybe_free is not None:
            assert set(a.maybe_free) - BUILTINS == words(self.maybe_free), "maybe_free"
        if self.partial is not None:
            assert set(a.partial_binds) == words(self.partial), "partial_binds"
        if self.callback is not None:
            assert {u.name for u in a.callback_free} == words(self.callback), "callback_free"


def cases(*items: Case) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", items, ids=[c.id for c in items])


# --- reading before binding at module level ------------------------------------------------


@cases(
    Case("read-then-bind", "print(x)\nx = 1\n", free="x", binds="x"),
    Case("bind-then-read", "x = 1\nprint(x)\n", free="", binds="x"),
    Case("self-reference", "x = x + 1\n", free="x", binds="x"),
    Case("aug-assign-reads", "x += 1\n", free="x", binds="x"),
    Case("tuple-unpack", "a, (b, *c) = t\nprint(a, b, c)\n", free="t", binds="a b c"),
    Case("chained-assign", "a = b = c\nprint(a, b)\n", free="c", binds="a b"),
    Case("annotation-only-binds-nothing", "x: int\nprint(x)\n", free="x", binds=""),
    Case("annotation-reads-its-type", "x: Frame = 1\n", free="Frame", binds="x"),
    Case("future-annotations-not-read",
         "from __future__ import annotations\nx: Frame = 1\n", free="", binds="annotations x"),
    Case("attribute-target-reads-root", "x.a = 1\n", free="x", binds=""),
    Case("subscript-target-reads-index", "x[k] = v\n", free="x k v", binds=""),
    Case("import-binds-top-package", "import a.b.c\nimport d.e as f\n", binds="a f"),
    Case("from-import", "from m import x, y as z\nprint(x, z)\n", free="", binds="x z"),
    Case("relative-import", "from . import x\nfrom .. import y\n", binds="x y"),
    Case("walrus-at-module-level", "if (n := len(a)) > 3:\n    pass\nprint(n)\n",
         free="a", binds="n"),
    Case("order-of-evaluation", "y = [x := 1, x]\n", free="", binds="x y"),
    Case("del-then-read", "x = 1\ndel x\nprint(x)\n", free="x", binds="x"),
    Case("del-reads-the-name", "del x\n", free="x", binds="x"),
    Case("del-then-rebind", "del x\nx = 2\nprint(x)\n", free="x", binds="x", partial=""),
    Case("f-string-reads", "s = f'{a!r:>{width}}'\n", free="a width", binds="s"),
    Case("starred-call", "f(*args, **kwargs)\n", free="f args kwargs"),
    Case("slices", "y = x[a:b, ::c]\n", free="x a b c"),
    Case("long-chain-of-binops", "y = " + " + ".join(f"v{i}" for i in range(900)) + "\n",
         free=" ".join(f"v{i}" for i in range(900))),
    Case("long-method-chain", "y = df" + ".f(a)[k]" * 400 + "\n", free="df a k"),
    Case("long-unary-chain", "y = " + "not " * 900 + "x\n", free="x"),
    Case("top-level-await", "r = await fetch(url)\n", free="fetch url", binds="r"),
    Case("async-for-and-with",
         "async with session() as s:\n    async for row in s.rows():\n        out = row\n",
         free="session", binds="s row out"),
)
def test_module_level(case: Case) -> None:
    case.check()


# --- paths that may not bind ------------------------------------------------------------------


@cases(
    Case("if-without-else", "if c:\n    y = 1\nprint(y)\n", free="c y", maybe_free="y",
         partial="y"),
    Case("if-else-both-bind", "if c:\n    y = 1\nelse:\n    y = 2\nprint(y)\n", free="c",
         partial=""),
    Case("elif-chain-all-bind",
         "if a:\n    y = 1\nelif b:\n    y = 2\nelse:\n    y = 3\nprint(y)\n", free="a b"),
    Case("elif-chain-missing-else", "if a:\n    y = 1\nelif b:\n    y = 2\nprint(y)\n",
         free="a b y"),
    Case("branch-that-raises", "if c:\n    raise ValueError\nelse:\n    y = 1\nprint(y)\n",
         free="c"),
    Case("for-body-may-not-run", "for i in xs:\n    last = i\nprint(last, i)\n",
         free="xs last i", maybe_free="last i", partial="i last"),
    Case("for-else-runs-without-break",
         "for i in xs:\n    if i:\n        break\nelse:\n    i = None\nprint(i)\n", free="xs"),
    Case("while-may-not-run", "while c:\n    y = 1\nprint(y)\n", free="c y"),
    Case("while-true-exits-by-break",
         "while True:\n    v = read()\n    if v:\n        break\nprint(v)\n", free="read"),
    Case("while-true-with-two-breaks",
         "while True:\n    if a:\n        w = 1\n        break\n"
         "    if b:\n        break\nprint(w)\n",
         free="a b w"),
    Case("loop-back-edge-is-maybe",
         "for i in xs:\n    if i:\n        print(prev)\n    prev = i\n",
         free="xs prev", maybe_free="prev"),
    Case("continue-skips-the-rest",
         "for i in xs:\n    if i:\n        continue\n    z = i\nprint(z)\n", free="xs z"),
    Case("try-body-may-stop-early", "try:\n    z = f()\nexcept E:\n    pass\nprint(z)\n",
         free="f E z", maybe_free="z"),
    Case("try-all-paths-bind", "try:\n    z = f()\nexcept E:\n    z = None\nprint(z)\n",
         free="f E"),
    Case("try-else-binds-on-success",
         "try:\n    f()\nexcept E:\n    z = 0\nelse:\n    z = 1\nprint(z)\n", free="f E"),
    Case("try-handler-that-raises", "try:\n    z = f()\nexcept E:\n    raise\nprint(z)\n",
         free="f E"),
    Case("try-finally-normal-exit", "try:\n    z = f()\nfinally:\n    g()\nprint(z)\n",
         free="f g"),
    Case("finally-reads-maybe-unbound", "try:\n    z = f()\nfinally:\n    print(z)\n",
         free="f z"),
    Case("finally-binding-counts", "try:\n    f()\nfinally:\n    z = 1\nprint(z)\n", free="f"),
    Case("except-as-is-unbound-after",
         "try:\n    f()\nexcept E as e:\n    print(e)\nprint(e)\n", free="f E e",
         binds="e", partial="e"),
    Case("except-star", "try:\n    f()\nexcept* E as eg:\n    n = len(eg.exceptions)\n",
         free="f E", binds="eg n", since=(3, 11)),
    Case("with-binds", "with open(p) as fh:\n    data = fh.read()\nprint(data)\n", free="p"),
    Case("with-suppress-may-stop-early",
         "with suppress(KeyError):\n    q = d['a']\nprint(q)\n", free="suppress d q",
         maybe_free="q"),
    Case("with-contextlib-suppress",
         "with contextlib.suppress(KeyError):\n    q = d['a']\nprint(q)\n",
         free="contextlib d q"),
    Case("del-in-branch", "x = 1\nif c:\n    del x\nprint(x)\n", free="c x", maybe_free="x"),
    Case("del-in-loop-body-next-iteration", "x = 1\nfor i in r:\n    del x\n", free="r x",
         maybe_free="x"),
    Case("del-in-loop-rebound-before-next", "x = 1\nfor i in r:\n    print(x)\n    del x\n"
         "    x = 2\n", free="r"),
    Case("while-test-after-del", "x = 1\nwhile x:\n    del x\n", free="x"),
    Case("star-import-makes-reads-maybe", "from m import *\nprint(y)\n", free="y",
         maybe_free="y"),
    Case("walrus-in-and-is-maybe", "if a and (m := g()):\n    pass\nprint(m)\n",
         free="a g m", maybe_free="m"),
    Case("walrus-in-both-ifexp-branches", "v = (w := 1) if c else (w := 2)\nprint(w)\n",
         free="c"),
)
def test_flow(case: Case) -> None:
    case.check()


# --- comprehensions, lambdas, classes ---------------------------------------------------------


@cases(
    Case("comprehension-target-is-local", "ys = [x * 2 for x in xs]\nprint(x)\n",
         free="xs x", binds="ys"),
    Case("first-iterable-in-enclosing-scope", "ys = [x for x in x]\n", free="x", binds="ys"),
    Case("nested-generators", "ys = [c for row in grid for c in row if c > lim]\n",
         free="grid lim"),
    Case("dict-and-set-comprehensions", "d = {k: v for k, v in items}\ns = {v for v in d}\n",
         free="items"),
    Case("generator-expression", "t = sum(w * v for v in vs)\n", free="w vs"),
    Case("walrus-in-comprehension-binds-enclosing",
         "ys = [y for x in xs if (y := f(x))]\nprint(y)\n", free="xs f y", binds="ys y",
         maybe_free="y"),
    Case("walrus-then-read-inside-comprehension", "ys = [(t := x + 1) + t for x in xs]\n",
         free="xs", binds="ys t"),
    Case("lambda-parameters-are-local", "f = lambda a, b=d: a + b + c\n", free="d",
         binds="f", callback=""),
    Case("lambda-run-by-the-call", "ys = sorted(xs, key=lambda v: weights[v])\n",
         free="xs weights", callback=""),
    Case("lambda-handed-on", "ys = schedule(xs, key=lambda v: weights[v])\n",
         free="schedule xs", callback="weights"),
    Case("lambda-in-comprehension-sees-target", "fs = [lambda: i for i in range(3)]\n",
         free=""),
    Case("class-body-runs-now", "class A(Base, metaclass=Meta):\n    x = y\n",
         free="Base Meta y", binds="A"),
    Case("class-body-sees-its-names", "class A:\n    n = 3\n    m = n + 1\n", free=""),
    Case("class-body-reads-global-before-binding", "class A:\n    n = n\n", free="n"),
    Case("class-comprehension-cannot-see-class-names",
         "class A:\n    n = 3\n    r = [n * i for i in range(3)]\n", free="n"),
    Case("class-comprehension-first-iterable-can",
         "class A:\n    xs = [1]\n    r = [v for v in xs]\n", free=""),
    Case("class-names-stay-in-the-class", "class A:\n    n = 3\nprint(n)\n", free="n",
         binds="A"),
    Case("class-lambda-cannot-see-class-names",
         "class A:\n    k = 1\n    f = lambda self: k\n", free="", callback="k"),
    Case("decorators-and-defaults-read-at-def-time",
         "@deco(opt)\ndef f(a=d, *, b=e) -> R:\n    return g\n", free="deco opt d e R",
         binds="f"),
    Case("function-body-not-read-at-def-time", "def f():\n    return g\n", free="", binds="f"),
    Case("parameter-annotations-read", "def f(a: A, *r: B, **k: C): pass\n", free="A B C"),
)
def test_scopes(case: Case) -> None:
    case.check()


# --- functions: call-time globals --------------------------------------------------------------


def test_function_info_collects_call_time_globals() -> None:
    a = analyse("""
        def f(x, y=1):
            z = x + y + scale
            def inner():
                return z + offset
            return [inner() for _ in rows] + sorted(rows, key=lambda q: q + shift)
    """)
    info = a.functions["f"]
    assert info.globals_read >= {"scale", "offset", "rows", "shift"}
    assert not info.globals_read & {"x", "y", "z", "inner", "q", "_"}
    assert info.line == 2
    assert info.globals_written == frozenset()


def test_calling_a_function_of_the_same_source_reads_its_globals() -> None:
    a = analyse("def f():\n    return g + h\ng = 1\nf()\n")
    assert free(a) == {"h"}
    assert NameUse("h", 4, 0) in a.free  # reported where the call is


def test_calling_before_the_globals_exist() -> None:
    assert free(analyse("def f():\n    return g\nf()\ng = 1\n")) == {"g"}


def test_globals_read_only_by_code_that_may_run_later_are_maybe_free() -> None:
    # A method may run only after ``helper`` is defined below; a direct read may not.
    a = analyse("class A:\n    def f(self):\n        return helper()\nx = A()\n"
                "def helper():\n    return 1\n")
    assert free(a) == set() and {u.name for u in a.callback_free} == {"helper"}
    a = analyse("def f():\n    return helper()\ncbs = [f]\ndef helper():\n    return 1\n"
                "cbs[0]()\n")
    assert free(a) == set() and {u.name for u in a.callback_free} == {"helper"}
    a = analyse("def f():\n    return helper()\nx = f()\ndef helper():\n    return 1\n")
    assert free(a) == {"helper"} and a.maybe_free == {"helper"}
    a = analyse("x = helper()\ndef helper():\n    return 1\n")
    assert free(a) == {"helper"} and a.maybe_free == frozenset()


def test_transitive_calls_in_the_same_source() -> None:
    a = analyse("def f():\n    return g()\ndef g():\n    return k\nr = f()\n")
    assert free(a) == {"k"}


def test_passing_a_function_counts_as_using_it() -> None:
    a = analyse("def key(v):\n    return w[v]\nys = sorted(xs, key=key)\n")
    assert free(a) == {"w", "xs"}  # sorted runs it before it returns
    a = analyse("def key(v):\n    return w[v]\nys = df.apply(key)\n")
    assert free(a) == {"w", "df"}


def test_global_statement_writes() -> None:
    a = analyse("""
        def bump(k=1):
            global counter
            counter += k
        def reset():
            global counter, other
            counter = 0
            del other
    """)
    assert a.functions["bump"].globals_written == {"counter"}
    assert a.functions["bump"].globals_read == {"counter"}
    assert a.functions["reset"].globals_written == {"counter", "other"}
    assert "counter" not in a.binds  # nothing calls them here


def test_calling_a_global_writer_binds_maybe() -> None:
    a = analyse("def bump():\n    global counter\n    counter += 1\nbump()\nprint(counter)\n")
    assert "counter" in a.binds and "counter" in a.mutates
    assert "counter" in free(a) and "counter" in a.partial_binds


def test_global_in_nested_function_is_not_captured_by_enclosing_local() -> None:
    a = analyse("""
        def outer():
            x = 1
            def inner():
                global x
                return x
            return inner
    """)
    assert a.functions["outer"].globals_read == {"x"}


def test_nonlocal_is_never_global() -> None:
    a = analyse("""
        def make():
            count = 0
            def inc(step=1):
                nonlocal count
                count += step
                return count + base
            return inc
    """)
    assert a.functions["make"].globals_read == {"base"}
    assert a.functions["make"].globals_written == frozenset()


def test_class_function_info_covers_methods_and_lambdas() -> None:
    a = analyse("""
        class Model:
            rate = default_rate
            key = staticmethod(lambda v: v * factor)

            @property
            def scaled(self):
                return self.rate * scale

            @classmethod
            def make(cls):
                registry.append(cls)
                return cls()
    """)
    info = a.functions["Model"]
    assert info.globals_read == {"factor", "scale", "registry"}
    assert info.globals_written == {"registry"}
    assert free(a) == {"default_rate"}
    assert {u.name for u in a.callback_free} == {"factor"}  # the lambda may run now
    assert info.is_class and info.later_reads == info.globals_read


def test_method_sees_module_not_class_names() -> None:
    a = analyse("class A:\n    n = 1\n    def f(self):\n        return n\n")
    assert a.functions["A"].globals_read == {"n"}


def test_lambda_assignment_is_a_function() -> None:
    a = analyse("norm = lambda v: v / total\n")
    assert a.functions["norm"].globals_read == {"total"}


def test_last_definition_wins() -> None:
    a = analyse("def f():\n    return a\ndef f():\n    return b\n")
    assert a.functions["f"].globals_read == {"b"}
    assert a.functions["f"].line == 3


def test_function_closure_and_writes_are_transitive() -> None:
    functions = {
        "f": FunctionInfo("f", frozenset({"g", "a"}), frozenset(), 1),
        "g": FunctionInfo("g", frozenset({"h", "b"}), frozenset({"w"}), 2),
        "h": FunctionInfo("h", frozenset({"h", "c"}), frozenset({"v"}), 3),
    }
    assert function_closure(["f"], functions) == {"g", "a", "h", "b", "c"}
    assert function_writes(["f"], functions) == {"w", "v"}
    assert function_closure(["unknown"], functions) == frozenset()
    assert function_closure([], functions) == frozenset()


# --- match statements -----------------------------------------------------------------------


def test_match_captures_and_reads() -> None:
    a = analyse("""
        match command:
            case Point(x=0, y=py) if py > limit:
                out = py
            case [first, *rest]:
                out = first
            case {"k": v, **others}:
                out = v
            case Color.RED | Color.GREEN:
                out = 0
            case str() as s:
                out = s
            case _:
                out = None
        print(out)
    """)
    assert free(a) == {"command", "Point", "limit", "Color"}
    assert a.binds == {"py", "first", "rest", "v", "others", "s", "out"}
    assert "out" not in a.partial_binds  # the wildcard makes the match exhaustive
    assert {"py", "rest", "others", "s"} <= a.partial_binds


def test_match_without_wildcard_may_bind_nothing() -> None:
    a = analyse("match p:\n    case (x, y):\n        out = x + y\nprint(out)\n")
    assert free(a) == {"p", "out"}
    assert a.maybe_free == {"out"}


def test_match_guard_walrus_is_maybe_bound() -> None:
    a = analyse("match p:\n    case v if (w := v):\n        pass\nprint(w)\n")
    assert "w" in a.maybe_free and "w" in a.partial_binds


def test_match_guard_does_not_make_a_case_exhaustive() -> None:
    a = analyse("match p:\n    case v if v:\n        out = 1\nprint(out)\n")
    assert "out" in free(a)


# --- mutation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "mutated"), [
    pytest.param("x.attr = 1", "x", id="attribute-store"),
    pytest.param("x[0] = 1", "x", id="subscript-store"),
    pytest.param("x.a.b[0].c = 1", "x", id="deep-chain-store"),
    pytest.param("del x[0]", "x", id="del-subscript"),
    pytest.param("del x.attr", "x", id="del-attribute"),
    pytest.param("x += 1", "x", id="aug-assign-name"),
    pytest.param("x[k] += 1", "x", id="aug-assign-subscript"),
    pytest.param("x.n += 1", "x", id="aug-assign-attribute"),
    pytest.param("x.append(1)", "x", id="append"),
    pytest.param("x.sort()", "x", id="sort"),
    pytest.param("x.update(y)", "x", id="update-leaves-its-argument"),
    pytest.param("x.merge(y).update(z)", "x", id="chain-leaves-arguments"),
    pytest.param("x.pop()", "x", id="pop"),
    pytest.param("model.fit(X, y)", "model", id="fit-leaves-its-data"),
    pytest.param("model.partial_fit(X)", "model", id="partial-fit"),
    pytest.param("x['a'].update(z=1)", "x", id="method-on-subscript"),
    pytest.param("x.get('a').append(1)", "x", id="method-on-method-result"),
    pytest.param("df.drop(columns=c, inplace=True)", "df", id="inplace-true"),
    pytest.param("df.fillna(0, inplace=flag)", "df", id="inplace-unknown"),
    pytest.param("Model(x)", "x", id="passed-to-a-constructor"),
    pytest.param("shuffle(x)", "shuffle x", id="passed-to-unknown-function"),
    pytest.param("f(key=x)", "f x", id="passed-by-keyword"),
    pytest.param("f(*xs, **kw)", "f xs kw", id="starred-arguments"),
    pytest.param("f(x[0], x.a)", "f x", id="parts-passed"),
    pytest.param("f([a, b], {'k': c})", "f a b c", id="inside-literals"),
    pytest.param("np.random.shuffle(x)", "x", id="module-function-argument"),
    pytest.param("next(it)", "it", id="next-advances-an-iterator"),
    pytest.param("for x[0] in range(3): pass", "x", id="for-subscript-target"),
    pytest.param("with cm() as x.attr: pass", "cm x", id="with-attribute-target"),
    pytest.param("counter()", "counter", id="calling-a-stateful-callable"),
    pytest.param("X = df\nX['c'] = 1", "X df", id="alias-by-assignment"),
    pytest.param("parts = [a, b]\nfor p in parts:\n    p['c'] = 1", "p parts a b",
                 id="alias-through-a-container"),
    pytest.param("l = []\nl.append(df)", "l", id="append-does-not-alias"),
    pytest.param("def f():\n    x.append(1)\nf()", "x", id="through-a-function-called-here"),
    pytest.param("ys = [v.append(1) for v in xs]", "xs", id="through-a-comprehension-variable"),
    pytest.param("ys = [c.clear() for row in grid for c in row]", "grid",
                 id="through-nested-comprehension-variables"),
    pytest.param("def g(a, b):\n    b.append(a)\ng(x, y)", "y", id="only-changed-parameters"),
    pytest.param("def g(a, b):\n    b.append(a)\ng(x, b=y)", "y", id="changed-keyword-parameter"),
    pytest.param("def g(a, b):\n    b.append(a)\ng(*xs)", "xs", id="unpacked-arguments"),
    pytest.param("def g(*rows):\n    rows[0].clear()\ng(x, y)", "x y", id="changed-varargs"),
])
def test_mutates(source: str, mutated: str) -> None:
    assert set(analyse(source).mutates) == words(mutated)


@pytest.mark.parametrize("source", [
    pytest.param("print(x)", id="print"),
    pytest.param("n = len(x)", id="len"),
    pytest.param("y = x.copy()", id="copy"),
    pytest.param("y = x.head()\nz = x.describe()", id="inspection"),
    pytest.param("y = df.groupby('a').agg('sum')", id="groupby-agg"),
    pytest.param("y = df.drop(columns=['a'])", id="drop-without-inplace"),
    pytest.param("y = df.fillna(0, inplace=False)", id="inplace-false"),
    pytest.param("p = model.predict(X)", id="predict"),
    pytest.param("s = ', '.join(names)", id="str-join"),
    pytest.param("y = np.mean(x)\nz = np.concatenate([x, x])", id="numpy-pure"),
    pytest.param("y = numpy.linalg.norm(x)", id="numpy-dotted"),
    pytest.param("y = pd.concat([a, b])", id="pandas-concat"),
    pytest.param("s = accuracy_score(y, p)", id="sklearn-metric"),
    pytest.param("s = metrics.f1_score(y, p)", id="sklearn-metric-dotted"),
    pytest.param("a, b = train_test_split(X, test_size=t)", id="train-test-split"),
    pytest.param("s = json.dumps(x)\nc = copy.deepcopy(x)", id="json-and-copy"),
    pytest.param("r = math.sqrt(x)", id="math"),
    pytest.param("display(x)", id="display"),
    pytest.param("from collections import defaultdict\nfrom contextlib import suppress\n"
                 "d = defaultdict(list)\nwith suppress(KeyError): pass", id="builtin-types"),
    pytest.param("n = next(iter(xs))\nm = open(path)", id="builtin-calls"),
    pytest.param("isinstance(x, int)\nsorted(x, key=len)", id="builtin-functions"),
    pytest.param("import numpy as np\nnp.random.seed(0)", id="module-receiver"),
    pytest.param("m = Model(alpha=0.1)", id="class-call"),
    pytest.param("from m import helper\nhelper()", id="imported-function"),
    pytest.param("def f(v):\n    return v\nf(1)", id="function-defined-here"),
    pytest.param("x = []\nx = [1]", id="plain-rebinding"),
    pytest.param("def f():\n    x = []\n    x.append(1)", id="local-in-function"),
    pytest.param("ys = [v.upper() for v in xs]", id="comprehension-local"),
    pytest.param("class A:\n    items = []\n    items.append(1)", id="class-local"),
])
def test_does_not_mutate(source: str) -> None:
    assert analyse(source).mutates == frozenset()


def test_mutation_is_also_a_read() -> None:
    a = analyse("x.append(1)\n")
    assert free(a) == {"x"} and a.mutates == {"x"} and a.binds == frozenset()


@pytest.mark.parametrize(("source", "parameters", "mutated"), [
    pytest.param("def score(model, X, y):\n    return round((model.predict(X) == y).mean(), 4)",
                 ("model", "X", "y"), "", id="reads-only"),
    pytest.param("def clean(df):\n    df.dropna(inplace=True)", ("df",), "df", id="inplace"),
    pytest.param("def f(p, q):\n    r = p\n    r.append(q)", ("p", "q"), "p",
                 id="through-a-local-alias"),
    pytest.param("def f(rows):\n    for r in rows:\n        r['x'] = 1", ("rows",), "rows",
                 id="through-a-loop-variable"),
    pytest.param("def f(p):\n    def g():\n        p.clear()\n    g()", ("p",), "p",
                 id="through-a-nested-function"),
    pytest.param("def f(p):\n    return shuffle(p)", ("p",), "p", id="handed-on"),
    pytest.param("def f(p):\n    p = p.copy()\n    return p", ("p",), "", id="copied"),
    pytest.param("def f(a, /, b, *args, c, d=1, **kw):\n    kw.clear()",
                 ("a", "b", "*args", "c", "d", "**kw"), "**kw", id="every-kind"),
    pytest.param("def f(a, *, b):\n    b.sort()", ("a", "*", "b"), "b", id="bare-star"),
    pytest.param("@functools.lru_cache\ndef f(p):\n    return len(p)", ("p",), "",
                 id="transparent-decorator"),
    pytest.param("f = lambda v, acc: acc.append(v)", ("v", "acc"), "acc", id="lambda"),
])
def test_parameters_a_function_may_change(source: str, parameters: tuple[str, ...],
                                          mutated: str) -> None:
    (info,) = analyse(source).functions.values()
    assert info.parameters == parameters
    assert info.mutated_parameters == frozenset(mutated.split())


@pytest.mark.parametrize("source", [
    pytest.param("@register\ndef f(p):\n    return p", id="unknown-decorator"),
    pytest.param("class f:\n    def __init__(self, p):\n        pass", id="class"),
])
def test_parameters_unknown(source: str) -> None:
    assert analyse(source).functions["f"].mutated_parameters is None


def test_functions_of_earlier_cells_make_calls_precise() -> None:
    helpers = analyse("def score(model, X, y):\n    return (model.predict(X) == y).mean()\n"
                      "def clean(df):\n    df.dropna(inplace=True)\n").functions
    cell = "s = score(model, X_test, y_test)\nclean(raw)\n"
    assert analyse_source(cell).mutates == {"score", "model", "X_test", "y_test", "clean", "raw"}
    assert analyse_source(cell, helpers).mutates == {"raw"}
    # Rebinding the name in the cell makes the earlier definition irrelevant.
    assert "X" in analyse_source("def score(m, X, y):\n    X.sort()\nscore(a, X, b)\n",
                                 helpers).mutates


def test_function_mutating_a_global_records_a_write() -> None:
    a = analyse("def push(v):\n    items.append(v)\n    log[v] = 1\n")
    assert a.functions["push"].globals_written == {"items", "log"}


# --- deletes ---------------------------------------------------------------------------------


def test_deletes() -> None:
    assert analyse("del a, b\n").deletes == {"a", "b"}
    assert analyse("del a\na = 1\n").deletes == frozenset()
    assert analyse("x = 1\ndel x\n").binds == {"x"}


def test_the_end_of_an_except_clause_deletes_its_name() -> None:
    source = "try:\n    f()\nexcept ValueError as exc:\n    message = str(exc)\n"
    a = analyse(source)
    assert a.deletes == a.clause_deletes == {"exc"} and "exc" in a.binds
    assert analyse(source + "exc = None\n").deletes == frozenset()  # bound again
    a = analyse(source + "del exc\n")
    assert a.deletes == {"exc"} and a.clause_deletes == frozenset()
    assert analyse("def g():\n    try:\n        f()\n    except E as e:\n        pass\n"
                   ).deletes == frozenset()  # a function's local


# --- results ---------------------------------------------------------------------------------


def test_free_is_first_use_in_source_order_with_positions() -> None:
    a = analyse_source("y = b\nz = a + b\nprint(a)\n")
    assert [(u.name, u.line, u.col) for u in a.free] == [
        ("b", 1, 4), ("a", 2, 4), ("print", 3, 0)]


def test_columns_count_characters() -> None:
    a = analyse_source("é = 1; ü = x\n")
    assert a.free == (NameUse("x", 1, 11),)


def test_star_imports() -> None:
    a = analyse("from pkg.mod import *\nfrom .. import *\n")
    assert a.star_imports == (NameUse("pkg.mod", 1, 0), NameUse("..", 2, 0))


def test_empty_source() -> None:
    a = analyse_source("")
    assert a == CodeAnalysis((), frozenset(), frozenset(), frozenset(), {}, (), ())


def test_free_names_property() -> None:
    assert analyse_source("a + b").free_names == {"a", "b"}


# --- IPython syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "expected", "magics"), [
    pytest.param("%matplotlib inline\nx = 1\n", "pass\nx = 1\n",
                 [(1, "line_magic", "%matplotlib inline")], id="line-magic"),
    pytest.param("!pip install x\n", "pass\n", [(1, "shell", "!pip install x")], id="shell"),
    pytest.param("!!ls\n", "pass\n", [(1, "shell", "!!ls")], id="double-bang"),
    pytest.param("files = !ls -l\n", "files = None\n", [(1, "shell", "files = !ls -l")],
                 id="shell-assignment"),
    pytest.param("a, b = !ls\n", "a, b = None\n", [(1, "shell", "a, b = !ls")],
                 id="shell-assignment-tuple"),
    pytest.param("out = %sx ls\n", "out = None\n", [(1, "line_magic", "out = %sx ls")],
                 id="magic-assignment"),
    pytest.param("t = %time f(x)\n", "t = f(x)\n", [(1, "line_magic", "t = %time f(x)")],
                 id="time-assignment-keeps-expression"),
    pytest.param("%time y = f(x)\n", "y = f(x)\n", [(1, "line_magic", "%time y = f(x)")],
                 id="time-keeps-statement"),
    pytest.param("%timeit -n 10 -r3 f(x)\n", "f(x)\n",
                 [(1, "line_magic", "%timeit -n 10 -r3 f(x)")], id="timeit-options"),
    pytest.param("%time\n", "pass\n", [(1, "line_magic", "%time")], id="time-alone"),
    pytest.param("if c:\n    %time y = 1\n    !echo hi\n", "if c:\n    y = 1\n    pass\n",
                 [(2, "line_magic", "%time y = 1"), (3, "shell", "!echo hi")],
                 id="inside-a-block"),
    pytest.param("df.head?\n", "pass\n", [(1, "line_magic", "df.head?")], id="help-suffix"),
    pytest.param("??np.mean\n", "pass\n", [(1, "line_magic", "??np.mean")], id="help-prefix"),
    pytest.param("%pip install a \\\n  b\nx = 1\n", "pass\n\nx = 1\n",
                 [(1, "line_magic", "%pip install a \\\n  b")], id="continued-magic"),
    pytest.param("%%bash\necho $x\nls\n", "\n\n\n", [(1, "cell_magic", "%%bash")],
                 id="cell-magic-bash"),
    pytest.param("%%writefile f.py\nimport os\n", "\n\n", [(1, "cell_magic", "%%writefile f.py")],
                 id="cell-magic-writefile"),
    pytest.param("\n%%html\n<b>x</b>\n", "\n\n\n", [(2, "cell_magic", "%%html")],
                 id="cell-magic-after-blank-line"),
    pytest.param("%%capture out\nprint(x)\n", "out = None\nprint(x)\n",
                 [(1, "cell_magic", "%%capture out")], id="capture-binds"),
    pytest.param("%%capture --no-stderr\nprint(x)\n", "pass\nprint(x)\n",
                 [(1, "cell_magic", "%%capture --no-stderr")], id="capture-without-name"),
    pytest.param("%%time\nx = 1\n%matplotlib inline\n", "pass\nx = 1\npass\n",
                 [(1, "cell_magic", "%%time"), (3, "line_magic", "%matplotlib inline")],
                 id="cell-time-keeps-body"),
])
def test_strip_magics(source: str, expected: str, magics: list[tuple[int, str, str]]) -> None:
    text, found = strip_magics(source)
    assert text == expected
    assert found == tuple(MagicLine(*m) for m in magics)
    assert text.count("\n") == source.count("\n")


@pytest.mark.parametrize("source", [
    pytest.param("x = 5 % 3\ny = x%2\n", id="modulo"),
    pytest.param("s = '%d items' % n\n", id="percent-in-string"),
    pytest.param("s = '''\n%notmagic\n!nor this\n'''\n", id="multi-line-string"),
    pytest.param('s = """a\n   %x\n"""\n', id="indented-in-string"),
    pytest.param("y = (a\n     % b)\n", id="inside-brackets"),
    pytest.param("y = a \\\n    % b\n", id="after-backslash"),
    pytest.param("# %matplotlib inline\n", id="comment"),
    pytest.param("x = a != b\n", id="not-equal"),
    pytest.param("s = 'it''s'\nt = \"it's\" # what?\n", id="quotes-and-comment"),
    pytest.param("s = 'a\\\n%b'\n", id="continued-short-string"),
    pytest.param("x = [\n  '''\n%a\n''', 1]\n", id="string-inside-brackets"),
])
def test_strip_magics_leaves_python_alone(source: str) -> None:
    assert strip_magics(source) == (source, ())


def test_magic_lines_do_not_confuse_the_scanner() -> None:
    # A shell line with an unbalanced quote must not open a string for the next lines.
    text, magics = strip_magics("!echo \"it's\n%matplotlib inline\nx = 1\n")
    assert text == "pass\npass\nx = 1\n"
    assert len(magics) == 2


def test_crlf_line_endings_are_kept() -> None:
    text, magics = strip_magics("%matplotlib inline\r\nx = 1\r\n")
    assert text == "pass\r\nx = 1\r\n"
    assert magics[0].line == 1


@pytest.mark.parametrize(("source", "free_names", "binds", "n_magics"), [
    pytest.param("%matplotlib inline\nimport numpy as np\n", "", "np", 1, id="line-magic"),
    pytest.param("files = !ls\nprint(files)\n", "", "files", 1, id="shell-assignment"),
    pytest.param("%%bash\necho $x\n", "", "", 1, id="bash-cell"),
    pytest.param("%%capture out\nprint(x)\n", "x", "out", 1, id="capture"),
    pytest.param("%time y = f(x)\n", "f x", "y", 1, id="time"),
    pytest.param("if c:\n    %time y = f(x)\n", "c f x", "y", 1, id="magic-in-block"),
    pytest.param("s = '%d' % n\n", "n", "s", 0, id="percent-format"),
])
def test_analysis_of_cells_with_magics(source: str, free_names: str, binds: str,
                                       n_magics: int) -> None:
    a = analyse_source(source)
    assert free(a) == words(free_names)
    assert set(a.binds) == words(binds)
    assert len(a.magics) == n_magics


def test_valid_python_has_no_magics() -> None:
    assert analyse_source("x = 1 % 2\n").magics == ()


# --- syntax errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "line", "col"), [
    pytest.param("x = 1\ny = 2\nz = (\n", 3, 4, id="unclosed-bracket-line-3"),
    pytest.param("x = 1\n\ndef f(:\n    pass\n", 3, 6, id="bad-def-line-3"),
    pytest.param("if x:\ny = 1\n", 2, 0, id="missing-indent"),
    pytest.param("%matplotlib inline\nx = = 1\n", 2, 4, id="after-a-magic"),
    pytest.param("x = 1\n\0\n", 2, 0, id="null-byte"),
    pytest.param("s = '''\n", 1, 4, id="unterminated-string"),
    pytest.param("x = 'é\ud800'\n", 1, 6, id="lone-surrogate"),
    pytest.param("x = " + "(" * 300 + ")" * 300 + "\n", 1, 204, id="too-many-parentheses"),
])
def test_syntax_error_positions(source: str, line: int, col: int) -> None:
    with pytest.raises(CodeSyntaxError) as info:
        analyse_source(source)
    assert (info.value.line, info.value.col) == (line, col)
    assert info.value.message


@pytest.mark.parametrize("source", [
    pytest.param("-" * 100_000 + "1", id="parser-stack"),
    pytest.param("x = " + "+".join(["1"] * 100_000), id="deep-ast"),
    pytest.param("x = " + "[" * 150 + "]" * 150 + "\n" + "y = " + "f(" * 150 + ")" * 150,
                 id="nested-but-valid"),
])
def test_deep_input_never_crashes(source: str) -> None:
    try:
        analyse_source(source)
    except CodeSyntaxError as error:
        assert error.line == 1


def test_deeply_nested_statements() -> None:
    lines = [" " * i + "if x:" for i in range(90)] + [" " * 90 + "y = 1"]
    try:
        a = analyse_source("\n".join(lines))
    except CodeSyntaxError as error:
        assert "nested" in error.message or "indent" in error.message
    else:
        assert "y" in a.binds


def test_long_elif_chain_is_not_recursion_limited() -> None:
    source = "if a == 0:\n    y = 0\n" + "".join(
        f"elif a == {i}:\n    y = {i}\n" for i in range(1, 2000)) + "else:\n    y = -1\n"
    a = analyse_source(source)
    assert free(a) == {"a"} and a.partial_binds == frozenset()


def test_warnings_are_not_errors() -> None:
    # Invalid escapes warn while parsing; with warnings as errors this must still parse.
    assert analyse_source("p = '\\d+'\n").binds == {"p"}


def test_syntax_error_message_and_pickling() -> None:
    import pickle

    error = CodeSyntaxError("invalid syntax", 3, 4)
    assert str(error) == "invalid syntax (line 3, column 5)"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.line, copy.col) == ("invalid syntax", 3, 4)


# --- newer syntax -------------------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 12), reason="PEP 695 syntax")
def test_type_parameters_and_aliases() -> None:
    a = analyse("""
        type Pair[T] = tuple[T, Other]
        def first[T: Bound](xs: list[T]) -> T:
            return xs[0] + g
        class Box[T](Base[T]):
            item: T
    """)
    assert free(a) == {"Other", "Bound", "Base"}
    assert a.binds == {"Pair", "first", "Box"}
    assert a.functions["first"].globals_read == {"g"}


# --- deferred reads: code that reads globals when it runs ---------------------------------------


def callbacks(a: CodeAnalysis) -> set[str]:
    return {use.name for use in a.callback_free}


def steps(*sources: str) -> list[CodeAnalysis]:
    """Analyse sources as successive steps, passing functions and carried code on."""
    functions: dict[str, FunctionInfo] = {}
    held: dict[str, frozenset[str]] = {}
    found = []
    for source in sources:
        a = analyse_source(textwrap.dedent(source), functions, held)
        functions.update(a.functions)
        for name in a.binds - a.partial_binds:
            held.pop(name, None)
        for name, reads in a.code_held.items():
            held[name] = held.get(name, frozenset()) | reads
        found.append(a)
    return found


def test_a_call_reads_the_globals_of_an_earlier_cells_function_where_it_runs() -> None:
    _, call = steps("def show(v):\n    return Klass(v)\n",
                    "from fractions import Fraction as Klass\nr = show(3)\n")
    assert free(call) == {"show"}  # Klass is bound before the call
    _, call = steps("def show(v):\n    return Klass(v)\n", "r = show(3)\n")
    assert free(call) == {"show", "Klass"}
    assert call.deferred_via["Klass"] == ("show", 0)  # read in another cell's code


def test_a_named_lambda_reads_where_it_is_called_not_where_it_is_defined() -> None:
    define, bind, call = steps("f = lambda: scale * 2\n", "scale = 5\n", "r = f()\n")
    assert free(define) == set() and callbacks(define) == set()
    assert free(call) == {"f", "scale"}


def test_transitive_reads_go_through_earlier_cells_functions() -> None:
    _, _, call = steps("def g():\n    return k\n", "def f():\n    return g()\n", "r = f()\n")
    assert free(call) == {"f", "g", "k"}


def test_a_function_handed_on_reads_from_there_on_as_a_callback() -> None:
    _, call = steps("def key(v):\n    return w[v]\n", "ys = sorted(xs, key=key)\n")
    assert free(call) == {"key", "xs", "w"}  # run before sorted returns
    _, call = steps("def key(v):\n    return w[v]\n", "button.on_click(key)\n")
    assert free(call) == {"key", "button"} and callbacks(call) == {"w"}
    assert call.code_held == {"button": {"w"}}


def test_a_class_reads_its_methods_globals_where_it_is_used_but_not_surely() -> None:
    define, use = steps("class M:\n    def val(self):\n        return base + 1\n",
                        "m = M()\nr = m.val()\n")
    assert define.functions["M"].is_class and callbacks(define) == set()
    assert free(use) == {"M"} and callbacks(use) == {"base"}
    assert use.code_held["m"] == {"base"}  # the instance holds the methods


def test_values_holding_code_carry_its_reads_to_later_cells() -> None:
    define, _, use = steps(
        "handlers = {'double': lambda v: v * factor}\nhooks = []\n"
        "def note(v):\n    return v + shift\nhooks.append(note)\n",
        "factor = 3\nshift = 4\n",
        "r = handlers['double'](2) + hooks[0](1)\n")
    assert define.code_held == {"handlers": {"factor"}, "hooks": {"shift"}}
    assert callbacks(use) == {"factor", "shift"}


def test_a_rebinding_drops_what_a_name_carried() -> None:
    a = analyse("ops = [lambda: k]\nops = [1]\n")
    assert "ops" not in a.code_held
    assert callbacks(a) == {"k"}  # the lambda was handed to the list: it may run


def test_results_of_calls_that_do_not_keep_code_carry_nothing() -> None:
    a = analyse("ys = sorted(xs, key=lambda v: w[v])\nzs = list(map(lambda v: v + s, xs))\n"
                "p = functools.partial(lambda v, u: v + u + q, 1)\nt = Thread(target=lambda: z)\n")
    assert set(a.code_held) == {"p", "t"}
    assert a.code_held["p"] == {"q"} and a.code_held["t"] == {"z"}


def test_arithmetic_on_values_holding_code_gives_plain_values() -> None:
    _, use = steps("class A:\n    def v(self):\n        return g\na = A()\n",
                   "n = a.v() + 1\nb = a\n")
    assert "n" not in use.code_held and use.code_held["b"] == {"g"}


def test_a_closure_from_a_factory_reads_when_it_runs() -> None:
    define, _, use = steps(
        "def make(k):\n    def inner(x):\n        return x * k + shift\n    return inner\n"
        "times = make(3)\n",
        "shift = 7\n", "r = times(2)\n")
    assert define.functions["make"].later_reads == {"shift"}
    assert free(define) == set() and define.code_held["times"] == {"shift"}
    assert callbacks(use) == {"shift"}


def test_a_decorator_wrapper_reads_when_the_decorated_function_runs() -> None:
    define, _, use = steps(
        "def scaled(fn):\n    def wrapper(*args):\n        calls.append(1)\n"
        "        return fn(*args) * gain\n    return wrapper\n"
        "@scaled\ndef square(x):\n    return x * x\n",
        "gain = 2\ncalls = []\n", "r = square(3)\n")
    square = define.functions["square"]
    assert {"gain", "calls"} <= square.globals_read and square.later_reads == frozenset()
    assert "calls" in square.globals_written
    assert free(use) == {"square", "gain", "calls"}


def test_default_arguments_and_decorator_arguments_read_at_definition() -> None:
    a = analyse("@deco(opt)\ndef f(a=d):\n    return g\nh = lambda v=e: v + k\n")
    assert free(a) == {"deco", "opt", "d", "e"}
    assert callbacks(a) == set()


def test_function_info_knows_where_each_global_is_read() -> None:
    a = analyse("def f():\n    x = 1\n    return x + late\n")
    assert a.functions["f"].read_at == (("late", 3),)


def test_the_quick_filters_find_what_one_pattern_of_their_words_finds() -> None:
    """The IPython and hazard pre-checks are written for speed: they must say what the
    plain alternations of their words say."""
    import random
    import re

    from kale_py.analysis import _maybe_magic
    from kale_py.hazards import might_have_hazards

    magic = re.compile(r"^[ \t\f]*[%!?]|\?[ \t]*$|=[ \t]*[!%]", re.MULTILINE)
    hazard = re.compile(
        r"seed|random|environ|putenv|chdir|open\(|to_\w+\(|read_\w+\(|save|load|write"
        r"|set_|seterr|rcParams|rc\(|style|warn|basicConfig|disable|options|sample|split"
        r"|rand|shuffle|resample|normal|bernoulli|multinomial|setrecursionlimit|setlocale"
    )
    words = [*hazard.pattern.replace("\\", "").replace("w+", "x").split("|"), "se", "set",
             "rc", "to_", "read", "op", "wr", "ba", "é", "x", " ", "\n", "(", "_", "%", "!",
             "?", "=", "\t", "\f", "\r", "  %x", "= %", "? \n", "\n !"]
    rng = random.Random(7)
    for _ in range(20000):
        text = "".join(rng.choice(words) for _ in range(rng.randint(0, 10)))
        assert _maybe_magic(text) == bool(magic.search(text)), repr(text)
        assert might_have_hazards(text) == bool(hazard.search(text)), repr(text)
