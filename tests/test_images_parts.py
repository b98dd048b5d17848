"""The step image's parts on their own: references, Docker credentials, the layer's errors,
and a registry error that Debian's registry cannot be made to answer (a local HTTP server
answering the distribution API's path with HTTP 500 stands in for a broken registry)."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kale_py.diagnostics import KalePyError
from kale_py.images.credentials import Credentials, find_credentials
from kale_py.images.distributions import Distribution
from kale_py.images.layer import build_layer
from kale_py.images.registry import Reference, Registry, parse_reference


def code_and_message(call: Any) -> tuple[str, str]:
    with pytest.raises(KalePyError) as caught:
        call()
    [d] = caught.value.diagnostics
    return d.code, d.message


@pytest.mark.parametrize(("text", "expected"), [
    ("python:3.11", Reference("registry-1.docker.io", "library/python", "3.11")),
    ("jupyter/scipy-notebook", Reference("registry-1.docker.io", "jupyter/scipy-notebook")),
    ("localhost:5000/team/steps", Reference("localhost:5000", "team/steps")),
    ("ghcr.io/org/img:v1@sha256:" + "a" * 64,
     Reference("ghcr.io", "org/img", "v1", "sha256:" + "a" * 64)),
])
def test_references_are_read_as_docker_reads_them(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_localhost_is_plain_http_and_others_https() -> None:
    assert Registry("127.0.0.1:5000").base_url == "http://127.0.0.1:5000"
    assert Registry("localhost").base_url == "http://localhost"
    assert Registry("ghcr.io").base_url == "https://ghcr.io"


def test_docker_config_logins() -> None:
    auth = base64.b64encode(b"bob:pw").decode()
    config = {"auths": {"https://index.docker.io/v1/": {"auth": auth},
                        "ghcr.io": {"username": "ann", "password": "x"},
                        "quay.io": {"identitytoken": "tok"}}}
    assert find_credentials("registry-1.docker.io", config) == Credentials("bob", "pw")
    assert find_credentials("ghcr.io", config) == Credentials("ann", "x")
    assert find_credentials("quay.io", config) == Credentials(identity_token="tok")
    assert find_credentials("example.com", config) is None
    secret = {"auths": {"example.com": {"auth": auth}}}
    assert find_credentials("example.com", config, secret) == Credentials("bob", "pw")


def test_broken_docker_logins_are_one_line_errors() -> None:
    code, message = code_and_message(lambda: find_credentials(
        "ghcr.io", {"auths": {"ghcr.io": {"auth": "not base64!"}}}))
    assert code == "IM102" and "auth for ghcr.io is not base64 of user:password" in message
    code, message = code_and_message(lambda: find_credentials(
        "ghcr.io", {"credHelpers": {"ghcr.io": "no-such-helper-xyz"}}))
    assert code == "IM102" and "docker-credential-no-such-helper-xyz, which is not on PATH" \
        in message


def test_a_recorded_file_that_is_gone_is_named(tmp_path: Path) -> None:
    dist = Distribution("pkg", "1.0", tmp_path, ("pkg/gone.py",))
    code, message = code_and_message(lambda: build_layer([dist], tmp_path))
    assert code == "IM001"
    assert message == (f"cannot read {tmp_path / 'pkg/gone.py'} for the step image: "
                       "No such file or directory; reinstall that distribution")


@pytest.fixture
def broken_registry() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"errors": [{"code": "UNKNOWN", "message": "storage backend down"}]}'
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_registry_error_answer_is_one_line(broken_registry: str) -> None:
    ref = parse_reference(f"{broken_registry}/team/base:1")
    code, message = code_and_message(lambda: Registry(ref.registry).manifest(ref))
    assert code == "IM104"
    assert message.startswith(f"the registry answered HTTP 500 to GET for {broken_registry}/"
                              "team/base: ")
    assert "storage backend down" in message


@pytest.fixture
def redirecting_registry() -> Iterator[tuple[str, bytes]]:
    """Blobs behind a login, served from storage that refuses a login (as S3 presigned URLs
    do): the distribution API's blob path answers 307 to the storage URL."""
    blob = b"layer bytes"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            if self.path.startswith("/v2/") and auth != "Basic " + base64.b64encode(
                    b"bob:pw").decode():
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == f"/v2/team/base/blobs/{digest}":
                self.send_response(307)
                self.send_header("Location", "/storage/blob?signature=x")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path.startswith("/storage/") and auth is None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob)
            else:
                self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", blob
    server.shutdown()
    server.server_close()


def test_the_login_is_not_sent_on_to_blob_storage(redirecting_registry: tuple[str, bytes]) -> None:
    host, blob = redirecting_registry
    registry = Registry(host, Credentials("bob", "pw"))
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert registry.blob(parse_reference(f"{host}/team/base"), digest) == blob
    assert registry.needs_auth
