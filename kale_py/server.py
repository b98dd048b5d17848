"""REST API for the JupyterLab side panel, served by a jupyter-server extension.

Every route lives under ``<base_url>/kale-py/`` and is a thin layer over :mod:`kale_py.api`:
the handler checks the request, resolves the notebook path inside the server's root directory,
calls the API in a worker thread (analysis, compilation and cluster calls must not block the
server's event loop) and turns the result into JSON.

Status codes: 400 for a malformed request, 422 for a problem kale_py diagnosed in the notebook
(the body carries the diagnostics, as the command line would print them), 500 for a bug.
Nothing runs in the user's kernel.

``kale_py.api`` is imported inside the handlers: loading the extension must stay cheap, and the
analysis code is only needed once the panel asks for it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from kale_py.diagnostics import KalePyError

NAMESPACE = "kale-py"

# Run ids and step names travel in URLs and end up in file names below the run directory:
# accept only characters that cannot form a path (no "/", and no leading dot).
RUN_ID = r"(?P<run_id>[A-Za-z0-9][A-Za-z0-9_.-]*)"
STEP = r"(?P<step>[A-Za-z0-9_-]+)"
TUNE_ID = r"(?P<tune_id>[A-Za-z0-9][A-Za-z0-9_.-]*)"

T = TypeVar("T")


class BadRequest(tornado.web.HTTPError):
    """A malformed request: answered with 400 and ``{"message": ...}``."""

    def __init__(self, message: str) -> None:
        # The message goes through tornado's "%"-formatting only when args are given.
        super().__init__(400, message.replace("%", "%%"))


_JSON_TYPE_NAMES: dict[type, str] = {str: "a string", dict: "an object", list: "an array",
                                      int: "a whole number", bool: "true or false"}


def _expect(body: dict[str, Any], name: str, kind: type) -> Any:
    """``body[name]`` if it has the expected JSON type; absent or null means "not given"."""
    value = body.get(name)
    # JSON's true/false are not numbers, though Python's bool is an int
    wrong = isinstance(value, bool) and kind is not bool
    if value is not None and (wrong or not isinstance(value, kind)):
        raise BadRequest(f"'{name}' must be {_JSON_TYPE_NAMES.get(kind, kind.__name__)}")
    return value


def _string_list(body: dict[str, Any], name: str) -> list[str] | None:
    value: list[str] | None = _expect(body, name, list)
    if value is not None and not all(isinstance(item, str) for item in value):
        raise BadRequest(f"'{name}' must be an array of strings")
    return value


class KalePyHandler(APIHandler):
    """Shared request checking and error mapping of all kale_py routes."""

    def json_body(self) -> dict[str, Any]:
        # get_json_body answers invalid JSON with 400 itself; an empty body is None.
        body = self.get_json_body()
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    def notebook_path(self, path: Any) -> Path:
        """The OS path of a contents-manager path (relative to the server's root directory).

        Paths that are absolute or lead outside the root directory are refused, the way
        jupyter-server's own file manager does it: by the normalised path, so symlinks the
        user placed inside the root keep working.
        """
        if not isinstance(path, str) or not path.strip():
            raise BadRequest("'path' is required: the notebook path relative to the server root")
        if "\0" in path or path.startswith(("/", "\\")) or os.path.isabs(path):
            raise BadRequest("'path' must be relative to the server root directory")
        root = os.path.abspath(self.settings["server_root_dir"])
        full = os.path.abspath(os.path.join(root, *path.split("/")))
        if full != root and not full.startswith(root.rstrip(os.sep) + os.sep):
            raise BadRequest("'path' leads outside the server root directory")
        return Path(full)

    def query_path(self) -> Path:
        return self.notebook_path(self.get_query_argument("path", None))

    async def call_api(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run ``function`` in a worker thread; a diagnosed problem is answered with 422.

        Returns ``None`` once the 422 answer is written, so callers just return.
        """
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except KalePyError as error:
            self.set_status(422)
            self.finish(json.dumps({
                "message": str(error),
                "diagnostics": [d.to_dict() for d in error.diagnostics],
            }))
            return None

    def finish_json(self, value: Any) -> None:
        self.finish(json.dumps(value))


class AnalyseHandler(KalePyHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        from kale_py import api

        body = self.json_body()
        path = self.notebook_path(body.get("path"))
        # The live notebook from the editor, possibly unsaved; the file on disk otherwise.
        notebook = _expect(body, "notebook", dict)
        result = await self.call_api(api.analyse, path, notebook)
        if result is not None:
            self.finish_json(result)


class CompileHandler(KalePyHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        from kale_py import api

        body = self.json_body()
        path = self.notebook_path(body.get("path"))
        params = _expect(body, "params", dict) or {}
        # written beside the notebook (the api's default output path)
        result = await self.call_api(api.compile_notebook, path, params=params)
        if result is not None:
            self.finish_json(result)


class RunsHandler(KalePyHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        from kale_py import api

        result = await self.call_api(api.list_runs, self.query_path())
        if result is not None:
            self.finish_json(result)

    @tornado.web.authenticated
    async def post(self) -> None:
        from kale_py import api

        body = self.json_body()
        path = self.notebook_path(body.get("path"))
        params = _expect(body, "params", dict) or {}
        only = _string_list(body, "only")
        from_step = _expect(body, "from", str)
        result = await self.call_api(api.start_local_run, path, params, only, from_step)
        if result is not None:
            self.set_status(201)
            self.finish_json(result)


class RunHandler(KalePyHandler):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        from kale_py import api

        result = await self.call_api(api.get_run, self.query_path(), run_id)
        if result is not None:
            self.finish_json(result)


class RunCancelHandler(KalePyHandler):
    @tornado.web.authenticated
    async def post(self, run_id: str) -> None:
        from kale_py import api

        body = self.json_body()
        path = self.notebook_path(body.get("path"))
        result = await self.call_api(api.cancel_run, path, run_id)
        if result is not None:
            self.set_status(202)
            self.finish_json(result)


class KfpRunHandler(KalePyHandler):
    """A submitted run's state on the KFP endpoint (the panel polls it after a submit)."""

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        from kale_py import api

        host = self.get_query_argument("host", None) or None
        token = self.request.headers.get("X-KFP-Token") or None
        result = await self.call_api(api.kfp_run_status, run_id, host, token)
        if result is not None:
            self.finish_json(result)


class RunLogHandler(KalePyHandler):
    @tornado.web.authenticated
    async def get(self, run_id: str, step: str) -> None:
        from kale_py import api

        text = await self.call_api(api.read_log, self.query_path(), run_id, step)
        if text is not None:
            self.finish(text, set_content_type="text/plain; charset=UTF-8")


class RunReportHandler(KalePyHandler):
    """A step's report: the HTML of its displayed outputs."""

    @property
    def content_security_policy(self) -> str:
        # The report holds the notebook's own outputs (plots, widgets' HTML, scripts). Served
        # from Jupyter's origin it could act with the user's credentials, so it runs in a
        # sandbox: scripts work, but in an opaque origin without the server's cookies.
        return "sandbox allow-scripts allow-popups; frame-ancestors 'self'"

    @tornado.web.authenticated
    async def get(self, run_id: str, step: str) -> None:
        from kale_py import api

        html = await self.call_api(api.read_report, self.query_path(), run_id, step)
        if html is not None:
            self.finish(html, set_content_type="text/html; charset=UTF-8")


class TunesHandler(KalePyHandler):
    """POST starts a local tuning in the background, body ``{"path", "search": ["NAME=SPEC"],
    "objective", "maximize", "trials", "parallel", "algorithm"}`` → 201 ``{"tune_id"}``;
    GET lists the notebook's tunings."""

    @tornado.web.authenticated
    async def get(self) -> None:
        from kale_py import api

        result = await self.call_api(api.list_tunes, self.query_path())
        if result is not None:
            self.finish_json(result)

    @tornado.web.authenticated
    async def post(self) -> None:
        from kale_py import api

        body = self.json_body()
        path = self.notebook_path(body.get("path"))
        search = _string_list(body, "search") or []
        options = {
            "objective": _expect(body, "objective", str),
            "maximize": _expect(body, "maximize", bool),
            "trials": _expect(body, "trials", int),
            "parallel": _expect(body, "parallel", int),
            "algorithm": _expect(body, "algorithm", str),
        }
        result = await self.call_api(api.start_tune, path, search, **options)
        if result is not None:
            self.set_status(201)
            self.finish_json(result)


class TuneHandler(KalePyHandler):
    @tornado.web.authenticated
    async def get(self, tune_id: str) -> None:
        from kale_py import api

        result = await self.call_api(api.get_tune, self.query_path(), tune_id)
        if result is not None:
            self.finish_json(result)


class TuneReportHandler(RunReportHandler):
    """A tuning's HTML report, sandboxed like a step's."""

    @tornado.web.authenticated
    async def get(self, tune_id: str) -> None:
        from kale_py import api

        html = await self.call_api(api.read_tune_report, self.query_path(), tune_id)
        if html is not None:
            self.finish(html, set_content_type="text/html; charset=UTF-8")


class SubmitHandler(KalePyHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        from kale_py import api

        body = self.json_body()
        path = self.notebook_path(body.get("path"))
        result = await self.call_api(
            api.submit,
            path,
            host=_expect(body, "host", str),
            experiment=_expect(body, "experiment", str),
            params=_expect(body, "params", dict) or {},
            token=_expect(body, "token", str),
            schedule=_expect(body, "schedule", str) or None,
            max_concurrency=_expect(body, "max_concurrency", int) or 1,
            out=self.log.info,  # progress lines go to the server's log, not its stdout
        )
        if result is not None:
            self.finish_json(result)


class VerifyHandler(KalePyHandler):
    """``POST <base>/kale-py/verify``: does the pipeline compute what the notebook computes?

    Runs the notebook top to bottom in a Jupyter kernel and as the local pipeline, and
    compares every name the steps bind (see ``nb2pipe verify``). It takes as long as both
    runs together.

    Request body::

        {"path": "dir/nb.ipynb",          # relative to the server root (required)
         "params": {"EPOCHS": 3},         # pipeline parameters for both runs (optional)
         "runs": 2}                       # kernel runs, to find unstable names (default 1)

    Answer (200)::

        {"notebook": "/abs/dir/nb.ipynb",
         "ok": false,                     # no difference and every step succeeded
         "differences": [                 # names whose final values differ
             {"name": "model", "step": "train",    # the step that provides the name
              "kernel": "short description of the kernel's value",
              "pipeline": "short description of the pipeline's value, or (step 'x' failed)"}],
         "unstable": [                    # names differing between kernel runs: not failures
             {"name": "stamp", "step": "load", "kernel": "first run", "pipeline": "other run"}],
         "compared": 12,                  # names compared
         "steps": [                       # one per step, in notebook order
             {"step": "train", "status": "succeeded",   # the pipeline run's step status
              "compared": 3, "differences": ["model"], "unstable": [],
              "error": null}],            # "ZeroDivisionError: ... (cell 7, line 3)" if failed
         "runs": 2,
         "pipeline_status": "succeeded",  # succeeded | failed | cancelled
         "seconds": {"kernel": 8.1, "pipeline": 3.2}}

    422 with diagnostics when the notebook has errors, a parameter does not fit, the
    notebook fails in the kernel (NB702, with its cell and line) or nbclient/ipykernel are
    not installed (NB701).
    """

    @tornado.web.authenticated
    async def post(self) -> None:
        from kale_py import api

        body = self.json_body()
        path = self.notebook_path(body.get("path"))
        params = _expect(body, "params", dict) or {}
        runs = body.get("runs", 1)
        if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
            raise BadRequest("'runs' must be a whole number of at least 1")
        result = await self.call_api(api.verify, path, params, runs)
        if result is not None:
            self.finish_json(result)


class ServingHandler(KalePyHandler):
    """``GET <base>/kale-py/serving?path=NB[&namespace=NS]``: the InferenceServices of the
    notebook's ``serve:VAR`` models on the cluster (see ``nb2pipe serve --cluster``).

    Answer (200)::

        {"namespace": "team-a",
         "services": [{"variable": "model", "name": "model",
                       "state": "ready",      # ready | not ready | not deployed | foreign
                       "url": "http://model.team-a.example.com/v2/models/model/infer",
                       "message": ""}]}      # why it is not ready, or not deployed

    422 with diagnostics when no variable is tagged serve:VAR (NB801) or the Kubernetes API
    cannot be used (KF105: no credentials or namespace, KF201-KF203).
    """

    @tornado.web.authenticated
    async def get(self) -> None:
        from kale_py import api

        namespace = self.get_query_argument("namespace", None) or None
        result = await self.call_api(api.serving_status, self.query_path(), namespace)
        if result is not None:
            self.finish_json(result)


class ServeHandler(KalePyHandler):
    """The notebook's local model server (``nb2pipe serve`` in the background).

    ``GET serve?path=NB``: ``{"serving": RECORD or null}``. ``POST serve`` with
    ``{"path", "variable"?, "run"?}`` starts it and answers 201 with its record once the model
    is ready: ``{"url": "http://127.0.0.1:P/v2/models/NAME/infer", "port", "pid", "name",
    "variable", "step", "run_id", "started", "notebook"}``; 422 with NB801/NB802/NB803/NB805
    when there is nothing to serve or it cannot be loaded. ``POST serve/stop`` with
    ``{"path"}`` stops it: ``{"stopped": RECORD or null}``.
    """

    @tornado.web.authenticated
    async def get(self) -> None:
        from kale_py import api

        path = self.query_path()
        result = await self.call_api(lambda: {"serving": api.local_serving(path)})
        if result is not None:
            self.finish_json(result)

    @tornado.web.authenticated
    async def post(self) -> None:
        from kale_py import api

        body = self.json_body()
        path = self.notebook_path(body.get("path"))
        result = await self.call_api(api.start_serving, path, _expect(body, "variable", str),
                                     _expect(body, "run", str))
        if result is not None:
            self.set_status(201)
            self.finish_json(result)


class ServeStopHandler(KalePyHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        from kale_py import api

        path = self.notebook_path(self.json_body().get("path"))
        result = await self.call_api(lambda: {"stopped": api.stop_serving(path)})
        if result is not None:
            self.finish_json(result)


class ExperimentsHandler(KalePyHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        from kale_py import api

        host = self.get_query_argument("host", None) or None
        result = await self.call_api(api.list_experiments, host)
        if result is not None:
            self.finish_json(result)


class VolumesHandler(KalePyHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        from kale_py import api

        result = await self.call_api(api.list_volumes)
        if result is not None:
            self.finish_json(result)


class PodDefaultsHandler(KalePyHandler):
    """``GET kale-py/poddefaults``: the namespace's PodDefaults for the panel to offer."""

    @tornado.web.authenticated
    async def get(self) -> None:
        from kale_py import api

        result = await self.call_api(api.list_poddefaults)
        if result is not None:
            self.finish_json(result)


ROUTES: list[tuple[str, type[KalePyHandler]]] = [
    ("analyse", AnalyseHandler),
    ("compile", CompileHandler),
    ("runs", RunsHandler),
    (f"runs/{RUN_ID}", RunHandler),
    (f"runs/{RUN_ID}/cancel", RunCancelHandler),
    (f"runs/{RUN_ID}/logs/{STEP}", RunLogHandler),
    (f"runs/{RUN_ID}/report/{STEP}", RunReportHandler),
    ("tunes", TunesHandler),
    (f"tunes/{TUNE_ID}", TuneHandler),
    (f"tunes/{TUNE_ID}/report", TuneReportHandler),
    ("submit", SubmitHandler),
    ("verify", VerifyHandler),
    ("serving", ServingHandler),
    ("serve", ServeHandler),
    ("serve/stop", ServeStopHandler),
    (f"kfp-runs/{RUN_ID}", KfpRunHandler),
    ("experiments", ExperimentsHandler),
    ("volumes", VolumesHandler),
    ("poddefaults", PodDefaultsHandler),
]


def setup_handlers(web_app: tornado.web.Application) -> None:
    """Add the kale_py routes to a running jupyter-server."""
    base_url = web_app.settings["base_url"]
    web_app.add_handlers(
        ".*$",
        [(url_path_join(base_url, NAMESPACE, route), handler) for route, handler in ROUTES],
    )

