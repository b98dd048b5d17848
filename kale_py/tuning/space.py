"""What a tuning searches: parameters and their ranges, the objective, the algorithm.

A search comes from ``--search NAME=SPEC`` flags or from the notebook's Katib metadata
(``metadata.kubeflow_notebook.katib_metadata``, as Kale writes it). SPEC is a range,
``LOW..HIGH`` with optional ``:log`` and ``:step=S``, for an int or float parameter, or a
list of choices ``a,b,c`` for any parameter; values are typed by the parameter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kale_py.diagnostics import CheckError, error
from kale_py.graph import Pipeline
from kale_py.parameters import Parameter

Algorithm = Literal["random", "grid", "tpe"]
ALGORITHMS: tuple[Algorithm, ...] = ("random", "grid", "tpe")
# Katib's names for the algorithms kale_py runs locally
KATIB_ALGORITHMS: Mapping[str, Algorithm] = {
    "random": "random", "grid": "grid", "tpe": "tpe", "bayesianoptimization": "tpe",
}


@dataclass(frozen=True)
class SearchParam:
    """One tuned parameter: a range (``low``..``high``, optionally log-scaled or stepped)
    or a list of ``choices``."""

    name: str
    type: str  # the pipeline parameter's type: int, float, str, bool, ...
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def grid(self) -> list[Any]:
        """Every value a grid search tries (ranges need a step, ints step by 1)."""
        if not self.is_range:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        step = self.step if self.step is not None else (1 if self.type == "int" else None)
        if step is None:
            raise _bad(f"grid search over {self.name!r} needs a step: "
                       f"{self.name}={_number(self.low)}..{_number(self.high)}:step=S")
        values, k = [], 0
        while self.low + k * step <= self.high + 1e-12:
            value = self.low + k * step
            values.append(int(round(value)) if self.type == "int" else round(value, 12))
            k += 1
        return values


@dataclass(frozen=True)
class Search:
    """A whole tuning request."""

    params: tuple[SearchParam, ...]
    objective: str
    maximize: bool
    algorithm: Algorithm = "tpe"
    trials: int = 10
    parallel: int = 1
    max_failed: int | None = None
    seed: int | None = None


def parse_spec(text: str, parameters: Sequence[Parameter]) -> SearchParam:
    """One ``NAME=SPEC`` flag, typed by the pipeline parameter it names."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise _bad(f"--search {text!r}: expected NAME=LOW..HIGH[:log][:step=S] or NAME=A,B,C")
    param = _parameter(name, parameters)
    head, *options = spec.split(":")
    if ".." in head:
        return _range(param, head, options, text)
    if options:
        raise _bad(f"--search {text!r}: ':{options[0]}' applies to ranges (LOW..HIGH) only")
    return SearchParam(name, param.type, choices=tuple(_value(param, c) for c in _split(head)))


def _range(param: Parameter, head: str, options: list[str], text: str) -> SearchParam:
    if param.type not in ("int", "float"):
        raise _bad(f"--search {text!r}: {param.name} is a {param.type} parameter: "
                   "give a list of choices (A,B,C), not a range")
    low_text, _, high_text = head.partition("..")
    low, high = _value(param, low_text), _value(param, high_text)
    if not low < high:
        raise _bad(f"--search {text!r}: the range's low end must be below its high end")
    log, step = False, None
    for option in options:
        if option == "log":
            log = True
        elif option.startswith("step="):
            step = _value(param, option[5:])
            if step <= 0:
                raise _bad(f"--search {text!r}: the step must be positive")
        else:
            raise _bad(f"--search {text!r}: unknown option ':{option}' (use :log or :step=S)")
    if log and low <= 0:
        raise _bad(f"--search {text!r}: a log scale needs a positive low end")
    if log and step is not None:
        raise _bad(f"--search {text!r}: :log and :step do not go together")
    return SearchParam(param.name, param.type, float(low), float(high), log,
                       float(step) if step is not None else None)


def _split(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise _bad(f"--search choices {text!r}: an empty choice")
    return items


def _value(param: Parameter, text: str) -> Any:
    text = text.strip()
    try:
        if param.type == "int":
            return int(text)
        if param.type == "float":
            return float(text)
        if param.type == "bool":
            return {"true": True, "false": False}[text.lower()]
        if param.type == "str":
            return json.loads(text) if text.startswith('"') else text
        return json.loads(text)
    except (ValueError, KeyError):
        raise _bad(f"--search {param.name}: {text!r} is not a {param.type} "
                   f"(the parameter's type, cell {param.cell})") from None


def _parameter(name: str, parameters: Sequence[Parameter]) -> Parameter:
    for p in parameters:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in parameters) or "none"
    raise _bad(f"--search {name}: no pipeline parameter of that name (parameters: {known})")


def from_katib_metadata(meta: Mapping[str, Any], parameters: Sequence[Parameter]) -> list[
        SearchParam]:
    """The parameters of Kale's ``katib_metadata`` (Katib's own shape)."""
    out = []
    for item in meta.get("parameters") or []:
        name = str(item.get("name", ""))
        param = _parameter(name, parameters)
        space = item.get("feasibleSpace") or {}
        if "list" in space:
            out.append(SearchParam(name, param.type,
                                   choices=tuple(_value(param, str(v)) for v in space["list"])))
            continue
        low, high = _value(param, str(space.get("min"))), _value(param, str(space.get("max")))
        step = space.get("step")
        out.append(SearchParam(name, param.type, float(low), float(high),
                               space.get("distribution") == "logUniform",
                               float(step) if step not in (None, "") else None))
    return out


def build_search(pipeline: Pipeline, specs: Sequence[str], objective: str | None,
                 maximize: bool | None, algorithm: str | None, trials: int | None,
                 parallel: int | None, seed: int | None = None) -> Search:
    """The search from the flags, falling back to the notebook's Katib metadata."""
    meta = _katib_metadata(pipeline)
    if specs:
        params = [parse_spec(s, pipeline.parameters) for s in specs]
    else:
        params = from_katib_metadata(meta, pipeline.parameters)
    if not params:
        raise _bad("nothing to tune: give --search NAME=SPEC (or katib_metadata.parameters "
                   "in the notebook's metadata)")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise _bad("--search names a parameter twice")
    katib_objective = meta.get("objective") or {}
    objective = objective or katib_objective.get("objectiveMetricName")
    if not objective:
        raise _bad("no objective: give --objective METRIC (a pipeline metric)")
    metrics = [m.name for m in pipeline.metrics]
    if objective not in metrics:
        raise CheckError(error("NB602", f"--objective {objective!r} is not a pipeline metric "
                               f"(metrics: {', '.join(metrics) or 'none'}): tag a cell "
                               "pipeline-metrics and print it there"))
    if maximize is None:
        maximize = str(katib_objective.get("type", "maximize")).lower() != "minimize"
    chosen = algorithm or KATIB_ALGORITHMS.get(
        str((meta.get("algorithm") or {}).get("algorithmName", "tpe")).lower(), "tpe")
    if chosen not in ALGORITHMS:
        raise _bad(f"unknown algorithm {chosen!r} (use {', '.join(ALGORITHMS)})")
    search_params = tuple(params)
    if trials is None:
        trials = int(meta.get("maxTrialCount") or 0) or None
    if chosen == "grid":
        size = 1
        for p in search_params:
            size *= len(p.grid())
        trials = min(trials or size, size)
    return Search(search_params, objective, maximize, chosen,
                  trials or 10, parallel or int(meta.get("parallelTrialCount") or 1),
                  int(meta["maxFailedTrialCount"]) if meta.get("maxFailedTrialCount") else None,
                  seed)


def _katib_metadata(pipeline: Pipeline) -> Mapping[str, Any]:
    raw = pipeline.notebook.metadata.get("kubeflow_notebook") or {}
    meta = raw.get("katib_metadata") if isinstance(raw, dict) else None
    return meta if isinstance(meta, dict) else {}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bad(message: str) -> CheckError:
    return CheckError(error("NB601", message))
