"""The Python API: what the command line, the Jupyter server and users' scripts call.

>>> from kale_py.api import check_notebook
>>> pipeline = check_notebook("sample_notebooks/churn.ipynb")  # doctest: +SKIP
>>> pipeline.ok, [s.name for s in pipeline.steps]  # doctest: +SKIP
(True, ['load', 'features', 'train', 'evaluate'])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .diagnostics import CheckError, SubmitError, error
from .graph import Pipeline, build_pipeline
from .notebook import notebook_from_dict, read_notebook

__all__ = [
    "analyse",
    "cancel_run",
    "compile_katib",
    "check_notebook",
    "compile_notebook",
    "get_run",
    "get_tune",
    "kfp_run_status",
    "list_experiments",
    "list_runs",
    "list_tunes",
    "list_volumes",
    "manage_schedule",
    "read_log",
    "read_report",
    "read_tune_report",
    "start_local_run",
    "start_tune",
    "submit",
    "tune",
]


def check_notebook(path: str | Path) -> Pipeline:
    """Read, split, analyse and connect a notebook; problems are in ``.diagnostics``.

    Raises :class:`~kale_py.diagnostics.NotebookError` only when the file cannot be read
    as a notebook at all.
    """
    return build_pipeline(read_notebook(path))


def analyse(path: str | Path, notebook: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pipeline as JSON-ready data (steps, edges, levels, parameters, diagnostics).

    ``notebook`` is the live notebook content (nbformat 4 JSON) when it differs from the
    file on disk, as in an editor with unsaved changes.
    """
    from .render import pipeline_to_dict

    path = Path(path)
    nb = notebook_from_dict(notebook, path) if notebook is not None else read_notebook(path)
    return pipeline_to_dict(build_pipeline(nb))


def compile_notebook(
    path: str | Path,
    output: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    image: str | None = None,
    install_packages: bool = False,
    step_image: str | None = None,
) -> dict[str, Any]:
    """Compile to Kubeflow Pipelines v2 YAML and write it (default: beside the notebook).

    With ``step_image`` (``REGISTRY/REPOSITORY``) the steps' distributions are pushed there as a
    step image first (see :func:`build_image`); the YAML references it by digest.

    ``params`` are ``--param``-style texts, read by each parameter's type. Returns
    ``{"path", "bytes", "steps", "name"}``. Raises :class:`~kale_py.diagnostics.KalePyError`
    (nothing is written) when the notebook has errors.
    """
    from .kubeflow.compile import compile_pipeline, write_pipeline
    from .parameters import parse_param_overrides

    path = Path(path)
    pipeline = _checked(path)
    values = parse_param_overrides(pipeline.parameters, _texts(params))
    compiled = compile_pipeline(pipeline, values, image=image, install_packages=install_packages,
                                step_image=step_image)
    target = Path(output) if output is not None else path.with_suffix(".yaml")
    write_pipeline(compiled, target)
    return {
        "path": str(target),
        "bytes": compiled.bytes,
        "steps": compiled.steps,
        "name": compiled.name,
        "diagnostics": [d.to_dict() for d in compiled.diagnostics],
        "served": _served(pipeline),
    }


def _served(pipeline: Pipeline) -> list[dict[str, str]]:
    """The ``serve:VAR`` models and the InferenceServices the pipeline deploys them as."""
    if not pipeline.served:
        return []
    from .serving import served_services

    return served_services(pipeline)


def start_serving(path: str | Path, variable: str | None = None, run_id: str | None = None,
                  port: int | None = None) -> dict[str, Any]:
    """Serve the ``serve:VAR`` model a local run saved (``nb2pipe serve`` in the background,
    on 127.0.0.1); once it is ready, where: ``{"url", "port", "pid", "name", "variable",
    "step", "run_id", ...}``. A notebook has one model server: starting one stops the last."""
    from .serving.background import start_serving as start

    return start(path, variable, run_id, port)


def local_serving(path: str | Path) -> dict[str, Any] | None:
    """The notebook's running model server (as :func:`start_serving` answered), or None."""
    from .serving.background import serving_state

    return serving_state(path)


def stop_serving(path: str | Path) -> dict[str, Any] | None:
    """Stop the notebook's model server; what it served, or None if none was running."""
    from .serving.background import stop_serving as stop

    return stop(path)


def serving_status(path: str | Path, namespace: str | None = None) -> dict[str, Any]:
    """The InferenceServices of the notebook's ``serve:VAR`` models on the cluster: for each,
    its state (ready, not ready, not deployed, foreign), its V2 ``infer`` URL and why it is
    not ready. Needs the Kubernetes API (the pod's service account, else the kubeconfig)."""
    from .serving.cluster import service_status
    from .serving.local import served_variable

    pipeline = _checked(Path(path))
    served_variable(pipeline, next(iter(pipeline.served), None))  # NB801 when there is none
    return service_status(pipeline, namespace)


def build_image(path: str | Path, target: str | None = None,
                base: str | None = None) -> dict[str, Any]:
    """Build and push the notebook's step image; its reference by digest and what it holds.

    ``target`` defaults to the metadata's ``step_image``; ``base`` to the image the steps would
    get (the notebook pod's in a Kubeflow notebook, else ``base_image``).
    """
    from .diagnostics import KalePyError, error
    from .images.build import build_step_image
    from .kubeflow.compile import _default_image
    from .packages import imported_modules

    path = Path(path)
    pipeline = _checked(path)
    target = target or pipeline.settings.step_image
    if not target:
        raise KalePyError(error("IM001", "no registry to push the step image to: give --push "
                                "REGISTRY/REPOSITORY or set step_image in the notebook metadata"))
    if base is None and not pipeline.settings.base_image and os.environ.get(
            "KUBERNETES_SERVICE_HOST"):
        from .cluster import notebook_defaults

        base, _, _ = notebook_defaults(path.resolve().parent, discover_volumes=False)
    blocks = pipeline.blocks
    cells = [*blocks.imports, *blocks.functions, *(c for s in pipeline.steps for c in s.cells)]
    built = build_step_image(imported_modules(cells), target, _default_image(pipeline, base))
    return {"reference": built.reference, "tag": built.tag, "base": built.base,
            "python": built.python, "platform": built.platform,
            "distributions": list(built.distributions), "layer_digest": built.layer_digest,
            "layer_size": built.layer_size, "layer_files": built.layer_files,
            "pushed": list(built.pushed), "seconds": round(built.seconds, 3),
            "diagnostics": [d.to_dict() for d in built.diagnostics]}


def submit(
    path: str | Path,
    *,
    host: str | None = None,
    experiment: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    params: Mapping[str, Any] | None = None,
    name: str | None = None,
    version: str | None = None,
    image: str | None = None,
    watch: bool = False,
    install_packages: bool = False,
    step_image: str | None = None,
    schedule: str | None = None,
    max_concurrency: int = 1,
    catchup: bool = True,
    out: Callable[[str], None] = print,
    username: str | None = None,
) -> dict[str, Any]:
    """Compile (for a notebook) and submit to a KFP endpoint; with ``watch``, wait for the end.

    With ``schedule`` (a cron expression) a recurring run is created instead of one run.

    ``path`` is a notebook or an already compiled ``.yaml``. Host, experiment and namespace
    fall back to the notebook's metadata. Returns the ids, the run's link and, when watched,
    its final ``state``.
    """
    from .kubeflow.client import submit_pipeline
    from .kubeflow.schedules import Schedule, kfp_cron

    recurring = (Schedule(kfp_cron(schedule), max_concurrency, catchup)
                 if schedule is not None else None)
    path = Path(path)
    served: list[dict[str, str]] = []
    if path.suffix in (".yaml", ".yml"):
        text, default_name, typed = _read_compiled(path, _texts(params))
        description, settings_host, settings_experiment, settings_ns = None, None, None, None
    else:
        from .kubeflow.compile import compile_pipeline
        from .parameters import parse_param_overrides

        pipeline = _checked(path)
        typed = parse_param_overrides(pipeline.parameters, _texts(params))
        compiled = compile_pipeline(pipeline, image=image, install_packages=install_packages,
                                    step_image=step_image)
        text, default_name = compiled.yaml, compiled.name
        served = _served(pipeline)
        s = pipeline.settings
        description, settings_host = s.pipeline_description, s.kfp_host
        settings_experiment, settings_ns = s.experiment_name, s.namespace
    result = submit_pipeline(
        text,
        name=name or default_name,
        description=description,
        host=host or settings_host,
        token=token,
        namespace=namespace or settings_ns,
        experiment=experiment or settings_experiment or "Default",
        params=typed,
        version_name=version,
        watch=watch and recurring is None,
        out=out,
        schedule=recurring,
        username=username,
    )
    return {
        "pipeline_id": result.pipeline_id,
        "version_id": result.version_id,
        "experiment_id": result.experiment_id,
        "run_id": result.run_id,
        "run_url": result.run_url,
        "state": result.final_state,
        "recurring_run_id": result.recurring_run_id,
        "served": served,
    }


def manage_schedule(
    path: str | Path,
    action: str,
    *,
    host: str | None = None,
    experiment: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    name: str | None = None,
    out: Callable[[str], None] = print,
    username: str | None = None,
) -> list[str]:
    """``disable``, ``enable`` or ``delete`` the recurring runs of the notebook's pipeline (or
    of a compiled ``.yaml``); host, experiment and namespace fall back to the metadata."""
    from .kubeflow.client import manage_schedule as manage

    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        _, default_name, _ = _read_compiled(path, {})
        settings_host = settings_experiment = settings_ns = None
    else:
        from .kubeflow.compile import pipeline_name

        pipeline = _checked(path)
        default_name = pipeline_name(pipeline)
        s = pipeline.settings
        settings_host, settings_experiment, settings_ns = (
            s.kfp_host, s.experiment_name, s.namespace)
    return manage(action, name=name or default_name, host=host or settings_host, token=token,
                  namespace=namespace or settings_ns,
                  experiment=experiment or settings_experiment or "Default", out=out,
                  username=username)


def tune(
    path: str | Path,
    search: list[str] | None = None,
    *,
    objective: str | None = None,
    maximize: bool | None = None,
    trials: int | None = None,
    parallel: int | None = None,
    algorithm: str | None = None,
    seed: int | None = None,
    jobs: int | None = None,
    tune_id: str | None = None,
    progress: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Tune pipeline parameters locally (Optuna); the trials, the best one and the report path.

    ``search`` holds ``NAME=SPEC`` texts (``LOW..HIGH[:log][:step=S]`` or ``A,B,C``); without
    it the notebook's ``katib_metadata`` says what to tune.

    >>> tune("iris.ipynb", ["N_ESTIMATORS=10..200:log"], objective="accuracy",
    ...      maximize=True, trials=8)["best"]["params"]  # doctest: +SKIP
    {'N_ESTIMATORS': 61}
    """
    from .tuning.local import tune_local
    from .tuning.space import build_search

    pipeline = _checked(Path(path))
    spec = build_search(pipeline, search or [], objective, maximize, algorithm, trials,
                        parallel, seed)
    return tune_local(pipeline, spec, jobs=jobs, tune_id=tune_id, progress=progress).to_dict()


def start_tune(path: str | Path, search: list[str], **options: Any) -> dict[str, str]:
    """Start ``nb2pipe tune`` in the background (for the panel); ``{"tune_id"}`` at once.

    ``options``: objective, maximize, trials, parallel, algorithm, as for :func:`tune`."""
    from .tuning.background import start_tune as start

    return start(path, search, **options)


def list_tunes(path: str | Path) -> list[dict[str, Any]]:
    """The notebook's tunings, newest first."""
    from .tuning.background import list_tunes as listing

    return listing(path)


def get_tune(path: str | Path, tune_id: str) -> dict[str, Any]:
    """One tuning's trials, best trial and status."""
    from .tuning.background import get_tune as get

    return get(path, tune_id)


def read_tune_report(path: str | Path, tune_id: str) -> str:
    """One tuning's HTML report."""
    from .tuning.background import read_tune_report as read

    return read(path, tune_id)


def compile_katib(
    path: str | Path,
    output: str | Path | None,
    search: list[str] | None = None,
    *,
    objective: str | None = None,
    maximize: bool | None = None,
    trials: int | None = None,
    parallel: int | None = None,
    algorithm: str | None = None,
    params: Mapping[str, Any] | None = None,
    image: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """Write a Katib Experiment (and the ConfigMap its trials mount) that tunes the pipeline
    on Kubeflow; ``{"path", "name", "trials", "algorithm"}``. With ``output=None`` the
    manifests are created in the cluster instead (``{"name", "namespace", ...}``).

    The file is a Kubernetes ``List`` in JSON form, which is YAML too: ``kubectl apply -f``
    takes it, and writing it needs no YAML library."""
    import json

    from .kubeflow.client import _inline_spec
    from .kubeflow.compile import compile_pipeline, pipeline_name
    from .local import write_text_atomic
    from .parameters import parse_param_overrides
    from .tuning.katib import katib_manifests, katib_name
    from .tuning.space import build_search

    pipeline = _checked(Path(path))
    spec = build_search(pipeline, search or [], objective, maximize, algorithm, trials,
                        parallel)
    values = parse_param_overrides(pipeline.parameters, _texts(params))
    # the trials run the pipeline without deploying its served models
    compiled = compile_pipeline(pipeline, values, image=image, serve=False)
    name = katib_name(pipeline_name(pipeline))
    s = pipeline.settings
    manifests = katib_manifests(
        pipeline, spec, {"pipeline_spec": _inline_spec(compiled.yaml)}, name=name,
        image=image or s.base_image or "python:3.11", namespace=namespace or s.namespace,
        kfp_experiment=s.experiment_name or None)
    result = {"name": name, "trials": spec.trials, "algorithm": spec.algorithm}
    if output is None:  # submit --tune: created in the cluster
        from .tuning.apply import create_katib

        return {**result, **create_katib(manifests, namespace or s.namespace)}
    listing = {"apiVersion": "v1", "kind": "List", "items": manifests}
    write_text_atomic(target := Path(output), json.dumps(listing, indent=2) + "\n")
    return {**result, "path": str(target)}


def list_experiments(
    host: str | None = None, token: str | None = None, namespace: str | None = None
) -> list[dict[str, str]]:
    """The experiments of a KFP endpoint, for choosing one in the side panel."""
    from .kubeflow.client import list_experiments as list_remote

    return [
        {"id": e.experiment_id, "name": e.display_name}
        for e in list_remote(host=host, token=token, namespace=namespace)
    ]


def start_local_run(path: str | Path, params: Mapping[str, Any] | None = None,
                    only: list[str] | None = None, from_step: str | None = None) -> dict[str, Any]:
    """Start ``nb2pipe run`` in the background; returns ``{"run_id", "run_dir"}`` at once."""
    from . import runs

    return runs.start_local_run(path, dict(params or {}), list(only or []), from_step)


def list_runs(path: str | Path) -> list[dict[str, Any]]:
    """The notebook's local runs, newest first."""
    from . import runs

    return runs.list_runs(path)


def cancel_run(path: str | Path, run_id: str) -> dict[str, Any]:
    """Stop a running local run (its steps end, its status becomes ``cancelled``)."""
    from . import runs

    return runs.cancel_run(path, run_id)


def kfp_run_status(
    run_id: str, host: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """A submitted run's state on the KFP endpoint, with its link and failing step."""
    from .kubeflow.client import run_status

    return run_status(run_id, host=host, token=token)


def get_run(path: str | Path, run_id: str) -> dict[str, Any]:
    """One run's manifest: status, per-step status and timings, metrics."""
    from . import runs

    return runs.get_run(path, run_id)


def read_log(path: str | Path, run_id: str, step: str) -> str:
    from . import runs

    return runs.read_log(path, run_id, step)


def read_report(path: str | Path, run_id: str, step: str) -> str:
    from . import runs

    return runs.read_report(path, run_id, step)


def list_volumes() -> dict[str, Any]:
    """The notebook pod's image and volumes when running inside Kubeflow (for the panel)."""
    from .cluster import list_volumes as discover

    return discover()


def list_poddefaults() -> dict[str, Any]:
    """The namespace's Kubeflow PodDefaults (name, description, labels) for the panel."""
    from .kubeflow.poddefaults import list_poddefaults as fetch

    return fetch()


def verify(path: str | Path, params: Mapping[str, Any] | None = None, runs: int = 1
           ) -> dict[str, Any]:
    """``nb2pipe verify``: the notebook in a kernel and as the local pipeline, compared.

    The answer is :meth:`kale_py.verify.VerifyResult.to_dict` (see the server's
    ``POST kale-py/verify`` for its fields). Raises KalePyError when it cannot compare.
    """
    from .verify import verify_notebook

    return verify_notebook(path, _texts(params), runs).to_dict()


def _texts(params: Mapping[str, Any] | None) -> dict[str, str]:
    """``--param``-style texts from values that may already be typed (JSON from the panel)."""
    import json

    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}


def _checked(path: Path) -> Pipeline:
    pipeline = check_notebook(path)
    if not pipeline.ok:
        raise CheckError([d for d in pipeline.diagnostics if d.is_error])
    return pipeline


def _read_compiled(path: Path, params: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
    """A compiled pipeline's text, name, and ``--param`` texts typed by its root inputs."""
    import yaml  # type: ignore[import-untyped]

    from .parameters import Parameter, parse_param_overrides

    try:
        text = path.read_text(encoding="utf-8")
        spec = next(d for d in yaml.safe_load_all(text) if d)
        name = spec["pipelineInfo"]["name"]
        inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    except (OSError, yaml.YAMLError, StopIteration, KeyError, TypeError) as exc:
        raise SubmitError(error("KF002", f"{path}: not a compiled pipeline ({exc})")) from None
    kinds = {
        "NUMBER_INTEGER": "int",
        "NUMBER_DOUBLE": "float",
        "STRING": "str",
        "BOOLEAN": "bool",
        "LIST": "list",
        "STRUCT": "dict",
    }
    declared = [
        Parameter(n, kinds.get(d.get("parameterType", ""), "str"), d.get("defaultValue"), 0, 0)
        for n, d in inputs.items()
    ]
    typed = parse_param_overrides(declared, params)
    return text, name, {k: v for k, v in typed.items() if k in params}
