"""Strict validation of compiled IR: each kind of damage is caught with a message naming it."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_kubeflow_ir import pipeline, representative, task

from kale_py.diagnostics import CompileError
from kale_py.kubeflow.ir import build_ir, ir_to_yaml
from kale_py.kubeflow.validate import validate_ir

Json = dict[str, Any]


def pristine() -> tuple[Json, Json]:
    spec, platform = build_ir(representative())
    assert platform is not None
    return spec, platform


def test_pristine_ir_passes() -> None:
    validate_ir(*pristine())


def tasks(spec: Json) -> Json:
    """The steps' DAG: inside the exit handler that cleans up the run's volumes, if any."""
    handler = spec["components"].get("comp-exit-handler-1")
    return (handler or spec["root"])["dag"]["tasks"]  # type: ignore[no-any-return]


def k8s(platform: Json) -> Json:
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]  # type: ignore[no-any-return]


def _set(path: list[Any], value: Any) -> Callable[[Json, Json], None]:
    def tamper(spec: Json, platform: Json) -> None:
        target = spec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return tamper


TAMPERINGS: dict[str, tuple[Callable[[Json, Json], None], str]] = {
    "unknown field in a task": (
        lambda s, p: tasks(s)["train"].update(bogusField=1),
        'PipelineTaskSpec" has no field named "bogusField"'),
    "enableCache not a boolean": (
        lambda s, p: tasks(s)["train"].update(cachingOptions={"enableCache": "maybe"}),
        "Failed to parse enableCache field"),
    "unknown parameter type": (
        _set(["root", "inputDefinitions", "parameters", "n", "parameterType"], "STRINGG"),
        "Invalid enum value STRINGG"),
    "unknown field in a container": (
        _set(["deploymentSpec", "executors", "exec-train", "container", "imagee"], "x"),
        'has no field named "imagee"'),
    "dangling componentRef": (
        lambda s, p: tasks(s)["train"].update(componentRef={"name": "comp-nope"}),
        "task 'train' refers to missing component 'comp-nope'"),
    "dangling dependentTasks": (
        lambda s, p: tasks(s)["train"]["dependentTasks"].append("nope"),
        "task 'train' depends on missing task 'nope'"),
    "executor removed": (
        lambda s, p: s["deploymentSpec"]["executors"].pop("exec-evaluate"),
        "component 'comp-evaluate' refers to missing executor 'exec-evaluate'"),
    "unknown field in the Kubernetes config": (
        lambda s, p: k8s(p)["exec-train"]["pvcMount"][0].update(mountPathX="/x"),
        'PvcMount" has no field named "mountPathX"'),
    "root removed": (lambda s, p: s.pop("root"), "no root DAG with tasks"),
    "unknown schema version": (
        _set(["schemaVersion"], "9.9.9"), "schemaVersion '9.9.9' is not one KFP 2 runs"),
    "producer task missing": (
        lambda s, p: tasks(s)["train"]["inputs"]["artifacts"]["state-load-data"][
            "taskOutputArtifact"].update(producerTask="gone"),
        "input 'state-load-data' comes from missing task 'gone'"),
    "output the producer does not make": (
        lambda s, p: tasks(s)["train"]["inputs"]["artifacts"]["state-load-data"][
            "taskOutputArtifact"].update(outputArtifactKey="model"),
        "reads output 'model', which 'load-data' does not produce"),
    "data without a dependency": (
        lambda s, p: tasks(s)["publish"]["dependentTasks"].remove("train"),
        "task 'publish' reads 'state-train' from 'train' without depending on it"),
    "missing pipeline parameter": (
        lambda s, p: s["root"]["inputDefinitions"]["parameters"].pop("rate"),
        "reads missing pipeline parameter 'rate'"),
    "required input not passed": (
        lambda s, p: tasks(s)["train"]["inputs"]["parameters"].pop("flag"),
        "task 'train' does not pass required parameter 'flag'"),
    "placeholder for an undeclared input": (
        lambda s, p: s["deploymentSpec"]["executors"]["exec-train"]["container"]["args"].append(
            "{{$.inputs.parameters['ghost']}}"),
        "executor 'exec-train' uses inputs parameter 'ghost'"),
    "dependency cycle": (
        lambda s, p: tasks(s)["load-data"].update(dependentTasks=["publish"]),
        "the task dependencies form a cycle"),
    "Kubernetes config for a missing executor": (
        lambda s, p: k8s(p).update({"exec-ghost": {}}),
        "Kubernetes config for missing executor 'exec-ghost'"),
    "claim mounted before it is made": (
        lambda s, p: tasks(s)["train"]["dependentTasks"].remove("createpvc"),
        "task 'train' mounts the claim of 'createpvc' without waiting for it"),
}


@pytest.mark.parametrize("damage", sorted(TAMPERINGS))
def test_each_tampering_is_caught_with_a_clear_message(damage: str) -> None:
    spec, platform = copy.deepcopy(pristine())
    tamper, message = TAMPERINGS[damage]
    tamper(spec, platform)
    with pytest.raises(CompileError) as e:
        validate_ir(spec, platform)
    messages = [d.message for d in e.value.diagnostics]
    assert any(message in m for m in messages), messages
    assert all(m.startswith("invalid KFP pipeline: ") for m in messages)
    assert {d.code for d in e.value.diagnostics} == {"KF002"}


def test_kfp_compiles_our_yaml_back_to_the_same_text(tmp_path: Path) -> None:
    """compile -> load_component_from_file -> Compiler().compile is a fixed point."""
    from kfp import compiler, components

    ours = tmp_path / "ours.yaml"
    ours.write_text(ir_to_yaml(*build_ir(representative())))
    again = tmp_path / "again.yaml"
    compiler.Compiler().compile(components.load_component_from_file(str(ours)), str(again))
    assert again.read_text() == ours.read_text()


def test_validation_does_not_import_kfp() -> None:
    """The protobuf modules load from their files; ``kfp`` (seconds to import) stays out."""
    code = (
        "import sys\n"
        "from kale_py.kubeflow.ir import build_ir\n"
        "from kale_py.kubeflow.validate import validate_ir\n"
        "from test_kubeflow_ir import representative\n"
        "validate_ir(*build_ir(representative()))\n"
        "print(sorted(m for m in sys.modules if m == 'kfp' or m.startswith('kfp.')))\n")
    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tests.parent, env={"PYTHONPATH": f"{tests.parent}:{tests}"},
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_simple_pipeline_without_platform_spec_passes() -> None:
    validate_ir(*build_ir(pipeline(task("only"))))
