"""Names a cell reads through strings: formulas and pandas expressions.

Some libraries evaluate a string in the caller's namespace. ``smf.ols("y ~ np.log(x)",
df)`` reads ``np`` when the model is built, ``df.query("x > @thr")`` reads ``thr``: names
the code does not show. :func:`call_reads` finds them for one call, so that the analysis
counts them as read at the call and the provider rule hands them to the step.

- Formulas (statsmodels' formula API, ``Model.from_formula``, ``patsy.dmatrix(es)``) are
  parsed with patsy's own parser, formulaic's (``model_matrix``, ``Formula``) with
  formulaic's. Each library is imported only when a formula call is seen, so a notebook
  without formulas never pays for it. The names their factors read, minus the formula
  language's own (``C``, ``I``, ``np`` in formulaic ...), are reads. A name that is called
  (``double_it(x)``, ``np.log(x)``) must come from the notebook: it is ``certain``. A name
  used as a value (``x``, ``power``) is usually a column of the data frame, which cannot be
  known here: it is provided when some step binds it, and is no error otherwise.
- pandas expressions: ``DataFrame.query``/``eval`` read the ``@name`` references (certain);
  ``pd.eval`` reads every name it does not bind itself.

A formula or expression built at run time (an f-string, a variable) cannot be read: a
:class:`StringNote` says so, as does a formula whose library is not installed here.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = ["StringNote", "StringRead", "call_reads", "expression_reads", "formula_reads"]


@dataclass(frozen=True)
class StringRead:
    """A name a string reads; ``certain``: an error if no step binds it (else maybe a column).

    ``line`` and ``col`` are those of the string in the source (1-based line)."""

    name: str
    line: int
    col: int
    certain: bool


@dataclass(frozen=True)
class StringNote:
    """A string whose reads cannot be known: ``call`` names the call, ``reason`` says why."""

    line: int
    col: int
    call: str
    reason: str


# statsmodels.formula.api's functions (all lowercase, taking the formula first).
_STATSMODELS = frozenset({
    "conditional_logit", "conditional_mnlogit", "conditional_poisson", "gee", "glm", "glmgam",
    "gls", "glsar", "logit", "mixedlm", "mnlogit", "negativebinomial", "nominal_gee", "ols",
    "ordinal_gee", "phreg", "poisson", "probit", "quantreg", "rlm", "wls",
})
_PATSY = frozenset({"dmatrix", "dmatrices", "incr_dbuilder", "incr_dbuilders"})
_FORMULAIC = frozenset({"model_matrix", "Formula"})
_PANDAS = frozenset({"query", "eval"})
# Every callee name this module looks at: the analysis's hot path tests this set only.
CALLEES = _STATSMODELS | _PATSY | _FORMULAIC | _PANDAS | {"from_formula"}
# Formula keywords besides the formula itself (mixedlm's random-effects formulas).
_EXTRA_FORMULAS = ("re_formula", "vc_formula")
# Functions pandas' expression engine provides itself.
_PANDAS_FUNCTIONS = frozenset({
    "sin", "cos", "tan", "exp", "log", "expm1", "log1p", "sqrt", "sinh", "cosh", "tanh",
    "arcsin", "arccos", "arctan", "arccosh", "arcsinh", "arctanh", "abs", "arctan2",
})
_BACKTICKS = re.compile(r"`[^`]*`")
_RUN_TIME = (
    "the {what} is built at run time, so the {names} it reads cannot be checked, and one this "
    "step does not define itself will be missing in the pipeline: write the {what} as a "
    "string literal in the call, or use those names in this step's code"
)


def call_reads(call: ast.Call) -> tuple[list[StringRead], list[StringNote]] | None:
    """The names a call reads through a string argument, or None for other calls."""
    func = call.func
    if isinstance(func, ast.Attribute):
        name, dotted = func.attr, _dotted(func)
    elif isinstance(func, ast.Name):
        name, dotted = func.id, [func.id]
    else:
        return None
    if name not in CALLEES or not (call.args or call.keywords):
        return None
    if name in _PANDAS:
        if not isinstance(func, ast.Attribute):
            return None
        return _pandas_call(call, name, dotted)
    return _formula_call(call, name, dotted)


# --- formulas -------------------------------------------------------------------------------


def _formula_call(
    call: ast.Call, name: str, dotted: list[str] | None
) -> tuple[list[StringRead], list[StringNote]] | None:
    engine = "formulaic" if name in _FORMULAIC else "patsy"
    keyword = "formula_like" if name in _PATSY else "spec" if name == "model_matrix" else "formula"
    first = _argument(call, keyword)
    if first is None:
        return None
    literal = _literal(first)
    # ``ols(...)`` or ``logit(...)`` imported bare could be anything: only a literal
    # formula (with its ``~``) tells. ``smf.ols``/``sm.formula.ols`` and the rest are sure.
    sure = name in _PATSY | {"model_matrix", "from_formula"} or (dotted is not None and (
        dotted[0] in ("smf", "formulaic") or "formula" in dotted[:-1]))
    if literal is None:
        if not sure or not _built_at_run_time(first, name):
            return None
        return [], [_note(first, call, _RUN_TIME.format(what="formula", names="names"))]
    if not sure and "~" not in literal:
        return None
    strings = [first] + [k.value for k in call.keywords if k.arg in _EXTRA_FORMULAS]
    reads: list[StringRead] = []
    notes: list[StringNote] = []
    for node in strings:
        for text_node in _formula_literals(node):
            text = _literal(text_node)
            assert text is not None
            found = _reads_with(text, engine, name not in _PATSY)
            if found is None:
                notes.append(_note(text_node, call, f"{engine} is not installed where nb2pipe "
                                   f"runs, so the names the formula reads cannot be checked "
                                   f"and are not passed to this step: pip install {engine}"))
                continue
            reads += [StringRead(n, text_node.lineno, text_node.col_offset, certain)
                      for n, certain in found]
    return reads, notes


def _reads_with(text: str, engine: str, either: bool) -> list[tuple[str, bool]] | None:
    """The formula's reads with its engine; None when it is not installed. ``either``:
    statsmodels works with formulaic too (SM_FORMULA_ENGINE), so it may stand in."""
    engines = [engine, "formulaic"] if either and engine == "patsy" else [engine]
    for candidate in engines:
        try:
            return formula_reads(text, candidate)
        except ImportError:
            continue
    return None


def _formula_literals(node: ast.expr) -> Iterator[ast.Constant]:
    """The string literals of a formula argument (``vc_formula`` is a dict of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, ast.Dict):
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield value


def formula_reads(formula: str, engine: str = "patsy") -> list[tuple[str, bool]]:
    """``(name, certain)`` for each notebook name a formula reads, in first-use order.

    Raises ImportError when the engine's library is not installed. A formula the library
    cannot parse reads nothing: the notebook fails on it the same way.
    """
    return list(_formula_reads(formula, engine))


@cache
def _formula_reads(formula: str, engine: str) -> tuple[tuple[str, bool], ...]:
    if engine == "formulaic":
        return _formulaic_reads(formula)
    return _patsy_reads(formula)


def _patsy_reads(formula: str) -> tuple[tuple[str, bool], ...]:
    from patsy import PatsyError, builtins  # type: ignore[import-untyped]
    from patsy.desc import ModelDesc  # type: ignore[import-untyped]

    try:
        desc = ModelDesc.from_formula(formula)
    except PatsyError:
        return ()
    own = frozenset(builtins.__all__)
    found: dict[str, bool] = {}
    for term in [*desc.lhs_termlist, *desc.rhs_termlist]:
        for factor in term.factors:
            code = getattr(factor, "code", None)
            if isinstance(code, str):
                for name, certain in python_reads(code):
                    if name not in own:
                        found[name] = found.get(name, False) or certain
    return tuple(found.items())


def _formulaic_reads(formula: str) -> tuple[tuple[str, bool], ...]:
    from formulaic import Formula  # type: ignore[import-untyped]
    from formulaic.errors import FormulaicError  # type: ignore[import-untyped]

    try:
        variables = Formula(formula).required_variables
    except (FormulaicError, SyntaxError, ValueError):
        return ()
    found = {}
    for variable in sorted(variables, key=str):
        name = str(variable)
        if name.isidentifier():
            found[name] = any(getattr(r, "value", r) == "callable" for r in variable.roles)
    return tuple(found.items())


def python_reads(code: str) -> list[tuple[str, bool]]:
    """The free names of a Python expression: ``(name, called)``; called names are certain."""
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
             and not isinstance(n.ctx, ast.Load)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Lambda):
            bound |= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
    called = {root for n in ast.walk(tree) if isinstance(n, ast.Call)
              for root in [_root(n.func)] if root is not None}
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
            found.setdefault(node.id, node.id in called)
    return list(found.items())


# --- pandas ---------------------------------------------------------------------------------


def _pandas_call(
    call: ast.Call, name: str, dotted: list[str] | None
) -> tuple[list[StringRead], list[StringNote]] | None:
    top_level = name == "eval" and dotted is not None and dotted[:-1] in (["pd"], ["pandas"])
    first = _argument(call, "expr")
    if first is None:
        return None
    literal = _literal(first)
    if literal is None:
        if not _built_at_run_time(first, name):
            return None
        return [], [_note(first, call, _RUN_TIME.format(what="expression", names="@names"))]
    given = {k.arg for k in call.keywords} & {"local_dict", "global_dict", "resolvers"}
    found = expression_reads(literal, top_level)
    if found is None:
        return None  # not a pandas expression (an SQL query, say)
    return [StringRead(n, first.lineno, first.col_offset, certain and not given)
            for n, certain in found], []


def expression_reads(text: str, top_level: bool = False) -> list[tuple[str, bool]] | None:
    """``(name, certain)`` read by a pandas expression; None if it is not one.

    ``top_level``: ``pd.eval``, where every free name comes from the caller; otherwise
    (``DataFrame.query``/``eval``) only ``@name`` references do, other names are columns.
    """
    source = _BACKTICKS.sub(" _kp_column ", text)
    at_names, plain = _at_references(source)
    if plain is None:
        return None
    try:
        tree = ast.parse(plain.strip())
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not all(isinstance(s, (ast.Expr, ast.Assign)) for s in tree.body):
        return None
    found = dict.fromkeys(at_names, True)
    if top_level:
        targets = {t.id for s in tree.body if isinstance(s, ast.Assign)
                   for t in s.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
                    and node.id not in targets | _PANDAS_FUNCTIONS and node.id != "_kp_column"):
                found.setdefault(node.id, True)
    return list(found.items())


def _at_references(source: str) -> tuple[list[str], str | None]:
    """The names after ``@`` and the source without the ``@`` signs (None: not Python)."""
    names: list[str] = []
    removed: list[tuple[int, int]] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return [], None
    for token, following in zip(tokens, tokens[1:], strict=False):
        if token.type == tokenize.OP and token.string == "@":
            if following.type != tokenize.NAME:
                return [], None
            names.append(following.string)
            removed.append(token.start)
    lines = source.splitlines(keepends=True)
    for row, col in reversed(removed):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + line[col + 1:]
    return list(dict.fromkeys(names)), "".join(lines)


# --- helpers --------------------------------------------------------------------------------


def _argument(call: ast.Call, keyword: str) -> ast.expr | None:
    for k in call.keywords:
        if k.arg == keyword:
            return k.value
    if call.args and not isinstance(call.args[0], ast.Starred):
        return call.args[0]
    return None


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _built_at_run_time(node: ast.expr, callee: str) -> bool:
    """Whether an argument is a string computed when the cell runs.

    An f-string, a concatenation or ``.format()`` always is. A plain variable is for
    statsmodels (its formula is a string), not for patsy or formulaic, which also take
    design objects (``dmatrix(design_info, new)``); for ``.query``/``.eval`` a CapWords
    name is a class (an ORM's ``session.query(User)``).
    """
    if isinstance(node, ast.JoinedStr):
        # f"x > {thr}" puts the value itself in a pandas expression: only "@" reads.
        return callee not in _PANDAS or any(
            isinstance(v, ast.Constant) and "@" in str(v.value) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return any(isinstance(side, (ast.Constant, ast.JoinedStr)) and not isinstance(
            getattr(side, "value", ""), (int, float)) for side in (node.left, node.right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("format", "join") and isinstance(node.func.value, ast.Constant)
    if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
        if callee in _PANDAS:
            root = _root(node)
            return root is not None and not root[:1].isupper()
        return callee in _STATSMODELS or callee == "from_formula"
    return False


def _note(node: ast.expr, call: ast.Call, reason: str) -> StringNote:
    return StringNote(node.lineno, node.col_offset, _callee_text(call), reason)


def _callee_text(call: ast.Call) -> str:
    parts = _dotted(call.func)
    if parts is not None:
        return ".".join(parts) + "(...)"
    func = call.func
    return f"...{func.attr}(...)" if isinstance(func, ast.Attribute) else "the call"


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _root(node: Any) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None
