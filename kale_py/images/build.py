"""A step image: the base image plus one layer of the distributions the steps import.

:func:`build_step_image` reads the base image's manifest and config from its registry, finds
what it lacks (:mod:`.base`, :mod:`.distributions`), builds the layer (:mod:`.layer`), writes the
new config (the base's entrypoint, command, working directory and environment kept;
``PYTHONPATH`` starting at the layer's site-packages; the Python version and platform recorded
as labels and as ``$KALE_PY_PYTHON``) and pushes what the target repository does not have yet:
base layers are mounted from the base's repository on the same registry (copied otherwise), and
a blob that is already there (``HEAD``) is not sent again. The result is referenced by digest.
"""

from __future__ import annotations

import json
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostic, KalePyError, error, warning
from .base import (
    LABEL_DISTRIBUTIONS,
    LABEL_PLATFORM,
    LABEL_PYTHON,
    BaseImage,
    default_cache_dir,
    inspect_base,
)
from .credentials import Credentials, docker_config_path, find_credentials, read_docker_config
from .distributions import Distribution, closure, not_in_base
from .layer import SITE_DIR, Layer, build_layer, cached_layer, fingerprint, remember_layer
from .registry import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Reference,
    Registry,
    parse_reference,
)

Json = dict[str, Any]

PYTHON_ENV = "KALE_PY_PYTHON"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CREATED = "2000-01-01T00:00:00Z"


@dataclass(frozen=True)
class StepImage:
    """A built (and pushed) step image."""

    reference: str  # registry/repository@sha256:...
    tag: str
    base: str  # the base image, by digest
    python: str
    platform: str
    distributions: tuple[str, ...]  # name==version, the layer's
    layer_digest: str
    layer_size: int
    layer_files: int
    pushed: tuple[str, ...]  # digests of the blobs sent; empty when nothing changed
    private: bool  # the registry asked for credentials
    seconds: float
    diagnostics: tuple[Diagnostic, ...] = ()


def python_version() -> str:
    return "{}.{}".format(*sys.version_info[:2])


def build_step_image(modules: Iterable[str], target: str, base: str, *,
                     docker_config: Mapping[str, Any] | None = None,
                     pull_secret: Mapping[str, Any] | None = None,
                     cache_dir: Path | None = None) -> StepImage:
    """Build the step image for ``modules`` on ``base`` and push it to ``target``.

    Raises :class:`KalePyError` (IM0xx/IM1xx, one line) when it cannot: the registry is left with
    at most blobs that nothing references yet, never a half-written manifest.
    """
    started = time.perf_counter()
    config = read_docker_config(docker_config_path()) if docker_config is None else docker_config
    target_ref, base_ref = parse_reference(target), parse_reference(base)
    if target_ref.digest:
        raise KalePyError(error("IM001", f"the step image target {target} names a digest: "
                                "give REGISTRY/REPOSITORY[:TAG]"))
    base_registry = Registry(base_ref.registry, _creds(base_ref, config, pull_secret))
    registry = (base_registry if base_ref.registry == target_ref.registry
                else Registry(target_ref.registry, _creds(target_ref, config, pull_secret)))
    found: list[Diagnostic] = []
    base_image = inspect_base(base_registry, base_ref, cache_dir, python_version())
    found += _compatibility(base_image)
    needed = closure(modules)
    if needed.missing_modules:
        found.append(warning("IM201", "the steps import " + ", ".join(needed.missing_modules)
                             + ", which no distribution installed here provides: the base "
                             "image must have them"))
    extra = not_in_base(needed.distributions, base_image.distributions)
    with tempfile.TemporaryDirectory(prefix="kale-py-image-") as scratch:
        return _assemble(registry, base_registry, target_ref, base_image, extra, found,
                         cache_dir or default_cache_dir(), Path(scratch), started)


def _assemble(registry: Registry, base_registry: Registry, target_ref: Reference,
              base_image: BaseImage, extra: tuple[Distribution, ...], found: list[Diagnostic],
              cache_dir: Path, scratch: Path, started: float) -> StepImage:
    """The layer, config and manifest; pushed blobs first, the manifest last."""
    editable = [d.name for d in extra if d.editable]
    if editable:
        found.append(warning("IM204", ", ".join(editable) + " is installed in editable mode "
                             "(pip install -e): its sources are not in the layer, only a path "
                             "to them on this machine; install it normally for the step image"))
    layer = _layer(extra, cache_dir, registry, target_ref, scratch)
    config_blob = _config(base_image, layer, {d.name: d.version for d in extra})
    manifest, media_type = _manifest(base_image, layer, config_blob)
    pushed = _push_blobs(registry, base_registry, target_ref, base_image, layer, config_blob,
                         scratch)
    tag = target_ref.tag or f"steps-{_sha(manifest)[7:19]}"
    digest = _push_manifest(registry, target_ref, tag, manifest, media_type)
    return StepImage(
        reference=str(target_ref.pinned(digest)), tag=tag, base=str(base_image.reference),
        python=python_version(), platform=sysconfig.get_platform(),
        distributions=tuple(d.pin for d in extra), layer_digest=layer.digest,
        layer_size=layer.size, layer_files=layer.files, pushed=tuple(pushed),
        private=registry.needs_auth or base_registry.needs_auth,
        seconds=time.perf_counter() - started, diagnostics=tuple(found))


def _layer(extra: tuple[Distribution, ...], cache_dir: Path, registry: Registry,
           target: Reference, scratch: Path) -> Layer:
    """The layer, or only its digests when these same files were packed before and the target
    repository has the blob: an unchanged environment is not packed again."""
    key = fingerprint(extra)
    known = cached_layer(cache_dir, key)
    if known is not None and registry.has_blob(target, known.digest):
        return known
    layer = build_layer(extra, scratch)
    remember_layer(cache_dir, key, layer)
    return layer


def _creds(ref: Reference, config: Mapping[str, Any],
           pull_secret: Mapping[str, Any] | None) -> Credentials | None:
    return find_credentials(ref.registry, config, pull_secret)


def _compatibility(base: BaseImage) -> list[Diagnostic]:
    ours, found = python_version(), []
    if base.python is not None and base.python != ours:
        found.append(warning("IM202", f"the base image {base.reference} has Python "
                             f"{base.python} and this environment Python {ours}: the steps "
                             "would stop at start; compile with the base image's Python"))
    arch = base.config.get("architecture")
    from .registry import this_platform

    if isinstance(arch, str) and arch != this_platform()[1]:
        found.append(warning("IM202", f"the base image {base.reference} is for {arch} and this "
                             f"machine is {this_platform()[1]}: compiled extensions in the "
                             "layer would not load"))
    return found


def _config(base: BaseImage, layer: Layer, added: Mapping[str, str]) -> bytes:
    config = json.loads(json.dumps(base.config))
    inner = config.setdefault("config", {})
    env = [e for e in inner.get("Env") or [] if not e.startswith(("PYTHONPATH=", PYTHON_ENV))]
    old_path = next((e[11:] for e in inner.get("Env") or [] if e.startswith("PYTHONPATH=")), "")
    site = f"/{SITE_DIR}"
    env += [f"PYTHONPATH={site}:{old_path}" if old_path else f"PYTHONPATH={site}",
            f"{PYTHON_ENV}={python_version()}"]
    inner["Env"] = env
    everything = {**base.distributions, **added}
    inner["Labels"] = {**(inner.get("Labels") or {}), LABEL_PYTHON: python_version(),
                       LABEL_PLATFORM: sysconfig.get_platform(),
                       LABEL_DISTRIBUTIONS: json.dumps(everything, sort_keys=True)}
    config["rootfs"] = {"type": "layers",
                        "diff_ids": [*(config.get("rootfs") or {}).get("diff_ids", []),
                                     layer.diff_id]}
    config["history"] = [*(config.get("history") or []),
                         {"created": CREATED, "created_by": "kale_py step image: "
                          + " ".join(f"{k}=={v}" for k, v in sorted(added.items()))}]
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _manifest(base: BaseImage, layer: Layer, config: bytes) -> tuple[bytes, str]:
    docker = base.manifest.get("mediaType") == DOCKER_MANIFEST
    media = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media,
        "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                   "digest": _sha(config), "size": len(config)},
        "layers": [*base.manifest.get("layers", []),
                   {"mediaType": DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP,
                    "digest": layer.digest, "size": layer.size}],
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(), media


def _push_blobs(registry: Registry, base_registry: Registry, target: Reference,
                base: BaseImage, layer: Layer, config: bytes, scratch: Path) -> list[str]:
    pushed = []
    same_registry = base_registry is registry
    for descriptor in base.manifest.get("layers", []):
        digest = str(descriptor["digest"])
        if registry.has_blob(target, digest):
            continue
        if same_registry and registry.mount_blob(target, digest, base.reference.repository):
            continue
        copy = scratch / "base-layer"
        base_registry.save_blob(base.reference, digest, copy)  # another registry: copied
        registry.push_blob(target, digest, copy)
        copy.unlink()
        pushed.append(digest)
    blobs: tuple[tuple[str, bytes | Path | None], ...] = (
        (layer.digest, layer.path), (_sha(config), config))
    for digest, data in blobs:
        if not registry.has_blob(target, digest):
            if data is None:  # the cached layer's blob vanished since it was checked
                raise KalePyError(error("IM104", f"{target.registry}/{target.repository} lost "
                                        f"blob {digest} while the image was pushed: try again"))
            registry.push_blob(target, digest, data)
            pushed.append(digest)
    return pushed


def _push_manifest(registry: Registry, target: Reference, tag: str, manifest: bytes,
                   media_type: str) -> str:
    digest = _sha(manifest)
    tagged = Reference(target.registry, target.repository, tag)
    try:
        _, current = registry.manifest(tagged)
    except KalePyError as e:
        if e.diagnostics[0].code != "IM103":
            raise
        current = None
    if current != digest:
        registry.push_manifest(tagged, manifest, media_type)
    return digest


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()
