"""nb2pipe tune: Optuna suggests, each trial is a real local run, unchanged steps come from
the cache after the first trial."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kale_py.cli import main

SAMPLES = Path(__file__).parent.parent / "sample_notebooks"


def code(source: str, tags: list[str]) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "outputs": [], "source": source,
            "metadata": {"tags": tags}}


def write(path: Path, cells: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    nb = {"cells": cells, "metadata": {"kubeflow_notebook": meta or {}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


# A quadratic with its peak at x=3, y="b": load reads no tuned parameter, score reads both.
QUADRATIC = [
    code("X = 0\nY = 'a'\nLABEL = 'q'", ["pipeline-parameters"]),
    code("import json\nbase = 10\nopen('load_runs.txt', 'a').write('x')", ["step:load"]),
    code("score = base - (X - 3) ** 2 + {'a': 0, 'b': 1, 'c': 0.5}[Y]", ["step:score"]),
    code("print(score)", ["pipeline-metrics"]),
]


def tune_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["tune", *args, "--format", "json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_grid_search_tries_every_value_and_ranks_by_the_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = write(tmp_path / "q.ipynb", QUADRATIC)
    result = tune_json(capsys, str(nb), "--search", "X=1..5", "--search", "Y=a,b",
                       "--objective", "score", "--maximize", "--algorithm", "grid")
    tried = sorted((t["params"]["X"], t["params"]["Y"]) for t in result["trials"])
    assert tried == [(x, y) for x in range(1, 6) for y in "ab"]
    for t in result["trials"]:
        assert t["value"] == 10 - (t["params"]["X"] - 3) ** 2 + (t["params"]["Y"] == "b")
    assert result["best"]["params"] == {"X": 3, "Y": "b"} and result["best"]["value"] == 11
    # load reads no tuned parameter: it ran once, every later trial took it from the cache
    assert (tmp_path / "load_runs.txt").read_text() == "x"
    later = [t for t in result["trials"] if t["number"] > 0]
    assert all(t["cached_steps"] == 1 and t["steps"] == 2 for t in later)
    report = Path(result["report"])
    assert report.is_file() and report.parent.name == result["tune_id"]
    page = report.read_text()
    assert '<svg id="plot"' in page and page.count('<tr class=') == 10
    assert json.loads((report.parent / "tune.json").read_text())["best"]["value"] == 11


def test_minimize_with_tpe_and_parallel_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = write(tmp_path / "q.ipynb", QUADRATIC)
    result = tune_json(capsys, str(nb), "--search", "X=0..6", "--objective", "score",
                       "--minimize", "--trials", "5", "--parallel", "2", "--seed", "1")
    values = [t["value"] for t in result["trials"]]
    assert len(values) == 5 and result["best"]["value"] == min(values)
    assert result["direction"] == "minimize" and result["algorithm"] == "tpe"
    assert all(0 <= t["params"]["X"] <= 6 and isinstance(t["params"]["X"], int)
               for t in result["trials"])


def test_text_table_is_best_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nb = write(tmp_path / "q.ipynb", QUADRATIC)
    assert main(["tune", str(nb), "--search", "X=2,3,4", "--objective", "score", "--maximize",
                 "--algorithm", "grid"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out.index(next(line for line in out if line.split()[:2] == ["trial", "score"]))
    first = out[header + 1].split()
    assert first[1:3] == ["10", "3"]  # score 10 at X=3
    assert "best 10 at trial" in out[header - 1]
    assert out[-1].startswith("report: ") and out[-1].endswith("report.html")


def test_katib_metadata_says_what_to_tune(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    katib = {"parameters": [{"name": "X", "parameterType": "int",
                             "feasibleSpace": {"min": "2", "max": "4"}}],
             "objective": {"type": "maximize", "objectiveMetricName": "score"},
             "algorithm": {"algorithmName": "grid"}, "maxTrialCount": 10}
    nb = write(tmp_path / "q.ipynb", QUADRATIC, {"katib_metadata": katib})
    result = tune_json(capsys, str(nb))
    assert sorted(t["params"]["X"] for t in result["trials"]) == [2, 3, 4]
    assert result["best"]["params"]["X"] == 3


def test_failed_trials_are_reported_and_the_search_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cells = [*QUADRATIC[:2], code("assert X != 4, 'X=4 breaks'\nscore = X", ["step:score"]),
             QUADRATIC[3]]
    nb = write(tmp_path / "q.ipynb", cells)
    result = tune_json(capsys, str(nb), "--search", "X=3..5", "--objective", "score",
                       "--maximize", "--algorithm", "grid")
    failed = [t for t in result["trials"] if t["state"] == "failed"]
    assert [t["params"]["X"] for t in failed] == [4]
    assert "X=4 breaks" in failed[0]["error"] and "cell 3" in failed[0]["error"]
    assert result["best"]["params"]["X"] == 5


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--search", "Z=1..2", "--objective", "score"], "NB601", "no pipeline parameter"),
        (["--search", "X=5..1", "--objective", "score"], "NB601", "low end must be below"),
        (["--search", "Y=1..2", "--objective", "score"], "NB601", "give a list of choices"),
        (["--search", "X=a,b", "--objective", "score"], "NB601", "'a' is not a int"),
        (["--search", "X=0..1:log", "--objective", "score"], "NB601", "positive low end"),
        (["--search", "X=1..3:cubic", "--objective", "score"], "NB601", "unknown option"),
        (["--search", "X", "--objective", "score"], "NB601", "expected NAME="),
        (["--search", "X=1..3", "--objective", "loss"], "NB602", "not a pipeline metric"),
        (["--search", "X=1..3"], "NB601", "no objective"),
        ([], "NB601", "nothing to tune"),
    ],
)
def test_bad_searches_are_one_line_and_run_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: str,
    fragment: str,
) -> None:
    nb = write(tmp_path / "q.ipynb", QUADRATIC)
    assert main(["tune", str(nb), *args]) == 1
    err = capsys.readouterr().err
    assert code in err and fragment in err and "Traceback" not in err
    assert not (tmp_path / ".nb2pipe").exists()


def test_grid_over_a_float_range_needs_a_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cells = [code("X = 0.5", ["pipeline-parameters"]), code("score = X", ["step:s"]),
             code("print(score)", ["pipeline-metrics"])]
    nb = write(tmp_path / "f.ipynb", cells)
    assert main(["tune", str(nb), "--search", "X=0.1..0.3", "--objective", "score",
                 "--algorithm", "grid"]) == 1
    assert "needs a step: X=0.1..0.3:step=S" in capsys.readouterr().err
    result = tune_json(capsys, str(nb), "--search", "X=0.1..0.3:step=0.1", "--objective",
                       "score", "--maximize", "--algorithm", "grid")
    assert sorted(t["params"]["X"] for t in result["trials"]) == [0.1, 0.2, 0.3]


def test_tune_the_iris_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real notebook: scikit-learn trials, load and split computed once."""
    nb = tmp_path / "iris_classifier.ipynb"
    shutil.copy(SAMPLES / "iris_classifier.ipynb", nb)
    result = tune_json(capsys, str(nb), "--search", "N_ESTIMATORS=2,5,40", "--objective",
                       "accuracy", "--maximize", "--algorithm", "grid")
    assert len(result["trials"]) == 3
    assert result["best"]["value"] == max(t["value"] for t in result["trials"])
    assert all(t["cached_steps"] == 2 for t in result["trials"] if t["number"] > 0)


# --- on Kubeflow: a Katib Experiment whose trials run the pipeline ---------------------------


def _katib(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> list[Any]:
    nb = write(tmp_path / "q.ipynb", QUADRATIC,
               {"experiment_name": "tuning", "namespace": "team-a"})
    assert main(["compile", str(nb), "--tune", *flags]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "q.katib.yaml: Katib Experiment 'q'" in out
    listing = json.loads((tmp_path / "q.katib.yaml").read_text())
    assert listing["kind"] == "List"
    return listing["items"]  # type: ignore[no-any-return]


def test_compile_tune_writes_a_katib_experiment_that_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubeflow_katib_api.models import V1beta1Experiment

    config_map, experiment = _katib(tmp_path, capsys, "--search", "X=1..5", "--search",
                                    "Y=a,b", "--objective", "score", "--maximize",
                                    "--trials", "6", "--parallel", "2", "--algorithm", "random")
    # Katib's own API models read it whole: nothing is dropped or renamed on the way
    model = V1beta1Experiment.from_dict(experiment)
    assert model is not None
    assert model.to_dict() == experiment
    spec = experiment["spec"]
    assert spec["objective"] == {"type": "maximize", "objectiveMetricName": "score"}
    assert (spec["maxTrialCount"], spec["parallelTrialCount"]) == (6, 2)
    assert spec["parameters"] == [
        {"name": "X", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "5"}},
        {"name": "Y", "parameterType": "categorical", "feasibleSpace": {"list": ["a", "b"]}},
    ]
    assert spec["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    job = spec["trialTemplate"]["trialSpec"]
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"] == {"access-ml-pipeline": "true"}
    [container] = pod["spec"]["containers"]
    assert spec["trialTemplate"]["primaryContainerName"] == container["name"]
    command = container["command"]
    assert command[:2] == ["python3", "/kale-py/trial.py"]
    assert "X=int:${trialParameters.X}" in command and "Y=str:${trialParameters.Y}" in command
    assert command[command.index("--experiment") + 1] == "tuning"
    references = {p["reference"] for p in spec["trialTemplate"]["trialParameters"]}
    assert references == {"X", "Y", "${trialSpec.Name}"}
    assert experiment["metadata"] == {"name": "q", "namespace": "team-a"}
    # the trials mount the pipeline and the driver from the ConfigMap
    assert pod["spec"]["volumes"] == [{"name": "kale-py", "configMap": {"name": "q-pipeline"}}]
    assert config_map["metadata"]["name"] == "q-pipeline"
    # a run's pipeline_spec, as `submit` without upload sends it
    source = json.loads(config_map["data"]["pipeline.json"])["pipeline_spec"]
    spec_doc = source.get("pipeline_spec", source)
    assert spec_doc["pipelineInfo"]["name"] == "q"
    assert "def main(" in config_map["data"]["trial.py"]


def test_compile_tune_log_range_and_katib_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cells = [code("LR = 0.1", ["pipeline-parameters"]), code("score = -LR", ["step:s"]),
             code("print(score)", ["pipeline-metrics"])]
    nb = write(tmp_path / "lr.ipynb", cells)
    assert main(["compile", str(nb), "--tune", "--search", "LR=0.001..1:log", "--objective",
                 "score", "--minimize"]) == 0
    [_, experiment] = json.loads((tmp_path / "lr.katib.yaml").read_text())["items"]
    assert experiment["spec"]["parameters"] == [{
        "name": "LR", "parameterType": "double",
        "feasibleSpace": {"min": "0.001", "max": "1.0", "distribution": "logUniform"}}]
    assert experiment["spec"]["objective"]["type"] == "minimize"
    assert experiment["spec"]["algorithm"] == {"algorithmName": "tpe"}


def test_compile_tune_refuses_a_bad_search_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = write(tmp_path / "q.ipynb", QUADRATIC)
    assert main(["compile", str(nb), "--tune", "--search", "X=1..3",
                 "--objective", "nope"]) == 1
    assert "NB602" in capsys.readouterr().err
    assert not (tmp_path / "q.katib.yaml").exists()


def test_trial_driver_runs_the_pipeline_and_prints_its_metrics(
    tmp_path: Path, kfp: Any
) -> None:
    """The driver as the trial pod runs it, against the fake KFP API (fake_kfp.py) and a
    local server answering the Kubernetes pod-log path: no cluster can run here."""
    import http.server
    import subprocess
    import sys
    import threading

    from kale_py import runtime
    from kale_py.tuning import trial

    assert trial.METRICS_MARKER == runtime.METRICS_MARKER
    logs: list[str] = []

    class Logs(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            logs.append(self.path)
            body = (b"some output\n" + runtime.METRICS_MARKER.encode()
                    + b'{"score": 11.0, "f1": 0.5}\n' if self.path.split("/")[6].endswith(
                        "step-1") else b"no metrics here\n")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Logs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "sa").mkdir()
    (tmp_path / "sa" / "token").write_text("pod-token")
    (tmp_path / "kfp-token").write_text("kfp-token")
    (tmp_path / "pipeline.json").write_text(json.dumps({"pipeline_spec": {"x": 1}}))
    kfp.run_states = ("RUNNING", "SUCCEEDED")
    try:
        done = subprocess.run(
            [sys.executable, "-c", Path(trial.__file__).read_text(), "--kfp", kfp.url,
             "--kubernetes", f"http://127.0.0.1:{server.server_address[1]}",
             "--namespace", "team-a", "--pipeline-spec", str(tmp_path / "pipeline.json"),
             "--name", "q-abc123", "--experiment", "tuning", "--param", "X=int:3",
             "--param", "Y=str:b", "--param", "ON=bool:true", "--poll", "0",
             "--kfp-token-file", str(tmp_path / "kfp-token"), "--sa-dir", str(tmp_path / "sa")],
            capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["f1=0.5", "score=11.0"]
    [created] = kfp.calls("POST", "/runs")
    body = created.json()
    assert body["runtime_config"]["parameters"] == {"X": 3, "Y": "b", "ON": True}
    assert body["pipeline_spec"] == {"x": 1} and body["display_name"] == "q-abc123"
    assert kfp.experiments[body["experiment_id"]]["display_name"] == "tuning"
    assert created.headers["Authorization"] == "Bearer kfp-token"
    assert all(p.startswith("/api/v1/namespaces/team-a/pods/") for p in logs)


def test_trial_driver_fails_the_trial_when_the_run_fails(tmp_path: Path, kfp: Any) -> None:
    import subprocess
    import sys

    from kale_py.tuning import trial

    (tmp_path / "pipeline.json").write_text(json.dumps({"pipeline_spec": {}}))
    kfp.run_states = ("RUNNING", "FAILED")
    done = subprocess.run(
        [sys.executable, "-c", Path(trial.__file__).read_text(), "--kfp", kfp.url,
         "--pipeline-spec", str(tmp_path / "pipeline.json"), "--name", "t", "--poll", "0",
         "--kfp-token-file", str(tmp_path / "none"), "--sa-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "ended FAILED" in done.stderr and done.stdout == ""


def test_background_tuning_is_followed_and_listed(tmp_path: Path) -> None:
    """What the panel does: start a tuning, poll its record, list it, read its report."""
    import time

    from kale_py import api
    from kale_py.diagnostics import CheckError

    nb = write(tmp_path / "q.ipynb", QUADRATIC)
    started = api.start_tune(nb, ["X=2..4"], objective="score", maximize=True,
                             algorithm="grid")
    tune_id = started["tune_id"]
    assert api.get_tune(nb, tune_id)["status"] == "running"  # readable at once
    deadline = time.monotonic() + 120
    while api.get_tune(nb, tune_id)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    record = api.get_tune(nb, tune_id)
    assert record["status"] == "succeeded", (
        tmp_path / ".nb2pipe" / "tunes" / tune_id / "tuner.log").read_text()
    assert record["best"]["params"] == {"X": 3} and len(record["trials"]) == 3
    [listed] = api.list_tunes(nb)
    assert (listed["tune_id"], listed["best"], listed["trials"]) == (tune_id, 10.0, 3)
    assert api.list_tunes(write(tmp_path / "other.ipynb", QUADRATIC)) == []
    assert 'id="plot"' in api.read_tune_report(nb, tune_id)
    with pytest.raises(CheckError, match="no pipeline parameter"):
        api.start_tune(nb, ["Z=1..2"], objective="score")
    assert len(api.list_tunes(nb)) == 1  # nothing started for the bad search


# --- submit --tune: the manifests created through the Kubernetes API ------------------------


@pytest.fixture
def apiserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A local server speaking the Kubernetes API's paths (tests/fake_kubernetes.py: no API
    server can run here), reached through a kubeconfig as a user's laptop reaches a cluster."""
    from fake_kubernetes import TOKEN, FakeKubernetes

    fake = FakeKubernetes().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kf",
        "clusters": [{"name": "c", "cluster": {"server": fake.url}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "kf", "context": {"cluster": "c", "user": "u",
                                                "namespace": "team-a"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield fake
    fake.stop()


TUNE_FLAGS = ["--tune", "--search", "X=1..5", "--objective", "score", "--maximize",
              "--trials", "4"]


def test_submit_tune_creates_the_experiment_and_its_config_map(
    tmp_path: Path, apiserver: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubeflow_katib_api.models import V1beta1Experiment

    nb = write(tmp_path / "q.ipynb", QUADRATIC)
    assert main(["submit", str(nb), *TUNE_FLAGS]) == 0, capsys.readouterr().err
    assert "Katib Experiment 'q' created in team-a: 4 trials (tpe)" in capsys.readouterr().out
    experiment = apiserver.experiments[("team-a", "q")]
    assert V1beta1Experiment.from_dict(experiment).to_dict() == experiment
    assert experiment["spec"]["maxTrialCount"] == 4
    config_map = apiserver.config_maps[("team-a", "q-pipeline")]
    assert "pipeline.json" in config_map["data"] and "trial.py" in config_map["data"]
    # a second submit replaces the ConfigMap, and refuses to change the running experiment
    assert main(["submit", str(nb), *TUNE_FLAGS]) == 1
    err = capsys.readouterr().err
    assert "KF210" in err and "kubectl delete experiment q -n team-a" in err
    assert len(apiserver.calls("PUT", "/api/v1/namespaces/team-a/configmaps/q-pipeline")) == 1


def test_submit_tune_refused_by_the_cluster_is_one_line(
    tmp_path: Path, apiserver: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    apiserver.forbidden.add(("create", "experiments"))
    nb = write(tmp_path / "q.ipynb", QUADRATIC)
    assert main(["submit", str(nb), *TUNE_FLAGS]) == 1
    err = capsys.readouterr().err
    assert "KF202" in err and "refused to create the Katib Experiment in team-a" in err
    assert len(err.strip().splitlines()) == 1


def test_submit_tune_does_not_go_with_a_schedule(
    tmp_path: Path, apiserver: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = write(tmp_path / "q.ipynb", QUADRATIC)
    assert main(["submit", str(nb), *TUNE_FLAGS, "--schedule", "0 0 * * *"]) == 2
    assert apiserver.requests == []
