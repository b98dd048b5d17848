"""``submit --tune``: the Katib manifests created through the Kubernetes API.

Credentials as everywhere in kale_py: the pod's service account inside the cluster, else the
kubeconfig as the official ``kubernetes`` client loads it (tokens, client certificates,
``exec`` plugins, OIDC). The ConfigMap is created or replaced; an Experiment of the same name
is an error (Katib does not allow changing a running experiment's search).
"""

from __future__ import annotations

from typing import Any

from kale_py.diagnostics import SubmitError, error
from kale_py.kubeflow.client import kubernetes_configuration

GROUP, VERSION, PLURAL = "kubeflow.org", "v1beta1", "experiments"


def create_katib(manifests: list[dict[str, Any]], namespace: str | None) -> dict[str, str]:
    """Create ``[ConfigMap, Experiment]``; ``{"name", "namespace"}`` of the Experiment."""
    from kubernetes import client  # type: ignore[import-untyped]

    config, default_namespace = kubernetes_configuration("create the Katib Experiment in")
    namespace = namespace or default_namespace
    if not namespace:
        raise SubmitError(error("KF105", "no namespace for the Katib Experiment: pass "
                                "--namespace (your Kubeflow profile) or set it in the "
                                "kubeconfig's context"))
    api = client.ApiClient(config)
    config_map, experiment = manifests
    config_map["metadata"]["namespace"] = experiment["metadata"]["namespace"] = namespace
    name = experiment["metadata"]["name"]
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        try:
            core.create_namespaced_config_map(namespace, config_map)
        except client.ApiException as e:
            if e.status != 409:
                raise
            core.replace_namespaced_config_map(config_map["metadata"]["name"], namespace,
                                               config_map)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, experiment)
    except client.ApiException as e:
        raise _api_error(e, name, namespace, config.host) from None
    except OSError as e:  # urllib3's connection errors are OSErrors
        raise SubmitError(error("KF201", f"cannot reach the Kubernetes API at {config.host}: "
                                f"{e}")) from None
    return {"name": name, "namespace": namespace}


def _api_error(e: Any, name: str, namespace: str, host: str) -> SubmitError:
    if e.status == 409:
        return SubmitError(error("KF210", f"a Katib Experiment {name!r} already exists in "
                                 f"{namespace}: delete it (kubectl delete experiment {name} -n "
                                 f"{namespace}) or give the pipeline another --name"))
    if e.status in (401, 403):
        return SubmitError(error("KF202", f"the Kubernetes API at {host} refused to create "
                                 f"the Katib Experiment in {namespace} ({e.status} {e.reason})"))
    if e.status == 404:
        return SubmitError(error("KF203", f"no Katib API at {host} (404): is Katib installed "
                                 "in this cluster?"))
    return SubmitError(error("KF201", f"the Kubernetes API at {host} answered {e.status} "
                             f"{e.reason} creating the Katib Experiment"))
