"""What a base image already holds: its Python version and its installed distributions.

Read from the registry, never by running the image:

* an image that kale_py built carries the labels :data:`LABEL_PYTHON` and
  :data:`LABEL_DISTRIBUTIONS` (every distribution of the whole image), so using a step image as a
  base costs one config read;
* any other image is listed layer by layer: each ``.../lib/pythonX.Y/(site|dist)-packages/
  NAME-VERSION.dist-info`` (or ``.egg-info``) counts, whiteouts remove what lower layers had.
  Only file names are read, streaming; the answer is kept per manifest digest in
  ``$XDG_CACHE_HOME/kale_py/base-images/`` so a base is listed once.

The Python version is the config's ``PYTHON_VERSION`` (official ``python`` images), else the one
``lib/pythonX.Y`` directory with distributions, else unknown.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..diagnostics import KalePyError, error
from .distributions import normalise
from .registry import Reference, Registry

Json = dict[str, Any]

LABEL_PYTHON = "io.kale-py.python"
LABEL_PLATFORM = "io.kale-py.platform"
LABEL_DISTRIBUTIONS = "io.kale-py.distributions"
_DIST_INFO = re.compile(
    r"^(?:.*/)?lib/python(3\.\d+)/(?:site|dist)-packages/([^/]+)\.(?:dist|egg)-info(?:/|$)")
_EGG_NAME = re.compile(r"^(.+?)-(\d[^-]*?)(?:-py\d.*)?$")


@dataclass(frozen=True)
class BaseImage:
    """A base image as the step image extends it."""

    reference: Reference  # pinned by digest
    manifest: Json
    config: Json
    python: str | None  # "3.11"
    distributions: Mapping[str, str]  # normalised name -> version
    source: str  # "label", "layers" or "cache": how the distributions were found


def inspect_base(registry: Registry, reference: Reference, cache_dir: Path | None = None,
                 python: str | None = None) -> BaseImage:
    """Manifest, config, Python and distributions of ``reference``.

    ``python`` (``"3.11"``) chooses among several interpreters' site-packages.
    """
    manifest, digest = registry.manifest(reference)
    config = _config(registry, reference, manifest)
    pinned = reference.pinned(digest)
    labels = (config.get("config") or {}).get("Labels") or {}
    if LABEL_DISTRIBUTIONS in labels:
        dists = json.loads(labels[LABEL_DISTRIBUTIONS])
        return BaseImage(pinned, manifest, config, labels.get(LABEL_PYTHON), dists, "label")
    env_python = _env_python(config)
    directory = (cache_dir or default_cache_dir()) / "base-images"
    cache = directory / f"{digest.replace(':', '-')}.json"
    source = "cache"
    try:
        per_python = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        per_python, source = _list_layers(registry, pinned, manifest), "layers"
        write_cache(cache, per_python)
    chosen = env_python or (python if python in per_python else None)
    if chosen is None and len(per_python) == 1:
        chosen = next(iter(per_python))
    return BaseImage(pinned, manifest, config, chosen, per_python.get(chosen or "", {}), source)


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "kale_py"


def _config(registry: Registry, reference: Reference, manifest: Json) -> Json:
    descriptor = manifest.get("config") or {}
    digest = descriptor.get("digest")
    if not isinstance(digest, str):
        raise KalePyError(error("IM104", f"the manifest of {reference} names no config"))
    document = json.loads(registry.blob(reference, digest))
    if not isinstance(document, dict):
        raise KalePyError(error("IM104", f"the config of {reference} is not a JSON object"))
    return document


def _env_python(config: Json) -> str | None:
    for item in (config.get("config") or {}).get("Env") or []:
        name, _, value = str(item).partition("=")
        match = re.match(r"^(3\.\d+)", value)
        if name == "PYTHON_VERSION" and match:
            return match.group(1)
    return None


def _list_layers(registry: Registry, reference: Reference, manifest: Json
                 ) -> dict[str, dict[str, str]]:
    """``{python: {name: version}}`` over the layers, whiteouts applied."""
    present: dict[str, tuple[str, str, str]] = {}  # dist-info dir -> (python, name, version)
    for layer in manifest.get("layers") or []:
        media = str(layer.get("mediaType", ""))
        if "zstd" in media:
            raise KalePyError(error("IM104", f"layer {layer.get('digest')} of {reference} is "
                                    "zstd-compressed, which cannot be listed here"))
        # "r|*": a stream, gzip or plain as its first bytes say
        with registry.open_blob(reference, str(layer["digest"])) as stream, \
                tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                _apply(present, member.name.removeprefix("./"))
    out: dict[str, dict[str, str]] = {}
    for python, name, version in present.values():
        out.setdefault(python, {})[normalise(name)] = version
    return out


def _apply(present: dict[str, tuple[str, str, str]], path: str) -> None:
    directory, _, leaf = path.rstrip("/").rpartition("/")
    if leaf == ".wh..wh..opq":
        for key in [k for k in present if k.startswith(directory + "/")]:
            del present[key]
        return
    if leaf.startswith(".wh."):
        gone = f"{directory}/{leaf[4:]}"
        for key in [k for k in present if k == gone or k.startswith(gone + "/")]:
            del present[key]
        return
    match = _DIST_INFO.match(path)
    if match is None:
        return
    key = path[:match.end()].rstrip("/")
    if key in present:
        return
    stem = match.group(2)
    named = _EGG_NAME.match(stem)
    if named:
        present[key] = (match.group(1), named.group(1), named.group(2))


def write_cache(path: Path, value: object) -> None:
    """Write a JSON cache entry atomically; a cache that cannot be written is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(value, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs a second listing
