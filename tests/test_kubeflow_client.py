"""Submitting to Kubeflow Pipelines, against the fake backend in fake_kfp.py."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kfp import API, SERVICE_PROXY, FakeKfp

from kale_py.diagnostics import SubmitError
from kale_py.kubeflow import client
from kale_py.kubeflow.client import (
    IN_CLUSTER_HOST,
    list_experiments,
    resolve_endpoint,
    run_status,
    submit_pipeline,
)

PIPELINE_YAML = "# PIPELINE DEFINITION\n# Name: demo\npipelineInfo:\n  name: demo\n"


pytestmark = pytest.mark.usefixtures("clean_kfp_environment")


def submit(fake: FakeKfp, **kwargs: Any) -> tuple[client.SubmitResult, list[str]]:
    lines: list[str] = []
    options: dict[str, Any] = {"name": "demo", "description": "A demo.", "host": fake.url,
                               "params": {"n": 5, "rate": 0.1}, "out": lines.append,
                               "poll_seconds": 0.0, **kwargs}
    return submit_pipeline(PIPELINE_YAML, **options), lines


# --- uploads, experiments, runs -------------------------------------------------------------------

def test_first_submit_uploads_the_pipeline_and_starts_a_run(kfp: FakeKfp) -> None:
    result, lines = submit(kfp, experiment="nb-experiments")

    (upload,) = kfp.calls("POST", "/pipelines/upload")
    assert upload.query == {"name": ["demo"], "description": ["A demo."]}
    assert upload.upload() == ("demo.yaml", PIPELINE_YAML.encode())
    assert upload.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    (run,) = kfp.calls("POST", "/runs")
    assert run.json() == {
        "display_name": run.json()["display_name"],
        "experiment_id": result.experiment_id,
        "pipeline_version_reference": {"pipeline_id": result.pipeline_id,
                                       "pipeline_version_id": result.version_id},
        "runtime_config": {"parameters": {"n": 5, "rate": 0.1}},
    }
    assert run.json()["display_name"].startswith("demo ")
    assert result.version_id == kfp.versions[result.pipeline_id][0]["pipeline_version_id"]
    assert kfp.experiments[result.experiment_id]["display_name"] == "nb-experiments"
    assert result.run_url == f"{kfp.url}/#/runs/details/{result.run_id}"
    assert result.final_state is None
    assert lines == ["Uploaded pipeline 'demo'", "Created experiment 'nb-experiments'",
                     f"Run '{run.json()['display_name']}' started: {result.run_url}"]


def test_second_submit_uploads_a_version_and_reuses_the_experiment(kfp: FakeKfp) -> None:
    first, _ = submit(kfp)
    second, lines = submit(kfp, version_name="v2")

    assert len(kfp.calls("POST", "/pipelines/upload")) == 1
    (version,) = kfp.calls("POST", "/pipelines/upload_version")
    assert version.query == {"name": ["v2"], "pipelineid": [first.pipeline_id]}
    assert version.upload() == ("demo.yaml", PIPELINE_YAML.encode())
    assert len(kfp.calls("POST", "/experiments")) == 1
    assert second.pipeline_id == first.pipeline_id
    assert second.version_id != first.version_id
    assert second.experiment_id == first.experiment_id
    assert kfp.calls("POST", "/runs")[1].json()["pipeline_version_reference"] == {
        "pipeline_id": first.pipeline_id, "pipeline_version_id": second.version_id}
    assert lines[0] == "Uploaded version 'v2' of pipeline 'demo'"
    assert kfp.experiments[first.experiment_id]["display_name"] == "Default"


def test_run_without_upload_carries_the_pipeline_and_its_platform_spec(kfp: FakeKfp) -> None:
    two_documents = PIPELINE_YAML + "---\nplatforms:\n  kubernetes: {}\n"
    result = submit_pipeline(two_documents, name="demo", host=kfp.url, upload=False,
                             out=lambda line: None)
    assert kfp.calls("POST", "/pipelines/upload") == [] == kfp.calls("GET", "/pipelines")
    (run,) = kfp.calls("POST", "/runs")
    assert run.json()["pipeline_spec"] == {"pipeline_spec": {"pipelineInfo": {"name": "demo"}},
                                           "platform_spec": {"platforms": {"kubernetes": {}}}}
    assert "pipeline_version_reference" not in run.json()
    assert (result.pipeline_id, result.version_id) == ("", "")


def test_lookups_filter_by_display_name(kfp: FakeKfp) -> None:
    submit(kfp, experiment="exp")
    (lookup,) = kfp.calls("GET", "/pipelines")
    assert yaml.safe_load(lookup.query["filter"][0]) == {"predicates": [
        {"key": "display_name", "operation": "EQUALS", "stringValue": "demo"}]}


def test_list_experiments(kfp: FakeKfp) -> None:
    submit(kfp, experiment="one")
    submit(kfp, experiment="two")
    assert [e.display_name for e in list_experiments(host=kfp.url)] == ["one", "two"]


# --- watching a run -------------------------------------------------------------------------------

def test_watch_follows_the_run_to_success(kfp: FakeKfp) -> None:
    result, lines = submit(kfp, watch=True)
    assert result.final_state == "SUCCEEDED"
    assert lines[3:] == ["  step-0: PENDING", "Run PENDING",
                         "  step-0: SUCCEEDED", "  step-1: RUNNING", "Run RUNNING",
                         "  step-1: SUCCEEDED", "  step-2: SUCCEEDED", "Run SUCCEEDED"]
    assert len(kfp.calls("GET", f"/runs/{result.run_id}")) == 3


def test_watch_reports_a_failed_run(kfp: FakeKfp) -> None:
    kfp.run_states = ("PENDING", "RUNNING", "FAILED")
    result, lines = submit(kfp, watch=True)
    assert result.final_state == "FAILED"
    assert lines[-2:] == ["  step-2: FAILED", "Run FAILED"]


def test_run_status_follows_a_run_and_names_the_failing_step(kfp: FakeKfp) -> None:
    """What the panel polls after a submit: the state, the link and the failed task."""
    kfp.run_states = ("RUNNING", "FAILED")
    result, _ = submit(kfp)
    first = run_status(result.run_id, host=kfp.url)
    assert first == {"run_id": result.run_id, "state": "RUNNING",
                     "url": f"{kfp.url}/#/runs/details/{result.run_id}",
                     "failed_step": None, "error": None}
    second = run_status(result.run_id, host=kfp.url)
    assert (second["state"], second["failed_step"]) == ("FAILED", "step-1")


def test_run_status_of_an_unknown_run_is_one_line(kfp: FakeKfp) -> None:
    with pytest.raises(SubmitError) as caught:
        run_status("no-such-run", host=kfp.url)
    [problem] = caught.value.diagnostics
    assert problem.code == "KF103"
    assert "/runs/no-such-run" in problem.message and "404" in problem.message


# --- authentication -------------------------------------------------------------------------------

def authorization(kfp: FakeKfp) -> set[str | None]:
    return {r.headers.get("Authorization") for r in kfp.requests}


def test_token_argument_is_sent_on_every_request(kfp: FakeKfp) -> None:
    kfp.token = "tok-123"
    submit(kfp, token="tok-123")
    assert authorization(kfp) == {"Bearer tok-123"}


def test_token_from_the_environment(kfp: FakeKfp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "env-tok")
    submit(kfp)
    assert authorization(kfp) == {"Bearer env-tok"}


def test_service_account_token_file_is_read_before_each_request(
        kfp: FakeKfp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("sa-first\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    submit(kfp)
    assert authorization(kfp) == {"Bearer sa-first"}
    token_file.write_text("sa-rotated\n")
    list_experiments(host=kfp.url)
    assert kfp.requests[-1].headers["Authorization"] == "Bearer sa-rotated"


def test_no_credentials_means_no_header(kfp: FakeKfp) -> None:
    submit(kfp)
    assert authorization(kfp) == {None}


def write_kubeconfig(home: Path, server: str, user: dict[str, Any]) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "me",
                                                 "namespace": "team-a"}}],
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": user}],
    }
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(yaml.safe_dump(config))


def test_kubeconfig_token_through_the_api_server_proxy(kfp: FakeKfp, tmp_path: Path) -> None:
    write_kubeconfig(tmp_path / "home", kfp.url, {"token": "kube-tok"})
    result, _ = submit(kfp, host=None)
    assert authorization(kfp) == {"Bearer kube-tok"}
    assert {r.path.split(API)[0] for r in kfp.requests} == {SERVICE_PROXY}
    assert kfp.calls("POST", "/experiments")[0].json()["namespace"] == "team-a"
    assert result.run_url.startswith(
        f"{kfp.url}/api/v1/namespaces/kubeflow/services/ml-pipeline-ui:80/proxy/#/runs/")


def test_kubeconfig_exec_plugin_that_is_not_installed(kfp: FakeKfp, tmp_path: Path) -> None:
    write_kubeconfig(tmp_path / "home", kfp.url, {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "no-such-auth-plugin"}})
    with pytest.raises(SubmitError, match=r"cannot use the kubeconfig .*: .*"
                                          "no-such-auth-plugin.*; fix it, or pass --host"):
        submit(kfp, host=None)
    assert kfp.requests == []


def test_no_endpoint_anywhere_says_how_to_give_one() -> None:
    with pytest.raises(SubmitError, match="no KFP endpoint: pass --host URL, set kfp_host"):
        resolve_endpoint()


def test_in_a_pod_the_in_cluster_service_and_its_token(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    (tmp_path / "sa").write_text("pod-tok")
    (tmp_path / "ns").write_text("kubeflow-user-example-com\n")
    monkeypatch.setattr(client, "DEFAULT_SA_TOKEN_PATH", str(tmp_path / "sa"))
    monkeypatch.setattr(client, "POD_NAMESPACE_PATH", str(tmp_path / "ns"))
    endpoint = resolve_endpoint()
    assert endpoint.api == IN_CLUSTER_HOST
    assert endpoint.namespace == "kubeflow-user-example-com"
    assert endpoint.auth.headers() == {"Authorization": "Bearer pod-tok"}
    assert client.Client(endpoint).run_url("r1") == "/_/pipeline/#/runs/details/r1"


def test_host_precedence_and_ui_link(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "kfp.example.com:8888")
    assert resolve_endpoint().api == "http://kfp.example.com:8888"
    assert resolve_endpoint("https://kubeflow.example.com/pipeline/").api == \
        "https://kubeflow.example.com/pipeline"
    monkeypatch.setenv("KF_PIPELINES_UI_ENDPOINT", "https://ui.example.com")
    assert client.Client(resolve_endpoint()).run_url("r1") == \
        "https://ui.example.com/#/runs/details/r1"


# --- namespaces -----------------------------------------------------------------------------------

def test_multi_user_backend_needs_a_namespace(kfp: FakeKfp) -> None:
    kfp.multi_user = True
    with pytest.raises(SubmitError, match="is multi-user: pass --namespace"):
        submit(kfp)
    submit(kfp, namespace="team-b", experiment="exp")
    (lookup,) = kfp.calls("GET", "/experiments")
    assert lookup.query["namespace"] == ["team-b"]
    assert kfp.calls("POST", "/experiments")[0].json() == {"display_name": "exp",
                                                            "namespace": "team-b"}
    assert [e.namespace for e in list_experiments(host=kfp.url, namespace="team-b")] == [
        "team-b"]
    assert list_experiments(host=kfp.url, namespace="other") == []


# --- errors: one line each, never a traceback -----------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def failure(**kwargs: Any) -> SubmitError:
    with pytest.raises(SubmitError) as e:
        submit_pipeline(PIPELINE_YAML, name="demo", out=lambda line: None, **kwargs)
    (diagnostic,) = e.value.diagnostics
    assert "\n" not in diagnostic.message
    return e.value


def test_unreachable_endpoint() -> None:
    port = free_port()
    e = failure(host=f"http://127.0.0.1:{port}")
    assert e.diagnostics[0].code == "KF101"
    assert str(e) == (f"cannot reach the KFP endpoint at http://127.0.0.1:{port}: [Errno 111] "
                      "Connection refused; check --host (or kfp_host, KF_PIPELINES_ENDPOINT)")


def test_401_names_the_missing_credentials_and_the_fix(kfp: FakeKfp) -> None:
    kfp.token = "secret"
    e = failure(host=kfp.url)
    assert e.diagnostics[0].code == "KF102"
    assert str(e) == (f"GET {API}/healthz at {kfp.url} was refused (HTTP 401 Unauthorized) "
                      "with no credentials: pass --token (or set KF_PIPELINES_TOKEN), or run in "
                      "a Kubeflow notebook with access to Kubeflow Pipelines (the "
                      "access-ml-pipeline PodDefault)")


def test_403_names_the_token_used(kfp: FakeKfp) -> None:
    kfp.fail_with = (403, {"error": "forbidden", "code": 7, "message": "forbidden"})
    e = failure(host=kfp.url, token="old")
    assert str(e) == (f"GET {API}/healthz at {kfp.url} was refused (HTTP 403 Forbidden) with "
                      "the bearer token from --token: the token may have expired or lack access "
                      "to this namespace: use a fresh one")


def test_404_points_at_the_host_or_path_prefix(kfp: FakeKfp) -> None:
    e = failure(host=f"{kfp.url}/not-kfp")
    assert e.diagnostics[0].code == "KF103"
    assert str(e) == (f"GET {API}/healthz at {kfp.url}/not-kfp answered 404 Not Found: the host "
                      "is not a KFP API endpoint or its path prefix is wrong "
                      "(e.g. https://HOST/pipeline)")


def test_500_carries_the_server_message(kfp: FakeKfp) -> None:
    kfp.fail_with = (500, {"error": "x", "code": 13,
                           "message": "Internal error: failed to list\n experiments: db down"})
    e = failure(host=kfp.url)
    assert e.diagnostics[0].code == "KF104"
    assert str(e) == (f"KFP server error (HTTP 500) on GET {API}/healthz at {kfp.url}: "
                      "Internal error: failed to list experiments: db down")


def test_an_answer_that_is_not_kfp_json(kfp: FakeKfp) -> None:
    kfp.fail_with = (200, "<html>login page</html>")
    e = failure(host=kfp.url)
    assert "did not answer with KFP JSON" in str(e)
