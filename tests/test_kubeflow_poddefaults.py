"""PodDefault labels and image pull secrets on the steps: tags, metadata, the cluster's list.

The namespace's PodDefaults come from tests/fake_kubernetes.py (a local HTTP server speaking the
Kubernetes API's paths and JSON, since no API server can run here). The compiled files are
strictly validated by compile, and one runs with ``kfp.local``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kubernetes import NAMESPACE, POD_NAME, TOKEN, FakeKubernetes
from test_kubeflow_ir import FAKE_RUNTIME, PARAMS, fake_runtime_zip, pipeline, task

from kale_py.cli import main
from kale_py.cluster import ClusterConfig
from kale_py.graph import build_pipeline
from kale_py.kubeflow.compile import compile_pipeline
from kale_py.kubeflow.ir import build_ir, ir_to_yaml
from kale_py.kubeflow.poddefaults import list_poddefaults, resolver
from kale_py.kubeflow.validate import validate_ir
from kale_py.notebook import read_notebook

Json = dict[str, Any]


def notebook(path: Path, metadata: Json, cells: list[tuple[list[str], str]]) -> Path:
    path.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"},
                     "kubeflow_notebook": metadata},
        "cells": [{"cell_type": "code", "metadata": {"tags": tags}, "source": source,
                   "outputs": [], "execution_count": None, "id": f"c{i}"}
                  for i, (tags, source) in enumerate(cells)]}))
    return path


def executors(text: str) -> Json:
    _, platform = yaml.safe_load_all(text)
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]  # type: ignore[no-any-return]


def test_tags_and_metadata_name_poddefaults_and_pull_secrets(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "nb.ipynb",
                  {"poddefaults": ["access-ml-pipeline"], "image_pull_secrets": ["regcred"]},
                  [(["step:load"], "x = 1"),
                   (["step:train", "poddefault:gcp-credentials", "pull-secret:gpu-registry"],
                    "y = x + 1")])
    pipe = build_pipeline(read_notebook(nb))
    assert pipe.ok, pipe.diagnostics
    text = compile_pipeline(pipe, discover=False).yaml  # validated strictly before returning
    config = executors(text)
    assert config["exec-load"]["podMetadata"]["labels"] == {"access-ml-pipeline": "true"}
    assert config["exec-train"]["podMetadata"]["labels"] == {
        "access-ml-pipeline": "true", "gcp-credentials": "true"}
    assert [s["secretName"] for s in config["exec-load"]["imagePullSecret"]] == ["regcred"]
    assert [s["secretName"] for s in config["exec-train"]["imagePullSecret"]] == [
        "regcred", "gpu-registry"]


def test_bad_names_are_diagnosed_at_their_cell_and_key(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    nb = notebook(tmp_path / "bad.ipynb", {"poddefaults": "access-ml-pipeline"},
                  [(["step:load", "poddefault:Not_A_Name"], "x = 1")])
    assert main(["check", str(nb)]) == 1
    out = capsys.readouterr().out
    assert "metadata.kubeflow_notebook.poddefaults must be a list of names" in out
    assert "malformed tag 'poddefault:Not_A_Name': expected poddefault:NAME" in out
    assert "cell 1" in out


def test_pod_settings_run_under_kfp_local(tmp_path: Path) -> None:
    from kfp import components
    from kfp_local_shim import container_components_as_subprocesses

    t = task("only", parameters=("n",), payload=fake_runtime_zip(FAKE_RUNTIME, "only"),
             labels=(("access-ml-pipeline", "true"),), pull_secrets=("regcred",))
    spec, platform = build_ir(pipeline(t, params=PARAMS))
    validate_ir(spec, platform)
    path = tmp_path / "p.yaml"
    path.write_text(ir_to_yaml(spec, platform))
    with container_components_as_subprocesses(pipeline_root=tmp_path / "runs"):
        components.load_component_from_file(str(path))(n=4)
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "only" / "state" / "record.json").read_text())["params"]["n"] == 4


# --- in a cluster -------------------------------------------------------------------------------

def poddefault(name: str, labels: dict[str, str], desc: str) -> Json:
    return {"apiVersion": "kubeflow.org/v1alpha1", "kind": "PodDefault",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"desc": desc, "selector": {"matchLabels": labels},
                     "env": [{"name": "X", "value": "1"}]}}


@pytest.fixture
def k8s() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes().start()
    fake.poddefaults[(NAMESPACE, "access-ml-pipeline")] = poddefault(
        "access-ml-pipeline", {"access-ml-pipeline": "true"},
        "Allow access to Kubeflow Pipelines")
    fake.poddefaults[(NAMESPACE, "gcp-credentials")] = poddefault(
        "gcp-credentials", {"add-gcp-secret": "true"}, "Mount the GCP key")
    fake.poddefaults[("other-namespace", "not-ours")] = poddefault("not-ours", {"x": "y"}, "")
    yield fake
    fake.stop()


def config_for(fake: FakeKubernetes) -> ClusterConfig:
    return ClusterConfig(api_url=fake.url, token=TOKEN, ca_file=None, namespace=NAMESPACE,
                         pod_name=POD_NAME)


def test_steps_get_the_notebooks_poddefaults_and_named_ones_by_their_selector(
        k8s: FakeKubernetes) -> None:
    labels, problems = resolver(config_for(k8s))
    assert problems == []
    # the notebook pod carries access-ml-pipeline=true: that PodDefault follows it to the steps
    assert labels.notebook == (("access-ml-pipeline", "true"),)
    assert dict(labels.labels(["gcp-credentials", "team-default"])) == {
        "access-ml-pipeline": "true", "add-gcp-secret": "true", "team-default": "true"}


def test_poddefaults_that_cannot_be_listed_fall_back_to_the_convention(
        k8s: FakeKubernetes) -> None:
    k8s.forbidden.add(("list", "poddefaults"))
    labels, problems = resolver(config_for(k8s))
    [warned] = problems
    assert warned.code == "KF208" and "may not list poddefaults" in warned.message
    assert dict(labels.labels(["gcp-credentials"])) == {"gcp-credentials": "true"}


def test_panel_lists_the_namespaces_poddefaults(k8s: FakeKubernetes) -> None:
    answer = list_poddefaults(config_for(k8s))
    assert answer == {"in_cluster": True, "namespace": NAMESPACE, "message": None, "poddefaults": [
        {"name": "access-ml-pipeline", "description": "Allow access to Kubeflow Pipelines",
         "labels": {"access-ml-pipeline": "true"}},
        {"name": "gcp-credentials", "description": "Mount the GCP key",
         "labels": {"add-gcp-secret": "true"}}]}
    [call] = k8s.calls("GET", "/apis/kubeflow.org/v1alpha1/")
    assert call.path == f"/apis/kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/poddefaults"
    k8s.forbidden.add(("list", "poddefaults"))
    refused = list_poddefaults(config_for(k8s))
    assert refused["poddefaults"] == [] and "HTTP 403" in refused["message"]


def test_panel_off_cluster_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    answer = list_poddefaults()
    assert answer["in_cluster"] is False and "poddefault:NAME" in answer["message"]
