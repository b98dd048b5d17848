"""May-share groups: which top-level names may hold the same objects.

``clf_list = [(lr, "lr")]`` makes ``clf_list`` hold ``lr``'s object; a later
``for clf, _ in clf_list: clf.fit(X, y)`` changes ``lr`` through another name. The
graph builder follows such groups across steps: a step that may change an object
through one name of a group provides every name of it, and names of one group travel
in one file so that they arrive still sharing their objects.

:func:`module_shares` reads one source's module-level statements (function and class
bodies run elsewhere) and returns the sets of names that may share objects after it
ran. Like the rest of the analysis it errs toward "may share" where it cannot know (a
call to an unknown function may return something holding its arguments), with the
exceptions that keep ordinary data science code precise: results of well-known pure
functions and methods are new objects, fancy indexing and boolean masks copy.

:class:`ShareGroups` is the notebook-wide state the graph builder updates step by step:
binding a name to a new object takes it out of its group, sharing merges groups.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from .analysis import (
    _ARGUMENT_SAFE_METHODS,
    _MODULE_ALIASES,
    _PASS_THROUGH,
    _PURE_FUNCTIONS,
    _PURE_METHODS,
    _dotted,
    _is_pure_call,
    _is_transparent,
    _parameter_list,
    _root_name,
)

__all__ = ["Returns", "ShareGroups", "function_returns", "module_shares"]

INCOMING = "^"  # marks a name's value from before the source ran, in a group

# A function's parameters (as analysis._parameter_list gives them) and those whose
# objects its result may hold.
Returns = tuple[tuple[str, ...], frozenset[str]]
_KNOWN: ContextVar[Mapping[str, Returns] | None] = ContextVar("known_functions", default=None)

# Methods (and numpy functions) whose result is, or may be, a view of the receiver or of
# the argument, or one of its elements: ``arr.reshape(...)``, ``d.get(k)``, ``d.values()``.
_VIEW_METHODS = frozenset({
    "reshape", "ravel", "view", "transpose", "squeeze", "swapaxes", "get", "values", "items",
    "keys", "to_numpy", "__iter__", "__getitem__", "pop", "popitem", "setdefault",
    "iterrows", "itertuples", "T", "real", "imag", "diagonal", "expand_dims", "asarray",
    "asanyarray", "atleast_1d", "atleast_2d", "atleast_3d", "moveaxis", "broadcast_to",
})
# Methods that return their receiver (``model = model.fit(X, y)``) or objects it keeps
# (``line, = ax.plot(...)``): the result shares the receiver, not the arguments.
_SELF_METHODS = (_ARGUMENT_SAFE_METHODS | {"set_params", "set_output"}) - {
    "fit_transform", "fit_predict", "append", "extend", "insert", "update", "write",
    "writelines", "put", "savefig"}
# Methods that store their arguments in the receiver: the receiver then holds them.
_STORING_METHODS = frozenset({
    "append", "extend", "insert", "add", "update", "setdefault", "put", "appendleft",
    "extendleft", "__setitem__", "set_params", "add_artist", "add_patch", "add_line",
    "add_collection", "add_subplot", "add_axes", "register", "attach",
})
# Functions that read a file into a new object (besides ``read_*``).
_READERS = frozenset({"load", "loadtxt", "genfromtxt", "fromfile", "imread", "open_dataset"})
# Attributes that describe an object rather than hold its contents (``X.shape[0]``).
_DESCRIPTIVE = frozenset({"shape", "size", "ndim", "dtype", "dtypes", "nbytes", "itemsize",
                          "name", "__name__", "__class__", "__doc__"})
# ``.append(`` and the like (a pattern starting with a fixed character is searched fast).
_STORING_TEXT = re.compile(r"\.(?:" + "|".join(sorted(_STORING_METHODS)) + r")\b")


def _storing_lines(source: str | None) -> set[int] | None:
    """The line numbers where a storing call may be (None when the source is unknown)."""
    if source is None:
        return None
    starts = [match.start() for match in _STORING_TEXT.finditer(source)]
    if "setattr" in source:
        found = source.find("setattr")
        while found >= 0:
            starts.append(found)
            found = source.find("setattr", found + 1)
        starts.sort()
    lines: set[int] = set()
    line, position = 1, 0
    for start in starts:  # neither text spans a line end
        line += source.count("\n", position, start)
        position = start
        lines.add(line)
    return lines


# Builtins returning one of their positional arguments or an element of it.
_ELEMENT_OF = frozenset({"max", "min", "next", "iter", "getattr", "vars"})
# Builtins whose result never holds their arguments' objects (``len``, ``str``, ...).
_NEW_OBJECT_BUILTINS = _PURE_FUNCTIONS - _PASS_THROUGH - {"iter", "next", "getattr", "vars",
                                                          "max", "min", "open"}


def module_shares(tree: ast.Module, known: Mapping[str, Returns] | None = None,
                  source: str | None = None, own: Mapping[str, Returns] | None = None
                  ) -> tuple[tuple[frozenset[str], ...], frozenset[str]]:
    """Sets of module-level names that may share objects after ``tree`` ran, and the
    names rebound by a statement at the top of the module (``x = ...``, ``for x in``).

    A group may hold ``INCOMING + name``: the value the name had when the source started
    (``c = b; b = []`` leaves c sharing the earlier b).

    A rebinding at the top ends what the name shared before (also for a loop variable,
    although a loop that runs zero times would leave the old value: the one place where
    the groups are not an over-approximation, so that a reused loop variable does not
    join every list it ever iterated into one group).

    ``known``: functions defined earlier (:func:`function_returns`); a call to one of
    them shares only the arguments its result may hold. ``source``: the text parsed, if
    at hand (it lets statements without a storing call skip looking for one). ``own``:
    :func:`function_returns` of ``tree`` when the caller has it already.
    """
    found: list[set[str]] = []
    in_found: set[str] = set()  # the names of the groups in found
    rebound: set[str] = set()
    storing = _storing_lines(source)
    if own is None:
        own = function_returns(tree, source)
    context = _KNOWN.set({**(known or {}), **own})
    try:
        for statement, top in _module_statements(tree.body):
            fresh: set[str] = set()
            try:
                kind = type(statement)
                if kind not in _BINDING:  # groups from storing calls only, nothing rebound
                    if storing is None or (storing and not storing.isdisjoint(
                            range(statement.lineno,
                                  (statement.end_lineno or statement.lineno) + 1))):
                        groups = [g for g in map(_storing_call, _calls_in(statement))
                                  if len(g) > 1]
                        for group in groups:
                            in_found |= group
                        found += groups
                    continue
                if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                        and isinstance(target := statement.targets[0], ast.Name)):
                    # ``name = value``, the most frequent statement, as the general case below
                    value_shares = may_share(statement.value)
                    group = {target.id, *value_shares}
                    groups = [group] if len(group) > 1 else []
                    if storing is None or (storing and not storing.isdisjoint(
                            range(statement.lineno,
                                  (statement.end_lineno or statement.lineno) + 1))):
                        groups += [g for g in map(_storing_call, _calls_in(statement))
                                   if len(g) > 1]
                    if top and target.id not in value_shares:
                        fresh = {target.id}
                else:
                    # The names the value may share, worked out once for both uses below.
                    value = _assigned_value(statement) if top else None
                    shared = None if value is None else may_share(value)
                    groups = [g for g in _statement_shares(statement, storing, shared)
                              if len(g) > 1]
                    if top:
                        bound = set(_bound_names(statement))
                        if bound:
                            # ``a = a[0]``, ``a = [a]``: the new value holds what a held
                            fresh = bound - (_value_names(statement) if shared is None
                                             else shared)
            except RecursionError:  # a very long method chain: every name in it may share
                groups = [{n.id for n in ast.walk(statement) if isinstance(n, ast.Name)}]
            if fresh:
                # What shared with the value a name had when the source started still
                # does: that value is named INCOMING + name from here on.
                if not fresh.isdisjoint(in_found):  # (else no group is touched)
                    incoming = {INCOMING + n for n in fresh - rebound}
                    touched = [g for g in found if not g.isdisjoint(fresh)]
                    found = [g for g in found if g.isdisjoint(fresh)]
                    union = _union(touched)
                    joined = union - fresh | {INCOMING + n for n in union & fresh} & incoming
                    if joined:  # (an empty group is left out: it would never count)
                        found.append(joined)
                    in_found = _union(found)
                rebound |= fresh
            for group in groups:
                in_found |= group
            found += groups
    finally:
        _KNOWN.reset(context)
    return tuple(frozenset(g) for g in found if len(g) > 1), frozenset(rebound)


# The statements that may bind names or share objects other than by a storing call.
_BINDING = frozenset({ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor,
                      ast.With, ast.AsyncWith})


def _assigned_value(statement: ast.stmt) -> ast.expr | None:
    """The value of an assignment or the iterable of a ``for`` (None for other statements)."""
    if isinstance(statement, (ast.Assign, ast.AnnAssign)):
        return statement.value
    if isinstance(statement, (ast.For, ast.AsyncFor)):
        return statement.iter
    return None


def _value_names(statement: ast.stmt) -> set[str]:
    value = getattr(statement, "value", None) or getattr(statement, "iter", None)
    if isinstance(value, ast.expr):
        return may_share(value)
    if isinstance(statement, (ast.With, ast.AsyncWith)):
        return _union(may_share(i.context_expr) for i in statement.items)
    return set()


def _bound_names(statement: ast.stmt) -> Iterator[str]:
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AnnAssign, ast.For, ast.AsyncFor)):
        targets = [statement.target] if getattr(statement, "value", True) is not None else []
    elif isinstance(statement, (ast.With, ast.AsyncWith)):
        targets = [i.optional_vars for i in statement.items if i.optional_vars is not None]
    else:
        return
    for target in targets:
        if isinstance(target, (ast.Name, ast.Tuple, ast.List, ast.Starred)):
            yield from _target_roots(target)


def function_returns(tree: ast.Module, source: str | None = None) -> dict[str, Returns]:
    """For each module-level ``def``: the parameters whose objects its result may hold.

    Decorated functions (other than caches and ``wraps``) are left out: the wrapper may
    return anything.
    """
    found: dict[str, Returns] = {}
    storing = _storing_lines(source)
    generators = source is None or "yield" in source
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if not all(_is_transparent(d) for d in node.decorator_list):
            found.pop(node.name, None)
            continue
        parameters = _parameter_list(node.args)
        plain = {p.lstrip("*") for p in parameters if p != "*"}
        try:
            held = _returned_names(node, storing, generators) if plain else set()
        except RecursionError:
            held = set(plain)
        found[node.name] = (parameters, frozenset(held & plain))
    return found


def _returned_names(function: ast.FunctionDef | ast.AsyncFunctionDef,
                    storing: set[int] | None, generators: bool) -> set[str]:
    """Names the function's result may hold: returned ones and what they were built from."""
    everything = {a.lstrip("*") for a in _parameter_list(function.args)}
    if generators and any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(function)):
        return everything  # a generator holds its frame
    returned: set[str] = set()
    statements: list[ast.stmt] = []
    definitions: list[str] = []
    pending: list[ast.stmt] = list(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            definitions.append(node.name)
            continue
        if isinstance(node, ast.Return) and node.value is not None:
            returned |= may_share(node.value)
        statements.append(node)
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                pending += block
        for handler in getattr(node, "handlers", ()):
            pending += handler.body
        for case in getattr(node, "cases", ()):
            pending += case.body
    if not returned:  # (what the function's names share no longer matters)
        return returned
    local: dict[str, set[str]] = {}
    for name in definitions:  # a closure or class made here may hold any parameter
        local.setdefault(name, set()).update(everything)
    for node in statements:
        for group in _statement_shares(node, storing):
            for name in group:
                local.setdefault(name, set()).update(group)
    result: set[str] = set()
    todo = list(returned)
    while todo:
        name = todo.pop()
        if name not in result:
            result.add(name)
            todo += local.get(name, ())
    return result


# The statements that hold other statements (besides definitions).
_COMPOUND = frozenset(getattr(ast, name) for name in (
    "If", "For", "AsyncFor", "While", "With", "AsyncWith", "Try", "TryStar", "Match")
    if hasattr(ast, name))


def _module_statements(body: list[ast.stmt]) -> list[tuple[ast.stmt, bool]]:
    """Statements that run at module level, nested blocks included, bodies of defs not;
    with whether the statement is at the top (not inside another statement).

    Iterative: a long ``elif`` chain nests as deep as it is long.
    """
    found: list[tuple[ast.stmt, bool]] = []
    pending = [(statement, True) for statement in reversed(body)]
    while pending:
        statement, top = pending.pop()
        kind = type(statement)
        if kind in _DEFINITIONS:
            continue
        found.append((statement, top))
        if kind not in _COMPOUND:
            continue
        nested: list[ast.stmt] = []
        for field in ("body", "orelse", "finalbody"):
            block = getattr(statement, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                nested += block
        for handler in getattr(statement, "handlers", ()):
            nested += handler.body
        for case in getattr(statement, "cases", ()):
            nested += case.body
        pending += [(inner, False) for inner in reversed(nested)]
    return found


_DEFINITIONS = frozenset({ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef})


def _statement_shares(node: ast.stmt, storing: set[int] | None = None,
                      shared: set[str] | None = None) -> list[set[str]]:
    """``storing``: the lines that may hold a storing call (None: any line may).
    ``shared``: ``may_share`` of the assigned value or iterable, when known already."""
    found: list[set[str]] = []
    if isinstance(node, ast.Assign):
        _assignment_shares(node.targets, node.value, found, shared)
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        _assignment_shares([node.target], node.value, found, shared)
    elif isinstance(node, ast.AugAssign) and isinstance(node.value, (ast.List, ast.Tuple)):
        found.append({*_target_roots(node.target), *may_share(node.value)})
    elif isinstance(node, (ast.For, ast.AsyncFor)):
        _assignment_shares([node.target], node.iter, found, shared)
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        for item in node.items:
            if item.optional_vars is not None:
                _assignment_shares([item.optional_vars], item.context_expr, found)
    if storing is None or (storing and not storing.isdisjoint(
            range(node.lineno, (node.end_lineno or node.lineno) + 1))):
        for call in _calls_in(node):  # ``models.append(m)``, anywhere in the statement
            found.append(_storing_call(call))
    return found


def _calls_in(statement: ast.stmt) -> list[ast.Call]:
    """The calls in a statement's own expressions (nested blocks are statements too), each
    expression's breadth first (as ``ast.walk`` visits them)."""
    calls: list[ast.Call] = []
    for _, value in ast.iter_fields(statement):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, ast.expr):
                queue: list[ast.AST] = [item]
            elif isinstance(item, ast.withitem):
                queue = [item.context_expr]
            else:
                continue
            for node in queue:  # (the queue grows as it is walked)
                kind = type(node)
                if kind is ast.Name or kind is ast.Constant:
                    continue  # (no expressions below)
                if isinstance(node, ast.Call):
                    calls.append(node)
                for field in node._fields:
                    child = getattr(node, field, None)
                    if isinstance(child, ast.AST):
                        queue.append(child)
                    elif isinstance(child, list):
                        queue += [c for c in child if isinstance(c, ast.AST)]
    return calls


def _assignment_shares(targets: list[ast.expr], value: ast.expr, found: list[set[str]],
                       shared: set[str] | None = None) -> None:
    """Appends to ``found`` the names an assignment of ``value`` to ``targets`` may join."""
    if shared is None:
        shared = may_share(value)
    names = [t.id for t in targets if isinstance(t, ast.Name)]
    # ``a = b = []``: every plain target holds the value itself.
    found.append({*names, *shared})
    for target in targets:
        if isinstance(target, (ast.Tuple, ast.List)):
            elements = [set(_target_roots(e)) for e in target.elts]
            if shared:
                for element in elements:
                    found.append(element | shared)
            elif isinstance(value, ast.Call) and not _returns_new(value):
                # ``fig, ax = plt.subplots()``: the parts of one unknown result may share.
                found.append(set().union(*elements))
        elif not isinstance(target, ast.Name):
            found.append({*_target_roots(target), *shared})  # ``obj.attr = x``, ``d[k] = x``


def _target_roots(node: ast.expr) -> Iterator[str]:
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            yield from _target_roots(element)
    elif isinstance(node, ast.Starred):
        yield from _target_roots(node.value)
    elif isinstance(node, (ast.Attribute, ast.Subscript)):
        root = _root_name(node)
        if root is not None:
            yield root


def _storing_call(call: ast.Call) -> set[str]:
    """``models.append(m)``, ``setattr(obj, "m", m)``: the receiver now holds the arguments."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in _STORING_METHODS:
        root = _root_name(func.value)
        if root is not None and root not in _MODULE_ALIASES:
            return {root, *_arguments_share(call)}
    if isinstance(func, ast.Name) and func.id == "setattr" and len(call.args) == 3:
        return {*may_share(call.args[0]), *may_share(call.args[2])}
    return set()


def _arguments_share(call: ast.Call) -> set[str]:
    names: set[str] = set()
    for arg in call.args:
        names |= may_share(arg)
    for keyword in call.keywords:
        names |= may_share(keyword.value)
    return names


def _returns_new(call: ast.Call) -> bool:
    """Whether a call is known to return new objects that hold nothing of its inputs."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in _NEW_OBJECT_BUILTINS
    if isinstance(func, ast.Attribute) and func.attr in _VIEW_METHODS:
        return False
    if isinstance(func, ast.Attribute) and (func.attr.startswith("read_") or func.attr in _READERS):
        return True  # ``pd.read_csv(path)``: a new object from a file
    return _is_pure_call(func) or (
        isinstance(func, ast.Attribute) and func.attr in _PURE_METHODS)


def may_share(node: ast.expr) -> set[str]:
    """Variables whose objects the value of ``node`` may be, hold or be held by."""
    kind = type(node)
    if kind is ast.Name:
        return {node.id}  # type: ignore[attr-defined]
    rule = _MAY_SHARE.get(kind)
    return set() if rule is None else rule(node)


def _elements_share(node: ast.List | ast.Tuple | ast.Set) -> set[str]:
    return _union(may_share(e) for e in node.elts)


def _binop_shares(node: ast.BinOp) -> set[str]:
    if isinstance(node.op, (ast.Add, ast.Mult)):
        sequences = (ast.List, ast.Tuple, ast.ListComp)
        if isinstance(node.left, sequences) or isinstance(node.right, sequences):
            return may_share(node.left) | may_share(node.right)
    return set()




def _comprehension_shares(node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp
                          ) -> set[str]:
    """``[m for m in models]`` holds what ``models`` holds; ``[x * 2 for x in xs]`` not."""
    element = may_share(node.value if isinstance(node, ast.DictComp) else node.elt)
    result: set[str] = set()
    for generator in node.generators:
        targets = set(_target_roots(generator.target))
        if element & targets:
            result |= may_share(generator.iter)
        element -= targets
    return result | element


def _copies(index: ast.expr) -> bool:
    """Fancy indexing and boolean masks return copies (numpy and pandas alike)."""
    return isinstance(index, (ast.List, ast.Compare, ast.ListComp)) or (
        isinstance(index, (ast.BoolOp, ast.BinOp, ast.UnaryOp))
        and any(isinstance(n, ast.Compare) for n in ast.walk(index)))


def _call_shares(call: ast.Call) -> set[str]:
    func = call.func
    if isinstance(func, ast.Name):
        known = (_KNOWN.get() or {}).get(func.id)
        if known is not None:
            return _held_arguments(call, *known)
        if func.id in _PASS_THROUGH:
            return _arguments_share(call)
        if func.id in _ELEMENT_OF:  # ``max(models, key=score)`` is one of the models
            return _union(may_share(arg) for arg in call.args)
        if func.id in _NEW_OBJECT_BUILTINS:
            return set()
        return _arguments_share(call)  # unknown: may return something holding them
    if not isinstance(func, ast.Attribute):
        return may_share(func) | _arguments_share(call)
    parts = _dotted(func)
    module_call = parts is not None and parts[0] in _MODULE_ALIASES
    if func.attr in _VIEW_METHODS:
        return _arguments_share(call) if module_call else may_share(func.value)
    if _returns_new(call):
        return set()
    if module_call:
        return _arguments_share(call)  # ``make_pipeline(scaler, clf)``
    if func.attr in _SELF_METHODS:
        return may_share(func.value)
    return may_share(func.value) | _arguments_share(call)


def _held_arguments(call: ast.Call, parameters: tuple[str, ...], held: frozenset[str]
                    ) -> set[str]:
    """The arguments of a call to a known function whose objects its result may hold."""
    if not held:
        return set()
    star = next((i for i, p in enumerate(parameters) if p.startswith("*")), len(parameters))
    catch_all = parameters[star].lstrip("*") if star < len(parameters) else ""
    keywords = next((p[2:] for p in parameters if p.startswith("**")), "")
    names: set[str] = set()
    for index, arg in enumerate(call.args):
        parameter = parameters[index] if index < star else catch_all
        if isinstance(arg, ast.Starred) or parameter in held:
            names |= may_share(arg)
    for keyword in call.keywords:
        parameter = keyword.arg if keyword.arg in parameters else keywords
        if keyword.arg is None or parameter in held:
            names |= may_share(keyword.value)
    return names


def _union(sets: Iterable[set[str]]) -> set[str]:
    result: set[str] = set()
    for names in sets:
        result |= names
    return result


# may_share's rule for each kind of expression (any other kind holds no variable's object)
_MAY_SHARE: dict[type[ast.AST], Callable[[Any], set[str]]] = {
    ast.Subscript: lambda node: set() if _copies(node.slice) else may_share(node.value),
    ast.Attribute: lambda node: set() if node.attr in _DESCRIPTIVE else may_share(node.value),
    ast.Starred: lambda node: may_share(node.value),
    ast.Await: lambda node: may_share(node.value),
    ast.List: _elements_share,
    ast.Tuple: _elements_share,
    ast.Set: _elements_share,
    ast.Dict: lambda node: _union(may_share(v) for v in node.values),
    ast.Call: _call_shares,
    ast.IfExp: lambda node: may_share(node.body) | may_share(node.orelse),
    ast.BoolOp: lambda node: _union(may_share(v) for v in node.values),
    ast.NamedExpr: lambda node: {node.target.id, *may_share(node.value)},
    ast.ListComp: _comprehension_shares,
    ast.SetComp: _comprehension_shares,
    ast.GeneratorExp: _comprehension_shares,
    ast.DictComp: _comprehension_shares,
    ast.BinOp: _binop_shares,
}


class ShareGroups:
    """The notebook's may-share groups as the steps run, in notebook order.

    Each group has a number (a token): two names with the same token at a point of the
    notebook were in one group then. A group keeps its token as it grows; merging moves
    the smaller groups' names into the largest (so merging stays cheap on big notebooks).
    """

    def __init__(self) -> None:
        self._token: dict[str, int] = {}
        self._sets: dict[int, set[str]] = {}
        self._next = 0
        self.clock = 0  # the number of updates so far
        self._history: dict[str, list[tuple[int, int | None]]] = {}  # (clock, token)

    def token(self, name: str) -> int | None:
        """``name``'s group number, or None when it shares with nothing."""
        return self._token.get(name)

    def token_at(self, name: str, clock: int) -> int | None:
        """``name``'s group number when ``clock`` updates had been made."""
        history = self._history.get(name)
        if history is None:
            return None
        for when, token in reversed(history):  # (in the order of the updates)
            if when <= clock:
                return token
        return None

    def tokens(self, names: Iterable[str]) -> dict[str, int]:
        """The group numbers of those of ``names`` that share with something, in order."""
        token = self._token.get
        return {name: found for name in names if (found := token(name)) is not None}

    def _members(self, name: str) -> set[str] | None:
        token = self._token.get(name)
        return None if token is None else self._sets[token]

    def _set(self, name: str, token: int | None) -> None:
        self._history.setdefault(name, []).append((self.clock + 1, token))
        if token is None:
            self._token.pop(name, None)
        else:
            self._token[name] = token

    def _set_all(self, names: Iterable[str], token: int) -> None:
        """``_set`` for each of ``names``."""
        when = (self.clock + 1, token)
        history = self._history
        for name in names:
            found = history.get(name)
            if found is None:
                history[name] = [when]
            else:
                found.append(when)
        self._token.update(dict.fromkeys(names, token))

    def closure(self, names: Iterable[str], shares: Iterable[frozenset[str]]) -> set[str]:
        """The names that may share with ``names``, counting ``shares`` too (not recorded).

        The result may hold ``INCOMING`` names (see :func:`module_shares`); ignore them.
        """
        extra: dict[str, list[frozenset[str]]] = {}
        for group in shares:
            for name in group:
                extra.setdefault(name, []).append(group)
        result: set[str] = set()
        seen: set[int] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name in result:
                continue
            result.add(name)
            reached = [name] if name.startswith(INCOMING) else [name, INCOMING + name]
            token = self._token.get(name[1:] if name.startswith(INCOMING) else name)
            if token is not None and token not in seen:
                seen.add(token)
                members = self._sets[token]
                if extra:  # the shares of the members are followed as well
                    reached += [key for key in extra
                                if (key[1:] if key.startswith(INCOMING) else key) in members]
                result |= members
            for found in reached:
                for more in extra.get(found, ()):
                    if id(more) not in seen:
                        seen.add(id(more))
                        pending += more
        return result

    def update(self, rebound: Iterable[str], shares: Iterable[frozenset[str]]) -> None:
        """A step ran: ``rebound`` names hold new objects, and ``shares`` were made (where
        ``INCOMING + name`` is what shared with the name before it was rebound)."""
        token_of = self._token
        before: dict[str, set[str]] = {}
        for group in shares:
            for incoming in group:
                if incoming.startswith(INCOMING):
                    name = incoming[1:]
                    token = token_of.get(name)
                    before[name] = set() if token is None else self._sets[token] - {name}
        for name in rebound:
            token = token_of.get(name)
            if token is None:
                continue
            members = self._sets[token]
            members.discard(name)
            self._set(name, None)
            if len(members) == 1:
                self._set(members.pop(), None)
            if not members:
                del self._sets[token]
        for names in shares:
            tokens: set[int] = set()
            alone: set[str] = set()
            for name in names:
                if name.startswith(INCOMING):
                    # what shared with the name before: the names of one group, mostly
                    members = before.get(name[1:], set())
                    grouped = token_of.keys() & members
                    tokens.update(map(token_of.__getitem__, grouped))
                    alone |= members - grouped
                elif name in token_of:
                    tokens.add(token_of[name])
                else:
                    alone.add(name)
            if len(tokens) + len(alone) < 2 and not (tokens and alone):
                continue
            if tokens:
                base = max(tokens, key=lambda t: len(self._sets[t]))
            else:
                self._next += 1
                base = self._next
                self._sets[base] = set()
            target = self._sets[base]
            for token in tokens - {base}:
                moved = self._sets.pop(token)
                target |= moved
                self._set_all(moved, base)
            target |= alone
            self._set_all(alone, base)
        self.clock += 1
