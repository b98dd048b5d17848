"""Where a notebook's served models stand on the cluster: their InferenceServices' state and URL.

The pipeline's deploy task (:mod:`kale_py.serving.deploy`) creates an InferenceService per
``serve:VAR`` model; this reads them back through the Kubernetes API, with the credentials
kale_py uses everywhere (the pod's service account, else the kubeconfig as the official
``kubernetes`` client loads it), for ``nb2pipe serve --cluster`` and the panel.
"""

from __future__ import annotations

from typing import Any

from kale_py.diagnostics import SubmitError, error
from kale_py.graph import Pipeline
from kale_py.kubeflow.cleanup import CREATED_BY
from kale_py.kubeflow.client import kubernetes_configuration
from kale_py.serving import served_services
from kale_py.serving.deploy import infer_url

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


def service_status(pipeline: Pipeline, namespace: str | None = None) -> dict[str, Any]:
    """``{"namespace", "services": [{variable, name, state, url, message}]}``; ``state`` is
    ready, not ready, not deployed (no such InferenceService yet) or foreign (one kale_py
    did not create has that name)."""
    from kubernetes import client  # type: ignore[import-untyped]

    config, default_namespace = kubernetes_configuration("read the InferenceServices from")
    namespace = namespace or pipeline.settings.namespace or default_namespace
    if not namespace:
        raise SubmitError(error("KF105", "no namespace to look for the InferenceServices in: "
                                "pass --namespace (your Kubeflow profile) or set it in the "
                                "notebook metadata or the kubeconfig's context"))
    api = client.CustomObjectsApi(client.ApiClient(config))
    services = []
    for served in served_services(pipeline):
        entry: dict[str, Any] = {"variable": served["variable"], "name": served["name"],
                                 "state": "not deployed", "url": "", "message": ""}
        try:
            found = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                     served["name"])
        except client.ApiException as e:
            if e.status != 404 or "page not found" in str(e.body or ""):
                raise _api_error(e, namespace, config.host) from None
            entry["message"] = ("no InferenceService yet: it is made when a run of the "
                                "pipeline ends (nb2pipe submit)")
        except OSError as e:  # urllib3's connection errors are OSErrors
            raise SubmitError(error("KF201", f"cannot reach the Kubernetes API at "
                                    f"{config.host}: {e}")) from None
        else:
            entry.update(_state(found, served["name"]))
        services.append(entry)
    return {"namespace": namespace, "services": services}


def _state(service: dict[str, Any], name: str) -> dict[str, str]:
    labels = (service.get("metadata") or {}).get("labels") or {}
    if labels.get(CREATED_BY[0]) != CREATED_BY[1]:
        return {"state": "foreign", "message": "an InferenceService of this name that kale_py "
                "did not create: the pipeline leaves it alone (set serving.name)"}
    status = service.get("status") or {}
    conditions = status.get("conditions") or []
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    if ready.get("status") == "True":
        return {"state": "ready", "url": infer_url(service, name), "message": ""}
    return {"state": "not ready", "url": infer_url(service, name),
            "message": ready.get("message") or ready.get("reason") or "KServe has not "
            "reported it ready yet"}


def _api_error(e: Any, namespace: str, host: str) -> SubmitError:
    if e.status in (401, 403):
        return SubmitError(error("KF202", f"the Kubernetes API at {host} refused to read the "
                                 f"InferenceServices in {namespace} ({e.status} {e.reason})"))
    if e.status == 404:
        return SubmitError(error("KF203", f"no KServe API at {host} (404): is KServe "
                                 "installed in this cluster?"))
    return SubmitError(error("KF201", f"the Kubernetes API at {host} answered {e.status} "
                             f"{e.reason} reading the InferenceServices"))
