"""Registry credentials as users already have them: Docker's config and Kubernetes pull secrets.

Looked up in this order for a registry host:

1. ``credHelpers[host]`` in ``$DOCKER_CONFIG/config.json`` (default ``~/.docker``): the program
   ``docker-credential-NAME get`` is given the host on stdin and answers
   ``{"Username": ..., "Secret": ...}`` (a ``<token>`` user name means an identity token);
2. ``auths[host]``: ``auth`` (base64 ``user:password``), or ``username``/``password``, or
   ``identitytoken``; keys may be written as URLs (``https://index.docker.io/v1/``);
3. ``credsStore``: the default helper, as in 1;
4. a Kubernetes pull secret's ``.dockerconfigjson`` (the same ``auths`` shape), when given.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics import KalePyError, error

DOCKER_HUB = "registry-1.docker.io"
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", DOCKER_HUB)


@dataclass(frozen=True)
class Credentials:
    """A user name and password (Basic), or an identity token for the token endpoint."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    directory = env.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(directory) / "config.json"


def read_docker_config(path: Path) -> dict[str, Any]:
    """The config as JSON; ``{}`` when there is none. A broken file is an IM102 error."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise KalePyError(error("IM102", f"cannot read the Docker config {path}: {e}")) from None
    return config if isinstance(config, dict) else {}


def find_credentials(host: str, config: Mapping[str, Any],
                     pull_secret: Mapping[str, Any] | None = None) -> Credentials | None:
    """The credentials for ``host`` (a registry host[:port]), or ``None`` for anonymous."""
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key in _keys(host):
            if isinstance(helpers.get(key), str):
                return _from_helper(helpers[key], key)
    found = _from_auths(host, config.get("auths"))
    if found is not None:
        return found
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = _from_helper(store, _keys(host)[0], missing_ok=True)
        if found is not None:
            return found
    if pull_secret is not None:
        return _from_auths(host, pull_secret.get("auths"))
    return None


def _keys(host: str) -> tuple[str, ...]:
    if host == DOCKER_HUB:
        return _HUB_KEYS
    return (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/",
            f"https://{host}/v2/")


def _from_auths(host: str, auths: object) -> Credentials | None:
    if not isinstance(auths, dict):
        return None
    for key in _keys(host):
        entry = auths.get(key)
        if isinstance(entry, dict):
            return _from_entry(host, entry)
    return None


def _from_entry(host: str, entry: Mapping[str, Any]) -> Credentials | None:
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials(identity_token=token)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise KalePyError(error("IM102", f"the Docker config's auth for {host} is not "
                                    "base64 of user:password: log in again"))
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret)
    return None


def _from_helper(helper: str, server: str, missing_ok: bool = False) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run([program, "get"], input=server, capture_output=True, text=True,
                              timeout=30, check=False)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise KalePyError(error("IM102", f"the Docker config names the credential helper "
                                f"{program}, which is not on PATH")) from None
    except subprocess.TimeoutExpired:
        raise KalePyError(error("IM102", f"{program} get did not answer in 30 s")) from None
    if done.returncode != 0:
        if "credentials not found" in (done.stdout + done.stderr).lower():
            return None
        message = " ".join((done.stderr or done.stdout).split())[:200]
        raise KalePyError(error("IM102", f"{program} get failed for {server}: {message}"))
    try:
        answer = json.loads(done.stdout)
        user, secret = str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        raise KalePyError(error("IM102", f"{program} get did not answer with "
                                "Username and Secret")) from None
    if user == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(user, secret)
