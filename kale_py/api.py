"""The Python API: what the command line, the Jupyter server and users' scripts call.

>>> from kale_py.api import check_notebook
>>> pipeline = check_notebook("sample_notebooks/churn.ipynb")  # doctest: +SKIP
>>> pipeline.ok, [s.name for s in pipeline.steps]  # doctest: +SKIP
(True, ['load', 'features', 'train', 'evaluate'])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .diagnostics import CheckError, SubmitError, error
from .graph import Pipeline, build_pipeline
from .notebook import notebook_from_dict, read_notebook

__all__ = [
    "analyse",
    "check_notebook",
    "compile_notebook",
    "get_run",
    "list_experiments",
    "list_runs",
    "list_volumes",
    "read_log",
    "read_report",
    "start_local_run",
    "submit",
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
) -> dict[str, Any]:
    """Compile to Kubeflow Pipelines v2 YAML and write it (default: beside the notebook).

    ``params`` are ``--param``-style texts, read by each parameter's type. Returns
    ``{"path", "bytes", "steps", "name"}``. Raises :class:`~kale_py.diagnostics.KalePyError`
    (nothing is written) when the notebook has errors.
    """
    from .kubeflow.compile import compile_pipeline, write_pipeline
    from .parameters import parse_param_overrides

    path = Path(path)
    pipeline = _checked(path)
    values = parse_param_overrides(pipeline.parameters, _texts(params))
    compiled = compile_pipeline(pipeline, values, image=image, install_packages=install_packages)
    target = Path(output) if output is not None else path.with_suffix(".yaml")
    write_pipeline(compiled, target)
    return {
        "path": str(target),
        "bytes": compiled.bytes,
        "steps": compiled.steps,
        "name": compiled.name,
        "diagnostics": [d.to_dict() for d in compiled.diagnostics],
    }


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
    out: Callable[[str], None] = print,
    username: str | None = None,
) -> dict[str, Any]:
    """Compile (for a notebook) and submit to a KFP endpoint; with ``watch``, wait for the end.

    ``path`` is a notebook or an already compiled ``.yaml``. Host, experiment and namespace
    fall back to the notebook's metadata. Returns the ids, the run's link and, when watched,
    its final ``state``.
    """
    from .kubeflow.client import submit_pipeline

    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        text, default_name, typed = _read_compiled(path, _texts(params))
        description, settings_host, settings_experiment, settings_ns = None, None, None, None
    else:
        from .kubeflow.compile import compile_pipeline
        from .parameters import parse_param_overrides

        pipeline = _checked(path)
        typed = parse_param_overrides(pipeline.parameters, _texts(params))
        compiled = compile_pipeline(pipeline, image=image, install_packages=install_packages)
        text, default_name = compiled.yaml, compiled.name
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
        watch=watch,
        out=out,
        username=username,
    )
    return {
        "pipeline_id": result.pipeline_id,
        "version_id": result.version_id,
        "experiment_id": result.experiment_id,
        "run_id": result.run_id,
        "run_url": result.run_url,
        "state": result.final_state,
    }


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
