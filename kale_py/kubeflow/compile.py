"""From a checked notebook to Kubeflow Pipelines v2 YAML.

The same step programs that ``nb2pipe run`` executes become container tasks: each task's
payload is a zip holding its program and spec, and the runtime (``kale_py.runtime``,
``kale_py.marshal``, ``kale_py.magics``: standard library only) travels once per pipeline.
The YAML is validated against KFP's own protobufs before anything is written.

>>> from kale_py.api import check_notebook
>>> pipeline = check_notebook("sample_notebooks/iris_classifier.ipynb")  # doctest: +SKIP
>>> compiled = compile_pipeline(pipeline)  # doctest: +SKIP
>>> compiled.yaml.startswith("# PIPELINE DEFINITION")  # doctest: +SKIP
True
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..codegen import StepProgram, generate_programs
from ..diagnostics import CompileError, Diagnostic, error, warning
from ..graph import Pipeline
from ..parameters import type_of
from ..pipeline import Step
from .ir import PipelineDef, PipelineParam, ServeDef, TaskDef, build_ir, ir_to_yaml
from .validate import validate_ir

if TYPE_CHECKING:
    from ..images.build import StepImage
    from .poddefaults import PodDefaultLabels

DEFAULT_IMAGE = "python:3.11"
RUNTIME_MODULES = ("runtime.py", "marshal.py", "magics.py", "process_state.py", "digest.py",
                   # the tasks that serve a serve:VAR model, and kale_py's Python predictor
                   "serving/__init__.py", "serving/export.py", "serving/deploy.py",
                   "serving/predictor.py", "serving/model.py",
                   # the in-cluster API address and labels the deploy task shares with it
                   "kubeflow/__init__.py", "kubeflow/cleanup.py")
_PACKAGE = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CompiledPipeline:
    name: str
    yaml: str
    steps: int
    bytes: int
    diagnostics: tuple[Diagnostic, ...] = ()


def compile_pipeline(
    pipeline: Pipeline,
    params: Mapping[str, Any] | None = None,
    image: str | None = None,
    *,
    discover: bool = True,
    install_packages: bool = False,
    step_image: str | None = None,
    serve: bool = True,
) -> CompiledPipeline:
    """Build, validate and render the pipeline; ``params`` override parameter defaults.

    With ``serve`` (the default) each ``serve:VAR`` model gets its export and deploy tasks;
    a tuning trial's pipeline goes without them (a trial must not redeploy the model).

    With ``discover``, inside a Kubeflow notebook pod the steps get the pod's image, volumes
    and PodDefault labels when the notebook's metadata names none (see :mod:`kale_py.cluster`).
    With ``step_image`` (or ``step_image`` in the metadata) the steps run in a step image built
    on that base and pushed to that repository (see :mod:`kale_py.images`).
    """
    if not pipeline.ok:
        raise CompileError([d for d in pipeline.diagnostics if d.is_error])
    found: list[Diagnostic] = []
    if discover:
        pipeline, image, found = _with_cluster_defaults(pipeline, image)
    poddefaults = _poddefault_labels(pipeline, discover, found)
    built, pull_secrets = _build_step_image(pipeline, image, step_image, found)
    if built is not None:
        image = built.reference
    if pull_secrets:
        defaults = replace(pipeline.settings.steps_defaults, pull_secrets=pull_secrets)
        pipeline = replace(pipeline, settings=replace(pipeline.settings, steps_defaults=defaults))
    install = install_packages or pipeline.settings.install_packages
    definition = pipeline_to_definition(pipeline, params or {}, image, install, found,
                                        python=built.python if built else None,
                                        poddefaults=poddefaults)
    if not serve:
        definition = replace(definition, serves=())
    spec, platform = build_ir(definition)
    validate_ir(spec, platform)
    text = ir_to_yaml(spec, platform)
    return CompiledPipeline(
        definition.name, text, len(definition.tasks), len(text.encode()), tuple(found)
    )


def _with_cluster_defaults(
    pipeline: Pipeline, image: str | None
) -> tuple[Pipeline, str | None, list[Diagnostic]]:
    settings = pipeline.settings
    if pipeline.notebook.path is None or (settings.volumes and (image or settings.base_image)):
        return pipeline, image, []
    if "KUBERNETES_SERVICE_HOST" not in os.environ:
        return pipeline, image, []  # not in a pod: nothing to discover, nothing to import
    from ..cluster import notebook_defaults

    pod_image, volumes, found = notebook_defaults(
        pipeline.notebook.path.resolve().parent, discover_volumes=not settings.volumes
    )
    if volumes:
        pipeline = replace(pipeline, settings=replace(settings, volumes=volumes))
    return pipeline, image or settings.base_image or pod_image, found


def _poddefault_labels(pipeline: Pipeline, discover: bool,
                       found: list[Diagnostic]) -> PodDefaultLabels | None:
    """PodDefault names to labels; in a pod, with the notebook pod's own PodDefault labels."""
    in_pod = discover and "KUBERNETES_SERVICE_HOST" in os.environ
    named = pipeline.settings.steps_defaults.poddefaults or any(
        s.settings.poddefaults for s in pipeline.steps)
    if not in_pod and not named:
        return None  # nothing to resolve, nothing to import
    from .poddefaults import PodDefaultLabels, resolver

    if not in_pod:
        return PodDefaultLabels({})
    labels, problems = resolver()
    found.extend(problems)
    return labels


def _build_step_image(pipeline: Pipeline, image: str | None, target: str | None,
                      found: list[Diagnostic]) -> tuple[StepImage | None, tuple[str, ...]]:
    """Build and push the step image when one is asked for; its base is the steps' image.

    Also the pull secrets the steps need for it (the notebook pod's, when its registry asked
    for credentials and the notebook names none)."""
    target = target or pipeline.settings.step_image
    if not target:
        return None, ()
    from ..images.build import build_step_image
    from ..packages import imported_modules

    blocks = pipeline.blocks
    cells = [*blocks.imports, *blocks.functions, *(c for s in pipeline.steps for c in s.cells)]
    base = _default_image(pipeline, image)
    secret_names, secrets = _notebook_pull_secrets(found)
    built = build_step_image(imported_modules(cells), target, base, pull_secret=secrets)
    found.extend(built.diagnostics)
    defaults = pipeline.settings.steps_defaults
    if built.private and secret_names and not defaults.pull_secrets:
        return built, secret_names  # the steps pull as the notebook pod does
    if built.private and not defaults.pull_secrets and not any(
            s.settings.pull_secrets for s in pipeline.steps):
        found.append(warning("IM203", f"the registry of {built.reference} asked for "
                             "credentials: unless the cluster's nodes or the pipeline's service "
                             "account can pull from it, name a pull secret in "
                             "image_pull_secrets (notebook metadata) or tag pull-secret:NAME"))
    return built, ()


def _notebook_pull_secrets(found: list[Diagnostic]
                           ) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    """In a Kubeflow notebook pod: its pull secrets' names and their registry logins."""
    if "KUBERNETES_SERVICE_HOST" not in os.environ:
        return (), None
    from ..cluster import ClusterConfig, discover_notebook, in_cluster
    from .pull_secrets import pod_pull_secrets

    if not in_cluster():
        return (), None
    config = ClusterConfig.from_environment()
    pod = discover_notebook(config)
    secrets, problems = pod_pull_secrets(config, pod)
    found.extend(problems)
    return pod.image_pull_secrets, secrets


def _default_image(pipeline: Pipeline, image: str | None) -> str:
    return (image or pipeline.settings.base_image or os.environ.get("KALE_PY_IMAGE")
            or DEFAULT_IMAGE)


def write_pipeline(compiled: CompiledPipeline, path: Path) -> None:
    """Write atomically: a failed write never leaves half a YAML file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(compiled.yaml, encoding="utf-8")
    os.replace(tmp, path)


def pipeline_name(pipeline: Pipeline) -> str:
    """The KFP pipeline name: the metadata's, else the notebook's file name."""
    raw = pipeline.settings.pipeline_name or (
        pipeline.notebook.path.stem if pipeline.notebook.path else "pipeline"
    )
    name = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")[:128]
    return name or "pipeline"


def pipeline_to_definition(
    pipeline: Pipeline,
    params: Mapping[str, Any],
    image: str | None,
    install_packages: bool = False,
    problems: list[Diagnostic] | None = None,
    *,
    python: str | None = None,
    poddefaults: PodDefaultLabels | None = None,
) -> PipelineDef:
    """``python``: the step image's Python (steps in it check theirs at start);
    ``poddefaults``: how PodDefault names become pod labels."""
    programs = generate_programs(pipeline)
    settings = pipeline.settings
    base_image = _default_image(pipeline, image)
    kfp = {s.name: s.kfp_name for s in pipeline.steps}
    tasks = []
    for step in pipeline.steps:
        io_ = pipeline.io[step.name]
        merged = step.settings.merged_over(settings.steps_defaults)
        if poddefaults is not None:
            merged = replace(merged, labels=(*poddefaults.labels(merged.poddefaults),
                                             *merged.labels))
        producers = sorted({kfp[p] for p in io_.loads.values()})
        order_only = sorted(
            {kfp[e.source] for e in pipeline.edges if e.target == step.name and e.kind == "order"}
        )
        tasks.append(
            TaskDef(
                name=step.kfp_name,
                display_name=step.name,
                payload=step_payload(programs[step.name]),
                inputs=tuple(producers),
                after=tuple(order_only),
                parameters=io_.parameters,
                has_state_output=bool(io_.saves),
                has_metrics=bool(io_.metrics),
                has_report=merged.report is not False,
                settings=merged,
                image=merged.image or base_image,
                packages=_packages(pipeline, step, problems) if install_packages else (),
                python=python if merged.image is None else None,
            )
        )
    if not install_packages and problems is not None:
        _warn_default_image(pipeline, {t.display_name: t.image for t in tasks}, problems)
    return PipelineDef(
        name=pipeline_name(pipeline),
        description=settings.pipeline_description,
        params=tuple(_params(pipeline, params)),
        tasks=tuple(tasks),
        volumes=tuple(replace(v, keep=True) for v in settings.volumes)
        if settings.keep_volumes else settings.volumes,
        working_dir=_working_dir(pipeline),
        enable_caching=settings.enable_caching,
        runtime=runtime_zip(),
        serves=_serves(pipeline, kfp),
    )


def _serves(pipeline: Pipeline, kfp_names: Mapping[str, str]) -> tuple[ServeDef, ...]:
    """The ``serve:VAR`` models, each named after its variable unless the metadata names it."""
    from ..serving import served_services

    serving = pipeline.settings.serving
    if serving.name and len(pipeline.served) > 1:
        raise CompileError(error("NB801", "serving.name names one InferenceService, but "
                                 "several variables are tagged serve:VAR ("
                                 + ", ".join(sorted(pipeline.served)) + ")"))
    return tuple(
        ServeDef(variable=s["variable"], producer=kfp_names[pipeline.served[s["variable"]]],
                 name=s["name"], image=serving.image,
                 service_account=serving.service_account, s3_endpoint=serving.s3_endpoint,
                 timeout=serving.timeout, predictor=serving.predictor)
        for s in served_services(pipeline))


def _packages(pipeline: Pipeline, step: Step, problems: list[Diagnostic] | None) -> tuple[str, ...]:
    """The step's imports (its cells and the prelude), pinned to this environment's versions."""
    from ..packages import imported_modules, pinned_requirements

    blocks = pipeline.blocks
    pins, unknown = pinned_requirements(
        imported_modules([*blocks.imports, *blocks.functions, *step.cells])
    )
    if unknown and problems is not None:
        problems.append(
            warning(
                "KF003",
                f"step {step.name!r} imports {', '.join(unknown)}, which is not installed here: "
                "its version cannot be pinned, so the image must provide it",
                step=step.name,
            )
        )
    return tuple(pins)


def _warn_default_image(pipeline: Pipeline, images: Mapping[str, str],
                        problems: list[Diagnostic]) -> None:
    """KF008 when steps that run in the built-in default image import third-party packages."""
    from ..packages import default_image_message, third_party_modules

    blocks = pipeline.blocks
    imports = {}
    for step in pipeline.steps:
        if images.get(step.name) == DEFAULT_IMAGE:
            found = third_party_modules([*blocks.imports, *blocks.functions, *step.cells])
            if found:
                imports[step.name] = found
    if imports:
        problems.append(warning("KF008", default_image_message(DEFAULT_IMAGE, imports)))


def _params(pipeline: Pipeline, overrides: Mapping[str, Any]) -> list[PipelineParam]:
    out = []
    for p in pipeline.parameters:
        value = overrides.get(p.name, p.default)
        if (
            p.name in overrides
            and type_of(value) not in (p.type, None)
            and not (p.type == "float" and type_of(value) == "int")
        ):
            raise CompileError(
                error(
                    "NB301",
                    f"parameter {p.name!r} is a {p.type}; got {value!r}",
                    cell=p.cell,
                    line=p.line,
                )
            )
        out.append(PipelineParam(p.name, p.type, value))
    return out


def _working_dir(pipeline: Pipeline) -> str | None:
    """The notebook's directory, when a notebook volume makes it exist in the step pods."""
    if pipeline.notebook.path is None:
        return None
    directory = str(pipeline.notebook.path.resolve().parent)
    for volume in pipeline.settings.volumes:
        mount = volume.mount_point.rstrip("/") or "/"
        if directory == mount or directory.startswith(mount + "/"):
            return directory
    return None


def step_payload(program: StepProgram) -> bytes:
    """The step's own files, as the runtime finds them on ``sys.path``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        _add(archive, "kale_py_step.py", program.source)
        _add(archive, "kale_py_step.json", json.dumps(program.spec, sort_keys=True))
    return buffer.getvalue()


_RUNTIME_ZIP: bytes | None = None


def runtime_zip() -> bytes:
    """The step runtime as an importable ``kale_py`` package (built once per process)."""
    global _RUNTIME_ZIP
    if _RUNTIME_ZIP is None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            from .. import __version__

            init = f'"""kale_py step runtime."""\n__version__ = {__version__!r}\n'
            _add(archive, "kale_py/__init__.py", init)
            for module in RUNTIME_MODULES:
                _add(archive, f"kale_py/{module}", (_PACKAGE / module).read_text(encoding="utf-8"))
        _RUNTIME_ZIP = buffer.getvalue()
    return _RUNTIME_ZIP


def _add(archive: zipfile.ZipFile, name: str, text: str) -> None:
    # A fixed timestamp keeps the payload, and so the YAML, identical between compiles.
    info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, text)
