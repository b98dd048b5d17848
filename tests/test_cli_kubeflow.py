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
