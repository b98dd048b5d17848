"""``nb2pipe serve``: the model a local run saved, served with KServe's model server.

The model is the variable tagged ``serve:VAR``; a local run saved it in the state of the
step that last computed it. It is loaded like any step input (the manifest authenticated with
the user's key, the file's bytes checked against it) and served under
``/v2/models/NAME/infer`` on this machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kale_py.diagnostics import RunError, error
from kale_py.graph import Pipeline
from kale_py.integrity import user_key
from kale_py.local import STATE_DIR_NAME, RunDirectory, read_runs
from kale_py.serving import service_name


@dataclass(frozen=True)
class ServedModel:
    """What is served: the variable, its value, the run and step it comes from."""

    name: str
    variable: str
    step: str
    run_id: str
    value: Any


def served_variable(pipeline: Pipeline, variable: str | None) -> tuple[str, str]:
    """The ``serve:VAR`` variable (the only one, or the one asked for) and its step."""
    if not pipeline.served:
        raise RunError(error("NB801", "no variable is tagged serve:VAR: tag the cell that "
                             "trains the model, e.g. serve:model"))
    if variable is None:
        if len(pipeline.served) > 1:
            raise RunError(error("NB801", "several variables are tagged serve:VAR ("
                                 + ", ".join(sorted(pipeline.served)) + "): pass --variable"))
        variable = next(iter(pipeline.served))
    if variable not in pipeline.served:
        raise RunError(error("NB801", f"{variable!r} is not tagged serve:{variable}"))
    return variable, pipeline.served[variable]


@dataclass(frozen=True)
class SavedModel:
    """Where a local run saved the served variable: found, not loaded."""

    variable: str
    step: str
    run_id: str
    directory: Path
    runs_dir: Path


def find_served(pipeline: Pipeline, variable: str | None = None,
                run_id: str | None = None) -> SavedModel:
    """The local run (default: the latest) that saved the served variable, and where."""
    from kale_py import marshal

    variable, step = served_variable(pipeline, variable)
    kfp_name = pipeline.step(step).kfp_name
    path = (pipeline.notebook.path or Path("notebook.ipynb")).resolve()
    runs_dir = path.parent / STATE_DIR_NAME / "runs"
    for run in read_runs(runs_dir, path):
        if run_id is not None and run["run_id"] != run_id:
            continue
        record = (run.get("steps") or {}).get(step) or {}
        if record.get("status") not in ("succeeded", "cached"):
            continue
        directory = RunDirectory(runs_dir / run["run_id"]).state(kfp_name)
        if (directory / marshal.MANIFEST_NAME).is_file():
            return SavedModel(variable, step, run["run_id"], directory, runs_dir)
    which = f"run {run_id}" if run_id else "no local run"
    raise RunError(error("NB802", f"{which} has saved {variable!r} (step {step!r}): run "
                         "the notebook first with nb2pipe run", step=step))


def load_served(pipeline: Pipeline, variable: str | None = None, run_id: str | None = None,
                name: str | None = None) -> ServedModel:
    """The served variable as the run (default: the latest that saved it) left it."""
    from kale_py import marshal

    saved = find_served(pipeline, variable, run_id)
    step = saved.step
    # as a step loads its inputs: the manifest signed with this user's key, every byte
    # checked against it, before anything is unpickled
    try:
        manifest = marshal.read_manifest(saved.directory, key=user_key(), producer=step)
        record = manifest["variables"].get(saved.variable)
        if record is None:
            raise RunError(error("NB802", f"run {saved.run_id} has not saved "
                                 f"{saved.variable!r} (step {step!r}): run the notebook again "
                                 "with nb2pipe run", step=step))
        value = marshal.load_variable(record, saved.directory, allowed_root=saved.runs_dir,
                                      producer=step)
    except marshal.StateError as exc:
        raise RunError(error("NB805", str(exc), step=step)) from None
    if not callable(getattr(value, "predict", None)):
        raise RunError(error("NB804", f"{saved.variable!r} is a {type(value).__name__}, which "
                             "has no predict method: tag the trained model", step=step))
    return ServedModel(name or service_name(saved.variable), saved.variable, step,
                       saved.run_id, value)


def serve_local(model: ServedModel, port: int = 8080,
                announce: Callable[[str], object] = print) -> None:
    """Serve until interrupted (KServe's model server, V2 REST on ``port``)."""
    try:
        import kserve
    except ImportError:
        raise RunError(error("NB803", "serving needs KServe: pip install 'kale_py[serve]'"))\
            from None
    from kale_py.serving.model import model_class

    served = model_class()(model.name, model.value)
    served.load()
    announce(f"Serving {model.variable} (step {model.step}, run {model.run_id}) as "
             f"http://127.0.0.1:{port}/v2/models/{model.name}/infer")
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([served])
