"""A Katib trial of a kale_py pipeline: one KFP run with the trial's parameter values.

This file runs inside the trial's pod as ``python3 -c <this source> ARGS`` (the Experiment
carries it; the pod needs only Python). It creates a run of the uploaded pipeline version,
waits for it, reads the pipeline's metrics from the log of the step that reported them (the
step runtime prints one ``KALE_PY_METRICS {...}`` line there), and prints ``name=value`` lines
for Katib's StdOut metrics collector. Exit 1 when the run does not succeed, so that Katib
counts the trial as failed.

Standard library only, and no kale_py import: the pod does not have kale_py installed.
Credentials: the KFP service-account token that Kubeflow's ``access-ml-pipeline`` PodDefault
mounts, and the pod's own service account for reading the step's log.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.parse
import urllib.request
from typing import Any

METRICS_MARKER = "KALE_PY_METRICS "
TERMINAL = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _arguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kale_py-trial")
    p.add_argument("--kfp", required=True, help="the KFP API endpoint")
    p.add_argument("--kubernetes", default="https://kubernetes.default.svc")
    p.add_argument("--namespace", default="")
    p.add_argument("--experiment", default="", help="the KFP experiment of the runs")
    p.add_argument("--pipeline-spec", required=True,
                   help="the compiled pipeline as JSON (a file the Experiment mounts)")
    p.add_argument("--name", required=True, help="the run's display name (the trial's)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=TYPE:VALUE")
    p.add_argument("--poll", type=float, default=10.0)
    p.add_argument("--kfp-token-file",
                   default=os.environ.get("KF_PIPELINES_SA_TOKEN_PATH",
                                          "/var/run/secrets/kubeflow/pipelines/token"))
    p.add_argument("--sa-dir", default=SA_DIR)
    return p.parse_args(argv)


def _request(url: str, token: str | None, method: str = "GET", body: Any = None,
             ca: str | None = None, text: bool = False) -> Any:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    context = ssl.create_default_context(cafile=ca) if ca and url.startswith("https:") else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=60, context=context) as response:
        raw = response.read().decode("utf-8", "replace")
    return raw if text else json.loads(raw or "{}")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def typed_param(item: str) -> tuple[str, Any]:
    """``NAME=TYPE:VALUE`` (Katib substitutes VALUE as plain text) as a typed value."""
    name, _, rest = item.partition("=")
    kind, _, value = rest.partition(":")
    if kind == "int":
        return name, int(float(value))
    if kind == "float":
        return name, float(value)
    if kind == "bool":
        return name, value.strip().lower() in ("true", "1", "yes")
    if kind == "str":
        return name, value
    return name, json.loads(value)


def _experiment_id(api: str, token: str | None, name: str, namespace: str) -> str:
    query = {"filter": json.dumps({"predicates": [
        {"key": "display_name", "operation": "EQUALS", "stringValue": name}]})}
    if namespace:
        query["namespace"] = namespace
    found = _request(f"{api}/experiments?{urllib.parse.urlencode(query)}", token)
    for experiment in found.get("experiments") or []:
        if experiment.get("display_name") == name:
            return str(experiment["experiment_id"])
    body = {"display_name": name, **({"namespace": namespace} if namespace else {})}
    return str(_request(f"{api}/experiments", token, "POST", body)["experiment_id"])


def metrics_in_log(text: str) -> dict[str, float]:
    """The metrics of every ``KALE_PY_METRICS`` line of a step's log."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        _, marker, payload = line.partition(METRICS_MARKER)
        if marker:
            try:
                found.update({k: float(v) for k, v in json.loads(payload).items()})
            except (ValueError, AttributeError, TypeError):
                continue
    return found


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    api = args.kfp.rstrip("/") + "/apis/v2beta1"
    kfp_token = _read(args.kfp_token_file)
    params = dict(typed_param(item) for item in args.param)
    with open(args.pipeline_spec, encoding="utf-8") as f:
        spec = json.load(f)
    body: dict[str, Any] = {"display_name": args.name, **spec,
                            "runtime_config": {"parameters": params}}
    if args.experiment:
        body["experiment_id"] = _experiment_id(api, kfp_token, args.experiment, args.namespace)
    run = _request(f"{api}/runs", kfp_token, "POST", body)
    run_id = run["run_id"]
    print(f"KFP run {run_id} started for trial {args.name}", file=sys.stderr, flush=True)
    while True:
        run = _request(f"{api}/runs/{urllib.parse.quote(run_id)}", _read(args.kfp_token_file))
        state = str(run.get("state", ""))
        if state in TERMINAL:
            break
        time.sleep(args.poll)
    if state != "SUCCEEDED":
        print(f"KFP run {run_id} ended {state}", file=sys.stderr)
        return 1
    sa_token = _read(os.path.join(args.sa_dir, "token"))
    ca = os.path.join(args.sa_dir, "ca.crt")
    namespace = args.namespace or _read(os.path.join(args.sa_dir, "namespace")) or "default"
    metrics: dict[str, float] = {}
    for task in (run.get("run_details") or {}).get("task_details") or []:
        pod = task.get("pod_name")
        if not pod:
            continue
        url = (f"{args.kubernetes.rstrip('/')}/api/v1/namespaces/{namespace}/pods/"
               f"{urllib.parse.quote(pod)}/log?container=main")
        try:
            log = _request(url, sa_token, ca=ca if os.path.exists(ca) else None, text=True)
        except OSError as e:
            print(f"cannot read the log of {pod}: {e}", file=sys.stderr)
            continue
        metrics.update(metrics_in_log(log))
    if not metrics:
        print(f"KFP run {run_id} reported no metrics", file=sys.stderr)
        return 1
    for name, value in sorted(metrics.items()):
        print(f"{name}={value!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
