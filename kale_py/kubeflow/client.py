"""Submit compiled pipelines to a Kubeflow Pipelines endpoint (REST API v2beta1).

The standard library is enough for the handful of calls a submission needs, and it keeps
``nb2pipe submit`` fast: no ``kfp`` (seconds to import) and no Kubernetes client.

Where the endpoint is, first match wins: the ``host`` argument (the CLI passes ``--host`` or the
notebook's ``kfp_host``), ``$KF_PIPELINES_ENDPOINT``, the in-cluster service
``http://ml-pipeline.kubeflow.svc.cluster.local:8888`` inside a pod (as ``kfp.Client()`` does),
then the Kubernetes API server's service proxy from the kubeconfig's current context.

How requests authenticate, first match wins: the ``token`` argument or ``$KF_PIPELINES_TOKEN``;
the service-account token file at ``$KF_PIPELINES_SA_TOKEN_PATH`` or
``/var/run/secrets/kubeflow/pipelines/token`` (read again before every request, since it is
rotated); through the kubeconfig's API server, the kubeconfig user's credentials as the official
``kubernetes`` client loads them (tokens, client certificates, ``exec`` plugins such as
``gke-gcloud-auth-plugin`` or ``aws eks get-token``, OIDC auth providers). The ``kubernetes``
package (~0.3-0.6 s to import) is imported only on that path.

Every failure is a :class:`~kale_py.diagnostics.SubmitError` with a one-line message.
"""

from __future__ import annotations

import base64
import http.client
import importlib
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kale_py.diagnostics import Diagnostic, SubmitError
from kale_py.http_errors import error_message
from kale_py.kubeflow.schedules import Schedule, recurring_run_body

Json = dict[str, Any]
Output = Callable[[str], object]

API = "/apis/v2beta1"
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
IN_CLUSTER_UI = "/_/pipeline"  # the KFP UI under the Kubeflow central dashboard
KFP_NAMESPACE = "kubeflow"  # where the ml-pipeline service runs
DEFAULT_SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
POD_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})
DEFAULT_EXPERIMENT = "Default"
TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class SubmitResult:
    """What a submission created. ``final_state`` is set when the run was watched to its end."""

    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str
    run_url: str
    final_state: str | None = None
    recurring_run_id: str | None = None


@dataclass(frozen=True)
class Experiment:
    """A KFP experiment, as the side panel lists them."""

    experiment_id: str
    display_name: str
    namespace: str | None
    created_at: str | None


@dataclass(frozen=True)
class Auth:
    """Where the bearer token comes from: token, service-account, kubeconfig or none."""

    kind: str
    token: str | None = None
    path: str | None = None
    source: str = ""
    header: str | None = None  # a whole Authorization value (kubeconfig: Bearer or Basic)
    cookie: str | None = field(default=None, repr=False)  # a Kubeflow session (Dex login)

    def headers(self) -> dict[str, str]:
        if self.cookie:
            return {"Cookie": self.cookie}
        if self.header:
            return {"Authorization": self.header}
        token = self.token
        if self.kind == "service-account" and self.path:
            token = _read_token_file(self.path)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def describe(self) -> str:
        if self.kind == "none":
            return "no credentials"
        if self.kind == "dex":
            return f"the Kubeflow session of {self.source}"
        if self.header and not self.header.startswith("Bearer "):
            return f"the credentials of {self.source}"
        return f"the bearer token from {self.source}"


@dataclass(frozen=True)
class Endpoint:
    """A resolved KFP API base URL, how to authenticate there, and where its UI is."""

    api: str
    ui: str
    auth: Auth
    namespace: str | None = None
    ca_data: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    cert_file: str | None = None  # a client certificate (kubeconfig), with its key
    key_file: str | None = None


def submit_pipeline(yaml_text: str, *, name: str, description: str | None = None,
                    host: str | None = None, token: str | None = None,
                    namespace: str | None = None, experiment: str | None = None,
                    params: Mapping[str, object] | None = None,
                    version_name: str | None = None, watch: bool = False,
                    out: Output = print, poll_seconds: float = 5.0,
                    upload: bool = True, schedule: Schedule | None = None,
                    username: str | None = None) -> SubmitResult:
    """Upload ``yaml_text`` as pipeline ``name`` (or a new version of it), make sure the
    experiment exists, start a run and print its link; with ``watch``, follow it to the end.
    With ``upload=False`` the run carries the pipeline itself and nothing is uploaded.

    >>> submit_pipeline(open("p.yaml").read(), name="churn", host="http://localhost:8080",
    ...                 params={"epochs": 3}, watch=True)  # doctest: +SKIP
    """
    client = Client(resolve_endpoint(host, token, namespace, username))
    if client.healthz().get("multi_user") and not client.endpoint.namespace:
        raise _error("KF105", f"the KFP endpoint at {client.endpoint.api} is multi-user: pass "
                     "--namespace with your Kubeflow profile namespace")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    pipeline_id = version_id = ""
    if upload:
        pipeline_id, version_id = client.upsert_pipeline(
            yaml_text, name, description, version_name or f"{name} {stamp}", out)
        source: Json = {"pipeline_version_reference": {"pipeline_id": pipeline_id,
                                                       "pipeline_version_id": version_id}}
    else:
        source = {"pipeline_spec": _inline_spec(yaml_text)}
    experiment_id = client.ensure_experiment(experiment or DEFAULT_EXPERIMENT, out)
    if schedule is not None:
        body = recurring_run_body(name, experiment_id, source, dict(params or {}), schedule,
                                  client.endpoint.namespace)
        recurring = client.call("POST", "/recurringruns", body=body)
        recurring_id = str(recurring.get("recurring_run_id", ""))
        url = f"{client.endpoint.ui.rstrip('/')}/#/recurringrun/details/{recurring_id}"
        out(f"Recurring run '{name}' created ({schedule.cron}): {url}")
        return SubmitResult(pipeline_id, version_id, experiment_id, "", url, None, recurring_id)
    run = client.create_run(f"{name} {stamp}", experiment_id, source, dict(params or {}))
    run_id = str(run.get("run_id", ""))
    url = client.run_url(run_id)
    out(f"Run '{name} {stamp}' started: {url}")
    final = client.watch_run(run_id, out, poll_seconds) if watch else None
    return SubmitResult(pipeline_id, version_id, experiment_id, run_id, url, final)


def _inline_spec(yaml_text: str) -> Json:
    """The pipeline file as a run's ``pipeline_spec``: with its platform spec, as kfp sends it."""
    yaml = importlib.import_module("yaml")  # lazily, and untyped
    try:
        documents = [d for d in yaml.safe_load_all(yaml_text) if d is not None]
    except yaml.YAMLError as e:
        message = " ".join(str(e).split())
        raise _error("KF105", f"the pipeline file is not YAML: {message}") from None
    if len(documents) == 1:
        return documents[0]  # type: ignore[no-any-return]
    return {"pipeline_spec": documents[0], "platform_spec": documents[1]}


def manage_schedule(action: str, *, name: str, host: str | None = None,
                    token: str | None = None, namespace: str | None = None,
                    experiment: str | None = None, out: Output = print,
                    username: str | None = None) -> list[str]:
    """``disable``, ``enable`` or ``delete`` the recurring runs named ``name``; their ids."""
    from kale_py.kubeflow.schedules import manage_recurring_runs

    client = Client(resolve_endpoint(host, token, namespace, username))
    experiment_id = None
    if experiment:
        found = client.find("/experiments", "experiments", experiment, client.namespace_query())
        experiment_id = str(found.get("experiment_id", "")) if found else None
    return manage_recurring_runs(client, name, experiment_id, action, out)


def list_experiments(*, host: str | None = None, token: str | None = None,
                     namespace: str | None = None) -> list[Experiment]:
    """The experiments visible at the endpoint (in ``namespace`` on a multi-user KFP)."""
    client = Client(resolve_endpoint(host, token, namespace))
    return [Experiment(str(e.get("experiment_id", "")), str(e.get("display_name", "")),
                       e.get("namespace"), e.get("created_at"))
            for e in client.paged("/experiments", "experiments", client.namespace_query())]


def run_status(run_id: str, *, host: str | None = None,
               token: str | None = None) -> dict[str, Any]:
    """A run's state on the endpoint: ``{"run_id", "state", "url", "failed_step", "error"}``.

    ``failed_step`` names the first task that failed (its display name), for the panel."""
    client = Client(resolve_endpoint(host, token))
    run = client.call("GET", f"/runs/{urllib.parse.quote(run_id, safe='')}")
    failed = [t for t in (run.get("run_details") or {}).get("task_details") or []
              if str(t.get("state", "")) == "FAILED"
              and not str(t.get("display_name", "")).startswith(("root", "executor"))]
    failed.sort(key=lambda t: str(t.get("end_time") or ""))
    error = run.get("error") or {}
    return {
        "run_id": run_id,
        "state": str(run.get("state", "") or "PENDING"),
        "url": client.run_url(run_id),
        "failed_step": str(failed[0].get("display_name")) if failed else None,
        "error": str(error.get("message")) if isinstance(error, dict) and error else None,
    }


# --- where and how --------------------------------------------------------------------------------

def resolve_endpoint(host: str | None = None, token: str | None = None,
                     namespace: str | None = None, username: str | None = None) -> Endpoint:
    """The KFP endpoint and credentials to use (see the module docstring for the order).

    With ``username``, a Kubeflow session from Dex (see :mod:`kale_py.kubeflow.dex`).
    """
    env = os.environ
    explicit = _explicit_auth(token)
    host = host or env.get("KF_PIPELINES_ENDPOINT")
    if username and not explicit:
        return _dex_endpoint(host, username, namespace)
    in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST"))
    if in_cluster and not namespace:
        namespace = _read_optional(POD_NAMESPACE_PATH)
    if host:
        api = _with_scheme(host)
        auth = explicit or _service_account_auth() or Auth("none")
        return Endpoint(api, env.get("KF_PIPELINES_UI_ENDPOINT") or api, auth, namespace)
    if in_cluster:
        auth = explicit or _service_account_auth() or Auth("none")
        ui = env.get("KF_PIPELINES_UI_ENDPOINT") or IN_CLUSTER_UI
        return Endpoint(IN_CLUSTER_HOST, ui, auth, namespace)
    return _kubeconfig_endpoint(explicit, namespace)


def _dex_endpoint(host: str | None, username: str, namespace: str | None) -> Endpoint:
    from .dex import dex_session

    if not host:
        raise _error("KF105", "--username logs in through the Kubeflow gateway: pass --host "
                     "with its pipelines address, e.g. https://kubeflow.example.com/pipeline")
    api = _with_scheme(host)
    tls = ssl.create_default_context() if api.startswith("https:") else None
    session = dex_session(api, username, tls=tls)
    auth = Auth("dex", cookie=session.cookie, source=username)
    return Endpoint(api, os.environ.get("KF_PIPELINES_UI_ENDPOINT") or api, auth, namespace)


def _explicit_auth(token: str | None) -> Auth | None:
    if token:
        return Auth("token", token=token, source="--token")
    if os.environ.get("KF_PIPELINES_TOKEN"):
        return Auth("token", token=os.environ["KF_PIPELINES_TOKEN"], source="KF_PIPELINES_TOKEN")
    return None


def _service_account_auth() -> Auth | None:
    path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
    if path:
        if not os.path.isfile(path):
            raise _error("KF105", f"KF_PIPELINES_SA_TOKEN_PATH names {path}, which does not "
                         "exist: fix the variable or unset it")
        return Auth("service-account", path=path, source=f"the service-account file {path}")
    if os.path.isfile(DEFAULT_SA_TOKEN_PATH):
        return Auth("service-account", path=DEFAULT_SA_TOKEN_PATH,
                    source=f"the service-account file {DEFAULT_SA_TOKEN_PATH}")
    return None


def _kubeconfig_endpoint(explicit: Auth | None, namespace: str | None) -> Endpoint:
    """The KFP API through the Kubernetes API server's service proxy, with the kubeconfig's
    credentials as the official ``kubernetes`` client loads them: bearer tokens and token files,
    client certificates, ``exec`` plugins, auth providers (OIDC), basic auth."""
    paths = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(p).is_file() for p in paths.split(os.pathsep) if p):
        raise _error("KF105", "no KFP endpoint: pass --host URL, set kfp_host in the notebook "
                     "metadata or KF_PIPELINES_ENDPOINT (no kubeconfig found either)")
    config, context = _load_kubeconfig(paths)
    server = str(config.host).rstrip("/")
    proxy = f"{server}/api/v1/namespaces/{KFP_NAMESPACE}/services"
    header = (config.api_key or {}).get("authorization")
    source = f"kubeconfig user {context.get('user', '?')!r} ({paths})"
    auth = explicit or (Auth("kubeconfig", header=str(header), source=source) if header
                        else Auth("none"))
    return Endpoint(
        api=f"{proxy}/ml-pipeline:http/proxy",
        ui=os.environ.get("KF_PIPELINES_UI_ENDPOINT") or f"{proxy}/ml-pipeline-ui:80/proxy",
        auth=auth, namespace=namespace or context.get("namespace"),
        ca_file=config.ssl_ca_cert, insecure=not config.verify_ssl,
        cert_file=None if explicit else config.cert_file,
        key_file=None if explicit else config.key_file)


def kubernetes_configuration(purpose: str) -> tuple[Any, str | None]:
    """The official client's Configuration for the Kubernetes API, and the default namespace:
    the pod's service account inside the cluster, else the kubeconfig's current context.
    ``purpose`` ("create the Katib Experiment in") completes the error when there is neither."""
    from kubernetes import client as k8s_client  # type: ignore[import-untyped]
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=configuration)
        namespace_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
        return configuration, namespace
    paths = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(p).is_file() for p in paths.split(os.pathsep) if p):
        raise _error("KF105", f"no Kubernetes API to {purpose}: no kubeconfig found and not "
                     "in a pod")
    configuration, context = _load_kubeconfig(paths)
    return configuration, context.get("namespace")


def _load_kubeconfig(paths: str) -> tuple[Any, Json]:
    """The ``kubernetes`` client's Configuration for the current context, and that context."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    problems = _LogCollector()  # the loader logs a failed exec plugin instead of raising
    root = logging.getLogger()
    root.addHandler(problems)
    try:
        _, active = k8s_config.list_kube_config_contexts(config_file=paths)
        k8s_config.load_kube_config(config_file=paths, client_configuration=configuration,
                                    persist_config=False)
    except (k8s_config.ConfigException, OSError, ValueError, KeyError, TypeError) as e:
        problems.messages.append(" ".join(str(e).split()) or type(e).__name__)
    finally:
        root.removeHandler(problems)
    if problems.messages:
        raise _error("KF105", f"cannot use the kubeconfig {paths}: "
                     f"{'; '.join(problems.messages)}; fix it, or pass --host and --token")
    context = (active or {}).get("context") or {}
    return configuration, context if isinstance(context, dict) else {}


class _LogCollector(logging.Handler):
    """Collects what the ``kubernetes`` loader logs as errors (a failed exec plugin)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


def _read_token_file(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise _error("KF102", f"cannot read the token file {path}: {e.strerror}") from None


def _read_optional(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _with_scheme(host: str) -> str:
    host = host.rstrip("/")
    return host if "://" in host else f"http://{host}"


def _error(code: str, message: str) -> SubmitError:
    return SubmitError(Diagnostic("error", code, message))


# --- the REST calls -------------------------------------------------------------------------------

class Client:
    """The v2beta1 calls a submission makes, against one resolved endpoint."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint

    def healthz(self) -> Json:
        return self.call("GET", "/healthz")

    def namespace_query(self) -> dict[str, str]:
        return {"namespace": self.endpoint.namespace} if self.endpoint.namespace else {}

    def find(self, collection: str, key: str, display_name: str,
             query: Mapping[str, str] | None = None) -> Json | None:
        """The first object of ``collection`` with this display name."""
        predicate = {"key": "display_name", "operation": "EQUALS", "stringValue": display_name}
        filtered = {**(query or {}), "filter": json.dumps({"predicates": [predicate]})}
        found = self.call("GET", collection, filtered).get(key) or []
        return next((x for x in found if x.get("display_name") == display_name), None)

    def paged(self, collection: str, key: str, query: Mapping[str, str]) -> Iterator[Json]:
        token = ""
        for _ in range(100):  # a bound, should a server never stop paging
            page = self.call("GET", collection, {**query, "page_size": "100",
                                                 **({"page_token": token} if token else {})})
            yield from page.get(key) or []
            token = page.get("next_page_token") or ""
            if not token:
                return

    def upsert_pipeline(self, yaml_text: str, name: str, description: str | None,
                        version_name: str, out: Output) -> tuple[str, str]:
        """Upload a new pipeline, or a new version of the one with this name."""
        existing = self.find("/pipelines", "pipelines", name)
        data = yaml_text.encode()
        if existing is None:
            query = {"name": name, **({"description": description} if description else {})}
            pipeline = self.call("POST", "/pipelines/upload", query, upload=(f"{name}.yaml", data))
            pipeline_id = str(pipeline.get("pipeline_id", ""))
            versions = self.call("GET", f"/pipelines/{pipeline_id}/versions",
                                 {"page_size": "1", "sort_by": "created_at desc"})
            version = (versions.get("pipeline_versions") or [{}])[0]
            out(f"Uploaded pipeline '{name}'")
        else:
            pipeline_id = str(existing.get("pipeline_id", ""))
            version = self.call("POST", "/pipelines/upload_version",
                                {"name": version_name, "pipelineid": pipeline_id},
                                upload=(f"{name}.yaml", data))
            out(f"Uploaded version '{version_name}' of pipeline '{name}'")
        return pipeline_id, str(version.get("pipeline_version_id", ""))

    def ensure_experiment(self, name: str, out: Output) -> str:
        found = self.find("/experiments", "experiments", name, self.namespace_query())
        if found is None:
            body: Json = {"display_name": name, **self.namespace_query()}
            found = self.call("POST", "/experiments", body=body)
            out(f"Created experiment '{name}'")
        return str(found.get("experiment_id", ""))

    def create_run(self, display_name: str, experiment_id: str, source: Json,
                   params: dict[str, object]) -> Json:
        """``source`` is a ``pipeline_version_reference`` or an inline ``pipeline_spec``."""
        body: Json = {"display_name": display_name, "experiment_id": experiment_id, **source,
                      "runtime_config": {"parameters": params}}
        return self.call("POST", "/runs", body=body)

    def run_url(self, run_id: str) -> str:
        return f"{self.endpoint.ui.rstrip('/')}/#/runs/details/{run_id}"

    def watch_run(self, run_id: str, out: Output, poll_seconds: float) -> str:
        """Poll the run until it ends, printing each task's state changes; the final state."""
        seen: dict[str, str] = {}
        while True:
            run = self.call("GET", f"/runs/{run_id}")
            for task in (run.get("run_details") or {}).get("task_details") or []:
                key = str(task.get("task_id") or task.get("display_name"))
                state = str(task.get("state", ""))
                if state and seen.get(key) != state:
                    seen[key] = state
                    out(f"  {task.get('display_name', key)}: {state}")
            state = str(run.get("state", ""))
            if state and seen.get("") != state:
                seen[""] = state
                out(f"Run {state}")
            if state in TERMINAL_STATES:
                return state
            time.sleep(poll_seconds)

    def call(self, method: str, path: str, query: Mapping[str, str] | None = None,
             body: Json | None = None, upload: tuple[str, bytes] | None = None) -> Json:
        """One request to ``{api}/apis/v2beta1{path}``; the JSON answer, or a SubmitError."""
        url = f"{self.endpoint.api}{API}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json", **self.endpoint.auth.headers()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif upload is not None:
            data, headers["Content-Type"] = _multipart("uploadfile", *upload)
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS,
                                        context=self._tls()) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            with e:  # closes the connection the error still holds
                raise self._http_error(method, path, e) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise _error("KF101", f"cannot reach the KFP endpoint at {self.endpoint.api}: "
                         f"{reason}; check --host (or kfp_host, KF_PIPELINES_ENDPOINT)") from None
        try:
            answer = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise _error("KF103", f"{method} {url} did not answer with KFP JSON: the host is "
                         "probably not a KFP API endpoint (wrong host or path prefix)")
        return answer

    def _tls(self) -> ssl.SSLContext | None:
        if not self.endpoint.api.startswith("https:"):
            return None
        if self.endpoint.insecure:  # the kubeconfig asks for it
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        cadata = (base64.b64decode(self.endpoint.ca_data).decode()
                  if self.endpoint.ca_data else None)
        context = ssl.create_default_context(cafile=self.endpoint.ca_file, cadata=cadata)
        if self.endpoint.cert_file:
            context.load_cert_chain(self.endpoint.cert_file, self.endpoint.key_file)
        return context

    def _http_error(self, method: str, path: str, e: urllib.error.HTTPError) -> SubmitError:
        where = f"{method} {API}{path} at {self.endpoint.api}"
        if e.code in (401, 403):
            return _error("KF102", f"{where} was refused (HTTP {e.code} {e.reason}) with "
                          f"{self.endpoint.auth.describe()}: {_auth_hint(self.endpoint.auth)}")
        if e.code == 404:
            return _error("KF103", f"{where} answered 404 Not Found: the host is not a KFP API "
                          "endpoint or its path prefix is wrong (e.g. https://HOST/pipeline)")
        message = error_message(e, ("message", "error"))
        kind = "server error" if e.code >= 500 else "refused the request"
        return _error("KF104", f"KFP {kind} (HTTP {e.code}) on {where}: {message}")


def _auth_hint(auth: Auth) -> str:
    if auth.kind == "none":
        return ("pass --token (or set KF_PIPELINES_TOKEN), or run in a Kubeflow notebook with "
                "access to Kubeflow Pipelines (the access-ml-pipeline PodDefault)")
    if auth.kind == "dex":
        return (f"the session may have expired or {auth.source} may lack access to this "
                "namespace: check --namespace, or log in again")
    if auth.kind == "service-account":
        return ("the notebook's service account may lack access to this namespace: check the "
                "access-ml-pipeline PodDefault and --namespace")
    return "the token may have expired or lack access to this namespace: use a fresh one"


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/x-yaml\r\n\r\n").encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
