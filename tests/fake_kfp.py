"""A fake Kubeflow Pipelines REST server (API v2beta1) on 127.0.0.1, for the client's tests.

It stands in for a KFP backend because none can run on this machine (no Kubernetes, no Docker).
It answers the calls a submission makes with the JSON shapes of KFP 2.x (snake_case fields, as
the API server's grpc-gateway writes them, empty lists left out), keeps pipelines, versions,
experiments and runs in memory, and records every request: method, path, query, headers, body.

Runs move through ``run_states`` (by default PENDING -> RUNNING -> SUCCEEDED), one step per
``GET /apis/v2beta1/runs/{id}``, with one task per state change so that watching shows progress.
``fail_with`` makes every request answer an HTTP error; ``token`` makes requests without that
bearer token answer 401.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Json = dict[str, Any]
API = "/apis/v2beta1"
#: How the Kubernetes API server forwards to the ml-pipeline service (kubeconfig access).
SERVICE_PROXY = "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_cn: str | None = None  # the common name of the TLS client certificate, if any

    def json(self) -> Any:
        return json.loads(self.body)

    def upload(self) -> tuple[str, bytes]:
        """The (filename, content) of the multipart ``uploadfile`` field."""
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                return part.get_filename() or "", part.get_payload(decode=True)
        raise AssertionError("no uploadfile field in the request")


@dataclass
class FakeKfp:
    """The backend's state; ``url`` is where it listens once started."""

    multi_user: bool = False
    token: str | None = None
    fail_with: tuple[int, Json | str] | None = None
    run_states: tuple[str, ...] = ("PENDING", "RUNNING", "SUCCEEDED")
    requests: list[Recorded] = field(default_factory=list)
    pipelines: dict[str, Json] = field(default_factory=dict)
    versions: dict[str, list[Json]] = field(default_factory=dict)
    experiments: dict[str, Json] = field(default_factory=dict)
    runs: dict[str, Json] = field(default_factory=dict)
    recurring_runs: dict[str, Json] = field(default_factory=dict)
    url: str = ""
    #: HTTPS: (certificate file, key file, CA file that client certificates must chain to)
    tls: tuple[str, str, str | None] | None = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _polls: dict[str, int] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> FakeKfp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                fake._handle(self)

            def do_DELETE(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls[0], self.tls[1])
            if self.tls[2]:
                context.load_verify_locations(self.tls[2])
                context.verify_mode = ssl.CERT_OPTIONAL
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests
                if r.method == method and r.path.removeprefix(SERVICE_PROXY) == API + path]

    # --- request handling -------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        recorded = Recorded(h.command, parsed.path, urllib.parse.parse_qs(parsed.query),
                            dict(h.headers.items()), h.rfile.read(length), _client_cn(h))
        self.requests.append(recorded)
        status, answer = self._answer(recorded)
        data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, r: Recorded) -> tuple[int, Json | str]:
        if self.fail_with is not None:
            return self.fail_with
        if self.token and r.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": "Unauthorized", "code": 16, "message": "Unauthorized"}
        path = r.path.removeprefix(SERVICE_PROXY)
        if not path.startswith(API):
            return 404, "404 page not found"
        route = (r.method, *path[len(API):].strip("/").split("/"))
        handler = {
            ("GET", "healthz"): lambda: {"multi_user": self.multi_user},
            ("GET", "pipelines"): lambda: self._list(self.pipelines.values(), "pipelines", r),
            ("POST", "pipelines", "upload"): lambda: self._upload(r),
            ("POST", "pipelines", "upload_version"): lambda: self._upload_version(r),
            ("GET", "experiments"): lambda: self._list(self._in_namespace(r), "experiments", r),
            ("POST", "experiments"): lambda: self._create_experiment(r),
            ("POST", "runs"): lambda: self._create_run(r),
            ("POST", "recurringruns"): lambda: self._create_recurring_run(r),
            ("GET", "recurringruns"): lambda: self._list(
                [j for j in self.recurring_runs.values()
                 if j["experiment_id"] == r.query.get("experiment_id", [j["experiment_id"]])[0]],
                "recurring_runs", r),
        }.get(route)
        if handler is not None:
            return 200, handler()
        if route[:2] == ("GET", "pipelines") and route[3:] == ("versions",):
            found = sorted(self.versions.get(route[2], []), key=lambda v: v["created_at"],
                           reverse=True)
            return 200, self._list(found, "pipeline_versions", r)
        if route[:2] == ("GET", "runs") and len(route) == 3 and route[2] in self.runs:
            return 200, self._advance(route[2])
        if route[1:2] == ("recurringruns",) and len(route) == 3:
            return self._recurring_run_action(route[0], route[2])
        return 404, {"error": "Not Found", "code": 5, "message": f"no route {r.path}"}

    def _list(self, items: Any, key: str, r: Recorded) -> Json:
        items = list(items)
        query_filter = r.query.get("filter")
        if query_filter:
            for p in json.loads(query_filter[0])["predicates"]:
                items = [i for i in items if i.get(p["key"]) == p["stringValue"]]
        size = int(r.query.get("page_size", ["0"])[0]) or len(items)
        # grpc-gateway leaves empty repeated fields out of the answer
        return {key: items[:size], "total_size": len(items)} if items else {}

    def _in_namespace(self, r: Recorded) -> list[Json]:
        namespace = r.query.get("namespace", [None])[0]
        return [e for e in self.experiments.values() if e.get("namespace") == namespace]

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def _upload(self, r: Recorded) -> Json:
        name = r.query["name"][0]
        pipeline_id = self._new_id("pl")
        self.pipelines[pipeline_id] = {
            "pipeline_id": pipeline_id, "display_name": name, "name": name,
            "description": r.query.get("description", [""])[0],
            "created_at": "2026-11-30T00:00:00Z"}
        self._add_version(pipeline_id, name, r)
        return self.pipelines[pipeline_id]

    def _upload_version(self, r: Recorded) -> Json:
        return self._add_version(r.query["pipelineid"][0], r.query["name"][0], r)

    def _add_version(self, pipeline_id: str, name: str, r: Recorded) -> Json:
        version_id = self._new_id("ver")
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": version_id,
                   "display_name": name, "name": name,
                   "created_at": f"2026-11-30T00:00:{len(self.requests):02d}Z",
                   "pipeline_spec": {"uploaded": r.upload()[0]}}
        self.versions.setdefault(pipeline_id, []).append(version)
        return version

    def _create_experiment(self, r: Recorded) -> Json:
        body = r.json()
        experiment_id = self._new_id("exp")
        self.experiments[experiment_id] = {
            "experiment_id": experiment_id, "display_name": body["display_name"],
            "namespace": body.get("namespace"), "created_at": "2026-11-30T00:00:00Z",
            "storage_state": "AVAILABLE"}
        return self.experiments[experiment_id]

    def _create_run(self, r: Recorded) -> Json:
        run_id = self._new_id("run")
        self.runs[run_id] = {**r.json(), "run_id": run_id, "state": "PENDING",
                             "created_at": "2026-11-30T00:00:00Z", "storage_state": "AVAILABLE"}
        self._polls[run_id] = 0
        return self.runs[run_id]

    def _create_recurring_run(self, r: Recorded) -> Json:
        recurring_id = self._new_id("rr")
        self.recurring_runs[recurring_id] = {
            **r.json(), "recurring_run_id": recurring_id, "status": "ENABLED",
            "created_at": "2026-11-30T00:00:00Z"}
        return self.recurring_runs[recurring_id]

    def _recurring_run_action(self, method: str, target: str) -> tuple[int, Json]:
        recurring_id, _, action = target.partition(":")
        found = self.recurring_runs.get(recurring_id)
        if found is None:
            return 404, {"error": "Not Found", "code": 5, "message": f"no {recurring_id}"}
        if method == "DELETE" and not action:
            del self.recurring_runs[recurring_id]
            return 200, {}
        if method == "POST" and action in ("enable", "disable"):
            found.update(mode=action.upper() + "", status=f"{action.upper()}D")
            return 200, {}
        return 404, {"error": "Not Found", "code": 5, "message": f"no route {target}"}

    def _advance(self, run_id: str) -> Json:
        step = min(self._polls[run_id], len(self.run_states) - 1)
        self._polls[run_id] += 1
        state = self.run_states[step]
        tasks = [{"run_id": run_id, "task_id": f"t{i}", "display_name": f"step-{i}",
                  "pod_name": f"{run_id}-step-{i}",
                  "state": "SUCCEEDED" if i < step else state} for i in range(step + 1)]
        self.runs[run_id].update(state=state, run_details={"task_details": tasks})
        return self.runs[run_id]


def _client_cn(h: BaseHTTPRequestHandler) -> str | None:
    connection = h.connection
    peer = connection.getpeercert() if isinstance(connection, ssl.SSLSocket) else None
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
