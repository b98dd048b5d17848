"""Offline checks of compiled KFP IR: KFP's own protobuf schema, strictly, plus cross-references.

The protobuf parse catches unknown fields, wrong types and bad enum values; it does not see a
``componentRef`` to a missing component, a dependency on a missing task or an executor that is not
there (KFP itself only fails on those when the run starts), so they are checked here too.

The ``*_pb2`` modules are loaded straight from their files when ``kfp`` is not imported yet:
``import kfp`` pulls in its REST client and costs seconds; the two protobuf modules take ~50 ms.
``kfp-pipeline-spec`` (with ``protobuf``) is a base dependency. ``kfp-kubernetes`` is not (it
requires all of ``kfp``): without it, each executor's Kubernetes config is checked as the
``Struct`` the platform spec declares, and strictly with it (``pip install 'kale_py[kfp]'``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

from kale_py.diagnostics import CompileError, Diagnostic

Json = dict[str, Any]

SCHEMA_VERSIONS = ("2.0.0", "2.1.0")
_PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']*)'\]")


def validate_ir(pipeline_spec: Json, platform_spec: Json | None) -> None:
    """Raise :class:`CompileError` unless the IR parses strictly and all its references resolve.

    Needs ``kfp-pipeline-spec`` (a dependency); ``kfp-kubernetes`` when present.
    """
    problems = list(_reference_problems(pipeline_spec, platform_spec))
    if not problems:
        problems = _schema_problems(pipeline_spec, platform_spec)
    if problems:
        raise CompileError([Diagnostic("error", "KF002", f"invalid KFP pipeline: {p}")
                            for p in problems])


# --- protobuf schema ---------------------------------------------------------------------------

def _schema_problems(spec: Json, platform: Json | None) -> list[str]:
    json_format = importlib.import_module("google.protobuf.json_format")  # lazily, untyped

    pb, k8s = _protobuf_modules()
    spec = _with_short_args(spec)
    checks: list[tuple[str, Any, Any]] = [
        ("PipelineSpec", spec, pb.PipelineSpec()),
        # deploymentSpec is a Struct inside PipelineSpec: parse it as what it really is.
        ("deploymentSpec", spec.get("deploymentSpec", {}), pb.PipelineDeploymentConfig()),
    ]
    if platform is not None:
        checks.append(("PlatformSpec", platform, pb.PlatformSpec()))
        # Each executor's Kubernetes config is a Struct too; kfp-kubernetes defines its schema.
        if k8s is not None:
            for name, config in _kubernetes_executors(platform).items():
                checks.append((f"kubernetes config of {name}", config,
                               k8s.KubernetesExecutorConfig()))
    problems = []
    for where, data, message in checks:
        try:
            json_format.ParseDict(data, message)
        except (json_format.ParseError, TypeError, ValueError) as e:
            problems.append(f"{where}: {e}")
    return problems


def _with_short_args(spec: Json) -> Json:
    """``spec`` with long ASCII container arguments (step payloads) shortened.

    The parser's only look at a string's content is a search for unpaired surrogates, which an
    ASCII string cannot hold; on megabytes of base64 that search is most of the time spent.
    """
    executors = spec.get("deploymentSpec", {}).get("executors")
    if not isinstance(executors, dict):
        return spec
    shortened = {}
    for label, executor in executors.items():
        container = executor.get("container") if isinstance(executor, dict) else None
        if isinstance(container, dict) and isinstance(container.get("args"), list):
            args = [a[:64] if isinstance(a, str) and len(a) > 64 and a.isascii() else a
                    for a in container["args"]]
            executor = {**executor, "container": {**container, "args": args}}
        shortened[label] = executor
    deployment = {**spec["deploymentSpec"], "executors": shortened}
    return {**spec, "deploymentSpec": deployment}


@functools.cache
def _protobuf_modules() -> tuple[Any, Any | None]:
    """``pipeline_spec_pb2`` and ``kubernetes_executor_config_pb2`` (None when kfp-kubernetes is
    not installed), without importing ``kfp``."""
    names = ("kfp.pipeline_spec.pipeline_spec_pb2",
             "kfp.kubernetes.kubernetes_executor_config_pb2")
    if all(n in sys.modules for n in names):
        return sys.modules[names[0]], sys.modules[names[1]]
    spec = importlib.util.find_spec("kfp")
    roots = list(spec.submodule_search_locations or []) if spec else []
    pipeline_pb2 = _load_file("pipeline_spec_pb2", roots, "pipeline_spec")
    # The Kubernetes module imports the pipeline one by its package path: lend it a stand-in
    # package for the duration, so that this import does not run kfp/__init__.py either.
    stand_in = types.ModuleType("kfp.pipeline_spec")
    stand_in.pipeline_spec_pb2 = pipeline_pb2  # type: ignore[attr-defined]
    had = sys.modules.get("kfp.pipeline_spec")
    sys.modules.setdefault("kfp.pipeline_spec", stand_in)
    try:
        k8s_pb2 = _load_file("kubernetes_executor_config_pb2", roots, "kubernetes",
                             required=False)
    finally:
        if had is None:
            del sys.modules["kfp.pipeline_spec"]
    return pipeline_pb2, k8s_pb2


def _load_file(module: str, roots: list[str], package: str,
               required: bool = True) -> types.ModuleType | None:
    for root in roots:
        path = os.path.join(root, package, f"{module}.py")
        spec = importlib.util.spec_from_file_location(f"kale_py.kubeflow._{module}", path)
        if spec and spec.loader and os.path.exists(path):
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
            return loaded
    if not required:
        return None
    raise CompileError(Diagnostic(
        "error", "KF002", "validating Kubeflow pipelines needs the kfp-pipeline-spec package "
        "(a dependency of kale_py): reinstall kale_py, or pip install kfp-pipeline-spec"))


def _kubernetes_executors(platform: Json) -> Json:
    kubernetes = platform.get("platforms", {}).get("kubernetes", {})
    executors = kubernetes.get("deploymentSpec", {}).get("executors", {})
    return executors if isinstance(executors, dict) else {}


# --- references ----------------------------------------------------------------------------------

def _reference_problems(spec: Json, platform: Json | None) -> Iterator[str]:
    """Every reference in the IR that points nowhere; stops at the first structural gap."""
    if spec.get("schemaVersion") not in SCHEMA_VERSIONS:
        yield (f"schemaVersion {spec.get('schemaVersion')!r} is not one KFP 2 runs "
               f"({', '.join(SCHEMA_VERSIONS)})")
    tasks = spec.get("root", {}).get("dag", {}).get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        yield "no root DAG with tasks"
        return
    components = spec.get("components", {})
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    every_task: Json = {}
    for dag_tasks, params in _dags(tasks, spec["root"], components):
        every_task.update(dag_tasks)
        for name, task in dag_tasks.items():
            ref = task.get("componentRef", {}).get("name")
            if ref not in components:
                yield f"task {name!r} refers to missing component {ref!r}"
                continue
            label = components[ref].get("executorLabel")
            if "dag" not in components[ref] and label not in executors:
                yield f"component {ref!r} refers to missing executor {label!r}"
            yield from _dependency_problems(name, task, dag_tasks, components)
            yield from _input_problems(name, task, components[ref], params)
        yield from _cycle_problems(dag_tasks)
    for label, executor in executors.items():
        yield from _placeholder_problems(label, executor, components)
    if platform is not None:
        yield from _platform_problems(platform, every_task, components, executors)


def _dags(root_tasks: Json, root: Json, components: Json) -> Iterator[tuple[Json, Json]]:
    """Each DAG's tasks with the parameters it receives: the root's, then sub-DAG components'
    (an exit handler's, for instance)."""
    yield root_tasks, root.get("inputDefinitions", {}).get("parameters", {})
    for component in components.values():
        dag = component.get("dag") if isinstance(component, dict) else None
        if isinstance(dag, dict) and isinstance(dag.get("tasks"), dict):
            params = component.get("inputDefinitions", {}).get("parameters", {})
            yield dag["tasks"], params


def _platform_problems(platform: Json, tasks: Json, components: Json,
                       executors: Json) -> Iterator[str]:
    """Kubernetes configs belong to executors; a claim made by a task is waited for."""
    users: dict[str, list[str]] = {}
    for name, task in tasks.items():
        ref = task.get("componentRef", {}).get("name")
        users.setdefault(components.get(ref, {}).get("executorLabel", ""), []).append(name)
    for label, config in _kubernetes_executors(platform).items():
        if label not in executors:
            yield f"Kubernetes config for missing executor {label!r}"
            continue
        for mount in config.get("pvcMount", []) if isinstance(config, dict) else []:
            producer = mount.get("pvcNameParameter", {}).get("taskOutputParameter", {})
            producer = producer.get("producerTask")
            if producer is None:
                continue
            if producer not in tasks:
                yield f"executor {label!r} mounts a claim from missing task {producer!r}"
            for user in users.get(label, []):
                if producer not in tasks[user].get("dependentTasks", []):
                    yield f"task {user!r} mounts the claim of {producer!r} without waiting for it"


def _dependency_problems(name: str, task: Json, tasks: Json, components: Json) -> Iterator[str]:
    depends = task.get("dependentTasks", [])
    for dep in depends:
        if dep not in tasks or dep == name:
            yield f"task {name!r} depends on missing task {dep!r}"
    inputs = task.get("inputs", {})
    for kind, source_key, output_key, section in (
            ("artifacts", "taskOutputArtifact", "outputArtifactKey", "artifacts"),
            ("parameters", "taskOutputParameter", "outputParameterKey", "parameters")):
        for key, spec in inputs.get(kind, {}).items():
            source = spec.get(source_key)
            if source is None:
                continue
            producer = source.get("producerTask")
            if producer not in tasks:
                yield f"task {name!r} input {key!r} comes from missing task {producer!r}"
                continue
            if producer not in depends:
                yield f"task {name!r} reads {key!r} from {producer!r} without depending on it"
            ref = tasks[producer].get("componentRef", {}).get("name")
            outputs = components.get(ref, {}).get("outputDefinitions", {}).get(section, {})
            if source.get(output_key) not in outputs:
                yield (f"task {name!r} input {key!r} reads output "
                       f"{source.get(output_key)!r}, which {producer!r} does not produce")


def _input_problems(name: str, task: Json, component: Json, root_params: Json) -> Iterator[str]:
    declared = component.get("inputDefinitions", {})
    given = task.get("inputs", {})
    for kind in ("artifacts", "parameters"):
        for key in given.get(kind, {}):
            if key not in declared.get(kind, {}):
                yield f"task {name!r} passes {kind[:-1]} {key!r}, which its component lacks"
        for key, spec in declared.get(kind, {}).items():
            required = not spec.get("isOptional") and "defaultValue" not in spec
            if required and key not in given.get(kind, {}):
                yield f"task {name!r} does not pass required {kind[:-1]} {key!r}"
    for key, spec in given.get("parameters", {}).items():
        source = spec.get("componentInputParameter")
        if source is not None and source not in root_params:
            yield f"task {name!r} input {key!r} reads missing pipeline parameter {source!r}"


def _cycle_problems(tasks: Json) -> Iterator[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str) -> bool:
        state[name] = 1
        for dep in tasks[name].get("dependentTasks", []):
            if dep in tasks and (state.get(dep) == 1 or (dep not in state and visit(dep))):
                return True
        state[name] = 2
        return False

    for name in tasks:
        if name not in state and visit(name):
            yield f"the task dependencies form a cycle through {name!r}"
            return


def _placeholder_problems(label: str, executor: Json, components: Json) -> Iterator[str]:
    """Placeholders in a container's command line must name the component's own inputs/outputs."""
    owners = [c for c in components.values() if c.get("executorLabel") == label]
    container = executor.get("container", {})
    words = [w for w in container.get("command", []) + container.get("args", [])
             if isinstance(w, str)]
    for component in owners:
        for word in words:
            for direction, kind, key in _PLACEHOLDER.findall(word):
                section = "inputDefinitions" if direction == "inputs" else "outputDefinitions"
                if key not in component.get(section, {}).get(kind, {}):
                    yield (f"executor {label!r} uses {direction} {kind[:-1]} {key!r}, "
                           "which its component does not declare")
