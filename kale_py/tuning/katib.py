"""The tuning as a Katib ``Experiment`` (kubeflow.org/v1beta1) whose trials run the pipeline.

Two manifests: a ConfigMap holding the compiled pipeline (as the JSON a KFP run carries) and
the trial driver (:mod:`kale_py.tuning.trial`), and the Experiment. Each trial is a Job whose
only container runs the driver with the trial's values: it starts a KFP run of the pipeline,
waits for it, and prints the pipeline's metrics for Katib's StdOut metrics collector. The
Job's pod carries the ``access-ml-pipeline`` label, which Kubeflow's PodDefault of that name
answers with a KFP token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kale_py.graph import Pipeline
from kale_py.tuning.space import Search, SearchParam

API_VERSION = "kubeflow.org/v1beta1"
MOUNT = "/kale-py"
DEFAULT_KFP = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
_TYPES = {"int": "int", "float": "double"}


def katib_name(pipeline_name: str) -> str:
    """A Kubernetes name for the Experiment (lower case, dashes, at most 40 characters:
    Katib appends suffixes to it for its trials)."""
    name = re.sub(r"[^a-z0-9-]+", "-", pipeline_name.lower()).strip("-")[:40].strip("-")
    return name or "tune"


def katib_manifests(pipeline: Pipeline, search: Search, pipeline_spec: dict[str, Any], *,
                    name: str, image: str, namespace: str | None = None,
                    kfp_host: str = DEFAULT_KFP,
                    kfp_experiment: str | None = None) -> list[dict[str, Any]]:
    """``[ConfigMap, Experiment]`` for ``search`` over the compiled ``pipeline_spec``."""
    config_map = f"{name}-pipeline"
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    driver = Path(__file__).with_name("trial.py").read_text(encoding="utf-8")
    types = {p.name: p.type for p in pipeline.parameters}
    command = ["python3", f"{MOUNT}/trial.py", "--kfp", kfp_host,
               "--pipeline-spec", f"{MOUNT}/pipeline.json",
               "--name", "${trialParameters.trialName}"]
    if namespace:
        command += ["--namespace", namespace]
    if kfp_experiment:
        command += ["--experiment", kfp_experiment]
    for p in search.params:
        command += ["--param", f"{p.name}={_trial_type(types.get(p.name, p.type))}:"
                    f"${{trialParameters.{p.name}}}"]
    others = [m.name for m in pipeline.metrics if m.name != search.objective]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"access-ml-pipeline": "true"},
                             # the Job must end when the driver does
                             "annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": image, "command": command,
                                    "volumeMounts": [{"name": "kale-py", "mountPath": MOUNT,
                                                      "readOnly": True}]}],
                    "volumes": [{"name": "kale-py", "configMap": {"name": config_map}}],
                },
            },
        },
    }
    experiment = {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": metadata,
        "spec": {
            "objective": {"type": "maximize" if search.maximize else "minimize",
                          "objectiveMetricName": search.objective,
                          **({"additionalMetricNames": others} if others else {})},
            "algorithm": {"algorithmName": search.algorithm},
            "parallelTrialCount": search.parallel,
            "maxTrialCount": search.trials,
            "maxFailedTrialCount": search.max_failed if search.max_failed is not None
            else search.trials,
            "parameters": [_parameter(p) for p in search.params],
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "trialTemplate": {
                "primaryContainerName": "main",
                "trialParameters": [
                    {"name": "trialName", "reference": "${trialSpec.Name}",
                     "description": "the trial's name, given to its KFP run"},
                    *({"name": p.name, "reference": p.name,
                       "description": f"pipeline parameter {p.name}"} for p in search.params),
                ],
                "trialSpec": job,
            },
        },
    }
    cm_meta = {"name": config_map, **({"namespace": namespace} if namespace else {})}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": cm_meta,
          "data": {"pipeline.json": json.dumps(pipeline_spec, sort_keys=True),
                   "trial.py": driver}}
    return [cm, experiment]


def _trial_type(kind: str) -> str:
    return kind if kind in ("int", "float", "str", "bool") else "json"


def _parameter(p: SearchParam) -> dict[str, Any]:
    if not p.is_range:
        return {"name": p.name, "parameterType": "categorical",
                "feasibleSpace": {"list": [v if isinstance(v, str) else json.dumps(v)
                                           for v in p.choices]}}
    assert p.low is not None and p.high is not None
    space: dict[str, Any] = {"min": _num(p.low, p.type), "max": _num(p.high, p.type)}
    if p.step is not None:
        space["step"] = _num(p.step, p.type)
    if p.log:
        space["distribution"] = "logUniform"
    return {"name": p.name, "parameterType": _TYPES[p.type], "feasibleSpace": space}


def _num(value: float, kind: str) -> str:
    return str(int(value)) if kind == "int" else repr(float(value))
