"""Pipeline parameters and metrics cells.

A ``pipeline-parameters`` cell holds simple assignments of literal values; each becomes a
typed pipeline parameter. A ``pipeline-metrics`` cell names the values the pipeline
reports: ``print(acc)``, ``print("accuracy:", acc)`` or a bare ``acc``.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .diagnostics import Diagnostic, error
from .notebook import Cell

PARAMETER_TYPES = ("int", "float", "str", "bool", "list", "dict", "none")


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # one of PARAMETER_TYPES
    default: Any
    cell: int
    line: int


@dataclass(frozen=True)
class Metric:
    name: str  # the name reported to the pipeline
    variable: str
    cell: int
    line: int


def type_of(value: Any) -> str | None:
    """The parameter type of a literal value, or None if it cannot be a parameter."""
    if value is None:
        return "none"
    for python_type, name in (
        (bool, "bool"),
        (int, "int"),
        (float, "float"),
        (str, "str"),
        (list, "list"),
        (dict, "dict"),
    ):
        if isinstance(value, python_type):
            return name
    return None


def parse_parameters_cell(cell: Cell) -> tuple[list[Parameter], list[Diagnostic]]:
    tree, problem = _parse(cell, "pipeline-parameters")
    if tree is None:
        return [], [problem] if problem else []
    parameters: list[Parameter] = []
    problems: list[Diagnostic] = []
    for stmt in tree.body:
        target, value_node = _assignment(stmt)
        if target is None or value_node is None:
            problems.append(
                error(
                    "NB302",
                    "a pipeline-parameters cell may only hold simple assignments like "
                    "LR = 0.1; move other code to a step cell",
                    cell=cell.index,
                    line=stmt.lineno,
                )
            )
            continue
        parameter = _parameter(target, value_node, cell)
        if isinstance(parameter, Diagnostic):
            problems.append(parameter)
        else:
            parameters.append(parameter)
    return parameters, problems


def _assignment(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
    ):
        return stmt.targets[0].id, stmt.value
    if (
        isinstance(stmt, ast.AnnAssign)
        and isinstance(stmt.target, ast.Name)
        and stmt.value is not None
    ):
        return stmt.target.id, stmt.value
    return None, None


def _parameter(name: str, node: ast.expr, cell: Cell) -> Parameter | Diagnostic:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return error(
            "NB301",
            f"parameter {name!r} is not a literal value; parameters take int, "
            "float, str, bool, list, dict or None literals — compute derived values in a "
            "step",
            cell=cell.index,
            line=node.lineno,
        )
    kind = type_of(value)
    if kind is None:
        return error(
            "NB301",
            f"parameter {name!r} is a {type(value).__name__}; parameters take int, "
            "float, str, bool, list, dict or None",
            cell=cell.index,
            line=node.lineno,
        )
    if kind in ("list", "dict") or (kind == "float" and value != value):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return error(
                "NB301",
                f"parameter {name!r} must hold only JSON values (numbers, strings, "
                "booleans, None, lists, dicts with string keys)",
                cell=cell.index,
                line=node.lineno,
            )
    return Parameter(name, kind, value, cell.index, node.lineno)


def parse_metrics_cell(cell: Cell) -> tuple[list[Metric], list[Diagnostic]]:
    tree, problem = _parse(cell, "pipeline-metrics")
    if tree is None:
        return [], [problem] if problem else []
    metrics: list[Metric] = []
    problems: list[Diagnostic] = []
    for stmt in tree.body:
        metric = _metric(stmt, cell)
        if metric is None:
            problems.append(
                error(
                    "NB304",
                    'a pipeline-metrics line must be print(name), print("label:", name) or '
                    "a bare name; compute values in a step",
                    cell=cell.index,
                    line=stmt.lineno,
                )
            )
        else:
            metrics.append(metric)
    return metrics, problems


def _metric(stmt: ast.stmt, cell: Cell) -> Metric | None:
    if not isinstance(stmt, ast.Expr):
        return None
    node = stmt.value
    if isinstance(node, ast.Name):
        return Metric(node.id, node.id, cell.index, stmt.lineno)
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
        and not node.keywords
        and 1 <= len(node.args) <= 2
        and isinstance(node.args[-1], ast.Name)
    ):
        return None
    variable = node.args[-1].id
    if len(node.args) == 1:
        return Metric(variable, variable, cell.index, stmt.lineno)
    label = node.args[0]
    if not (isinstance(label, ast.Constant) and isinstance(label.value, str)):
        return None
    name = label.value.strip().rstrip(":").strip() or variable
    return Metric(name, variable, cell.index, stmt.lineno)


def _parse(cell: Cell, role: str) -> tuple[ast.Module | None, Diagnostic | None]:
    try:
        return ast.parse(cell.source), None
    except SyntaxError as exc:
        return None, error(
            "NB101",
            f"syntax error in the {role} cell: {exc.msg}",
            cell=cell.index,
            line=exc.lineno or 1,
        )
    except (ValueError, RecursionError, MemoryError) as exc:
        return None, error(
            "NB101", f"the {role} cell cannot be parsed: {exc}", cell=cell.index, line=1
        )


_JSON_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def parse_param_overrides(
    parameters: Sequence[Parameter], overrides: Mapping[str, str]
) -> dict[str, Any]:
    """Every parameter's value for a run: its default, or the ``--param NAME=TEXT`` override.

    The text is read by the parameter's type: ``int``, ``float``, ``bool`` (true/false,
    1/0, yes/no), ``str`` as it is (no quotes needed), ``list``, ``dict`` and ``none`` as
    JSON. An unknown name or a value that does not fit raises
    :class:`~kale_py.diagnostics.RunError` pointing at the parameter's cell.

    >>> p = Parameter("EPOCHS", "int", 10, cell=2, line=1)
    >>> parse_param_overrides([p], {"EPOCHS": "3"})
    {'EPOCHS': 3}
    """
    from .diagnostics import RunError

    known = {p.name: p for p in parameters}
    values: dict[str, Any] = {p.name: p.default for p in parameters}
    problems: list[Diagnostic] = []
    for name, text in overrides.items():
        parameter = known.get(name)
        if parameter is None:
            cell = parameters[0].cell if parameters else None
            problems.append(error("NB306", _unknown_parameter_message(name, known), cell=cell))
            continue
        try:
            values[name] = _parse_override(parameter.type, text)
        except ValueError as exc:
            problems.append(
                error(
                    "NB307",
                    f"--param {name}={text!r}: {exc}",
                    cell=parameter.cell,
                    line=parameter.line,
                )
            )
    if problems:
        raise RunError(problems)
    return values


def _unknown_parameter_message(name: str, known: Mapping[str, Parameter]) -> str:
    import difflib

    if not known:
        return f"--param {name}: the notebook has no pipeline parameters (no parameters cell)"
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"--param {name}: no such pipeline parameter; {hint}parameters: {', '.join(known)}"


def _parse_override(kind: str, text: str) -> Any:
    """``text`` as a value of parameter type ``kind``; ValueError says what was expected."""
    if kind == "str":
        return text
    if kind == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("expected an integer, like 10") from None
    if kind == "float":
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("expected a number, like 0.5") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number") from None
        return value
    if kind == "bool":
        word = text.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError("expected true or false (also 1/0, yes/no)")
    return _parse_json_override(kind, text)


def _parse_json_override(kind: str, text: str) -> Any:
    expected = {"list": ("a JSON list", list), "dict": ("a JSON object", dict)}
    what, python_type = expected.get(kind, ("a JSON value", object))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        example = (
            " like [1, 2]"
            if kind == "list"
            else ' like {"a": 1}'
            if kind == "dict"
            else ' (strings in double quotes, like "text")'
        )
        raise ValueError(f"expected {what}{example}: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, python_type) or (kind == "list" and isinstance(value, dict)):
        raise ValueError(f"expected {what}, got {_JSON_NAMES.get(type(value), 'something else')}")
    return value
