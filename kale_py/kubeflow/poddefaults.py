"""Kubeflow PodDefaults for the steps: the labels that make the admission webhook apply them.

A PodDefault (``kubeflow.org/v1alpha1``) injects env, volumes and secrets (the
``access-ml-pipeline`` token, cloud credentials) into every pod of its namespace whose labels
match its ``spec.selector.matchLabels``. The steps get:

* the labels of every PodDefault the notebook pod matches (it was started with them);
* the labels of the PodDefaults named in ``poddefaults`` (notebook metadata) or by a
  ``poddefault:NAME`` tag.

In a cluster the namespace's PodDefaults are listed (``GET
/apis/kubeflow.org/v1alpha1/namespaces/NS/poddefaults``); off-cluster, a named PodDefault's label is
Kubeflow's convention ``NAME: "true"``. :func:`list_poddefaults` answers the Jupyter panel's
``GET /kale-py/poddefaults``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..cluster import ClusterConfig, _Call, _request, discover_notebook, in_cluster
from ..diagnostics import Diagnostic, KalePyError, warning

Json = dict[str, Any]
GROUP = "kubeflow.org"


@dataclass(frozen=True)
class PodDefault:
    name: str
    description: str
    labels: tuple[tuple[str, str], ...]  # spec.selector.matchLabels


@dataclass(frozen=True)
class PodDefaultLabels:
    """Resolves PodDefault names to labels; ``notebook`` holds the notebook pod's own."""

    known: Mapping[str, PodDefault]
    notebook: tuple[tuple[str, str], ...] = ()

    def labels(self, names: Sequence[str]) -> tuple[tuple[str, str], ...]:
        out = dict(self.notebook)
        for name in names:
            found = self.known.get(name)
            out.update(found.labels if found is not None else ((name, "true"),))
        return tuple(out.items())


def fetch_poddefaults(config: ClusterConfig) -> list[PodDefault]:
    """The namespace's PodDefaults; raises :class:`CompileError` (KF201-KF203) on API errors."""
    path = f"/apis/{GROUP}/v1alpha1/namespaces/{config.namespace}/poddefaults"
    answer = _request(config, _Call("list", "poddefaults", None, path, GROUP))
    out = []
    for item in answer.get("items") or []:
        if not isinstance(item, dict):
            continue
        metadata, spec = item.get("metadata") or {}, item.get("spec") or {}
        match = (spec.get("selector") or {}).get("matchLabels") or {}
        out.append(PodDefault(str(metadata.get("name", "")), str(spec.get("desc") or ""),
                              tuple(sorted((str(k), str(v)) for k, v in match.items()))))
    return sorted(out, key=lambda d: d.name)


def resolver(config: ClusterConfig | None = None) -> tuple[PodDefaultLabels, list[Diagnostic]]:
    """Off-cluster (and without ``config``): the naming convention only, no network I/O."""
    if config is None:
        if not in_cluster():
            return PodDefaultLabels({}), []
        config = ClusterConfig.from_environment()
    try:
        known = fetch_poddefaults(config)
    except KalePyError as e:
        return PodDefaultLabels({}), [warning("KF208", "cannot list the namespace's PodDefaults "
                                              f"({e}); named ones get the label NAME=true")]
    pod = discover_notebook(config)
    carried: dict[str, str] = {}
    for default in known:
        if default.labels and all(pod.labels.get(k) == v for k, v in default.labels):
            carried.update(default.labels)
    return PodDefaultLabels({d.name: d for d in known}, tuple(sorted(carried.items()))), []


def list_poddefaults(config: ClusterConfig | None = None) -> dict[str, Any]:
    """The namespace's PodDefaults as JSON for the Jupyter panel; never raises."""
    if config is None and not in_cluster():
        return {"in_cluster": False, "namespace": None, "poddefaults": [],
                "message": "not running in a Kubernetes pod: name PodDefaults in the notebook "
                           "metadata (poddefaults) or with poddefault:NAME tags"}
    try:
        config = config or ClusterConfig.from_environment()
        found = fetch_poddefaults(config)
    except KalePyError as e:
        return {"in_cluster": True, "namespace": config.namespace if config else None,
                "poddefaults": [], "message": str(e)}
    return {"in_cluster": True, "namespace": config.namespace, "message": None,
            "poddefaults": [{"name": d.name, "description": d.description,
                             "labels": dict(d.labels)} for d in found]}
