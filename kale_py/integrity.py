"""The per-user key that signs local run records, and the seals of cache entries.

Everything a local run later unpickles is listed in a step's state manifest, and every
manifest is signed (an HMAC) with a key that lives outside the project folder, in the
user's configuration directory, readable by that user alone. A state folder on a shared
volume or committed into a repository may hold anyone's files: a manifest that this user's
runs did not write has no valid signature, so nothing it lists is ever loaded (see
:func:`kale_py.marshal.read_manifest`). Files are then checked against the manifest's
digests as they are read.

A cache entry is sealed as a whole: its seal signs the cache key it was stored under
together with the digests of its manifest and result, so an entry moved to another key, or
whose result was edited, is refused like a damaged one.

Standard library only (the command line imports it before every run).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from .diagnostics import RunError, error

#: Overrides where the key lives (tests, or a key kept on another volume).
KEY_ENV = "NB2PIPE_KEY_FILE"
KEY_BYTES = 32
SEAL_NAME = "seal"


def key_path() -> Path:
    """``$NB2PIPE_KEY_FILE``, else ``$XDG_CONFIG_HOME/kale_py/key`` (``~/.config/...``)."""
    explicit = os.environ.get(KEY_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "kale_py" / "key"


def user_key(path: Path | None = None) -> bytes:
    """This user's key, made on first use (mode 0600 in a 0700 directory).

    Raises :class:`RunError` (NB505) saying where the key lives when it cannot be read,
    is not a regular file, or can be read by other users.
    """
    from .marshal import StateError, read_key

    path = path or key_path()
    try:
        _create(path)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _key_error(path, f"it cannot be created: {exc}") from None
    try:
        info = path.lstat()
    except OSError as exc:
        raise _key_error(path, f"it cannot be read: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise _key_error(path, "it is not a regular file")
    if info.st_mode & 0o077 or info.st_uid != os.getuid():
        raise _key_error(
            path, f"others can read or own it (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run chmod 600 {path}")
    try:
        return read_key(path)
    except StateError as exc:
        raise _key_error(path, str(exc).split(". Hint:")[0]) from None


def _create(path: Path) -> None:
    """Write a new key beside ``path`` and link it into place: two runs starting at once
    both end up with the one key, never a half-written file. FileExistsError if there."""
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, path)  # FileExistsError when another run made it first
    finally:
        temp.unlink(missing_ok=True)


def _key_error(path: Path, what: str) -> RunError:
    return RunError(error(
        "NB505",
        f"the key that signs your run records lives at {path} and {what}. Delete it to "
        f"make a new one (cached steps are then recomputed), or set {KEY_ENV} to another "
        "file",
    ))


def seal(key: bytes, cache_key: str, entry: Path) -> str:
    """The seal of a cache entry: its key and the digests of its manifest and result."""
    parts = [cache_key]
    for name in ("state/manifest.json", "result.json"):
        try:
            parts.append(hashlib.sha256((entry / name).read_bytes()).hexdigest())
        except FileNotFoundError:
            parts.append("-")
    return hmac.new(key, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def sealed(key: bytes, cache_key: str, entry: Path) -> bool:
    """Whether the entry's seal file matches its content and key."""
    try:
        recorded = (entry / SEAL_NAME).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return False
    return hmac.compare_digest(recorded, seal(key, cache_key, entry))
