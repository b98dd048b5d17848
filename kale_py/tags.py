"""The cell tag language: a superset of Kale's.

Each cell's tags are parsed on their own into a :class:`CellTags`: the cell's role,
its step name and ``prev:`` edges, and the per-step settings it carries. Grouping cells
into steps happens in :mod:`kale_py.pipeline`.

>>> tags, problems = parse_cell_tags(Cell(3, "code", "x = 1", ("step:load", "limit:cpu:2")))
>>> tags.role, tags.step, tags.settings.limits
('step', 'load', (('cpu', '2'),))
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .diagnostics import Diagnostic, error, warning
from .notebook import Cell
from .settings import SecretEnv, StepSettings, Toleration

ROLE_TAGS = {
    "imports": "imports",
    "functions": "functions",
    "pipeline-parameters": "parameters",
    "parameters": "parameters",  # papermill's tag
    "pipeline-metrics": "metrics",
    "skip": "skip",
}

STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][0-9]+|m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
_RESOURCE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
_K8S_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_FOREIGN_HINT = {
    "notebook": "Kale's multi-notebook composition is not supported; the tag is ignored",
}


@dataclass(frozen=True)
class CellTags:
    """What one cell's tags say.

    ``role`` is ``None`` for a cell without a role tag (it continues the block above).
    ``step`` is the step name for ``role == "step"``.
    """

    cell: int
    role: str | None = None
    step: str | None = None
    prev: tuple[str, ...] = ()
    settings: StepSettings = field(default_factory=StepSettings)
    has_settings: bool = False
    #: variables marked ``serve:VAR``: the model to serve (KServe) is their final value
    serves: tuple[str, ...] = ()


def normalize_step_name(name: str) -> str:
    """The name KFP shows and uses for a task: lowercase, ``-`` for ``_``."""
    kfp = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return kfp or "step"


def parse_cell_tags(cell: Cell) -> tuple[CellTags, list[Diagnostic]]:
    """Parse one cell's tags. Problems come back as diagnostics (never raised)."""
    problems: list[Diagnostic] = []
    roles: list[str] = []
    steps: list[str] = []
    prev: list[str] = []
    serves: list[str] = []
    settings = StepSettings()
    has_settings = False
    for tag in cell.tags:
        kind, _, value = tag.partition(":")
        if not _:
            if tag in ROLE_TAGS:
                roles.append(ROLE_TAGS[tag])
            else:
                problems.append(_unknown(tag, cell))
            continue
        if kind in ("step", "block"):
            if value == "":
                roles.append("continue")
            elif STEP_NAME.match(value):
                roles.append("step")
                steps.append(value)
            else:
                problems.append(
                    error(
                        "NB206",
                        f"invalid step name {value!r} in tag {tag!r}: use letters, digits, "
                        "'_' and '-', starting with a letter or '_'",
                        cell=cell.index,
                    )
                )
        elif kind == "prev":
            if STEP_NAME.match(value):
                prev.append(value)
            else:
                problems.append(
                    error(
                        "NB202",
                        f"prev:{value} does not name a step (use prev:STEP)",
                        cell=cell.index,
                    )
                )
        elif kind == "serve":
            if value.isidentifier():
                serves.append(value)
            else:
                problems.append(
                    error(
                        "NB202",
                        f"serve:{value} does not name a variable (use serve:VARIABLE, the "
                        "model to serve)",
                        cell=cell.index,
                    )
                )
        elif kind in _SETTING_PARSERS:
            parsed = _SETTING_PARSERS[kind](value, tag, cell.index)
            if isinstance(parsed, Diagnostic):
                problems.append(parsed)
            else:
                settings, has_settings = _combine(settings, parsed, tag, cell.index, problems), True
        else:
            problems.append(_unknown(tag, cell))
    role = _single_role(roles, cell, problems)
    if len(set(steps)) > 1:
        problems.append(
            error(
                "NB205",
                f"the cell has several step names ({', '.join(sorted(set(steps)))}): keep one "
                "step tag per cell",
                cell=cell.index,
            )
        )
    step = steps[0] if steps and role == "step" else None
    if prev and role in ("imports", "functions", "parameters", "metrics", "skip"):
        problems.append(
            warning(
                "NB202",
                f"prev: tags apply to steps, not to a {role} cell: move them to a step cell "
                "(ignored)",
                cell=cell.index,
            )
        )
    if has_settings and role in ("imports", "functions", "parameters", "metrics", "skip"):
        problems.append(
            warning(
                "NB202",
                f"step settings on a {role} cell are ignored: put them on a step cell",
                cell=cell.index,
            )
        )
    return CellTags(
        cell.index, role, step, tuple(dict.fromkeys(prev)), settings, has_settings,
        tuple(dict.fromkeys(serves)),
    ), problems


def _unknown(tag: str, cell: Cell) -> Diagnostic:
    kind = tag.partition(":")[0]
    hint = _FOREIGN_HINT.get(kind, "not a kale_py tag; ignored")
    return warning("NB201", f"unknown tag {tag!r}: {hint}", cell=cell.index)


def _single_role(roles: list[str], cell: Cell, problems: list[Diagnostic]) -> str | None:
    if "skip" in roles:
        return "skip"
    distinct = list(dict.fromkeys(r for r in roles if r != "continue"))
    if len(distinct) > 1:
        problems.append(
            error(
                "NB202",
                f"the cell has several roles ({', '.join(distinct)}): keep one of "
                "imports, functions, pipeline-parameters, pipeline-metrics, step",
                cell=cell.index,
            )
        )
    if distinct:
        return distinct[0]
    return "continue" if roles else None


def _combine(
    settings: StepSettings, update: StepSettings, tag: str, cell: int, problems: list[Diagnostic]
) -> StepSettings:
    """Add one tag's setting; a scalar given twice with different values is an error."""
    for name in ("image", "cache", "report", "retry", "timeout"):
        old, new = getattr(settings, name), getattr(update, name)
        if old is not None and new is not None and old != new:
            problems.append(
                error(
                    "NB208", f"{tag!r} conflicts with an earlier {name} tag on this cell", cell=cell
                )
            )
    return update.merged_over(settings)


# --- per-setting parsers: value text -> StepSettings with that one field set ------------------

SettingParser = Callable[[str, str, int], "StepSettings | Diagnostic"]


def _setting(field_name: str, value: Any) -> StepSettings:
    """StepSettings with one field set (the field chosen at run time)."""
    fields: dict[str, Any] = {field_name: value}
    return StepSettings(**fields)


def _bad(tag: str, cell: int, expected: str) -> Diagnostic:
    return error("NB202", f"malformed tag {tag!r}: expected {expected}", cell=cell)


def _resource(value: str, tag: str, cell: int, field_name: str) -> StepSettings | Diagnostic:
    resource, sep, quantity = value.rpartition(":")
    if not sep or not _RESOURCE.match(resource) or not _QUANTITY.match(quantity):
        return _bad(
            tag,
            cell,
            f"{tag.split(':')[0]}:RESOURCE:QUANTITY, like "
            f"{tag.split(':')[0]}:cpu:2, {tag.split(':')[0]}:memory:4Gi or "
            f"{tag.split(':')[0]}:nvidia.com/gpu:1",
        )
    if "/" in resource and "gpu" in resource and not quantity.isdigit():
        return _bad(tag, cell, "a whole number of GPUs")
    return _setting(field_name, ((resource, quantity),))


def _limit(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    return _resource(value, tag, cell, "limits")


def _request(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    return _resource(value, tag, cell, "requests")


def _image(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    if not value or any(ch.isspace() for ch in value):
        return _bad(tag, cell, "image:REGISTRY/NAME:TAG without spaces")
    return StepSettings(image=value)


def _key_value(value: str, tag: str, cell: int, field_name: str) -> StepSettings | Diagnostic:
    key, sep, val = value.partition(":")
    if not sep or not _K8S_KEY.match(key) or len(key.rpartition("/")[2]) > 63:
        kind = tag.split(":")[0]
        return _bad(
            tag,
            cell,
            f"{kind}:KEY:VALUE with a Kubernetes key (letters, digits, "
            "'-', '_', '.', optional 'prefix/')",
        )
    return _setting(field_name, ((key, val),))


def _label(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    return _key_value(value, tag, cell, "labels")


def _annotation(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    return _key_value(value, tag, cell, "annotations")


def _node(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    return _key_value(value, tag, cell, "node_selector")


def _secret(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    parts = value.split(":")
    if (
        len(parts) != 3
        or not _DNS_NAME.match(parts[0])
        or not re.match(r"^[-._A-Za-z0-9]+$", parts[1])
        or not _ENV_NAME.match(parts[2])
    ):
        return _bad(
            tag,
            cell,
            "secret:SECRET_NAME:KEY:ENV_VAR, like secret:s3-creds:access-key:AWS_ACCESS_KEY_ID",
        )
    return StepSettings(secrets=(SecretEnv(*parts),))


def _toleration(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    key, _, rest = value.partition(":")
    val, _, effect = rest.rpartition(":")
    if not key or effect not in _EFFECTS or not _K8S_KEY.match(key):
        return _bad(
            tag, cell, f"toleration:KEY:VALUE:EFFECT with EFFECT one of {', '.join(_EFFECTS)}"
        )
    return StepSettings(tolerations=(Toleration(key, val, effect),))


def _switch(value: str, tag: str, cell: int, field_name: str) -> StepSettings | Diagnostic:
    if value not in ("enabled", "disabled"):
        return _bad(tag, cell, f"{field_name}:enabled or {field_name}:disabled")
    return _setting(field_name, value == "enabled")


def _cache(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    return _switch(value, tag, cell, "cache")


def _report(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    return _switch(value, tag, cell, "report")


def _retry(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    if not value.isdigit() or int(value) > 100:
        return _bad(tag, cell, "retry:N with N a whole number of retries (0-100)")
    return StepSettings(retry=int(value))


def _timeout(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    if not value.isdigit() or int(value) == 0:
        return _bad(tag, cell, "timeout:SECONDS with a positive whole number of seconds")
    return StepSettings(timeout=int(value))


def _pull_secret(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    if not _DNS_NAME.match(value) or len(value) > 253:
        return _bad(tag, cell, "pull-secret:SECRET_NAME, a Kubernetes secret of type "
                    "kubernetes.io/dockerconfigjson")
    return StepSettings(pull_secrets=(value,))


def _poddefault(value: str, tag: str, cell: int) -> StepSettings | Diagnostic:
    if not _DNS_NAME.match(value) or len(value) > 253:
        return _bad(tag, cell, "poddefault:NAME, a Kubeflow PodDefault of the namespace "
                    "(like poddefault:access-ml-pipeline)")
    return StepSettings(poddefaults=(value,))


_SETTING_PARSERS: dict[str, SettingParser] = {
    "limit": _limit,
    "request": _request,
    "image": _image,
    "label": _label,
    "annotation": _annotation,
    "secret": _secret,
    "cache": _cache,
    "report": _report,
    "retry": _retry,
    "timeout": _timeout,
    "node": _node,
    "toleration": _toleration,
    "pull-secret": _pull_secret,
    "poddefault": _poddefault,
}


def parse_settings_tags(tags: list[str], where: str) -> tuple[StepSettings, list[Diagnostic]]:
    """Parse setting tags outside a cell (``steps_defaults`` in the notebook metadata)."""
    settings, problems = StepSettings(), []
    for tag in tags:
        kind, _, value = tag.partition(":")
        parser = _SETTING_PARSERS.get(kind)
        if parser is None:
            problems.append(
                warning("NB004", f"{where}: {tag!r} is not a step setting tag; ignored")
            )
            continue
        parsed = parser(value, tag, 0)
        if isinstance(parsed, Diagnostic):
            problems.append(
                replace(parsed, code="NB004", cell=None, message=f"{where}: {parsed.message}")
            )
        else:
            settings = parsed.merged_over(settings)
    return settings, problems
