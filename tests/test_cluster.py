"""Notebook-pod discovery against a fake Kubernetes API server (tests/fake_kubernetes.py)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kubernetes import (
    DATA_CLAIM,
    IMAGE,
    NAMESPACE,
    NODE,
    NOTEBOOK,
    POD_NAME,
    TOKEN,
    WORKSPACE_CLAIM,
    FakeKubernetes,
    pod_service_account,
)

from kale_py import cluster
from kale_py.api import check_notebook
from kale_py.cluster import (
    ClusterConfig,
    MountedClaim,
    NotebookPod,
    SnapshotOptions,
    discover_notebook,
    in_cluster,
    list_volumes,
    notebook_defaults,
    snapshot_claim,
    volumes_for_pipeline,
)
from kale_py.diagnostics import CompileError
from kale_py.kubeflow.compile import compile_pipeline
from kale_py.settings import Volume

SUBJECT = f"system:serviceaccount:{NAMESPACE}:default-editor"
FAST = SnapshotOptions(timeout=30.0, poll_interval=0.01)
SNAPSHOTS = "/apis/snapshot.storage.k8s.io/v1/namespaces/kubeflow-user-example-com/volumesnapshots"


@pytest.fixture
def k8s() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes().start()
    yield fake
    fake.stop()


def config_for(fake: FakeKubernetes, **changes: Any) -> ClusterConfig:
    config = ClusterConfig(api_url=fake.url, token=TOKEN, ca_file=None, namespace=NAMESPACE,
                           pod_name=POD_NAME)
    return replace(config, **changes)


def compile_error(call: Any) -> tuple[str, str]:
    with pytest.raises(CompileError) as caught:
        call()
    [diagnostic] = caught.value.diagnostics
    return diagnostic.code, diagnostic.message


@pytest.fixture
def off_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No service account and no API server; any network call fails the test."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(cluster, "SERVICE_ACCOUNT_DIR", tmp_path / "no-service-account")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network I/O off-cluster")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


# --- discovery -----------------------------------------------------------------------------------

def test_discovers_image_and_claims_of_the_notebook_container(k8s: FakeKubernetes) -> None:
    pod = discover_notebook(config_for(k8s))
    assert (pod.name, pod.namespace, pod.container, pod.image) == (
        POD_NAME, NAMESPACE, NOTEBOOK, IMAGE)
    assert (pod.service_account, pod.node_name) == ("default-editor", NODE)
    assert pod.volumes == (
        MountedClaim(name=WORKSPACE_CLAIM, claim=WORKSPACE_CLAIM, mount_point="/home/jovyan",
                     access_modes=("ReadWriteOnce",), storage_class="standard-rwo", size="10Gi",
                     read_only=False),
        MountedClaim(name=DATA_CLAIM, claim=DATA_CLAIM, mount_point="/data",
                     access_modes=("ReadWriteMany",), storage_class="nfs-rwx", size="100Gi",
                     read_only=False),
    )
    skipped = {s.name: s.reason for s in pod.skipped}
    assert set(skipped) == {"workload-socket", "istio-envoy", "istio-token", "istiod-ca-cert",
                            "dshm", "volume-kf-pipeline-token", "kube-api-access-x7k2p"}
    assert skipped["dshm"].startswith("emptyDir")
    assert skipped["istiod-ca-cert"] == "configMap"
    assert skipped["kube-api-access-x7k2p"].startswith("service-account token")
    assert skipped["volume-kf-pipeline-token"].startswith("service-account token")


def test_requests_carry_the_bearer_token_and_name_real_api_paths(k8s: FakeKubernetes) -> None:
    discover_notebook(config_for(k8s))
    assert [r.path for r in k8s.requests] == [
        f"/api/v1/namespaces/{NAMESPACE}/pods/{POD_NAME}",
        f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/{WORKSPACE_CLAIM}",
        f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/{DATA_CLAIM}",
    ]
    for r in k8s.requests:
        assert r.headers["Authorization"] == f"Bearer {TOKEN}"
        assert r.headers["Accept"] == "application/json"


def test_notebook_container_is_found_by_label_even_behind_a_sidecar(k8s: FakeKubernetes) -> None:
    # holdApplicationUntilProxyStarts puts istio-proxy first
    spec = k8s.pods[(NAMESPACE, POD_NAME)]["spec"]
    spec["containers"].reverse()
    assert discover_notebook(config_for(k8s)).image == IMAGE
    del k8s.pods[(NAMESPACE, POD_NAME)]["metadata"]["labels"]["notebook-name"]
    pod = discover_notebook(config_for(k8s))  # without the label: the first container
    assert (pod.container, pod.volumes) == ("istio-proxy", ())


def test_claim_mounted_with_a_subpath_or_elsewhere_is_skipped(k8s: FakeKubernetes) -> None:
    spec = k8s.pods[(NAMESPACE, POD_NAME)]["spec"]
    mounts = spec["containers"][0]["volumeMounts"]
    next(m for m in mounts if m["name"] == DATA_CLAIM)["subPath"] = "team-a"
    mounts[:] = [m for m in mounts if m["name"] != WORKSPACE_CLAIM]
    pod = discover_notebook(config_for(k8s))
    skipped = {s.name: s.reason for s in pod.skipped}
    assert pod.volumes == ()
    assert skipped[WORKSPACE_CLAIM] == "not mounted in the notebook container"
    assert skipped[DATA_CLAIM] == "mounted with a subPath at /data"


# --- volumes for the steps -----------------------------------------------------------------------

def test_shared_claim_is_mounted_as_is_and_rwo_claim_is_snapshotted(k8s: FakeKubernetes) -> None:
    config = config_for(k8s)
    found: list[Any] = []
    volumes = volumes_for_pipeline(discover_notebook(config), config=config,
                                   snapshots=replace(FAST, class_name="csi-gce-pd-snapshot"),
                                   diagnostics=found)
    [post] = k8s.calls("POST")
    assert post.path == SNAPSHOTS and post.headers["Content-Type"] == "application/json"
    assert post.json() == {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"generateName": f"{WORKSPACE_CLAIM}-kale-py-",
                     "labels": {"app.kubernetes.io/created-by": "kale-py"}},
        "spec": {"volumeSnapshotClassName": "csi-gce-pd-snapshot",
                 "source": {"persistentVolumeClaimName": WORKSPACE_CLAIM}}}
    [(_, snapshot)] = k8s.snapshots
    assert snapshot.startswith(f"{WORKSPACE_CLAIM}-kale-py-")
    assert len(k8s.calls("GET", f"{SNAPSHOTS}/{snapshot}")) == 3  # false, false, then ready
    assert volumes == (
        Volume(name=snapshot, mount_point="/home/jovyan", type="clone", size="10Gi",
               storage_class="standard-rwo", access_mode="rwo"),
        Volume(name=DATA_CLAIM, mount_point="/data", type="pvc"),
    )
    assert [(d.severity, d.code) for d in found] == [("info", "KF205")]
    assert snapshot in found[0].message and "/home/jovyan" in found[0].message


def test_snapshot_without_a_class_leaves_it_to_the_cluster_default(k8s: FakeKubernetes) -> None:
    name = snapshot_claim(config_for(k8s), WORKSPACE_CLAIM, None, poll_interval=0.01)
    [post] = k8s.calls("POST")
    assert post.json()["spec"] == {"source": {"persistentVolumeClaimName": WORKSPACE_CLAIM}}
    assert k8s.snapshots[(NAMESPACE, name)]["status"]["readyToUse"] is True


def test_snapshot_error_in_its_status_is_reported(k8s: FakeKubernetes) -> None:
    k8s.snapshot_error = ("Failed to create snapshot: failed to get snapshot class with error "
                          "cannot find default snapshot class")
    code, message = compile_error(lambda: snapshot_claim(
        config_for(k8s), WORKSPACE_CLAIM, None, poll_interval=0.01))
    assert code == "KF204"
    assert "cannot find default snapshot class" in message
    assert "KALE_PY_SNAPSHOT_CLASS" in message


def test_a_transient_snapshot_error_is_waited_out(k8s: FakeKubernetes) -> None:
    k8s.snapshot_error = ('the object has been modified; please apply your changes to the '
                          'latest version and try again')
    k8s.error_polls = 1
    name = snapshot_claim(config_for(k8s), WORKSPACE_CLAIM, None, poll_interval=0.01)
    assert k8s.snapshots[(NAMESPACE, name)]["status"]["readyToUse"] is True


def test_snapshot_that_never_becomes_ready_times_out(k8s: FakeKubernetes) -> None:
    k8s.ready_after = 10**9
    code, message = compile_error(lambda: snapshot_claim(
        config_for(k8s), WORKSPACE_CLAIM, None, timeout=0.05, poll_interval=0.01))
    assert code == "KF204" and "was not ready after 0.05 s" in message
    assert f"kubectl describe volumesnapshot {WORKSPACE_CLAIM}-kale-py-" in message


def test_rwo_claim_without_snapshot_is_mounted_with_a_warning(k8s: FakeKubernetes) -> None:
    found: list[Any] = []
    volumes = volumes_for_pipeline(discover_notebook(config_for(k8s)), snapshot_rwo=False,
                                   diagnostics=found)
    assert volumes == (Volume(name=WORKSPACE_CLAIM, mount_point="/home/jovyan"),
                       Volume(name=DATA_CLAIM, mount_point="/data"))
    assert k8s.calls("POST") == []
    [warning] = found
    assert (warning.severity, warning.code) == ("warning", "KF206")
    assert "cannot mount it" in warning.message and f"kubernetes.io/hostname={NODE}" in (
        warning.message)


def test_rwop_claim_without_snapshot_is_left_out() -> None:
    claim = MountedClaim(name="w", claim="w", mount_point="/w", access_modes=("ReadWriteOncePod",),
                         storage_class=None, size="1Gi", read_only=False)
    pod = NotebookPod(name=POD_NAME, namespace=NAMESPACE, container=NOTEBOOK, image=IMAGE,
                      service_account=None, node_name=None, volumes=(claim,), skipped=())
    found: list[Any] = []
    assert volumes_for_pipeline(pod, snapshot_rwo=False, diagnostics=found) == ()
    assert [d.code for d in found] == ["KF206"] and "ReadWriteOncePod" in found[0].message


# --- what compile and the panel ask --------------------------------------------------------------

def test_notebook_defaults_in_cluster(k8s: FakeKubernetes) -> None:
    image, volumes, found = notebook_defaults(Path("/home/jovyan/work"), config=config_for(k8s),
                                              snapshots=FAST)
    assert image == IMAGE
    assert [(v.type, v.mount_point) for v in volumes] == [("clone", "/home/jovyan"),
                                                          ("pvc", "/data")]
    assert [d.code for d in found] == ["KF205"]
    image, volumes, found = notebook_defaults(Path("/srv/elsewhere"), config=config_for(k8s),
                                              discover_volumes=False)
    assert (image, volumes, found) == (IMAGE, (), [])
    assert len(k8s.calls("POST")) == 1  # no second snapshot when only the image is asked


def test_notebook_directory_on_no_volume_is_warned_about(k8s: FakeKubernetes,
                                                          tmp_path: Path) -> None:
    _, _, found = notebook_defaults(tmp_path, config=config_for(k8s), snapshots=FAST)
    assert [d.code for d in found] == ["KF205", "KF207"]
    assert str(tmp_path.resolve()) in found[1].message


def test_list_volumes_in_cluster(k8s: FakeKubernetes) -> None:
    assert list_volumes(config_for(k8s)) == {
        "in_cluster": True, "image": IMAGE, "namespace": NAMESPACE, "message": None,
        "volumes": [
            {"name": WORKSPACE_CLAIM, "mount_point": "/home/jovyan", "claim": WORKSPACE_CLAIM,
             "access_modes": ["ReadWriteOnce"], "size": "10Gi", "storage_class": "standard-rwo"},
            {"name": DATA_CLAIM, "mount_point": "/data", "claim": DATA_CLAIM,
             "access_modes": ["ReadWriteMany"], "size": "100Gi", "storage_class": "nfs-rwx"}]}
    assert k8s.calls("POST") == []  # listing never snapshots


def test_list_volumes_reports_api_errors_without_raising(k8s: FakeKubernetes) -> None:
    k8s.forbidden = {("get", "pods")}
    answer = list_volumes(config_for(k8s))
    assert answer["in_cluster"] is True and answer["volumes"] == []
    assert "may not get pods" in answer["message"]


def test_off_cluster_nothing_raises_and_nothing_is_fetched(off_cluster: None,
                                                           tmp_path: Path) -> None:
    assert in_cluster() is False
    answer = list_volumes()
    assert answer["in_cluster"] is False and answer["volumes"] == []
    assert answer["image"] is None and "not running in a Kubernetes pod" in answer["message"]
    assert notebook_defaults(tmp_path) == (None, (), [])


@pytest.mark.parametrize(("host", "token", "expected"), [
    ("10.96.0.1", True, True), ("10.96.0.1", False, False), ("", True, False)])
def test_in_cluster_needs_both_the_service_host_and_the_token(
        tmp_path: Path, host: str, token: bool, expected: bool) -> None:
    if token:
        (tmp_path / "token").write_text(TOKEN)
    env = {"KUBERNETES_SERVICE_HOST": host} if host else {}
    assert in_cluster(env, tmp_path) is expected


def test_config_from_environment(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "namespace").write_text(NAMESPACE)
    env = {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "HOSTNAME": POD_NAME}
    config = ClusterConfig.from_environment(env, tmp_path)
    assert config == ClusterConfig(api_url="https://[fd00:10:96::1]:443", token=TOKEN,
                                   ca_file=None, namespace=NAMESPACE, pod_name=POD_NAME)
    assert TOKEN not in repr(config)
    assert config.service_account == SUBJECT
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    env.update(KUBERNETES_SERVICE_PORT="6443", NB_POD_NAME="other-0",
               KUBERNETES_SERVICE_HOST="10.96.0.1")
    config = ClusterConfig.from_environment(env, tmp_path)
    assert (config.api_url, config.pod_name) == ("https://10.96.0.1:6443", "other-0")
    assert config.ca_file == str(tmp_path / "ca.crt")
    code, message = compile_error(lambda: ClusterConfig.from_environment({}, tmp_path))
    assert code == "KF201" and "KUBERNETES_SERVICE_HOST" in message


# --- API errors ----------------------------------------------------------------------------------

def test_rejected_token_names_the_service_account(k8s: FakeKubernetes) -> None:
    k8s.token = "another-token"
    code, message = compile_error(lambda: discover_notebook(config_for(k8s)))
    assert code == "KF202" and "HTTP 401" in message and SUBJECT in message


@pytest.mark.parametrize(("forbidden", "call", "verb"), [
    (("get", "pods"), "discover", "'get' on 'pods'"),
    (("get", "persistentvolumeclaims"), "discover", "'get' on 'persistentvolumeclaims'"),
    (("create", "volumesnapshots"), "snapshot",
     "'create' on 'volumesnapshots.snapshot.storage.k8s.io'"),
    (("get", "volumesnapshots"), "snapshot", "'get' on 'volumesnapshots.snapshot.storage.k8s.io'"),
])
def test_forbidden_names_the_service_account_and_the_missing_rbac_verb(
        k8s: FakeKubernetes, forbidden: tuple[str, str], call: str, verb: str) -> None:
    k8s.forbidden = {forbidden}
    config = config_for(k8s)
    code, message = compile_error(
        (lambda: discover_notebook(config)) if call == "discover"
        else (lambda: snapshot_claim(config, WORKSPACE_CLAIM, None, poll_interval=0.01)))
    assert code == "KF202" and "HTTP 403" in message
    assert f"{SUBJECT} may not {forbidden[0]} {forbidden[1]} in namespace {NAMESPACE}" in message
    assert f"grant it the RBAC verb {verb}" in message


def test_missing_pod_asks_whether_hostname_is_the_pod_name(k8s: FakeKubernetes) -> None:
    code, message = compile_error(lambda: discover_notebook(config_for(k8s, pod_name="jupyter")))
    assert code == "KF203"
    assert message == (f"pod jupyter not found in namespace {NAMESPACE}: is HOSTNAME the "
                       "notebook pod's name? (set NB_POD_NAME to it otherwise)")


def test_missing_claim_and_missing_snapshot_api_are_told_apart(k8s: FakeKubernetes) -> None:
    del k8s.claims[(NAMESPACE, DATA_CLAIM)]
    code, message = compile_error(lambda: discover_notebook(config_for(k8s)))
    assert code == "KF203"
    assert message == f"persistentvolumeclaim {DATA_CLAIM} not found in namespace {NAMESPACE}"
    k8s.snapshot_api = False
    code, message = compile_error(lambda: snapshot_claim(config_for(k8s), WORKSPACE_CLAIM, None))
    assert code == "KF203" and "VolumeSnapshot API" in message and "not installed" in message


def test_unreachable_api_server(k8s: FakeKubernetes) -> None:
    k8s.stop()  # nothing listens on its port any more
    code, message = compile_error(lambda: discover_notebook(config_for(k8s)))
    assert code == "KF201"
    assert message.startswith(f"cannot reach the Kubernetes API at {k8s.url} to get pod "
                              f"{POD_NAME}:")


def test_in_cluster_discovery_over_tls_with_the_pod_service_account(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole in-cluster path: environment, service-account files, TLS checked with ca.crt."""
    sa = tmp_path / "serviceaccount"
    fake = FakeKubernetes(tls=pod_service_account(sa)).start()
    try:
        monkeypatch.setattr(cluster, "SERVICE_ACCOUNT_DIR", sa)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", fake.url.rsplit(":", 1)[1])
        monkeypatch.setenv("HOSTNAME", POD_NAME)
        monkeypatch.delenv("NB_POD_NAME", raising=False)
        answer = list_volumes()
    finally:
        fake.stop()
    assert answer["message"] is None and answer["image"] == IMAGE
    assert [v["claim"] for v in answer["volumes"]] == [WORKSPACE_CLAIM, DATA_CLAIM]


# --- into the compiled pipeline ------------------------------------------------------------------

def write_notebook(path: Path) -> Path:
    def cell(tags: list[str], source: str) -> dict[str, Any]:
        return {"cell_type": "code", "execution_count": None, "metadata": {"tags": tags},
                "outputs": [], "source": source}

    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "cells": [cell(["step:load"], "rows = [1, 2, 3]\n"),
                    cell(["step:total", "prev:load"], "total = sum(rows)\nprint(total)\n")]}
    path.write_text(json.dumps(nb))
    return path


def test_discovered_volumes_compile_into_mounts_and_a_snapshot_restore(
        k8s: FakeKubernetes, tmp_path: Path) -> None:
    image, volumes, _ = notebook_defaults(tmp_path, config=config_for(k8s), snapshots=FAST)
    pipeline = check_notebook(write_notebook(tmp_path / "sums.ipynb"))
    assert pipeline.ok, pipeline.diagnostics
    pipeline = replace(pipeline, settings=replace(pipeline.settings, base_image=image,
                                                  volumes=volumes))
    spec, platform = yaml.safe_load_all(compile_pipeline(pipeline).yaml)
    [(_, snapshot)] = k8s.snapshots
    executors = spec["deploymentSpec"]["executors"]
    assert {executors[f"exec-{s}"]["container"]["image"] for s in ("load", "total")} == {IMAGE}
    # the run's tasks sit in an exit handler whose exit task deletes the claim and the snapshot
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    cleanup = executors["exec-kale-cleanup"]["container"]["args"]
    assert cleanup[cleanup.index("--snapshot") + 1] == snapshot
    create = tasks["createpvc"]["inputs"]["parameters"]
    assert create["data_source"]["runtimeValue"]["constant"] == {
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot}
    assert create["size"]["runtimeValue"]["constant"] == "10Gi"
    assert create["storage_class_name"]["runtimeValue"]["constant"] == "standard-rwo"
    assert create["access_modes"]["runtimeValue"]["constant"] == ["ReadWriteOnce"]
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-load"][
        "pvcMount"]
    assert {"constant": DATA_CLAIM, "mountPath": "/data",
            "pvcNameParameter": {"runtimeValue": {"constant": DATA_CLAIM}}} in mounts
    restored = next(m for m in mounts if m["mountPath"] == "/home/jovyan")
    assert restored["pvcNameParameter"] == {"taskOutputParameter": {
        "outputParameterKey": "name", "producerTask": "createpvc"}}
