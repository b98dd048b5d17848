"""Diagnostics and the exception hierarchy.

Every problem kale_py finds in a notebook is a :class:`Diagnostic`: what is wrong,
where (cell and line, both counted from 1), and in which step. Cells are numbered in
notebook order, markdown cells included, as JupyterLab shows them.

Errors that stop a stage are raised as a :class:`KalePyError` subclass carrying the
diagnostics; the command line turns them into text and exit code 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]

#: Every diagnostic code with a one-line summary (also documented in the README).
CODES: dict[str, str] = {
    "NB000": "a problem reported without a more specific code",
    "NB001": "the notebook file cannot be read (missing, not JSON, not a notebook)",
    "NB002": "the notebook's structure is broken (a cell without a type or a source)",
    "NB003": "unknown key in the notebook's kubeflow_notebook metadata",
    "NB004": "invalid value in the notebook's kubeflow_notebook metadata",
    "NB005": "deprecated metadata key (docker_image): use base_image",
    "NB010": "a command needs a Python package that is not installed (names the extra)",
    "NB101": "syntax error in a cell",
    "NB102": "star import: names it brings in cannot be tracked between steps",
    "NB103": "a name is used but no earlier step defines it",
    "NB104": "a step whose name repeats would need a value from a step placed between its parts",
    "NB105": "state outside Python variables may not reach a later step",
    "NB106": "an IPython magic or shell line that a pipeline step cannot run the same way",
    "NB201": "unknown tag (ignored)",
    "NB202": "malformed tag value",
    "NB203": "prev: names a step that does not exist",
    "NB204": "prev: names a step that is not earlier in the notebook",
    "NB205": "more than one step name on one cell",
    "NB206": "invalid step name",
    "NB207": "two step names become the same name in Kubeflow",
    "NB208": "conflicting settings for one step",
    "NB209": "untagged cells above the first step run as a step of their own",
    "NB301": "a pipeline parameter is not a literal value",
    "NB302": "a pipeline-parameters cell holds something other than simple assignments",
    "NB303": "a pipeline parameter is defined twice",
    "NB304": "a pipeline-metrics line is not understood",
    "NB305": "a pipeline metric names a variable that no earlier step defines",
    "NB306": "--param names no pipeline parameter",
    "NB307": "--param value does not fit the parameter's type",
    "NB401": "the notebook has no code to run",
    "NB501": "--only or --from names no step",
    "NB502": "a partial run needs outputs that no earlier run saved",
    "NB503": "the notebook must be saved to a file before it can run",
    "NB504": "no such run, step or report",
    "NB505": "the key that signs your run records cannot be read or made",
    "NB601": "a --search spec is malformed or does not fit its parameter",
    "NB602": "--objective names no pipeline metric",
    "NB603": "every tuning trial failed",
    "NB604": "tuning needs the tune extra (Optuna)",
    "NB701": "nb2pipe verify needs nbclient and ipykernel (the verify extra)",
    "NB702": "the notebook fails when run top to bottom in a Jupyter kernel",
    "NB801": "serve:VAR names no variable a step computes",
    "NB802": "no local run has saved the model to serve",
    "NB803": "serving needs the serve extra (KServe)",
    "NB804": "the served object cannot predict (no predict method)",
    "NB805": "the saved model cannot be loaded (damaged, foreign or unloadable)",
    "KF001": "a step setting cannot be expressed in Kubeflow Pipelines",
    "KF002": "the compiled pipeline is not valid KFP IR",
    "KF003": "a step imports a module not installed here: its version cannot be pinned",
    "KF008": "steps import packages and run in the built-in default image, which lacks them",
    "KF101": "the KFP endpoint cannot be reached",
    "KF102": "the KFP endpoint refused the credentials (401/403)",
    "KF103": "no KFP API at that address (404, or an answer that is not KFP JSON)",
    "KF104": "the KFP endpoint answered with an error",
    "KF105": "the KFP connection is not configured (host, token, namespace)",
    "KF106": "--schedule is not a cron expression",
    "KF107": "the pipeline has no recurring run to disable, enable or delete",
    "KF201": "the Kubernetes API cannot be reached or gave an unexpected answer",
    "KF202": "the Kubernetes API refused the notebook's service account (401/403)",
    "KF203": "the notebook pod, a volume claim or the VolumeSnapshot API was not found",
    "KF204": "a volume snapshot failed or was not ready in time",
    "KF205": "a ReadWriteOnce volume reaches the steps as a copy restored from a snapshot",
    "KF206": "a ReadWriteOnce volume is given to the steps without a snapshot",
    "KF207": "the notebook's directory is on no volume the steps mount",
    "KF208": "the namespace's PodDefaults cannot be listed: named ones get the label NAME=true",
    "KF210": "a Katib Experiment of that name already exists",
    "IM001": "the step image cannot be built (a bad image reference, an unreadable installed file)",
    "IM101": "the image registry cannot be reached",
    "IM102": "the image registry refused the credentials, or none were found (401/403)",
    "IM103": "the image or repository is not in the registry (404)",
    "IM104": "the image registry answered with an error or an unexpected document",
    "IM201": "the steps import a module that no installed distribution provides",
    "IM202": "the base image's Python or architecture differs from this environment's",
    "IM203": "the step image's registry needs credentials but the steps name no pull secret",
    "IM204": "a distribution the steps import is installed in editable mode: not in the layer",
}


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a notebook.

    ``cell`` and ``line`` are 1-based; ``line`` counts within the cell. Either may be
    ``None`` for problems of the whole notebook.
    """

    severity: Severity
    code: str
    message: str
    cell: int | None = None
    line: int | None = None
    step: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def error(
    code: str,
    message: str,
    cell: int | None = None,
    line: int | None = None,
    step: str | None = None,
) -> Diagnostic:
    return Diagnostic("error", code, message, cell, line, step)


def warning(
    code: str,
    message: str,
    cell: int | None = None,
    line: int | None = None,
    step: str | None = None,
) -> Diagnostic:
    return Diagnostic("warning", code, message, cell, line, step)


def info(
    code: str,
    message: str,
    cell: int | None = None,
    line: int | None = None,
    step: str | None = None,
) -> Diagnostic:
    return Diagnostic("info", code, message, cell, line, step)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)


def sort_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Notebook order: by cell, then line; notebook-wide findings first."""
    return sorted(diagnostics, key=lambda d: (d.cell or 0, d.line or 0, d.code))


class KalePyError(Exception):
    """Root of every error kale_py raises on bad input or a failed run.

    It carries the diagnostics that explain it. Anything else escaping kale_py is a bug.
    """

    def __init__(self, diagnostics: Sequence[Diagnostic] | Diagnostic | str):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic("error", "NB000", diagnostics)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        super().__init__("; ".join(d.message for d in self.diagnostics))


class NotebookError(KalePyError):
    """The notebook cannot be read."""


class CheckError(KalePyError):
    """The notebook has errors in its tags, code or dependencies."""


class RunError(KalePyError):
    """A local pipeline run failed or could not start."""


class CompileError(KalePyError):
    """A pipeline could not be compiled for Kubeflow Pipelines."""


class SubmitError(KalePyError):
    """A KFP endpoint refused or could not be reached."""
