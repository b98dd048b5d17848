"""State outside Python variables: what a step does that later steps cannot see.

Each step is a fresh process, so a random seed, an environment variable or a working
directory set in one step does not carry over, and a file written by one step is only
there for another if that one runs after it. ``find_hazards`` spots the common forms in
one cell; :mod:`kale_py.graph` decides which are a problem for the pipeline.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

# Cheap pre-check: only cells mentioning one of these are parsed again.
_PREFILTER = re.compile(
    r"seed|random|environ|putenv|chdir|open\(|to_\w+\(|read_\w+\(|save|load|write"
)

_SEED_CALLS = {"seed", "manual_seed", "set_seed", "manual_seed_all"}
_WRITE_METHODS = {
    "to_csv",
    "to_parquet",
    "to_json",
    "to_excel",
    "to_pickle",
    "to_feather",
    "to_hdf",
    "savefig",
    "write_text",
    "write_bytes",
    "save",
    "savez",
    "savez_compressed",
    "dump",
    "to_netcdf",
}
_READ_FUNCS = {
    "read_csv",
    "read_parquet",
    "read_json",
    "read_excel",
    "read_pickle",
    "read_feather",
    "read_hdf",
    "read_text",
    "read_bytes",
    "load",
    "loadtxt",
    "genfromtxt",
    "imread",
    "open_dataset",
}


@dataclass(frozen=True)
class Hazard:
    kind: str  # "seed" | "random" | "environment" | "write" | "read"
    line: int
    detail: str  # the module for seeds/random draws, the path for files, the call otherwise


def might_have_hazards(source: str) -> bool:
    """A cheap test: only cells that mention a hazard's vocabulary are parsed again."""
    return _PREFILTER.search(source) is not None


def find_hazards(source: str) -> list[Hazard]:
    """Hazards in one cell's (magic-free) source; a cell that does not parse has none."""
    if not might_have_hazards(source):
        return []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    found: list[Hazard] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found.extend(_call_hazards(node))
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_is_environ_item(t) for t in targets):
                found.append(Hazard("environment", node.lineno, "os.environ"))
    return sorted(found, key=lambda h: h.line)


def _call_hazards(call: ast.Call) -> list[Hazard]:
    dotted = _dotted(call.func)
    if not dotted:
        return []
    name, line = dotted[-1], call.lineno
    if name in _SEED_CALLS and len(dotted) > 1:
        return [Hazard("seed", line, _rng_family(dotted))]
    if len(dotted) > 1 and dotted[-2] == "random" or dotted[0] == "random" and len(dotted) == 2:
        return [Hazard("random", line, _rng_family(dotted))]
    if (
        dotted[:2] == ["os", "environ"]
        and name in ("update", "setdefault", "pop", "clear")
        or dotted in (["os", "putenv"], ["os", "chdir"], ["os", "unsetenv"])
    ):
        return [Hazard("environment", line, ".".join(dotted))]
    path = _literal_path(call)
    if path is None:
        return []
    if name == "open":
        mode = _open_mode(call)
        return [Hazard("write" if any(c in mode for c in "wax+") else "read", line, path)]
    if name in _WRITE_METHODS:
        return [Hazard("write", line, path)]
    if name in _READ_FUNCS:
        return [Hazard("read", line, path)]
    return []


def _rng_family(dotted: list[str]) -> str:
    head = dotted[0]
    return {
        "np": "numpy",
        "numpy": "numpy",
        "torch": "torch",
        "tf": "tensorflow",
        "tensorflow": "tensorflow",
    }.get(head, "random")


def _dotted(node: ast.expr) -> list[str]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    if isinstance(node, ast.Call):  # Path("x").write_text(...)
        inner = _dotted(node.func)
        return [*inner, *parts[::-1]] if inner else []
    return []


def _literal_path(call: ast.Call) -> str | None:
    """The file a call names with a string literal: its first argument, or ``Path("x")``."""
    candidates: list[ast.expr] = list(call.args[:2])
    candidates += [
        k.value
        for k in call.keywords
        if k.arg in ("path", "path_or_buf", "fname", "file", "filepath_or_buffer")
    ]
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
        candidates = list(func.value.args[:1]) + candidates  # Path("x").write_text()
    for node in candidates:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _looks_like_path(node.value)
        ):
            return node.value
    return None


def _looks_like_path(text: str) -> bool:
    return (
        bool(text)
        and len(text) < 4096
        and "\n" not in text
        and ("." in text.rsplit("/", 1)[-1] or "/" in text)
    )


def _open_mode(call: ast.Call) -> str:
    mode: ast.expr | None = call.args[1] if len(call.args) > 1 else None
    for keyword in call.keywords:
        if keyword.arg == "mode":
            mode = keyword.value
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return mode.value
    return "r"


def _is_environ_item(target: ast.expr) -> bool:
    return isinstance(target, ast.Subscript) and _dotted(target.value) == ["os", "environ"]
