"""Which installed distributions a step image needs: the steps' imports, closed over requirements.

The top-level modules the steps import are mapped to the distributions that provide them
(``importlib.metadata.packages_distributions``); each distribution's requirements
(``Requires-Dist``, markers evaluated for this interpreter, extras only as requested) are
followed transitively. Every file comes from the distribution's ``RECORD``: the exact files that
the installer put here, so the image holds what the notebook ran with, without pip or a network.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from ..diagnostics import KalePyError, error

#: Modules that never go into an image: the standard library's, and the runtime's own.
_SKIPPED_MODULES = frozenset({"kale_py", "__future__"})


@dataclass(frozen=True)
class Distribution:
    """One installed distribution and the files of it that live in site-packages."""

    name: str  # normalised (PEP 503)
    version: str
    root: Path  # the site-packages directory it is installed in
    files: tuple[str, ...]  # POSIX paths relative to ``root``, sorted
    editable: bool = False  # installed with ``pip install -e``: its sources live elsewhere

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Closure:
    """The distributions the steps need, and the imported modules no distribution provides."""

    distributions: tuple[Distribution, ...]
    missing_modules: tuple[str, ...]


def normalise(name: str) -> str:
    """PEP 503 name normalisation (``Scikit_Learn`` -> ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(modules: Iterable[str], provided: Mapping[str, list[str]] | None = None) -> Closure:
    """The distributions providing ``modules`` and everything they require, installed here."""
    providers = metadata.packages_distributions() if provided is None else provided
    wanted: list[tuple[str, frozenset[str]]] = []
    missing = []
    for module in sorted(set(modules)):
        if module in sys.stdlib_module_names or module in _SKIPPED_MODULES:
            continue
        names = providers.get(module)
        if not names:
            missing.append(module)
        wanted.extend((normalise(n), frozenset()) for n in names or ())
    found: dict[str, Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while wanted:
        name, extras = wanted.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement not installed here: the step cannot use it either
        if name not in found:
            found[name] = _describe(dist)
        wanted.extend(_requirements(dist, extras))
    return Closure(tuple(found[n] for n in sorted(found)), tuple(missing))


def _requirements(
    dist: metadata.Distribution, extras: frozenset[str]
) -> list[tuple[str, frozenset[str]]]:
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        raise KalePyError(error("IM001", "step images need the packaging library: "
                                "pip install 'kale_py[images]'")) from None

    out = []
    for text in dist.requires or ():
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        marker = requirement.marker
        contexts = [{"extra": e} for e in sorted(extras)] or [{"extra": ""}]
        if marker is None or any(marker.evaluate(c) for c in contexts):
            out.append((normalise(requirement.name), frozenset(requirement.extras)))
    return out


def _describe(dist: metadata.Distribution) -> Distribution:
    root = Path(str(dist.locate_file(""))).resolve()
    files = []
    for entry in dist.files or ():
        path = PurePosixPath(str(entry).replace("\\", "/"))
        if ".." in path.parts or path.is_absolute() or "__pycache__" in path.parts:
            continue  # scripts and data outside site-packages; byte code is rebuilt on import
        files.append(str(path))
    direct_url = dist.read_text("direct_url.json") or "{}"
    try:
        editable = bool(json.loads(direct_url).get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        editable = False
    return Distribution(
        name=normalise(dist.metadata["Name"]),
        version=dist.version,
        root=root,
        files=tuple(sorted(set(files))),
        editable=editable,
    )


def not_in_base(
    needed: Iterable[Distribution], base: Mapping[str, str]
) -> tuple[Distribution, ...]:
    """The distributions the base image (``{name: version}``) lacks or has at another version."""
    return tuple(d for d in needed if base.get(d.name) != d.version)
