"""Kubeflow Pipelines v2 IR (PipelineSpec + kfp-kubernetes PlatformSpec), built as plain data.

The KFP SDK is not imported: ``import kfp`` alone costs seconds, and the IR is a documented
protobuf schema. :mod:`kale_py.kubeflow.validate` checks the result against KFP's own protobufs.

Every step is a *container component*: the step pod needs nothing but ``python3``. The command is
``python3 -c BOOTSTRAP <payload> <runtime args>``; :data:`BOOTSTRAP` base64-decodes the payload
(a zip with ``kale_py/runtime.py`` and the step program), puts the zip on ``sys.path`` and calls
``kale_py.runtime.main(runtime_args)``.

With :attr:`PipelineDef.runtime` set, the runtime zip travels once instead of in every step: a
first task (``kale-runtime``) writes it as an artifact, each step receives it as the input artifact
``runtime`` and is started as ``python3 -c BOOTSTRAP --runtime <zip> <sha256> <payload> <runtime
args>``, its payload holding only the step's own files. A pipeline's size then grows by the step
programs only. The runtime's SHA-256 is in the compiled spec (kept by the KFP API server, not in
the artifact store that most installs share between profiles): the bootstrap checks the zip
against it before putting it on ``sys.path``.

State between steps is checked the same way. A step that saves state reports the digest of its
state manifest as the output parameter ``state_digest`` (parameters live in KFP's database); a
consumer receives it as ``state_digest_<producer>`` and the runtime checks the manifest against it,
and every file against the manifest, before anything is unpickled.

The runtime's command line::

    --step <display name>
    --state-in <producer>=<dir>          one per producer whose state this step loads
    --state-out <dir>                    if the step saves state
    --metrics-out <file>                 if the step reports metrics (system.Metrics)
    --report-out <file>                  if the step writes an HTML report (system.HTML)
    --param <name>=<value>               one per pipeline parameter, rendered by KFP:
    --param-type <name>=<type>             strings as-is, numbers (an int may arrive as "3.0"),
                                           booleans as true/false, lists and dicts as JSON
    --executor-output <file>             the runtime writes KFP's ExecutorOutput JSON here
    --manifest-digest-out <file>         the output parameter state_digest, if it saves state
    --state-digest <producer>=<digest>   one per producer: the digest it reported
    --workdir <dir>                      if the notebook has a working directory

A ``None``-valued parameter is declared ``STRING`` with the default ``""`` (KFP has no null
parameter); the runtime reads an empty value of declared type ``none`` as ``None``.

ExecutorOutput: ``kfp.local`` registers an output artifact only if the step lists it in
``--executor-output`` (``{"artifacts": {"state": {"artifacts": [{"name": "state", "uri": U}]}}}``).
On a cluster the launcher *replaces* the artifact's URI with ``U`` when it is given, so ``U`` must
be the artifact's real URI: the output path with the launcher's mount prefix turned back into a
scheme (``/minio/b/k`` -> ``minio://b/k``, ``/s3/`` -> ``s3://``, ``/gcs/`` -> ``gs://``), and the
path itself when it has none of these prefixes (``kfp.local``, whose URIs are local paths).

Claims made for the run (``clone``, ``new_pvc``, ``pv`` volumes: kfp-kubernetes CreatePVC tasks)
are deleted when the run ends, succeeded or failed: the tasks then sit in an exit handler (the
sub-DAG ``comp-exit-handler-1``, laid out as KFP's compiler writes ``dsl.ExitHandler``) and the
exit task ``kale-cleanup`` runs :mod:`kale_py.kubeflow.cleanup`, shipped in its arguments, with
the run's id. A volume with ``keep`` is left out; with nothing to delete there is no exit handler.

A step in a step image (:attr:`TaskDef.python` set) starts with :func:`check_python`: on another
Python it stops at once with one line instead of failing later on a compiled extension.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kale_py.diagnostics import CompileError, Diagnostic
from kale_py.settings import StepSettings, Volume

Json = dict[str, Any]

SCHEMA_VERSION = "2.1.0"
# The IR follows the layout of this SDK release; the backend reads sdkVersion for display only.
SDK_VERSION = "kfp-2.17.3"

#: Runs inside the step container as ``python3 -c BOOTSTRAP``. The payload may be split over
#: several arguments (Linux caps one at 128 KiB); base64 never starts with "--" as flags do.
BOOTSTRAP = "; ".join([
    "import atexit, base64, hashlib, os, sys, tempfile",
    "a = sys.argv[1:]",
    "r = a[1:2] if a[0] == '--runtime' else []",
    "h = a[2] if r else ''",
    "a = a[3:] if r else a",
    "r and hashlib.sha256(open(r[0], 'rb').read()).hexdigest() != h and sys.exit("
    "'kale_py: the step runtime in ' + r[0] + ' differs from the one this pipeline was compiled"
    " with (its SHA-256 is in the pipeline spec): it was damaged or replaced in the artifact "
    "store, so nothing was run. Re-run the pipeline')",
    "n = next(i for i, s in enumerate(a) if s.startswith('--'))",
    "fd, z = tempfile.mkstemp(prefix='kale-py-', suffix='.zip')",
    "f = os.fdopen(fd, 'wb')",
    "f.write(base64.b64decode(''.join(a[:n])))",
    "f.close()",
    "atexit.register(os.unlink, z)",
    "sys.path[:0] = [z, *r]",
    "from kale_py.runtime import main",
    "sys.exit(main(a[n:]))",
])
#: The ``kale-runtime`` task: writes the runtime zip as its ``runtime`` artifact, and lists that
#: artifact in its ExecutorOutput with its real URI (see the module docstring).
UNPACK_RUNTIME = "; ".join([
    "import base64, json, os, sys",
    "*chunks, out, meta = sys.argv[1:]",
    "os.makedirs(os.path.dirname(out), exist_ok=True)",
    "f = open(out, 'wb')",
    "f.write(base64.b64decode(''.join(chunks)))",
    "f.close()",
    "m = [(p, s) for p, s in (('/gcs/', 'gs://'), ('/minio/', 'minio://'), ('/s3/', 's3://'))"
    " if out.startswith(p)]",
    "uri = m[0][1] + out[len(m[0][0]):] if m else out",
    "os.makedirs(os.path.dirname(meta), exist_ok=True)",
    "f = open(meta, 'w')",
    "json.dump({'artifacts': {'runtime': {'artifacts': [{'name': 'runtime', 'uri': uri}]}}}, f)",
    "f.close()",
])
#: Prepended to :data:`BOOTSTRAP` for a step image: a step on another Python stops at once.
PYTHON_CHECK = (
    "import sys; v = '%d.%d' % sys.version_info[:2]; "
    "sys.exit(f'kale_py: the step image was built for Python {0} but this is Python {{v}}: "
    "rebuild it from an environment with the image\\'s Python') if v != '{0}' else None"
)


def check_python(version: str) -> str:
    """The bootstrap of a step image's step: the Python check, then :data:`BOOTSTRAP`."""
    return PYTHON_CHECK.format(version) + "; " + BOOTSTRAP


#: With package installation opted in: ``sh -c INSTALL_THEN_RUN BOOTSTRAP <args>``, so ``$0`` is
#: the bootstrap and ``"$@"`` its arguments. The pins are in ``$KALE_PY_PACKAGES``.
INSTALL_THEN_RUN = (
    'PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet --no-warn-script-location '
    '$KALE_PY_PACKAGES && exec python3 -c "$0" "$@"'
)
PAYLOAD_CHUNK = 96 * 1024
#: The exit task: runs :mod:`kale_py.kubeflow.cleanup`, shipped as base64 in its first argument.
RUN_CLEANUP = "; ".join([
    "import base64, sys",
    "s = base64.b64decode(sys.argv.pop(1))",
    "exec(compile(s, 'kale_py_cleanup.py', 'exec'), {'__name__': '__main__'})",
])
EXIT_HANDLER = "exit-handler-1"
_CHANNEL = "pipelinechannel--"

PARAMETER_TYPES = {
    "int": "NUMBER_INTEGER", "float": "NUMBER_DOUBLE", "str": "STRING", "bool": "BOOLEAN",
    "list": "LIST", "dict": "STRUCT", "none": "STRING",
}
_COMMENT_TYPES = {
    "NUMBER_INTEGER": "int", "NUMBER_DOUBLE": "float", "STRING": "str", "BOOLEAN": "bool",
    "LIST": "list", "STRUCT": "dict",
}
_ACCESS_MODES = {"rom": "ReadOnlyMany", "rwo": "ReadWriteOnce", "rwm": "ReadWriteMany",
                 "rwop": "ReadWriteOncePod"}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_CPU = re.compile(r"^([0-9]*\.)?[0-9]+m?$")
_MEMORY = re.compile(r"^([0-9]*\.)?[0-9]+(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_MEMORY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                 "E": 10**18, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
                 "Pi": 1 << 50, "Ei": 1 << 60}
_SNAPSHOT_SOURCE = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot"}
_CLAIM_KINDS = {"clone": "clone", "new_pvc": "new claim", "pv": "claim on a PersistentVolume"}


@dataclass(frozen=True)
class PipelineParam:
    """A typed pipeline parameter: ``type`` is int, float, str, bool, list, dict or none."""

    name: str
    type: str
    default: object


@dataclass(frozen=True)
class TaskDef:
    """One step as a KFP task. ``name`` is already KFP-normalised; ``payload`` is opaque."""

    name: str
    display_name: str
    payload: bytes
    inputs: tuple[str, ...]
    after: tuple[str, ...]
    parameters: tuple[str, ...]
    has_state_output: bool
    has_metrics: bool
    has_report: bool
    settings: StepSettings
    image: str
    #: pinned requirements installed with pip when the step starts (an explicit opt-in)
    packages: tuple[str, ...] = ()
    #: the step image's Python ("3.11"): the step stops at once on any other interpreter
    python: str | None = None


@dataclass(frozen=True)
class ServeDef:
    """A ``serve:VAR`` model: exported from its producer's state, then deployed with KServe
    (see :mod:`kale_py.serving.export` and :mod:`kale_py.serving.deploy`)."""

    variable: str
    #: the KFP name of the step that saves the variable
    producer: str
    #: the InferenceService's name
    name: str
    #: kale_py's Python predictor's image (default: the producer's)
    image: str | None = None
    service_account: str | None = None
    s3_endpoint: str | None = None
    #: seconds the deploy task waits for the InferenceService to be ready
    timeout: int = 600
    #: auto (a built-in runtime where one fits) or python (always kale_py's predictor)
    predictor: str = "auto"


@dataclass(frozen=True)
class PipelineDef:
    """A whole pipeline: parameters, tasks in notebook order, notebook volumes."""

    name: str
    description: str | None
    params: tuple[PipelineParam, ...]
    tasks: tuple[TaskDef, ...]
    volumes: tuple[Volume, ...]
    working_dir: str | None
    enable_caching: bool
    #: The runtime zip, shipped once for all steps (then each payload holds only its step).
    runtime: bytes | None = None
    #: ``serve:VAR`` models: each gets an export task and a deploy task after its producer
    serves: tuple[ServeDef, ...] = ()


@dataclass(frozen=True)
class _Clone:
    """A claim made for the run by a CreatePVC task: restored from a snapshot (``clone``), fresh
    (``new_pvc``) or bound to an existing PersistentVolume (``pv``)."""

    volume: Volume
    create_task: str


@dataclass(frozen=True)
class _Plan:
    """The tasks kale_py adds around the steps."""

    clones: tuple[_Clone, ...]
    runtime_task: str | None
    #: the exit task deleting the run's claims and snapshots, when there are any to delete
    cleanup_task: str | None = None
    #: per served model: (its export task, its deploy task)
    serve_tasks: tuple[tuple[ServeDef, str, str], ...] = ()


def build_ir(p: PipelineDef) -> tuple[Json, Json | None]:
    """The PipelineSpec and the kfp-kubernetes PlatformSpec (``None`` if no step needs one).

    Raises :class:`CompileError` when a setting cannot be expressed in KFP.
    """
    _check_pipeline(p)
    params = {q.name: q for q in p.params}
    plan = _plan(p)
    components: Json = {}
    executors: Json = {}
    tasks: Json = {}
    k8s_executors: Json = {}
    for t in p.tasks:
        components[f"comp-{t.name}"] = _component_spec(t, params, plan)
        executors[f"exec-{t.name}"] = {"container": _container_spec(t, p, plan)}
        tasks[t.name] = _task_spec(t, p, plan)
        k8s = _kubernetes_config(t, p, plan.clones)
        if k8s:
            k8s_executors[f"exec-{t.name}"] = k8s
    if plan.clones:
        _add_clone_tasks(plan.clones, components, executors, tasks)
    if plan.runtime_task:
        _add_runtime_task(plan.runtime_task, p, components, executors, tasks)
    for serve, export, deploy in plan.serve_tasks:
        _add_serve_tasks(serve, export, deploy, p, plan, components, executors, tasks,
                         k8s_executors)
    if plan.cleanup_task:
        tasks = _exit_handler(plan.cleanup_task, p, plan.clones, tasks, components, executors)
    root: Json = {"dag": {"tasks": tasks}}
    if p.params:
        root["inputDefinitions"] = {"parameters": {q.name: _root_input(q) for q in p.params}}
    info: Json = {"name": p.name}
    if p.description:
        info["description"] = p.description
    spec = {
        "components": components,
        "deploymentSpec": {"executors": executors},
        "pipelineInfo": info,
        "root": root,
        "schemaVersion": SCHEMA_VERSION,
        "sdkVersion": SDK_VERSION,
    }
    if not k8s_executors:
        return spec, None
    platform = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": k8s_executors}}}}
    return spec, platform


def ir_to_yaml(pipeline_spec: Json, platform_spec: Json | None) -> str:
    """The pipeline file as the KFP compiler writes it: a header comment, the PipelineSpec and,
    after ``---``, the PlatformSpec."""
    yaml = importlib.import_module("yaml")  # lazily, and untyped: only compiling needs it

    documents = [pipeline_spec] if platform_spec is None else [pipeline_spec, platform_spec]
    # The C emitter writes the same text as KFP's pure-Python one, several times faster.
    base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    dumper = type("IrDumper", (base,), {"ignore_aliases": lambda self, data: True})
    body: str = yaml.dump_all(documents, Dumper=dumper, sort_keys=True)
    return _header_comment(pipeline_spec) + body


def payload_args(payload: bytes) -> list[str]:
    """The payload as base64 arguments, none longer than the kernel's per-argument limit."""
    text = base64.b64encode(payload).decode("ascii")
    return [text[i:i + PAYLOAD_CHUNK] for i in range(0, len(text), PAYLOAD_CHUNK)] or [""]


# --- checks ---------------------------------------------------------------------------------

def _fail(message: str, step: str | None = None) -> CompileError:
    return CompileError(Diagnostic("error", "KF001", message, step=step))


def _check_pipeline(p: PipelineDef) -> None:
    if not _PIPELINE_NAME.match(p.name):
        raise _fail(f"pipeline name {p.name!r} is not valid in Kubeflow: use lowercase letters, "
                    "digits and '-' (at most 128 characters, starting with a letter or digit)")
    if not p.tasks:
        raise _fail("the pipeline has no steps")
    params = {q.name for q in p.params}
    for q in p.params:
        if q.type not in PARAMETER_TYPES:
            raise _fail(f"pipeline parameter {q.name!r} has unsupported type {q.type!r}")
    seen: dict[str, TaskDef] = {}
    for t in p.tasks:
        if not _NAME.match(t.name) or len(t.name) > 63 or t.name in seen:
            raise _fail(f"step {t.display_name!r} has an invalid or duplicate Kubeflow name "
                        f"{t.name!r}", t.display_name)
        for producer in t.inputs + t.after:
            if producer not in seen:
                raise _fail(f"step {t.display_name!r} depends on {producer!r}, which is not an "
                            "earlier step", t.display_name)
        for producer in t.inputs:
            if not seen[producer].has_state_output:
                raise _fail(f"step {t.display_name!r} loads the state of {producer!r}, which "
                            "saves none", t.display_name)
        unknown = sorted(set(t.parameters) - params)
        if unknown:
            raise _fail(f"step {t.display_name!r} uses unknown pipeline parameters {unknown}",
                        t.display_name)
        seen[t.name] = t
    for serve in p.serves:
        _check_serve(serve, seen, p)


#: a DNS-1035 label, as KServe requires of an InferenceService's name
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _check_serve(serve: ServeDef, tasks: dict[str, TaskDef], p: PipelineDef) -> None:
    producer = tasks.get(serve.producer)
    if producer is None or not producer.has_state_output:
        raise _fail(f"serve:{serve.variable}: step {serve.producer!r} saves no state to serve "
                    "it from")
    if not _SERVICE_NAME.match(serve.name) or len(serve.name) > 45:
        raise _fail(f"serve:{serve.variable}: {serve.name!r} is not a valid InferenceService "
                    "name: use lowercase letters, digits and '-', starting with a letter, at "
                    "most 45 characters (serving.name in the notebook metadata)")
    if p.runtime is None:
        raise _fail(f"serve:{serve.variable}: serving needs the shared step runtime")


# --- PipelineSpec pieces ----------------------------------------------------------------------

def _protobuf_value(value: object) -> object:
    """``value`` as KFP writes a protobuf Value: every number is a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_protobuf_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _protobuf_value(v) for k, v in value.items()}
    raise _fail(f"pipeline parameter default {value!r} is not a JSON value")


def _root_input(q: PipelineParam) -> Json:
    default = "" if q.type == "none" else _protobuf_value(q.default)
    return {"defaultValue": default, "isOptional": True,
            "parameterType": PARAMETER_TYPES[q.type]}


def _component_spec(t: TaskDef, params: dict[str, PipelineParam], plan: _Plan) -> Json:
    spec: Json = {"executorLabel": f"exec-{t.name}"}
    inputs: Json = {}
    artifacts = {f"state-{src}": _artifact_type("system.Artifact") for src in t.inputs}
    if plan.runtime_task:
        artifacts["runtime"] = _artifact_type("system.Artifact")
    if artifacts:
        inputs["artifacts"] = artifacts
    parameters = {name: {"parameterType": PARAMETER_TYPES[params[name].type]}
                  for name in t.parameters}
    parameters.update({digest_input(src): {"parameterType": "STRING"} for src in t.inputs})
    if parameters:
        inputs["parameters"] = parameters
    if inputs:
        spec["inputDefinitions"] = inputs
    outputs = {name: _artifact_type(kind) for name, kind, wanted in (
        ("state", "system.Artifact", t.has_state_output),
        ("metrics", "system.Metrics", t.has_metrics),
        ("report", "system.HTML", t.has_report)) if wanted}
    if outputs:
        spec["outputDefinitions"] = {"artifacts": outputs}
    if t.has_state_output:
        spec["outputDefinitions"]["parameters"] = {DIGEST_OUTPUT: {"parameterType": "STRING"}}
    return spec


#: The output parameter that carries the digest of a step's state manifest.
DIGEST_OUTPUT = "state_digest"


def digest_input(producer: str) -> str:
    """The input parameter through which a consumer receives ``producer``'s digest."""
    return f"{DIGEST_OUTPUT}_{producer.replace('-', '_')}"


def _artifact_type(schema_title: str) -> Json:
    return {"artifactType": {"schemaTitle": schema_title, "schemaVersion": "0.0.1"}}


def _runtime_args(t: TaskDef, p: PipelineDef) -> list[str]:
    params = {q.name: q for q in p.params}
    args = ["--step", t.display_name]
    for src in t.inputs:
        args += ["--state-in", f"{src}={{{{$.inputs.artifacts['state-{src}'].path}}}}",
                 "--state-digest", f"{src}={{{{$.inputs.parameters['{digest_input(src)}']}}}}"]
    for name, wanted in (("state", t.has_state_output), ("metrics", t.has_metrics),
                         ("report", t.has_report)):
        if wanted:
            args += [f"--{name}-out", f"{{{{$.outputs.artifacts['{name}'].path}}}}"]
    for name in t.parameters:
        args += ["--param", f"{name}={{{{$.inputs.parameters['{name}']}}}}",
                 "--param-type", f"{name}={params[name].type}"]
    if t.has_state_output:
        args += ["--manifest-digest-out",
                 f"{{{{$.outputs.parameters['{DIGEST_OUTPUT}'].output_file}}}}"]
    args += ["--executor-output", "{{$.outputs.output_file}}"]
    if p.working_dir:
        args += ["--workdir", p.working_dir]
    return args


def _container_spec(t: TaskDef, p: PipelineDef, plan: _Plan) -> Json:
    shared = []
    if plan.runtime_task:
        digest = hashlib.sha256(p.runtime or b"").hexdigest()
        shared = ["--runtime", "{{$.inputs.artifacts['runtime'].path}}", digest]
    env = _environment(t, p)
    command = ["python3", "-c", BOOTSTRAP if t.python is None else check_python(t.python)]
    if t.packages:
        # Opt-in only: this needs pip and a package index reachable from the pod.
        env.append(("KALE_PY_PACKAGES", " ".join(t.packages)))
        command = ["sh", "-c", INSTALL_THEN_RUN, BOOTSTRAP]
    container: Json = {
        "args": shared + payload_args(t.payload) + _runtime_args(t, p),
        "command": command,
        "env": [{"name": k, "value": v} for k, v in env],
        "image": t.image,
    }
    resources = _resources(t)
    if resources:
        container["resources"] = resources
    return container


def _environment(t: TaskDef, p: PipelineDef) -> list[tuple[str, str]]:
    env = [("KALE_PY_STEP", t.display_name)]
    home = _home_volume(p)
    if home:
        # As in the notebook pod, where the volume holding the working directory is $HOME.
        env.append(("HOME", home))
    env += [(f"KALE_VOLUME_{re.sub('[^A-Z0-9]', '_', v.name.upper())}", v.mount_point)
            for v in p.volumes if v.expose_as_env_var]
    return env


def _home_volume(p: PipelineDef) -> str | None:
    if not p.working_dir:
        return None
    wd = p.working_dir.rstrip("/") + "/"
    mounts = [v.mount_point.rstrip("/") for v in p.volumes
              if wd.startswith(v.mount_point.rstrip("/") + "/")]
    return max(mounts, key=len) if mounts else None


def _task_spec(t: TaskDef, p: PipelineDef, plan: _Plan) -> Json:
    cache = t.settings.cache if t.settings.cache is not None else p.enable_caching
    depends = set(t.inputs) | set(t.after) | {c.create_task for c in plan.clones}
    if plan.runtime_task:
        depends.add(plan.runtime_task)
    task: Json = {
        "cachingOptions": {"enableCache": True} if cache else {},
        "componentRef": {"name": f"comp-{t.name}"},
        "taskInfo": {"name": t.display_name},
    }
    if depends:
        task["dependentTasks"] = sorted(depends)
    inputs: Json = {}
    sources = {f"state-{src}": (src, "state") for src in t.inputs}
    if plan.runtime_task:
        sources["runtime"] = (plan.runtime_task, "runtime")
    if sources:
        inputs["artifacts"] = {
            key: {"taskOutputArtifact": {"outputArtifactKey": output, "producerTask": producer}}
            for key, (producer, output) in sources.items()}
    parameters: Json = {name: {"componentInputParameter": name} for name in t.parameters}
    parameters.update({
        digest_input(src): {"taskOutputParameter": {"outputParameterKey": DIGEST_OUTPUT,
                                                    "producerTask": src}}
        for src in t.inputs})
    if parameters:
        inputs["parameters"] = parameters
    if inputs:
        task["inputs"] = inputs
    if t.settings.retry:
        task["retryPolicy"] = {"backoffDuration": "0s", "backoffFactor": 2.0,
                               "backoffMaxDuration": "3600s",
                               "maxRetryCount": t.settings.retry}
    return task


# --- resources ------------------------------------------------------------------------------

def _resources(t: TaskDef) -> Json:
    """cpu/memory in both forms the 2.17 compiler writes; any other resource is the accelerator."""
    s, step = t.settings, t.display_name
    limits, requests = dict(s.limits), dict(s.requests)
    out: Json = {}
    for kind, values in (("Limit", limits), ("Request", requests)):
        if "cpu" in values:
            _add_quantity(out, f"cpu{kind}", values["cpu"], _cpu_to_float(values["cpu"], step))
        if "memory" in values:
            out_value = _memory_to_float(values["memory"], step)
            _add_quantity(out, f"memory{kind}", values["memory"], out_value)
    others = {k: v for k, v in {**requests, **limits}.items() if k not in ("cpu", "memory")}
    if len(others) > 1:
        raise _fail(f"step {step!r} asks for several accelerator types {sorted(others)}; "
                    "Kubeflow Pipelines allows one per step", step)
    for kind, count in others.items():
        if not count.isdigit():
            raise _fail(f"step {step!r}: {kind} count {count!r} is not a whole number", step)
        out["accelerator"] = {"count": str(int(count)), "resourceCount": count,
                              "resourceType": kind, "type": kind}
    return out


def _add_quantity(out: Json, field: str, text: str, value: float) -> None:
    resource_field = "resource" + field[0].upper() + field[1:]
    out[resource_field] = text
    if value:  # protobuf leaves a zero double out, and KFP's YAML with it
        out[field] = value


def _cpu_to_float(cpu: str, step: str) -> float:
    if not _CPU.match(cpu):
        raise _fail(f"step {step!r}: cpu {cpu!r} is not a Kubernetes quantity "
                    "(a number, or millicores like 500m)", step)
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def _memory_to_float(memory: str, step: str) -> float:
    """Gigabytes, computed as the KFP compiler does (same float for the same text)."""
    match = _MEMORY.match(memory)
    if not match:
        raise _fail(f"step {step!r}: memory {memory!r} is not a Kubernetes quantity "
                    "(e.g. 512Mi, 2Gi, 1G)", step)
    unit = match.group(2) or ""
    number = float(memory[:len(memory) - len(unit)])
    if unit == "G":
        return number
    return number * _MEMORY_UNITS[unit] / 10**9


# --- kfp-kubernetes executor config ------------------------------------------------------------

def _kubernetes_config(t: TaskDef, p: PipelineDef, clones: Iterable[_Clone]) -> Json:
    s = t.settings
    config: Json = {}
    if s.timeout:
        config["activeDeadlineSeconds"] = str(s.timeout)  # int64: a string in protobuf JSON
    if s.node_selector:
        config["nodeSelector"] = {"labels": dict(s.node_selector)}
    metadata = {k: dict(v) for k, v in (("annotations", s.annotations), ("labels", s.labels)) if v}
    if metadata:
        config["podMetadata"] = metadata
    mounts = _pvc_mounts(p.volumes, clones)
    if mounts:
        config["pvcMount"] = mounts
    secrets = _secrets_as_env(s)
    if secrets:
        config["secretAsEnv"] = secrets
    if s.tolerations:
        config["tolerations"] = [_toleration(x.key, x.value, x.effect) for x in s.tolerations]
    if s.pull_secrets:
        config["imagePullSecret"] = [{"secretName": n, "secretNameParameter": {
            "runtimeValue": {"constant": n}}} for n in s.pull_secrets]
    return config


def _pvc_mounts(volumes: Iterable[Volume], clones: Iterable[_Clone]) -> list[Json]:
    cloned = {c.volume.name: c for c in clones}
    mounts = []
    for v in volumes:
        if v.name in cloned:
            source = {"outputParameterKey": "name", "producerTask": cloned[v.name].create_task}
            # The current field and its deprecated twin, as kfp-kubernetes writes them.
            mounts.append({"mountPath": v.mount_point,
                           "pvcNameParameter": {"taskOutputParameter": dict(source)},
                           "taskOutputParameter": dict(source)})
        else:
            mounts.append({"constant": v.name, "mountPath": v.mount_point,
                           "pvcNameParameter": {"runtimeValue": {"constant": v.name}}})
    return mounts


def _secrets_as_env(s: StepSettings) -> list[Json]:
    by_secret: dict[str, list[Json]] = {}
    for x in s.secrets:
        by_secret.setdefault(x.secret, []).append({"envVar": x.env, "secretKey": x.key})
    return [{"keyToEnv": keys, "optional": False, "secretName": name,
             "secretNameParameter": {"runtimeValue": {"constant": name}}}
            for name, keys in by_secret.items()]


def _toleration(key: str, value: str, effect: str) -> Json:
    toleration = {"effect": effect, "key": key, "operator": "Equal" if value else "Exists",
                  "value": value}
    return {k: v for k, v in toleration.items() if v}  # protobuf JSON leaves empty strings out


# --- tasks around the steps: the shared runtime, volumes restored from snapshots ----------------

def _plan(p: PipelineDef) -> _Plan:
    taken = {t.name for t in p.tasks}
    runtime_task = _unique("kale-runtime", taken) if p.runtime is not None else None
    clones = tuple(_plan_clones(p, taken))
    cleanup = None
    if any(not c.volume.keep for c in clones):
        if EXIT_HANDLER in taken:
            raise _fail(f"a step may not be named {EXIT_HANDLER!r}: the run's cleanup uses "
                        "that name", EXIT_HANDLER)
        cleanup = _unique("kale-cleanup", taken)
    serve_tasks = tuple((serve, _unique(f"export-{serve.name}", taken),
                         _unique(f"deploy-{serve.name}", taken)) for serve in p.serves)
    return _Plan(clones, runtime_task, cleanup, serve_tasks)


def _add_runtime_task(name: str, p: PipelineDef, components: Json, executors: Json,
                      tasks: Json) -> None:
    components[f"comp-{name}"] = {
        "executorLabel": f"exec-{name}",
        "outputDefinitions": {"artifacts": {"runtime": _artifact_type("system.Artifact")}}}
    executors[f"exec-{name}"] = {"container": {
        "args": payload_args(p.runtime or b"") + ["{{$.outputs.artifacts['runtime'].path}}",
                                                  "{{$.outputs.output_file}}"],
        "command": ["python3", "-c", UNPACK_RUNTIME],
        "image": p.tasks[0].image,  # any image with python3; the steps' is pulled anyway
    }}
    tasks[name] = {
        "cachingOptions": {"enableCache": True} if p.enable_caching else {},
        "componentRef": {"name": f"comp-{name}"},
        "taskInfo": {"name": name},
    }


def _plan_clones(p: PipelineDef, taken: set[str]) -> list[_Clone]:
    clones = []
    for v in p.volumes:
        if v.type == "pvc":
            continue
        if v.type not in _CLAIM_KINDS:
            raise _fail(f"volume {v.name!r}: type {v.type!r} is not supported on Kubeflow "
                        "Pipelines; use pvc, new_pvc, pv or clone")
        if not v.size:
            raise _fail(f"volume {v.name!r}: a {_CLAIM_KINDS[v.type]} needs a size (e.g. 10Gi)")
        clones.append(_Clone(v, _unique("createpvc", taken)))
    return clones


def _unique(base: str, taken: set[str]) -> str:
    """``base``, ``base-2``, ... as the KFP compiler names repeated tasks, avoiding step names."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _add_clone_tasks(clones: Iterable[_Clone], components: Json, executors: Json,
                     tasks: Json) -> None:
    create_comp = _unique("comp-createpvc", set(components))
    create_exec = _unique("exec-createpvc", set(executors))
    components[create_comp] = _create_pvc_component(create_exec)
    executors[create_exec] = {"container": {"image": "argostub/createpvc"}}
    for c in clones:
        v = c.volume
        constants: Json = {
            "access_modes": [_ACCESS_MODES.get(v.access_mode or "rwo", v.access_mode)],
            "size": v.size,
        }
        if v.type == "clone":
            constants["data_source"] = {**_SNAPSHOT_SOURCE, "name": v.name}
        if v.type == "pv":
            constants["volume_name"] = v.name  # bound to that PersistentVolume
        constants["pvc_name_suffix"] = _claim_suffix(v)
        if v.annotations:
            constants["annotations"] = dict(v.annotations)
        if v.storage_class and v.type != "pv":
            constants["storage_class_name"] = v.storage_class
        tasks[c.create_task] = {
            "cachingOptions": {},  # a cached CreatePVC would hand out a claim deleted since
            "componentRef": {"name": create_comp},
            "inputs": {"parameters": {k: {"runtimeValue": {"constant": x}}
                                      for k, x in constants.items()}},
            "taskInfo": {"name": c.create_task},
        }


def _exit_handler(name: str, p: PipelineDef, clones: Iterable[_Clone], inner: Json,
                  components: Json, executors: Json) -> Json:
    """The run's tasks moved into an exit handler whose exit task deletes what the run made.

    The layout is the KFP compiler's for ``dsl.ExitHandler``: a sub-DAG component
    ``comp-exit-handler-1`` holding the tasks (pipeline parameters reach them as
    ``pipelinechannel--NAME``) and, beside it, the exit task triggered when it completes.
    """
    kinds = {q.name: q.type for q in p.params}
    used = sorted({q for t in p.tasks for q in t.parameters})
    for task in inner.values():
        for spec in task.get("inputs", {}).get("parameters", {}).values():
            if "componentInputParameter" in spec:
                spec["componentInputParameter"] = _CHANNEL + spec["componentInputParameter"]
    handler: Json = {"dag": {"tasks": inner}}
    if used:
        handler["inputDefinitions"] = {"parameters": {
            _CHANNEL + q: {"parameterType": PARAMETER_TYPES[kinds[q]]} for q in used}}
    components[f"comp-{EXIT_HANDLER}"] = handler
    components[f"comp-{name}"] = {"executorLabel": f"exec-{name}", "inputDefinitions": {
        "parameters": {"run_id": {"parameterType": "STRING"}}}}
    args = payload_args(_cleanup_source()) + ["--run-id", "{{$.inputs.parameters['run_id']}}"]
    for c in clones:
        if not c.volume.keep:
            args += ["--claim-suffix", _claim_suffix(c.volume)]
            if c.volume.type == "clone":
                args += ["--snapshot", c.volume.name]
    executors[f"exec-{name}"] = {"container": {
        "args": args, "command": ["python3", "-c", RUN_CLEANUP], "image": p.tasks[0].image}}
    outer: Json = {EXIT_HANDLER: {"componentRef": {"name": f"comp-{EXIT_HANDLER}"},
                                  "taskInfo": {"name": EXIT_HANDLER}}}
    if used:
        outer[EXIT_HANDLER]["inputs"] = {"parameters": {
            _CHANNEL + q: {"componentInputParameter": q} for q in used}}
    outer[name] = {
        "cachingOptions": {},  # a cached cleanup would delete nothing
        "componentRef": {"name": f"comp-{name}"},
        "dependentTasks": [EXIT_HANDLER],
        "inputs": {"parameters": {"run_id": {"runtimeValue": {
            "constant": "{{$.pipeline_job_uuid}}"}}}},
        "taskInfo": {"name": name},
        "triggerPolicy": {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"},
    }
    return outer


def _cleanup_source() -> bytes:
    return (Path(__file__).resolve().parent / "cleanup.py").read_bytes()


def _claim_suffix(v: Volume) -> str:
    return f"-{re.sub('[^a-z0-9]+', '-', v.name.lower()).strip('-')}"


def _create_pvc_component(executor: str) -> Json:
    """kfp-kubernetes 2.17's CreatePVC interface (its docstrings left out)."""
    def param(kind: str, optional: bool = True) -> Json:
        return {"isOptional": True, "parameterType": kind} if optional else {"parameterType": kind}

    parameters = {
        "access_modes": param("LIST", optional=False),
        "annotations": param("STRUCT"),
        "data_source": param("STRUCT"),
        "pvc_name": param("STRING"),
        "pvc_name_suffix": param("STRING"),
        "size": param("STRING", optional=False),
        "storage_class_name": {**param("STRING"), "defaultValue": ""},
        "volume_name": param("STRING"),
    }
    return {"executorLabel": executor, "inputDefinitions": {"parameters": parameters},
            "outputDefinitions": {"parameters": {"name": {"parameterType": "STRING"}}}}


# --- YAML header ---------------------------------------------------------------------------------

def _header_comment(spec: Json) -> str:
    """The ``# PIPELINE DEFINITION`` comment, as the KFP compiler writes it."""
    lines = ["# PIPELINE DEFINITION", f"# Name: {spec['pipelineInfo']['name']}"]
    description = spec["pipelineInfo"].get("description")
    if description:
        lines.append("# Description: " + "\n#              ".join(description.splitlines()))
    inputs = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    if inputs:
        lines.append("# Inputs:")
    for name in sorted(inputs):
        body = inputs[name]
        line = f"#    {name}: {_COMMENT_TYPES[body['parameterType']]}"
        if "defaultValue" in body:
            default = body["defaultValue"]
            shown = f"'{default}'" if isinstance(default, str) else str(_sorted_keys(default))
            line += f" [Default: {shown}]"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _sorted_keys(value: object) -> object:
    """Dicts with sorted keys (KFP shows them in protobuf map order, which varies between runs)."""
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


# --- serving: a served model's export and deploy tasks ------------------------------------------

#: the payload of a task that runs the runtime's own code only (no step program)
_NO_STEP = base64.b64decode(b"UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==")  # an empty zip


def _add_serve_tasks(serve: ServeDef, export: str, deploy: str, p: PipelineDef, plan: _Plan,
                     components: Json, executors: Json, tasks: Json, k8s: Json) -> None:
    """The export task (the model in its runtime's format, as the artifact ``model``) and the
    deploy task (the InferenceService from that artifact's URI), after the model's producer."""
    producer = next(t for t in p.tasks if t.name == serve.producer)
    runtime_sha = hashlib.sha256(p.runtime or b"").hexdigest()
    shared = ["--runtime", "{{$.inputs.artifacts['runtime'].path}}", runtime_sha]
    runtime_input = {"runtime": _artifact_type("system.Artifact")}
    components[f"comp-{export}"] = {
        "executorLabel": f"exec-{export}",
        "inputDefinitions": {"artifacts": {"state": _artifact_type("system.Artifact"),
                                           **runtime_input},
                             "parameters": {DIGEST_OUTPUT: {"parameterType": "STRING"}}},
        "outputDefinitions": {"artifacts": {"model": _artifact_type("system.Model")},
                              "parameters": {"format": {"parameterType": "STRING"},
                                             "model_digest": {"parameterType": "STRING"}}},
    }
    args = [*shared, *payload_args(producer.payload), "--export-model",
            "--variable", serve.variable, "--producer", producer.display_name,
            "--state-in", "{{$.inputs.artifacts['state'].path}}",
            "--state-digest", f"{{{{$.inputs.parameters['{DIGEST_OUTPUT}']}}}}",
            "--model-out", "{{$.outputs.artifacts['model'].path}}",
            "--format-out", "{{$.outputs.parameters['format'].output_file}}",
            "--digest-out", "{{$.outputs.parameters['model_digest'].output_file}}",
            "--executor-output", "{{$.outputs.output_file}}"]
    if serve.predictor == "python":
        args += ["--predictor", "python"]
    if serve.image:
        args += ["--image", serve.image]
    container: Json = {"args": args, "command": ["python3", "-c", BOOTSTRAP],
                       "image": producer.image}
    if producer.packages:  # the model's libraries, as its producer has them
        container["env"] = [{"name": "KALE_PY_PACKAGES", "value": " ".join(producer.packages)}]
        container["command"] = ["sh", "-c", INSTALL_THEN_RUN, BOOTSTRAP]
    executors[f"exec-{export}"] = {"container": container}
    tasks[export] = {
        "cachingOptions": {"enableCache": True} if p.enable_caching else {},
        "componentRef": {"name": f"comp-{export}"},
        "dependentTasks": sorted({serve.producer, plan.runtime_task or ""} - {""}),
        "inputs": {
            "artifacts": {"state": _output_artifact(serve.producer, "state"),
                          "runtime": _output_artifact(plan.runtime_task or "", "runtime")},
            "parameters": {DIGEST_OUTPUT: _output_parameter(serve.producer, DIGEST_OUTPUT)}},
        "taskInfo": {"name": export},
    }
    components[f"comp-{deploy}"] = {
        "executorLabel": f"exec-{deploy}",
        "inputDefinitions": {"artifacts": {"model": _artifact_type("system.Model"),
                                           **runtime_input},
                             "parameters": {name: {"parameterType": "STRING"} for name in
                                            ("format", "model_digest", "run_id")}},
        "outputDefinitions": {"parameters": {"url": {"parameterType": "STRING"}}},
    }
    args = [*shared, *payload_args(_NO_STEP), "--deploy-model",
            "--name", serve.name, "--variable", serve.variable,
            "--model-uri", "{{$.inputs.artifacts['model'].uri}}",
            "--format", "{{$.inputs.parameters['format']}}",
            "--model-digest", "{{$.inputs.parameters['model_digest']}}",
            "--runtime-sha", runtime_sha,
            "--image", serve.image or producer.image,
            "--timeout", str(serve.timeout),
            "--run-id", "{{$.inputs.parameters['run_id']}}",
            "--url-out", "{{$.outputs.parameters['url'].output_file}}"]
    if serve.service_account:
        args += ["--service-account", serve.service_account]
    if serve.s3_endpoint:
        args += ["--s3-endpoint", serve.s3_endpoint]
    executors[f"exec-{deploy}"] = {"container": {
        "args": args, "command": ["python3", "-c", BOOTSTRAP], "image": producer.image}}
    tasks[deploy] = {
        "cachingOptions": {},  # a cached deploy would not remake a service deleted since
        "componentRef": {"name": f"comp-{deploy}"},
        "dependentTasks": sorted({export, plan.runtime_task or ""} - {""}),
        "inputs": {
            "artifacts": {"model": _output_artifact(export, "model"),
                          "runtime": _output_artifact(plan.runtime_task or "", "runtime")},
            "parameters": {
                "format": _output_parameter(export, "format"),
                "model_digest": _output_parameter(export, "model_digest"),
                "run_id": {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}}},
        "taskInfo": {"name": deploy},
    }
    pull = producer.settings.pull_secrets
    if pull:
        secrets = {"imagePullSecret": [{"secretName": n, "secretNameParameter": {
            "runtimeValue": {"constant": n}}} for n in pull]}
        k8s[f"exec-{export}"] = secrets
        k8s[f"exec-{deploy}"] = dict(secrets)


def _output_artifact(task: str, key: str) -> Json:
    return {"taskOutputArtifact": {"outputArtifactKey": key, "producerTask": task}}


def _output_parameter(task: str, key: str) -> Json:
    return {"taskOutputParameter": {"outputParameterKey": key, "producerTask": task}}
