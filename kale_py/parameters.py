"""Pipeline parameters and metrics cells.

A ``pipeline-parameters`` cell holds simple assignments of literal values; each becomes a
typed pipeline parameter. A ``pipeline-metrics`` cell names the values the pipeline
reports: ``print(acc)``, ``print("accuracy:", acc)`` or a bare ``acc``.
"""

from __future__ import annotations

import ast
import json
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
    for python_type, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"),
                              (list, "list"), (dict, "dict")):
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
            problems.append(error(
                "NB302", "a pipeline-parameters cell may only hold simple assignments like "
                "LR = 0.1; move other code to a step cell", cell=cell.index, line=stmt.lineno))
            continue
        parameter = _parameter(target, value_node, cell)
        if isinstance(parameter, Diagnostic):
            problems.append(parameter)
        else:
            parameters.append(parameter)
    return parameters, problems


def _assignment(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id, stmt.value
    return None, None


def _parameter(name: str, node: ast.expr, cell: Cell) -> Parameter | Diagnostic:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return error("NB301", f"parameter {name!r} is not a literal value; parameters take int, "
                     "float, str, bool, list, dict or None literals — compute derived values in a "
                     "step", cell=cell.index, line=node.lineno)
    kind = type_of(value)
    if kind is None:
        return error("NB301", f"parameter {name!r} is a {type(value).__name__}; parameters take int, "
                     "float, str, bool, list, dict or None", cell=cell.index, line=node.lineno)
    if kind in ("list", "dict") or (kind == "float" and value != value):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return error("NB301", f"parameter {name!r} must hold only JSON values (numbers, strings, "
                         "booleans, None, lists, dicts with string keys)", cell=cell.index,
                         line=node.lineno)
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
            problems.append(error(
                "NB304", "a pipeline-metrics line must be print(name), print(\"label:\", name) or "
                "a bare name; compute values in a step", cell=cell.index, line=stmt.lineno))
        else:
            metrics.append(metric)
    return metrics, problems


def _metric(stmt: ast.stmt, cell: Cell) -> Metric | None:
    if not isinstance(stmt, ast.Expr):
        return None
    node = stmt.value
    if isinstance(node, ast.Name):
        return Metric(node.id, node.id, cell.index, stmt.lineno)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
            and not node.keywords and 1 <= len(node.args) <= 2 and isinstance(node.args[-1], ast.Name)):
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
        return None, error("NB101", f"syntax error in the {role} cell: {exc.msg}",
                           cell=cell.index, line=exc.lineno or 1)
    except (ValueError, RecursionError, MemoryError) as exc:
        return None, error("NB101", f"the {role} cell cannot be parsed: {exc}", cell=cell.index, line=1)
