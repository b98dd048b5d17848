"""The REST API of the JupyterLab panel (kale_py.server), through a real jupyter-server.

Most tests replace the ``kale_py.api`` functions with fakes: they check what the handlers
own (auth, request checks, paths, status codes, JSON shapes), not the analysis itself.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPResponse

import kale_py
from kale_py.diagnostics import CheckError, Diagnostic

Fetch = Callable[..., Any]

ANALYSIS = {
    "pipeline": {"name": "p", "experiment": "e", "description": ""},
    "steps": [{"name": "load", "kfp_name": "load", "cells": [2], "loads": {}, "saves": ["x"],
               "prev": [], "level": 0}],
    "edges": [],
    "levels": [["load"]],
    "parameters": [],
    "metrics": [],
    "diagnostics": [],
}
RUN = {
    "run_id": "r1",
    "status": "running",
    "steps": {"load": {"status": "running", "started": "t0", "ended": None, "error": None}},
    "metrics": {},
}


class FakeAPI:
    """Stands in for the kale_py.api module and records the calls the handlers make."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.error: Exception | None = None

    def _record(self, name: str, result: Any) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if self.error is not None:
                raise self.error
            return result
        return call

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        results = {
            "analyse": ANALYSIS,
            "compile_notebook": {"path": "/x/p.yaml", "bytes": 10, "steps": 1},
            "start_local_run": {"run_id": "r1", "run_dir": "/x/.nb2pipe/runs/r1"},
            "list_runs": [{"run_id": "r1", "status": "running", "started": "t0", "ended": None,
                           "duration": None, "params": {"N": 3}, "metrics": {}}],
            "cancel_run": RUN,
            "start_tune": {"tune_id": "t1"},
            "list_tunes": [{"tune_id": "t1", "status": "running"}],
            "get_tune": {"tune_id": "t1", "status": "running", "trials": []},
            "read_tune_report": "<html><body>tuning</body></html>",
            "kfp_run_status": {"run_id": "k1", "state": "FAILED", "url": "http://kfp/#/runs/k1",
                               "failed_step": "train", "error": None},
            "get_run": RUN,
            "read_log": "load | hello\n",
            "read_report": "<html><body><p>report</p></body></html>",
            "submit": {"run_id": "k1", "run_url": "http://kfp/#/runs/k1", "pipeline_id": "p",
                       "version_id": "v", "experiment_id": "e"},
            "list_experiments": [{"id": "e", "name": "Default"}],
            "list_volumes": {"in_cluster": False, "image": None, "volumes": []},
            "list_poddefaults": {"in_cluster": True, "namespace": "ns", "message": None,
                                 "poddefaults": [{"name": "access-ml-pipeline",
                                                  "description": "Allow access to KFP",
                                                  "labels": {"access-ml-pipeline": "true"}}]},
            "verify": {"ok": True, "differences": [], "unstable": [], "compared": 0,
                       "steps": []},
            "serving_status": {"namespace": "ns", "services": []},
            "start_serving": {"url": "http://127.0.0.1:9/v2/models/model/infer", "port": 9},
            "local_serving": None,
            "stop_serving": None,
        }
        module = types.ModuleType("kale_py.api")
        for name, result in results.items():
            setattr(module, name, self._record(name, result))
        # The handlers run `from kale_py import api`: both lookups must find the fake.
        monkeypatch.setitem(sys.modules, "kale_py.api", module)
        monkeypatch.setattr(kale_py, "api", module, raising=False)


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    fake = FakeAPI()
    fake.install(monkeypatch)
    return fake


def post(fetch: Fetch, route: str, body: Any, **kwargs: Any) -> Any:
    data = body if isinstance(body, str) else json.dumps(body)
    return fetch("kale-py", route, method="POST", body=data, **kwargs)


def body_of(response: HTTPResponse) -> Any:
    return json.loads(response.body)


# Every route, with a request that succeeds when authenticated.
ROUTES = [
    ("POST", "analyse", {"path": "nb.ipynb"}),
    ("POST", "compile", {"path": "nb.ipynb"}),
    ("POST", "runs", {"path": "nb.ipynb"}),
    ("GET", "runs", None),
    ("GET", "runs/r1", None),
    ("GET", "runs/r1/logs/load", None),
    ("GET", "runs/r1/report/load", None),
    ("POST", "runs/r1/cancel", {"path": "nb.ipynb"}),
    ("GET", "kfp-runs/k1", None),
    ("POST", "tunes", {"path": "nb.ipynb", "search": ["X=1..3"], "objective": "score"}),
    ("GET", "tunes", None),
    ("GET", "tunes/t1", None),
    ("GET", "tunes/t1/report", None),
    ("POST", "submit", {"path": "nb.ipynb"}),
    ("POST", "verify", {"path": "nb.ipynb"}),
    ("GET", "experiments", None),
    ("GET", "volumes", None),
    ("GET", "poddefaults", None),
    ("GET", "serving", None),
    ("GET", "serve", None),
    ("POST", "serve", {"path": "nb.ipynb"}),
    ("POST", "serve/stop", {"path": "nb.ipynb"}),
]
ROUTE_IDS = [f"{method} {route}" for method, route, _ in ROUTES]


@pytest.mark.parametrize(("method", "route", "body"), ROUTES, ids=ROUTE_IDS)
async def test_every_route_refuses_requests_without_a_token(
    jp_fetch: Fetch, fake_api: FakeAPI, method: str, route: str, body: Any
) -> None:
    kwargs: dict[str, Any] = {"method": method, "headers": {"Authorization": ""},
                              "params": {"path": "nb.ipynb"}}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("kale-py", route, **kwargs)
    assert caught.value.code == 403
    assert fake_api.calls == []


@pytest.mark.parametrize(("method", "route", "body"), ROUTES, ids=ROUTE_IDS)
async def test_every_route_answers_with_a_token(
    jp_fetch: Fetch, fake_api: FakeAPI, method: str, route: str, body: Any
) -> None:
    kwargs: dict[str, Any] = {"method": method, "params": {"path": "nb.ipynb"}}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    response = await jp_fetch("kale-py", route, **kwargs)
    assert response.code in (200, 201, 202)
    assert len(fake_api.calls) == 1


async def test_analyse_passes_the_resolved_path_and_the_live_notebook(
    jp_fetch: Fetch, fake_api: FakeAPI, jp_root_dir: Path
) -> None:
    live = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    response = await post(jp_fetch, "analyse", {"path": "sub/nb.ipynb", "notebook": live})
    assert body_of(response) == ANALYSIS
    assert response.headers["Content-Type"].startswith("application/json")
    [(name, args, _)] = fake_api.calls
    assert name == "analyse"
    assert args == (jp_root_dir / "sub" / "nb.ipynb", live)


async def test_analyse_without_a_live_notebook_reads_the_file(
    jp_fetch: Fetch, fake_api: FakeAPI, jp_root_dir: Path
) -> None:
    await post(jp_fetch, "analyse", {"path": "nb.ipynb"})
    assert fake_api.calls[0][1] == (jp_root_dir / "nb.ipynb", None)


async def test_compile_and_run_pass_their_options(
    jp_fetch: Fetch, fake_api: FakeAPI, jp_root_dir: Path
) -> None:
    nb = jp_root_dir / "nb.ipynb"
    response = await post(jp_fetch, "compile", {"path": "nb.ipynb", "params": {"lr": 0.5}})
    assert body_of(response) == {"path": "/x/p.yaml", "bytes": 10, "steps": 1}
    response = await post(jp_fetch, "runs", {"path": "nb.ipynb", "params": {"n": 2},
                                             "only": ["train"], "from": "load"})
    assert response.code == 201
    assert body_of(response) == {"run_id": "r1", "run_dir": "/x/.nb2pipe/runs/r1"}
    await post(jp_fetch, "runs", {"path": "nb.ipynb"})
    assert fake_api.calls == [
        ("compile_notebook", (nb,), {"params": {"lr": 0.5}}),
        ("start_local_run", (nb, {"n": 2}, ["train"], "load"), {}),
        ("start_local_run", (nb, {}, None, None), {}),
    ]


async def test_runs_status_logs_and_report(
    jp_fetch: Fetch, fake_api: FakeAPI, jp_root_dir: Path
) -> None:
    nb = jp_root_dir / "nb.ipynb"
    query = {"path": "nb.ipynb"}
    assert body_of(await jp_fetch("kale-py", "runs", params=query))[0]["run_id"] == "r1"
    assert body_of(await jp_fetch("kale-py", "runs", "r1", params=query)) == RUN

    log = await jp_fetch("kale-py", "runs", "r1", "logs", "load", params=query)
    assert log.body.decode() == "load | hello\n"
    assert log.headers["Content-Type"].startswith("text/plain")

    report = await jp_fetch("kale-py", "runs", "r1", "report", "load", params=query)
    assert b"<p>report</p>" in report.body
    assert report.headers["Content-Type"].startswith("text/html")
    # the notebook's outputs must not run with the server's origin and cookies
    assert "sandbox" in report.headers["Content-Security-Policy"]

    assert [(n, a) for n, a, _ in fake_api.calls] == [
        ("list_runs", (nb,)),
        ("get_run", (nb, "r1")),
        ("read_log", (nb, "r1", "load")),
        ("read_report", (nb, "r1", "load")),
    ]


async def test_cancel_and_kfp_run_status(
    jp_fetch: Fetch, fake_api: FakeAPI, jp_root_dir: Path
) -> None:
    response = await post(jp_fetch, "runs/r1/cancel", {"path": "nb.ipynb"})
    assert response.code == 202
    assert body_of(response) == RUN
    status = await jp_fetch("kale-py", "kfp-runs", "k1", params={"host": "http://kfp"},
                            headers={"X-KFP-Token": "tok"})
    assert body_of(status)["failed_step"] == "train"
    assert [(n, a) for n, a, _ in fake_api.calls] == [
        ("cancel_run", (jp_root_dir / "nb.ipynb", "r1")),
        ("kfp_run_status", ("k1", "http://kfp", "tok")),
    ]


async def test_tunes_start_list_read_and_report(
    jp_fetch: Fetch, fake_api: FakeAPI, jp_root_dir: Path
) -> None:
    nb = jp_root_dir / "nb.ipynb"
    response = await post(jp_fetch, "tunes", {
        "path": "nb.ipynb", "search": ["X=1..3", "Y=a,b"], "objective": "score",
        "maximize": False, "trials": 4, "parallel": 2, "algorithm": "grid"})
    assert response.code == 201 and body_of(response) == {"tune_id": "t1"}
    query = {"path": "nb.ipynb"}
    assert body_of(await jp_fetch("kale-py", "tunes", params=query))[0]["tune_id"] == "t1"
    assert body_of(await jp_fetch("kale-py", "tunes", "t1", params=query))["status"] == "running"
    report = await jp_fetch("kale-py", "tunes", "t1", "report", params=query)
    assert b"tuning" in report.body and "sandbox" in report.headers["Content-Security-Policy"]
    assert fake_api.calls == [
        ("start_tune", (nb, ["X=1..3", "Y=a,b"]),
         {"objective": "score", "maximize": False, "trials": 4, "parallel": 2,
          "algorithm": "grid"}),
        ("list_tunes", (nb,), {}),
        ("get_tune", (nb, "t1"), {}),
        ("read_tune_report", (nb, "t1"), {}),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [({"search": "X=1..3"}, "'search' must be an array"),
     ({"search": ["X=1..3"], "trials": True}, "'trials' must be a whole number"),
     ({"search": ["X=1..3"], "maximize": "yes"}, "'maximize' must be true or false")],
)
async def test_bad_tune_requests_are_400(
    jp_fetch: Fetch, fake_api: FakeAPI, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(HTTPClientError) as caught:
        await post(jp_fetch, "tunes", {"path": "nb.ipynb", **body})
    assert caught.value.code == 400
    assert message in caught.value.response.body.decode()
    assert fake_api.calls == []


async def test_submit_experiments_and_volumes(
    jp_fetch: Fetch, fake_api: FakeAPI, jp_root_dir: Path
) -> None:
    response = await post(jp_fetch, "submit", {
        "path": "nb.ipynb", "host": "http://kfp", "experiment": "exp", "params": {"a": 1},
        "token": "secret"})
    assert body_of(response)["run_url"] == "http://kfp/#/runs/k1"
    experiments = await jp_fetch("kale-py", "experiments", params={"host": "http://kfp"})
    assert body_of(experiments) == [{"id": "e", "name": "Default"}]
    await jp_fetch("kale-py", "experiments")
    volumes = await jp_fetch("kale-py", "volumes")
    assert body_of(volumes) == {"in_cluster": False, "image": None, "volumes": []}
    poddefaults = await jp_fetch("kale-py", "poddefaults")
    assert body_of(poddefaults)["poddefaults"][0]["labels"] == {"access-ml-pipeline": "true"}
    submit_call = fake_api.calls.pop(0)
    assert submit_call[:2] == ("submit", (jp_root_dir / "nb.ipynb",))
    assert {k: v for k, v in submit_call[2].items() if k != "out"} == {
        "host": "http://kfp", "experiment": "exp", "params": {"a": 1}, "token": "secret",
        "schedule": None, "max_concurrency": 1}
    assert fake_api.calls == [
        ("list_experiments", ("http://kfp",), {}),
        ("list_experiments", (None,), {}),
        ("list_volumes", (), {}),
        ("list_poddefaults", (), {}),
    ]


async def test_submit_with_a_schedule(jp_fetch: Fetch, fake_api: FakeAPI) -> None:
    await post(jp_fetch, "submit", {"path": "nb.ipynb", "schedule": "0 9 * * 1-5",
                                    "max_concurrency": 3})
    [(name, _, kwargs)] = fake_api.calls
    assert (kwargs["schedule"], kwargs["max_concurrency"]) == ("0 9 * * 1-5", 3)


BAD_BODIES = [
    ("analyse", {}, "'path' is required"),
    ("analyse", {"path": ""}, "'path' is required"),
    ("analyse", {"path": 3}, "'path' is required"),
    ("analyse", {"path": "nb.ipynb", "notebook": "{}"}, "'notebook' must be an object"),
    ("analyse", [], "must be a JSON object"),
    ("analyse", "not json", "Invalid JSON"),
    ("analyse", "", "must be a JSON object"),
    ("analyse", {"path": "../outside.ipynb"}, "outside the server root"),
    ("analyse", {"path": "a/../../outside.ipynb"}, "outside the server root"),
    ("analyse", {"path": "/etc/passwd"}, "relative to the server root"),
    ("analyse", {"path": "nb\u0000.ipynb"}, "relative to the server root"),
    ("compile", {"path": "nb.ipynb", "params": [1]}, "'params' must be an object"),
    ("runs", {"path": "nb.ipynb", "only": "train"}, "'only' must be an array"),
    ("runs", {"path": "nb.ipynb", "only": [1]}, "'only' must be an array of strings"),
    ("runs", {"path": "nb.ipynb", "from": ["load"]}, "'from' must be a string"),
    ("runs", {"params": {}}, "'path' is required"),
    ("submit", {"path": "nb.ipynb", "host": 1}, "'host' must be a string"),
    ("submit", {"path": "nb.ipynb", "token": {}}, "'token' must be a string"),
    ("submit", {"path": "../nb.ipynb"}, "outside the server root"),
    ("verify", {}, "'path' is required"),
    ("verify", {"path": "nb.ipynb", "params": [1]}, "'params' must be an object"),
    ("verify", {"path": "nb.ipynb", "runs": 0}, "'runs' must be a whole number"),
    ("verify", {"path": "nb.ipynb", "runs": "2"}, "'runs' must be a whole number"),
]


@pytest.mark.parametrize(("route", "body", "message"), BAD_BODIES)
async def test_bad_request_bodies_are_400(
    jp_fetch: Fetch, fake_api: FakeAPI, route: str, body: Any, message: str
) -> None:
    with pytest.raises(HTTPClientError) as caught:
        await post(jp_fetch, route, body)
    assert caught.value.code == 400
    assert caught.value.response is not None
    assert message in body_of(caught.value.response)["message"]
    assert fake_api.calls == []


@pytest.mark.parametrize("parts", [
    ("runs",),
    ("runs", "r1"),
    ("runs", "r1", "logs", "load"),
    ("runs", "r1", "report", "load"),
])
@pytest.mark.parametrize(("query", "message"), [
    ({}, "'path' is required"),
    ({"path": "../../etc/nb.ipynb"}, "outside the server root"),
])
async def test_bad_query_paths_are_400(
    jp_fetch: Fetch, fake_api: FakeAPI, parts: tuple[str, ...], query: dict[str, str], message: str
) -> None:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("kale-py", *parts, params=query)
    assert caught.value.code == 400
    assert caught.value.response is not None
    assert message in body_of(caught.value.response)["message"]
    assert fake_api.calls == []


@pytest.mark.parametrize("parts", [("runs", ".hidden"), ("runs", "r1", "logs", "a.b")])
async def test_run_ids_and_step_names_cannot_name_other_files(
    jp_fetch: Fetch, fake_api: FakeAPI, parts: tuple[str, ...]
) -> None:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("kale-py", *parts, params={"path": "nb.ipynb"})
    assert caught.value.code == 404
    assert fake_api.calls == []


async def test_diagnosed_problems_are_422_with_the_diagnostics(
    jp_fetch: Fetch, fake_api: FakeAPI
) -> None:
    problem = Diagnostic("error", "NB103", "'x' is used but no earlier step defines it",
                         cell=3, line=2, step="train")
    fake_api.error = CheckError([problem])
    for route, body in [("analyse", {"path": "nb.ipynb"}), ("runs", {"path": "nb.ipynb"}),
                        ("compile", {"path": "nb.ipynb"}), ("submit", {"path": "nb.ipynb"}),
                        ("verify", {"path": "nb.ipynb"})]:
        with pytest.raises(HTTPClientError) as caught:
            await post(jp_fetch, route, body)
        assert caught.value.code == 422
        assert caught.value.response is not None
        assert body_of(caught.value.response) == {
            "message": "'x' is used but no earlier step defines it",
            "diagnostics": [problem.to_dict()],
        }


async def test_a_bug_is_a_500_without_leaking_a_traceback(
    jp_fetch: Fetch, fake_api: FakeAPI
) -> None:
    fake_api.error = RuntimeError("boom")
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("kale-py", "volumes")
    assert caught.value.code == 500
    assert caught.value.response is not None
    assert "boom" not in caught.value.response.body.decode()


NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# undefined name"},
        {"cell_type": "code", "metadata": {"tags": ["step:load"]}, "execution_count": None,
         "outputs": [], "source": "x = 1"},
        {"cell_type": "code", "metadata": {"tags": ["step:train"]}, "execution_count": None,
         "outputs": [], "source": "y = x + z"},
    ],
    "metadata": {"kubeflow_notebook": {"pipeline_name": "demo"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


async def test_analyse_with_the_real_api(jp_fetch: Fetch, jp_root_dir: Path) -> None:
    (jp_root_dir / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    result = body_of(await post(jp_fetch, "analyse", {"path": "nb.ipynb"}))
    assert [s["name"] for s in result["steps"]] == ["load", "train"]
    assert {(e["source"], e["target"], tuple(e["variables"])) for e in result["edges"]} == {
        ("load", "train", ("x",))}
    [undefined] = [d for d in result["diagnostics"] if d["code"] == "NB103"]
    assert (undefined["cell"], undefined["line"], undefined["step"]) == (3, 1, "train")

    # The live notebook wins over the file: here the undefined name is gone.
    live = json.loads(json.dumps(NOTEBOOK))
    live["cells"][2]["source"] = "y = x + 1"
    result = body_of(await post(jp_fetch, "analyse", {"path": "nb.ipynb", "notebook": live}))
    assert not [d for d in result["diagnostics"] if d["code"] == "NB103"]


async def test_verify_passes_its_options(
    jp_fetch: Fetch, fake_api: FakeAPI, jp_root_dir: Path
) -> None:
    await post(jp_fetch, "verify", {"path": "nb.ipynb", "params": {"n": 2}, "runs": 2})
    await post(jp_fetch, "verify", {"path": "nb.ipynb"})
    nb = jp_root_dir / "nb.ipynb"
    assert fake_api.calls == [("verify", (nb, {"n": 2}, 2), {}), ("verify", (nb, {}, 1), {})]


VERIFIED = {
    "cells": [
        {"cell_type": "code", "metadata": {"tags": ["imports"]}, "execution_count": None,
         "outputs": [], "source": "import sys"},
        {"cell_type": "code", "metadata": {"tags": ["pipeline-parameters"]},
         "execution_count": None, "outputs": [], "source": "N = 2"},
        {"cell_type": "code", "metadata": {"tags": ["step:load"]}, "execution_count": None,
         "outputs": [], "source": "xs = list(range(N))\nsys.setrecursionlimit(4321)"},
        {"cell_type": "code", "metadata": {"tags": ["step:train"]}, "execution_count": None,
         "outputs": [], "source": "total = sum(xs)\nlimit = sys.getrecursionlimit()"},
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


async def test_verify_with_the_real_api(jp_fetch: Fetch, jp_root_dir: Path) -> None:
    """A real kernel and a real local run: the recursion limit is not carried (NB105)."""
    (jp_root_dir / "nb.ipynb").write_text(json.dumps(VERIFIED))
    result = body_of(await post(jp_fetch, "verify", {"path": "nb.ipynb", "params": {"N": 5}}))
    assert result["ok"] is False
    assert result["compared"] == 3
    assert [(d["name"], d["step"], d["kernel"]) for d in result["differences"]] == [
        ("limit", "train", "4321")]
    assert result["unstable"] == []
    assert [(s["step"], s["status"], s["compared"], s["differences"]) for s in result["steps"]] == [
        ("load", "succeeded", 1, []), ("train", "succeeded", 2, ["limit"])]
    assert result["pipeline_status"] == "succeeded"
