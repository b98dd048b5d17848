"""The ``nb2pipe`` command line.

Exit codes: 0 success, 1 a diagnosed problem or a failed run, 2 bad usage.
Only :class:`~kale_py.diagnostics.KalePyError` is turned into diagnostics; anything else
escaping is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .diagnostics import Diagnostic, KalePyError

if TYPE_CHECKING:
    from .graph import Pipeline
    from .notebook import Notebook

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Options that do not go together: exit code 2, as for argparse's own usage errors."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nb2pipe`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["check"], ["graph"]):
        # The commands that only analyse the notebook: the others' code is not loaded. They
        # make many objects and no cycles worth collecting: as for the analysis itself (see
        # build_pipeline), the cyclic collector pauses until they are done.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return _run(_parser(analysis_only=True).parse_args(argv))
        finally:
            if collecting:
                gc.enable()
    from .runs_command import with_default_verb

    return _run(_parser().parse_args(with_default_verb(argv)))


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names: its exit code, its errors as diagnostics."""
    command: Command = args.command
    try:
        try:
            return command(args)
        except ModuleNotFoundError as missing:
            from .extras import missing_package

            raise KalePyError([missing_package(missing)]) from None
    except UsageError as exc:
        print(f"nb2pipe: error: {exc}", file=sys.stderr)
        return 2
    except KalePyError as exc:
        fmt = getattr(args, "format", "text")
        _print_diagnostics(
            exc.diagnostics,
            None,
            getattr(args, "notebook", None),
            fmt,
            sys.stdout if fmt == "json" else sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser(analysis_only: bool = False) -> argparse.ArgumentParser:
    """The command line; ``analysis_only``: only ``check`` and ``graph`` (the usage and the
    errors of those two read the same either way)."""
    parser = argparse.ArgumentParser(
        prog="nb2pipe",
        description="Turn a tagged notebook into a pipeline: check it, draw it, "
        "run it on this machine, or compile it for Kubeflow Pipelines.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    check = sub.add_parser("check", help="report problems in the notebook's tags and code")
    _notebook_arg(check)
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.set_defaults(command=_check)

    graph = sub.add_parser(
        "graph", help="show the steps, the variables between them and the levels"
    )
    _notebook_arg(graph)
    graph.add_argument("--format", choices=("text", "mermaid", "dot", "json"), default="text")
    graph.set_defaults(command=_graph)

    if not analysis_only:
        from .cli_commands import add_parsers

        add_parsers(sub)
    return parser


def _notebook_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "notebook", type=Path, help="an .ipynb notebook or a percent-format .py script"
    )


def _load(path: Path) -> Pipeline:
    from .graph import build_pipeline
    from .notebook import read_notebook

    return build_pipeline(read_notebook(path))


def _load_checked(path: Path) -> Pipeline | None:
    """The pipeline, or None after printing its errors (the command then exits 1)."""
    pipeline = _load(path)
    if pipeline.ok:
        return pipeline
    errors = [d for d in pipeline.diagnostics if d.is_error]
    _print_diagnostics(errors, pipeline.notebook, path, "text", sys.stderr)
    return None


def _check(args: argparse.Namespace) -> int:
    pipeline = _load(args.notebook)
    if args.format == "json":
        out = {
            "notebook": str(args.notebook),
            "ok": pipeline.ok,
            "diagnostics": [d.to_dict() for d in pipeline.diagnostics],
        }
        print(json.dumps(out, indent=2))
    else:
        _print_diagnostics(
            pipeline.diagnostics, pipeline.notebook, args.notebook, "text", sys.stdout
        )
        errors = sum(d.is_error for d in pipeline.diagnostics)
        warnings = sum(d.severity == "warning" for d in pipeline.diagnostics)
        steps = len(pipeline.steps)
        summary = (
            f"{args.notebook}: {steps} step{'s' * (steps != 1)}, {errors} error"
            f"{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
        )
        print(summary, file=sys.stdout)
    return 0 if pipeline.ok else 1


def _graph(args: argparse.Namespace) -> int:
    from . import render

    pipeline = _load_checked(args.notebook)
    if pipeline is None:
        return 1
    writers = {
        "text": render.pipeline_to_text,
        "mermaid": render.pipeline_to_mermaid,
        "dot": render.pipeline_to_dot,
        "json": render.pipeline_to_json,
    }
    print(writers[args.format](pipeline))
    return 0


def _print_diagnostics(
    diagnostics: Sequence[Diagnostic],
    notebook: Notebook | None,
    path: Path | None,
    fmt: str,
    stream: TextIO,
) -> None:
    if fmt == "json":
        print(
            json.dumps(
                {
                    "notebook": str(path) if path else None,
                    "ok": False,
                    "diagnostics": [d.to_dict() for d in diagnostics],
                },
                indent=2,
            ),
            file=stream,
        )
        return
    if not diagnostics:
        return
    from .render import diagnostic_to_text

    label = str(path) if path else "nb2pipe"
    for d in diagnostics:
        print(diagnostic_to_text(d, notebook, label), file=stream)
