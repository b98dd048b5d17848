"""The Kubeflow notebook pod this code runs in: its image and volumes, for the pipeline steps.

Inside a Kubeflow notebook pod, the steps of a compiled pipeline should run in the notebook's
image with the notebook's volumes mounted at the same paths, so that code and files behave as
they do in the notebook. :func:`notebook_defaults` finds both with the Kubernetes API:

* the notebook pod (``GET pods``; its name is ``$HOSTNAME``, as in every StatefulSet pod, or
  ``$NB_POD_NAME``), its notebook container (named after the ``notebook-name`` label, else the
  first one) and that container's image;
* every PersistentVolumeClaim mounted in the notebook container (``GET persistentvolumeclaims``
  for its access modes, size and storage class);
* for each ReadWriteOnce claim, a CSI VolumeSnapshot (``create`` and ``get volumesnapshots``):
  the notebook pod still holds the claim, so step pods on other nodes could not mount it; they
  mount a claim restored from the snapshot instead (a ``clone`` volume, see
  :mod:`kale_py.kubeflow.ir`). ReadWriteMany and ReadOnlyMany claims are mounted as they are.

Off-cluster (no service-account token or no ``$KUBERNETES_SERVICE_HOST``) nothing here touches
the network: :func:`notebook_defaults` returns no defaults and :func:`list_volumes` says why.

The standard library is enough for these few calls; the ``kubernetes`` package would cost a
second of import time. API failures raise :class:`~kale_py.diagnostics.CompileError` with a
one-line message: KF201 (unreachable, or an unexpected answer), KF202 (401/403, naming the
service account and the RBAC permission it lacks), KF203 (404), KF204 (a snapshot that failed
or was not ready in time). Warnings about volumes use KF205 (info: a volume reaches the steps
as a snapshot copy), KF206 (a ReadWriteOnce volume given to the steps without a snapshot) and
KF207 (the notebook's directory is on no volume the steps mount).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .diagnostics import CompileError, Diagnostic, KalePyError, error, info, warning
from .http_errors import error_message, one_line
from .settings import Volume

Json = dict[str, Any]

#: Where the kubelet mounts the pod's service-account token, CA and namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_API = f"/apis/{SNAPSHOT_GROUP}/v1"
CREATED_BY = {"app.kubernetes.io/created-by": "kale-py"}
#: A VolumeSnapshotClass for every snapshot, when the cluster's default one is not wanted.
SNAPSHOT_CLASS_ENV = "KALE_PY_SNAPSHOT_CLASS"
REQUEST_TIMEOUT = 10.0
SHARED_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})


@dataclass(frozen=True)
class ClusterConfig:
    """How to reach the Kubernetes API, and which pod is the notebook's."""

    api_url: str
    token: str = field(repr=False)
    ca_file: str | None
    namespace: str
    pod_name: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None,
                         service_account_dir: Path | None = None) -> ClusterConfig:
        """The in-cluster configuration, as the kubelet sets it up in every pod.

        Raises :class:`CompileError` (KF201) when this is not a pod with a service account.
        """
        env = os.environ if environ is None else environ
        sa_dir = SERVICE_ACCOUNT_DIR if service_account_dir is None else service_account_dir
        host = env.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise _fail("KF201", "not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST is "
                        "not set")
        try:
            token = (sa_dir / "token").read_text().strip()
            namespace = (sa_dir / "namespace").read_text().strip()
        except OSError as e:
            raise _fail("KF201", f"cannot read the pod's service account in {sa_dir}: "
                        f"{e.strerror or e}") from None
        host = f"[{host}]" if ":" in host else host  # an IPv6 service address
        ca = sa_dir / "ca.crt"
        return cls(api_url=f"https://{host}:{env.get('KUBERNETES_SERVICE_PORT') or '443'}",
                   token=token, ca_file=str(ca) if ca.is_file() else None, namespace=namespace,
                   pod_name=env.get("NB_POD_NAME") or env.get("HOSTNAME") or socket.gethostname())

    @property
    def service_account(self) -> str:
        """The token's subject (``system:serviceaccount:NS:NAME``), as RBAC names it."""
        return _token_subject(self.token) or "the notebook pod's service account"


@dataclass(frozen=True)
class MountedClaim:
    """A PersistentVolumeClaim mounted in the notebook container."""

    name: str  # the pod's name for the volume
    claim: str
    mount_point: str
    access_modes: tuple[str, ...]
    storage_class: str | None
    size: str | None
    read_only: bool

    @property
    def shared(self) -> bool:
        """Whether pods on other nodes can mount the claim while the notebook holds it."""
        return bool(SHARED_MODES.intersection(self.access_modes))


@dataclass(frozen=True)
class SkippedVolume:
    """A volume of the notebook pod that the steps do not get, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class NotebookPod:
    """What the steps of a pipeline take from the notebook pod."""

    name: str
    namespace: str
    container: str
    image: str | None
    service_account: str | None
    node_name: str | None
    volumes: tuple[MountedClaim, ...]
    skipped: tuple[SkippedVolume, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class SnapshotOptions:
    """How ReadWriteOnce claims are snapshotted (``class_name`` None: the cluster's default)."""

    class_name: str | None = None
    timeout: float = 120.0
    poll_interval: float = 1.0


def in_cluster(environ: Mapping[str, str] | None = None,
               service_account_dir: Path | None = None) -> bool:
    """Whether this process runs in a pod that can call the Kubernetes API."""
    env = os.environ if environ is None else environ
    sa_dir = SERVICE_ACCOUNT_DIR if service_account_dir is None else service_account_dir
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and (sa_dir / "token").is_file()


# --- the notebook pod ----------------------------------------------------------------------------

def discover_notebook(config: ClusterConfig) -> NotebookPod:
    """The notebook pod ``config.pod_name``: its notebook container's image and claims.

    Raises :class:`CompileError` (KF201-KF203) when the API cannot answer.
    """
    pod = _request(config, _Call("get", "pods", config.pod_name,
                                 f"/api/v1/namespaces/{config.namespace}/pods/{config.pod_name}"))
    spec, metadata = _obj(pod, "spec"), _obj(pod, "metadata")
    container = _notebook_container(spec, _obj(metadata, "labels").get("notebook-name"))
    mounts = [m for m in container.get("volumeMounts") or [] if isinstance(m, dict)]
    claims, skipped = [], []
    for volume in spec.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        name = str(volume.get("name", ""))
        mount, reason = _claim_mount(volume, [m for m in mounts if m.get("name") == name])
        if mount is None:
            skipped.append(SkippedVolume(name, reason))
        else:
            claims.append(_mounted_claim(config, volume, mount))
    return NotebookPod(
        name=str(metadata.get("name") or config.pod_name),
        namespace=str(metadata.get("namespace") or config.namespace),
        container=str(container.get("name", "")), image=container.get("image"),
        service_account=spec.get("serviceAccountName"), node_name=spec.get("nodeName"),
        volumes=tuple(claims), skipped=tuple(skipped),
        labels={str(k): str(v) for k, v in _obj(metadata, "labels").items()},
        image_pull_secrets=tuple(str(s.get("name")) for s in spec.get("imagePullSecrets") or []
                                 if isinstance(s, dict) and s.get("name")))


def _notebook_container(spec: Json, notebook_name: object) -> Json:
    # Kubeflow names the container after the notebook; sidecars (istio-proxy) may come first.
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    for container in containers:
        if notebook_name and container.get("name") == notebook_name:
            return container
    return containers[0] if containers else {}


def _claim_mount(volume: Json, mounts: list[Json]) -> tuple[Json | None, str]:
    """The notebook container's mount of a claim volume, or why the volume is skipped."""
    if "persistentVolumeClaim" not in volume:
        return None, _skip_reason(volume)
    if not mounts:
        return None, "not mounted in the notebook container"
    whole = [m for m in mounts if not m.get("subPath") and not m.get("subPathExpr")]
    if not whole:
        # A step mounts the whole claim; a subPath mount would show other files at that path.
        return None, f"mounted with a subPath at {mounts[0].get('mountPath')}"
    return whole[0], ""


def _skip_reason(volume: Json) -> str:
    if "projected" in volume:
        sources = _obj(volume, "projected").get("sources") or []
        if any(isinstance(s, dict) and "serviceAccountToken" in s for s in sources):
            return "service-account token (projected): each step pod gets its own"
        return "projected volume"
    kinds = {"configMap": "configMap", "secret": "secret", "emptyDir": "emptyDir: scratch space "
             "of the notebook pod only", "downwardAPI": "downwardAPI"}
    for key, reason in kinds.items():
        if key in volume:
            return reason
    kind = next((k for k in volume if k != "name"), "unknown")
    return f"{kind} volume: only PersistentVolumeClaims reach the steps"


def _mounted_claim(config: ClusterConfig, volume: Json, mount: Json) -> MountedClaim:
    source = _obj(volume, "persistentVolumeClaim")
    claim = str(source.get("claimName", ""))
    pvc = _request(config, _Call(
        "get", "persistentvolumeclaims", claim,
        f"/api/v1/namespaces/{config.namespace}/persistentvolumeclaims/{claim}"))
    spec, status = _obj(pvc, "spec"), _obj(pvc, "status")
    modes = status.get("accessModes") or spec.get("accessModes") or []
    size = (_obj(status, "capacity").get("storage")
            or _obj(_obj(spec, "resources"), "requests").get("storage"))
    return MountedClaim(
        name=str(volume.get("name", "")), claim=claim, mount_point=str(mount.get("mountPath")),
        access_modes=tuple(str(m) for m in modes), storage_class=spec.get("storageClassName"),
        size=str(size) if size else None,
        read_only=bool(mount.get("readOnly") or source.get("readOnly")))


# --- volumes for the steps -----------------------------------------------------------------------

def volumes_for_pipeline(pod: NotebookPod, snapshot_rwo: bool = True, *,
                         config: ClusterConfig | None = None,
                         snapshots: SnapshotOptions | None = None,
                         diagnostics: list[Diagnostic] | None = None) -> tuple[Volume, ...]:
    """The notebook's claims as pipeline volumes, at the notebook's mount points.

    Shared claims (ReadWriteMany, ReadOnlyMany) are mounted as they are. With ``snapshot_rwo``,
    each ReadWriteOnce(Pod) claim is snapshotted and the steps mount a claim restored from the
    snapshot (``clone``); without it, the claim itself, with a warning. Findings are appended to
    ``diagnostics``. ``config`` (for the snapshots) defaults to the in-cluster configuration.
    """
    found = [] if diagnostics is None else diagnostics
    options = snapshots or SnapshotOptions()
    single = [c for c in pod.volumes if not c.shared]
    names: dict[str, str] = {}
    if snapshot_rwo and single:
        config = config or ClusterConfig.from_environment()
        # Start every snapshot before waiting for any: they are taken in parallel.
        started = {c.claim: _create_snapshot(config, c.claim, options.class_name) for c in single}
        names = {claim: _wait_for_snapshot(config, name, options)
                 for claim, name in started.items()}
    volumes = []
    for c in pod.volumes:
        if c.shared:
            volumes.append(Volume(name=c.claim, mount_point=c.mount_point, type="pvc"))
        elif c.claim in names:
            volumes.append(Volume(name=names[c.claim], mount_point=c.mount_point, type="clone",
                                  size=c.size, storage_class=c.storage_class, access_mode="rwo"))
            found.append(info("KF205", f"volume {c.claim} at {c.mount_point} is "
                              f"{'/'.join(c.access_modes)}: the steps mount a copy restored from "
                              f"VolumeSnapshot {names[c.claim]}; their writes stay in the copy"))
        elif "ReadWriteOncePod" in c.access_modes:
            found.append(warning("KF206", f"volume {c.claim} at {c.mount_point} is "
                                 "ReadWriteOncePod: no step can mount it while the notebook "
                                 "runs, so the steps do not get it (snapshot it instead)"))
        else:
            volumes.append(Volume(name=c.claim, mount_point=c.mount_point, type="pvc"))
            found.append(warning("KF206", _unshared_warning(c, pod.node_name)))
    return tuple(volumes)


def _unshared_warning(claim: MountedClaim, node: str | None) -> str:
    where = f"the notebook's node {node}" if node else "the notebook's node"
    hint = f" (node_selector kubernetes.io/hostname={node})" if node else ""
    return (f"volume {claim.claim} at {claim.mount_point} is ReadWriteOnce: steps on nodes "
            f"other than {where} cannot mount it; pin them to that node{hint} or snapshot it")


# --- snapshots -----------------------------------------------------------------------------------

def snapshot_claim(config: ClusterConfig, claim: str, snapshot_class: str | None,
                   *, timeout: float = 120.0, poll_interval: float = 1.0) -> str:
    """Take a CSI VolumeSnapshot of ``claim`` and wait until it is ready; its name.

    Raises :class:`CompileError`: KF204 if the snapshot fails or is not ready within
    ``timeout`` seconds, KF201-KF203 if the API refuses.
    """
    name = _create_snapshot(config, claim, snapshot_class)
    return _wait_for_snapshot(config, name, SnapshotOptions(snapshot_class, timeout,
                                                            poll_interval))


def _create_snapshot(config: ClusterConfig, claim: str, snapshot_class: str | None) -> str:
    spec: Json = {"source": {"persistentVolumeClaimName": claim}}
    if snapshot_class:
        spec = {"volumeSnapshotClassName": snapshot_class, **spec}
    body = {"apiVersion": f"{SNAPSHOT_GROUP}/v1", "kind": "VolumeSnapshot",
            "metadata": {"generateName": f"{claim}-kale-py-", "labels": dict(CREATED_BY)},
            "spec": spec}
    created = _request(config, _Call("create", "volumesnapshots", None,
                                     f"{SNAPSHOT_API}/namespaces/{config.namespace}/"
                                     "volumesnapshots", SNAPSHOT_GROUP), body)
    name = _obj(created, "metadata").get("name")
    if not name:
        raise _fail("KF201", f"the Kubernetes API created a VolumeSnapshot of {claim} but "
                    "answered without its name")
    return str(name)


def _wait_for_snapshot(config: ClusterConfig, name: str, options: SnapshotOptions) -> str:
    path = f"{SNAPSHOT_API}/namespaces/{config.namespace}/volumesnapshots/{name}"
    deadline = time.monotonic() + options.timeout
    last_error = None
    while True:
        status = _obj(_request(config, _Call("get", "volumesnapshots", name, path,
                                             SNAPSHOT_GROUP)), "status")
        if status.get("readyToUse") is True:
            return name
        message = _obj(status, "error").get("message")
        # The snapshot controller records conflicts it then retries in status.error as well:
        # an error is the snapshot's fate only when the next poll still shows it.
        if message and message == last_error:
            raise _fail("KF204", f"VolumeSnapshot {name} failed: {one_line(str(message))}"
                        f"{_class_hint(message)}")
        last_error = message
        if time.monotonic() >= deadline:
            why = f" (last error: {one_line(str(message))})" if message else ""
            raise _fail("KF204", f"VolumeSnapshot {name} was not ready after "
                        f"{options.timeout:g} s{why}: see kubectl describe volumesnapshot "
                        f"{name} -n {config.namespace}")
        time.sleep(options.poll_interval)


def _class_hint(message: object) -> str:
    if "snapshot class" in str(message).lower() or "snapshotclass" in str(message).lower():
        return f" (set {SNAPSHOT_CLASS_ENV} to a VolumeSnapshotClass of the claim's CSI driver)"
    return ""


# --- what the compiler and the Jupyter panel ask ------------------------------------------------

def notebook_defaults(notebook_dir: Path, *, config: ClusterConfig | None = None,
                      snapshot_rwo: bool = True, discover_volumes: bool = True,
                      snapshots: SnapshotOptions | None = None,
                      ) -> tuple[str | None, tuple[Volume, ...], list[Diagnostic]]:
    """The image and volumes for steps, when the notebook metadata sets none: the notebook pod's.

    Off-cluster (and without ``config``), ``(None, (), [])`` at once, with no network I/O.
    In a cluster, ReadWriteOnce claims are snapshotted (see :func:`volumes_for_pipeline`;
    ``$KALE_PY_SNAPSHOT_CLASS`` names the VolumeSnapshotClass). With ``discover_volumes``
    False only the image is looked up. Raises :class:`CompileError` when the API refuses.
    """
    if config is None:
        if not in_cluster():
            return None, (), []
        config = ClusterConfig.from_environment()
    pod = discover_notebook(config)
    if not discover_volumes:
        return pod.image, (), []
    options = snapshots or SnapshotOptions(class_name=os.environ.get(SNAPSHOT_CLASS_ENV) or None)
    found: list[Diagnostic] = []
    volumes = volumes_for_pipeline(pod, snapshot_rwo, config=config, snapshots=options,
                                   diagnostics=found)
    directory = str(notebook_dir.resolve())
    mounts = [v.mount_point.rstrip("/") for v in volumes]
    if not any(directory == m or directory.startswith(m + "/") for m in mounts):
        found.append(warning("KF207", f"the notebook's directory {directory} is on no volume the "
                             "steps mount: they start elsewhere and do not see its files"))
    return pod.image, volumes, found


def list_volumes(config: ClusterConfig | None = None) -> dict[str, Any]:
    """The notebook pod's image and claims as JSON for the Jupyter panel; never raises.

    Off-cluster (and without ``config``), ``in_cluster`` is False and ``message`` says why.
    """
    if config is None and not in_cluster():
        return {"in_cluster": False, "image": None, "namespace": None, "volumes": [],
                "message": "not running in a Kubernetes pod: volumes are set in the notebook "
                           "metadata"}
    try:
        config = config or ClusterConfig.from_environment()
        pod = discover_notebook(config)
    except KalePyError as e:
        return {"in_cluster": True, "image": None,
                "namespace": config.namespace if config else None, "volumes": [],
                "message": str(e)}
    volumes = [{"name": c.name, "mount_point": c.mount_point, "claim": c.claim,
                "access_modes": list(c.access_modes), "size": c.size,
                "storage_class": c.storage_class} for c in pod.volumes]
    return {"in_cluster": True, "image": pod.image, "namespace": pod.namespace,
            "volumes": volumes, "message": None}


# --- the HTTP calls ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Call:
    """One API request, described as RBAC sees it, so that errors can say what is missing."""

    verb: str
    resource: str
    name: str | None
    path: str
    group: str = ""  # the core API group


def _request(config: ClusterConfig, call: _Call, body: Json | None = None) -> Json:
    headers = {"Accept": "application/json", "Authorization": f"Bearer {config.token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    method = "POST" if call.verb == "create" else "GET"
    request = urllib.request.Request(config.api_url.rstrip("/") + call.path, data=data,
                                     headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT,
                                    context=_tls(config)) as response:
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        with e:  # closes the connection the error still holds
            raise _http_error(config, call, e.code, error_message(e)) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise _fail("KF201", f"cannot reach the Kubernetes API at {config.api_url} to "
                    f"{call.verb} {_what(call)}: {reason}") from None
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise _fail("KF201", f"the Kubernetes API at {config.api_url} did not answer "
                    f"{method} {call.path} with a JSON object")
    return answer


def _tls(config: ClusterConfig) -> ssl.SSLContext | None:
    if not config.api_url.startswith("https:"):
        return None
    return ssl.create_default_context(cafile=config.ca_file)


def _http_error(config: ClusterConfig, call: _Call, code: int, message: str) -> CompileError:
    what = _what(call)
    if code == 401:
        return _fail("KF202", f"the Kubernetes API rejected the token of {config.service_account} "
                     f"(HTTP 401) to {call.verb} {what}: the token is invalid or expired")
    if code == 403:
        resource = f"{call.resource}.{call.group}" if call.group else call.resource
        return _fail("KF202", f"{config.service_account} may not {call.verb} {call.resource} in "
                     f"namespace {config.namespace} (HTTP 403): grant it the RBAC verb "
                     f"{call.verb!r} on {resource!r} with a Role and a RoleBinding")
    if code == 404:
        return _fail("KF203", _not_found(config, call))
    return _fail("KF201", f"the Kubernetes API answered HTTP {code} to {call.verb} {what}: "
                 f"{message}")


def _not_found(config: ClusterConfig, call: _Call) -> str:
    namespace = config.namespace
    if call.resource == "pods":
        return (f"pod {call.name} not found in namespace {namespace}: is HOSTNAME the notebook "
                "pod's name? (set NB_POD_NAME to it otherwise)")
    if call.resource == "volumesnapshots" and call.verb == "create":
        return (f"the VolumeSnapshot API ({SNAPSHOT_API}) is not installed in this cluster: "
                "install the CSI snapshot controller, or set volumes in the notebook metadata")
    return f"{_what(call)} not found in namespace {namespace}"


def _what(call: _Call) -> str:
    singular = {"pods": "pod", "persistentvolumeclaims": "persistentvolumeclaim",
                "volumesnapshots": "volumesnapshot"}.get(call.resource, call.resource)
    return f"{singular} {call.name}" if call.name else call.resource


# --- small helpers -------------------------------------------------------------------------------

def _obj(value: object, key: str) -> Json:
    """``value[key]`` when both are JSON objects, else ``{}``: API answers may leave fields out."""
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, dict) else {}


def _token_subject(token: str) -> str | None:
    """The ``sub`` claim of a service-account JWT, read without verifying it (only for messages)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) and subject else None


def _fail(code: str, message: str) -> CompileError:
    return CompileError(error(code, message))
