"""Grouping a notebook's cells into blocks: imports, functions, parameters, metrics, steps.

Rules (DESIGN.md, "The one rule"):

- a ``step:NAME`` (or Kale 0.x ``block:NAME``) cell starts a step; a repeated name appends
  to that step, which still runs at the position of its first cell;
- an untagged code cell continues the block above it (a step, or an imports/functions
  block, as in Kale); after a parameters or metrics cell it continues the step above;
- untagged cells above the first tag form a step of their own, and a notebook without
  tags is a one-step pipeline: nothing is dropped silently;
- ``skip`` leaves one cell out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .diagnostics import Diagnostic, error, info, warning
from .metadata import read_settings
from .notebook import Cell, Notebook
from .parameters import Metric, Parameter, parse_metrics_cell, parse_parameters_cell
from .settings import NotebookSettings, StepSettings
from .tags import ROLE_TAGS, CellTags, normalize_step_name, parse_cell_tags

IMPLICIT_STEP = "main"


@dataclass(frozen=True)
class Step:
    """A pipeline step: its cells in notebook order, run together at ``position``."""

    name: str
    kfp_name: str
    cells: tuple[Cell, ...]
    prev: tuple[str, ...] = ()
    settings: StepSettings = field(default_factory=StepSettings)

    @property
    def position(self) -> int:
        return self.cells[0].index


@dataclass(frozen=True)
class Blocks:
    """A notebook split into what each cell is for."""

    notebook: Notebook
    settings: NotebookSettings
    imports: tuple[Cell, ...]
    functions: tuple[Cell, ...]
    parameters: tuple[Parameter, ...]
    parameter_cells: tuple[Cell, ...]
    metrics: tuple[Metric, ...]
    metric_cells: tuple[Cell, ...]
    steps: tuple[Step, ...]
    skipped: tuple[Cell, ...]
    diagnostics: tuple[Diagnostic, ...]
    #: ``serve:VAR`` tags: (variable, cell)
    serves: tuple[tuple[str, int], ...] = ()


class _StepDraft:
    # (plain classes, not dataclasses, for these records: making a dataclass costs as much
    # as compiling a small module, at every start of the command line)
    __slots__ = ("name", "cells", "prev", "settings", "implicit")

    def __init__(self, name: str, cells: list[Cell], prev: list[tuple[str, int]],
                 settings: StepSettings, implicit: bool = False) -> None:
        self.name = name
        self.cells = cells
        self.prev = prev  # (step name, cell carrying the tag)
        self.settings = settings
        self.implicit = implicit


class _Grouping:
    __slots__ = ("imports", "functions", "parameter_cells", "metric_cells", "skipped", "steps",
                 "block", "step", "problems")

    def __init__(self, problems: list[Diagnostic]) -> None:
        self.imports: list[Cell] = []
        self.functions: list[Cell] = []
        self.parameter_cells: list[Cell] = []
        self.metric_cells: list[Cell] = []
        self.skipped: list[Cell] = []
        self.steps: dict[str, _StepDraft] = {}
        # "imports" | "functions" | "parameters" | "metrics" | "step"
        self.block: str | None = None
        self.step: _StepDraft | None = None
        self.problems = problems


def split_notebook(notebook: Notebook) -> Blocks:
    """Group the notebook's cells; every problem found is in ``Blocks.diagnostics``."""
    settings, problems = read_settings(notebook.metadata)
    grouping = _Grouping(problems=problems)
    serves: list[tuple[str, int]] = []
    for cell in notebook.cells:
        if cell.kind != "code":
            _check_tags_on_text_cell(cell, grouping.problems)
            continue
        tags, found = parse_cell_tags(cell)
        grouping.problems.extend(found)
        serves += [(name, cell.index) for name in tags.serves]
        _place(cell, tags, grouping)
    steps = _finish_steps(grouping)
    parameters, metrics = _parameters_and_metrics(grouping)
    if not any(c.source.strip() for s in steps for c in s.cells):
        grouping.problems.append(
            error(
                "NB401",
                "the notebook has no code to run: tag the cells of each pipeline step with "
                "step:NAME (or leave cells untagged for a one-step pipeline)",
            )
        )
    return Blocks(
        notebook=notebook,
        settings=settings,
        imports=tuple(grouping.imports),
        functions=tuple(grouping.functions),
        parameters=tuple(parameters),
        parameter_cells=tuple(grouping.parameter_cells),
        metrics=tuple(metrics),
        metric_cells=tuple(grouping.metric_cells),
        steps=steps,
        skipped=tuple(grouping.skipped),
        diagnostics=tuple(grouping.problems),
        serves=tuple(serves),
    )


def _check_tags_on_text_cell(cell: Cell, problems: list[Diagnostic]) -> None:
    ours = [
        t for t in cell.tags if t in ROLE_TAGS or t.partition(":")[0] in ("step", "block", "prev")
    ]
    if ours:
        problems.append(
            warning(
                "NB201",
                f"tags on a {cell.kind} cell are ignored ({', '.join(ours)}): put them on the "
                "first code cell of the step",
                cell=cell.index,
            )
        )


def _place(cell: Cell, tags: CellTags, g: _Grouping) -> None:
    role = tags.role
    if role == "skip":
        g.skipped.append(cell)
        return
    if role in ("imports", "functions"):
        (g.imports if role == "imports" else g.functions).append(cell)
        g.block = role
        return
    if role in ("parameters", "metrics"):
        (g.parameter_cells if role == "parameters" else g.metric_cells).append(cell)
        g.block = role
        return
    if role == "step":
        assert tags.step is not None
        draft = g.steps.get(tags.step)
        if draft is None:
            draft = g.steps[tags.step] = _StepDraft(tags.step, [], [], StepSettings())
        _add_to_step(draft, cell, tags)
        g.step, g.block = draft, "step"
        return
    # untagged, or a bare ``block:``: continue the block above
    if g.block in ("imports", "functions") and role is None:
        (g.imports if g.block == "imports" else g.functions).append(cell)
    elif g.step is not None:
        _add_to_step(g.step, cell, tags)
    else:
        g.step = _implicit_step(g)
        _add_to_step(g.step, cell, tags)
        g.block = "step"


def _add_to_step(draft: _StepDraft, cell: Cell, tags: CellTags) -> None:
    draft.cells.append(cell)
    draft.prev.extend((p, cell.index) for p in tags.prev)
    if tags.has_settings:
        draft.settings = tags.settings.merged_over(draft.settings)


def _implicit_step(g: _Grouping) -> _StepDraft:
    name, n = IMPLICIT_STEP, 1
    while name in g.steps:
        n += 1
        name = f"{IMPLICIT_STEP}_{n}"
    draft = g.steps[name] = _StepDraft(name, [], [], StepSettings(), implicit=True)
    return draft


def _finish_steps(g: _Grouping) -> tuple[Step, ...]:
    drafts = sorted(g.steps.values(), key=lambda d: d.cells[0].index)
    _check_implicit(drafts, g)
    _check_kfp_names(drafts, g.problems)
    positions = {d.name: d.cells[0].index for d in drafts}
    steps = []
    for draft in drafts:
        prev = _check_prev(draft, positions, g.problems)
        steps.append(
            Step(
                draft.name,
                normalize_step_name(draft.name),
                tuple(draft.cells),
                prev,
                draft.settings,
            )
        )
    return tuple(steps)


def _check_implicit(drafts: list[_StepDraft], g: _Grouping) -> None:
    implicit = [d for d in drafts if d.implicit]
    if not implicit or len(drafts) == 1:
        return
    cells = implicit[0].cells
    span = (
        f"cell {cells[0].index}" if len(cells) == 1 else f"cells {cells[0].index}-{cells[-1].index}"
    )
    g.problems.append(
        info(
            "NB209",
            f"{span} above the first step tag run as a step named {implicit[0].name!r}; tag "
            "them (step:NAME, imports, skip...) to say what they are",
            cell=cells[0].index,
            step=implicit[0].name,
        )
    )


def _check_kfp_names(drafts: list[_StepDraft], problems: list[Diagnostic]) -> None:
    seen: dict[str, _StepDraft] = {}
    for draft in drafts:
        kfp = normalize_step_name(draft.name)
        other = seen.get(kfp)
        if other is not None:
            problems.append(
                error(
                    "NB207",
                    f"steps {other.name!r} (cell {other.cells[0].index}) and {draft.name!r} both "
                    f"become {kfp!r} in Kubeflow, which ignores case and '_' vs '-': rename one",
                    cell=draft.cells[0].index,
                    step=draft.name,
                )
            )
        seen.setdefault(kfp, draft)


def _check_prev(
    draft: _StepDraft, positions: dict[str, int], problems: list[Diagnostic]
) -> tuple[str, ...]:
    valid: list[str] = []
    here = draft.cells[0].index
    for name, cell in draft.prev:
        if name not in positions:
            close = _closest(name, positions)
            hint = f"; did you mean prev:{close}?" if close else ""
            problems.append(
                error(
                    "NB203",
                    f"prev:{name} names no step in this notebook{hint}",
                    cell=cell,
                    step=draft.name,
                )
            )
        elif name == draft.name:
            problems.append(
                error(
                    "NB204",
                    f"step {name!r} cannot come after itself (prev:{name})",
                    cell=cell,
                    step=draft.name,
                )
            )
        elif positions[name] > here:
            problems.append(
                error(
                    "NB204",
                    f"prev:{name} names a step that starts later (cell {positions[name]}) than "
                    f"step {draft.name!r} (cell {here}): a step can only follow earlier steps; "
                    "move the "
                    "cells or give them another step name",
                    cell=cell,
                    step=draft.name,
                )
            )
        elif name not in valid:
            valid.append(name)
    return tuple(valid)


def _closest(name: str, candidates: dict[str, Any]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def _parameters_and_metrics(g: _Grouping) -> tuple[list[Parameter], list[Metric]]:
    parameters: dict[str, Parameter] = {}
    for cell in g.parameter_cells:
        found, problems = parse_parameters_cell(cell)
        g.problems.extend(problems)
        for p in found:
            if p.name in parameters:
                first = parameters[p.name]
                g.problems.append(
                    error(
                        "NB303",
                        f"parameter {p.name!r} is already defined in cell {first.cell}, line "
                        f"{first.line}: keep one definition",
                        cell=p.cell,
                        line=p.line,
                    )
                )
            else:
                parameters[p.name] = p
    metrics: list[Metric] = []
    for cell in g.metric_cells:
        found_metrics, problems = parse_metrics_cell(cell)
        g.problems.extend(problems)
        metrics.extend(found_metrics)
    return list(parameters.values()), metrics
