"""``nb2pipe verify``: the one rule, checked on the user's own notebook.

The notebook runs top to bottom in a Jupyter kernel (nbclient) and as the local pipeline;
every top-level name the steps bind is compared by a stable digest
(:mod:`kale_py.digest`). The pipeline's value of a name is the one the step that last
writes it (in notebook order, its provider for the rest of the notebook) had at its end. The
pipeline run has one more step, reading every name compared, as a later step of the user's
would: a step that may change a name through another name sharing its objects holds it only
when a later step needs it.
With ``runs`` > 1 the kernel runs again: names whose digests differ between kernel runs
(the time, unseeded randomness) are *unstable*, reported apart and not counted as
differences.

    >>> result = verify_notebook("nb.ipynb", runs=2)   # doctest: +SKIP
    >>> result.ok, [d.name for d in result.differences]   # doctest: +SKIP
    (False, ['model'])
"""

from __future__ import annotations

import errno
import io
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import digest
from .diagnostics import KalePyError, RunError, error
from .process_state import is_pseudo

if TYPE_CHECKING:
    from .graph import Pipeline
    from .local import RunResult

KERNEL_TIMEOUT = 3600  # seconds per cell


@dataclass(frozen=True)
class Difference:
    """A name whose final value differs between the kernel and the pipeline."""

    name: str
    step: str  # the step that provides it (its last writer)
    kernel: str  # short descriptions of the two values
    pipeline: str

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "step": self.step,
            "kernel": self.kernel,
            "pipeline": self.pipeline,
        }


@dataclass(frozen=True)
class StepResult:
    """One step: how it ran in the pipeline and how its names compared."""

    step: str
    status: str  # the local run's status: succeeded, failed, skipped, ...
    compared: int
    differences: tuple[str, ...]
    unstable: tuple[str, ...]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status,
            "compared": self.compared,
            "differences": list(self.differences),
            "unstable": list(self.unstable),
            "error": self.error,
        }


@dataclass(frozen=True)
class VerifyResult:
    notebook: str
    differences: tuple[Difference, ...]
    unstable: tuple[Difference, ...]  # kernel: the first kernel run; pipeline: another run's
    compared: int
    steps: tuple[StepResult, ...]
    runs: int
    kernel_seconds: float  # all kernel runs together
    pipeline_seconds: float
    pipeline_status: str

    @property
    def ok(self) -> bool:
        return not self.differences and self.pipeline_status == "succeeded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "notebook": self.notebook,
            "ok": self.ok,
            "differences": [d.to_dict() for d in self.differences],
            "unstable": [d.to_dict() for d in self.unstable],
            "compared": self.compared,
            "steps": [s.to_dict() for s in self.steps],
            "runs": self.runs,
            "pipeline_status": self.pipeline_status,
            "seconds": {
                "kernel": round(self.kernel_seconds, 3),
                "pipeline": round(self.pipeline_seconds, 3),
            },
        }


def verify_notebook(
    path: str | Path, params: Mapping[str, str] | None = None, runs: int = 1
) -> VerifyResult:
    """Run ``path`` in a kernel (``runs`` times) and as the local pipeline; compare.

    ``params`` are ``--param`` texts by name. Raises :class:`~kale_py.diagnostics.KalePyError`
    when the notebook has errors, a parameter does not fit, nbclient is missing (NB701) or
    the notebook fails in the kernel (NB702). A failing pipeline step is a result, not an
    error: its names are differences.
    """
    from .graph import build_pipeline
    from .notebook import read_notebook
    from .parameters import parse_param_overrides

    if runs < 1:
        raise RunError(error("NB000", f"runs must be at least 1, got {runs}"))
    texts = dict(params or {})
    pipeline = build_pipeline(read_notebook(path))
    if not pipeline.ok:
        raise RunError([d for d in pipeline.diagnostics if d.is_error])
    values = parse_param_overrides(pipeline.parameters, texts)
    writers = final_writers(pipeline)
    started = time.perf_counter()
    kernel = [_kernel_digests(pipeline, values, texts, sorted(writers)) for _ in range(runs)]
    kernel_seconds = time.perf_counter() - started
    started = time.perf_counter()
    bound = [name for name in sorted(writers) if name in kernel[0]]
    outcome, produced = _pipeline_digests(_with_reader(pipeline, bound), texts)
    pipeline_seconds = time.perf_counter() - started
    return _compare(
        pipeline, writers, kernel, produced, outcome, (kernel_seconds, pipeline_seconds)
    )


# The step verify adds after the notebook's last one for the pipeline run.
READER_STEP = "kale-py-verify-reads"


def _with_reader(pipeline: Pipeline, names: list[str]) -> Pipeline:
    """``pipeline`` with a last step that reads ``names``, as a later step reading them
    would: each name's last writer then holds it at its end. (A step that may change a name
    through another name of its group loads it only when a later step needs it.)

    The reads are guarded: a name the pipeline cannot deliver shows as a difference at its
    writer, not as a failure of this step. A name the check says no step delivers (one a
    step may have deleted) is not read.
    """
    from .graph import build_pipeline
    from .notebook import Cell, Notebook

    notebook = pipeline.notebook
    taken = {step.name for step in pipeline.steps}
    step, count = READER_STEP, 1
    while step in taken:
        count += 1
        step = f"{READER_STEP}-{count}"
    index = len(notebook.cells) + 1
    while names:
        reader = Cell(index=index, kind="code", source=reader_source(names),
                      tags=(f"step:{step}",))
        built = build_pipeline(Notebook(notebook.path, (*notebook.cells, reader),
                                        notebook.metadata, notebook.format))
        refused = {names[(d.line - 1) // _READ_LINES] for d in built.diagnostics
                   if d.is_error and d.cell == index and d.line}
        if not refused:
            return built if built.ok else pipeline  # (no other error is the reader's to fix)
        names = [name for name in names if name not in refused]
    return pipeline


_READ_LINES = 4  # the lines reader_source gives each name


def reader_source(names: list[str]) -> str:
    """The code of the reading step (see _with_reader): ``_READ_LINES`` lines a name."""
    return "".join(f"try:\n    {name}\nexcept NameError:\n    pass\n" for name in names)


def final_writers(pipeline: Pipeline) -> dict[str, str]:
    """Each name a step binds, with the last step (in notebook order) that writes it."""
    writers: dict[str, str] = {}
    for step in pipeline.steps:
        for name in pipeline.io[step.name].writes:
            if not is_pseudo(name):
                writers[name] = step.name
    return writers


# --- the kernel ----------------------------------------------------------------------------------


def _kernel_digests(
    pipeline: Pipeline, values: Mapping[str, Any], texts: Mapping[str, str], names: list[str]
) -> dict[str, Any]:
    """Run the notebook top to bottom in a fresh kernel; the digests of ``names`` at its end."""
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError as exc:
        raise RunError(
            error(
                "NB701",
                f"nb2pipe verify runs the notebook in a Jupyter kernel and needs nbclient and "
                f"ipykernel ({exc}); install them: pip install 'kale_py[verify]'",
            )
        ) from None
    assert pipeline.notebook.path is not None
    with tempfile.TemporaryDirectory(prefix="kale_py_verify_") as tmp:
        out = Path(tmp) / "digests.json"
        nb, origin = _kernel_notebook(pipeline, values, texts, names, out, nbformat)
        client = NotebookClient(
            nb,
            timeout=KERNEL_TIMEOUT,
            kernel_name="python3",
            resources={"metadata": {"path": str(pipeline.notebook.path.resolve().parent)}},
        )
        try:
            _run_in_own_loop(client.async_execute)
        except CellExecutionError as exc:
            raise _kernel_failure(nb, origin, exc) from None
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return result


def _run_in_own_loop(coroutine: Any) -> None:
    """Run an nbclient coroutine on an event loop of its own, in a thread of its own.

    The caller may be inside a running loop (the Jupyter server's worker threads see it,
    so may a notebook calling the API); nbclient's blocking wrapper would then fail.
    """
    import asyncio
    import threading

    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coroutine())
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            failure.append(exc)

    with quiet_closed_sockets():
        thread = threading.Thread(target=target, name="kale_py-verify-kernel")
        thread.start()
        thread.join()
    if failure:
        raise failure[0]


class _ClosedSocketNoise(logging.Filter):
    """Drops the ZMQError ENOTSOCK that pyzmq logs, with a traceback, when one of its
    streams runs a callback on a socket that the kernel client closed as the kernel shut
    down: a harmless race at the end of every kernel run, not a failure of the notebook."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (type(exc).__name__ == "ZMQError"
                    and getattr(exc, "errno", None) == errno.ENOTSOCK)


@contextmanager
def quiet_closed_sockets() -> Iterator[None]:
    """While a kernel runs: pyzmq's (tornado's) log without the closed-socket race."""
    noise = _ClosedSocketNoise()
    logger = logging.getLogger("tornado.general")
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def _kernel_notebook(
    pipeline: Pipeline,
    values: Mapping[str, Any],
    texts: Mapping[str, str],
    names: list[str],
    out: Path,
    nbformat: Any,
) -> tuple[Any, list[int | None]]:
    """The cells a top-to-bottom run executes (skipped ones left out), the parameters given
    on the command line set after the parameters cell, and a last cell writing digests."""
    skip = {c.index for c in pipeline.blocks.skipped}
    last_parameter = max((p.cell for p in pipeline.parameters), default=None)
    overrides = "\n".join(f"{name} = {values[name]!r}" for name in texts)
    cells: list[Any] = []
    origin: list[int | None] = []
    for cell in pipeline.notebook.cells:
        if cell.kind != "code" or cell.index in skip:
            continue
        cells.append(nbformat.v4.new_code_cell(cell.source))
        origin.append(cell.index)
        if cell.index == last_parameter and overrides:
            cells.append(nbformat.v4.new_code_cell(overrides))
            origin.append(None)
    source = Path(digest.__file__).read_text(encoding="utf-8")
    dump = (
        f"_kale_py_digest = {{'__name__': 'kale_py_digest'}}\n"
        f"exec(compile({source!r}, 'kale_py/digest.py', 'exec'), _kale_py_digest)\n"
        f"with open({str(out)!r}, 'w', encoding='utf-8') as _kale_py_f:\n"
        f"    _kale_py_f.write(__import__('json').dumps("
        f"_kale_py_digest['digest_all'](globals(), {names!r})))\n"
    )
    cells.append(nbformat.v4.new_code_cell(dump))
    origin.append(None)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb, origin


def _kernel_failure(nb: Any, origin: list[int | None], exc: Exception) -> KalePyError:
    """NB702: the notebook itself fails in a kernel, at the cell (and line) that raised."""
    cell: int | None = None
    line: int | None = None
    for position, kernel_cell in enumerate(nb.cells):
        errors = [o for o in kernel_cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            cell = origin[position]
            lines = re.findall(
                r"line (\d+)",
                re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors[0].get("traceback", []))),
            )
            line = int(lines[0]) if lines else None
            break
    name = getattr(exc, "ename", type(exc).__name__)
    value = getattr(exc, "evalue", str(exc))
    return RunError(
        error(
            "NB702",
            f"the notebook fails when run top to bottom in a Jupyter kernel: {name}: {value}; "
            "fix it there first (nb2pipe verify compares a working notebook with its pipeline)",
            cell=cell,
            line=line,
        )
    )


# --- the pipeline --------------------------------------------------------------------------------


def _pipeline_digests(
    pipeline: Pipeline, texts: Mapping[str, str]
) -> tuple[RunResult, dict[str, dict[str, Any]]]:
    """Run the local pipeline (no cache, in a scratch run directory); each step's digests."""
    from .local import RunOptions, run_local

    with tempfile.TemporaryDirectory(prefix="kale_py_verify_") as tmp:
        digests = Path(tmp) / "digests"
        digests.mkdir()
        options = RunOptions(
            params=dict(texts),
            cache=False,
            progress="quiet",
            run_root=Path(tmp) / "state",
            environment={"KALE_PY_EXPORT_DIGESTS": str(digests)},
        )
        outcome = run_local(pipeline, options, io.StringIO())
        produced = {}
        for step in pipeline.steps:
            file = digests / f"{step.kfp_name}.json"
            if file.is_file():
                produced[step.name] = json.loads(file.read_text(encoding="utf-8"))
        return outcome, produced


# --- comparing ------------------------------------------------------------------------------


def _compare(
    pipeline: Pipeline,
    writers: Mapping[str, str],
    kernel: list[dict[str, Any]],
    produced: Mapping[str, dict[str, Any]],
    outcome: RunResult,
    seconds: tuple[float, float],
) -> VerifyResult:
    differences: list[Difference] = []
    unstable: list[Difference] = []
    counts: dict[str, int] = {}
    reference = kernel[0]
    order = {s.name: i for i, s in enumerate(pipeline.steps)}
    for name, step in sorted(writers.items(), key=lambda item: (order[item[1]], item[0])):
        if name not in reference:
            continue  # not bound at the end of the notebook (deleted, or on no path taken)
        counts[step] = counts.get(step, 0) + 1
        expected = reference[name]
        other = next(
            (run.get(name) for run in kernel[1:] if not _same(run.get(name), expected)), expected
        )
        if other is not expected:
            unstable.append(
                Difference(name, step, digest.describe(expected), digest.describe(other))
            )
            continue
        actual = produced.get(step, {}).get(name)
        if not _same(expected, actual):
            differences.append(
                Difference(
                    name, step, digest.describe(expected), _pipeline_side(actual, step, outcome)
                )
            )
    errors = dict(outcome.failed)
    steps = tuple(
        StepResult(
            step=s.name,
            status=outcome.steps.get(s.name, "skipped"),
            compared=counts.get(s.name, 0),
            differences=tuple(d.name for d in differences if d.step == s.name),
            unstable=tuple(d.name for d in unstable if d.step == s.name),
            error=errors[s.name].describe() if s.name in errors else None,
        )
        for s in pipeline.steps
    )
    return VerifyResult(
        notebook=str(pipeline.notebook.path),
        differences=tuple(differences),
        unstable=tuple(unstable),
        compared=sum(counts.values()),
        steps=steps,
        runs=len(kernel),
        kernel_seconds=seconds[0],
        pipeline_seconds=seconds[1],
        pipeline_status=outcome.status,
    )


def _same(a: Any, b: Any) -> bool:
    return a is not None and b is not None and digest.same(a, b)


def _pipeline_side(actual: Any, step: str, outcome: RunResult) -> str:
    if actual is not None:
        return digest.describe(actual)
    status = outcome.steps.get(step, "skipped")
    if status != "succeeded":
        return f"(step {step!r} {status})"
    return "(not defined at the end of the step)"


# --- text output ------------------------------------------------------------------------------


def result_to_text(result: VerifyResult) -> str:
    """What ``nb2pipe verify`` prints."""
    lines = []
    for s in result.steps:
        if s.error:
            lines.append(f"step {s.step} {s.status}: {s.error}")
    for d in result.differences:
        lines.append(f"differs: {d.name} (step {d.step}): kernel {d.kernel}; pipeline {d.pipeline}")
    for d in result.unstable:
        lines.append(
            f"unstable: {d.name} (step {d.step}): differs between kernel runs "
            f"({d.kernel}; {d.pipeline}); not compared"
        )
    kernel = f"kernel {result.kernel_seconds:.1f} s" + (
        f" for {result.runs} runs" if result.runs > 1 else ""
    )
    verdict = (
        "the pipeline computes what the notebook computes"
        if result.ok
        else (
            f"{len(result.differences)} differ"
            + (
                ""
                if result.pipeline_status == "succeeded"
                else f", the run {result.pipeline_status}"
            )
        )
    )
    lines.append(
        f"{result.notebook}: {result.compared} names compared, {verdict}"
        + (f", {len(result.unstable)} unstable" if result.unstable else "")
        + f" ({kernel}, pipeline {result.pipeline_seconds:.1f} s)"
    )
    return "\n".join(lines)
