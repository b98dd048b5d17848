"""A real OCI registry on 127.0.0.1 for the step image tests, and a small base image in it.

The registry is Debian's ``docker-registry`` (distribution 2.8), optionally with htpasswd
(Basic) authentication; the base image is made with ``umoci`` and pushed with ``skopeo``, as a
user would make one without a container engine.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("docker-registry", "skopeo", "umoci")
#: A base image's module: its version, and certifi's one function (requests calls it).
STUB_MODULE = """BASE_VERSION = {version!r}


def where():
    return "/etc/ssl/certs/ca-certificates.crt"
"""


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass
class OciRegistry:
    """A running registry: ``host`` is ``127.0.0.1:PORT``."""

    host: str
    process: subprocess.Popen[bytes]
    root: Path
    user: str | None = None
    password: str | None = None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def skopeo_creds(self, flag: str = "--creds") -> list[str]:
        return [f"{flag}={self.user}:{self.password}"] if self.user else []


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for htpasswd, from the system's libcrypt (the registry accepts only bcrypt)."""
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    salt = "$2b$05$" + "".join(secrets.choice(alphabet) for _ in range(22))
    libcrypt = ctypes.CDLL("libcrypt.so.1")
    libcrypt.crypt.restype = ctypes.c_char_p
    hashed: bytes = libcrypt.crypt(password.encode(), salt.encode())
    return hashed.decode()


def start_registry(directory: Path, user: str | None = None,
                   password: str | None = None) -> OciRegistry:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["version: 0.1", "log: {level: error}",
             f"storage: {{filesystem: {{rootdirectory: {directory / 'data'}}}, "
             "delete: {enabled: true}}",
             f"http: {{addr: 127.0.0.1:{port}}}"]
    if user and password:
        hashed = bcrypt_hash(password)
        (directory / "htpasswd").write_text(f"{user}:{hashed}\n")
        lines.append(f"auth: {{htpasswd: {{realm: test, path: {directory / 'htpasswd'}}}}}")
    config = directory / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    with open(directory / "registry.log", "wb") as log:  # the child keeps its own copy
        process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT)
    registry = OciRegistry(f"127.0.0.1:{port}", process, directory, user, password)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{registry.host}/v2/", timeout=1).close()
            return registry
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return registry  # up, and asking for a login
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    registry.stop()
    raise RuntimeError("docker-registry did not start: "
                       + (directory / "registry.log").read_text(errors="replace"))


def push_base_image(registry: OciRegistry, work: Path, repository: str,
                    site_packages: dict[str, str], python: str = "3.11.7") -> str:
    """Build a tiny base image with umoci and push it; its reference ``HOST/REPO:1``.

    ``site_packages`` maps ``name-version`` to a module name: each becomes a ``.dist-info``
    (with METADATA) and a module under ``usr/local/lib/pythonX.Y/site-packages``.
    """
    layout = work / "oci"
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)  # noqa: E731
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:base")
    bundle = work / "bundle"
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:base", str(bundle))
    short = ".".join(python.split(".")[:2])
    site = bundle / "rootfs" / "usr" / "local" / "lib" / f"python{short}" / "site-packages"
    site.mkdir(parents=True)
    for dist, module in site_packages.items():
        info = site / f"{dist}.dist-info"
        info.mkdir()
        name, _, version = dist.partition("-")
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n")
        (site / f"{module}.py").write_text(STUB_MODULE.format(version=version))
    (bundle / "rootfs" / "etc").mkdir(exist_ok=True)
    (bundle / "rootfs" / "etc" / "base-marker").write_text("base\n")
    run("umoci", "repack", "--image", f"{layout}:base", str(bundle))
    run("umoci", "config", "--image", f"{layout}:base",
        "--config.env", f"PYTHON_VERSION={python}", "--config.env", "BASE_SETTING=kept",
        "--config.entrypoint", "/usr/local/bin/entry", "--config.cmd", "serve",
        "--config.workingdir", "/srv", "--architecture", _arch())
    reference = f"{registry.host}/{repository}:1"
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false",
                    *registry.skopeo_creds("--dest-creds"),
                    f"oci:{layout}:base", f"docker://{reference}"], check=True,
                   capture_output=True)
    return reference


def skopeo_inspect(registry: OciRegistry, reference: str, raw: bool = False,
                   config: bool = False) -> dict[str, object]:
    flags = ["--raw"] if raw else ["--config"] if config else []
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *registry.skopeo_creds(),
                           *flags, f"docker://{reference}"], check=True, capture_output=True,
                          text=True)
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def unpack(registry: OciRegistry, reference: str, work: Path) -> Path:
    """Copy the image into an OCI layout with skopeo and unpack it with umoci; the rootfs."""
    layout = work / "pulled"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false",
                    *registry.skopeo_creds("--src-creds"),
                    f"docker://{reference}", f"oci:{layout}:image"], check=True,
                   capture_output=True)
    bundle = work / "unpacked"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:image", str(bundle)],
                   check=True, capture_output=True)
    return bundle / "rootfs"


def _arch() -> str:
    from kale_py.images.registry import this_platform

    return this_platform()[1]


def docker_config(directory: Path, registry: OciRegistry) -> Path:
    """A ``config.json`` with the registry's login, as ``docker login`` writes it."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    os.chmod(path, 0o600)
    return path
