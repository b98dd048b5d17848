"""The run's volumes: claims made for a run (clone, new_pvc, pv) and deleted when it ends.

The exit task's program runs for real against tests/fake_kubernetes.py (a local HTTP server
speaking the Kubernetes API's paths and JSON, since no API server can run here), and the compiled
file runs with ``kfp.local``: the steps inside the exit handler, then the exit task, also when a
step fails. kfp.local has no CreatePVC (on a cluster the KFP driver makes the claim itself, no
container runs), so there the createpvc executor is replaced by a container that answers a claim
name as the driver would.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_kubernetes import NAMESPACE, FakeKubernetes, claim
from test_kubeflow_ir import (
    FAKE_RUNTIME,
    PARAMS,
    fake_runtime_zip,
    pipeline,
    task,
)

from kale_py.kubeflow.ir import RUN_CLEANUP, _cleanup_source, build_ir, ir_to_yaml
from kale_py.kubeflow.validate import validate_ir
from kale_py.settings import Volume

Json = dict[str, Any]
RUN_ID = "6f1c2d3e-1111-2222-3333-444455556666"


def create_tasks(spec: Json) -> Json:
    return {name: t["inputs"]["parameters"] for name, t in
            spec["components"]["comp-exit-handler-1"]["dag"]["tasks"].items()
            if name.startswith("createpvc")}


def constants(parameters: Json) -> Json:
    return {k: v["runtimeValue"]["constant"] for k, v in parameters.items()}


def test_new_pvc_and_pv_become_claims_made_for_the_run_and_deleted_after_it() -> None:
    p = pipeline(task("a", parameters=("n",)), task("b", inputs=("a",)), params=PARAMS,
                 volumes=(Volume("scratch", "/scratch", type="new_pvc", size="20Gi",
                                 storage_class="fast", access_mode="rwm"),
                          Volume("archive-pv", "/archive", type="pv", size="1Ti")))
    spec, platform = build_ir(p)
    validate_ir(spec, platform)
    made = {constants(c)["pvc_name_suffix"]: constants(c) for c in create_tasks(spec).values()}
    assert made["-scratch"] == {"access_modes": ["ReadWriteMany"], "pvc_name_suffix": "-scratch",
                                "size": "20Gi", "storage_class_name": "fast"}
    assert made["-archive-pv"] == {"access_modes": ["ReadWriteOnce"], "size": "1Ti",
                                   "pvc_name_suffix": "-archive-pv", "volume_name": "archive-pv"}
    root = spec["root"]["dag"]["tasks"]
    assert root["kale-cleanup"]["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert root["kale-cleanup"]["dependentTasks"] == ["exit-handler-1"]
    assert root["kale-cleanup"]["cachingOptions"] == {}
    assert root["kale-cleanup"]["inputs"]["parameters"]["run_id"] == {
        "runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    # pipeline parameters reach the steps through the exit handler, as KFP's compiler passes them
    assert root["exit-handler-1"]["inputs"]["parameters"] == {
        "pipelinechannel--n": {"componentInputParameter": "n"}}
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert inner["a"]["inputs"]["parameters"]["n"] == {"componentInputParameter":
                                                       "pipelinechannel--n"}
    args = spec["deploymentSpec"]["executors"]["exec-kale-cleanup"]["container"]["args"]
    assert args[1:] == ["--run-id", "{{$.inputs.parameters['run_id']}}",
                        "--claim-suffix", "-scratch", "--claim-suffix", "-archive-pv"]
    assert base64.b64decode(args[0]) == _cleanup_source()


def test_kept_volumes_get_no_exit_task() -> None:
    p = pipeline(task("a"), volumes=(Volume("scratch", "/s", type="new_pvc", size="1Gi",
                                            keep=True),))
    spec, platform = build_ir(p)
    validate_ir(spec, platform)
    assert sorted(spec["root"]["dag"]["tasks"]) == ["a", "createpvc"]
    assert "exec-kale-cleanup" not in spec["deploymentSpec"]["executors"]


def test_only_existing_claims_keep_the_pipeline_as_before() -> None:
    spec, _ = build_ir(pipeline(task("a"), volumes=(Volume("ws", "/home/jovyan"),)))
    assert sorted(spec["root"]["dag"]["tasks"]) == ["a"]
    assert "comp-exit-handler-1" not in spec["components"]


# --- the exit task's program, against the fake API server --------------------------------------

@pytest.fixture
def k8s() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes().start()
    yield fake
    fake.stop()


def run_pod(name: str, run_id: str, claims: list[str]) -> Json:
    return {"metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {"pipeline/runid": run_id}},
            "spec": {"volumes": [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
                                 for i, c in enumerate(claims)]}}


def snapshot(name: str, ours: bool) -> Json:
    labels = {"app.kubernetes.io/created-by": "kale-py"} if ours else {}
    return {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels}}


def service_account(directory: Path, fake: FakeKubernetes) -> dict[str, str]:
    directory.mkdir(exist_ok=True)
    (directory / "token").write_text(fake.token)
    (directory / "namespace").write_text(NAMESPACE)
    return {"KALE_PY_KUBERNETES_API": fake.url, "KALE_PY_SERVICE_ACCOUNT_DIR": str(directory)}


def cleanup(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    source = base64.b64encode(_cleanup_source()).decode()
    return subprocess.run([sys.executable, "-c", RUN_CLEANUP, source, *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def seed(k8s: FakeKubernetes) -> None:
    for name in ("0a1b-scratch", "9f8e-scratch", "0a1b-ws", "unrelated"):
        k8s.claims[(NAMESPACE, name)] = claim(name, "ReadWriteOnce", "1Gi", "std")
    k8s.pods[(NAMESPACE, "run-a-1")] = run_pod("run-a-1", RUN_ID, ["0a1b-scratch", "unrelated"])
    k8s.pods[(NAMESPACE, "run-b-1")] = run_pod("run-b-1", "another-run", ["9f8e-scratch"])
    k8s.snapshots[(NAMESPACE, "ws-kale-py-x7k2")] = snapshot("ws-kale-py-x7k2", ours=True)
    k8s.snapshots[(NAMESPACE, "users-own")] = snapshot("users-own", ours=False)


def test_exit_task_deletes_this_runs_claims_and_its_own_snapshots(k8s: FakeKubernetes,
                                                                  tmp_path: Path) -> None:
    seed(k8s)
    env = service_account(tmp_path / "sa", k8s)
    done = cleanup(env, "--run-id", RUN_ID, "--claim-suffix", "-scratch", "--snapshot",
                   "ws-kale-py-x7k2", "--snapshot", "users-own", "--snapshot", "gone-already")
    assert done.returncode == 0, done.stderr
    left = {name for _, name in k8s.claims}
    assert "0a1b-scratch" not in left  # this run's
    assert {"9f8e-scratch", "unrelated", "0a1b-ws"} <= left  # another run's, not ours
    assert (NAMESPACE, "ws-kale-py-x7k2") not in k8s.snapshots
    assert (NAMESPACE, "users-own") in k8s.snapshots
    assert "snapshot users-own was not made by kale-py; kept" in done.stdout
    assert "snapshot gone-already is already gone" in done.stdout
    [listing] = k8s.calls("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?")
    assert listing.path.endswith(f"labelSelector=pipeline%2Frunid%3D{RUN_ID}")


def test_a_refused_deletion_fails_the_exit_task_after_trying_the_rest(k8s: FakeKubernetes,
                                                                       tmp_path: Path) -> None:
    seed(k8s)
    k8s.forbidden.add(("delete", "persistentvolumeclaims"))
    env = service_account(tmp_path / "sa", k8s)
    done = cleanup(env, "--run-id", RUN_ID, "--claim-suffix", "-scratch",
                   "--snapshot", "ws-kale-py-x7k2")
    assert done.returncode == 1
    assert "persistentvolumeclaims/0a1b-scratch: HTTP 403" in done.stderr
    assert (NAMESPACE, "ws-kale-py-x7k2") not in k8s.snapshots  # still tried


def test_exit_task_outside_a_cluster_deletes_nothing_and_succeeds(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "KALE_PY_SERVICE_ACCOUNT_DIR": str(tmp_path / "none")}
    done = cleanup(env, "--run-id", RUN_ID, "--claim-suffix", "-scratch")
    assert done.returncode == 0
    assert done.stdout.strip() == "kale-py cleanup: not in a Kubernetes pod, nothing to delete"


# --- the compiled file under kfp.local ---------------------------------------------------------

CREATE_PVC_STAND_IN = "; ".join([
    "import os, sys",
    "out = sys.argv[1]",
    "os.makedirs(os.path.dirname(out), exist_ok=True)",
    "open(out, 'w').write('0a1b' + sys.argv[2])",
])

FAILING_STEP = '''
import sys
def main(argv):
    print("step failed on purpose", file=sys.stderr)
    return 3
'''


def runnable_locally(spec: Json) -> Json:
    """The createpvc executor as a container answering ``<uuid><suffix>``, as the driver does."""
    spec["deploymentSpec"]["executors"]["exec-createpvc"] = {"container": {
        "command": ["python3", "-c", CREATE_PVC_STAND_IN],
        "args": ["{{$.outputs.parameters['name'].output_file}}",
                 "{{$.inputs.parameters['pvc_name_suffix']}}"],
        "image": "python:3.11"}}
    return spec


@pytest.mark.parametrize("fails", [False, True], ids=["run-succeeds", "step-fails"])
def test_exit_task_runs_after_the_steps_under_kfp_local(k8s: FakeKubernetes, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       fails: bool) -> None:
    from kfp import components
    from kfp_local_shim import container_components_as_subprocesses

    k8s.snapshots[(NAMESPACE, "ws-kale-py-x7k2")] = snapshot("ws-kale-py-x7k2", ours=True)
    for key, value in service_account(tmp_path / "sa", k8s).items():
        monkeypatch.setenv(key, value)
    runtime = FAILING_STEP if fails else FAKE_RUNTIME
    p = pipeline(task("prepare", parameters=("n",), payload=fake_runtime_zip(runtime, "prepare")),
                 task("use", inputs=("prepare",), payload=fake_runtime_zip(FAKE_RUNTIME, "use")),
                 params=PARAMS,
                 volumes=(Volume("ws-kale-py-x7k2", "/home/jovyan", type="clone", size="1Gi"),
                          Volume("scratch", "/scratch", type="new_pvc", size="1Gi")))
    spec, platform = build_ir(p)
    validate_ir(spec, platform)
    path = tmp_path / "pipeline.yaml"
    path.write_text(ir_to_yaml(runnable_locally(spec), platform))
    runs = tmp_path / "runs"
    with container_components_as_subprocesses(pipeline_root=runs):
        run = components.load_component_from_file(str(path))
        if fails:
            with pytest.raises(RuntimeError):
                run(n=2)
        else:
            run(n=2)
    # the exit task ran and asked the API for this run's pods, then deleted our snapshot
    assert k8s.calls("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=pipeline")
    assert (NAMESPACE, "ws-kale-py-x7k2") not in k8s.snapshots
    if not fails:
        (run_dir,) = runs.iterdir()
        record = json.loads((run_dir / "use" / "state" / "record.json").read_text())
        assert record["loaded"]["prepare"]["params"] == {"n": 2}
