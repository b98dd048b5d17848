"""Process-wide state carried between steps: library settings and global random generators.

In a kernel, ``sklearn.set_config(...)``, ``pd.set_option(...)``, ``plt.rcParams[...] = ...``,
``warnings.filterwarnings(...)`` or a draw from ``np.random`` change the process, and every
later cell sees the change. Each step is a process of its own, so the graph treats each
such piece of state as a pseudo-variable (``@settings.sklearn``, ``@rng.numpy``, ...): the
step that last changed it provides it, like any variable. This module is the runtime half:
:func:`capture` takes the state at the end of a providing step, :func:`restore` puts it
back at the start of a consumer, after the imports and functions cells (forked or fresh
process alike) and before the step's own cells.

It travels with the step runtime, so it uses the standard library only: a library is
touched only when it is already imported (``sys.modules``), and only for the families the
step exchanges.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

#: Pseudo-variable names start with this; they are never Python names.
PREFIX = "@"
#: The variable, in a step's saved state, holding its pseudo-variables' values by name.
STATE_VARIABLE = "__kale_py_process_state__"

RNG_FAMILIES = ("random", "numpy", "torch")
SETTINGS_FAMILIES = ("sklearn", "pandas", "numpy", "matplotlib", "warnings", "logging", "torch")


def rng_name(family: str) -> str:
    """The pseudo-variable of a global random generator: ``@rng.numpy``."""
    return f"{PREFIX}rng.{family}"


def settings_name(family: str) -> str:
    """The pseudo-variable of a library's settings: ``@settings.pandas``."""
    return f"{PREFIX}settings.{family}"


def is_pseudo(name: str) -> bool:
    return name.startswith(PREFIX)


def is_settings(name: str) -> bool:
    return name.startswith(f"{PREFIX}settings.")


def capture(names: Iterable[str], on_error: Callable[[str], None]) -> dict[str, Any]:
    """The current value of each pseudo-variable (``None``: its library is not loaded).

    A library that fails to report its state is said through ``on_error``, and its state
    is not carried (the consumer starts from the library's defaults).
    """
    out: dict[str, Any] = {}
    for name in names:
        getter = _CAPTURE.get(name)
        try:
            out[name] = getter[0]() if getter is not None else None
        except Exception as exc:  # noqa: BLE001 - one library's failure must not lose the step
            on_error(f"{name} could not be saved for later steps: {type(exc).__name__}: {exc}")
            out[name] = None
    return out


def restore(name: str, value: Any) -> None:
    """Put a captured pseudo-variable back in this process (its library is imported if need be)."""
    entry = _CAPTURE.get(name)
    if entry is not None and value is not None:
        entry[1](value)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Reading every option also reads deprecated ones: their warnings are noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _loaded(module: str) -> Any:
    return sys.modules.get(module)


# --- random generators ---------------------------------------------------------------------------


def _random_get() -> Any:
    import random

    return random.getstate()


def _random_set(value: Any) -> None:
    import random

    random.setstate(value)


def _numpy_rng_get() -> Any:
    np = _loaded("numpy")
    return None if np is None else np.random.get_state()


def _numpy_rng_set(value: Any) -> None:
    importlib.import_module("numpy").random.set_state(value)


def _torch_rng_get() -> Any:
    torch = _loaded("torch")
    return None if torch is None else torch.get_rng_state()


def _torch_rng_set(value: Any) -> None:
    importlib.import_module("torch").set_rng_state(value)


# --- library settings -----------------------------------------------------------------------------


def _sklearn_get() -> Any:
    sklearn = _loaded("sklearn")
    return None if sklearn is None else dict(sklearn.get_config())


def _sklearn_set(value: Mapping[str, Any]) -> None:
    import inspect

    sklearn = importlib.import_module("sklearn")
    accepted = inspect.signature(sklearn.set_config).parameters
    sklearn.set_config(**{k: v for k, v in value.items() if k in accepted})


def _pandas_get() -> Any:
    if _loaded("pandas") is None:
        return None
    config = importlib.import_module("pandas._config.config")
    changed = {}
    with _quiet():
        for key, option in config._registered_options.items():
            if key in config._deprecated_options:
                continue
            value = config.get_option(key)
            with contextlib.suppress(Exception):
                if value != option.defval:
                    changed[key] = value
    return changed


def _pandas_set(value: Mapping[str, Any]) -> None:
    pandas = importlib.import_module("pandas")
    with _quiet():
        for key, option in value.items():
            pandas.set_option(key, option)


def _numpy_get() -> Any:
    np = _loaded("numpy")
    if np is None:
        return None
    return {"print": dict(np.get_printoptions()), "err": dict(np.geterr())}


def _numpy_set(value: Mapping[str, Any]) -> None:
    import inspect

    np = importlib.import_module("numpy")
    accepted = inspect.signature(np.set_printoptions).parameters
    np.set_printoptions(**{k: v for k, v in value["print"].items() if k in accepted})
    np.seterr(**value["err"])


_MPL_NOT_CARRIED = {"backend", "backend_fallback", "interactive"}


def _matplotlib_get() -> Any:
    mpl = _loaded("matplotlib")
    if mpl is None:
        return None
    changed = {}
    with _quiet():
        for key, value in mpl.rcParams.items():
            if key in _MPL_NOT_CARRIED:
                continue
            with contextlib.suppress(Exception):
                if bool(value != mpl.rcParamsOrig[key]):
                    changed[key] = value
    return changed


def _matplotlib_set(value: Mapping[str, Any]) -> None:
    mpl = importlib.import_module("matplotlib")
    with _quiet():
        mpl.rcParams.update(value)


def _warnings_get() -> Any:
    filters: list[Any] = list(warnings.filters)
    return [
        (
            action,
            _pattern(message),
            (category.__module__, category.__qualname__),
            _pattern(module),
            lineno,
        )
        for action, message, category, module, lineno in filters
    ]


def _pattern(regex: Any) -> Any:
    """A filter's message or module: None, a plain string, or a compiled expression."""
    if regex is None or isinstance(regex, str):
        return regex
    return ("re", regex.pattern, regex.flags)


def _compiled(pattern: Any) -> Any:
    import re

    if isinstance(pattern, (tuple, list)):
        return re.compile(pattern[1], pattern[2])
    return pattern


def _warnings_set(value: list[Any]) -> None:
    filters = []
    for action, message, (cat_module, cat_name), module, lineno in value:
        category = _find(cat_module, cat_name)
        if category is None:
            continue  # a warning class the step's own cells define: not there yet
        filters.append((action, _compiled(message), category, _compiled(module), lineno))
    current: Any = warnings.filters
    current[:] = filters
    warnings._filters_mutated()  # type: ignore[attr-defined]


def _find(module: str, qualname: str) -> Any:
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target


def _logging_get() -> Any:
    import logging

    root = logging.getLogger()
    handlers = []
    for handler in root.handlers:
        described = _describe_handler(handler)
        if described is not None:
            handlers.append(described)
    return {"level": root.level, "disable": logging.root.manager.disable, "handlers": handlers}


def _describe_handler(handler: Any) -> dict[str, Any] | None:
    import logging

    formatter = handler.formatter
    base = {
        "level": handler.level,
        "format": formatter._fmt if formatter else None,
        "datefmt": formatter.datefmt if formatter else None,
        "style": type(formatter._style).__name__ if formatter else None,
    }
    if isinstance(handler, logging.FileHandler):
        return {**base, "file": handler.baseFilename}
    if isinstance(handler, logging.StreamHandler):
        stream = handler.stream
        name = "stdout" if stream in (sys.stdout, sys.__stdout__) else "stderr"
        return {**base, "stream": name}
    return None  # other handlers (sockets, queues) are not rebuilt


def _logging_set(value: Mapping[str, Any]) -> None:
    import logging

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    styles = {"PercentStyle": "%", "StrFormatStyle": "{", "StringTemplateStyle": "$"}
    for described in value["handlers"]:
        handler: logging.Handler
        if "file" in described:
            handler = logging.FileHandler(described["file"], mode="a")
        else:
            handler = logging.StreamHandler(getattr(sys, described["stream"]))
        handler.setLevel(described["level"])
        if described["format"] is not None or described["datefmt"] is not None:
            style = styles.get(described["style"] or "", "%")
            handler.setFormatter(
                logging.Formatter(described["format"], described["datefmt"], style)  # type: ignore[arg-type]
            )
        root.addHandler(handler)
    root.setLevel(value["level"])
    logging.disable(value["disable"])


def _torch_get() -> Any:
    torch = _loaded("torch")
    if torch is None:
        return None
    return {
        "default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def _torch_set(value: Mapping[str, Any]) -> None:
    torch = importlib.import_module("torch")
    torch.set_default_dtype(getattr(torch, value["default_dtype"]))
    torch.use_deterministic_algorithms(value["deterministic"])


_CAPTURE: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    rng_name("random"): (_random_get, _random_set),
    rng_name("numpy"): (_numpy_rng_get, _numpy_rng_set),
    rng_name("torch"): (_torch_rng_get, _torch_rng_set),
    settings_name("sklearn"): (_sklearn_get, _sklearn_set),
    settings_name("pandas"): (_pandas_get, _pandas_set),
    settings_name("numpy"): (_numpy_get, _numpy_set),
    settings_name("matplotlib"): (_matplotlib_get, _matplotlib_set),
    settings_name("warnings"): (_warnings_get, _warnings_set),
    settings_name("logging"): (_logging_get, _logging_set),
    settings_name("torch"): (_torch_get, _torch_set),
}
