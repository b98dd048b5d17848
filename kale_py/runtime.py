"""The step runtime: runs one generated step program in a fresh Python process.

It travels with every step (locally it is imported from the installed package; in a
Kubeflow pod it arrives inside the step's payload), so it uses the standard library only,
plus :mod:`kale_py.marshal` for the variables.

What it does, in order: load the pipeline parameters and the step's input variables, run
the step's cells one by one in a fresh ``__main__`` namespace the way Jupyter would
(``display()``, the last expression of a cell, magics, inline figures), then save the
variables later steps need, report metrics, and write an HTML report of the outputs.
A failing cell is reported with its notebook cell and line, never with generated code.
"""

from __future__ import annotations

import argparse
import ast
import base64
import builtins
import contextlib
import html
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kale_py import marshal, process_state
from kale_py.magics import SKIPPED_LINE_MAGICS

CELL_FILE = "{notebook}, cell {cell}"  # the file name tracebacks show for a cell
_CELL_FILE_RE = re.compile(r"^(?P<nb>.*), cell (?P<cell>\d+)$")


# --- arguments ----------------------------------------------------------------------------------


def _arguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kale_py.runtime", description="Run one pipeline step."
    )
    p.add_argument(
        "--program", help="the step program (default: kale_py_step.py beside the runtime)"
    )
    p.add_argument(
        "--spec", help="the step spec JSON (default: kale_py_step.json beside the runtime)"
    )
    p.add_argument("--step", help="the step name (checked against the spec)")
    p.add_argument("--state-in", action="append", default=[], metavar="STEP=DIR")
    p.add_argument("--state-out")
    p.add_argument("--report-out")
    p.add_argument("--metrics-out")
    p.add_argument("--result-out")
    p.add_argument("--executor-output")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--param-type",
        action="append",
        default=[],
        metavar="NAME=TYPE",
        help="values are rendered by Kubeflow Pipelines (text) instead of JSON",
    )
    p.add_argument("--workdir")
    p.add_argument("--allowed-root", action="append", default=[])
    p.add_argument(
        "--key-file",
        help="the user's key: input manifests must be signed with it, outputs are (local runs)",
    )
    p.add_argument(
        "--state-digest",
        action="append",
        default=[],
        metavar="STEP=DIGEST",
        help="the digest of an input step's manifest, as that step reported it (Kubeflow)",
    )
    p.add_argument(
        "--manifest-digest-out", help="write the digest of this step's state manifest here"
    )
    p.add_argument(
        "--export-all",
        metavar="DIR",
        help="also save every variable the step writes, for comparing runs "
        "(default: $KALE_PY_EXPORT_ALL/<step> when that is set)",
    )
    return p.parse_args(argv)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"kale_py runtime: {what} must be NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def _read_payload(path: str | None, suffix: str) -> str:
    """The program (``.py``) or spec (``.json``): from ``path``, else from the step payload.

    In a Kubeflow pod the payload zip on ``sys.path`` holds ``kale_py_step.py`` and
    ``kale_py_step.json``.
    """
    if path:
        return Path(path).read_text(encoding="utf-8")
    import importlib.util

    found = importlib.util.find_spec("kale_py_step")
    loader = found.loader if found is not None else None
    if found is None or found.origin is None or not hasattr(loader, "get_data"):
        raise SystemExit("kale_py runtime: no --program/--spec given and no step payload found")
    target = os.path.join(os.path.dirname(found.origin), "kale_py_step" + suffix)
    data = loader.get_data(target)  # type: ignore[union-attr]
    return bytes(data).decode("utf-8")


# --- parameters -----------------------------------------------------------------------------------


def parse_parameter(name: str, text: str, kind: str, rendered: bool) -> Any:
    """A parameter's value from the command line.

    ``rendered`` values come from Kubeflow Pipelines' placeholders (strings as they are,
    numbers and booleans as text, lists and dicts as JSON); others are JSON.
    """
    if not rendered:
        return json.loads(text)
    if kind == "str":
        return text
    if kind == "int":
        return int(float(text)) if re.fullmatch(r"-?\d+(\.0*)?", text.strip()) else int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        return text.strip().lower() in ("true", "1", "yes")
    if kind == "none":
        return None if text in ("", "null", "None") else json.loads(text)
    return json.loads(text)


# --- rich output --------------------------------------------------------------------------------


@dataclass
class CellReport:
    cell: int
    role: str
    code: str
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (mime, data)
    seconds: float = 0.0
    error: str | None = None

    def add_text(self, text: str) -> None:
        if self.outputs and self.outputs[-1][0] == "stream":
            self.outputs[-1] = ("stream", self.outputs[-1][1] + text)
        else:
            self.outputs.append(("stream", text))


class _Tee(io.TextIOBase):
    """Writes through to the real stream (live logs) and into the current cell's report."""

    def __init__(self, stream: TextIO, runtime: StepRuntime):
        self.stream, self.runtime = stream, runtime

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.stream.flush()
        if self.runtime.current is not None and self.runtime.capture_depth == 0:
            self.runtime.current.add_text(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


def mime_bundle(obj: Any) -> list[tuple[str, str]]:
    """The richest representations of ``obj`` that a report can show (as Jupyter picks them)."""
    bundle: list[tuple[str, str]] = []
    if hasattr(obj, "savefig") and hasattr(obj, "canvas"):  # a matplotlib figure
        buf = io.BytesIO()
        obj.savefig(buf, format="png", bbox_inches="tight")
        return [("image/png", base64.b64encode(buf.getvalue()).decode()), ("text/plain", repr(obj))]
    mimebundle = _call_repr(obj, "_repr_mimebundle_")
    if isinstance(mimebundle, tuple):
        mimebundle = mimebundle[0]
    if isinstance(mimebundle, dict):
        for mime in ("text/html", "image/png", "image/svg+xml", "text/markdown", "text/plain"):
            if mime in mimebundle:
                data = mimebundle[mime]
                bundle.append(
                    (
                        mime,
                        base64.b64encode(data).decode() if isinstance(data, bytes) else str(data),
                    )
                )
    for method, mime in (
        ("_repr_html_", "text/html"),
        ("_repr_svg_", "image/svg+xml"),
        ("_repr_png_", "image/png"),
        ("_repr_markdown_", "text/markdown"),
        ("_repr_latex_", "text/latex"),
    ):
        if any(m == mime for m, _ in bundle):
            continue
        data = _call_repr(obj, method)
        if data is not None:
            if isinstance(data, bytes):
                data = base64.b64encode(data).decode()
            bundle.append((mime, str(data)))
    if not any(m == "text/plain" for m, _ in bundle):
        bundle.append(("text/plain", repr(obj)))
    return bundle


def _call_repr(obj: Any, method: str) -> Any:
    fn = getattr(type(obj), method, None)
    if fn is None:
        return None
    try:
        return fn(obj)
    except Exception:  # noqa: BLE001 - a broken _repr_ must not fail the step, as in Jupyter
        return None


# --- magics -----------------------------------------------------------------------------------


class Magics:
    """What generated programs call for IPython syntax (``!cmd``, ``%magic``, ``%%magic``)."""

    def __init__(self, runtime: StepRuntime):
        self.runtime = runtime

    @property
    def ns(self) -> dict[str, Any]:
        return self.runtime.namespace

    def expand(self, text: str) -> str:
        """IPython's variable expansion in shell lines: ``{expr}`` and ``$name``."""

        def brace(m: re.Match[str]) -> str:
            try:
                return str(eval(m.group(1), self.ns))  # noqa: S307 - the user's own code
            except Exception:  # noqa: BLE001 - IPython leaves unknown expressions as they are
                return m.group(0)

        text = re.sub(r"(?<!\{)\{([^{}]+)\}(?!\})", brace, text)
        return re.sub(
            r"(?<!\$)\$(\w+)",
            lambda m: str(self.ns[m.group(1)]) if m.group(1) in self.ns else m.group(0),
            text,
        )

    def shell(self, command: str, capture: bool = False) -> Any:
        command = self.expand(command)
        if capture:
            done = subprocess.run(command, shell=True, capture_output=True, text=True)
            sys.stdout.write(done.stderr)
            return _line_list(done.stdout.splitlines())
        with subprocess.Popen(
            command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
        return None

    def line_magic(self, name: str, args: str) -> Any:
        if name in ("pip", "conda"):
            return self._pip(name, args)
        if name in ("sx", "system"):
            return self.shell(args, capture=True)
        if name == "cd":
            target = os.path.expanduser(self.expand(args.strip()) or "~")
            os.chdir(target)
            print(os.getcwd())
            return None
        if name == "env":
            return self._env(args)
        if name == "run":
            import runpy

            parts = shlex.split(self.expand(args))
            self.ns.update(runpy.run_path(parts[0], init_globals=self.ns, run_name="__main__"))
            return None
        if name == "matplotlib":  # figures are captured after each cell, as inline
            return None
        if name in SKIPPED_LINE_MAGICS:
            self.runtime.notice(f"%{name} has no effect in a pipeline step; skipped")
            return None
        raise NotImplementedError(
            f"the magic %{name} cannot run in a pipeline step; remove it or tag its cell skip"
        )

    def _pip(self, tool: str, args: str) -> None:
        words = shlex.split(self.expand(args))
        if not words or words[0] != "install":
            self.runtime.notice(f"%{tool} {args} skipped in a pipeline step")
            return
        wanted = [w for w in words[1:] if not w.startswith("-")]
        missing = [w for w in wanted if not _installed(w)]
        if not missing:
            self.runtime.notice(f"%{tool} install: {', '.join(wanted)} already installed; skipped")
            return
        subprocess.run([sys.executable, "-m", "pip", "install", *words[1:]], check=False)

    def _env(self, args: str) -> Any:
        args = args.strip()
        if not args:
            return dict(os.environ)
        if "=" in args or " " in args:
            key, _, value = args.replace(" ", "=", 1).partition("=")
            os.environ[key.strip()] = self.expand(value.strip())
            return None
        return os.environ.get(args)

    @contextlib.contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        print(f"{'Wall time' if kind == 'time' else kind}: {time.perf_counter() - start:.3g} s")

    def cell_magic(self, name: str, args: str, body: str) -> Any:
        if name in ("bash", "sh", "script"):
            shell = (
                "bash"
                if name == "bash"
                else ("sh" if name == "sh" else (args.split() or ["sh"])[0])
            )
            done = subprocess.run(
                [shell], input=body, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            sys.stdout.write(done.stdout)
            if done.returncode:
                raise RuntimeError(f"%%{name} exited with status {done.returncode}")
            return None
        if name == "writefile":
            parts = shlex.split(args)
            append = "-a" in parts or "--append" in parts
            target = [p for p in parts if not p.startswith("-")][0]
            with open(target, "a" if append else "w", encoding="utf-8") as f:
                f.write(body)
            print(f"{'Appended to' if append else 'Writing'} {target}")
            return None
        kinds = {
            "html": "text/html",
            "markdown": "text/markdown",
            "latex": "text/latex",
            "svg": "image/svg+xml",
            "javascript": "application/javascript",
            "js": "application/javascript",
        }
        if name in kinds:
            if self.runtime.current is not None:
                self.runtime.current.outputs.append((kinds[name], body))
            return None
        raise NotImplementedError(
            f"the cell magic %%{name} cannot run in a pipeline step; remove it or tag the cell skip"
        )


def _line_list(lines: list[str]) -> Any:
    """What ``x = !cmd`` gives in Jupyter: IPython's SList when IPython is there."""
    try:
        from IPython.utils.text import SList
    except ImportError:
        return lines
    return SList(lines)


def _installed(requirement: str) -> bool:
    from importlib import metadata

    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


class _IPythonShim:
    """Enough of ``get_ipython()`` for code that calls magics programmatically."""

    def __init__(self, magics: Magics):
        self.magics = magics

    def run_line_magic(self, name: str, line: str) -> Any:
        return self.magics.line_magic(name, line)

    def run_cell_magic(self, name: str, line: str, cell: str) -> Any:
        return self.magics.cell_magic(name, line, cell)

    def system(self, command: str) -> None:
        self.magics.shell(command)

    def getoutput(self, command: str) -> Any:
        return self.magics.shell(command, capture=True)


# --- the step ---------------------------------------------------------------------------------


class CellFailed(Exception):
    def __init__(self, cell: int, line: int | None, exc: BaseException, text: str):
        super().__init__(str(exc))
        self.cell, self.line, self.exc, self.text = cell, line, exc, text


class StepRuntime:
    def __init__(self, spec: dict[str, Any], program: str, args: argparse.Namespace):
        self.spec, self.program, self.args = spec, program, args
        self.notebook = spec.get("notebook", "notebook.ipynb")
        self.reports: list[CellReport] = []
        self.current: CellReport | None = None
        self.capture_depth = 0
        self.notices: list[str] = []
        self.module = types.ModuleType("__main__")
        self.namespace: dict[str, Any] = self.module.__dict__
        # What the imports and functions cells define: every step defines it too, so it
        # travels by name; classes and functions from the step's own cells travel by value.
        self.shared: set[str] | None = None
        self.magics = Magics(self)
        self.manifests: dict[str, dict[str, Any]] = {}  # input manifests, once verified

    def notice(self, message: str) -> None:
        self.notices.append(message)
        print(f"[kale_py] {message}", file=sys.stderr, flush=True)

    # -- namespace -------------------------------------------------------------------------

    def prepare_namespace(self) -> None:
        # Classes defined in cells must be found as __main__.Name by pickle, as in a kernel.
        sys.modules["__main__"] = self.module
        self.namespace.update(
            {
                "__builtins__": builtins,
                "display": self.display,
                "get_ipython": lambda: _IPythonShim(self.magics),
                "_kp": self.magics,
                # IPython's output history, as a fresh kernel has it
                "_": "",
                "__": "",
                "___": "",
                "Out": {},
            }
        )
        self.set_parameters()

    def set_parameters(self, skip: frozenset[str] = frozenset()) -> None:
        """Bind the step's parameters (but ``skip``) in its namespace."""
        rendered = _pairs(self.args.param_type, "--param-type")
        declared = self.spec.get("parameters", {})
        for name, text in _pairs(self.args.param, "--param").items():
            if name in declared and name not in skip:
                self.namespace[name] = parse_parameter(name, text, declared[name], name in rendered)

    def load_inputs(self) -> None:
        # Names saved as one group (they may share objects) load from one file, together.
        # An object whose restore code reads the namespace (a formula model) may need a
        # variable that comes later in the list: what fails is tried again after the rest.
        # Nothing is loaded from a manifest before it is proven to be its producer's.
        dirs = _pairs(self.args.state_in, "--state-in")
        kfp_names = self.spec.get("kfp_names", {})
        roots = self.args.allowed_root or list(dirs.values())
        pseudo: dict[str, tuple[str, str]] = {}
        units: dict[tuple[str, str], tuple[str, list[dict[str, Any]]]] = {}
        for var, producer in self.spec.get("inputs", {}).items():
            known = dirs.get(producer) or dirs.get(kfp_names.get(producer, ""))
            if process_state.is_pseudo(var) and known is not None:
                pseudo[var] = (producer, known)
                continue
            directory = self._input_directory(var, producer)
            if producer not in self.manifests:
                self.manifests[producer] = self._input_manifest(producer, directory)
            record = self.manifests[producer]["variables"].get(var)
            if record is None:
                raise NameError(
                    f"name {var!r} is not defined: step {producer!r} did not define it "
                    "when it ran (was it bound only on some paths?)"
                )
            units.setdefault((directory, record["file"]), (producer, []))[1].append(record)
        failed = []
        for (directory, _), (producer, records) in units.items():
            try:
                self._load_records(directory, producer, records)
            except marshal.StateError:
                failed.append((directory, producer, records))
        for directory, producer, records in failed:
            self._load_records(directory, producer, records)
        self._restore_process_state(pseudo, roots)

    def _input_directory(self, var: str, producer: str) -> str:
        dirs = _pairs(self.args.state_in, "--state-in")
        kfp_names = self.spec.get("kfp_names", {})
        directory = dirs.get(producer) or dirs.get(kfp_names.get(producer, ""))
        if directory is None:
            raise SystemExit(
                f"kale_py runtime: no --state-in for step {producer!r} (needed for {var!r})"
            )
        return directory

    def _load_records(self, directory: str, producer: str,
                      records: list[dict[str, Any]]) -> None:
        dirs = _pairs(self.args.state_in, "--state-in")
        roots = self.args.allowed_root or list(dirs.values())
        values = marshal.load_variables(
            records,
            directory,
            allowed_root=_common_root(roots, directory),
            step=self.spec.get("step"),
            producer=producer,
            namespace=self.namespace,
        )
        for var, value in values.items():
            self.namespace[var] = self._rebind(value)

    def _input_manifest(self, producer: str, directory: str) -> dict[str, Any]:
        """An input step's manifest, proven to be its producer's before anything is loaded:
        signed with the user's key (local runs) or matching the digest the producer
        reported (Kubeflow)."""
        digests = _pairs(self.args.state_digest, "--state-digest")
        kfp_name = self.spec.get("kfp_names", {}).get(producer, "")
        digest = digests.get(producer) or digests.get(kfp_name)
        key = self.key()
        if key is None and not digest:
            raise marshal.StateError(
                f"nothing proves that the state of step {producer!r} in {directory} is the "
                "one that step wrote, so it is not loaded. Hint: the runtime needs --key-file "
                "(local runs) or --state-digest (Kubeflow); recompile the pipeline",
                step=producer,
            )
        return marshal.read_manifest(directory, key=key, digest=digest or None, producer=producer)

    def key(self) -> bytes | None:
        return marshal.read_key(self.args.key_file) if self.args.key_file else None

    def _restore_process_state(self, pseudo: dict[str, tuple[str, str]],
                               roots: list[str]) -> None:
        """Library settings and random generators as their providing steps left them (read
        from the producer's verified manifest, like every other input)."""
        loaded: dict[str, Any] = {}
        for name, (producer, directory) in pseudo.items():
            if directory not in loaded:
                if producer not in self.manifests:
                    self.manifests[producer] = self._input_manifest(producer, directory)
                record = self.manifests[producer]["variables"].get(process_state.STATE_VARIABLE)
                loaded[directory] = (
                    {}
                    if record is None
                    else marshal.load_variable(
                        record,
                        directory,
                        allowed_root=_common_root(roots, directory),
                        step=self.spec.get("step"),
                        producer=producer,
                    )
                )
            try:
                process_state.restore(name, loaded[directory].get(name))
            except Exception as exc:  # noqa: BLE001 - a library refusing its own state
                self.notice(f"{name} could not be restored: {type(exc).__name__}: {exc}")

    def _rebind(self, value: Any) -> Any:
        """Functions pickled by value read their globals from this step, as in the notebook."""
        if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
            fn = types.FunctionType(
                value.__code__,
                self.namespace,
                value.__name__,
                value.__defaults__,
                value.__closure__,
            )
            fn.__kwdefaults__, fn.__dict__ = value.__kwdefaults__, dict(value.__dict__)
            fn.__qualname__, fn.__doc__ = value.__qualname__, value.__doc__
            return fn
        return value

    def display(self, *objs: Any, **_: Any) -> None:
        for obj in objs:
            bundle = mime_bundle(obj)
            if self.current is not None and self.capture_depth == 0:
                self.current.outputs.extend(
                    m for m in bundle if m[0] != "text/plain" or len(bundle) == 1
                )
            text = dict(bundle).get("text/plain")
            if text is not None:
                self.capture_depth += 1
                try:
                    print(text)
                finally:
                    self.capture_depth -= 1

    # -- cells -----------------------------------------------------------------------------

    def run_cells(self, prelude: bool) -> None:
        """The imports and functions cells (``prelude``), or else the step's own cells.

        The prelude runs before the inputs are loaded: loading an instance of a class it
        defines needs the class, and a loaded value must win over a prelude definition.
        """
        lines = self.program.splitlines(keepends=True)
        for cell in self.spec["cells"]:
            if (cell["role"] in ("imports", "functions")) != prelude:
                continue
            source = "".join(lines[cell["start"] - 1 : cell["end"]])
            self.current = CellReport(cell["cell"], cell["role"], source)
            self.reports.append(self.current)
            started = time.perf_counter()
            try:
                self._run_cell(cell, source)
            finally:
                self.current.seconds = time.perf_counter() - started
                self._collect_figures()
            self.current = None

    def _run_cell(self, cell: dict[str, Any], source: str) -> None:
        filename = CELL_FILE.format(notebook=self.notebook, cell=cell["cell"])
        import linecache

        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        tree = ast.parse(source, filename)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        assert last is None or isinstance(last, ast.Expr)
        show_last = last is not None and not source.rstrip().endswith(";")
        magic = cell.get("magic")
        try:
            with self._cell_magic(magic):
                exec(compile(tree, filename, "exec"), self.namespace)  # noqa: S102
                if last is not None:
                    expr = ast.Expression(last.value)
                    value = eval(compile(expr, filename, "eval"), self.namespace)  # noqa: S307
                    if show_last and value is not None:
                        record_output(self.namespace, value, cell.get("count"))
                        self.display(value)
        except Exception as exc:  # noqa: BLE001 - every failure of user code is reported, with its cell
            raise CellFailed(
                cell["cell"], _user_line(exc, filename), exc, _user_traceback(exc)
            ) from exc

    @contextlib.contextmanager
    def _cell_magic(self, magic: list[str] | None) -> Iterator[None]:
        if not magic:
            yield
            return
        name, args = magic[0], magic[1] if len(magic) > 1 else ""
        if name in ("time", "timeit", "prun"):
            with self.magics.timed(name):
                yield
        elif name == "capture":
            out, err = io.StringIO(), io.StringIO()
            self.capture_depth += 1
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    yield
            finally:
                self.capture_depth -= 1
            target = args.split()[0] if args.split() else None
            if target:
                self.namespace[target] = types.SimpleNamespace(
                    stdout=out.getvalue(),
                    stderr=err.getvalue(),
                    outputs=[],
                    show=lambda: print(out.getvalue()),
                )
        else:
            yield

    def _collect_figures(self) -> None:
        """Show and close open matplotlib figures after each cell, like the inline backend."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None or self.current is None:
            return
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            self.current.outputs.extend(m for m in mime_bundle(figure) if m[0] == "image/png")
        pyplot.close("all")

    # -- outputs ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for metric in self.spec.get("metrics", []):
            value = self.namespace.get(metric["variable"])
            try:
                out[metric["name"]] = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                self.notice(
                    f"metric {metric['name']!r}: {metric['variable']} = {value!r} is not a number; "
                    "not reported"
                )
        return out

    def save_outputs(self) -> list[str]:
        if not self.args.state_out:
            return []
        out = Path(self.args.state_out)
        out.mkdir(parents=True, exist_ok=True)
        records, missing = [], []
        values: dict[str, Any] = {}
        outputs = self.spec.get("outputs", [])
        pseudo = [n for n in outputs if process_state.is_pseudo(n)]
        if pseudo:
            records.append(
                marshal.save_variable(
                    process_state.STATE_VARIABLE,
                    process_state.capture(pseudo, self.notice),
                    out,
                    step=self.spec["step"],
                )
            )
        for name in outputs:
            if process_state.is_pseudo(name):
                continue
            if name not in self.namespace:
                missing.append(name)
                continue
            values[name] = self.namespace[name]
        records += marshal.save_variables(
            values,
            out,
            step=self.spec["step"],
            shared=self.shared,
            namespace=self.namespace,
            # Names that may share objects travel in one file, still sharing them.
            groups=self.spec.get("groups", []),
        )
        if missing:
            self.notice(f"not defined at the end of the step, so not saved: {', '.join(missing)}")
        manifest = marshal.write_manifest(out, self.spec["step"], records, key=self.key())
        if self.args.manifest_digest_out:
            _write_atomic(self.args.manifest_digest_out, marshal.manifest_digest(manifest))
        return [r.name for r in records]

    def export_all(self) -> None:
        """Every variable the step wrote that can be saved: a full picture of its state."""
        target = self.args.export_all or os.environ.get("KALE_PY_EXPORT_ALL")
        if not target:
            return
        out = Path(target) if self.args.export_all else Path(target) / self.spec["kfp_name"]
        out.mkdir(parents=True, exist_ok=True)
        records = []
        for name in self.spec.get("writes", []):
            value = self.namespace.get(name, _MISSING)
            if value is _MISSING or isinstance(value, types.ModuleType):
                continue
            try:
                records.append(
                    marshal.save_variable(
                        name, value, out, step=self.spec["step"], shared=self.shared
                    )
                )
            except marshal.StateError as exc:
                self.notice(f"not exported: {exc}")
        marshal.write_manifest(out, self.spec["step"], records)

    def export_digests(self) -> None:
        """Digests of every variable the step wrote, for ``nb2pipe verify``.

        Written to ``$KALE_PY_EXPORT_DIGESTS/<kfp_name>.json`` when that is set.
        """
        target = os.environ.get("KALE_PY_EXPORT_DIGESTS")
        if not target:
            return
        from kale_py import digest

        names = [n for n in self.spec.get("writes", []) if not process_state.is_pseudo(n)]
        digests = digest.digest_all(self.namespace, names)
        _write_atomic(str(Path(target) / f"{self.spec['kfp_name']}.json"), json.dumps(digests))


_MISSING = object()


def record_output(namespace: dict[str, Any], value: Any, count: int | None) -> None:
    """What IPython's display hook does with a shown value: ``_`` (shifting ``__`` and
    ``___``), ``Out[count]`` and ``_<count>``; count is the cell's execution count."""
    namespace["___"] = namespace.get("__", "")
    namespace["__"] = namespace.get("_", "")
    namespace["_"] = value
    if count is not None:
        out = namespace.get("Out")
        if not isinstance(out, dict):
            out = namespace["Out"] = {}
        out[count] = value
        namespace[f"_{count}"] = value


def _common_root(roots: list[str], directory: str) -> str:
    resolved = Path(directory).resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return root
    return roots[0] if roots else directory


def _user_line(exc: BaseException, filename: str) -> int | None:
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        return exc.lineno
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno
    return line


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the first notebook frame on: generated and runtime frames hidden."""
    tb = exc.__traceback__
    while tb is not None and not _CELL_FILE_RE.match(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


# --- reports -----------------------------------------------------------------------------------


def report_html(step: str, notebook: str, reports: list[CellReport], error: str | None) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(step)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:.6em;"
        "overflow:auto}.cell{border-left:3px solid #ccc;padding-left:1em;margin:1.2em 0}"
        ".err{background:#fee}h2{font-size:1em;color:#555}</style></head><body>",
        f"<h1>Step {html.escape(step)}</h1><p>{html.escape(notebook)}</p>",
    ]
    for r in reports:
        parts.append(
            f"<div class='cell'><h2>cell {r.cell} ({html.escape(r.role)}, {r.seconds:.2f} s)</h2>"
        )
        parts.append(f"<pre>{html.escape(r.code)}</pre>")
        for mime, data in r.outputs:
            parts.append(_output_html(mime, data))
        if r.error:
            parts.append(f"<pre class='err'>{html.escape(r.error)}</pre>")
        parts.append("</div>")
    if error:
        parts.append(f"<pre class='err'>{html.escape(error)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _output_html(mime: str, data: str) -> str:
    if mime == "text/html":
        return f"<div class='output'>{data}</div>"
    if mime == "image/png":
        return f"<img src='data:image/png;base64,{data}'>"
    if mime == "image/svg+xml":
        return f"<div class='output'>{data}</div>"
    return f"<pre>{html.escape(data)}</pre>"


def _write_atomic(path: str | None, text: str) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


# --- entry point ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("KALE_PY_RUNNER_PID"):  # a local run: die with the runner
        from kale_py.resources import die_with_parent

        die_with_parent()
    argv = list(sys.argv[1:] if argv is None else argv)
    # the tasks that serve a serve:VAR model run from the same runtime
    if argv[:1] == ["--export-model"]:
        from kale_py.serving.export import main as export

        return export(argv[1:])
    if argv[:1] == ["--deploy-model"]:
        from kale_py.serving.deploy import main as deploy

        return deploy(argv[1:])
    step = begin(_arguments(argv))
    return finish(step)


@dataclass
class StepRun:
    """A step between its start-up (the imports and functions cells) and its own work.

    :func:`begin` makes one; :func:`finish` completes it. The local runner's warm start
    makes one in a long-lived process and finishes a forked copy of it per step.
    """

    args: argparse.Namespace
    spec: dict[str, Any]
    runtime: StepRuntime
    real_stdout: TextIO
    started: float  # perf_counter when the step's process (or fork) began
    result: dict[str, Any]
    failed: CellFailed | None = None
    #: Seconds per phase: start (process start-up and prelude), load, code, save; cpu.
    timings: dict[str, float] = field(default_factory=dict)


def begin(args: argparse.Namespace) -> StepRun:
    """Read the step, enter its working directory, run its imports and functions cells."""
    spec = json.loads(_read_payload(args.spec, ".json"))
    program = _read_payload(args.program, ".py")
    if args.workdir:
        os.chdir(args.workdir)
    os.environ.setdefault("MPLBACKEND", "Agg")
    runtime = StepRuntime(spec, program, args)
    real_stdout = sys.stdout
    sys.stdout = _Tee(real_stdout, runtime)
    result: dict[str, Any] = {"step": spec["step"], "status": "succeeded", "error": None}
    step = StepRun(args, spec, runtime, real_stdout, time.perf_counter(), result)
    try:
        runtime.prepare_namespace()
        runtime.run_cells(prelude=True)
    except CellFailed as failed:
        step.failed = failed
    return step


def finish(step: StepRun) -> int:
    """Load the inputs, run the step's cells, save; write the report and result files."""
    args, spec, runtime, result = step.args, step.spec, step.runtime, step.result
    step.timings["start"] = _since_launch(step.started)
    clock = time.perf_counter()
    try:
        if step.failed is not None:
            raise step.failed
        runtime.shared = set(runtime.namespace)
        runtime.load_inputs()
        clock = _lap(step.timings, "load", clock)
        runtime.run_cells(prelude=False)
        clock = _lap(step.timings, "code", clock)
        result["metrics"] = runtime.metrics()
        result["saved"] = runtime.save_outputs()
        runtime.export_all()
        runtime.export_digests()
    except CellFailed as failed:
        _record_cell_failure(step, failed)
    except (marshal.StateError, NameError) as exc:
        result.update(
            status="failed",
            error={
                "type": type(exc).__name__,
                "message": str(exc),
                "cell": None,
                "line": None,
                "traceback": "",
            },
        )
        print(f"step {spec['step']!r} failed: {exc}", file=sys.stderr)
    finally:
        sys.stdout = step.real_stdout
    result["seconds"] = time.perf_counter() - step.started
    result["peak_rss_bytes"] = _own_peak_memory()
    times = os.times()  # of this process (a fork starts at zero) and the children it waited for
    result["cpu_seconds"] = round(times.user + times.system + times.children_user
                                  + times.children_system, 3)
    result["notices"] = runtime.notices
    error_text = result["error"]["traceback"] if result["error"] and not runtime.reports else None
    if spec.get("report", True):
        _write_atomic(
            args.report_out,
            report_html(spec["step"], runtime.notebook, runtime.reports, error_text),
        )
    if result["status"] == "succeeded":
        _write_atomic(args.metrics_out, json.dumps(result.get("metrics", {}), indent=2))
        _write_executor_output(args, result.get("metrics", {}))
    if "code" in step.timings:
        _lap(step.timings, "save", clock)
    # CPU seconds of this process (of the fork: fork resets the counters), which the
    # machine's load does not change the way it changes the wall-clock phases.
    step.timings["cpu"] = time.process_time()
    result["timings"] = {k: round(v, 4) for k, v in step.timings.items()}
    _write_atomic(args.result_out, json.dumps(result, indent=2, default=str))
    return 0 if result["status"] == "succeeded" else 1


#: Set by the local runner: the wall-clock time at which it asked for the step's process.
LAUNCHED_ENV = "KALE_PY_LAUNCHED_AT"


def _since_launch(started: float) -> float:
    """Seconds from the runner's request to now (else from this process's own start)."""
    try:
        return max(0.0, time.time() - float(os.environ[LAUNCHED_ENV]))
    except (KeyError, ValueError):
        return time.perf_counter() - started


def _lap(timings: dict[str, float], phase: str, since: float) -> float:
    now = time.perf_counter()
    timings[phase] = now - since
    return now


def _record_cell_failure(step: StepRun, failed: CellFailed) -> None:
    step.result.update(
        status="failed",
        error={
            "type": type(failed.exc).__name__,
            "message": str(failed.exc) or type(failed.exc).__name__,
            "cell": failed.cell,
            "line": failed.line,
            "traceback": failed.text,
        },
    )
    if step.runtime.reports:
        step.runtime.reports[-1].error = failed.text
    sys.stdout.flush()
    print(failed.text, file=sys.stderr, end="")
    print(
        f"step {step.spec['step']!r} failed in cell {failed.cell}"
        + (f", line {failed.line}" if failed.line else "")
        + f": {type(failed.exc).__name__}: "
        f"{failed.exc}",
        file=sys.stderr,
    )


# On Kubeflow the metrics also go to the step's log in one line, where a Katib trial reads
# them (kale_py/tuning/trial.py): the run API does not return metric values.
METRICS_MARKER = "KALE_PY_METRICS "


def _own_peak_memory() -> int | None:
    """This process's peak resident memory since it started (Linux's VmHWM). Unlike the
    rusage a parent reads, it does not count the parent's memory from before exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _write_executor_output(args: argparse.Namespace, metrics: dict[str, Any]) -> None:
    """Kubeflow's ExecutorOutput: registers the step's output artifacts with the backend."""
    if not args.executor_output:
        return
    if metrics:
        print(METRICS_MARKER + json.dumps(metrics), flush=True)
    artifacts = {}
    for name, path in (
        ("state", args.state_out),
        ("metrics", args.metrics_out),
        ("report", args.report_out),
    ):
        if path:
            meta: dict[str, Any] = dict(metrics) if name == "metrics" else {}
            artifacts[name] = {"artifacts": [{"name": name, "uri": artifact_uri(path),
                                               "metadata": meta}]}
    _write_atomic(args.executor_output, json.dumps({"artifacts": artifacts}))


def artifact_uri(path: str) -> str:
    """An output path as the artifact's URI (the launcher's mount prefix back to a scheme)."""
    for local, scheme in (("/gcs/", "gs://"), ("/minio/", "minio://"), ("/s3/", "s3://")):
        if path.startswith(local):
            return scheme + path[len(local) :]
    return path


if __name__ == "__main__":
    sys.exit(main())
