"""Serving on the cluster: the export and deploy tasks a ``serve:VAR`` model adds to the pipeline.

The compiled pipeline runs for real on ``kfp.local`` (tests/kfp_local_shim.py): the export task
writes the model as KServe's runtime for its library loads it, and each exported model is then
loaded the way that runtime loads it (KServe's sklearn, xgboost and lightgbm servers take the
one file of their extensions in the model directory: joblib, ``Booster(model_file=...)``), or,
for kale_py's own Python predictor, served by it over HTTP (V2), and its predictions compared
with the model's own ``predict`` on the same rows.

No Kubernetes API server or KServe controller can run on this machine: the deploy task is run
against tests/fake_kubernetes.py, a local HTTP(S) server answering the real API paths and JSON
shapes (InferenceServices, Secrets, ServiceAccounts) and reporting readiness as KServe's
controller does. Every InferenceService written is read back whole through the KServe SDK's
own models.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kubernetes import NAMESPACE, FakeKubernetes, pod_service_account

from kale_py.api import check_notebook, compile_notebook
from kale_py.cli import main
from kale_py.serving import deploy
from kale_py.serving.export import MODEL_FILES, RUNTIME_FILE
from kale_py.serving.predictor import PREDICTOR_BOOTSTRAP

Json = dict[str, Any]
REPO = Path(__file__).resolve().parents[1]
DATA = ("from sklearn.datasets import make_regression\n"
        "X, y = make_regression(n_samples=80, n_features=4, noise=0.1, random_state=0)")
MODELS = {
    "sklearn": ("from sklearn.linear_model import Ridge", "model = Ridge(alpha=0.5).fit(X, y)"),
    "xgboost": ("from xgboost import XGBRegressor",
                "model = XGBRegressor(n_estimators=8, max_depth=3, n_jobs=1).fit(X, y)"),
    "lightgbm": ("from lightgbm import LGBMRegressor",
                 "model = LGBMRegressor(n_estimators=8, min_child_samples=5, verbose=-1, "
                 "n_jobs=1).fit(X, y)"),
    # a class of the notebook's own: no built-in runtime can load it
    "kale-py": ("import numpy as np\n\n"
                "class Scaled:\n"
                "    def __init__(self, factor):\n"
                "        self.factor = factor\n\n"
                "    def predict(self, X):\n"
                "        return np.asarray(X).sum(axis=1) * self.factor",
                "model = Scaled(float(y.std()))"),
}


def code(source: str, tags: list[str]) -> Json:
    return {"cell_type": "code", "execution_count": None, "outputs": [], "source": source,
            "metadata": {"tags": tags}}


def notebook(path: Path, kind: str, serving: Json | None = None,
             tags: tuple[str, ...] = ("serve:model",)) -> Path:
    imports, train = MODELS[kind]
    cells = [code(imports, ["functions" if "class" in imports else "imports"]),
             code(DATA, ["step:data"]), code(train, ["step:train", *tags])]
    metadata: Json = {"kubeflow_notebook": {"serving": serving}} if serving else {}
    path.write_text(json.dumps({"cells": cells, "metadata": metadata, "nbformat": 4,
                                "nbformat_minor": 5}))
    return path


def spec_of(path: Path) -> Json:
    return next(yaml.safe_load_all(path.read_text()))  # type: ignore[no-any-return]


# --- the compiled pipeline ------------------------------------------------------------------


def test_a_served_model_adds_export_and_deploy_tasks_after_its_step(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn",
                  serving={"service_account": "models-reader", "timeout": 120})
    compile_notebook(nb, tmp_path / "p.yaml")
    spec = spec_of(tmp_path / "p.yaml")
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"kale-runtime", "data", "train", "export-model", "deploy-model"}
    export, deploy_task = tasks["export-model"], tasks["deploy-model"]
    assert export["dependentTasks"] == ["kale-runtime", "train"]
    assert export["inputs"]["parameters"]["state_digest"] == {"taskOutputParameter": {
        "outputParameterKey": "state_digest", "producerTask": "train"}}
    assert deploy_task["dependentTasks"] == ["export-model", "kale-runtime"]
    assert deploy_task["cachingOptions"] == {}  # a cached deploy would remake nothing
    assert deploy_task["inputs"]["parameters"]["run_id"] == {
        "runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    outputs = spec["components"]["comp-export-model"]["outputDefinitions"]
    assert outputs["artifacts"]["model"]["artifactType"]["schemaTitle"] == "system.Model"
    args = spec["deploymentSpec"]["executors"]["exec-deploy-model"]["container"]["args"]
    flags = dict(zip(args[args.index("--deploy-model") + 1::2],
                     args[args.index("--deploy-model") + 2::2], strict=False))
    assert flags["--name"] == "model" and flags["--service-account"] == "models-reader"
    assert flags["--timeout"] == "120"
    assert flags["--model-uri"] == "{{$.inputs.artifacts['model'].uri}}"
    # the runtime the predictor runs from is vouched for by the spec, as the steps' runtime
    runtime = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["args"][2]
    assert flags["--runtime-sha"] == runtime


def test_without_serve_tags_the_pipeline_is_unchanged(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn", tags=())
    compile_notebook(nb, tmp_path / "p.yaml")
    assert set(spec_of(tmp_path / "p.yaml")["root"]["dag"]["tasks"]) == {
        "kale-runtime", "data", "train"}


def test_the_service_is_named_after_the_variable_or_the_metadata(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn", serving={"name": "house-prices"})
    compile_notebook(nb, tmp_path / "p.yaml")
    tasks = spec_of(tmp_path / "p.yaml")["root"]["dag"]["tasks"]
    assert {"export-house-prices", "deploy-house-prices"} <= set(tasks)


def test_a_name_kserve_refuses_is_a_compile_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn", serving={"name": "House_Prices"})
    assert main(["compile", str(nb), "-o", str(tmp_path / "p.yaml")]) == 1
    err = capsys.readouterr().err
    assert "KF001" in err and "'House_Prices' is not a valid InferenceService name" in err
    assert "Traceback" not in err and not (tmp_path / "p.yaml").exists()


def test_one_service_name_for_several_served_models_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn", serving={"name": "svc"},
                  tags=("serve:model", "serve:X"))
    assert main(["compile", str(nb), "-o", str(tmp_path / "p.yaml")]) == 1
    err = capsys.readouterr().err
    assert "NB801" in err and "several variables are tagged serve:VAR (X, model)" in err


@pytest.mark.parametrize(("serving", "message"), [
    ({"timeout": -3}, "serving.timeout must be a positive number of seconds"),
    ({"predictor": "java"}, "serving.predictor must be auto or python"),
    ({"image": 7}, "serving.image must be a string"),
    ("yes", "serving must be an object"),
])
def test_bad_serving_metadata_is_an_error(tmp_path: Path, serving: Any, message: str) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn")
    data = json.loads(nb.read_text())
    data["metadata"] = {"kubeflow_notebook": {"serving": serving}}
    nb.write_text(json.dumps(data))
    problems = [d for d in check_notebook(nb).diagnostics if d.code == "NB004"]
    assert [d.message for d in problems] == [f"metadata.kubeflow_notebook.{message}"]


def test_an_unknown_serving_key_is_a_warning(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn", serving={"replicas": 3})
    [found] = [d for d in check_notebook(nb).diagnostics if d.code == "NB003"]
    assert "unknown key 'replicas' in metadata.kubeflow_notebook.serving" in found.message


# --- run on kfp.local: the export task, then the deploy task outside a cluster ---------------


KfpLocal = Callable[..., dict[str, list[str]]]


@pytest.fixture
def kfp_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KfpLocal]:
    """Run a compiled notebook on kfp.local; the serving tasks' resolved commands. ``before``
    is called with each task's command just before it runs."""
    from kfp import components
    from kfp.local import subprocess_task_handler as handler
    from kfp_local_shim import container_components_as_subprocesses

    monkeypatch.chdir(tmp_path)
    original = handler.SubprocessTaskHandler.run

    def go(nb: Path, before: Callable[[list[str]], None] = lambda command: None
           ) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {}

        def run(self: handler.SubprocessTaskHandler) -> object:
            command = list(self.full_command)
            for flag in ("--export-model", "--deploy-model"):
                if flag in command:
                    seen[flag] = command
            before(command)
            return original(self)

        monkeypatch.setattr(handler.SubprocessTaskHandler, "run", run)
        compiled = compile_notebook(nb, tmp_path / "pipeline.yaml")
        with container_components_as_subprocesses(pipeline_root=tmp_path / "kfp"):
            components.load_component_from_file(compiled["path"])()
        return seen

    yield go


def _exported(root: Path) -> Path:
    [directory] = root.glob("kfp/*/export-model/model")
    return directory


def _own_predictions(root: Path, X: Any) -> Any:
    """The trained model as the train step saved it, and its own predict on ``X``."""
    from kale_py import marshal

    [state] = root.glob("kfp/*/train/state")
    manifest = marshal.read_manifest(state)
    model = marshal.load_variables([manifest["variables"]["model"]], state,
                                   allowed_root=state)["model"]
    return model.predict(X)


def _rows() -> Any:
    from sklearn.datasets import make_regression

    X, _ = make_regression(n_samples=80, n_features=4, noise=0.1, random_state=0)
    return X[:7]


def _arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.parametrize("kind", ["sklearn", "xgboost", "lightgbm"])
def test_built_in_runtimes_get_the_model_in_their_own_format(
        tmp_path: Path, kind: str, kfp_local: KfpLocal,
        capfd: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    seen = kfp_local(notebook(tmp_path / "reg.ipynb", kind))
    out = capfd.readouterr().out
    directory = _exported(tmp_path)
    # the runtime takes the one file of its extensions: nothing else may sit beside it
    assert sorted(p.name for p in directory.iterdir()) == [MODEL_FILES[kind]]
    path = directory / MODEL_FILES[kind]
    rows = _rows()
    if kind == "sklearn":
        import joblib

        served = joblib.load(path).predict(rows)
    elif kind == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(params={"nthread": 1}, model_file=bytearray(path.read_bytes()))
        served = booster.predict(xgb.DMatrix(rows))
    else:
        import lightgbm as lgb

        served = lgb.Booster(model_file=str(path)).predict(rows)
    np.testing.assert_allclose(served, _own_predictions(tmp_path, rows), rtol=1e-5)
    # the deploy task got the format and the artifact's URI; outside a cluster it says what it
    # would create and succeeds with no URL
    command = seen["--deploy-model"]
    assert _arg(command, "--format") == kind
    assert _arg(command, "--model-uri") == str(directory)
    assert "not in a Kubernetes pod, so no InferenceService is made" in out
    assert '"modelFormat": {\n' in out and f'"name": "{kind}"' in out


def test_other_models_are_served_by_kale_pys_predictor_over_v2(
        tmp_path: Path, kfp_local: KfpLocal) -> None:
    import numpy as np

    seen = kfp_local(notebook(tmp_path / "scaled.ipynb", "kale-py"))
    directory = _exported(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == [
        RUNTIME_FILE, "manifest.json", "model.kpk"]
    command = seen["--deploy-model"]
    assert _arg(command, "--format") == "kale-py"
    rows = _rows()
    # the container command the InferenceService gets, with the digests the pipeline passed
    service = deploy.inference_service(
        "model", NAMESPACE, "kale-py", "s3://bucket/model", image="python:3.11",
        runtime_sha=_arg(command, "--runtime-sha"), model_digest=_arg(command, "--model-digest"))
    [container] = service["spec"]["predictor"]["containers"]
    models = tmp_path / "mnt-models"
    shutil.copytree(directory, models)  # where KServe's storage initializer puts it
    served = _predictor(container["command"], models, rows)
    # Scaled's own predict (its class exists only in the notebook's cells)
    from sklearn.datasets import make_regression

    _, y = make_regression(n_samples=80, n_features=4, noise=0.1, random_state=0)
    np.testing.assert_allclose(served, rows.sum(axis=1) * float(y.std()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _predictor(command: list[str], models: Path, rows: Any) -> Any:
    """Start the predictor container's command on this machine; its V2 answer for ``rows``."""
    port = _free_port()
    argv = [sys.executable if w == "python3" else w for w in command]
    argv[argv.index("/mnt/models")] = str(models)
    env = dict(os.environ, KALE_PY_PREDICTOR_PORT=str(port), PYTHONPATH="")
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    url = f"http://127.0.0.1:{port}/v2/models/model"
    try:
        for _ in range(300):
            if process.poll() is not None:
                raise AssertionError(process.stdout.read() if process.stdout else "")
            try:
                with urllib.request.urlopen(url + "/ready", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64",
                            "data": rows.ravel().tolist()}]}
        request = urllib.request.Request(url + "/infer", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())["outputs"][0]["data"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def _predictor_refuses(tmp_path: Path, kfp_local: KfpLocal,
                       damage: Callable[[Path], None]) -> str:
    seen = kfp_local(notebook(tmp_path / "scaled.ipynb", "kale-py"))
    command = seen["--deploy-model"]
    models = tmp_path / "mnt-models"
    shutil.copytree(_exported(tmp_path), models)
    damage(models)
    argv = [sys.executable, "-c", PREDICTOR_BOOTSTRAP, str(models), "model",
            _arg(command, "--runtime-sha"), _arg(command, "--model-digest")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=""), check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    return done.stderr


def test_the_predictor_refuses_a_model_changed_in_storage(
        tmp_path: Path, kfp_local: KfpLocal) -> None:
    def flip(models: Path) -> None:
        data = bytearray((models / "model.kpk").read_bytes())
        data[-5] ^= 0xFF
        (models / "model.kpk").write_bytes(bytes(data))

    err = _predictor_refuses(tmp_path, kfp_local, flip)
    assert "the kale-py model in" in err and "cannot be served" in err
    assert "digest mismatch" in err


def test_the_predictor_refuses_a_replaced_runtime(
        tmp_path: Path, kfp_local: KfpLocal) -> None:
    def replace(models: Path) -> None:
        (models / RUNTIME_FILE).write_bytes(b"PK\x05\x06" + b"\0" * 18)

    err = _predictor_refuses(tmp_path, kfp_local, replace)
    assert "the predictor runtime in" in err and "it was damaged or replaced" in err


def test_a_model_without_predict_fails_the_export_task_with_one_line(
        tmp_path: Path, capfd: pytest.CaptureFixture[str],
        kfp_local: KfpLocal) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn", tags=("serve:X",))
    with pytest.raises(RuntimeError):
        kfp_local(nb)
    out = capfd.readouterr()
    assert "kale_py: 'X' is a ndarray, which has no predict method" in out.out + out.err


# --- the deploy task against the Kubernetes API --------------------------------------------


def _kserve_roundtrip(service: Json) -> Json:
    """``service`` read whole by the KServe SDK's models, and written back."""
    import kserve
    import kubernetes.client.models as k8s

    class Answer:
        data = json.dumps(service)

    client = kserve.ApiClient()
    missing = {n: getattr(k8s, n) for n in dir(k8s)
               if n.startswith("V1") and not hasattr(kserve.models, n)}
    # the SDK's models refer to the Kubernetes client's (V1ObjectMeta, V1Container...)
    for name, model in missing.items():
        setattr(kserve.models, name, model)
    try:
        model = client.deserialize(Answer(), "V1beta1InferenceService")
        assert type(model).__name__ == "V1beta1InferenceService"
        return client.sanitize_for_serialization(model)  # type: ignore[no-any-return]
    finally:
        for name in missing:
            delattr(kserve.models, name)


@pytest.mark.parametrize("fmt", ["sklearn", "xgboost", "lightgbm", "kale-py"])
def test_every_inference_service_validates_against_the_kserve_sdk(fmt: str) -> None:
    service = deploy.inference_service(
        "model", NAMESPACE, fmt, "s3://mlpipeline/v2/artifacts/p/r/export-model/model",
        service_account="kale-py-serving", image="registry.example.com/team/steps:3",
        runtime_sha="ab" * 32, model_digest="sha256:" + "cd" * 32,
        labels={"pipelines.kubeflow.org/run-id": "8d1a4c7e"})
    back = _kserve_roundtrip(service)
    if fmt != "kale-py":
        assert back["spec"]["predictor"]["model"].pop("name") == ""  # the SDK's default
    assert back == service
    predictor = service["spec"]["predictor"]
    if fmt == "kale-py":
        [container] = predictor["containers"]
        assert container["env"] == [{"name": "STORAGE_URI",
                                     "value": "s3://mlpipeline/v2/artifacts/p/r/export-model/model"}]
    else:
        assert predictor["model"] == {
            "modelFormat": {"name": fmt}, "protocolVersion": "v2",
            "storageUri": "s3://mlpipeline/v2/artifacts/p/r/export-model/model"}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    """A fake API server over TLS, reached as a pod reaches it (service-account files)."""
    sa = tmp_path / "serviceaccount"
    fake = FakeKubernetes(tls=pod_service_account(sa), isvc_ready_after=3)
    fake.secrets[(NAMESPACE, "mlpipeline-minio-artifact")] = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "mlpipeline-minio-artifact", "namespace": NAMESPACE,
            "resourceVersion": "311"},
        "data": {"accesskey": "bWluaW8=", "secretkey": "bWluaW8xMjM="}}
    fake.start()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", fake.url.rsplit(":", 1)[1])
    monkeypatch.setenv("KALE_PY_SERVICE_ACCOUNT_DIR", str(sa))
    monkeypatch.delenv("KALE_PY_KUBERNETES_API", raising=False)
    monkeypatch.setenv("KALE_PY_DEPLOY_POLL", "0.02")
    yield fake
    fake.stop()


URI = "minio://mlpipeline/v2/artifacts/reg/5b0e/export-model/8c2d/model"


def _deploy(tmp_path: Path, *extra: str, fmt: str = "sklearn") -> tuple[int, str]:
    url_out = tmp_path / "url"
    code_ = deploy.main(["--name", "model", "--variable", "model", "--model-uri", URI,
                         "--format", fmt, "--model-digest", "sha256:" + "0" * 64,
                         "--runtime-sha", "1" * 64, "--image", "python:3.11",
                         "--timeout", "10", "--run-id", "5b0e1f", "--url-out", str(url_out),
                         *extra])
    return code_, url_out.read_text() if url_out.exists() else ""


def test_deploy_creates_the_service_and_reads_the_models_bucket_with_kfps_keys(
        tmp_path: Path, cluster: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    code_, url = _deploy(tmp_path)
    assert code_ == 0, capsys.readouterr().err
    assert url == f"http://model.{NAMESPACE}.kubeflow.example.com/v2/models/model/infer"
    assert f"serving model at {url}" in capsys.readouterr().out
    service = cluster.inference_services[(NAMESPACE, "model")]
    written = [json.loads(r.body) for r in cluster.calls(
        "POST", "/apis/serving.kserve.io/v1beta1/")]
    assert len(written) == 1
    assert _kserve_roundtrip(written[0])["spec"] == {"predictor": {
        "model": {"modelFormat": {"name": "sklearn"}, "name": "", "protocolVersion": "v2",
                  "storageUri": "s3://" + URI[len("minio://"):]},
        "serviceAccountName": "kale-py-serving"}}
    assert service["metadata"]["labels"] == {"app.kubernetes.io/created-by": "kale-py",
                                             "pipelines.kubeflow.org/run-id": "5b0e1f"}
    # KServe reads the bucket with KFP's own keys, through its S3 annotations
    secret = cluster.secrets[(NAMESPACE, "kale-py-serving-s3")]
    assert secret["data"] == {"AWS_ACCESS_KEY_ID": "bWluaW8=",
                              "AWS_SECRET_ACCESS_KEY": "bWluaW8xMjM="}
    assert secret["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "minio-service.kubeflow:9000",
        "serving.kserve.io/s3-usehttps": "0", "serving.kserve.io/s3-verifyssl": "0"}
    account = cluster.service_accounts[(NAMESPACE, "kale-py-serving")]
    assert account["secrets"] == [{"name": "kale-py-serving-s3"}]


def test_a_second_run_replaces_its_service_and_waits_for_the_new_generation(
        tmp_path: Path, cluster: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    assert _deploy(tmp_path)[0] == 0
    assert _deploy(tmp_path, fmt="kale-py")[0] == 0, capsys.readouterr().err
    service = cluster.inference_services[(NAMESPACE, "model")]
    assert service["metadata"]["generation"] == 2
    assert service["status"]["observedGeneration"] == 2
    assert "containers" in service["spec"]["predictor"]
    [put] = cluster.calls("PUT", "/apis/serving.kserve.io/")
    assert json.loads(put.body)["metadata"]["resourceVersion"]  # an update, not a blind write
    # the secret and account made by the first run are replaced, not duplicated
    assert len(cluster.calls("PUT", f"/api/v1/namespaces/{NAMESPACE}/secrets/")) == 1


def test_a_named_service_account_is_used_as_it_is(
        tmp_path: Path, cluster: FakeKubernetes) -> None:
    assert _deploy(tmp_path, "--service-account", "models-reader")[0] == 0
    service = cluster.inference_services[(NAMESPACE, "model")]
    assert service["spec"]["predictor"]["serviceAccountName"] == "models-reader"
    assert not cluster.calls("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets")


def test_a_service_kale_py_did_not_create_is_left_alone(
        tmp_path: Path, cluster: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.inference_services[(NAMESPACE, "model")] = {
        "apiVersion": deploy.GROUP_VERSION, "kind": "InferenceService",
        "metadata": {"name": "model", "namespace": NAMESPACE, "resourceVersion": "77",
                     "generation": 4, "uid": "u"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}}}}}
    code_, url = _deploy(tmp_path)
    assert (code_, url) == (1, "")
    err = capsys.readouterr().err
    assert "an InferenceService model that kale_py did not create exists in" in err
    assert "serving.name in the notebook metadata" in err
    assert not cluster.calls("PUT", "/apis/serving.kserve.io/")


def test_a_service_that_never_gets_ready_fails_the_task_with_kserves_reason(
        tmp_path: Path, cluster: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.isvc_failure = "fail to pull image registry.example.com/team/steps:3"
    code_, _ = _deploy(tmp_path, "--timeout", "0.3")
    err = capsys.readouterr().err
    assert code_ == 1
    assert "InferenceService model in kubeflow-user-example-com was not ready after 0.3 s" in err
    assert "(fail to pull image registry.example.com/team/steps:3)" in err
    assert "kubectl describe inferenceservice model -n kubeflow-user-example-com" in err


def test_a_forbidden_write_names_the_service_account_problem(
        tmp_path: Path, cluster: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.forbidden.add(("create", "inferenceservices"))
    assert _deploy(tmp_path)[0] == 1
    err = capsys.readouterr().err
    assert "the pipeline's service account may not write InferenceService model in" in err
    assert "HTTP 403" in err and "cannot create resource" in err


def test_without_kfps_artifact_keys_it_asks_for_a_service_account(
        tmp_path: Path, cluster: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    del cluster.secrets[(NAMESPACE, "mlpipeline-minio-artifact")]
    assert _deploy(tmp_path)[0] == 1
    err = capsys.readouterr().err
    assert "cannot read the secret mlpipeline-minio-artifact (HTTP 404)" in err
    assert "(serving.service_account)" in err
    assert not cluster.inference_services


def test_without_kserve_in_the_cluster_the_task_says_so(
        tmp_path: Path, cluster: FakeKubernetes, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "ISVC_PATH", "/apis/serving.kserve.io/v9/namespaces/{ns}/x")
    assert _deploy(tmp_path, "--service-account", "sa")[0] == 1
    assert "no KServe API in this cluster (HTTP 404" in capsys.readouterr().err


def test_the_runtime_zip_holds_what_the_serving_tasks_import() -> None:
    import io
    import zipfile

    from kale_py.kubeflow.compile import runtime_zip

    names = set(zipfile.ZipFile(io.BytesIO(runtime_zip())).namelist())
    assert {"kale_py/serving/export.py", "kale_py/serving/deploy.py",
            "kale_py/serving/predictor.py", "kale_py/serving/model.py",
            "kale_py/serving/__init__.py", "kale_py/kubeflow/cleanup.py"} <= names


# --- where the served models stand: nb2pipe serve --cluster, the panel's route --------------


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               clean_kfp_environment: None) -> Iterator[FakeKubernetes]:
    """A fake API server reached through a kubeconfig, as on a laptop."""
    fake = FakeKubernetes().start()
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "kind-kubeflow",
              "clusters": [{"name": "kind", "cluster": {"server": fake.url}}],
              "users": [{"name": "me", "user": {"token": fake.token}}],
              "contexts": [{"name": "kind-kubeflow", "context": {
                  "cluster": "kind", "user": "me", "namespace": NAMESPACE}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    yield fake
    fake.stop()


def _ready_service(fake: FakeKubernetes, name: str = "model", ours: bool = True) -> None:
    labels = {"app.kubernetes.io/created-by": "kale-py"} if ours else {}
    fake.inference_services[(NAMESPACE, name)] = {
        "apiVersion": deploy.GROUP_VERSION, "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels,
                     "resourceVersion": "5", "generation": 1, "uid": "u"},
        "spec": {}, "status": {}}
    fake._polls[(NAMESPACE, name)] = 0


def test_serve_cluster_prints_each_models_url(
        tmp_path: Path, kubeconfig: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn", tags=("serve:model", "serve:X"))
    _ready_service(kubeconfig)
    assert main(["serve", str(nb), "--cluster"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"X: InferenceService x in {NAMESPACE}: not deployed: no "
        "InferenceService yet: it is made when a run of the pipeline ends (nb2pipe submit)",
        f"model: InferenceService model in {NAMESPACE}: ready: "
        f"http://model.{NAMESPACE}.kubeflow.example.com/v2/models/model/infer"]


def test_serve_cluster_says_why_a_service_is_not_ready_or_not_ours(
        tmp_path: Path, kubeconfig: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    from kale_py.api import serving_status

    nb = notebook(tmp_path / "reg.ipynb", "sklearn", tags=("serve:model", "serve:y"))
    _ready_service(kubeconfig)
    _ready_service(kubeconfig, "y", ours=False)
    kubeconfig.isvc_failure = "RevisionMissing: the predictor's image cannot be pulled"
    answer = serving_status(nb)
    by_name = {s["name"]: s for s in answer["services"]}
    assert by_name["model"]["state"] == "not ready"
    assert by_name["model"]["message"] == "RevisionMissing: the predictor's image cannot be pulled"
    assert by_name["y"]["state"] == "foreign"
    assert "kale_py did not create" in by_name["y"]["message"]


def test_serve_cluster_refused_by_the_api_is_one_line(
        tmp_path: Path, kubeconfig: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn")
    kubeconfig.forbidden.add(("get", "inferenceservices"))
    assert main(["serve", str(nb), "--cluster"]) == 1
    err = capsys.readouterr().err
    assert "KF202" in err and f"refused to read the InferenceServices in {NAMESPACE}" in err
    assert "Traceback" not in err


def test_serve_cluster_without_any_kubernetes_api_is_one_line(
        tmp_path: Path, clean_kfp_environment: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn")
    assert main(["serve", str(nb), "--cluster"]) == 1
    err = capsys.readouterr().err
    assert "KF105" in err and "no Kubernetes API to read the InferenceServices from" in err


def test_serve_cluster_without_a_served_model_is_nb801(
        tmp_path: Path, kubeconfig: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn", tags=())
    assert main(["serve", str(nb), "--cluster"]) == 1
    assert "NB801" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--run", "r1"], ["--name", "n"], ["--variable", "model"]])
def test_serve_cluster_takes_no_local_flags(
        tmp_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn")
    assert main(["serve", str(nb), "--cluster", *flags]) == 2
    assert "--cluster shows every served model" in capsys.readouterr().err


def test_compile_and_submit_say_where_the_model_will_be_served(
        tmp_path: Path, kfp: Any, clean_kfp_environment: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn")
    assert main(["compile", str(nb), "-o", str(tmp_path / "p.yaml")]) == 0
    assert ("model is served as the KServe InferenceService 'model' when a run of this "
            f"pipeline ends; its URL: nb2pipe serve {nb} --cluster") in capsys.readouterr().out
    assert main(["submit", str(nb), "--host", kfp.url]) == 0
    assert "InferenceService 'model' when the run ends" in capsys.readouterr().out


async def test_the_panels_route_reads_the_services(
        jp_fetch: Any, jp_root_dir: Path, kubeconfig: FakeKubernetes) -> None:
    notebook(jp_root_dir / "reg.ipynb", "sklearn")
    _ready_service(kubeconfig)
    response = await jp_fetch("kale-py", "serving", params={"path": "reg.ipynb"})
    answer = json.loads(response.body)
    assert answer == {"namespace": NAMESPACE, "services": [{
        "variable": "model", "name": "model", "state": "ready", "message": "",
        "url": f"http://model.{NAMESPACE}.kubeflow.example.com/v2/models/model/infer"}]}


def test_tuning_trials_run_the_pipeline_without_deploying_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "reg.ipynb", "sklearn")
    data = json.loads(nb.read_text())
    data["cells"].insert(1, code("ALPHA = 0.5", ["pipeline-parameters"]))
    data["cells"][-1]["source"] = "model = Ridge(alpha=ALPHA).fit(X, y)\nscore = model.score(X, y)"
    data["cells"].append(code("print(score)", ["pipeline-metrics"]))
    nb.write_text(json.dumps(data))
    assert main(["compile", str(nb), "-o", str(tmp_path / "p.yaml"), "--tune", "--search",
                 "ALPHA=0.1..1", "--objective", "score", "--maximize"]) == 0, \
        capsys.readouterr().err
    # the pipeline itself deploys the model; the trials' copy of it does not
    assert "deploy-model" in spec_of(tmp_path / "p.yaml")["root"]["dag"]["tasks"]
    listing = json.loads((tmp_path / "p.katib.yaml").read_text())
    config_map = listing["items"][0]
    trial_spec = json.loads(config_map["data"]["pipeline.json"])["pipeline_spec"]
    assert set(trial_spec["root"]["dag"]["tasks"]) == {"kale-runtime", "data", "train"}


def test_a_pipeline_account_that_may_not_make_secrets_is_told_what_to_name(
        tmp_path: Path, cluster: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.forbidden.add(("create", "secrets"))
    assert _deploy(tmp_path)[0] == 1
    err = capsys.readouterr().err
    assert "cannot write the Secret kale-py-serving-s3 that lets KServe read the model" in err
    assert "HTTP 403" in err and "(serving.service_account)" in err
    assert not cluster.inference_services


def test_state_changed_in_the_artifact_store_is_refused_by_the_export_task(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], kfp_local: KfpLocal) -> None:
    def damage(command: list[str]) -> None:
        if "--export-model" in command:
            state = Path(_arg(command, "--state-in"))
            data = bytearray((state / "model.kpk").read_bytes())
            data[-9] ^= 0xFF
            (state / "model.kpk").write_bytes(bytes(data))

    with pytest.raises(RuntimeError):
        kfp_local(notebook(tmp_path / "reg.ipynb", "sklearn"), damage)
    out = capfd.readouterr()
    text = out.out + out.err
    assert "kale_py: cannot export 'model':" in text and "digest mismatch" in text
    assert not list(tmp_path.glob("kfp/*/export-model/model/*"))


def test_without_kserve_in_the_image_the_python_predictor_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from kale_py.serving import export

    class Scaled:
        def predict(self, X: Any) -> Any:
            return X

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kserve" else real(name, *a))
    problem = export.predictor_problem(Scaled(), export.PYTHON, None)
    assert problem is not None
    assert "Scaled: kale_py serves it with its Python predictor, in this step's image, which " \
        "lacks KServe's model server" in problem and "(serving.image)" in problem
    # another image named for the predictor, or a built-in runtime: nothing to refuse here
    assert export.predictor_problem(Scaled(), export.PYTHON, "team/serve:1") is None
    assert export.predictor_problem(Scaled(), export.SKLEARN, None) is None


def _shift(X: Any) -> Any:
    return X + 1


def test_which_runtime_serves_which_model() -> None:
    import lightgbm as lgb
    import numpy as np
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from kale_py.serving.export import model_format

    X, y = np.arange(40.0).reshape(20, 2), np.arange(20) % 2
    pure = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    assert model_format(pure) == "sklearn"
    assert model_format(RandomForestClassifier(n_estimators=3).fit(X, y)) == "sklearn"
    # a function of the notebook's (here: of this module) cannot be loaded by the runtime
    custom = make_pipeline(FunctionTransformer(_shift), LogisticRegression()).fit(X, y)
    assert model_format(custom) == "kale-py"
    assert model_format(make_pipeline(FunctionTransformer(lambda v: v),
                                      LogisticRegression()).fit(X, y)) == "kale-py"
    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(X, y), num_boost_round=2)
    assert model_format(booster) == "xgboost"
    assert model_format(xgb.XGBClassifier(n_estimators=2).fit(X, y)) == "xgboost"
    assert model_format(lgb.LGBMClassifier(n_estimators=2, verbose=-1,
                                           min_child_samples=2).fit(X, y)) == "lightgbm"
    # asked for: the Python predictor, whatever the model
    assert model_format(pure, "python") == "kale-py"


def test_a_watched_run_prints_where_its_model_is_served(
        tmp_path: Path, kfp: Any, kubeconfig: FakeKubernetes,
        capsys: pytest.CaptureFixture[str]) -> None:
    kfp.run_states = ("RUNNING", "SUCCEEDED")
    nb = notebook(tmp_path / "reg.ipynb", "sklearn")
    _ready_service(kubeconfig)
    assert main(["submit", str(nb), "--host", kfp.url, "--watch"]) == 0
    out = capsys.readouterr().out
    assert (f"model is served as InferenceService model in {NAMESPACE}: "
            f"http://model.{NAMESPACE}.kubeflow.example.com/v2/models/model/infer") in out


def test_a_watched_run_without_kubernetes_credentials_still_succeeds(
        tmp_path: Path, kfp: Any, clean_kfp_environment: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    kfp.run_states = ("SUCCEEDED",)
    nb = notebook(tmp_path / "reg.ipynb", "sklearn")
    assert main(["submit", str(nb), "--host", kfp.url, "--watch"]) == 0
    out = capsys.readouterr().out
    assert f"the served models' URLs: nb2pipe serve {nb} --cluster (not read here:" in out
    assert "no Kubernetes API to read the InferenceServices from" in out
