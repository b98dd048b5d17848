"""The ``nb2pipe`` commands beyond ``check`` and ``graph``: run, runs, verify, compile, image,
submit, tune and serve. :mod:`kale_py.cli` loads this module only when one of them is used,
so that checking a notebook does not pay for their code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import UsageError, _load_checked, _notebook_arg


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the commands' parsers, in the order ``nb2pipe --help`` lists them."""
    from .runs_command import add_parser as add_runs_parser

    _run_parser(sub)
    add_runs_parser(sub)
    _verify_parser(sub)
    _compile_parser(sub)
    _image_parser(sub)
    _submit_parser(sub)
    _tune_parser(sub)
    _serve_parser(sub)


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run the pipeline on this machine, independent steps in parallel",
        description="Run the pipeline on this machine: each step in its own process, "
        "independent steps in parallel, unchanged steps from the cache. Runs are kept in "
        ".nb2pipe/runs/ next to the notebook.",
    )
    _notebook_arg(run)
    _param_arg(
        run,
        "override a pipeline parameter (repeatable); strings need no quotes, "
        "lists and dicts are JSON",
    )
    run.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="STEP",
        help="run just this step (repeatable); the others' outputs come from earlier runs",
    )
    run.add_argument(
        "--from",
        dest="from_step",
        metavar="STEP",
        help="run this step and every step after it; the others' outputs come from earlier runs",
    )
    run.add_argument(
        "--jobs",
        "-j",
        type=_positive_int,
        metavar="N",
        help="run at most N steps at a time (default: the number of CPUs)",
    )
    run.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="run every step, even when its code and inputs did not change",
    )
    run.add_argument(
        "--progress",
        choices=("auto", "live", "plain", "quiet"),
        default="auto",
        help="live: a status line redrawn in place (the default in a terminal); "
        "plain: one line per event; quiet: only the summary",
    )
    run.add_argument(
        "--suggest-resources",
        action="store_true",
        help="after the run, print request:/limit: memory tags for each step from the "
        "peak memory it used",
    )
    run.add_argument(
        "--isolation",
        choices=("auto", "fork", "spawn"),
        default=None,
        help="fork: each step starts as a copy of one process that ran the imports and "
        "functions cells; spawn: each step is a fresh process that runs them again; "
        "auto (the default, or the notebook's local_isolation): fork when that is safe",
    )
    # The Jupyter server picks the id so that it can answer before the run starts.
    run.add_argument("--run-id", help=argparse.SUPPRESS)
    run.set_defaults(command=_run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    from .local import RunOptions, run_local

    overrides = _overrides(args.param)
    pipeline = _load_checked(args.notebook)
    if pipeline is None:
        return 1
    options = RunOptions(
        params=overrides,
        only=tuple(args.only),
        from_step=args.from_step,
        jobs=args.jobs,
        cache=args.cache,
        progress=args.progress,
        run_id=args.run_id,
        isolation=args.isolation,
    )
    from .storage import LimitError

    try:
        result = run_local(pipeline, options, sys.stdout)
    except LimitError as exc:
        print(f"nb2pipe run: error: {exc}", file=sys.stderr)
        return 2
    if args.suggest_resources:
        _suggest_resources(result.run_dir)
    return result.exit_code


def _suggest_resources(run_dir: Path) -> None:
    from .local import read_json
    from .resources import format_bytes, suggestions

    steps = (read_json(run_dir / "run.json") or {}).get("steps", {})
    peaks = {n: s["peak_rss_bytes"] for n, s in steps.items() if s.get("peak_rss_bytes")}
    if not peaks:
        print("no step ran in this run, so there is nothing measured to suggest from")
        return
    print("resource tags from the measured peaks (add them to each step's first cell):")
    for step, request, limit in suggestions(peaks):
        print(f"  {step}: {request} {limit}    (peak {format_bytes(peaks[step])})")


def _verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = sub.add_parser(
        "verify",
        help="check that the pipeline computes what the notebook computes",
        description="Run the notebook top to bottom in a Jupyter kernel and as the local "
        "pipeline, and compare every name the steps bind. Exit 1 when a name differs "
        "(each is named with the step that provides it) or a step fails.",
    )
    _notebook_arg(verify)
    _param_arg(verify, "a pipeline parameter for both runs (repeatable)")
    verify.add_argument(
        "--runs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run the kernel N times: names that differ between kernel runs (the time, "
        "unseeded randomness) are reported as unstable, not as differences",
    )
    verify.add_argument("--format", choices=("text", "json"), default="text")
    verify.set_defaults(command=_verify)


def _verify(args: argparse.Namespace) -> int:
    from .verify import result_to_text, verify_notebook

    result = verify_notebook(args.notebook, _overrides(args.param), runs=args.runs)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result_to_text(result))
    return 0 if result.ok else 1


# --- Kubeflow Pipelines ------------------------------------------------------------------------


def _compile_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compile_ = sub.add_parser(
        "compile",
        help="write Kubeflow Pipelines v2 YAML",
        description="Compile the notebook to Kubeflow Pipelines v2 YAML (validated against "
        "KFP's own schema before it is written).",
    )
    _notebook_arg(compile_)
    compile_.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="PIPELINE.yaml",
        help="where to write (default: NOTEBOOK's name with .yaml, beside it)",
    )
    _param_arg(compile_, "change a parameter's default in the compiled pipeline")
    compile_.add_argument(
        "--tune", action="store_true",
        help="also write a Katib Experiment (NOTEBOOK.katib.yaml) whose trials run the "
        "pipeline; the search comes from the flags below or the notebook's katib_metadata",
    )
    _search_flags(compile_)
    compile_.add_argument(
        "--image",
        help="the default image of the steps (default: the "
        "notebook's base_image, else $KALE_PY_IMAGE, else python:3.11)",
    )
    compile_.add_argument(
        "--install-packages",
        action="store_true",
        help="steps pip-install, when they start, the packages they import, "
        "pinned to this environment's versions (needs a package index from the "
        "pods; by default the image must hold them)",
    )
    compile_.add_argument(
        "--step-image",
        metavar="REGISTRY/REPO",
        help="build a step image (the base image plus the distributions the steps import, "
        "as installed here), push it there and run the steps in it",
    )
    compile_.set_defaults(command=_compile)


def _image_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = sub.add_parser(
        "image",
        help="build and push the step image; print its reference",
        description="Build the step image without a container engine: the base image plus "
        "one layer holding the installed distributions the steps import that the base lacks. "
        "Push it and print its reference by digest. Credentials come from ~/.docker/config.json.",
    )
    _notebook_arg(image)
    image.add_argument("--push", metavar="REGISTRY/REPO",
                       help="where to push (default: the notebook's step_image)")
    image.add_argument("--base", metavar="IMAGE",
                       help="the base image (default: the notebook pod's, else base_image)")
    image.add_argument("--format", choices=("text", "json"), default="text")
    image.set_defaults(command=_image)


def _image(args: argparse.Namespace) -> int:
    from .api import build_image

    result = build_image(args.notebook, args.push, args.base)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    for d in result["diagnostics"]:
        print(f"{args.notebook}: {d['severity']} {d['code']}: {d['message']}", file=sys.stderr)
    pushed = len(result["pushed"])
    print(f"{len(result['distributions'])} distributions, layer {result['layer_size']} bytes, "
          f"{pushed} blob{'s' * (pushed != 1)} pushed, {result['seconds']:.2f} s",
          file=sys.stderr)
    print(result["reference"])
    return 0


def _submit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = sub.add_parser(
        "submit",
        help="upload and run on a Kubeflow Pipelines endpoint",
        description="Upload the pipeline (or a new version of it), create the experiment if "
        "needed and start a run. The host comes from --host, the notebook's kfp_host, "
        "$KF_PIPELINES_ENDPOINT, or the cluster when run inside a Kubeflow notebook.",
    )
    submit.add_argument("notebook", type=Path, metavar="NOTEBOOK|PIPELINE.yaml")
    submit.add_argument(
        "--host", help="the KFP endpoint, e.g. https://kubeflow.example.com/pipeline"
    )
    submit.add_argument("--experiment", help="experiment name (default: the notebook's)")
    submit.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    submit.add_argument(
        "--token",
        help="bearer token (default: $KF_PIPELINES_TOKEN, the "
        "in-cluster service account token, or the kubeconfig)",
    )
    submit.add_argument(
        "--username",
        help="log in to a multi-user Kubeflow through Dex as this user; the password comes "
        "from $KF_PIPELINES_PASSWORD or a prompt, the session is reused until it expires",
    )
    _param_arg(submit, "a run parameter (repeatable), typed by the pipeline's parameters")
    submit.add_argument("--name", help="pipeline name (default: the notebook's pipeline_name)")
    submit.add_argument("--version", help="pipeline version name (default: a timestamp)")
    submit.add_argument("--image", help="the default image of the steps")
    submit.add_argument(
        "--step-image", metavar="REGISTRY/REPO",
        help="as for compile: build and push a step image and run the steps in it",
    )
    submit.add_argument(
        "--watch",
        action="store_true",
        help="follow the run to its end; exit 0 only if it succeeded",
    )
    submit.add_argument(
        "--install-packages",
        action="store_true",
        help="as for compile: steps pip-install their pinned imports at start",
    )
    submit.add_argument(
        "--tune", action="store_true",
        help="create a Katib Experiment whose trials run the pipeline, instead of one run "
        "(the search: the flags below or the notebook's katib_metadata)",
    )
    _search_flags(submit)
    recurring = submit.add_argument_group("recurring runs")
    recurring.add_argument(
        "--schedule", metavar="CRON",
        help="create a recurring run on this cron schedule instead of one run "
        "(five fields, e.g. '0 9 * * 1-5', or KFP's six with seconds first)",
    )
    recurring.add_argument(
        "--max-concurrency", type=_positive_int, default=1, metavar="N",
        help="at most N scheduled runs at once (default 1)",
    )
    recurring.add_argument(
        "--no-catchup", action="store_true",
        help="do not run the intervals missed while the schedule was paused",
    )
    manage = recurring.add_mutually_exclusive_group()
    manage.add_argument("--disable", action="store_const", const="disable", dest="manage",
                        help="pause the pipeline's recurring runs")
    manage.add_argument("--enable", action="store_const", const="enable", dest="manage",
                        help="resume the pipeline's recurring runs")
    manage.add_argument("--delete", action="store_const", const="delete", dest="manage",
                        help="delete the pipeline's recurring runs")
    submit.set_defaults(command=_submit)



def _tune_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tune = sub.add_parser(
        "tune",
        help="search pipeline parameters for the best value of a pipeline metric",
        description="Run the pipeline locally once per trial, with parameter values suggested "
        "by Optuna, and rank the trials by a pipeline metric. Steps that read no tuned "
        "parameter run once and come from the cache in later trials. Without --search, the "
        "notebook's katib_metadata is used.",
    )
    _notebook_arg(tune)
    _search_flags(tune)
    tune.add_argument("--seed", type=int, help="seed of the suggestions, for repeatable searches")
    tune.add_argument("--jobs", type=_positive_int, help="parallel steps within one trial")
    tune.add_argument("--format", choices=("text", "json"), default="text")
    # The Jupyter server picks the id so that the panel can follow the tuning at once.
    tune.add_argument("--tune-id", help=argparse.SUPPRESS)
    tune.set_defaults(command=_tune)


def _search_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--search", action="append", default=[], metavar="NAME=SPEC",
        help="a parameter to tune (repeatable): LOW..HIGH[:log][:step=S] or choices A,B,C",
    )
    parser.add_argument("--objective", metavar="METRIC", help="the pipeline metric to optimise")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--maximize", dest="maximize", action="store_const", const=True)
    direction.add_argument("--minimize", dest="maximize", action="store_const", const=False)
    parser.add_argument("--trials", type=_positive_int, help="number of trials (default 10)")
    parser.add_argument("--parallel", type=_positive_int, help="trials at once (default 1)")
    parser.add_argument("--algorithm", choices=("random", "grid", "tpe"),
                        help="how values are suggested (default tpe)")


def _tune(args: argparse.Namespace) -> int:
    from .api import tune

    def progress(line: str) -> None:
        print(line, file=sys.stderr if args.format == "json" else sys.stdout, flush=True)

    result = tune(args.notebook, args.search, objective=args.objective, maximize=args.maximize,
                  trials=args.trials, parallel=args.parallel, algorithm=args.algorithm,
                  seed=args.seed, jobs=args.jobs, tune_id=args.tune_id, progress=progress)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    from .tuning.render import tune_to_text

    print(tune_to_text(result))
    return 0


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve the model tagged serve:VAR from a local run (KServe, V2 protocol)",
        description="Load the variable tagged serve:VAR as the latest local run (or --run) "
        "saved it and serve it with KServe's model server: POST "
        "/v2/models/NAME/infer. Needs the serve extra. With --cluster, show instead the "
        "InferenceServices that the pipeline's runs made on the cluster, and their URLs.",
    )
    _notebook_arg(serve)
    serve.add_argument("--cluster", action="store_true",
                       help="show the cluster's InferenceServices of the notebook's models")
    serve.add_argument("--namespace", help="with --cluster: the namespace (default: the "
                       "metadata's, else the pod's or the kubeconfig's)")
    serve.add_argument("--run", metavar="ID", help="the local run (default: the latest)")
    serve.add_argument("--port", type=_positive_int, default=8080, help="HTTP port (8080)")
    serve.add_argument("--name", help="the model's name in URLs (default: the variable's)")
    serve.add_argument("--variable", help="which serve:VAR variable, when there are several")
    serve.set_defaults(command=_serve)


def _serve(args: argparse.Namespace) -> int:
    if args.cluster:
        return _serve_status(args)
    if args.namespace:
        raise UsageError("--namespace goes with --cluster")
    from .serving.local import load_served, serve_local

    pipeline = _load_checked(args.notebook)
    if pipeline is None:
        return 1
    model = load_served(pipeline, args.variable, args.run, args.name)
    serve_local(model, args.port, lambda line: print(line, flush=True))
    return 0


def _serve_status(args: argparse.Namespace) -> int:
    from .api import serving_status

    if args.run or args.variable or args.name:
        raise UsageError("--cluster shows every served model: it does not go with --run, "
                         "--variable or --name")
    answer = serving_status(args.notebook, args.namespace)
    for s in answer["services"]:
        where = f"InferenceService {s['name']} in {answer['namespace']}"
        detail = s["url"] if s["state"] == "ready" else s["message"]
        print(f"{s['variable']}: {where}: {s['state']}" + (f": {detail}" if detail else ""))
    return 0


def _print_served(served: list[dict[str, str]], when: str, notebook: Path) -> None:
    for s in served:
        print(f"{s['variable']} is served as the KServe InferenceService {s['name']!r} {when}; "
              f"its URL: nb2pipe serve {notebook} --cluster")


def _compile(args: argparse.Namespace) -> int:
    from .api import compile_notebook

    output = args.output or args.notebook.with_suffix(".yaml")
    result = compile_notebook(
        args.notebook,
        output,
        _overrides(args.param),
        image=args.image,
        install_packages=args.install_packages,
        step_image=args.step_image,
    )
    for d in result["diagnostics"]:
        print(f"{args.notebook}: {d['severity']} {d['code']}: {d['message']}", file=sys.stderr)
    print(f"{result['path']}: {result['steps']} steps, {result['bytes']} bytes")
    _print_served(result["served"], "when a run of this pipeline ends", args.notebook)
    if args.tune:
        from .api import compile_katib

        katib = compile_katib(
            args.notebook, output.with_suffix(".katib.yaml"), args.search,
            objective=args.objective, maximize=args.maximize, trials=args.trials,
            parallel=args.parallel, algorithm=args.algorithm, params=_overrides(args.param),
            image=args.image)
        print(f"{katib['path']}: Katib Experiment {katib['name']!r}, {katib['trials']} trials "
              f"({katib['algorithm']}); apply it with kubectl apply -f {katib['path']}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from .api import manage_schedule, submit

    if args.manage and args.schedule:
        raise UsageError(f"--{args.manage} and --schedule do not go together")
    if args.watch and (args.schedule or args.manage):
        raise UsageError("--watch follows one run: it does not go with recurring runs")
    if args.tune:
        if args.schedule or args.manage or args.watch:
            raise UsageError("--tune creates a Katib Experiment: it does not go with "
                             "--schedule, --disable/--enable/--delete or --watch")
        from .api import compile_katib

        katib = compile_katib(
            args.notebook, None, args.search, objective=args.objective, maximize=args.maximize,
            trials=args.trials, parallel=args.parallel, algorithm=args.algorithm,
            params=_overrides(args.param), image=args.image, namespace=args.namespace)
        print(f"Katib Experiment {katib['name']!r} created in {katib['namespace']}: "
              f"{katib['trials']} trials ({katib['algorithm']})")
        return 0
    if args.manage:
        manage_schedule(args.notebook, args.manage, host=args.host, experiment=args.experiment,
                        namespace=args.namespace, token=args.token, name=args.name,
                        username=args.username)
        return 0
    result = submit(
        args.notebook,
        host=args.host,
        experiment=args.experiment,
        namespace=args.namespace,
        token=args.token,
        params=_overrides(args.param),
        name=args.name,
        version=args.version,
        image=args.image,
        watch=args.watch,
        install_packages=args.install_packages,
        step_image=args.step_image,
        schedule=args.schedule,
        max_concurrency=args.max_concurrency,
        catchup=not args.no_catchup,
        username=args.username,
    )
    if args.watch and result["state"] == "SUCCEEDED" and result["served"]:
        _print_served_urls(args)
        return 0
    _print_served(result["served"], "when the run ends" if not args.schedule
                  else "when each run ends", args.notebook)
    if args.watch:
        return 0 if result["state"] == "SUCCEEDED" else 1
    return 0


def _print_served_urls(args: argparse.Namespace) -> None:
    """After a watched run: where its served models are (the run itself succeeded, so a
    Kubernetes API that cannot be read here is a note, not a failure)."""
    from .api import serving_status
    from .diagnostics import KalePyError

    try:
        answer = serving_status(args.notebook, args.namespace)
    except KalePyError as exc:
        print(f"the served models' URLs: nb2pipe serve {args.notebook} --cluster (not read "
              f"here: {exc})")
        return
    for s in answer["services"]:
        detail = s["url"] if s["state"] == "ready" else f"{s['state']}: {s['message']}"
        print(f"{s['variable']} is served as InferenceService {s['name']} in "
              f"{answer['namespace']}: {detail}")


def _param_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help=help)


def _overrides(items: list[str]) -> dict[str, str]:
    """``--param NAME=VALUE`` texts by name; each is typed later by its parameter."""
    from .diagnostics import CheckError, error

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CheckError(error("NB307", f"--param {item!r}: expected NAME=VALUE"))
        out[name.strip()] = value
    return out
