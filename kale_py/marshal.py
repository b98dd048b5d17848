"""Variables between pipeline steps: one file per variable, written at the disk's speed.

This module travels alone into step processes and Kubernetes pods (as ``kale_py.marshal``
or copied as a top-level module under another name: ``marshal`` itself is a built-in
module and would shadow it). So it uses the standard library only; cloudpickle or dill
are imported only when plain pickle refuses an object.

A saved variable is one file, ``<state_dir>/<name>.kpk``. Integers are little-endian::

    offset 0   8 bytes   magic  b"\\x89KPK\\r\\n\\x1a\\n"
           8   4 bytes   format version (FORMAT_VERSION)
          12   4 bytes   header length H
          16   H bytes   JSON header: pickler, name, type, [offset, length] of the main
                         pickle stream and of every out-of-band buffer
                         the main pickle stream (protocol 5)
                         each PickleBuffer of 64 KiB or more, starting on a 4 KiB boundary

Loading maps the file copy-on-write, so arrays come back lazily paged in, writable, and
backed by the page cache instead of freshly allocated memory (the fast path for large
arrays and DataFrames, see notes/state-passing-and-analysis.md). Each step writes a
``manifest.json`` next to its variables listing name, type, format, size and hash.

    >>> rec = save_variable("x", [1, 2, 3], "/tmp/state", step="load")  # doctest: +SKIP
    >>> load_variable(rec, "/tmp/state", allowed_root="/tmp")  # doctest: +SKIP
    [1, 2, 3]
"""

from __future__ import annotations

import builtins
import copyreg
import functools
import gc
import hashlib
import importlib
import io
import json
import keyword
import mmap
import os
import pickle
import struct
import sys
import threading
import traceback
import types
from collections import ChainMap
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Union

__all__ = [
    "FORMAT_VERSION",
    "HASH_ALGORITHM",
    "MANIFEST_NAME",
    "StateError",
    "VariableRecord",
    "check_state",
    "digest_buffer",
    "hash_file",
    "load_variable",
    "load_variables",
    "manifest_digest",
    "manifest_mac",
    "read_key",
    "read_manifest",
    "save_variable",
    "save_variables",
    "write_manifest",
]

FORMAT_VERSION = 1
MAGIC = b"\x89KPK\r\n\x1a\n"  # PNG-style: catches text-mode and truncation damage early
SUFFIX = ".kpk"
MANIFEST_NAME = "manifest.json"

_PREFIX = struct.Struct("<8sII")  # magic, format version, header length
_OOB_MIN = 64 * 1024  # smaller buffers stay in-band: one file, no per-buffer padding waste
_ALIGN = 4096  # fixed (not mmap.PAGESIZE) so that the same value gives the same bytes everywhere
_MAX_HEADER = 64 * 1024 * 1024
_MAX_WRITE = 1 << 30  # Linux writes at most ~2 GiB per call; stay well below

# The content hash: a digest of each 16 MiB block of the file, then a digest of the
# concatenated block digests, so blocks hash in parallel threads while the writer waits for
# the disk and as the file is read back for verification. BLAKE3 where the blake3 package is
# installed (a base dependency: measured 4.7 GB/s per core against SHA-256's 1.8 and
# BLAKE2b's 0.9), SHA-256 otherwise (the standard library only, for an image without blake3).
# A record names its algorithm, so a consumer verifies whatever its producer used.
_BLOCK_HASHES: dict[str, Callable[..., Any]] = {"sha256-tree16m": hashlib.sha256}
with suppress(ImportError):  # blake3 is a base dependency; an image may still lack it
    _BLOCK_HASHES["blake3-tree16m"] = importlib.import_module("blake3").blake3
HASH_ALGORITHM = "blake3-tree16m" if "blake3-tree16m" in _BLOCK_HASHES else "sha256-tree16m"
_HASH_BLOCK = 16 * 1024 * 1024
_THREADED_HASH_MIN = 8 * 1024 * 1024  # below this, threads cost more than they save
_MAC_ALGORITHM = "hmac-sha256"

_NOTEBOOK_MODULE = "__main__"
_MAIN_MARKER = _NOTEBOOK_MODULE.encode()

PathLike = Union[str, "os.PathLike[str]"]

_RESOURCE_HINT = (
    "open files, locks, generators and database connections cannot be passed between steps: "
    "create them in the step that uses them, or mark the cell skip"
)


# --- errors and records ---------------------------------------------------------------------


class StateError(Exception):
    """A variable could not be saved or loaded.

    The message says which variable, its type, the step and how to fix it. Saving
    raises it in the producing step, so a consumer never meets an opaque pickling error.
    """

    def __init__(
        self,
        message: str,
        *,
        variable: str = "",
        type_name: str = "",
        step: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.variable = variable
        self.type_name = type_name
        self.step = step
        self.path = path


@dataclass(frozen=True)
class VariableRecord:
    """One saved variable, as listed in its step's manifest."""

    name: str
    type: str  # qualified type name, e.g. "numpy.ndarray"
    format: str  # "pickle5" | "cloudpickle" | "dill"
    bytes: int  # file size
    hash: str  # "<HASH_ALGORITHM>:<hex>" of the file's bytes, see hash_file()
    file: str  # file name relative to the state directory
    # the names saved together in ``file`` (they may share objects); empty: alone
    group: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariableRecord:
        """Rebuild a record from its manifest entry."""
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            format=str(data["format"]),
            bytes=int(data["bytes"]),
            hash=str(data["hash"]),
            file=str(data["file"]),
            group=tuple(str(n) for n in data.get("group", ())),
        )

    @property
    def stored_name(self) -> str:
        """The name in the file's header: the variable's, or its group's."""
        return group_key(self.group) if self.group else self.name


def group_key(names: Sequence[str]) -> str:
    return "+".join(names)


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = getattr(cls, "__module__", None)
    if module in (None, "builtins"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _save_error(name: str, obj: object, step: str | None, what: str, hint: str) -> StateError:
    where = f" in step {step!r}" if step else ""
    type_name = _type_name(obj)
    return StateError(
        f"cannot save variable {name!r} ({type_name}){where}: {what}. Hint: {hint}",
        variable=name,
        type_name=type_name,
        step=step,
    )


def _load_error(
    name: str, type_name: str, path: Path | str, step: str | None, what: str, hint: str
) -> StateError:
    where = f" in step {step!r}" if step else ""
    kind = f" ({type_name})" if type_name else ""
    return StateError(
        f"cannot load variable {name!r}{kind} from {path}{where}: {what}. Hint: {hint}",
        variable=name,
        type_name=type_name,
        step=step,
        path=str(path),
    )


# --- what cannot cross a process boundary ---------------------------------------------------

# kind -> how to fix it
_RESOURCE_HINTS = {
    "generator": "convert it to a list in the producing step (x = list(x)), or create it in "
    "the step that uses it",
    "open file": _RESOURCE_HINT,
    "lock": _RESOURCE_HINT,
    "thread": "threads cannot be passed between steps: start them in the step that uses them",
    "socket": _RESOURCE_HINT,
    "database connection": _RESOURCE_HINT,
}


def _resource_types() -> list[tuple[tuple[type, ...], str]]:
    """Types that hold an operating-system or interpreter resource, by kind.

    socket and sqlite3 are only consulted when already imported: an object of theirs
    cannot exist otherwise, and importing them here would slow every step down.
    """
    kinds: list[tuple[tuple[type, ...], str]] = [
        ((types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType), "generator"),
        ((io.IOBase, mmap.mmap), "open file"),
        ((type(threading.Lock()), type(threading.RLock())), "lock"),
        ((threading.Thread,), "thread"),
    ]
    socket = sys.modules.get("socket")
    if socket is not None:
        kinds.append(((socket.socket,), "socket"))
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None:
        kinds.append(((sqlite3.Connection, sqlite3.Cursor), "database connection"))
    return kinds


class _Unsavable(Exception):
    """Raised from inside a pickler on an object holding a resource."""

    def __init__(self, obj: object, kind: str) -> None:
        super().__init__(kind)
        self.obj = obj
        self.kind = kind


class _NeedsByValue(Exception):
    """Raised from inside a pickler on a function or class defined in notebook code."""

    def __init__(self, obj: object) -> None:
        super().__init__(getattr(obj, "__qualname__", repr(obj)))
        self.obj = obj


def _resource_check(kinds: list[tuple[tuple[type, ...], str]]) -> Callable[[object], None]:
    every = tuple(t for group, _ in kinds for t in group)

    def check(obj: object) -> None:
        if not isinstance(obj, every):
            return
        # In-memory streams pickle fine and are plain data.
        if isinstance(obj, (io.BytesIO, io.StringIO)):
            return
        raise _Unsavable(obj, next(kind for group, kind in kinds if isinstance(obj, group)))

    return check


class _NotebookCodePickler(pickle.Pickler):
    """Plain pickle that stops at functions and classes defined in notebook code.

    Plain pickle saves those by name (``__main__.f``); a later step that does not run the
    cell defining them could not load them. Instances of notebook classes stay by
    reference (the consumer re-executes the class definition), so a class is only
    flagged when it is not being saved as the class of the instance just seen.
    """

    def __init__(self, file: Any, protocol: int,
                 buffer_callback: Callable[[pickle.PickleBuffer], bool],
                 shared: Collection[str] | None = None) -> None:
        super().__init__(file, protocol=protocol, buffer_callback=buffer_callback)
        self._instance_class: type | None = None
        self._shared = shared

    def reducer_override(self, obj: object) -> Any:
        expected, self._instance_class = self._instance_class, None
        if isinstance(obj, (type, types.FunctionType, _CACHED)):
            if obj.__module__ == _NOTEBOOK_MODULE and not self._by_name(obj, expected):
                raise _NeedsByValue(obj)
        elif type(obj).__module__ == _NOTEBOOK_MODULE:
            # The pickler saves the instance's class right after this call.
            self._instance_class = type(obj)
        return NotImplemented

    def _by_name(self, obj: Any, instance_class: type | None) -> bool:
        """Whether the consumer can find ``obj`` by name in its own ``__main__``.

        With ``shared`` (the names every step defines: imports and functions cells) that is
        exactly those; without it, the class of an instance is assumed to be defined there.
        """
        if self._shared is not None:
            return obj.__qualname__.split(".")[0] in self._shared
        return obj is instance_class


# ``functools.lru_cache`` and ``functools.cache`` wrap a function in this type.
_CACHED = type(functools.lru_cache()(lambda: None))


def _cached_by_value(cached: Any) -> tuple[Any, ...] | None:
    """How to pickle a notebook function wrapped by ``lru_cache`` by value (None when
    the wrapped function is not notebook code).

    The wrapper pickles by name, so a step that does not define it could not load it:
    it is rebuilt from the wrapped function (by value), with the same cache settings and
    attributes (``__wrapped__``, ``__name__``...), and an empty cache, as a step starts
    with. A recursive function refers to its wrapper through its globals: pickle's memo
    makes that the same object again.
    """
    wrapped = getattr(cached, "__wrapped__", None)
    if cached.__module__ != _NOTEBOOK_MODULE or not isinstance(wrapped, types.FunctionType):
        return None
    settings = cached.cache_parameters()
    return _cached, (wrapped, settings["maxsize"], settings["typed"]), dict(vars(cached))


def _cached(wrapped: Callable[..., Any], maxsize: int | None, typed: bool) -> Any:
    """The consumer's half of _cached_by_value."""
    return functools.lru_cache(maxsize, typed)(wrapped)


def _guarded(base: type, check: Callable[[object], None]) -> type:
    """A subclass of a by-value pickler that refuses resources before pickling them, and
    that carries cached notebook functions by value too (see _cached_by_value).

    cloudpickle would turn an open file into a StringIO of its contents and dill would
    reopen it by name in the consumer: both silently change what the variable means.
    """
    parent = getattr(base, "reducer_override", None)

    def reducer_override(self: Any, obj: object) -> Any:
        check(obj)
        if type(obj) is _CACHED:
            reduced = _cached_by_value(obj)
            if reduced is not None:
                return reduced
        return NotImplemented if parent is None else parent(self, obj)

    return type(f"Guarded{base.__name__}", (base,), {"reducer_override": reducer_override})


def _by_value_picklers() -> Iterator[tuple[str, Callable[..., Any], dict[str, Any]]]:
    """cloudpickle, then dill; each imported only when the previous one is missing or failed.

    dill is last on purpose: importing it patches pickle's pure-Python pickler process-wide,
    and its pickler is pure Python (15-20x slower than the C pickler on object-heavy data).
    """
    check = _resource_check(_resource_types())
    try:
        cloudpickle = importlib.import_module("cloudpickle")
    except ImportError:
        pass
    else:
        yield "cloudpickle", _guarded(cloudpickle.Pickler, check), {}
    try:
        dill = importlib.import_module("dill")
    except ImportError:
        return
    # recurse=True carries the globals a function uses, like cloudpickle does.
    yield "dill", _guarded(dill.Pickler, check), {"recurse": True}


# --- pickling -------------------------------------------------------------------------------


class _ChunkSink:
    """A write-only file that keeps the pickler's frames without copying them together.

    The C pickler hands over each ~64 KiB frame as a new bytes object and large in-band
    payloads (a big non-contiguous array's bytes) as the object itself, so holding the
    list costs nothing extra where a BytesIO would copy everything once more.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []
        self.size = 0

    def write(self, data: Any) -> int:
        if not isinstance(data, bytes):
            data = pickle.PickleBuffer(data).raw()  # any contiguous buffer, as flat bytes
        self.chunks.append(data)
        self.size += len(data)
        return len(data)


@dataclass
class _Encoded:
    pickler: str
    main: list[bytes | memoryview]
    main_size: int
    buffers: list[memoryview] = field(default_factory=list)

    def mentions_notebook_module(self) -> bool:
        # Opcodes only ever sit in the C pickler's bytes frames, so a global from
        # __main__ always puts the literal module name in one of them.
        return any(isinstance(c, bytes) and _MAIN_MARKER in c for c in self.main)


def _dump(obj: object, pickler: Callable[..., Any], name: str,
          views: Callable[[Any], Any] | None = None, **options: Any) -> _Encoded:
    sink = _ChunkSink()
    buffers: list[memoryview] = []

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:
            return True  # non-contiguous: in-band, where pickle reports it
        if raw.nbytes < _OOB_MIN:
            return True
        buffers.append(raw)
        return False

    instance = pickler(sink, protocol=5, buffer_callback=keep_out_of_band, **options)
    if views is not None:
        _add_view_reducer(instance, views)
    instance.dump(obj)
    return _Encoded(name, sink.chunks, sink.size, buffers)


# What plain pickle raises when it refuses an object (a lambda, a closure, a lock...).
_REFUSALS = (pickle.PicklingError, TypeError, AttributeError)


def _encode(name: str, obj: object, step: str | None,
            shared: Collection[str] | None = None,
            views: Callable[[Any], Any] | None = None) -> _Encoded:
    """Pickle `obj` with plain pickle, or by value when plain pickle cannot carry it.

    ``views``: the reducer that keeps numpy views of arrays saved in the same file views.
    """
    try:
        plain = _dump(obj, pickle.Pickler, "pickle5", views)
    except _REFUSALS as refusal:
        return _encode_refused(name, obj, step, refusal, views)
    except Exception as exc:
        raise _pickling_failed(name, obj, step, exc) from exc
    if not plain.mentions_notebook_module():
        return plain
    # Something from __main__ is in there: instances of notebook classes are fine by
    # reference, functions and classes themselves are not (see _NotebookCodePickler).
    try:
        return _dump(obj, _NotebookCodePickler, "pickle5", views, shared=shared)
    except _NeedsByValue:
        by_value, _ = _dump_by_value(obj, views)
        # By name still works when the consumer defines it (a cell tagged functions), and
        # it is the only way when by value fails (a function using a database connection).
        return by_value or plain
    except Exception as exc:
        raise _pickling_failed(name, obj, step, exc) from exc


def _dump_by_value(obj: object, views: Callable[[Any], Any] | None = None
                   ) -> tuple[_Encoded | None, Exception | None]:
    """The first by-value pickle that succeeds, or else the first failure."""
    first_failure: Exception | None = None
    for pickler_name, pickler, options in _by_value_picklers():
        try:
            return _dump(obj, pickler, pickler_name, views, **options), None
        except _Unsavable as unsavable:
            return None, unsavable  # every pickler refuses resources alike
        except Exception as exc:
            first_failure = first_failure or exc
    return None, first_failure


def _encode_refused(name: str, obj: object, step: str | None, refusal: Exception,
                    views: Callable[[Any], Any] | None = None) -> _Encoded:
    encoded, failure = _dump_by_value(obj, views)
    if encoded is not None:
        return encoded
    if isinstance(failure, _Unsavable):
        raise _resource_error(name, obj, step, failure)
    if failure is not None:
        raise _pickling_failed(name, obj, step, failure) from failure
    _raise_if_resource(name, obj, step)
    raise _save_error(
        name, obj, step, f"plain pickle refuses it ({type(refusal).__name__}: {refusal})",
        "lambdas, closures and functions or classes defined inside other functions need "
        "cloudpickle: install it where the steps run (pip install cloudpickle), or move the "
        "definition to a cell tagged functions",
    ) from refusal


def _raise_if_resource(name: str, obj: object, step: str | None) -> None:
    """Find a resource inside `obj` for the error message when no by-value pickler exists."""
    try:
        _dump(obj, _ResourceSearch, "pickle5")
    except _Unsavable as unsavable:
        raise _resource_error(name, obj, step, unsavable) from None
    except Exception:
        return


class _ResourceSearch(pickle.Pickler):
    """Walks an object like pickle does, stopping only at resources.

    Functions and classes (lambdas, local classes) would stop plain pickle before it
    reaches the resource, so a placeholder stands in for them.
    """

    def __init__(self, file: Any, protocol: int,
                 buffer_callback: Callable[[pickle.PickleBuffer], bool]) -> None:
        super().__init__(file, protocol=protocol, buffer_callback=buffer_callback)
        self._check = _resource_check(_resource_types())

    def reducer_override(self, obj: object) -> Any:
        self._check(obj)
        if isinstance(obj, (types.FunctionType, type)):
            return abs, (0,)
        return NotImplemented


def _resource_error(name: str, obj: object, step: str | None, found: _Unsavable) -> StateError:
    article = "an" if found.kind[0] in "aeiou" else "a"
    what = f"{article} {found.kind} cannot be passed to another process"
    if found.obj is not obj:
        what = f"it contains {article} {found.kind} ({_type_name(found.obj)}), and {what}"
    return _save_error(name, obj, step, what, _RESOURCE_HINTS[found.kind])


def _pickling_failed(name: str, obj: object, step: str | None, exc: BaseException) -> StateError:
    if isinstance(exc, RecursionError):
        return _save_error(
            name, obj, step, "it is nested too deeply to pickle",
            "flatten the structure, or raise the limit with sys.setrecursionlimit() in the step",
        )
    return _save_error(
        name, obj, step, f"pickling it failed with {type(exc).__name__}: {exc}",
        "make the object picklable (its __reduce__/__getstate__ raised), create it in the step "
        "that uses it, or mark the cell skip",
    )


# --- groups: variables that share objects, in one pickle ------------------------------------
#
# One pickle keeps identity (pickle's memo): ``clf_list[0][0] is lr`` still holds after
# loading. numpy views are not objects pickle follows (a view pickles as a copy of its
# data), so a view of an array saved in the same file is saved as "this array's memory at
# this offset, with these strides", and comes back a view again.

_WALK_LIMIT = 10_000  # objects visited to find the arrays of a group: stays cheap


@dataclass(frozen=True)
class _ArrayInfo:
    array: Any
    owner: int  # id of the object at the end of the ``.base`` chain: who owns the memory
    low: int  # byte extent [low, high) of its elements
    high: int
    rank: tuple[int, int]  # larger extent first, then the first one found


def _view_reducer(values: Iterable[object]) -> Callable[[Any], Any] | None:
    """A reducer for numpy arrays that keeps views of the group's arrays views, or None."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    ndarray = numpy.ndarray
    infos: dict[int, _ArrayInfo] = {}
    owners: dict[int, list[_ArrayInfo]] = {}
    for index, array in enumerate(_arrays_in(values, ndarray).values()):
        if array.dtype.hasobject or array.size == 0:
            continue
        owner: Any = array
        while isinstance(owner, ndarray) and owner.base is not None:
            owner = owner.base
        low, high = _extent(array)
        info = _ArrayInfo(array, id(owner), low, high, (high - low, -index))
        infos[id(array)] = info
        owners.setdefault(info.owner, []).append(info)
    if all(len(arrays) < 2 for arrays in owners.values()):
        return None

    def reduce(array: Any) -> Any:
        info = infos.get(id(array))
        holder = None if info is None else _holder(info, owners[info.owner])
        if info is None or holder is None:
            return array.__reduce_ex__(5)
        offset = _address(array) - holder.low
        return ndarray, (array.shape, array.dtype, holder.array, offset, array.strides)

    return reduce


def _holder(info: _ArrayInfo, candidates: list[_ArrayInfo]) -> _ArrayInfo | None:
    """The largest other saved array whose memory holds ``info``'s (and can be rebuilt on)."""
    best = None
    for other in candidates:
        flags = other.array.flags
        if (other.rank > info.rank and other.low <= info.low and info.high <= other.high
                and (flags.c_contiguous or flags.f_contiguous)
                and (best is None or other.rank > best.rank)):
            best = other
    return best


def _extent(array: Any) -> tuple[int, int]:
    low = high = _address(array)
    for length, stride in zip(array.shape, array.strides, strict=True):
        if stride < 0:
            low += (length - 1) * stride
        else:
            high += (length - 1) * stride
    return low, high + array.itemsize


def _arrays_in(values: Iterable[object], ndarray: type) -> dict[int, Any]:
    """The numpy arrays among the values, their containers' items and their attributes."""
    found: dict[int, Any] = {}
    seen: set[int] = set()
    pending = [(v, 0) for v in values]
    while pending and len(seen) < _WALK_LIMIT:
        obj, depth = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, ndarray):
            found[id(obj)] = obj
            continue
        if depth >= 4 or type(obj).__module__.partition(".")[0] == "pandas":
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            pending += [(item, depth + 1) for item in obj]
        elif isinstance(obj, dict):
            pending += [(item, depth + 1) for item in obj.values()]
        elif not isinstance(obj, (type, types.ModuleType)):
            attributes = getattr(obj, "__dict__", None)
            if isinstance(attributes, dict):
                pending += [(item, depth + 1) for item in attributes.values()]
    return found


def _address(array: Any) -> int:
    address: int = array.__array_interface__["data"][0]
    return address


def _add_view_reducer(pickler: Any, reduce: Callable[[Any], Any]) -> None:
    numpy = sys.modules["numpy"]
    table = getattr(pickler, "dispatch_table", None) or copyreg.dispatch_table
    pickler.dispatch_table = ChainMap({numpy.ndarray: reduce}, table)


# --- file layout and hashing ----------------------------------------------------------------

_ZEROS = bytes(_ALIGN)
_O_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _align(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _layout(enc: _Encoded, name: str, type_name: str) -> tuple[list[bytes | memoryview], int]:
    """The file's byte segments in order (prefix and header, main stream, padded buffers)."""
    main_offset = _PREFIX.size
    for _ in range(16):  # offsets and header length depend on each other; settles in 2-3 rounds
        spans = []
        end = main_offset + enc.main_size
        for buffer in enc.buffers:
            start = _align(end)
            spans.append([start, buffer.nbytes])
            end = start + buffer.nbytes
        header = json.dumps(
            {"pickler": enc.pickler, "name": name, "type": type_name,
             "main": [main_offset, enc.main_size], "buffers": spans},
            separators=(",", ":"),
        ).encode()
        if _PREFIX.size + len(header) == main_offset:
            break
        main_offset = _PREFIX.size + len(header)
    else:  # pragma: no cover - the lengths only grow, so they always settle
        raise AssertionError("file layout did not settle")
    segments: list[bytes | memoryview] = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header]
    segments.extend(enc.main)
    position = main_offset + enc.main_size
    for buffer, (start, length) in zip(enc.buffers, spans, strict=True):
        if start > position:
            segments.append(memoryview(_ZEROS)[: start - position])
        segments.append(buffer)
        position = start + length
    return segments, position


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _TreeHasher:
    """Hashes 16 MiB blocks of a byte sequence, in worker threads for large files.

    The hash functions release the GIL, so the blocks hash on every core (up to 4) while
    the writer waits in fsync for the disk: the CPU is idle then, and two cores hash a GiB
    in less time than a 3 GB/s disk takes to store it. Not while the writer copies the
    bytes into the page cache: a hasher reading the same memory beside it slowed that copy
    enough that a 1 GiB save ran at 0.73 of the raw write rate, against 0.97 hashing during
    fsync only (2 cores). A small file hashes in the committing thread.
    """

    def __init__(self, segments: Sequence[bytes | memoryview], size: int,
                 algorithm: str = HASH_ALGORITHM) -> None:
        self._algorithm = algorithm
        self._new = _BLOCK_HASHES[algorithm]
        self._blocks = _split_blocks(segments)
        self._digests = [b""] * len(self._blocks)
        self._next = 0
        self._lock = threading.Lock()
        self._cancelled = False
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._threaded = size >= _THREADED_HASH_MIN

    def writer_waits(self) -> None:
        """The writer is about to block in fsync: hash on every core."""
        if not self._threaded or self._threads:
            return
        for _ in range(min(4, _cores())):
            thread = threading.Thread(target=self._work, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        try:
            while not self._cancelled:
                with self._lock:
                    index, self._next = self._next, self._next + 1
                if index >= len(self._blocks):
                    return
                block = self._new()
                for piece in self._blocks[index]:
                    block.update(piece)
                self._digests[index] = block.digest()
        except BaseException as exc:  # re-raised in the caller's thread by hexdigest()
            self._error = exc

    def hexdigest(self) -> str:
        self._work()  # the caller helps with whatever blocks are left
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error
        return f"{self._algorithm}:{self._new(b''.join(self._digests)).hexdigest()}"

    def cancel(self) -> None:
        self._cancelled = True
        for thread in self._threads:
            thread.join()


class _NoHasher:
    """For files whose content hash nobody reads (a Kubeflow pod's outputs): no CPU spent."""

    def writer_waits(self) -> None:
        pass

    def hexdigest(self) -> str:
        return ""

    def cancel(self) -> None:
        pass


def _split_blocks(segments: Sequence[bytes | memoryview]) -> list[list[memoryview]]:
    blocks: list[list[memoryview]] = [[]]
    room = _HASH_BLOCK
    for segment in segments:
        view = memoryview(segment)
        while view.nbytes:
            take = min(room, view.nbytes)
            blocks[-1].append(view[:take])
            view = view[take:]
            room -= take
            if room == 0:
                blocks.append([])
                room = _HASH_BLOCK
    if not blocks[-1]:
        blocks.pop()
    return blocks


def hash_file(path: PathLike, algorithm: str = HASH_ALGORITHM) -> str:
    """The hash a VariableRecord carries, recomputed from the file (for checks and tools)."""
    new = _BLOCK_HASHES[algorithm]
    digests = []
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digests.append(new(block).digest())
    return f"{algorithm}:{new(b''.join(digests)).hexdigest()}"


# --- writing --------------------------------------------------------------------------------


def _write_all(fd: int, segment: bytes | memoryview) -> None:
    view = memoryview(segment)
    while view.nbytes:
        written = os.write(fd, view[:_MAX_WRITE])
        view = view[written:]


class _PendingFile:
    """A variable's file while it is written: a temp file beside its final name.

    Only commit() makes it visible (atomic rename); abort() removes every trace.
    """

    def __init__(self, directory: Path, file_name: str, segments: list[bytes | memoryview],
                 size: int, hashed: bool = True) -> None:
        self.final = directory / file_name
        self.temp = directory / f".{file_name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        self._segments = segments
        self._hasher: _TreeHasher | _NoHasher = (
            _TreeHasher(segments, size) if hashed else _NoHasher())
        self._fd = -1

    def write(self) -> None:
        self._fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_FLAGS, 0o644)
        for segment in self._segments:
            _write_all(self._fd, segment)

    def sync(self) -> None:
        self._hasher.writer_waits()
        os.fsync(self._fd)

    def commit(self) -> str:
        digest = self._hasher.hexdigest()
        os.close(self._fd)
        self._fd = -1
        os.replace(self.temp, self.final)
        self._segments = []  # let the pickled data go before the next variable is pickled
        return digest

    def abort(self) -> None:
        self._hasher.cancel()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with suppress(FileNotFoundError):
            os.unlink(self.temp)


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable. Best effort: some platforms cannot open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- saving ---------------------------------------------------------------------------------


def save_variable(name: str, obj: object, state_dir: PathLike, *, step: str | None = None,
                  shared: Collection[str] | None = None, content_hash: bool = True,
                  namespace: dict[str, Any] | None = None) -> VariableRecord:
    """Save one variable as ``<state_dir>/<name>.kpk``, atomically and durably.

    Raises StateError (naming the variable, its type, the step and a fix) when the
    object cannot be saved; no file, not even a temp file, is left behind then.

    ``shared``: the names of notebook classes and functions every step defines (its
    imports and functions cells); they travel by name, other notebook code by value.
    ``content_hash=False`` skips the hash (the record's ``hash`` is empty) where nothing
    reads it, saving about a CPU-second per GiB.
    ``namespace``: the step's globals. Given, an object of a library type whose pickle is
    small is restored once right away (see restore_in), so that an object that saves but
    cannot be rebuilt is reported here, by the step that made it, with the real reason.

        >>> save_variable("df", df, "state/load", step="load").format  # doctest: +SKIP
        'pickle5'
    """
    return save_variables({name: obj}, state_dir, step=step, shared=shared,
                          content_hash=content_hash, namespace=namespace)[0]


def save_variables(names_values: Mapping[str, object], state_dir: PathLike, *,
                   step: str | None = None, shared: Collection[str] | None = None,
                   content_hash: bool = True, namespace: dict[str, Any] | None = None,
                   groups: Iterable[Sequence[str]] = ()
                   ) -> list[VariableRecord]:
    """Save several variables; all files appear only when every one of them was saved.

    Writing everything before the first fsync lets the disk flush all files at once.
    ``groups``: names that may share objects; each group present in ``names_values`` is
    saved as one file (``<first name>.group.kpk``), so that loading it gives back objects
    shared as they were, numpy views included. Every member gets its own record.
    """
    directory = Path(state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create the state directory {directory}: {exc}. Hint: check "
                         "that the state volume is mounted and writable", step=step,
                         path=str(directory)) from exc
    pending: list[tuple[_PendingFile, VariableRecord]] = []
    members: dict[str, tuple[str, ...]] = {}
    for group in groups:
        present = tuple(n for n in group if n in names_values)
        if len(present) > 1:
            members.update((n, present) for n in present)
    try:
        for name, obj in names_values.items():
            together = members.get(name)
            if together is None:
                pending.append(_write_variable(name, obj, directory, step, shared,
                                               content_hash, namespace))
            elif together[0] == name:
                values = {n: names_values[n] for n in together}
                pending.append(_write_group(values, directory, step, shared, content_hash,
                                            namespace))
        records = []
        for file, record in pending:
            with _io_errors(record, step, file.final):
                file.sync()
                digest = file.commit()
            if record.group:
                records += [replace(record, name=n, type=_type_name(names_values[n]),
                                    hash=digest) for n in record.group]
            else:
                records.append(replace(record, hash=digest))
    except BaseException:
        for file, _ in pending:
            file.abort()
        raise
    _fsync_directory(directory)
    return records


def _write_variable(name: str, obj: object, directory: Path, step: str | None,
                    shared: Collection[str] | None = None, content_hash: bool = True,
                    namespace: dict[str, Any] | None = None
                    ) -> tuple[_PendingFile, VariableRecord]:
    if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)):
        raise _save_error(str(name), obj, step, "the name is not a Python identifier",
                          "only variables (valid Python names) are passed between steps")
    type_name = _type_name(obj)
    encoded = _encode(name, obj, step, shared)
    if namespace is not None:
        _check_round_trip(name, obj, step, encoded, namespace)
    segments, size = _layout(encoded, name, type_name)
    file_name = name + SUFFIX
    record = VariableRecord(name, type_name, encoded.pickler, size, "", file_name)
    file = _PendingFile(directory, file_name, segments, size, hashed=content_hash)
    try:
        with _io_errors(record, step, file.final):
            file.write()
    except BaseException:
        file.abort()
        raise
    return file, record


def _write_group(values: Mapping[str, object], directory: Path, step: str | None,
                 shared: Collection[str] | None, content_hash: bool,
                 namespace: dict[str, Any] | None = None
                 ) -> tuple[_PendingFile, VariableRecord]:
    names = tuple(values)
    key = group_key(names)
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise _save_error(name, values[name], step, "the name is not a Python identifier",
                              "only variables (valid Python names) are passed between steps")
    try:
        encoded = _encode(key, dict(values), step, shared, _view_reducer(values.values()))
    except StateError:
        for name, obj in values.items():  # name the variable that cannot be saved
            _encode(name, obj, step, shared)
        raise
    if namespace is not None:  # restore the group once if a member needs the check
        for name, obj in values.items():
            if _round_trip_needed(obj):
                _check_round_trip(name, obj, step, encoded, namespace)
                break
    segments, size = _layout(encoded, key, "dict")
    file_name = names[0] + ".group" + SUFFIX
    record = VariableRecord(key, "dict", encoded.pickler, size, "", file_name, names)
    file = _PendingFile(directory, file_name, segments, size, hashed=content_hash)
    try:
        with _io_errors(record, step, file.final):
            file.write()
    except BaseException:
        file.abort()
        raise
    return file, record


# Types whose pickles always restore: no round trip for them.
_NO_ROUND_TRIP = frozenset({"builtins", "numpy", "pandas", "collections", "datetime",
                            "decimal", "fractions", "pathlib", "uuid", "re"})
_ROUND_TRIP_MAX = 16 * 1024 * 1024  # main pickle stream bytes; arrays stay out of band


def _check_round_trip(name: str, obj: object, step: str | None, encoded: _Encoded,
                      namespace: dict[str, Any]) -> None:
    """Restore a library object once, so that a failure names the producing step."""
    if (not _round_trip_needed(obj) or encoded.main_size > _ROUND_TRIP_MAX
            or encoded.pickler == "dill"):
        return
    main = b"".join(encoded.main)
    try:
        with _gc_paused():
            restore_in(namespace, _unpickler(encoded.pickler, main, encoded.buffers))
    except Exception as exc:
        where = _restore_code_failure(exc) or "pickle"
        raise _save_error(
            name, obj, step, f"it can be saved but not restored in another step: restoring it "
            f"raised {type(exc).__name__}: {exc} (in {where})", _restore_hint(exc)) from exc


def _round_trip_needed(obj: object) -> bool:
    top = str(getattr(type(obj), "__module__", "") or "").partition(".")[0]
    return top not in _NO_ROUND_TRIP


@contextmanager
def _io_errors(record: VariableRecord, step: str | None, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        where = f" in step {step!r}" if step else ""
        raise StateError(
            f"cannot save variable {record.name!r} ({record.type}){where}: writing {path} "
            f"failed: {exc}. Hint: check that the state volume is writable and has "
            f"{record.bytes} bytes free",
            variable=record.name, type_name=record.type, step=step, path=str(path),
        ) from exc


# --- loading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    pickler: str
    name: str
    type: str
    main: tuple[int, int]
    buffers: list[tuple[int, int]]


@dataclass(frozen=True)
class _Target:
    """What load_variable was asked for: a path, and the manifest's record if given."""

    path: Path
    record: VariableRecord | None
    name: str
    type_name: str
    step: str | None
    producer: str | None = None

    def error(self, what: str, hint: str, path: Path | None = None) -> StateError:
        return _load_error(self.name, self.type_name, path or self.path, self.step, what, hint)

    def rerun(self) -> str:
        if self.producer:
            return (f"re-run step {self.producer!r}, which saves it "
                    f"(nb2pipe run --only {self.producer})")
        return "re-run the step that produces it"


def load_variable(
    record_or_path: VariableRecord | Mapping[str, Any] | PathLike,
    state_dir: PathLike,
    *,
    allowed_root: PathLike,
    step: str | None = None,
    producer: str | None = None,
    namespace: dict[str, Any] | None = None,
) -> object:
    """Load a variable saved by save_variable.

    `record_or_path` is a VariableRecord, its manifest entry (a dict), or a file path
    (relative paths are taken from `state_dir`). Only a file whose resolved path lies
    inside `allowed_root` is ever unpickled. Given a record, the file's bytes are checked
    against the record's size and digest before anything is unpickled (a record comes from
    a manifest that read_manifest authenticated). `step` (the loading step) and `producer`
    (the step that saved it) only go into error messages. Raises StateError for a missing,
    foreign, corrupt, damaged or unloadable file.
    ``namespace``: the loading step's globals; restore code that looks names up in its
    caller's frames (a statsmodels formula model re-evaluating its formula) finds them there,
    and notebook functions, lambdas and methods saved by value read their globals from it
    when they run, as in the notebook (what they read when saved only fills in names it
    lacks).

        >>> manifest = read_manifest("state/load")  # doctest: +SKIP
        >>> df = load_variable(manifest["variables"]["df"], "state/load", allowed_root="state")
    """
    target = _locate(record_or_path, Path(state_dir), step, producer)
    value = _load_file(target, allowed_root, namespace)
    if target.record is not None and target.record.group:
        return _member(target, value)
    return value


def load_variables(
    records: Iterable[VariableRecord | Mapping[str, Any]],
    state_dir: PathLike,
    *,
    allowed_root: PathLike,
    step: str | None = None,
    producer: str | None = None,
    namespace: dict[str, Any] | None = None,
) -> dict[str, object]:
    """Load several variables of one state directory, each file once.

    Variables saved as one group come from one load, so they share objects as they did
    when saved, also when only some of the group's names are asked for. The arguments
    are load_variable's.
    """
    loaded: dict[str, object] = {}
    files: dict[str, object] = {}
    for entry in records:
        target = _locate(entry, Path(state_dir), step, producer)
        record = target.record
        if record is None or not record.group:
            loaded[target.name] = _load_file(target, allowed_root, namespace)
            continue
        if record.file not in files:
            files[record.file] = _load_file(target, allowed_root, namespace)
        loaded[record.name] = _member(target, files[record.file])
    return loaded


def _member(target: _Target, value: object) -> object:
    record = target.record
    assert record is not None
    if not isinstance(value, dict) or record.name not in value:
        raise target.error(f"its group file does not hold {record.name!r}", target.rerun())
    return value[record.name]


def _load_file(target: _Target, allowed_root: PathLike, namespace: dict[str, Any] | None
               ) -> object:
    path = _inside_root(target, allowed_root)
    with _opened(target, path) as fd:
        data = _map_file(target, path, fd)
        if target.record is not None:
            _check_record(target, path, data, fd)
    header = _read_header(target, path, data)
    # the size was checked with the digest; a group file holds its group's stored name
    if target.record is not None and target.record.stored_name != header.name:
        raise target.error("the file holds another variable than its manifest entry "
                           f"({header.name!r})", target.rerun(), path)
    view = memoryview(data)
    main = view[header.main[0] : header.main[0] + header.main[1]]
    buffers = [view[offset : offset + length] for offset, length in header.buffers]
    try:
        with _gc_paused():
            return restore_in(namespace, _unpickler(header.pickler, main, buffers, namespace))
    except Exception as exc:
        named = replace(target, name=header.name, type_name=header.type)
        raise _unpickling_failed(named, path, exc) from exc


def _locate(record_or_path: VariableRecord | Mapping[str, Any] | PathLike, state_dir: Path,
            step: str | None, producer: str | None = None) -> _Target:
    if isinstance(record_or_path, Mapping):
        try:
            record_or_path = VariableRecord.from_dict(record_or_path)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"not a manifest entry (missing or bad {exc}): {record_or_path!r}",
                             step=step) from exc
    if isinstance(record_or_path, VariableRecord):
        record = record_or_path
        return _Target(state_dir / record.file, record, record.name, record.type, step,
                       producer)
    path = Path(record_or_path)
    if not path.is_absolute():
        path = state_dir / path
    name = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    return _Target(path, None, name, "", step, producer)


def _inside_root(target: _Target, allowed_root: PathLike) -> Path:
    # Resolving follows every symlink, so a link that leads out of the root is refused.
    root = Path(allowed_root).resolve()
    try:
        path = target.path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop before 3.13
        raise target.error(f"its path cannot be resolved ({exc})",
                           "check the state directory") from exc
    if not path.is_relative_to(root):
        raise target.error(
            f"it resolves to {path}, outside the run's state directories ({root}); only files "
            "from the run's own state directories are ever unpickled",
            "pass the state directory of this run (files are never loaded from elsewhere)",
        )
    return path


@contextmanager
def _opened(target: _Target, path: Path) -> Iterator[int]:
    """The file opened for reading (never through a symlink), closed on leaving."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_FLAGS | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise target.error("the file does not exist",
                           "run the step that produces it first", path) from None
    except OSError as exc:
        raise target.error(f"it cannot be opened ({exc})", "check the file's permissions",
                           path) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _map_file(target: _Target, path: Path, fd: int) -> mmap.mmap | bytearray:
    """The file's bytes: a private copy-on-write mapping, lazily paged in.

    ACCESS_COPY makes the arrays built on it writable without ever writing to the file.
    """
    size = os.fstat(fd).st_size
    if size < _PREFIX.size:
        raise target.error(f"the file is truncated ({size} bytes)",
                           "re-run the step that produces it", path)
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):  # a filesystem without mmap support
        return _read_all(fd, size)


def _read_all(fd: int, size: int) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while view.nbytes:
            count = f.readinto(view)
            if not count:
                break
            view = view[count:]
    return data


def _check_record(target: _Target, path: Path, data: mmap.mmap | bytearray,
                  fd: int | None = None) -> None:
    """The file is the one its manifest lists: same size, same digest. Nothing is unpickled
    before this holds (a flipped byte, a replaced or swapped file, a truncation)."""
    record = target.record
    assert record is not None
    algorithm, _, _ = record.hash.partition(":")
    if not record.hash:
        raise target.error("its manifest lists no digest for it, so it cannot be verified",
                           target.rerun(), path)
    if algorithm not in _BLOCK_HASHES:
        hint = ("install blake3 where the steps run (pip install blake3)"
                if algorithm.startswith("blake3") else target.rerun())
        raise target.error(f"its digest uses {algorithm!r}, which this runtime cannot compute",
                           hint, path)
    if len(data) != record.bytes:
        raise target.error(
            f"the file is damaged or was replaced: {len(data)} bytes, its producer wrote "
            f"{record.bytes}", target.rerun(), path)
    # A mapped file is read ahead through its descriptor while it is hashed.
    source = None if isinstance(data, bytearray) else fd
    if digest_buffer(data, algorithm, source=source) != record.hash:
        raise target.error(
            "the file is damaged or was replaced: its bytes differ from those its producer "
            "wrote (digest mismatch); it was not loaded", target.rerun(), path)


def digest_buffer(data: mmap.mmap | bytearray | bytes, algorithm: str = HASH_ALGORITHM, *,
                  source: int | None = None) -> str:
    """The content hash of bytes in memory (a mapped file is paged in as it is hashed).

    ``source``: a descriptor of the file ``data`` maps. A thread then reads the file ahead
    into the page cache (see _ReadAhead) and the blocks are hashed behind it, in order, so
    that a cold file is read as fast as the disk delivers it and hashing hides behind the
    reading. Blocks hash on up to 4 threads: the hash functions release the GIL.
    """
    new = _BLOCK_HASHES[algorithm]
    view = memoryview(data)
    try:
        if len(view) < _THREADED_HASH_MIN:
            digests = [new(view[start : start + _HASH_BLOCK]).digest()
                       for start in range(0, len(view), _HASH_BLOCK)]
        else:
            digests = _hash_blocks(view, new, source)
    finally:
        view.release()
    return f"{algorithm}:{new(b''.join(digests)).hexdigest()}"


def _hash_blocks(view: memoryview, new: Callable[..., Any], source: int | None) -> list[bytes]:
    size = len(view)
    blocks = _Blocks(size, ready=0 if source is not None else size)
    digests = [b""] * blocks.count
    helpers: list[threading.Thread] = []
    most = min(4, max(_cores(), 2)) - 1
    errors: list[BaseException] = []

    def work(wait: bool) -> None:
        try:
            while (index := blocks.claim(wait)) is not None:
                start = index * _HASH_BLOCK
                digests[index] = new(view[start : start + _HASH_BLOCK]).digest()
                if (wait and blocks.backlog() >= 2
                        and sum(t.is_alive() for t in helpers) < most):
                    add_helper()  # hashing lags the reading: another thread
        except BaseException as exc:  # re-raised in the caller's thread
            blocks.cancel()
            errors.append(exc)

    def add_helper() -> None:
        thread = threading.Thread(target=work, args=(False,), daemon=True)
        thread.start()
        helpers.append(thread)

    reader = None
    if source is not None:
        reader = threading.Thread(target=_ReadAhead(source, size, blocks).run, daemon=True)
        reader.start()
    else:  # everything is in memory (or faults in on its own): hash on every thread now
        for _ in range(most):
            add_helper()
    try:
        work(True)
    finally:
        blocks.cancel()
        for thread in [*helpers, *([reader] if reader else [])]:
            thread.join()
    if errors:
        raise errors[0]
    return digests


class _Blocks:
    """The hash blocks of ``size`` bytes, claimed in order once they are read ahead."""

    def __init__(self, size: int, ready: int) -> None:
        self.size = size
        self.count = -(-size // _HASH_BLOCK)
        self._ready = ready  # bytes from the start that are in the page cache
        self._next = 0
        self._cancelled = False
        self._changed = threading.Condition()

    def claim(self, wait: bool) -> int | None:
        """The next block to hash; None when there is none (or, not ``wait``ing, none ready)."""
        with self._changed:
            while not self._cancelled and self._next < self.count:
                if self._ready >= min((self._next + 1) * _HASH_BLOCK, self.size):
                    self._next += 1
                    self._changed.notify_all()  # the reader may be waiting for room
                    return self._next - 1
                if not wait:
                    break
                self._changed.wait()
            return None

    def backlog(self) -> int:
        """Blocks read ahead and not yet claimed."""
        return max(0, self._ready // _HASH_BLOCK - self._next)

    def room(self, offset: int) -> bool:
        """Wait until reading on from ``offset`` stays within _READ_AHEAD_MAX of the hashing
        (a file larger than the page cache would otherwise be read twice); False: stop."""
        with self._changed:
            while not self._cancelled and offset - self._next * _HASH_BLOCK >= _READ_AHEAD_MAX:
                self._changed.wait()
            return not self._cancelled

    def read_up_to(self, offset: int) -> None:
        with self._changed:
            self._ready = max(self._ready, offset)
            self._changed.notify_all()

    def cancel(self) -> None:
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()


_READ_AHEAD_CHUNK = 8 * 1024 * 1024
_READ_AHEAD_MAX = 256 * 1024 * 1024  # how far the reading may run ahead of the hashing


class _ReadAhead:
    """Reads a file into the page cache ahead of its hashing, without copying it anywhere.

    sendfile() to /dev/null goes through the kernel's read path: sequential readahead
    keeps the disk busy whatever the hashing threads do, the pages land in large folios
    that the mapping then shares, and nothing is copied (the null device drops what it is
    spliced). Hashing threads faulting the mapping in themselves would each be one stream
    of page faults at a different place in the file, which the kernel's readahead follows
    badly (a cold 1 GiB file verified at ~0.5 of the disk's rate, against ~1.0 this way).
    Where sendfile() or /dev/null is missing, or fails, the hashing faults pages in itself.
    """

    def __init__(self, fd: int, size: int, blocks: _Blocks) -> None:
        self._fd = fd
        self._size = size
        self._blocks = blocks

    def run(self) -> None:
        offset = 0
        try:
            sendfile = getattr(os, "sendfile", None)
            if sendfile is None:
                return
            sink = os.open(os.devnull, os.O_WRONLY | _O_FLAGS)
            try:
                while offset < self._size and self._blocks.room(offset):
                    sent = sendfile(sink, self._fd, offset,
                                    min(_READ_AHEAD_CHUNK, self._size - offset))
                    if sent <= 0:
                        return
                    offset += sent
                    self._blocks.read_up_to(offset)
            finally:
                os.close(sink)
        except OSError:
            return
        finally:
            self._blocks.read_up_to(self._size)  # what is left, the hashing faults in


def check_state(state_dir: PathLike, manifest: Mapping[str, Any], *,
                allowed_root: PathLike, producer: str | None = None) -> None:
    """Check every file an authenticated manifest lists, without unpickling anything.

    Raises StateError naming the first variable whose file is missing or damaged.
    """
    directory = Path(state_dir)
    for entry in manifest.get("variables", {}).values():
        target = _locate(entry, directory, None, producer)
        path = _inside_root(target, allowed_root)
        with _opened(target, path) as fd:
            data = _map_file(target, path, fd)
            try:
                _check_record(target, path, data, fd)
            finally:
                if not isinstance(data, bytearray):
                    data.close()


def _read_header(target: _Target, path: Path, data: mmap.mmap | bytearray) -> _Header:
    def corrupt(what: str) -> StateError:
        return target.error(what, "re-run the step that produces it", path)

    magic, version, length = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise corrupt("it is not a kale_py state file (wrong magic number)")
    if version != FORMAT_VERSION:
        raise target.error(
            f"it has format version {version}, this runtime reads version {FORMAT_VERSION}",
            "run all steps with the same kale_py version (re-run the producing step)", path)
    if length > min(_MAX_HEADER, len(data) - _PREFIX.size):
        raise corrupt("the file is truncated or its header is damaged")
    try:
        raw = json.loads(bytes(data[_PREFIX.size : _PREFIX.size + length]))
        header = _Header(str(raw["pickler"]), str(raw["name"]), str(raw["type"]),
                         _span(raw["main"]), [_span(b) for b in raw["buffers"]])
    except (ValueError, KeyError, TypeError) as exc:
        raise corrupt(f"its header is damaged ({exc})") from None
    spans = [header.main, *header.buffers]
    if header.main[0] != _PREFIX.size + length or max(o + n for o, n in spans) != len(data):
        raise corrupt(f"the file is truncated or damaged ({len(data)} bytes, "
                      f"the header describes {max(o + n for o, n in spans)})")
    if header.pickler not in ("pickle5", "cloudpickle", "dill"):
        raise corrupt(f"it names an unknown pickler {header.pickler!r}")
    return header


def _span(value: Any) -> tuple[int, int]:
    offset, length = value
    if not all(type(v) is int and v >= 0 for v in (offset, length)):
        raise ValueError(f"bad span {value!r}")
    return offset, length


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Unpickling millions of containers triggers full collections over and over (2.5-4x)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _unpickler(pickler: str, main: memoryview | bytes, buffers: Sequence[memoryview],
               namespace: dict[str, Any] | None = None) -> Callable[[], object]:
    """The unpickling call, without a Python frame of this module (see restore_in).

    ``namespace``: the loading step's globals, for notebook code saved by value."""
    if pickler == "dill":
        # dill's own unpickler restores what its pickler special-cases (e.g. __main__ globals).
        dill = importlib.import_module("dill")
        return dill.Unpickler(io.BytesIO(main), buffers=buffers).load  # type: ignore[no-any-return]
    if pickler == "cloudpickle" and namespace is not None:
        return _CodeIntoNamespace(io.BytesIO(main), list(buffers), namespace).load
    # cloudpickle output is a standard pickle stream; its helpers import by themselves.
    return functools.partial(pickle.loads, main, buffers=buffers)


# Restore code that evaluates names looks for them in its caller's frames: statsmodels'
# formula models re-evaluate their formula when unpickled, trying the frames 0 to 4 above
# them (patsy's EvalEnvironment.capture). Unpickling runs under a few frames whose
# globals are the step's namespace, as it would in the notebook's kernel.
_RESTORE_FRAMES = 6
_RESTORE_CODE = compile(
    "def _kale_py_restore(_kale_py_self, _kale_py_depth, _kale_py_call):\n"
    "    if _kale_py_depth:\n"
    "        return _kale_py_self(_kale_py_self, _kale_py_depth - 1, _kale_py_call)\n"
    "    return _kale_py_call()\n",
    "<kale_py restore>", "exec")


def restore_in(namespace: dict[str, Any] | None, call: Callable[[], object]) -> object:
    """Run ``call`` (an unpickling) with the frames above it seeing ``namespace``."""
    if namespace is None:
        return call()
    namespace.setdefault("__builtins__", __builtins__)  # as exec() does
    scope: dict[str, Any] = {}
    exec(_RESTORE_CODE, scope)  # noqa: S102 - a fixed trampoline, no user input
    restore = types.FunctionType(scope["_kale_py_restore"].__code__, namespace)
    return restore(restore, _RESTORE_FRAMES - 1, call)


def _restore_code_failure(exc: BaseException) -> str | None:
    """Where an object's own restore code raised: ``module.function``, or None.

    pickle's C unpickler leaves no frame: the frames after this module's are the
    object's (``__setstate__``, ``__reduce__``'s callable, what they call). A damaged file
    fails inside pickle itself, with no such frame."""
    frames = [f for f, _ in traceback.walk_tb(exc.__traceback__)]
    outside = [f for f in frames if f.f_code.co_filename not in _OWN_FILES
               and f.f_globals.get("__name__") not in ("pickle", "dill._dill", "dill")]
    if not outside:
        return None
    first = outside[0]
    module = first.f_globals.get("__name__", "?")
    return f"{module}.{first.f_code.co_name}"


_OWN_FILES = frozenset({__file__, "<kale_py restore>"})


class _CodeIntoNamespace(pickle.Unpickler):
    """Unpickles cloudpickle output so that notebook code reads the step's globals.

    cloudpickle gives each function saved by value a private dict of the globals it read
    when saved: a method, closure or lambda loaded by a later step would not see what
    that step binds or loads (the notebook's code does). Functions of the notebook's
    ``__main__`` get the step's namespace instead; their saved globals only fill in
    names the namespace lacks.
    """

    def __init__(self, file: io.BytesIO, buffers: list[memoryview],
                 namespace: dict[str, Any]) -> None:
        super().__init__(file, buffers=buffers)
        self._namespace = namespace

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if module == "cloudpickle.cloudpickle":
            if name == "_make_function":
                return self._make_function
            if name == "_function_setstate":
                return functools.partial(self._function_setstate, found)
        return found

    def _make_function(self, code: types.CodeType, saved: dict[str, Any], name: str,
                       defaults: Any, closure: Any) -> types.FunctionType:
        target = self._namespace if saved.get("__name__") == _NOTEBOOK_MODULE else saved
        target.setdefault("__builtins__", builtins)
        return types.FunctionType(code, target, name, defaults, closure)

    def _function_setstate(self, setstate: Callable[[Any, Any], None], function: Any,
                           state: Any) -> None:
        if getattr(function, "__globals__", None) is not self._namespace:
            setstate(function, state)
            return
        attributes, slots = state
        slots = dict(slots)
        for key, value in slots.pop("__globals__", {}).items():
            self._namespace.setdefault(key, value)
        kept = self._namespace.get("__builtins__", builtins)
        setstate(function, (attributes, {**slots, "__globals__": {}}))
        self._namespace["__builtins__"] = kept


def _unpickling_failed(target: _Target, path: Path, exc: Exception) -> StateError:
    message = f"{type(exc).__name__}: {exc}"
    where = _restore_code_failure(exc)
    if where is not None and not isinstance(exc, ImportError):
        return target.error(
            f"restoring it raised {message} in the object's own restore code ({where}), "
            "not because the file is damaged", _restore_hint(exc), path)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        module = exc.name.partition(".")[0]
        if module in ("cloudpickle", "dill"):
            hint = f"it was saved by value with {module}: install {module} where the steps run"
        else:
            hint = (f"install {module} in this step's image: every step needs the libraries "
                    "the notebook's kernel has")
        return target.error(f"it needs the module {exc.name!r} ({message})", hint, path)
    main = repr(sys.modules.get(_NOTEBOOK_MODULE))  # "<module 'pytest.__main__'...>" under -m
    if isinstance(exc, AttributeError) and (f"<module '{_NOTEBOOK_MODULE}'" in str(exc)
                                            or main in str(exc)):
        return target.error(
            f"it refers to a class or function from a notebook cell that this step does not "
            f"run ({message})",
            "move the class or function definition to a cell tagged functions, so every step "
            "defines it", path)
    if isinstance(exc, (ImportError, AttributeError)):
        return target.error(
            f"something it refers to is missing in this step ({message})",
            "use the same library versions in every step; a class or function from a notebook "
            "cell belongs in a cell tagged functions, so every step defines it", path)
    return target.error(f"the file is corrupt or unreadable ({message})",
                        "re-run the step that produces it", path)


def _restore_hint(exc: BaseException) -> str:
    if isinstance(exc, NameError) or "NameError" in str(exc):
        return ("the object evaluates names of the notebook when it is restored (a formula "
                "model re-evaluates its formula): define what it names in an imports or "
                "functions cell, or use it in this step's code so the step receives it")
    return ("the object cannot be rebuilt in another process: create it in the step that "
            "uses it, or pass what it is made of instead")


# --- manifests ------------------------------------------------------------------------------


def write_manifest(state_dir: PathLike, step: str, records: Iterable[VariableRecord], *,
                   key: bytes | None = None, **extra: Any) -> Path:
    """Write ``<state_dir>/manifest.json`` atomically and return its path.

    The manifest is {"step", "format_version", "variables": {name: record}, **extra};
    `extra` values must be JSON-serialisable. With `key` (the user's key, see
    kale_py.integrity) it also carries ``"mac"``, an HMAC of everything else, so that
    read_manifest can tell it from a manifest written by anyone else.
    ``manifest_digest(path)`` is what a Kubeflow step reports through its output parameter.
    """
    reserved = {"step", "format_version", "variables", "mac"} & extra.keys()
    if reserved:
        raise TypeError(f"write_manifest() got reserved keys in extra: {sorted(reserved)}")
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "step": step,
        "format_version": FORMAT_VERSION,
        "variables": {record.name: _entry(record) for record in records},
        **extra,
    }
    if key is not None:
        manifest["mac"] = manifest_mac(manifest, key)
    text = json.dumps(manifest, indent=2) + "\n"
    path = directory / MANIFEST_NAME
    file = _PendingFile(directory, MANIFEST_NAME, [text.encode()], len(text))
    try:
        file.write()
        file.sync()
        file.commit()
    except BaseException:
        file.abort()
        raise
    _fsync_directory(directory)
    return path


def _entry(record: VariableRecord) -> dict[str, Any]:
    entry = asdict(record)
    if not record.group:
        del entry["group"]  # a variable alone in its file: the entry of format 1 as it was
    return entry


def manifest_mac(manifest: Mapping[str, Any], key: bytes) -> str:
    """The HMAC of a manifest's content (everything but its ``mac``), in canonical JSON."""
    import hmac

    body = {k: v for k, v in manifest.items() if k != "mac"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return f"{_MAC_ALGORITHM}:{hmac.new(key, text.encode(), hashlib.sha256).hexdigest()}"


def manifest_digest(path: PathLike) -> str:
    """The SHA-256 of a manifest file's bytes: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(state_dir: PathLike, *, key: bytes | None = None, digest: str | None = None,
                  producer: str | None = None) -> dict[str, Any]:
    """Read a step's manifest; StateError if it is missing, damaged or of another version.

    With `key`, the manifest must carry a valid MAC under it (a local run: written by this
    user's runs); with `digest`, its bytes must have that manifest_digest (a Kubeflow run:
    the digest its producer reported through KFP's parameters). `producer` names the step
    that wrote it in the errors and is checked against the manifest's ``step``.
    """
    path = Path(state_dir) / MANIFEST_NAME
    rerun = (f"re-run step {producer!r}, which writes it (nb2pipe run --only {producer})"
             if producer else "re-run the step that writes it")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"no manifest at {path}: the step that writes it has not finished. "
                         "Hint: run the producing step first", path=str(path),
                         step=producer) from None
    except OSError as exc:
        raise StateError(f"cannot read the manifest {path}: {exc}. Hint: {rerun}",
                         path=str(path), step=producer) from exc
    if digest is not None and "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
        raise StateError(f"the manifest {path} is damaged or was replaced: its digest differs "
                         f"from the one its step reported; nothing was loaded. Hint: {rerun}",
                         path=str(path), step=producer)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise StateError(f"cannot read the manifest {path}: {exc}. Hint: {rerun}",
                         path=str(path), step=producer) from exc
    if not (isinstance(manifest, dict) and isinstance(manifest.get("variables"), dict)):
        raise StateError(f"{path} is not a state manifest. Hint: {rerun}", path=str(path),
                         step=producer)
    if key is not None:
        _check_mac(manifest, key, path, rerun, producer)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StateError(
            f"{path} has format version {manifest.get('format_version')!r}, this runtime "
            f"reads {FORMAT_VERSION}. Hint: run all steps with the same kale_py version",
            step=manifest.get("step"), path=str(path))
    if producer is not None and manifest.get("step") not in (producer, None):
        raise StateError(f"the manifest {path} belongs to step {manifest.get('step')!r}, not "
                         f"{producer!r}; nothing was loaded. Hint: {rerun}", path=str(path),
                         step=producer)
    return manifest


def _check_mac(manifest: Mapping[str, Any], key: bytes, path: Path, rerun: str,
               producer: str | None) -> None:
    import hmac

    mac = manifest.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, manifest_mac(manifest, key)):
        what = "carries no signature" if not mac else "has a signature that does not match"
        raise StateError(
            f"the manifest {path} {what}: it was edited, or written by someone else than "
            f"this user's runs, so none of its files is loaded. Hint: {rerun}",
            path=str(path), step=producer)


def read_key(path: PathLike) -> bytes:
    """The user's key for signing run records (see kale_py.integrity); StateError if unreadable."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError) as exc:
        raise StateError(
            f"cannot read the key that signs this user's run records at {path}: {exc}. Hint: "
            "make it readable by you alone (chmod 600), or delete it to make a new one "
            "(earlier runs and cache entries are then recomputed)", path=str(path)) from exc
    if len(key) < 16:
        raise StateError(f"the key at {path} is too short ({len(key)} bytes). Hint: delete it "
                         "to make a new one", path=str(path))
    return key
