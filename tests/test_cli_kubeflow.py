"""`nb2pipe compile` and `nb2pipe submit` from the command line.

Submission goes to tests/fake_kfp.py, a local HTTP server speaking the KFP v2beta1 REST API:
it stands in for a KFP backend, which cannot run on this machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from fake_kfp import FakeKfp

from kale_py.cli import main

SAMPLES = Path(__file__).parent.parent / "sample_notebooks"
NOTEBOOKS = Path(__file__).parent / "notebooks"


pytestmark = pytest.mark.usefixtures("clean_kfp_environment")


@pytest.fixture
def iris(tmp_path: Path) -> Path:
    target = tmp_path / "iris_classifier.ipynb"
    shutil.copy(SAMPLES / "iris_classifier.ipynb", target)
    return target


def test_compile_writes_validated_yaml(iris: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = iris.parent / "out" / "iris.yaml"
    assert main(["compile", str(iris), "-o", str(out), "--param", "N_ESTIMATORS=7"]) == 0
    assert f"{out}: 4 steps" in capsys.readouterr().out
    spec = next(d for d in yaml.safe_load_all(out.read_text()) if d)
    assert spec["pipelineInfo"]["name"] == "iris-classifier"
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["N_ESTIMATORS"] == {
        "parameterType": "NUMBER_INTEGER",
        "defaultValue": 7,
        "isOptional": True,
    }
    assert sorted(spec["root"]["dag"]["tasks"]) == [
        "evaluate",
        "kale-runtime",
        "load",
        "split",
        "train",
    ]
    train = spec["root"]["dag"]["tasks"]["train"]
    assert sorted(train["dependentTasks"]) == ["kale-runtime", "split"]
    assert train["cachingOptions"] == {"enableCache": True}


def test_compile_default_output_is_beside_the_notebook(iris: Path) -> None:
    assert main(["compile", str(iris)]) == 0
    assert iris.with_suffix(".yaml").exists()


def test_compile_refuses_a_notebook_with_errors_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = tmp_path / "undefined_name.ipynb"
    shutil.copy(NOTEBOOKS / "undefined_name.ipynb", nb)
    assert main(["compile", str(nb)]) == 1
    err = capsys.readouterr().err
    assert "cell 2:2: error NB103" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["undefined_name.ipynb"]


def test_compile_bad_param_names_the_parameter_cell(
    iris: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compile", str(iris), "--param", "N_ESTIMATORS=many"]) == 1
    err = capsys.readouterr().err
    assert "cell 3" in err and "NB307" in err and "N_ESTIMATORS" in err
    assert not iris.with_suffix(".yaml").exists()


def test_submit_notebook_and_watch(
    iris: Path, kfp: FakeKfp, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "submit",
            str(iris),
            "--host",
            kfp.url,
            "--token",
            "t0k",
            "--experiment",
            "team",
            "--param",
            "SEED=3",
            "--watch",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "/#/runs/details/" in out
    [upload] = kfp.calls("POST", "/pipelines/upload")
    assert upload.query["name"] == ["iris-classifier"]
    assert upload.headers["Authorization"] == "Bearer t0k"
    [created] = kfp.calls("POST", "/experiments")
    assert created.json()["display_name"] == "team"
    [run] = kfp.calls("POST", "/runs")
    assert run.json()["runtime_config"]["parameters"]["SEED"] == 3


def test_submit_failed_run_exits_1(iris: Path, kfp: FakeKfp) -> None:
    kfp.run_states = ("PENDING", "RUNNING", "FAILED")
    assert main(["submit", str(iris), "--host", kfp.url, "--watch"]) == 1


def test_submit_compiled_yaml_types_params_from_the_pipeline(iris: Path, kfp: FakeKfp) -> None:
    assert main(["compile", str(iris)]) == 0
    assert (
        main(
            [
                "submit",
                str(iris.with_suffix(".yaml")),
                "--host",
                kfp.url,
                "--param",
                "TEST_SIZE=0.5",
                "--param",
                'RUN_LABEL=a "b"',
            ]
        )
        == 0
    )
    [run] = kfp.calls("POST", "/runs")
    assert run.json()["runtime_config"]["parameters"] == {"TEST_SIZE": 0.5, "RUN_LABEL": 'a "b"'}


@pytest.mark.parametrize(
    ("status", "fragment"), [(401, "KF102"), (403, "KF102"), (404, "KF103"), (500, "KF104")]
)
def test_submit_http_errors_are_one_line(
    iris: Path, kfp: FakeKfp, status: int, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kfp.fail_with = (status, {"error": "nope", "message": "nope"})
    assert main(["submit", str(iris), "--host", kfp.url]) == 1
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_submit_unreachable_host(iris: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", str(iris), "--host", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "KF101" in err and "Traceback" not in err


def test_submit_without_host_off_cluster(iris: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", str(iris)]) == 1
    assert "KF105" in capsys.readouterr().err


def test_compile_json_output_of_graph_is_unchanged_by_compile(iris: Path) -> None:
    before = iris.read_bytes()
    assert main(["compile", str(iris)]) == 0
    assert iris.read_bytes() == before
    assert json.loads(before)["cells"]  # still the same notebook


# --- recurring runs (the fake KFP API of fake_kfp.py: no KFP backend can run here) ----------


def _as_kfp_model(body: dict[str, object]) -> dict[str, object]:
    """The body read by KFP's own API client as a V2beta1RecurringRun and written back:
    equal to the body only when every field is one the API knows, with the right type."""
    import kfp_server_api

    client = kfp_server_api.ApiClient()
    response = type("Response", (), {"data": json.dumps(body)})()
    model = client.deserialize(response, "V2beta1RecurringRun")
    return client.sanitize_for_serialization(model)  # type: ignore[no-any-return]


def test_schedule_creates_a_recurring_run(
    iris: Path, kfp: FakeKfp, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["submit", str(iris), "--host", kfp.url, "--schedule", "30 6 * * 1-5",
                 "--max-concurrency", "2", "--no-catchup", "--param", "SEED=7"])
    assert code == 0, capsys.readouterr().err
    assert kfp.calls("POST", "/runs") == []
    [created] = kfp.calls("POST", "/recurringruns")
    body = created.json()
    assert body["trigger"] == {"cron_schedule": {"cron": "0 30 6 * * 1-5"}}
    assert (body["max_concurrency"], body["no_catchup"], body["mode"]) == ("2", True, "ENABLE")
    assert body["runtime_config"]["parameters"]["SEED"] == 7
    [pipeline_id] = kfp.pipelines
    assert body["pipeline_version_reference"]["pipeline_id"] == pipeline_id
    assert body["display_name"] == "iris-classifier"
    assert _as_kfp_model(body) == body
    assert "/#/recurringrun/details/rr-" in capsys.readouterr().out


def test_schedule_disable_enable_and_delete(iris: Path, kfp: FakeKfp) -> None:
    assert main(["submit", str(iris), "--host", kfp.url, "--schedule", "0 0 * * *"]) == 0
    [recurring_id] = kfp.recurring_runs
    assert main(["submit", str(iris), "--host", kfp.url, "--disable"]) == 0
    assert kfp.recurring_runs[recurring_id]["status"] == "DISABLED"
    assert main(["submit", str(iris), "--host", kfp.url, "--enable"]) == 0
    assert kfp.recurring_runs[recurring_id]["status"] == "ENABLED"
    assert main(["submit", str(iris), "--host", kfp.url, "--delete"]) == 0
    assert kfp.recurring_runs == {}
    assert len(kfp.calls("POST", "/pipelines/upload")) == 1  # managing uploads nothing


def test_schedule_of_a_pipeline_without_one_is_one_line(
    iris: Path, kfp: FakeKfp, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", str(iris), "--host", kfp.url, "--disable"]) == 1
    err = capsys.readouterr().err
    assert "KF107" in err and "no recurring run named 'iris-classifier'" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("cron", ["every day", "* * *", "0 0 * * * * *", "0 0 * * mon;rm"])
def test_bad_schedule_is_refused_before_anything_is_uploaded(
    iris: Path, kfp: FakeKfp, cron: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", str(iris), "--host", kfp.url, "--schedule", cron]) == 1
    err = capsys.readouterr().err
    assert "KF106" in err and "is not a cron expression" in err
    assert kfp.requests == []


@pytest.mark.parametrize(
    "extra",
    [["--schedule", "0 0 * * *", "--watch"], ["--delete", "--schedule", "0 0 * * *"],
     ["--disable", "--delete"], ["--schedule", "0 0 * * *", "--max-concurrency", "0"]],
)
def test_recurring_run_options_that_do_not_go_together_are_usage_errors(
    iris: Path, kfp: FakeKfp, extra: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        code = main(["submit", str(iris), "--host", kfp.url, *extra])
        raise SystemExit(code)
    assert exited.value.code == 2
    assert kfp.requests == []
