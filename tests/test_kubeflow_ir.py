"""The KFP IR builder: its output against the KFP SDK's, the step contract, and a real local run."""

from __future__ import annotations

import base64
import inspect
import io
import json
import random
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from kale_py.diagnostics import CompileError
from kale_py.kubeflow.ir import (
    BOOTSTRAP,
    PAYLOAD_CHUNK,
    RUN_CLEANUP,
    PipelineDef,
    PipelineParam,
    TaskDef,
    _cleanup_source,
    build_ir,
    ir_to_yaml,
)
from kale_py.kubeflow.validate import validate_ir
from kale_py.settings import SecretEnv, StepSettings, Toleration, Volume

IMAGE = "registry.example.com/team/notebook:v1"


def task(name: str, *, inputs: tuple[str, ...] = (), after: tuple[str, ...] = (),
         parameters: tuple[str, ...] = (), state: bool = True, metrics: bool = False,
         report: bool = False, payload: bytes = b"PK\x05\x06" + bytes(18),
         image: str = IMAGE, **settings: Any) -> TaskDef:
    return TaskDef(name=name, display_name=name.replace("-", "_"), payload=payload,
                   inputs=inputs, after=after, parameters=parameters, has_state_output=state,
                   has_metrics=metrics, has_report=report, settings=StepSettings(**settings),
                   image=image)


def pipeline(*tasks: TaskDef, params: tuple[PipelineParam, ...] = (),
             volumes: tuple[Volume, ...] = (), working_dir: str | None = None,
             caching: bool = True, name: str = "demo") -> PipelineDef:
    return PipelineDef(name=name, description="A demo pipeline.", params=params, tasks=tasks,
                       volumes=volumes, working_dir=working_dir, enable_caching=caching)


PARAMS = (
    PipelineParam("n", "int", 3), PipelineParam("rate", "float", 0.5),
    PipelineParam("msg", "str", "hi"), PipelineParam("flag", "bool", True),
    PipelineParam("layers", "list", [64, 32]), PipelineParam("opts", "dict", {"k": 1}),
    PipelineParam("seed", "none", None),
)

GPU_STEP: dict[str, Any] = {
    "limits": (("cpu", "2"), ("memory", "4Gi"), ("nvidia.com/gpu", "1")),
    "requests": (("cpu", "500m"), ("memory", "512Mi")),
    "labels": (("team", "ml"),), "annotations": (("sidecar.istio.io/inject", "false"),),
    "secrets": (SecretEnv("s3", "access", "AWS_ACCESS_KEY_ID"),
                SecretEnv("s3", "secret", "AWS_SECRET_ACCESS_KEY"),
                SecretEnv("db", "pw", "DB_PW")),
    "retry": 2, "timeout": 3600, "cache": False, "node_selector": (("pool", "gpu"),),
    "tolerations": (Toleration("nvidia.com/gpu", "present", "NoSchedule"),
                    Toleration("spot", "", "NoExecute")),
}


def representative() -> PipelineDef:
    """Every feature at once: params of each type, fan-out/fan-in, settings, both volume kinds."""
    return pipeline(
        task("load-data", parameters=("n", "msg", "seed", "layers", "opts")),
        task("train", inputs=("load-data",), parameters=("rate", "flag"), metrics=True,
             image="pytorch/pytorch:2.4", **GPU_STEP),
        task("evaluate", inputs=("load-data",), report=True, limits=(("amd.com/gpu", "2"),)),
        task("publish", inputs=("train", "evaluate"), after=("load-data",), state=False),
        params=PARAMS,
        volumes=(Volume("workspace-nb", "/home/jovyan"),
                 Volume("snap-data", "/data", type="clone", size="5Gi", storage_class="csi",
                        access_mode="rwm", expose_as_env_var=True)),
        working_dir="/home/jovyan/project",
    )


def documents(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


# --- equivalence with the KFP SDK -----------------------------------------------------------------

def sdk_pipeline_yaml(p: PipelineDef, path: Path) -> str:
    """The same pipeline written with the KFP SDK and kfp-kubernetes, compiled by KFP."""
    from kfp import compiler, dsl, kubernetes

    types = {q.name: q for q in p.params}
    python_types = {"int": int, "float": float, "str": str, "bool": bool, "list": list,
                    "dict": dict, "none": str}

    def component(t: TaskDef) -> Any:
        def spec(*values: Any) -> Any:
            v = dict(zip(names, values, strict=True))
            args = list(_payload_args(t))
            args += ["--step", t.display_name]
            for src in t.inputs:
                args += ["--state-in", f"{src}={v[_state(src)].path}"]
            for out, wanted in (("state", t.has_state_output), ("metrics", t.has_metrics),
                                ("report", t.has_report)):
                if wanted:
                    args += [f"--{out}-out", v[out].path]
            for q in t.parameters:
                args += ["--param", f"{q}={v[q]}", "--param-type", f"{q}={types[q].type}"]
            args += ["--executor-output", dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER]
            if p.working_dir:
                args += ["--workdir", p.working_dir]
            return dsl.ContainerSpec(image=t.image, command=["python3", "-c", BOOTSTRAP],
                                     args=args)

        signature = [inspect.Parameter(_state(src), inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                       annotation=dsl.Input[dsl.Artifact]) for src in t.inputs]
        signature += [inspect.Parameter(q, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=python_types[types[q].type])
                      for q in t.parameters]
        for out, kind, wanted in (("state", dsl.Artifact, t.has_state_output),
                                  ("metrics", dsl.Metrics, t.has_metrics),
                                  ("report", dsl.HTML, t.has_report)):
            if wanted:
                signature.append(inspect.Parameter(out, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                   annotation=dsl.Output[kind]))
        names = [s.name for s in signature]
        spec.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
        spec.__name__ = _py(t.name)
        return dsl.container_component(spec)

    clone_volumes = [v for v in p.volumes if v.type == "clone"]

    def cleanup_spec(run_id: str) -> Any:
        args = [base64.b64encode(_cleanup_source()).decode(), "--run-id", run_id]
        for v in clone_volumes:
            args += ["--claim-suffix", f"-{v.name}", "--snapshot", v.name]
        return dsl.ContainerSpec(image=p.tasks[0].image, command=["python3", "-c", RUN_CLEANUP],
                                 args=args)

    cleanup_spec.__annotations__ = {"run_id": str}  # real types, not the module's strings
    cleanup_spec.__name__ = "kale_cleanup"
    kale_cleanup = dsl.container_component(cleanup_spec)

    def body(*values: Any) -> None:
        kwargs = dict(zip([q.name for q in p.params], values, strict=True))
        cleanup = kale_cleanup(run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER).set_caching_options(False)
        with dsl.ExitHandler(cleanup):
            clones = {v.name: kubernetes.CreatePVC(
                pvc_name_suffix=f"-{v.name}", access_modes=["ReadWriteMany"], size=v.size,
                storage_class_name=v.storage_class,
                data_source={"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                             "name": v.name}).set_caching_options(False)
                for v in clone_volumes}
            tasks: dict[str, Any] = {}
            for t in p.tasks:
                op = component(t)(**{_state(s): tasks[s].outputs["state"] for s in t.inputs},
                                  **{q: kwargs[q] for q in t.parameters})
                configure(op, t, clones)
                op.after(*[tasks[a] for a in t.after])
                tasks[t.name] = op

    def configure(op: Any, t: TaskDef, clones: dict[str, Any]) -> None:
        s = t.settings
        op.set_display_name(t.display_name)
        op.set_caching_options(p.enable_caching if s.cache is None else s.cache)
        op.set_env_variable("KALE_PY_STEP", t.display_name)
        op.set_env_variable("HOME", "/home/jovyan")
        for v in p.volumes:
            if v.expose_as_env_var:
                op.set_env_variable(f"KALE_VOLUME_{v.name.upper().replace('-', '_')}",
                                    v.mount_point)
            claim = clones[v.name].outputs["name"] if v.name in clones else v.name
            kubernetes.mount_pvc(op, pvc_name=claim, mount_path=v.mount_point)
        for kind, values in (("limit", dict(s.limits)), ("request", dict(s.requests))):
            for resource, amount in values.items():
                if resource in ("cpu", "memory"):
                    getattr(op, f"set_{resource}_{kind}")(amount)
                else:
                    op.set_accelerator_type(resource).set_accelerator_limit(amount)
        if s.retry:
            op.set_retry(num_retries=s.retry)
        if s.timeout:
            kubernetes.set_timeout(op, s.timeout)
        for k, val in s.node_selector:
            kubernetes.add_node_selector(op, label_key=k, label_value=val)
        for x in s.tolerations:
            kubernetes.add_toleration(op, key=x.key, operator="Equal" if x.value else "Exists",
                                      value=x.value or None, effect=x.effect)
        secrets: dict[str, dict[str, str]] = {}
        for sec in s.secrets:
            secrets.setdefault(sec.secret, {})[sec.key] = sec.env
        for name, keys in secrets.items():
            kubernetes.use_secret_as_env(op, secret_name=name, secret_key_to_env=keys)
        for k, val in s.labels:
            kubernetes.add_pod_label(op, k, val)
        for k, val in s.annotations:
            kubernetes.add_pod_annotation(op, k, val)

    body.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(q.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=python_types[q.type],
                          default="" if q.type == "none" else q.default) for q in p.params])
    body.__name__ = _py(p.name)
    sdk_pipeline = dsl.pipeline(name=p.name, description=p.description)(body)
    compiler.Compiler().compile(sdk_pipeline, str(path))
    return path.read_text()


def _py(name: str) -> str:
    return name.replace("-", "_")


def _state(producer: str) -> str:
    return f"state_{_py(producer)}"


def _payload_args(t: TaskDef) -> list[str]:
    return [base64.b64encode(t.payload).decode()]


def normalized(p: PipelineDef, doc: Any) -> Any:
    """Names the SDK cannot write: ``state-<producer>`` is ``state_<producer>`` there (Python
    identifiers); CreatePVC's inputs carry its docstrings there."""
    text = json.dumps(doc)
    for t in p.tasks:
        text = text.replace(f"state-{t.name}", _state(t.name))
    data = json.loads(text)
    for component in data.get("components", {}).values():
        for param in component.get("inputDefinitions", {}).get("parameters", {}).values():
            param.pop("description", None)
    return data


def test_same_ir_as_the_kfp_sdk_for_the_same_pipeline(tmp_path: Path) -> None:
    p = representative()
    ours = documents(ir_to_yaml(*build_ir(p)))
    theirs = documents(sdk_pipeline_yaml(p, tmp_path / "sdk.yaml"))
    assert len(ours) == len(theirs) == 2
    assert normalized(p, ours[0]) == normalized(p, theirs[0])
    assert normalized(p, ours[1]) == normalized(p, theirs[1])


def test_yaml_is_laid_out_as_the_kfp_compiler_writes_it() -> None:
    text = ir_to_yaml(*build_ir(representative()))
    header = text.split("components:")[0].splitlines()
    assert header == [
        "# PIPELINE DEFINITION", "# Name: demo", "# Description: A demo pipeline.", "# Inputs:",
        "#    flag: bool [Default: True]", "#    layers: list [Default: [64.0, 32.0]]",
        "#    msg: str [Default: 'hi']", "#    n: int [Default: 3.0]",
        "#    opts: dict [Default: {'k': 1.0}]", "#    rate: float [Default: 0.5]",
        "#    seed: str [Default: '']"]
    assert "\n---\nplatforms:\n" in text
    assert "&id" not in text  # no YAML anchors, whatever objects are shared


# --- the step contract ----------------------------------------------------------------------------

def test_runtime_command_line_contract() -> None:
    p = pipeline(task("a"), task("b", inputs=("a",), parameters=("n", "seed"), metrics=True,
                                  report=True), params=PARAMS, working_dir="/work")
    spec, _ = build_ir(p)
    container = spec["deploymentSpec"]["executors"]["exec-b"]["container"]
    assert container["command"] == ["python3", "-c", BOOTSTRAP]
    assert container["args"][1:] == [
        "--step", "b",
        "--state-in", "a={{$.inputs.artifacts['state-a'].path}}",
        "--state-out", "{{$.outputs.artifacts['state'].path}}",
        "--metrics-out", "{{$.outputs.artifacts['metrics'].path}}",
        "--report-out", "{{$.outputs.artifacts['report'].path}}",
        "--param", "n={{$.inputs.parameters['n']}}", "--param-type", "n=int",
        "--param", "seed={{$.inputs.parameters['seed']}}", "--param-type", "seed=none",
        "--executor-output", "{{$.outputs.output_file}}",
        "--workdir", "/work"]
    assert container["env"] == [{"name": "KALE_PY_STEP", "value": "b"}]


def test_pipeline_parameter_types() -> None:
    spec, _ = build_ir(pipeline(task("a", parameters=tuple(q.name for q in PARAMS)),
                                params=PARAMS))
    root = spec["root"]["inputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in root.items()} == {
        "n": "NUMBER_INTEGER", "rate": "NUMBER_DOUBLE", "msg": "STRING", "flag": "BOOLEAN",
        "layers": "LIST", "opts": "STRUCT", "seed": "STRING"}
    assert root["seed"] == {"defaultValue": "", "isOptional": True, "parameterType": "STRING"}
    assert root["n"]["defaultValue"] == 3.0  # protobuf numbers are doubles, as KFP writes them
    component = spec["components"]["comp-a"]["inputDefinitions"]["parameters"]
    assert component["layers"] == {"parameterType": "LIST"}


def test_data_edges_and_ordering_edges() -> None:
    spec, _ = build_ir(pipeline(task("a"), task("b", after=("a",)),
                                task("c", inputs=("a",), after=("b", "a"))))
    tasks = spec["root"]["dag"]["tasks"]
    assert "dependentTasks" not in tasks["a"]
    assert tasks["b"]["dependentTasks"] == ["a"]
    assert "inputs" not in tasks["b"]
    assert tasks["c"]["dependentTasks"] == ["a", "b"]
    assert tasks["c"]["inputs"]["artifacts"] == {"state-a": {"taskOutputArtifact": {
        "outputArtifactKey": "state", "producerTask": "a"}}}


def test_caching_is_explicit_on_every_task() -> None:
    p = pipeline(task("a"), task("b", cache=True), task("c", cache=False), caching=False)
    tasks = build_ir(p)[0]["root"]["dag"]["tasks"]
    assert [tasks[n]["cachingOptions"] for n in "abc"] == [{}, {"enableCache": True}, {}]
    tasks = build_ir(replace(p, enable_caching=True))[0]["root"]["dag"]["tasks"]
    assert tasks["a"]["cachingOptions"] == {"enableCache": True}


def test_step_without_kubernetes_settings_has_no_platform_spec() -> None:
    spec, platform = build_ir(pipeline(task("a")))
    assert platform is None
    assert "---" not in ir_to_yaml(spec, platform)


def test_resources_in_both_forms_and_any_accelerator() -> None:
    spec, _ = build_ir(pipeline(task("a", limits=(("cpu", "1.5"), ("amd.com/gpu", "2")),
                                     requests=(("memory", "1G"),))))
    assert spec["deploymentSpec"]["executors"]["exec-a"]["container"]["resources"] == {
        "cpuLimit": 1.5, "resourceCpuLimit": "1.5", "memoryRequest": 1.0,
        "resourceMemoryRequest": "1G",
        "accelerator": {"count": "2", "resourceCount": "2", "resourceType": "amd.com/gpu",
                        "type": "amd.com/gpu"}}


@pytest.mark.parametrize(("settings", "message"), [
    ({"limits": (("cpu", "two"),)}, "cpu 'two' is not a Kubernetes quantity"),
    ({"limits": (("memory", "4GB"),)}, "memory '4GB' is not a Kubernetes quantity"),
    ({"limits": (("nvidia.com/gpu", "1"), ("amd.com/gpu", "1"))}, "several accelerator types"),
    ({"limits": (("nvidia.com/gpu", "0.5"),)}, "nvidia.com/gpu count '0.5' is not a whole"),
])
def test_settings_kubeflow_cannot_express_are_errors(settings: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(CompileError, match=message) as e:
        build_ir(pipeline(task("train", **settings)))
    assert e.value.diagnostics[0].step == "train"


@pytest.mark.parametrize(("p", "message"), [
    (pipeline(task("a"), name="My Pipeline"), "pipeline name 'My Pipeline' is not valid"),
    (pipeline(), "the pipeline has no steps"),
    (pipeline(task("a", inputs=("b",)), task("b")), "depends on 'b', which is not an earlier"),
    (pipeline(task("a", state=False), task("b", inputs=("a",))), "which saves none"),
    (pipeline(task("a", parameters=("x",))), r"unknown pipeline parameters \['x'\]"),
    (pipeline(task("a"), volumes=(Volume("v", "/v", type="nfs"),)), "type 'nfs' is not supported"),
    (pipeline(task("a"), volumes=(Volume("v", "/v", type="pv"),)),
     "a claim on a PersistentVolume needs a size"),
    (pipeline(task("a"), volumes=(Volume("v", "/v", type="new_pvc"),)), "a new claim needs a size"),
    (pipeline(task("a"), volumes=(Volume("v", "/v", type="clone"),)), "a clone needs a size"),
])
def test_inconsistent_pipelines_are_errors(p: PipelineDef, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        build_ir(p)


def test_clone_tasks_avoid_step_names() -> None:
    p = pipeline(task("createpvc"), volumes=(Volume("snap", "/data", type="clone", size="1Gi"),))
    spec, platform = build_ir(p)
    assert sorted(spec["root"]["dag"]["tasks"]) == ["exit-handler-1", "kale-cleanup"]
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert sorted(tasks) == ["createpvc", "createpvc-2"]
    assert tasks["createpvc"]["dependentTasks"] == ["createpvc-2"]
    assert tasks["createpvc-2"]["componentRef"] == {"name": "comp-createpvc-2"}
    assert platform is not None
    mount = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-createpvc"]["pvcMount"][0]
    assert mount["pvcNameParameter"]["taskOutputParameter"]["producerTask"] == "createpvc-2"
    validate_ir(spec, platform)


# --- the payload and the bootstrap ----------------------------------------------------------------

def fake_runtime_zip(source: str | None, step: str | None = None) -> bytes:
    """A payload: the runtime package (``source``), the step's own module, or both."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        if source is not None:
            z.writestr("kale_py/__init__.py", "")
            z.writestr("kale_py/runtime.py", source)
        if step is not None:
            z.writestr("kale_py_step.py", f"NAME = {step!r}\n")
    return buffer.getvalue()


def test_bootstrap_runs_the_payload_runtime_with_the_remaining_args(tmp_path: Path) -> None:
    # Incompressible filler makes the payload span several arguments.
    filler = base64.b64encode(random.Random(0).randbytes(150_000)).decode()
    runtime = fake_runtime_zip(
        f"FILLER = {filler!r}\n"
        "import sys\n"
        "def main(argv):\n"
        "    print(repr(argv), sys.path[0], __file__.startswith(sys.path[0]))\n"
        "    return 7\n")
    spec, _ = build_ir(pipeline(task("a", payload=runtime)))
    container = spec["deploymentSpec"]["executors"]["exec-a"]["container"]
    args = container["args"]
    chunks = args[:args.index("--step")]
    assert len(chunks) > 1 and all(len(c) <= PAYLOAD_CHUNK for c in chunks)
    done = subprocess.run([sys.executable, "-c", BOOTSTRAP, *chunks, "--step", "a", "--x"],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 7, done.stderr
    argv, unpacked, imported_from_it = done.stdout.rsplit(" ", 2)
    assert (argv, imported_from_it.strip()) == ("['--step', 'a', '--x']", "True")
    assert unpacked.endswith(".zip") and not Path(unpacked).exists()  # removed at exit


# --- a real run of the compiled file with kfp.local -----------------------------------------------

FAKE_RUNTIME = '''
"""Stand-in for kale_py.runtime: speaks the command-line contract, records what it got."""
import argparse, json, os

SCHEMES = {"/minio/": "minio://", "/s3/": "s3://", "/gcs/": "gs://"}


def uri_for(path):
    for prefix, scheme in SCHEMES.items():
        if path.startswith(prefix):
            return scheme + path[len(prefix):]
    return path


def parse(value, kind):
    if kind == "str":
        return value
    if kind == "none":
        return None if value == "" else value
    if kind == "int":
        return int(float(value))
    if kind == "float":
        return float(value)
    if kind == "bool":
        return value.lower() == "true"
    return json.loads(value)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv):
    ap = argparse.ArgumentParser()
    for flag in ("--step", "--state-out", "--metrics-out", "--report-out",
                 "--executor-output", "--workdir"):
        ap.add_argument(flag)
    for flag in ("--state-in", "--param", "--param-type"):
        ap.add_argument(flag, action="append", default=[])
    a = ap.parse_args(argv)
    types = dict(x.split("=", 1) for x in a.param_type)
    params = {k: parse(v, types[k]) for k, v in (x.split("=", 1) for x in a.param)}
    loaded = {}
    for item in a.state_in:
        producer, path = item.split("=", 1)
        with open(os.path.join(path, "record.json")) as f:
            loaded[producer] = json.load(f)
    import kale_py_step  # the step's own module, from the step's payload

    record = {"step": a.step, "params": params, "loaded": loaded,
              "env": os.environ.get("KALE_PY_STEP"), "program": kale_py_step.NAME}
    outputs = {}
    if a.state_out:
        write(os.path.join(a.state_out, "record.json"), json.dumps(record))
        outputs["state"] = (a.state_out, {})
    if a.metrics_out:
        metrics = {"producers": float(len(loaded))}
        write(a.metrics_out, json.dumps(metrics))
        outputs["metrics"] = (a.metrics_out, metrics)
    if a.report_out:
        write(a.report_out, "<html><body><h1>%s</h1></body></html>" % a.step)
        outputs["report"] = (a.report_out, {})
    artifacts = {name: {"artifacts": [{"name": name, "uri": uri_for(path), "metadata": meta}]}
                 for name, (path, meta) in outputs.items()}
    write(a.executor_output, json.dumps({"artifacts": artifacts}))
    return 0
'''


@pytest.mark.parametrize("shared_runtime", [False, True], ids=["runtime-in-each-step",
                                                                 "runtime-shipped-once"])
def test_compiled_yaml_runs_with_kfp_local(tmp_path: Path, shared_runtime: bool) -> None:
    from kfp import components
    from kfp_local_shim import container_components_as_subprocesses

    def payload(step: str) -> bytes:
        return fake_runtime_zip(None if shared_runtime else FAKE_RUNTIME, step)

    p = pipeline(
        task("prepare", parameters=("n", "msg", "seed", "rate", "flag", "opts"),
             payload=payload("prepare")),
        task("left", inputs=("prepare",), report=True, payload=payload("left"), **GPU_STEP),
        task("right", inputs=("prepare",), parameters=("n",), payload=payload("right")),
        task("join", inputs=("left", "right"), after=("prepare",), metrics=True,
             payload=payload("join")),
        params=PARAMS, volumes=(Volume("ws", "/home/jovyan"),))
    if shared_runtime:
        p = replace(p, runtime=fake_runtime_zip(FAKE_RUNTIME))
    spec, platform = build_ir(p)
    validate_ir(spec, platform)
    path = tmp_path / "pipeline.yaml"
    path.write_text(ir_to_yaml(spec, platform))
    runs = tmp_path / "runs"

    with container_components_as_subprocesses(pipeline_root=runs):
        components.load_component_from_file(str(path))(n=5, msg="hello")

    (run,) = runs.iterdir()
    join = json.loads((run / "join" / "state" / "record.json").read_text())
    assert join["step"] == join["env"] == join["program"] == "join"
    assert sorted(join["loaded"]) == ["left", "right"]
    prepare = join["loaded"]["left"]["loaded"]["prepare"]
    assert prepare["params"] == {"n": 5, "msg": "hello", "seed": None, "rate": 0.5,
                                 "flag": True, "opts": {"k": 1.0}}
    assert join["loaded"]["right"]["params"] == {"n": 5}
    assert json.loads((run / "join" / "metrics").read_text()) == {"producers": 2.0}
    assert "<h1>left</h1>" in (run / "left" / "report").read_text()


def test_shared_runtime_travels_once() -> None:
    runtime = fake_runtime_zip(base64.b64encode(random.Random(1).randbytes(30_000)).decode())
    p = replace(pipeline(task("a"), task("b", inputs=("a",)), task("kale-runtime")),
                runtime=runtime)
    spec, platform = build_ir(p)
    validate_ir(spec, platform)
    text = ir_to_yaml(spec, platform)
    assert text.count(base64.b64encode(runtime).decode()[:200]) == 1
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["b"]["dependentTasks"] == ["a", "kale-runtime-2"]
    assert tasks["b"]["inputs"]["artifacts"]["runtime"] == {"taskOutputArtifact": {
        "outputArtifactKey": "runtime", "producerTask": "kale-runtime-2"}}
    args = spec["deploymentSpec"]["executors"]["exec-a"]["container"]["args"]
    assert args[:2] == ["--runtime", "{{$.inputs.artifacts['runtime'].path}}"]


# --- scale ----------------------------------------------------------------------------------------

def test_two_hundred_steps_build_and_validate() -> None:
    steps = [task("s0", parameters=("n",))]
    steps += [task(f"s{i}", inputs=(f"s{i - 1}",), after=(f"s{max(i - 5, 0)}",) if i > 5 else (),
                   parameters=("n",), limits=(("cpu", "1"),)) for i in range(1, 200)]
    spec, platform = build_ir(pipeline(*steps, params=PARAMS, volumes=(Volume("ws", "/w"),)))
    validate_ir(spec, platform)
    text = ir_to_yaml(spec, platform)
    assert len(re.findall(r"^  comp-s\d+:$", text, flags=re.M)) == 200
