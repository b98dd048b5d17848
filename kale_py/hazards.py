"""State outside Python variables: what a step does to its process and its files.

Each step is a process of its own. Library settings (``sklearn.set_config``,
``pd.set_option``, ``plt.rcParams``, ``warnings.filterwarnings``, ...) and the global random
generators (``random``, ``np.random``, ``torch``) are carried to later steps as
pseudo-variables (see :mod:`kale_py.process_state`); an environment variable, a working
directory or another library's process-wide setting is not, and a file written by one
step is only there for another if that one runs after it. ``find_hazards`` spots the
common forms in one cell; :mod:`kale_py.graph` decides what each means for the pipeline.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

# Cheap pre-check: only cells mentioning one of these are parsed again: seed, random,
# environ, putenv, chdir, open(, to_*(, read_*(, save, load, write, set_, seterr, rcParams,
# rc(, style, warn, basicConfig, disable, options, sample, split, rand, shuffle, resample,
# normal, bernoulli, multinomial, setrecursionlimit, setlocale. Written by first letters
# (random and resample contain rand and sample), so that each position is tried fast.
_PREFILTER = re.compile(
    r"s(?:e(?:ed|t(?:_|err|recursionlimit|locale))|ave|tyle|ample|plit|huffle)"
    r"|r(?:and|ead_\w+\(|c(?:\(|Params))|environ|putenv|chdir|o(?:pen\(|ptions)|to_\w+\("
    r"|load|w(?:rite|arn)|b(?:asicConfig|ernoulli)|disable|normal|multinomial"
)

_SEED_CALLS = {"seed", "manual_seed", "set_seed", "manual_seed_all", "setstate", "set_state",
               "set_rng_state"}
# Members of `random` / `np.random` that do not use the global generator.
_NOT_DRAWS = {"default_rng", "RandomState", "Generator", "SeedSequence", "BitGenerator",
              "PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64", "Random", "SystemRandom",
              "getstate", "get_state", "get_rng_state"}
_TORCH_DRAWS = {"rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial",
                "poisson", "rand_like", "randn_like", "randint_like"}
# Library calls that draw from numpy's global generator unless given a random_state.
_NUMPY_DRAWING_CALLS = {"train_test_split", "shuffle", "resample", "sample"}
# Calls that change a library's process-wide settings, by (module alias, function).
_SETTING_CALLS: dict[str, str] = {
    "set_config": "sklearn",
    "set_option": "pandas",
    "reset_option": "pandas",
    "set_printoptions": "numpy",
    "seterr": "numpy",
    "rc": "matplotlib",
    "rcdefaults": "matplotlib",
    "rc_file": "matplotlib",
    "filterwarnings": "warnings",
    "simplefilter": "warnings",
    "resetwarnings": "warnings",
    "basicConfig": "logging",
    "set_default_dtype": "torch",
    "use_deterministic_algorithms": "torch",
}
_SEABORN_SETTERS = {"set", "set_theme", "set_style", "set_context", "set_palette"}
# Process-wide settings no step after this one sees (not carried): NB105.
_UNCARRIED_CALLS = {
    ("sys", "setrecursionlimit"),
    ("locale", "setlocale"),
    ("os", "umask"),
    ("torch", "set_num_threads"),
    ("torch", "set_printoptions"),
    ("tf", "config"),
    ("tensorflow", "config"),
}
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
    kind: str  # "seed" | "random" | "setting" | "uncarried" | "environment" | "write" | "read"
    line: int
    # the generator's family for seeds and draws ("random", "numpy", "torch", "tensorflow"),
    # the library for settings, the path for files, the call otherwise
    detail: str


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
            found += [Hazard("setting", node.lineno, lib) for lib in map(_assigned_setting, targets)
                      if lib]
    return sorted(found, key=lambda h: h.line)


def _call_hazards(call: ast.Call) -> list[Hazard]:
    dotted = _dotted(call.func)
    if not dotted:
        return []
    name, line = dotted[-1], call.lineno
    if name in _SEED_CALLS and len(dotted) > 1:
        return [Hazard("seed", line, _rng_family(dotted))]
    draw = _draw_family(dotted, call)
    if draw:
        return [Hazard("random", line, draw)]
    setting = _setting_library(dotted)
    if setting:
        return [Hazard("setting", line, setting)]
    if tuple(dotted[:2]) in _UNCARRIED_CALLS:
        return [Hazard("uncarried", line, ".".join(dotted))]
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


def _draw_family(dotted: list[str], call: ast.Call) -> str | None:
    """The global generator a call draws from, if any."""
    name = dotted[-1]
    if name in _NOT_DRAWS:
        return None
    if len(dotted) > 1 and dotted[-2] == "random" or dotted[0] == "random" and len(dotted) == 2:
        return _rng_family(dotted)
    if dotted[0] == "torch" and len(dotted) == 2 and name in _TORCH_DRAWS:
        return "torch"
    if name in _NUMPY_DRAWING_CALLS and not _given_random_state(call):
        return "numpy"
    return None


def _given_random_state(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg == "random_state" or keyword.arg is None:
            value = keyword.value
            return not (isinstance(value, ast.Constant) and value.value is None)
    return False


def _setting_library(dotted: list[str]) -> str | None:
    """The library whose process-wide settings a call changes, if any."""
    name = dotted[-1]
    if name in _SETTING_CALLS and (len(dotted) > 1 or name != "rc"):
        return _SETTING_CALLS[name]
    if dotted[-2:] == ["style", "use"] or dotted[-2:] == ["rcParams", "update"]:
        return "matplotlib"
    if dotted[0] in ("sns", "seaborn") and len(dotted) == 2 and name in _SEABORN_SETTERS:
        return "matplotlib"
    if dotted in (["logging", "disable"], ["warnings", "simplefilter"]):
        return dotted[0]
    if len(dotted) > 1 and name == "setLevel" and dotted[0] == "logging":
        return "logging"
    return None


def _assigned_setting(target: ast.expr) -> str | None:
    """``plt.rcParams["x"] = ...`` and ``pd.options.display.x = ...`` change settings."""
    if isinstance(target, ast.Subscript) and _dotted(target.value)[-1:] == ["rcParams"]:
        return "matplotlib"
    if isinstance(target, ast.Attribute):
        dotted = _dotted(target)
        if len(dotted) > 2 and dotted[1] == "options" and dotted[0] in ("pd", "pandas"):
            return "pandas"
    return None


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
