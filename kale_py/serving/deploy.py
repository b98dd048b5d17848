"""The deploy task: creates or updates the KServe InferenceService of a ``serve:VAR`` model.

Runs in the pipeline after the export task (:mod:`kale_py.serving.export`), from the step
runtime (standard library only). It receives the URI of the exported ``model`` artifact and
its format, and, in the pod, with the pipeline's service account:

1. picks the storage: the artifact's URI (``minio://`` read as ``s3://``, KServe's scheme for
   the same bucket). Reading it needs credentials; unless the notebook names a service account
   (``serving.service_account``), the task makes one, ``kale-py-serving``, whose secret
   ``kale-py-serving-s3`` copies the keys of KFP's own ``mlpipeline-minio-artifact`` secret
   and carries KServe's S3 annotations (endpoint ``minio-service.kubeflow:9000`` unless
   ``serving.s3_endpoint`` says otherwise);
2. writes the InferenceService (``serving.kserve.io/v1beta1``): a built-in runtime
   (``modelFormat`` sklearn, xgboost or lightgbm, Open Inference Protocol V2), or kale_py's
   Python predictor in the given image (:mod:`kale_py.serving.predictor`), whose runtime
   SHA-256 and model digest are written into the InferenceService itself. An
   InferenceService of that name that kale_py did not create is left alone (an error);
3. waits until KServe reports it Ready for this generation, and writes its URL (the V2
   ``infer`` endpoint) as the task's output parameter ``url``.

Outside a pod (``kfp.local``) there is no cluster: the task prints the InferenceService it
would write and succeeds with an empty ``url``. ``$KALE_PY_KUBERNETES_API`` and
``$KALE_PY_SERVICE_ACCOUNT_DIR`` override the in-cluster API address and service-account
directory; ``$KALE_PY_DEPLOY_POLL`` the seconds between readiness checks (5).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any

# the step runtime carries the exit task's module too: the same pod, the same API
from kale_py.kubeflow.cleanup import CREATED_BY, SA_DIR, in_cluster_api

GROUP_VERSION = "serving.kserve.io/v1beta1"
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"
SERVING_ACCOUNT = "kale-py-serving"
SERVING_SECRET = "kale-py-serving-s3"
KFP_ARTIFACT_SECRET = "mlpipeline-minio-artifact"
DEFAULT_S3_ENDPOINT = "minio-service.kubeflow:9000"
PREDICTOR_PORT = 8080
BUILT_IN = ("sklearn", "xgboost", "lightgbm")


class DeployError(Exception):
    """What went wrong, in one line for the task's log."""


def storage_uri(uri: str) -> str:
    """The artifact's URI as KServe's storage initializer reads it."""
    return "s3://" + uri[len("minio://"):] if uri.startswith("minio://") else uri


def inference_service(name: str, namespace: str, fmt: str, storage: str, *,
                      service_account: str | None = None, image: str | None = None,
                      runtime_sha: str = "", model_digest: str = "",
                      labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The InferenceService serving the exported model at ``storage``."""
    predictor: dict[str, Any]
    if fmt in BUILT_IN:
        predictor = {"model": {"modelFormat": {"name": fmt}, "protocolVersion": "v2",
                               "storageUri": storage}}
    else:
        if not image:
            raise DeployError("the Python predictor needs an image")
        from kale_py.serving.predictor import PREDICTOR_BOOTSTRAP

        predictor = {"containers": [{
            "name": "kserve-container",
            "image": image,
            "command": ["python3", "-c", PREDICTOR_BOOTSTRAP, "/mnt/models", name,
                        runtime_sha, model_digest],
            "env": [{"name": "STORAGE_URI", "value": storage}],
            "ports": [{"containerPort": PREDICTOR_PORT, "protocol": "TCP"}],
        }]}
    if service_account:
        predictor["serviceAccountName"] = service_account
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {CREATED_BY[0]: CREATED_BY[1], **(labels or {})}},
        "spec": {"predictor": predictor},
    }


def infer_url(service: dict[str, Any], name: str) -> str:
    """The V2 ``infer`` endpoint of a ready InferenceService."""
    status = service.get("status") or {}
    base = status.get("url") or (status.get("address") or {}).get("url") or ""
    return f"{base.rstrip('/')}/v2/models/{name}/infer" if base else ""


def _arguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kale_py deploy")
    p.add_argument("--name", required=True)
    p.add_argument("--variable", required=True)
    p.add_argument("--model-uri", required=True)
    p.add_argument("--format", required=True)
    p.add_argument("--model-digest", default="")
    p.add_argument("--runtime-sha", default="")
    p.add_argument("--image", help="the Python predictor's image")
    p.add_argument("--service-account")
    p.add_argument("--s3-endpoint", default=DEFAULT_S3_ENDPOINT)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--run-id", default="")
    p.add_argument("--url-out", required=True)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    sa_dir = os.environ.get("KALE_PY_SERVICE_ACCOUNT_DIR", SA_DIR)
    api = os.environ.get("KALE_PY_KUBERNETES_API") or in_cluster_api()
    storage = storage_uri(args.model_uri)
    labels = {"pipelines.kubeflow.org/run-id": args.run_id} if _label_value(args.run_id) else {}
    if not api or not os.path.isfile(os.path.join(sa_dir, "token")):
        service = inference_service(
            args.name, "default", args.format, storage, service_account=args.service_account,
            image=args.image, runtime_sha=args.runtime_sha, model_digest=args.model_digest,
            labels=labels)
        print("kale_py deploy: not in a Kubernetes pod, so no InferenceService is made; on "
              "the cluster it would be:\n" + json.dumps(service, indent=2))
        _write(args.url_out, "")
        return 0
    with open(os.path.join(sa_dir, "token")) as f:
        token = f.read().strip()
    with open(os.path.join(sa_dir, "namespace")) as f:
        namespace = f.read().strip()
    ca = os.path.join(sa_dir, "ca.crt")
    kube = Kube(api, token, ca if os.path.isfile(ca) else None)
    try:
        account = args.service_account
        if account is None and storage.startswith("s3://") and args.model_uri.startswith(
                "minio://"):
            account = ensure_artifact_reader(kube, namespace, args.s3_endpoint)
        service = inference_service(
            args.name, namespace, args.format, storage, service_account=account,
            image=args.image, runtime_sha=args.runtime_sha, model_digest=args.model_digest,
            labels=labels)
        generation = apply(kube, service)
        print(f"kale_py deploy: InferenceService {args.name} in {namespace} "
              f"({args.format} runtime, model {storage}); waiting until it is ready",
              flush=True)
        ready = wait_ready(kube, namespace, args.name, generation, args.timeout)
    except DeployError as exc:
        print(f"kale_py deploy: {exc}", file=sys.stderr)
        return 1
    url = infer_url(ready, args.name)
    print(f"kale_py deploy: serving {args.variable} at {url}")
    _write(args.url_out, url)
    return 0


def ensure_artifact_reader(kube: Kube, namespace: str, endpoint: str) -> str:
    """A service account that reads KFP's artifact bucket, made from KFP's own keys."""
    base = f"/api/v1/namespaces/{namespace}"
    status, source = kube.request("GET", f"{base}/secrets/{KFP_ARTIFACT_SECRET}")
    if status != 200:
        raise DeployError(
            f"cannot read the secret {KFP_ARTIFACT_SECRET} (HTTP {status}), whose keys would let "
            "KServe read the model from the pipeline's artifact store: name a service account "
            "that can read it in the notebook metadata (serving.service_account)")
    data = source.get("data") or {}
    if not data.get("accesskey") or not data.get("secretkey"):
        raise DeployError(f"the secret {KFP_ARTIFACT_SECRET} has no accesskey/secretkey: name "
                          "a service account that can read the artifact store "
                          "(serving.service_account)")
    https = "1" if endpoint.startswith("https://") else "0"
    host = endpoint.split("://", 1)[-1]
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": SERVING_SECRET, "namespace": namespace,
                     "labels": {CREATED_BY[0]: CREATED_BY[1]},
                     "annotations": {"serving.kserve.io/s3-endpoint": host,
                                     "serving.kserve.io/s3-usehttps": https,
                                     "serving.kserve.io/s3-verifyssl": https}},
        "data": {"AWS_ACCESS_KEY_ID": data["accesskey"],
                 "AWS_SECRET_ACCESS_KEY": data["secretkey"]},
    }
    _create_or_replace(kube, f"{base}/secrets", secret)
    account = {"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": SERVING_ACCOUNT, "namespace": namespace,
                            "labels": {CREATED_BY[0]: CREATED_BY[1]}},
               "secrets": [{"name": SERVING_SECRET}]}
    _create_or_replace(kube, f"{base}/serviceaccounts", account)
    return SERVING_ACCOUNT


def _create_or_replace(kube: Kube, collection: str, body: dict[str, Any]) -> None:
    name = body["metadata"]["name"]
    status, found = kube.request("POST", collection, body)
    if status == 409:
        status, current = kube.request("GET", f"{collection}/{name}")
        if status == 200:
            body["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
            status, found = kube.request("PUT", f"{collection}/{name}", body)
    if status not in (200, 201):
        raise DeployError(f"cannot write the {body['kind']} {name} that lets KServe read the "
                          f"model (HTTP {status}: {_message(found)}): name a service account "
                          "that can read the artifact store in the notebook metadata "
                          "(serving.service_account)")


def apply(kube: Kube, service: dict[str, Any]) -> int:
    """Create the InferenceService, or replace the one kale_py made before; its generation."""
    meta = service["metadata"]
    collection = ISVC_PATH.format(ns=meta["namespace"])
    for _ in range(5):  # another writer between our read and our write: read again
        status, current = kube.request("GET", f"{collection}/{meta['name']}")
        if status == 404:
            status, written = kube.request("POST", collection, service)
        elif status == 200:
            labels = (current.get("metadata") or {}).get("labels") or {}
            if labels.get(CREATED_BY[0]) != CREATED_BY[1]:
                raise DeployError(
                    f"an InferenceService {meta['name']} that kale_py did not create exists in "
                    f"{meta['namespace']}: it is left as it is. Give the served model another "
                    "name (serving.name in the notebook metadata)")
            meta["resourceVersion"] = current["metadata"].get("resourceVersion")
            status, written = kube.request("PUT", f"{collection}/{meta['name']}", service)
        else:
            raise _api_error(status, current, "read", meta)
        if status in (200, 201):
            return int((written.get("metadata") or {}).get("generation") or 1)
        if status != 409:
            raise _api_error(status, written, "write", meta)
    raise DeployError(f"InferenceService {meta['name']} kept changing while it was written")


def wait_ready(kube: Kube, namespace: str, name: str, generation: int,
               timeout: float) -> dict[str, Any]:
    """The InferenceService once KServe reports it Ready for ``generation``."""
    poll = float(os.environ.get("KALE_PY_DEPLOY_POLL") or 5)
    deadline = time.monotonic() + timeout
    path = f"{ISVC_PATH.format(ns=namespace)}/{name}"
    last = "no status yet"
    while True:
        status, service = kube.request("GET", path)
        if status != 200:
            raise _api_error(status, service, "read", {"name": name, "namespace": namespace})
        state = service.get("status") or {}
        ready = next((c for c in state.get("conditions") or [] if c.get("type") == "Ready"), None)
        current = int(state.get("observedGeneration") or 0) >= generation
        if ready is not None and current and ready.get("status") == "True":
            return dict(service)
        if ready is not None:
            last = ready.get("message") or ready.get("reason") or f"Ready={ready.get('status')}"
        if time.monotonic() >= deadline:
            raise DeployError(
                f"InferenceService {name} in {namespace} was not ready after {timeout:g} s "
                f"({last}); it is kept: see kubectl describe inferenceservice {name} -n "
                f"{namespace}")
        time.sleep(poll)


def _api_error(status: int, answer: Any, verb: str, meta: dict[str, Any]) -> DeployError:
    what = f"InferenceService {meta['name']} in {meta['namespace']}"
    if status == 404:
        return DeployError(f"no KServe API in this cluster (HTTP 404 to {verb} {what}): is "
                           "KServe installed?")
    if status in (401, 403):
        return DeployError(f"the pipeline's service account may not {verb} {what} (HTTP "
                           f"{status}: {_message(answer)})")
    return DeployError(f"cannot {verb} {what} (HTTP {status}: {_message(answer)})")


def _message(answer: Any) -> str:
    return str((answer or {}).get("message") or answer) if isinstance(answer, dict) else str(
        answer)


def _label_value(text: str) -> bool:
    return 0 < len(text) <= 63 and all(c.isalnum() or c in "-_." for c in text) \
        and text[0].isalnum() and text[-1].isalnum()


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


class Kube:
    """JSON requests to the Kubernetes API with the pod's service-account token."""

    def __init__(self, url: str, token: str, ca: str | None) -> None:
        self.url, self.token = url.rstrip("/"), token
        self.context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as answer:
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as e:
            with e:
                text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, {"message": text.decode("utf-8", "replace").strip()}
        except OSError as e:
            raise DeployError(f"cannot reach the Kubernetes API at {self.url}: {e}") from None
