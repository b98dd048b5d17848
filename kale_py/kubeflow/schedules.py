"""Recurring runs on Kubeflow Pipelines: a pipeline run on a cron schedule.

``nb2pipe submit NOTEBOOK --schedule CRON`` uploads the pipeline as for a run, then creates a
recurring run (KFP's ``/apis/v2beta1/recurringruns``) instead of a single run. ``--disable`` and
``--delete`` manage the recurring runs of that pipeline in its experiment.

KFP's cron has six fields, seconds first (``0 0 9 * * 1-5``); the usual five-field form
(``0 9 * * 1-5``) is accepted and given a leading ``0`` second.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kale_py.diagnostics import SubmitError, error

Json = dict[str, Any]
Output = Callable[[str], object]

# One cron field: *, numbers, names, ranges, steps, lists; ? (any) for day fields as KFP allows.
_ITEM = r"(\*|\?|[A-Za-z0-9]+(-[A-Za-z0-9]+)?)(/\d+)?"
_FIELD = re.compile(rf"^{_ITEM}(,{_ITEM})*$")


@dataclass(frozen=True)
class Schedule:
    """When a recurring run starts a run: a six-field cron, at most ``max_concurrency`` runs
    at once; ``catchup`` runs the intervals missed while it was paused."""

    cron: str
    max_concurrency: int = 1
    catchup: bool = True


def kfp_cron(expression: str) -> str:
    """``expression`` as KFP's six-field cron; a SubmitError (KF106) when it is not a cron."""
    fields = expression.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6 or not all(_FIELD.match(f) for f in fields):
        raise SubmitError([error(
            "KF106", f"--schedule {expression!r} is not a cron expression: use five fields "
            "(minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5') or KFP's six "
            "(seconds first)")])
    return " ".join(fields)


def recurring_run_body(name: str, experiment_id: str, source: Json,
                       params: Mapping[str, object], schedule: Schedule,
                       namespace: str | None = None) -> Json:
    """The JSON of a new ``V2beta1RecurringRun`` (KFP's API model)."""
    body: Json = {
        "display_name": name,
        "experiment_id": experiment_id,
        **source,
        "runtime_config": {"parameters": dict(params)},
        "trigger": {"cron_schedule": {"cron": schedule.cron}},
        # int64 travels as a string in the API's JSON
        "max_concurrency": str(schedule.max_concurrency),
        "no_catchup": not schedule.catchup,
        "mode": "ENABLE",
    }
    if namespace:
        body["namespace"] = namespace
    return body


def recurring_runs_of(client: Any, name: str, experiment_id: str | None) -> list[Json]:
    """The recurring runs named ``name`` (in the experiment, when given)."""
    query: dict[str, str] = dict(client.namespace_query())
    if experiment_id:
        query["experiment_id"] = experiment_id
    return [r for r in client.paged("/recurringruns", "recurring_runs", query)
            if r.get("display_name") == name]


def manage_recurring_runs(client: Any, name: str, experiment_id: str | None, action: str,
                          out: Output) -> list[str]:
    """Disable, enable or delete the pipeline's recurring runs; their ids.

    A SubmitError (KF107) when the pipeline has none."""
    found = recurring_runs_of(client, name, experiment_id)
    if not found:
        raise SubmitError([error(
            "KF107", f"no recurring run named {name!r} at {client.endpoint.api}: create one "
            "with --schedule CRON (or pass --name / --experiment)")])
    done = []
    for run in found:
        run_id = str(run.get("recurring_run_id", ""))
        quoted = urllib.parse.quote(run_id, safe="")
        if action == "delete":
            client.call("DELETE", f"/recurringruns/{quoted}")
        else:
            client.call("POST", f"/recurringruns/{quoted}:{action}")
        out(f"Recurring run '{name}' ({run_id}): {action}d")
        done.append(run_id)
    return done
