"""nb2pipe serve: the model tagged serve:VAR, as a local run saved it, answering Open
Inference Protocol (V2) requests from KServe's own model server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kale_py.api import check_notebook
from kale_py.cli import main

REPO = Path(__file__).resolve().parents[1]


def code(source: str, tags: list[str]) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "outputs": [], "source": source,
            "metadata": {"tags": tags}}


def write(path: Path, cells: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))
    return path


IRIS = [
    code("from sklearn.datasets import load_iris\n"
         "from sklearn.linear_model import LogisticRegression", ["imports"]),
    code("X, y = load_iris(return_X_y=True, as_frame=True)", ["step:load"]),
    code("model = LogisticRegression(max_iter=500).fit(X, y)",
         ["step:train", "serve:model"]),
    code("score = model.score(X, y)", ["step:evaluate"]),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_served_variable_is_saved_by_its_last_writer(tmp_path: Path) -> None:
    pipeline = check_notebook(write(tmp_path / "iris.ipynb", IRIS))
    assert pipeline.ok and pipeline.served == {"model": "train"}
    # evaluate reads model too; the train step would save it anyway for serving
    assert "model" in pipeline.io["train"].saves


def test_serve_answers_v2_requests_with_the_models_own_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = write(tmp_path / "iris.ipynb", IRIS)
    assert main(["run", str(nb), "--progress", "quiet"]) == 0, capsys.readouterr()
    from sklearn.datasets import load_iris

    from kale_py.serving.local import load_served

    saved = load_served(check_notebook(nb))
    rows, _ = load_iris(return_X_y=True, as_frame=True)
    rows = rows.iloc[[0, 60, 120, 149]]
    expected = saved.value.predict(rows).tolist()  # the model's own predict on the same rows

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "kale_py", "serve", str(nb), "--port",
                               str(port)], cwd=tmp_path, env=_env(), stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v2/models/model/ready", timeout=2):
                    break
            except (OSError, urllib.error.URLError):
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the model server did not start:\n"
                                + (tmp_path / "serve.log").read_text()[-3000:])
                time.sleep(0.3)
        answer = _post(f"{base}/v2/models/model/infer", {
            "id": "r1",
            "inputs": [{"name": "features", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.to_numpy().ravel().tolist()}]})
        metadata = json.loads(urllib.request.urlopen(f"{base}/v2/models/model").read())
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    [output] = answer["outputs"]
    assert answer["model_name"] == "model" and answer["id"] == "r1"
    assert output["name"] == "predict" and output["shape"] == [4]
    assert output["data"] == expected
    assert metadata["name"] == "model"
    assert "Serving model (step train, run " in (tmp_path / "serve.log").read_text()


def test_serve_before_any_run_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = write(tmp_path / "iris.ipynb", IRIS)
    assert main(["serve", str(nb)]) == 1
    err = capsys.readouterr().err
    assert "NB802" in err and "run the notebook first" in err and "Traceback" not in err


def test_serve_tag_on_a_variable_no_step_computes_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cells = [code("x = 1", ["step:a", "serve:model"])]
    nb = write(tmp_path / "bad.ipynb", cells)
    assert main(["check", str(nb)]) == 1
    out = capsys.readouterr().out
    assert "cell 1: error NB801: serve:model: no step computes 'model'" in out


def test_serve_tag_needs_a_variable_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = write(tmp_path / "bad.ipynb", [code("x = 1", ["step:a", "serve:my-model"])])
    assert main(["check", str(nb)]) == 1
    assert "serve:my-model does not name a variable" in capsys.readouterr().out


def test_serving_something_without_predict_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = write(tmp_path / "n.ipynb", [code("model = {'weights': [1, 2]}",
                                           ["step:a", "serve:model"])])
    assert main(["run", str(nb), "--progress", "quiet"]) == 0
    capsys.readouterr()
    assert main(["serve", str(nb)]) == 1
    err = capsys.readouterr().err
    assert "NB804" in err and "'model' is a dict, which has no predict method" in err


def test_without_kserve_one_line_names_the_extra(tmp_path: Path) -> None:
    nb = write(tmp_path / "iris.ipynb", IRIS)
    fake = tmp_path / "no_kserve"
    (fake / "kserve").mkdir(parents=True)
    (fake / "kserve" / "__init__.py").write_text("raise ImportError('no kserve here')\n")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(fake), env["PYTHONPATH"]])
    assert subprocess.run([sys.executable, "-m", "kale_py", "run", str(nb), "--progress",
                           "quiet"], env=env, cwd=tmp_path).returncode == 0
    done = subprocess.run([sys.executable, "-m", "kale_py", "serve", str(nb)], env=env,
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1
    assert "NB803" in done.stderr and "pip install 'kale_py[serve]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_damaged_model_file_is_refused_before_it_is_unpickled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = write(tmp_path / "iris.ipynb", IRIS)
    assert main(["run", str(nb), "--progress", "quiet"]) == 0
    capsys.readouterr()
    [saved] = [p for p in (tmp_path / ".nb2pipe" / "runs").rglob("model*.kpk")
               if "/state/" in str(p)]
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved.write_bytes(bytes(data))
    assert main(["serve", str(nb)]) == 1
    err = capsys.readouterr().err
    assert "NB805" in err and "damaged or was replaced" in err and "'model'" in err
    assert "Traceback" not in err


# --- serving in the background, as the panel starts it ---------------------------------------


def test_serving_in_the_background_answers_until_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kale_py import api

    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    nb = write(tmp_path / "iris.ipynb", IRIS)
    assert main(["run", str(nb), "--progress", "quiet"]) == 0, capsys.readouterr()
    from sklearn.datasets import load_iris

    rows, _ = load_iris(return_X_y=True, as_frame=True)
    rows = rows.iloc[[0, 60, 120]]
    record = api.start_serving(nb)
    try:
        assert record["url"] == f"http://127.0.0.1:{record['port']}/v2/models/model/infer"
        assert (record["variable"], record["step"]) == ("model", "train")
        assert api.local_serving(nb) == record
        answer = _post(record["url"], {"inputs": [{
            "name": "x", "shape": list(rows.shape), "datatype": "FP64",
            "data": rows.to_numpy().ravel().tolist()}]})
        assert answer["outputs"][0]["data"] == [0, 1, 2]
        # a second start replaces the first server: one per notebook
        again = api.start_serving(nb)
        assert again["pid"] != record["pid"] and api.local_serving(nb) == again
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(record["url"].rsplit("/", 1)[0] + "/ready", timeout=2)
    finally:
        stopped = api.stop_serving(nb)
    assert stopped is not None and stopped["pid"] == again["pid"]
    assert api.local_serving(nb) is None and api.stop_serving(nb) is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(again["url"].rsplit("/", 1)[0] + "/ready", timeout=2)


def test_serving_in_the_background_before_any_run_starts_nothing(tmp_path: Path) -> None:
    from kale_py import api
    from kale_py.diagnostics import RunError

    nb = write(tmp_path / "iris.ipynb", IRIS)
    with pytest.raises(RunError) as caught:
        api.start_serving(nb)
    assert caught.value.diagnostics[0].code == "NB802"
    assert api.local_serving(nb) is None


def test_a_model_the_server_refuses_is_its_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kale_py import api
    from kale_py.diagnostics import RunError

    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    nb = write(tmp_path / "iris.ipynb", IRIS)
    assert main(["run", str(nb), "--progress", "quiet"]) == 0
    [saved] = [p for p in (tmp_path / ".nb2pipe" / "runs").rglob("model*.kpk")
               if "/state/" in str(p)]
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(RunError) as caught:
        api.start_serving(nb)
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.code == "NB805" and "damaged or was replaced" in diagnostic.message
    assert api.local_serving(nb) is None
