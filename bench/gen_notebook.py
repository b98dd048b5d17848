"""Executable synthetic notebooks for analysis tests and benchmarks.

``generate_notebook(n_cells, seed)`` returns an nbformat-4 notebook dict with ``n_cells``
code cells (about 20 lines each) plus a markdown cell every 10 cells. The first code cell
is tagged ``imports``; every ``STEP_EVERY``-th code cell starts a step (``step:s0001``...).
Every cell reads variables, functions and classes defined by earlier cells (70 % from the
most recent definitions, 30 % from anywhere), through the Python constructs a scope
analysis must get right: defaults, closures, ``nonlocal``, ``global``, decorators,
loops with ``else``/``break``/``del``, comprehensions with walrus and lambdas, class
bodies, properties, static and class methods, ``try``/``except``/``else``/``finally``,
``with`` and ``contextlib.suppress``, ``match`` with guards, class, mapping and or
patterns, star-unpacking, f-strings, annotations and ``lru_cache`` recursion. Some
cells mutate earlier objects in place (directly, through a function, through an
argument). Every 50th code cell starts with ``%matplotlib inline``.

The code cells, with magic lines removed (``notebook_script``), run top to bottom with
plain Python and only the standard library, deterministically. Usage::

    python bench/gen_notebook.py N OUT.ipynb [--seed S] [--script OUT.py]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STEP_EVERY = 5
MARKDOWN_EVERY = 10
MAGIC_EVERY = 50

IMPORTS = """\
import contextlib
import functools
import math
from dataclasses import dataclass
"""

SEED = """\
g_counter = 0
base_0 = 3
seed_0 = 5
span_0 = 7
items_0 = [1, 2, 3]
items_1 = [4, 5]
table_0 = {"a": 1, "b": 2}


def ident_0(v):
    return (v + base_0) % 1000
"""


@dataclass
class _Pools:
    """Names defined so far, by what they hold, oldest first."""

    ints: list[str] = field(default_factory=lambda: ["base_0", "seed_0", "span_0"])
    lists: list[str] = field(default_factory=lambda: ["items_0", "items_1"])
    dicts: list[str] = field(default_factory=lambda: ["table_0"])
    funcs: list[str] = field(default_factory=lambda: ["ident_0"])
    objects: list[str] = field(default_factory=list)
    # functions that change the list passed to them, and functions that only read it
    mutators: list[str] = field(default_factory=list)
    readers: list[str] = field(default_factory=list)


class _Picker:
    def __init__(self, rng: random.Random, pools: _Pools) -> None:
        self.rng = rng
        self.pools = pools

    def pick(self, kind: str) -> str:
        names: list[str] = getattr(self.pools, kind)
        if self.rng.random() < 0.7:
            return self.rng.choice(names[-20:])
        return self.rng.choice(names)

    def ints(self, count: int) -> list[str]:
        return [self.pick("ints") for _ in range(count)]


def _functions(p: _Picker, n: int) -> str:
    i = p.ints(6)
    f = p.pick("funcs")
    p.pools.ints.append(f"r_{n}")
    p.pools.funcs += [f"f_{n}", f"c_{n}"]
    return f"""\
def deco_{n}(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) % 1000
    return wrapper


@deco_{n}
def f_{n}(x, y={i[0]} % 10):
    return x * y + {i[1]}


def make_counter_{n}(start={i[2]} % 10):
    count = start

    def inc(step=1):
        nonlocal count
        count += step
        return count
    return inc


def bump_{n}(k=1):
    global g_counter
    g_counter += k
    return g_counter + {i[3]}


c_{n} = make_counter_{n}()
c_{n}()
r_{n} = (f_{n}({i[4]} % 10) + bump_{n}() + c_{n}(2) + {f}({i[5]} % 10)) % 1000
"""


def _loops(p: _Picker, n: int) -> str:
    i = p.ints(4)
    items = p.pick("lists")
    kept, also_kept = p.ints(2)
    p.pools.ints += [f"acc_{n}", f"k_{n}", f"found_{n}", f"chk_{n}"]
    calls = ""
    if p.pools.mutators:
        calls += f"{p.pick('mutators')}({items}, {i[0]} % 3)\n"
    if p.pools.readers:
        calls += f"seen_{n} = {p.pick('readers')}({p.pick('lists')}, scale={i[1]} % 3)\n"
    return f"""\
acc_{n} = 0
for j in range(1 + {i[0]} % 3):
    acc_{n} += j * {i[1]}
    if acc_{n} > 10_000:
        break
else:
    acc_{n} = (acc_{n} + 1) % 1000
k_{n} = {i[2]} % 7
while True:
    k_{n} += 3
    if k_{n} > 20:
        break
found_{n} = -1
for v in {items}:
    if v > {i[3]} % 10:
        found_{n} = v
        break
tmp_{n} = (acc_{n} + k_{n}) % 1000
del tmp_{n}
del j
{items}.append(found_{n} % 10)
for v in {items}[:0]:
    {kept} = v
if len({items}) < 0:
    {also_kept} = 0
chk_{n} = ({kept} + {also_kept}) % 1000
{calls}"""


def _comprehensions(p: _Picker, n: int) -> str:
    i = p.ints(4)
    items, other, f = p.pick("lists"), p.pick("lists"), p.pick("funcs")
    p.pools.lists += [f"sq_{n}", f"mapped_{n}"]
    p.pools.ints += [f"tot_{n}", f"gen_{n}"]
    p.pools.funcs.append(f"fn_{n}")
    return f"""\
sq_{n} = [y * y % 1000 for x in {items} if (y := x + {i[0]}) > 0]
last_{n} = [tt_{n} := v for v in range(3)][-1]
pairs_{n} = {{k: (lambda z, k=k: z + k)(v) for k, v in enumerate({other})}}
fn_{n} = lambda a, b={i[1]} % 10: (a * b + {i[2]}) % 1000
mapped_{n} = list(map(lambda q: q + {i[3]}, sq_{n}))[:5]
evens_{n} = {{v for v in mapped_{n} if v % 2 == 0}}
tot_{n} = (sum(fn_{n}(v) for v in mapped_{n}) + tt_{n} + len(pairs_{n})) % 1000
gen_{n} = {f}(tot_{n} % 10)
print(last_{n}, len(evens_{n}))
"""


def _classes(p: _Picker, n: int) -> str:
    i = p.ints(6)
    shadow = p.pick("ints")
    p.pools.objects.append(f"obj_{n}")
    p.pools.ints.append(f"val_{n}")
    # The class body rebinds `shadow`, but its comprehension reads the global one.
    return f"""\
class Acc_{n}:
    {shadow} = 100
    scaled = [{shadow} * i for i in range(3)]
    factor = {i[0]} % 10

    def __init__(self, start={i[1]} % 10):
        self.value = start

    @property
    def doubled(self):
        return (self.value * 2 + {i[2]}) % 1000

    @staticmethod
    def helper(x):
        return x + {i[3]} % 10

    @classmethod
    def make(cls):
        return cls({i[4]} % 10)

    def add(self, k):
        self.value = (self.value + k) % 1000
        return self


obj_{n} = Acc_{n}.make().add({i[5]} % 10)
val_{n} = (obj_{n}.doubled + Acc_{n}.helper(1) + Acc_{n}.scaled[1]) % 1000
"""


def _exceptions(p: _Picker, n: int) -> str:
    i = p.ints(4)
    table = p.pick("dicts")
    kept = p.pick("ints")
    p.pools.ints.append(f"res_{n}")
    return f"""\
try:
    q_{n} = {i[0]} // ({i[1]} - {i[1]})
except ZeroDivisionError as err:
    msg_{n} = str(err)
else:
    msg_{n} = "ok"
finally:
    fin_{n} = ({i[2]} + 1) % 1000
try:
    w_{n} = {table}["missing_{n}"]
except KeyError:
    w_{n} = len({table})
with contextlib.suppress(KeyError):
    got_{n} = {table}["nope"]
    {kept} = got_{n}
try:
    {kept} = {table}["absent"]
except KeyError:
    pass
with contextlib.nullcontext({i[3]}) as ctx_{n}:
    u_{n} = ctx_{n} + 1
res_{n} = (fin_{n} + w_{n} + u_{n} + len(msg_{n}) + {kept}) % 1000
{table}["k_{n}"] = res_{n} % 10
"""


def _matching(p: _Picker, n: int) -> str:
    i = p.ints(5)
    p.pools.ints.append(f"m_{n}")
    return f"""\
@dataclass
class Pt_{n}:
    x: int
    y: int


pts_{n} = [Pt_{n}({i[0]} % 5, 0), Pt_{n}(0, {i[1]} % 5), Pt_{n}(3, 2), Pt_{n}(1, 4),
          ({i[2]}, [1, 2, 3]), {{"k": {i[3]}, "z": 1}}, 7]
out_{n} = []
for p in pts_{n}:
    match p:
        case Pt_{n}(x=0) | Pt_{n}(y=0):
            out_{n}.append(0)
        case Pt_{n}(x=px, y=py) if px > py + {i[4]} % 3:
            out_{n}.append(px - py)
        case Pt_{n}(px, py):
            out_{n}.append(py)
        case (int(a), [b, *rest]):
            out_{n}.append(a + b + len(rest))
        case {{"k": kv, **others}}:
            out_{n}.append(kv + len(others))
        case _:
            out_{n}.append(-1)
m_{n} = sum(out_{n}) % 1000
"""


def _miscellany(p: _Picker, n: int) -> str:
    i = p.ints(6)
    p.pools.ints += [f"total_{n}", f"first_{n}"]
    p.pools.funcs.append(f"fib_{n}")
    return f"""\
first_{n}, *middle_{n}, last_{n} = [{i[0]} % 100, {i[1]} % 100, 3, 4]


@functools.lru_cache(maxsize=None)
def fib_{n}(k: int) -> int:
    k = k % 25
    return k if k < 2 else (fib_{n}(k - 1) + fib_{n}(k - 2)) % 1000


label_{n}: str = f"{{first_{n}}}-{{len(middle_{n})}}-{{last_{n}!r:>5}}"
total_{n}: int = (fib_{n}({i[2]} % 20) + sum(middle_{n}) + len(label_{n})) % 1000
note_{n}: int
key_{n} = sorted([{i[3]}, {i[4]}, 3], key=lambda v: (v - {i[5]}) ** 2)
root_{n} = math.isqrt(total_{n})
"""


def _mutations(p: _Picker, n: int) -> str:
    i = p.ints(3)
    items, other, table, f = p.pick("lists"), p.pick("lists"), p.pick("dicts"), p.pick("funcs")
    p.pools.ints.append(f"n_{n}")
    p.pools.funcs.append(f"push_{n}")
    p.pools.mutators.append(f"grow_{n}")
    p.pools.readers.append(f"summary_{n}")
    obj = f"{p.pick('objects')}.add(1)\n" if p.pools.objects else ""
    return f"""\
def push_{n}(v):
    {items}.append(v % 10)
    return len({items}) % 1000


def grow_{n}(seq, extra={i[0]} % 5):
    tail = seq
    tail.extend([extra])
    return len(seq)


def summary_{n}(seq, *, scale=1):
    return (sum(seq[-5:]) * scale + len(seq)) % 1000


grow_{n}({other})
n_{n} = (push_{n}({i[1]}) + {f}({i[2]} % 10)) % 1000
{table}.update({{"u_{n}": n_{n} % 10}})
{obj}"""


_TEMPLATES: list[Callable[[_Picker, int], str]] = [
    _functions, _loops, _comprehensions, _classes, _exceptions, _matching, _miscellany,
    _mutations,
]


def _code_cell(source: str, tags: list[str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"tags": tags} if tags else {}
    return {"cell_type": "code", "execution_count": None, "metadata": metadata,
            "outputs": [], "source": source.splitlines(keepends=True)}


def _markdown_cell(text: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}


def generate_notebook(n_cells: int, seed: int = 0) -> dict[str, Any]:
    """An executable nbformat-4 notebook with ``n_cells`` code cells (at least 2)."""
    rng = random.Random(seed)
    picker = _Picker(rng, _Pools())
    cells = [_code_cell(IMPORTS, ["imports"]), _code_cell(SEED, ["step:s0000"])]
    for n in range(2, max(n_cells, 2)):
        if n % MARKDOWN_EVERY == 0:
            cells.append(_markdown_cell(f"## Part {n // MARKDOWN_EVERY}\n\nMore of the same."))
        source = rng.choice(_TEMPLATES)(picker, n)
        if n % MAGIC_EVERY == 0:
            source = "%matplotlib inline\n" + source
        tags = [f"step:s{n // STEP_EVERY:04d}"] if n % STEP_EVERY == 0 else []
        cells.append(_code_cell(source, tags))
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def code_cells(notebook: dict[str, Any]) -> list[str]:
    """The sources of the code cells, in order."""
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def notebook_script(notebook: dict[str, Any]) -> str:
    """The code cells as one plain Python script (magic lines commented out)."""
    lines = []
    for source in code_cells(notebook):
        for line in source.splitlines():
            lines.append("# " + line if line.startswith("%") else line)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n_cells", type=int)
    parser.add_argument("output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--script", help="also write the code as a plain Python script")
    args = parser.parse_args(argv)
    notebook = generate_notebook(args.n_cells, args.seed)
    with open(args.output, "w", encoding="utf-8") as out:
        json.dump(notebook, out, indent=1)
        out.write("\n")
    if args.script:
        with open(args.script, "w", encoding="utf-8") as out:
            out.write(notebook_script(notebook))


if __name__ == "__main__":
    main()
