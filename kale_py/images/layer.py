"""One reproducible image layer (a gzipped tar) holding the step image's distributions.

The same files give the same bytes: entries sorted, every mtime fixed, owner root, modes
normalised (0644, 0755 for executables and directories), no user or group names, GNU long-name
headers for long paths, and the gzip header without a name or a time. So an unchanged environment gives
an unchanged layer digest, and the registry already has the blob.

Files go under :data:`SITE_DIR` in the image; the image's ``PYTHONPATH`` starts there, so the
layer's distributions win over the base image's other versions of them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..diagnostics import KalePyError, error
from .distributions import Distribution

SITE_DIR = "opt/kale-py/site-packages"
#: 2000-01-01T00:00:00Z: a fixed time for every entry (0 upsets some unpackers).
FIXED_MTIME = 946684800
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Layer:
    """A built layer: its gzip bytes, their digest and the digest of the uncompressed tar."""

    data: bytes
    digest: str  # sha256:... of ``data`` (the blob)
    diff_id: str  # sha256:... of the tar (the image config's rootfs)
    files: int

    @property
    def size(self) -> int:
        return len(self.data)


def build_layer(distributions: Iterable[Distribution]) -> Layer:
    """The layer holding every file of ``distributions`` under :data:`SITE_DIR`.

    Raises :class:`KalePyError` (IM001) when a file the installer recorded is missing.
    """
    entries: dict[str, Path | None] = {}
    for dist in distributions:
        for name in dist.files:
            target = PurePosixPath(SITE_DIR, name)
            entries[str(target)] = dist.root / name
            for parent in target.parents:
                if str(parent) != ".":
                    entries.setdefault(str(parent), None)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(entries):
            _add(tar, name, entries[name])
    tar_bytes = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, compresslevel=GZIP_LEVEL,
                       mtime=0) as gz:
        gz.write(tar_bytes)
    data = packed.getvalue()
    files = sum(path is not None for path in entries.values())
    return Layer(data, _sha256(data), _sha256(tar_bytes), files)


def _add(tar: tarfile.TarFile, name: str, source: Path | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if source is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        return
    try:
        status = source.lstat()
        if stat.S_ISLNK(status.st_mode):
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, str(source.readlink()), 0o777
            tar.addfile(info)
            return
        data = source.read_bytes()
    except OSError as e:
        raise KalePyError(error("IM001", f"cannot read {source} for the step image: "
                                f"{e.strerror or e}; reinstall that distribution")) from None
    info.mode = 0o755 if status.st_mode & stat.S_IXUSR else 0o644
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
