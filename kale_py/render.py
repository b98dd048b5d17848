"""Pipeline and diagnostics as text, JSON, Mermaid and Graphviz dot."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from .diagnostics import Diagnostic
from .graph import Pipeline
from .notebook import Notebook


def diagnostic_to_text(d: Diagnostic, notebook: Notebook | None, label: str) -> str:
    """``nb.ipynb:cell 7:3: error NB103: ...``; for percent scripts ``script.py:42: ...``.

    The script form gives the file line, which editors (VS Code included) turn into a link.
    """
    where, script = location(notebook, label, d.cell, d.line)
    suffix = f" (cell {d.cell})" if script else ""
    step = f" [step {d.step}]" if d.step else ""
    return f"{where}: {d.severity} {d.code}: {d.message}{suffix}{step}"


def location(
    notebook: Notebook | None, label: str, cell: int | None, line: int | None
) -> tuple[str, bool]:
    """``label:cell 7:3``, or ``label:42`` (a file line) for a percent script's cell.

    The flag says whether the file-line form was used.
    """
    found = _cell(notebook, cell)
    if found is not None and found.first_line is not None:
        return f"{label}:{found.first_line + (line or 1) - 1}", True
    where = label
    if cell is not None:
        where += f":cell {cell}"
        if line is not None:
            where += f":{line}"
    return where, False


def _cell(notebook: Notebook | None, index: int | None) -> Any:
    if notebook is None or index is None or not 1 <= index <= len(notebook.cells):
        return None
    return notebook.cells[index - 1]


def pipeline_to_dict(p: Pipeline) -> dict[str, Any]:
    """The JSON shape shared by ``nb2pipe graph --format json`` and the server."""
    steps = []
    level_of = {name: i for i, level in enumerate(p.levels) for name in level}
    for step in p.steps:
        io = p.io[step.name]
        steps.append(
            {
                "name": step.name,
                "kfp_name": step.kfp_name,
                "cells": [c.index for c in step.cells],
                "loads": dict(io.loads),
                "parameters": list(io.parameters),
                "saves": list(io.saves),
                "metrics": [m.name for m in io.metrics],
                "prev": list(step.prev),
                "level": level_of.get(step.name, 0),
                "settings": _settings_dict(asdict(step.settings)),
            }
        )
    providers = {m.name: step for step, io in p.io.items() for m in io.metrics}
    return {
        "notebook": str(p.notebook.path) if p.notebook.path else None,
        "pipeline": {
            "name": p.settings.pipeline_name,
            "experiment": p.settings.experiment_name,
            "description": p.settings.pipeline_description,
        },
        "steps": steps,
        # serve:VAR models and the steps whose values of them are served
        "served": [{"variable": v, "step": s} for v, s in sorted(p.served.items())],
        "edges": [
            {"source": e.source, "target": e.target, "variables": list(e.variables), "kind": e.kind}
            for e in p.edges
        ],
        "levels": [list(level) for level in p.levels],
        "parameters": [
            {"name": x.name, "type": x.type, "default": x.default, "cell": x.cell}
            for x in p.parameters
        ],
        "metrics": [
            {"name": m.name, "variable": m.variable, "step": providers.get(m.name), "cell": m.cell}
            for m in p.metrics
        ],
        "diagnostics": [d.to_dict() for d in p.diagnostics],
    }


def _settings_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """Only what is set, with pairs as objects."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value in (None, (), []):
            continue
        if key in ("limits", "requests", "labels", "annotations", "node_selector"):
            value = dict(value)
        out[key] = value
    return out


def pipeline_to_json(p: Pipeline) -> str:
    return json.dumps(pipeline_to_dict(p), indent=2, default=str)


def pipeline_to_text(p: Pipeline) -> str:
    lines = []
    for i, level in enumerate(p.levels):
        lines.append(f"level {i}: {', '.join(level)}")
    lines.append("")
    for step in p.steps:
        io = p.io[step.name]
        cells = ", ".join(str(c.index) for c in step.cells)
        lines.append(f"step {step.name} (cells {cells})")
        by_source: dict[str, list[str]] = {}
        for var, source in io.loads.items():
            by_source.setdefault(source, []).append(var)
        for source, variables in by_source.items():
            lines.append(f"  loads {', '.join(variables)} from {source}")
        if io.parameters:
            lines.append(f"  parameters {', '.join(io.parameters)}")
        for prev in step.prev:
            if prev not in by_source:
                lines.append(f"  after {prev}")
        if io.saves:
            lines.append(f"  saves {', '.join(io.saves)}")
        if io.metrics:
            lines.append(f"  reports {', '.join(m.name for m in io.metrics)}")
    return "\n".join(lines)


def pipeline_to_mermaid(p: Pipeline) -> str:
    lines = ["flowchart TD"]
    for step in p.steps:
        lines.append(f'    {_node_id(step.kfp_name)}["{step.name}"]')
    kfp = {s.name: s.kfp_name for s in p.steps}
    for e in p.edges:
        src, dst = _node_id(kfp[e.source]), _node_id(kfp[e.target])
        if e.variables:
            label = ", ".join(e.variables).replace('"', "'")
            lines.append(f'    {src} -->|"{label}"| {dst}')
        else:
            lines.append(f"    {src} -.-> {dst}")
    return "\n".join(lines)


def pipeline_to_dot(p: Pipeline) -> str:
    lines = ["digraph pipeline {", "  rankdir=TB;", "  node [shape=box, style=rounded];"]
    for step in p.steps:
        lines.append(f"  {json.dumps(step.name)};")
    for e in p.edges:
        attrs = (
            f" [label={json.dumps(', '.join(e.variables))}]" if e.variables else " [style=dashed]"
        )
        lines.append(f"  {json.dumps(e.source)} -> {json.dumps(e.target)}{attrs};")
    lines.append("}")
    return "\n".join(lines)


def _node_id(kfp_name: str) -> str:
    return "s_" + kfp_name.replace("-", "_")
