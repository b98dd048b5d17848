"""A fake Kubernetes API server on 127.0.0.1, for the tests of :mod:`kale_py.cluster`.

It stands in for a Kubernetes API server because none can run on this machine (no cluster, no
Docker). It answers the real API paths with the real JSON shapes, for the calls that notebook
discovery makes:

* ``GET /api/v1/namespaces/{ns}/pods/{name}``
* ``GET /api/v1/namespaces/{ns}/persistentvolumeclaims/{name}``
* ``GET /api/v1/namespaces/{ns}/secrets/{name}`` (seeded by tests: image pull secrets)
* ``POST /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots`` (``generateName``)
* ``GET /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{name}``
* ``GET /api/v1/namespaces/{ns}/pods?labelSelector=KEY=VALUE`` (a list, one equality selector)
* ``DELETE`` of a claim or a snapshot (answers the deleted object, as the API server does)
* ``GET /apis/kubeflow.org/v1alpha1/namespaces/{ns}/poddefaults`` (Kubeflow's PodDefault list)
* KServe ``InferenceService``s (``/apis/serving.kserve.io/v1beta1/namespaces/{ns}/
  inferenceservices``), ``Secret``s and ``ServiceAccount``s: create (``POST``, 409 when the name
  is taken), read, replace (``PUT``, 409 when ``metadata.resourceVersion`` is stale); each write
  sets ``resourceVersion``, and an InferenceService's spec change bumps its ``generation``. An
  InferenceService reads Ready (``status.url``, ``observedGeneration``) from its
  ``isvc_ready_after``-th read after a write on, as KServe's controller would report it; with
  ``isvc_failure`` set it stays Ready=False with that message.

It is seeded with a Kubeflow notebook as the notebook controller creates it: the StatefulSet pod
``my-notebook-0`` (label ``notebook-name``, container ``my-notebook``, an istio-proxy sidecar), a
ReadWriteOnce workspace claim at /home/jovyan, a ReadWriteMany data claim at /data, the projected
service-account tokens (Kubernetes API and Kubeflow Pipelines) and a ``dshm`` emptyDir.

Errors are answered as the API server does: ``Status`` objects (401 without the right bearer
token, 403 for the ``(verb, resource)`` pairs in ``forbidden``, 404 for missing objects), and
a plain ``404 page not found`` for an API group that is not installed (``snapshot_api=False``).
A snapshot answers ``readyToUse: false`` to its first ``ready_after`` GETs, then true; with
``snapshot_error`` set, its status carries that error for ``error_polls`` GETs (None: always).
Every request is recorded: method, path, headers, body.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import ssl
import subprocess
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Json = dict[str, Any]

NAMESPACE = "kubeflow-user-example-com"
NOTEBOOK = "my-notebook"
POD_NAME = f"{NOTEBOOK}-0"
IMAGE = "kubeflownotebookswg/jupyter-scipy:v1.9.0"
SERVICE_ACCOUNT = "default-editor"
WORKSPACE_CLAIM = f"{NOTEBOOK}-workspace"
DATA_CLAIM = "shared-data"
NODE = "gke-kubeflow-default-pool-1a2b3c4d-x7k2"
SNAPSHOT_PREFIX = "/apis/snapshot.storage.k8s.io/v1/namespaces/"


def service_account_token(namespace: str = NAMESPACE, name: str = SERVICE_ACCOUNT) -> str:
    """A token shaped like a bound service-account JWT (the signature is not real)."""
    def part(data: Json) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"aud": ["https://kubernetes.default.svc.cluster.local"], "exp": 1893456000,
              "iss": "https://kubernetes.default.svc.cluster.local",
              "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}},
              "sub": f"system:serviceaccount:{namespace}:{name}"}
    return f"{part({'alg': 'RS256', 'kid': 'fake'})}.{part(claims)}.c2lnbmF0dXJl"


TOKEN = service_account_token()


def pod_service_account(directory: Path, token: str = TOKEN) -> tuple[str, str]:
    """A pod's service-account folder (``token``, ``namespace``, ``ca.crt``) and the API
    server's TLS pair for :class:`FakeKubernetes`: a self-signed certificate for 127.0.0.1,
    made with openssl, which is also the CA the pod trusts."""
    directory.mkdir(parents=True)
    key = directory.parent / f"{directory.name}-apiserver-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=kubernetes", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(directory / "ca.crt")],
                   check=True, capture_output=True)
    (directory / "token").write_text(token)
    (directory / "namespace").write_text(NAMESPACE)
    return str(directory / "ca.crt"), str(key)


def notebook_pod() -> Json:
    """The pod of the StatefulSet ``my-notebook``, as the Kubeflow notebook controller makes it."""
    labels = {"app": NOTEBOOK, "notebook-name": NOTEBOOK, "statefulset": NOTEBOOK,
              "statefulset.kubernetes.io/pod-name": POD_NAME, "access-ml-pipeline": "true",
              "controller-revision-hash": f"{NOTEBOOK}-5c8d9f7b6d"}
    notebook = {
        "name": NOTEBOOK, "image": IMAGE, "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "NB_PREFIX", "value": f"/notebook/{NAMESPACE}/{NOTEBOOK}"}],
        "ports": [{"containerPort": 8888, "name": "notebook-port", "protocol": "TCP"}],
        "resources": {"limits": {"cpu": "600m", "memory": "1288490188800m"},
                      "requests": {"cpu": "500m", "memory": "1Gi"}},
        "volumeMounts": [
            {"mountPath": "/dev/shm", "name": "dshm"},
            {"mountPath": "/home/jovyan", "name": WORKSPACE_CLAIM},
            {"mountPath": "/data", "name": DATA_CLAIM},
            {"mountPath": "/var/run/secrets/kubeflow/pipelines", "name": "volume-kf-pipeline-token",
             "readOnly": True},
            {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
             "name": "kube-api-access-x7k2p", "readOnly": True}],
        "workingDir": "/home/jovyan",
    }
    sidecar = {
        "name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.22.1",
        "args": ["proxy", "sidecar", "--domain", f"{NAMESPACE}.svc.cluster.local"],
        "volumeMounts": [
            {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
            {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
            {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
            {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
            {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
             "name": "kube-api-access-x7k2p", "readOnly": True}],
    }
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": POD_NAME, "generateName": f"{NOTEBOOK}-", "namespace": NAMESPACE,
            "labels": labels, "uid": "0b0c4e5e-35a1-4f57-9d62-7bc1f3c8a201",
            "annotations": {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                 "name": NOTEBOOK, "controller": True,
                                 "uid": "5f0e2a7c-1d7e-4d1b-a7a5-2b1d4f1c9e10"}]},
        "spec": {
            "containers": [notebook, sidecar],
            "hostname": POD_NAME, "nodeName": NODE, "serviceAccountName": SERVICE_ACCOUNT,
            "securityContext": {"fsGroup": 100},
            "volumes": [
                {"name": "workload-socket", "emptyDir": {}},
                {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
                {"name": "istio-token", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200,
                                             "path": "istio-token"}}]}},
                {"name": "istiod-ca-cert", "configMap": {"defaultMode": 420,
                                                         "name": "istio-ca-root-cert"}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                {"name": WORKSPACE_CLAIM, "persistentVolumeClaim": {"claimName": WORKSPACE_CLAIM}},
                {"name": DATA_CLAIM, "persistentVolumeClaim": {"claimName": DATA_CLAIM}},
                {"name": "volume-kf-pipeline-token", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"audience": "pipelines.kubeflow.org",
                                             "expirationSeconds": 7200, "path": "token"}}]}},
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                        "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}},
            ]},
        "status": {"phase": "Running", "podIP": "10.8.2.17", "hostIP": "10.128.0.5",
                   "qosClass": "Burstable"},
    }


def claim(name: str, access_mode: str, size: str, storage_class: str) -> Json:
    """A bound PersistentVolumeClaim."""
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": str(uuid.uuid4()),
                     "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                     "volume.kubernetes.io/storage-provisioner":
                                         "pd.csi.storage.gke.io"},
                     "finalizers": ["kubernetes.io/pvc-protection"]},
        "spec": {"accessModes": [access_mode], "resources": {"requests": {"storage": size}},
                 "storageClassName": storage_class, "volumeMode": "Filesystem",
                 "volumeName": f"pvc-{uuid.uuid4()}"},
        "status": {"phase": "Bound", "accessModes": [access_mode], "capacity": {"storage": size}},
    }


def _seed_pods() -> dict[tuple[str, str], Json]:
    return {(NAMESPACE, POD_NAME): notebook_pod()}


def _seed_claims() -> dict[tuple[str, str], Json]:
    return {(NAMESPACE, WORKSPACE_CLAIM): claim(WORKSPACE_CLAIM, "ReadWriteOnce", "10Gi",
                                                "standard-rwo"),
            (NAMESPACE, DATA_CLAIM): claim(DATA_CLAIM, "ReadWriteMany", "100Gi", "nfs-rwx")}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeKubernetes:
    """The API server's state; ``url`` is where it listens once started."""

    token: str = TOKEN
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    snapshot_api: bool = True
    ready_after: int = 2
    snapshot_error: str | None = None
    error_polls: int | None = None
    tls: tuple[str, str] | None = None  # (certificate file, key file)
    pods: dict[tuple[str, str], Json] = field(default_factory=_seed_pods)
    claims: dict[tuple[str, str], Json] = field(default_factory=_seed_claims)
    snapshots: dict[tuple[str, str], Json] = field(default_factory=dict)
    poddefaults: dict[tuple[str, str], Json] = field(default_factory=dict)
    secrets: dict[tuple[str, str], Json] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], Json] = field(default_factory=dict)
    experiments: dict[tuple[str, str], Json] = field(default_factory=dict)
    inference_services: dict[tuple[str, str], Json] = field(default_factory=dict)
    service_accounts: dict[tuple[str, str], Json] = field(default_factory=dict)
    isvc_ready_after: int = 1
    isvc_failure: str | None = None
    ingress_domain: str = "kubeflow.example.com"
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    _polls: dict[tuple[str, str], int] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> FakeKubernetes:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                fake._handle(self)

            def do_DELETE(self) -> None:
                fake._handle(self)

            def do_PUT(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def calls(self, method: str, path_start: str = "/") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_start)]

    # --- request handling -------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        # header names are case-insensitive: the official client sends "authorization"
        headers = {k.title(): v for k, v in h.headers.items()}
        recorded = Recorded(h.command, h.path, headers, h.rfile.read(length))
        self.requests.append(recorded)
        status, answer = self._answer(recorded)
        text = answer if isinstance(answer, str) else None
        data = (text if text is not None else json.dumps(answer)).encode()
        h.send_response(status)
        h.send_header("Content-Type",
                      "application/json" if text is None else "text/plain; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, r: Recorded) -> tuple[int, Json | str]:
        if r.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        path, _, query = r.path.partition("?")
        parts = path.strip("/").split("/")
        listed = self._list_or_delete(r.method, parts, urllib.parse.parse_qs(query))
        if listed is not None:
            return listed
        created = self._create(r, parts)
        if created is not None:
            return created
        written = self._write_object(r, parts)
        if written is not None:
            return written
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and r.method == "GET":
            store = {"pods": self.pods, "persistentvolumeclaims": self.claims,
                     "secrets": self.secrets}.get(parts[4])
            if store is not None:
                return self._get(store, parts[3], parts[4], parts[5], "")
        if r.path.startswith(SNAPSHOT_PREFIX) and parts[5:6] == ["volumesnapshots"]:
            if not self.snapshot_api:
                return 404, "404 page not found\n"
            group = "snapshot.storage.k8s.io"
            if r.method == "POST" and len(parts) == 6:
                return self._create_snapshot(parts[4], r)
            if r.method == "GET" and len(parts) == 7:
                found = self._get(self.snapshots, parts[4], "volumesnapshots", parts[6], group)
                if found[0] != 200 or (parts[4], parts[6]) not in self._polls:
                    return found  # a snapshot seeded by a test stays as it was given
                return 200, self._advance(parts[4], parts[6])
        return 404, "404 page not found\n"

    def _create(self, r: Recorded, parts: list[str]) -> tuple[int, Json] | None:
        """ConfigMaps (create, replace) and Katib Experiments (create)."""
        if parts[:3] == ["api", "v1", "namespaces"] and parts[4:5] == ["configmaps"]:
            store, namespace, kind, group = self.config_maps, parts[3], "configmaps", ""
            name = parts[5] if len(parts) == 6 else None
        elif parts[:4] == ["apis", "kubeflow.org", "v1beta1", "namespaces"] \
                and parts[5:] == ["experiments"]:
            store, namespace, kind, group = self.experiments, parts[4], "experiments", \
                "kubeflow.org"
            name = None
        else:
            return None
        if ("create", kind) in self.forbidden:
            return 403, _forbidden("create", kind, group, namespace, None)
        body = r.json()
        key = (namespace, body["metadata"]["name"])
        if r.method == "POST" and name is None:
            if key in store:
                return 409, _status(409, "AlreadyExists", f'{kind} "{key[1]}" already exists')
            store[key] = body
            return 201, body
        if r.method == "PUT" and name == key[1] and key in store:
            store[key] = body
            return 200, body
        return None

    def _write_object(self, r: Recorded, parts: list[str]) -> tuple[int, Json] | None:
        """InferenceServices, Secrets and ServiceAccounts: create, read, replace."""
        if parts[:4] == ["apis", "serving.kserve.io", "v1beta1", "namespaces"] \
                and parts[5:6] == ["inferenceservices"]:
            store, namespace, kind, group = (self.inference_services, parts[4],
                                             "inferenceservices", "serving.kserve.io")
            name = parts[6] if len(parts) == 7 else None
        elif parts[:3] == ["api", "v1", "namespaces"] and parts[4:5] in (["secrets"],
                                                                         ["serviceaccounts"]):
            kind, namespace, group = parts[4], parts[3], ""
            store = self.secrets if kind == "secrets" else self.service_accounts
            name = parts[5] if len(parts) == 6 else None
            if r.method == "GET" and name is None:
                return None
        else:
            return None
        verb = {"GET": "get", "POST": "create", "PUT": "update"}.get(r.method)
        if verb is None:
            return None
        if (verb, kind) in self.forbidden:
            return 403, _forbidden(verb, kind, group, namespace, name)
        if r.method == "GET" and name is not None:
            found = self._get(store, namespace, kind, name, group)
            if found[0] == 200 and kind == "inferenceservices":
                return 200, self._reconcile(namespace, name)
            return found
        body = r.json()
        meta = body.setdefault("metadata", {})
        key = (namespace, meta.get("name", ""))
        current = store.get(key)
        if r.method == "POST" and name is None:
            if current is not None:
                return 409, _status(409, "AlreadyExists", f'{kind} "{key[1]}" already exists')
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), generation=1,
                        resourceVersion=str(random.randint(1000, 99999)))
        elif r.method == "PUT" and name == key[1]:
            if current is None:
                return 404, _status(404, "NotFound", f'{kind} "{name}" not found')
            if meta.get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on {kind} '
                                    f'"{name}": the object has been modified')
            changed = body.get("spec") != current.get("spec")
            meta.update(uid=current["metadata"]["uid"],
                        generation=current["metadata"]["generation"] + int(changed),
                        resourceVersion=str(int(current["metadata"]["resourceVersion"]) + 1))
            body["status"] = current.get("status", {})
        else:
            return None
        store[key] = body
        if kind == "inferenceservices":
            self._polls[key] = 0
        return (201 if r.method == "POST" else 200), body

    def _reconcile(self, namespace: str, name: str) -> Json:
        """The InferenceService as KServe's controller reports it after one more read."""
        key = (namespace, name)
        service = self.inference_services[key]
        self._polls[key] = self._polls.get(key, 0) + 1
        generation = service["metadata"]["generation"]
        if self.isvc_failure is not None:
            service["status"] = {"conditions": [{"type": "Ready", "status": "False",
                                                 "reason": "RevisionFailed",
                                                 "message": self.isvc_failure}]}
        elif self._polls[key] >= self.isvc_ready_after:
            url = f"http://{name}.{namespace}.{self.ingress_domain}"
            service["status"] = {
                "observedGeneration": generation, "url": url,
                "address": {"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"},
                "conditions": [{"type": "PredictorReady", "status": "True"},
                               {"type": "Ready", "status": "True"}]}
        else:
            service.setdefault("status", {})["conditions"] = [
                {"type": "Ready", "status": "False", "reason": "PredictorNotReady"}]
        return service

    def _list_or_delete(self, method: str, parts: list[str],
                        query: dict[str, list[str]]) -> tuple[int, Json] | None:
        if method == "GET" and parts[:3] == ["api", "v1", "namespaces"] and parts[4:] == ["pods"]:
            key, _, value = (query.get("labelSelector") or ["="])[0].partition("=")
            items = [pod for (ns, _), pod in self.pods.items() if ns == parts[3]
                     and (not key or pod["metadata"].get("labels", {}).get(key) == value)]
            return 200, {"kind": "PodList", "apiVersion": "v1", "items": items}
        if method == "GET" and parts[:4] == ["apis", "kubeflow.org", "v1alpha1", "namespaces"] \
                and parts[5:] == ["poddefaults"]:
            if ("list", "poddefaults") in self.forbidden:
                return 403, _forbidden("list", "poddefaults", "kubeflow.org", parts[4], None)
            items = [d for (ns, _), d in self.poddefaults.items() if ns == parts[4]]
            return 200, {"kind": "PodDefaultList", "apiVersion": "kubeflow.org/v1alpha1",
                         "items": items}
        if method != "DELETE":
            return None
        if parts[:3] == ["api", "v1", "namespaces"] and parts[4:5] == ["persistentvolumeclaims"]:
            store, resource, group = self.claims, "persistentvolumeclaims", ""
        elif parts[:2] == ["apis", "snapshot.storage.k8s.io"] and parts[5:6] == ["volumesnapshots"]:
            store, resource, group = self.snapshots, "volumesnapshots", "snapshot.storage.k8s.io"
        else:
            return None
        namespace, name = (parts[3], parts[5]) if not group else (parts[4], parts[6])
        if ("delete", resource) in self.forbidden:
            return 403, _forbidden("delete", resource, group, namespace, name)
        found = self._get(store, namespace, resource, name, group)
        if found[0] == 200:
            del store[(namespace, name)]
        return found

    def _get(self, store: dict[tuple[str, str], Json], namespace: str, resource: str, name: str,
             group: str) -> tuple[int, Json]:
        if ("get", resource) in self.forbidden:
            return 403, _forbidden("get", resource, group, namespace, name)
        if (namespace, name) not in store:
            return 404, _status(404, "NotFound", f'{resource}{"." + group if group else ""} '
                                f'"{name}" not found', {"name": name, "kind": resource})
        return 200, store[(namespace, name)]

    def _create_snapshot(self, namespace: str, r: Recorded) -> tuple[int, Json]:
        group = "snapshot.storage.k8s.io"
        if ("create", "volumesnapshots") in self.forbidden:
            return 403, _forbidden("create", "volumesnapshots", group, namespace, None)
        body = r.json()
        metadata = body.get("metadata") or {}
        if body.get("kind") != "VolumeSnapshot" or body.get("apiVersion") != f"{group}/v1":
            return 400, _status(400, "BadRequest", "the object is not a VolumeSnapshot")
        if not (metadata.get("name") or metadata.get("generateName")):
            return 422, _status(422, "Invalid", "VolumeSnapshot is invalid: metadata.name: "
                                "Required value: name or generateName is required")
        suffix = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        name = metadata.get("name") or metadata["generateName"] + suffix
        snapshot = copy.deepcopy(body)
        snapshot["metadata"] = {**metadata, "name": name, "namespace": namespace,
                                "uid": str(uuid.uuid4()), "resourceVersion": "48213",
                                "generation": 1, "creationTimestamp": "2026-11-30T10:00:00Z"}
        self.snapshots[(namespace, name)] = snapshot
        self._polls[(namespace, name)] = 0
        return 201, snapshot

    def _advance(self, namespace: str, name: str) -> Json:
        """The snapshot as the snapshot controller leaves it after one more poll."""
        key = (namespace, name)
        self._polls[key] += 1
        polls, snapshot = self._polls[key], self.snapshots[key]
        source = snapshot["spec"]["source"]["persistentVolumeClaimName"]
        content = f"snapcontent-{snapshot['metadata']['uid']}"
        if self.snapshot_error and (self.error_polls is None or polls <= self.error_polls):
            snapshot["status"] = {"boundVolumeSnapshotContentName": content, "readyToUse": False,
                                  "error": {"message": self.snapshot_error,
                                            "time": "2026-11-30T10:00:02Z"}}
        elif polls <= self.ready_after:
            snapshot["status"] = {"boundVolumeSnapshotContentName": content, "readyToUse": False}
        else:
            capacity = self.claims.get((namespace, source), {}).get("status", {}).get(
                "capacity", {}).get("storage", "1Gi")
            snapshot["status"] = {"boundVolumeSnapshotContentName": content,
                                  "creationTime": "2026-11-30T10:00:03Z", "readyToUse": True,
                                  "restoreSize": capacity}
        return snapshot


def _status(code: int, reason: str, message: str, details: Json | None = None) -> Json:
    status: Json = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": message, "reason": reason, "code": code}
    if details:
        status["details"] = details
    return status


def _forbidden(verb: str, resource: str, group: str, namespace: str, name: str | None) -> Json:
    full = f"{resource}.{group}" if group else resource
    subject = f"{full} \"{name}\"" if name else full
    message = (f'{subject} is forbidden: User "system:serviceaccount:{namespace}:'
               f'{SERVICE_ACCOUNT}" cannot {verb} resource "{resource}" in API group "{group}" '
               f'in the namespace "{namespace}"')
    details = {"kind": resource, **({"name": name} if name else {}),
               **({"group": group} if group else {})}
    return _status(403, "Forbidden", message, details)
