"""A fake Kubeflow gateway on 127.0.0.1: the authenticating proxy, Dex, and KFP behind them.

No Kubeflow can run on this machine, so this server plays the HTTP side of a multi-user
Kubeflow's login, with the paths, redirects, forms and cookies of the manifests:

* ``flavor="oauth2-proxy"`` (Kubeflow 1.9+): a request without the ``oauth2_proxy_kubeflow``
  cookie is redirected to ``/oauth2/start?rd=...``, which sets the CSRF cookie
  ``oauth2_proxy_kubeflow_csrf`` and redirects to Dex's ``/dex/auth?client_id=...&state=...``;
  Dex (one ``local`` password connector) redirects to ``/dex/auth/local?...`` and then to its
  form at ``/dex/auth/local/login?back=&state=REQ``; a right ``login``/``password`` POST is
  answered ``303 /dex/approval?req=REQ``, which redirects to ``/oauth2/callback?code&state``;
  the callback checks the CSRF cookie, sets the session cookie (with ``Expires``) and redirects
  to ``rd``. A wrong password is answered 200 with the form again, as Dex does.
* ``flavor="authservice"`` (older Kubeflow, oidc-authservice and older Dex): the redirect goes
  straight to ``/dex/auth?...&redirect_uri=/login/oidc``, the form is at
  ``/dex/auth/local?req=REQ``, and ``/login/oidc`` sets ``authservice_session``.

Requests with a valid session cookie under ``/pipeline`` are forwarded to the fake KFP backend
(fake_kfp.py) without the prefix. Every request is recorded (method, path, cookies).
"""

from __future__ import annotations

import http.client
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from email.utils import formatdate
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOGIN_FORM = """<!DOCTYPE html><html><body><h2>Log in to Your Account</h2>
{error}<form method="post" action="{action}">
<input type="text" id="login" name="login" placeholder="email address">
<input type="password" id="password" name="password">
<button type="submit" id="submit-login">Login</button></form></body></html>"""


@dataclass
class FakeDex:
    """``users`` maps login to password; ``kfp_url`` is the backend behind ``/pipeline``."""

    kfp_url: str
    users: dict[str, str] = field(default_factory=lambda: {"user@example.com": "12341234"})
    flavor: str = "oauth2-proxy"
    session_seconds: int = 3600
    url: str = ""
    logins: int = 0  # successful password logins
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, cookies
    sessions: set[str] = field(default_factory=set)
    _pending: dict[str, str] = field(default_factory=dict)  # Dex request id -> proxy state
    _codes: dict[str, str] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    @property
    def cookie_name(self) -> str:
        return "oauth2_proxy_kubeflow" if self.flavor == "oauth2-proxy" else "authservice_session"

    def start(self) -> FakeDex:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def expire_sessions(self) -> None:
        self.sessions.clear()

    # --- routing -----------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(h.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        cookies = {k: m.value for k, m in SimpleCookie(h.headers.get("Cookie", "")).items()}
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length)
        self.requests.append((h.command, parts.path, h.headers.get("Cookie", "")))
        path = parts.path
        if path.startswith("/pipeline"):
            if cookies.get(self.cookie_name) in self.sessions:
                return self._forward(h, h.path.removeprefix("/pipeline"), body)
            return self._redirect(h, self._login_start(h.path))
        if path == "/oauth2/start":
            csrf = secrets.token_hex(8)
            state = f"{csrf}:{query.get('rd', '/')}"
            return self._redirect(h, self._dex_auth(state, "/oauth2/callback"),
                                  [f"oauth2_proxy_kubeflow_csrf={csrf}; Path=/; HttpOnly"])
        if path == "/dex/auth":
            return self._redirect(h, "/dex/auth/local?" + parts.query)
        if path == "/dex/auth/local" and self.flavor == "oauth2-proxy":
            req = self._new_request(query["state"])
            return self._redirect(h, f"/dex/auth/local/login?back=&state={req}")
        if path == "/dex/auth/local" and "req" not in query:
            req = self._new_request(query["state"])
            return self._redirect(h, f"/dex/auth/local?req={req}")
        if path in ("/dex/auth/local/login", "/dex/auth/local"):
            req = query.get("state") or query.get("req") or ""
            return self._login_form(h, req, body, f"{path}?{parts.query}")
        if path == "/dex/approval":
            req = query.get("req", "")
            code = secrets.token_hex(8)
            self._codes[code] = self._pending.pop(req)
            callback = "/oauth2/callback" if self.flavor == "oauth2-proxy" else "/login/oidc"
            state = urllib.parse.quote(self._codes[code], safe="")
            return self._redirect(h, f"{callback}?code={code}&state={state}", status=303)
        if path in ("/oauth2/callback", "/login/oidc"):
            return self._callback(h, query, cookies)
        return self._send(h, 404, "text/plain", b"404 page not found")

    def _login_start(self, original: str) -> str:
        if self.flavor == "oauth2-proxy":
            return "/oauth2/start?rd=" + urllib.parse.quote(original, safe="")
        return self._dex_auth(f"authservice:{original}", "/login/oidc")

    def _dex_auth(self, state: str, redirect_uri: str) -> str:
        query = urllib.parse.urlencode({
            "client_id": "kubeflow-oidc-authservice", "redirect_uri": redirect_uri,
            "response_type": "code", "scope": "openid profile email groups", "state": state})
        return f"/dex/auth?{query}"

    def _new_request(self, state: str) -> str:
        req = secrets.token_hex(6)
        self._pending[req] = state
        return req

    def _login_form(self, h: BaseHTTPRequestHandler, req: str, body: bytes, action: str) -> None:
        if req not in self._pending:
            return self._send(h, 400, "text/plain", b"Invalid request")
        if h.command == "POST":
            form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
            if self.users.get(form.get("login", "")) == form.get("password"):
                self.logins += 1
                return self._redirect(h, f"/dex/approval?req={req}", status=303)
            page = LOGIN_FORM.format(error="<div>Invalid Email Address and password</div>",
                                     action=action)
            return self._send(h, 200, "text/html", page.encode())
        return self._send(h, 200, "text/html", LOGIN_FORM.format(error="", action=action).encode())

    def _callback(self, h: BaseHTTPRequestHandler, query: dict[str, str],
                  cookies: dict[str, str]) -> None:
        state = self._codes.pop(query.get("code", ""), None)
        if state is None or state != query.get("state"):
            return self._send(h, 403, "text/plain", b"invalid code or state")
        csrf, _, original = state.partition(":")
        if self.flavor == "oauth2-proxy" and cookies.get("oauth2_proxy_kubeflow_csrf") != csrf:
            return self._send(h, 403, "text/plain", b"CSRF cookie mismatch")
        session = secrets.token_urlsafe(16)
        self.sessions.add(session)
        expires = formatdate(time.time() + self.session_seconds, usegmt=True)
        self._redirect(h, original or "/", [
            f"{self.cookie_name}={session}; Path=/; Expires={expires}; HttpOnly; SameSite=Lax"])

    # --- answers -----------------------------------------------------------------------------

    def _forward(self, h: BaseHTTPRequestHandler, path: str, body: bytes) -> None:
        target = urllib.parse.urlsplit(self.kfp_url)
        connection = http.client.HTTPConnection(target.hostname or "", target.port, timeout=10)
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("content-type", "accept")}
        connection.request(h.command, path, body=body or None, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        connection.close()
        self._send(h, answer.status, answer.getheader("Content-Type") or "", data)

    def _redirect(self, h: BaseHTTPRequestHandler, location: str,
                  cookies: list[str] | None = None, status: int = 302) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        for cookie in cookies or []:
            h.send_header("Set-Cookie", cookie)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _send(self, h: BaseHTTPRequestHandler, status: int, content_type: str,
              data: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
