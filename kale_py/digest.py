"""Stable digests of values, for comparing a kernel run with a pipeline run.

A digest is a small JSON structure, the same in any process for equal values:

- numbers keep their value (floats are compared to a relative tolerance by :func:`same`),
- arrays, DataFrames and Series are digested by content (dtype, shape, a hash of the
  bytes; small float arrays keep their values, so that they too compare to a tolerance),
- estimators (anything with ``get_params``) by their parameters and fitted attributes
  (the attributes ending in ``_``),
- containers element by element, other objects by their attributes or pickled bytes,
- what cannot be looked into (open files, generators, figures, unpicklable objects) by type.

The module uses the standard library only and finds numpy and pandas in ``sys.modules``:
``nb2pipe verify`` runs its source inside the Jupyter kernel as it is, and the step
runtime imports it when ``KALE_PY_EXPORT_DIGESTS`` asks for digests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import pickle
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

# ``functools.lru_cache`` and ``functools.cache`` wrap a function in this type.
_CACHED = type(functools.lru_cache()(lambda: None))
MAX_DEPTH = 8
MAX_ITEMS = 2000  # larger containers are digested by a hash of their items' digests
MAX_FLOATS = 10000  # float arrays up to this size keep their values

Digest = Any  # a JSON value: [kind, ...]


def digest_all(values: Mapping[str, Any], names: Iterable[str] | None = None) -> dict[str, Digest]:
    """The digest of each named value (all of ``values`` by default); modules left out."""
    chosen = values.keys() if names is None else [n for n in names if n in values]
    out = {}
    for name in chosen:
        value = values[name]
        if issubclass(type(value), types.ModuleType):
            continue
        try:
            out[name] = digest(value)
        except Exception:  # noqa: BLE001 - a value that breaks when looked into: its type
            out[name] = ["type", _type_name(value)]
    return out


def digest(obj: Any, depth: int = 0) -> Digest:
    """The stable digest of one value."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return ["v", obj if not isinstance(obj, int) or abs(obj) < 2**53 else str(obj)]
    if isinstance(obj, float):
        return ["f", _float(float(obj))]
    if isinstance(obj, complex):
        return ["c", _float(obj.real), _float(obj.imag)]
    if isinstance(obj, (bytes, bytearray)):
        return ["bytes", len(obj), _sha(bytes(obj))]
    if depth > MAX_DEPTH:
        return ["type", _type_name(obj)]
    for check, handler in _LIBRARY_HANDLERS:
        if check(obj):
            return handler(obj, depth)
    if isinstance(obj, (list, tuple, dict)) and len(obj) > MAX_ITEMS:
        return _large(obj, depth)
    if isinstance(obj, (list, tuple)):
        return _sequence(type(obj).__name__, [digest(x, depth + 1) for x in obj])
    if isinstance(obj, (set, frozenset)):
        items = sorted((digest(x, depth + 1) for x in obj), key=_canonical)
        return _sequence(type(obj).__name__, items)
    if isinstance(obj, dict):
        pairs = [[digest(k, depth + 1), digest(v, depth + 1)] for k, v in obj.items()]
        return _sequence("dict", pairs)
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type, types.MethodType)):
        return ["code", getattr(obj, "__qualname__", repr(obj))]  # both runs ran the same code
    if isinstance(obj, _CACHED):
        return ["code", getattr(obj, "__qualname__", repr(obj))]  # ``lru_cache``: code too
    return _object(obj, depth)


def _large(obj: Any, depth: int) -> Digest:
    """A large container: by its pickled bytes (fast, in C), else item by item, hashed."""
    kind = type(obj).__name__
    try:
        return [kind + "-pickle", len(obj), _sha(pickle.dumps(obj, protocol=4))]
    except Exception:  # noqa: BLE001 - some item does not pickle: digest each one
        pass
    items = obj.items() if isinstance(obj, dict) else obj
    return [
        kind + "-hash",
        len(obj),
        _sha(_canonical([digest(x, depth + 1) for x in items]).encode()),
    ]


def _float(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)  # "nan", "inf", "-inf"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(d: Digest) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def _sequence(kind: str, items: list[Digest]) -> Digest:
    if len(items) > MAX_ITEMS:
        return [kind + "-hash", len(items), _sha(_canonical(items).encode())]
    return [kind, items]


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# --- numpy, pandas, estimators -------------------------------------------------------------------


def _is_ndarray(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, (np.ndarray, np.generic))


def _ndarray(obj: Any, depth: int) -> Digest:
    np = sys.modules["numpy"]
    if isinstance(obj, np.generic):
        return digest(obj.item(), depth) if obj.dtype.kind in "biufcUS" else ["v", str(obj)]
    if obj.dtype.kind == "O":
        items = obj.tolist()
        return ["ndarray", "object", list(obj.shape), digest(items, depth + 1)]
    if obj.dtype.kind in "fc" and obj.size <= MAX_FLOATS:
        parts = [obj.real, obj.imag] if obj.dtype.kind == "c" else [obj]
        values = [_float(float(x)) for part in parts for x in part.ravel().tolist()]
        return ["ndarray-f", obj.dtype.str, list(obj.shape), values]
    data = np.ascontiguousarray(obj)
    try:
        raw = data.tobytes()
    except (TypeError, ValueError):
        return ["type", _type_name(obj)]
    return ["ndarray", obj.dtype.str, list(obj.shape), _sha(raw)]


def _is_pandas(obj: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(obj, (pd.DataFrame, pd.Series, pd.Index))


def _pandas(obj: Any, depth: int) -> Digest:
    pd = sys.modules["pandas"]
    kind = type(obj).__name__
    if isinstance(obj, pd.Index):
        return [kind, str(obj.dtype), digest(obj.to_numpy(), depth + 1)]
    if isinstance(obj, pd.Series):
        frame = obj.to_frame(name=0)
        names: Any = digest(obj.name, depth + 1)
    else:
        frame = obj
        names = [digest(c, depth + 1) for c in frame.columns]
    columns = [
        [str(frame.dtypes.iloc[i]), digest(frame.iloc[:, i].to_numpy(), depth + 1)]
        for i in range(frame.shape[1])
    ]
    return [kind, list(obj.shape), names, _pandas(obj.index, depth + 1), columns]


def _is_estimator(obj: Any) -> bool:
    return not isinstance(obj, type) and callable(getattr(obj, "get_params", None))


def _estimator(obj: Any, depth: int) -> Digest:
    try:
        params = obj.get_params(deep=False)
    except Exception:  # noqa: BLE001 - a get_params that does not follow sklearn's protocol
        return _object(obj, depth)
    fitted = (
        {k: v for k, v in sorted(vars(obj).items()) if k.endswith("_") and not k.startswith("_")}
        if hasattr(obj, "__dict__")
        else {}
    )
    return [
        "estimator",
        _type_name(obj),
        digest(params, depth + 1),
        digest(fitted, depth + 1),
    ]


def _is_figure_like(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] in ("matplotlib", "seaborn", "plotly")


_LIBRARY_HANDLERS = (
    (_is_ndarray, _ndarray),
    (_is_pandas, _pandas),
    (_is_figure_like, lambda obj, depth: ["type", _type_name(obj)]),
    (_is_estimator, _estimator),
)


# --- other objects -----------------------------------------------------------------------------


def _object(obj: Any, depth: int) -> Digest:
    """By attributes when it has plain ones, else by pickled bytes, else by type."""
    cls: Any = type(obj)
    if cls.__eq__ is not object.__eq__ and cls.__hash__ is not None:
        try:
            return ["pickle", _type_name(obj), _sha(pickle.dumps(obj, protocol=4))]
        except Exception:  # noqa: BLE001 - not picklable: compared by type below
            return ["type", _type_name(obj)]
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        return ["object", _type_name(obj), digest(dict(sorted(attributes.items())), depth + 1)]
    try:
        reduced = obj.__reduce_ex__(4)
    except Exception:  # noqa: BLE001 - not picklable
        return ["type", _type_name(obj)]
    if isinstance(reduced, tuple) and len(reduced) > 2:
        return ["object", _type_name(obj), digest(list(reduced[1:3]), depth + 1)]
    return ["type", _type_name(obj)]


# --- comparison --------------------------------------------------------------------------------


def same(a: Digest, b: Digest, rtol: float = 1e-7, atol: float = 1e-12) -> bool:
    """Whether two digests are of equal values, floats within the tolerance."""
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rtol, atol) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def describe(d: Digest) -> str:
    """A short human description of a digested value, for reports."""
    text = _describe(d)
    return text if len(text) <= 120 else text[:117] + "..."


def _describe(d: Digest) -> str:
    if d is None:
        return "(not defined)"
    if not isinstance(d, list) or not d:
        return repr(d)
    kind = d[0]
    if kind in ("v", "f"):
        return repr(d[1])
    if kind in ("ndarray", "ndarray-f"):
        head = f"array {d[1]} shape {tuple(d[2])}"
        if kind == "ndarray-f":
            return f"{head} {d[3][:4]}{'...' if len(d[3]) > 4 else ''}"
        return f"{head} sha256 {str(d[3])[:12]}" if isinstance(d[3], str) else head
    if kind in ("DataFrame", "Series"):
        return f"{kind} shape {tuple(d[1])}"
    if kind == "estimator":
        return f"{d[1]} (parameters and fitted attributes)"
    if kind in ("object", "pickle", "type", "code"):
        return f"{d[0]} {d[1]}"
    if kind in ("list", "tuple", "dict", "set", "frozenset"):
        return (
            f"{kind} of {len(d[1])}: "
            + ", ".join(_describe(x) for x in d[1][:3])
            + (", ..." if len(d[1]) > 3 else "")
        )
    return _canonical(d)
