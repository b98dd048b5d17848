"""A small client of the OCI distribution API: manifests and blobs, pulled and pushed.

Only what a step image needs: read a manifest (an index resolved to this platform), read a blob,
ask whether a blob exists (``HEAD``), mount a blob from another repository of the same registry,
upload a blob (one ``POST`` and one ``PUT``) and put a manifest. Authentication follows the
registry's ``WWW-Authenticate`` challenge: ``Bearer`` (a token from the realm, with Basic
credentials or an identity token) or ``Basic``. A registry on localhost is spoken to over plain
HTTP, as Docker allows; every other one over HTTPS.

Errors are one line each: IM101 (unreachable), IM102 (401/403), IM103 (404), IM104 (any other
error answer, or an answer that is not what the API defines).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import platform
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from ..diagnostics import KalePyError, error
from ..http_errors import one_line
from .credentials import DOCKER_HUB, Credentials

Json = dict[str, Any]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                   r"[a-z0-9]+)*)*$")
TIMEOUT = 60.0


@dataclass(frozen=True)
class Reference:
    """``registry/repository[:tag][@digest]``, with Docker's defaults filled in."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        return text + (f"@{self.digest}" if self.digest else "")

    @property
    def ref(self) -> str:
        """What goes in a manifest URL: the digest if known, else the tag."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> Reference:
        """The reference by digest alone (what compiled YAML uses)."""
        return replace(self, tag=None, digest=digest)


def parse_reference(text: str) -> Reference:
    """Parse an image reference as Docker does; an IM001 error when it is not one."""
    rest, _, digest = text.strip().partition("@")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    if ":" in path.rpartition("/")[2]:
        path, _, tag = path.rpartition(":")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _NAME.match(path) or (digest and not re.match(r"^sha256:[0-9a-f]{64}$", digest)):
        raise KalePyError(error("IM001", f"{text!r} is not an image reference: write "
                                "REGISTRY/REPOSITORY[:TAG], like localhost:5000/team/steps"))
    return Reference(registry, path, tag or None, digest or None)


def this_platform() -> tuple[str, str]:
    """``(os, architecture)`` as image indexes name them (``linux``, ``amd64``)."""
    machine = platform.machine().lower()
    return "linux", _ARCHES.get(machine, machine)


@dataclass
class Registry:
    """One registry, with the bearer tokens it handed out (per repository scope)."""

    host: str
    credentials: Credentials | None = None
    timeout: float = TIMEOUT
    _tokens: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def base_url(self) -> str:
        local = any(self.host == h or self.host.startswith(h + ":") for h in _LOCAL_HOSTS)
        return f"{'http' if local else 'https'}://{self.host}"

    @property
    def needs_auth(self) -> bool:
        """Whether the registry asked for credentials on any call so far."""
        return bool(self._tokens)

    # --- reading ------------------------------------------------------------------------------

    def manifest(self, ref: Reference) -> tuple[Json, str]:
        """The image manifest and its digest; an index is resolved to this machine's platform."""
        body, headers = self._call("GET", ref, f"manifests/{ref.ref}", {"Accept": _ACCEPT})
        document = _json(body, f"the manifest of {ref}")
        digest = headers.get("Docker-Content-Digest") or _sha256(body)
        if document.get("mediaType") in (OCI_INDEX, DOCKER_LIST) or "manifests" in document:
            chosen = _for_platform(document, ref)
            return self.manifest(replace(ref, digest=chosen))
        return document, digest

    def blob(self, ref: Reference, digest: str) -> bytes:
        body, _ = self._call("GET", ref, f"blobs/{digest}", {})
        if _sha256(body) != digest:
            raise _fail("IM104", f"blob {digest} of {ref.registry}/{ref.repository} does not "
                        "match its digest")
        return body

    def open_blob(self, ref: Reference, digest: str) -> IO[bytes]:
        """A stream of the blob, for large layers that are only listed."""
        response = self._open("GET", ref, f"blobs/{digest}", {})
        return response

    def has_blob(self, ref: Reference, digest: str) -> bool:
        try:
            self._call("HEAD", ref, f"blobs/{digest}", {})
        except KalePyError as e:
            if e.diagnostics[0].code == "IM103":
                return False
            raise
        return True

    # --- writing ------------------------------------------------------------------------------

    def mount_blob(self, ref: Reference, digest: str, source: str) -> bool:
        """Link a blob of repository ``source`` (same registry) into ``ref``; False if refused."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        _, headers, status = self._call_status("POST", ref, f"blobs/uploads/?{query}", {},
                                               b"", extra_scope=source)
        return status == 201

    def push_blob(self, ref: Reference, digest: str, data: bytes | Path) -> None:
        """Upload ``data`` (its digest already known; a file is streamed) in one request after
        the session starts."""
        _, started, _ = self._call_status("POST", ref, "blobs/uploads/", {}, b"")
        location = started.get("Location")
        if not location:
            raise _fail("IM104", f"{self.host} started an upload without a Location header")
        url = urllib.parse.urljoin(self.base_url + "/", location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, bytes):
            self._call("PUT", ref, url, headers, data)
            return
        headers["Content-Length"] = str(data.stat().st_size)
        with open(data, "rb") as f:
            self._call("PUT", ref, url, headers, f)

    def save_blob(self, ref: Reference, digest: str, path: Path) -> None:
        """Stream a blob into ``path``, checking its digest."""
        check = hashlib.sha256()
        with self.open_blob(ref, digest) as stream, open(path, "wb") as out:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                check.update(chunk)
                out.write(chunk)
        if "sha256:" + check.hexdigest() != digest:
            raise _fail("IM104", f"blob {digest} of {ref.registry}/{ref.repository} does not "
                        "match its digest")

    def push_manifest(self, ref: Reference, manifest: bytes, media_type: str) -> str:
        """Put the manifest under ``ref``'s tag (or its digest); its digest."""
        digest = _sha256(manifest)
        self._call("PUT", ref, f"manifests/{ref.tag or digest}", {"Content-Type": media_type},
                   manifest)
        return digest

    # --- HTTP ---------------------------------------------------------------------------------

    def _call(self, method: str, ref: Reference, path: str, headers: dict[str, str],
              data: bytes | IO[bytes] | None = None) -> tuple[bytes, http.client.HTTPMessage]:
        body, answer, _ = self._call_status(method, ref, path, headers, data)
        return body, answer

    def _call_status(self, method: str, ref: Reference, path: str, headers: dict[str, str],
                     data: bytes | IO[bytes] | None = None, extra_scope: str | None = None,
                     ) -> tuple[bytes, http.client.HTTPMessage, int]:
        with self._open(method, ref, path, headers, data, extra_scope) as response:
            return response.read(), response.headers, response.status

    def _open(self, method: str, ref: Reference, path: str, headers: dict[str, str],
              data: bytes | IO[bytes] | None = None, extra_scope: str | None = None,
              ) -> http.client.HTTPResponse:
        url = path if "://" in path else f"{self.base_url}/v2/{ref.repository}/{path}"
        scope = _scope(ref.repository, method, extra_scope)
        for attempt in (1, 2):
            if data is not None and not isinstance(data, bytes):
                data.seek(0)  # a file sent again after a login
            request = urllib.request.Request(url, data=data, method=method, headers=headers)
            for name, value in self._auth(scope).items():
                # not sent on to a redirect: blob storage (S3, a CDN) refuses a second login
                request.add_unredirected_header(name, value)
            try:
                response: http.client.HTTPResponse = urllib.request.urlopen(
                    request, timeout=self.timeout)
                return response
            except urllib.error.HTTPError as e:
                with e:
                    challenge = e.headers.get("WWW-Authenticate", "")
                    if e.code == 401 and attempt == 1 and challenge:
                        self._login(challenge, scope)
                        continue
                    raise self._http_error(e, method, ref) from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", None) or e
                raise _fail("IM101", f"cannot reach the registry {self.base_url}: "
                            f"{reason}") from None
        raise AssertionError("unreachable")

    def _auth(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope) or self._tokens.get("*")
        return {"Authorization": token} if token else {}

    def _login(self, challenge: str, scope: str) -> None:
        kind, _, params = challenge.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        creds = self.credentials
        if kind.lower() == "basic":
            if creds is None or not creds.username:
                raise _fail("IM102", f"the registry {self.host} needs a login: run "
                            f"`docker login {self.host}` (or add it to ~/.docker/config.json)")
            raw = f"{creds.username}:{creds.password}".encode()
            self._tokens["*"] = "Basic " + base64.b64encode(raw).decode()
            return
        realm = fields.get("realm")
        if kind.lower() != "bearer" or not realm:
            raise _fail("IM104", f"the registry {self.host} asks for an unknown login: "
                        f"{one_line(challenge)}")
        query = [("service", fields.get("service", ""))] + [("scope", s) for s in scope.split()]
        self._tokens[scope] = "Bearer " + self._token(realm, query)

    def _token(self, realm: str, query: list[tuple[str, str]]) -> str:
        creds, headers, data = self.credentials, {}, None
        if creds and creds.identity_token:
            data = urllib.parse.urlencode([*query, ("grant_type", "refresh_token"),
                                           ("refresh_token", creds.identity_token),
                                           ("client_id", "kale-py")]).encode()
        elif creds and creds.username:
            raw = f"{creds.username}:{creds.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        request = urllib.request.Request(realm if data else url, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = _json(response.read(), f"the token from {realm}")
        except urllib.error.HTTPError as e:
            with e:
                raise _fail("IM102", f"the registry {self.host} refused the login at {realm} "
                            f"(HTTP {e.code}): check `docker login {self.host}`") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise _fail("IM101", f"cannot reach the registry's token service {realm}: "
                        f"{reason}") from None
        token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise _fail("IM104", f"the token service {realm} answered without a token")
        return token

    def _http_error(self, e: urllib.error.HTTPError, method: str,
                    ref: Reference) -> KalePyError:
        target = f"{ref.registry}/{ref.repository}"
        if e.code in (401, 403):
            verb = "push to" if method in ("POST", "PUT") else "pull"
            return _fail("IM102", f"the registry refused to let "
                         f"{self._who()} {verb} {target} (HTTP {e.code}): run "
                         f"`docker login {self.host}` or check the account's rights")
        if e.code == 404:
            return _fail("IM103", f"{ref} not found in the registry (HTTP 404): check the "
                         "repository name and tag")
        try:
            detail = one_line(e.read().decode("utf-8", "replace"))
        except OSError:
            detail = str(e.reason)
        return _fail("IM104", f"the registry answered HTTP {e.code} to {method} for {target}: "
                     f"{detail}")

    def _who(self) -> str:
        creds = self.credentials
        return f"user {creds.username!r}" if creds and creds.username else "anonymous"


def _scope(repository: str, method: str, extra: str | None) -> str:
    actions = "pull" if method in ("GET", "HEAD") else "pull,push"
    scope = f"repository:{repository}:{actions}"
    return scope + (f" repository:{extra}:pull" if extra else "")


def _for_platform(index: Json, ref: Reference) -> str:
    wanted_os, wanted_arch = this_platform()
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {}
        if plat.get("os") == wanted_os and plat.get("architecture") == wanted_arch:
            return str(entry["digest"])
    raise _fail("IM103", f"{ref} has no image for {wanted_os}/{wanted_arch}")


def _json(body: bytes, what: str) -> Json:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise _fail("IM104", f"{what} is not a JSON object")
    return document


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _fail(code: str, message: str) -> KalePyError:
    return KalePyError(error(code, message))
