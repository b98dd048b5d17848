"""A Kubeflow session from Dex, with a username and password, as a browser logs in.

A multi-user Kubeflow puts every request through an authenticating proxy: oauth2-proxy in current
releases (session cookie ``oauth2_proxy_kubeflow``), oidc-authservice in older ones
(``authservice_session``). Without a session, a request is redirected to Dex; Dex shows the
login form of its connector (``/dex/auth/local/login``, or ``/dex/auth/local`` in older Dex),
redirects back to the proxy once the password is right, possibly through an approval page, and
the proxy sets its session cookie. :func:`dex_session` plays that flow with the standard
library and returns the cookies to send with every KFP API request.

The session is cached per endpoint and user in ``$XDG_CACHE_HOME/kale_py/sessions`` (default
``~/.cache``; the file is mode 0600) and reused until its cookie expires or the endpoint
refuses it. The password comes from ``$KF_PIPELINES_PASSWORD`` or a prompt, never a flag.
"""

from __future__ import annotations

import getpass
import hashlib
import http.client
import http.cookiejar
import json
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kale_py.diagnostics import Diagnostic, SubmitError

PASSWORD_ENV = "KF_PIPELINES_PASSWORD"
#: The proxies' session cookies: oauth2-proxy as Kubeflow configures it, its default, authservice.
SESSION_COOKIES = ("oauth2_proxy_kubeflow", "_oauth2_proxy", "authservice_session")
TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Session:
    """The ``Cookie`` header of a Kubeflow session and when it expires (None: unknown)."""

    cookie: str
    expires: float | None = None

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and self.expires <= (now or time.time()) + 60


def dex_session(host: str, username: str, *, tls: ssl.SSLContext | None = None,
                password: Callable[[str], str] | None = None,
                cache_dir: Path | None = None) -> Session:
    """A session for ``username`` at the KFP endpoint ``host`` (e.g. ``https://kf/pipeline``).

    A cached session is reused while it is valid; otherwise Dex is asked with the password.
    Raises :class:`SubmitError`: KF102 for wrong credentials, KF101 when unreachable.
    """
    path = _cache_file(host, username, cache_dir)
    cached = _load(path)
    if cached is not None and not cached.expired() and _accepted(host, cached, tls):
        return cached
    session = login(host, username, (password or ask_password)(username), tls=tls)
    _save(path, session)
    return session


def ask_password(username: str) -> str:
    """``$KF_PIPELINES_PASSWORD``, else a prompt on the terminal."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise _error("KF105", f"no password for {username}: set {PASSWORD_ENV} (there is no "
                     "terminal to ask on)")
    return getpass.getpass(f"Kubeflow password for {username}: ")


def login(host: str, username: str, password: str, *,
          tls: ssl.SSLContext | None = None) -> Session:
    """Log in through Dex as a browser does; the session cookies the proxy sets."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar),
                                         urllib.request.HTTPSHandler(context=tls))
    start = host.rstrip("/") + "/"
    landed = _open(opener, start, tolerant=True)
    if landed == start:
        raise _error("KF105", f"{host} did not ask for a login (no redirect to Dex): drop "
                     "--username, or pass the address of the Kubeflow gateway")
    if urllib.parse.urlsplit(landed).path.endswith("/auth"):  # Dex lists its connectors
        landed = _open(opener, _with_path(landed, lambda p: p + "/local"))
    form = {"login": username, "password": password}
    # Past the form, the proxy sends the browser back to where it started: the answer there
    # (the KFP UI; an error page, through a fake) does not matter, only the cookies do.
    after = _open(opener, landed, urllib.parse.urlencode(form).encode(), tolerant=True)
    if after == landed:  # Dex shows its form again: the password was not accepted
        raise _error("KF102", f"Dex refused the login of {username} at {_origin(landed)}: "
                     f"wrong username or password (set {PASSWORD_ENV} or type it again)")
    if urllib.parse.urlsplit(after).path.endswith("/approval"):
        _open(opener, after, b"approval=approve", tolerant=True)
    return _session_from(jar, host, username)


def _session_from(jar: http.cookiejar.CookieJar, host: str, username: str) -> Session:
    cookies = list(jar)
    sessions = [c for c in cookies if c.name in SESSION_COOKIES]
    if not sessions:
        raise _error("KF102", f"logged in to Dex as {username}, but {_origin(host)} set no "
                     f"Kubeflow session cookie ({', '.join(SESSION_COOKIES)})")
    expiries = [float(c.expires) for c in sessions if c.expires]
    cookie = "; ".join(f"{c.name}={c.value}" for c in cookies)
    return Session(cookie, min(expiries) if expiries else None)


def _open(opener: urllib.request.OpenerDirector, url: str, data: bytes | None = None,
          tolerant: bool = False) -> str:
    """GET (or POST ``data``), following redirects; the URL where it ended. ``tolerant``: an
    HTTP error other than 401/403 at the end of the redirects still says where it ended."""
    request = urllib.request.Request(url, data=data, headers={"Accept": "text/html"})
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            response.read()
            return str(response.geturl())
    except urllib.error.HTTPError as e:
        with e:
            if tolerant and e.code not in (401, 403):
                return str(e.geturl())
            if e.code in (401, 403):
                raise _error("KF102", f"the Kubeflow login at {_origin(url)} refused the "
                             f"request (HTTP {e.code})") from None
            raise _error("KF101", f"the Kubeflow login at {_origin(url)} failed: HTTP {e.code} "
                         f"on {urllib.parse.urlsplit(url).path}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise _error("KF101", f"cannot reach {_origin(url)} to log in: {reason}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _accepted(host: str, session: Session, tls: ssl.SSLContext | None) -> bool:
    """Whether the endpoint still takes the session (a JSON answer, not a login redirect)."""
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=tls))
    request = urllib.request.Request(f"{host.rstrip('/')}/apis/v2beta1/healthz",
                                     headers={"Cookie": session.cookie,
                                              "Accept": "application/json"})
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            json.loads(response.read() or b"{}")
            return True
    except urllib.error.HTTPError as e:
        e.close()
        return False
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return False


# --- the cache ---------------------------------------------------------------------------------

def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kale_py" / "sessions"


def _cache_file(host: str, username: str, cache_dir: Path | None) -> Path:
    key = hashlib.sha256(f"{host.rstrip('/')}\n{username}".encode()).hexdigest()[:24]
    return (cache_dir or cache_root()) / f"{key}.json"


def _load(path: Path) -> Session | None:
    try:
        data = json.loads(path.read_text())
        return Session(str(data["cookie"]), data.get("expires"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(path: Path, session: Session) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"cookie": session.cookie, "expires": session.expires}, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# --- small helpers -----------------------------------------------------------------------------

def _with_path(url: str, change: Callable[[str], str]) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=change(parts.path)))


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _error(code: str, message: str) -> SubmitError:
    return SubmitError(Diagnostic("error", code, re.sub(r"\s+", " ", message)))
