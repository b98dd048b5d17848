"""A served model in the form KServe serves it; runs in the pipeline's export task.

The export task of a ``serve:VAR`` variable loads the variable from its producer's state (the
manifest checked against the digest the producer reported through KFP's parameters, every byte
against the manifest, as any consumer step) and writes it into its ``model`` artifact:

* a scikit-learn model (every class its pickle names comes from scikit-learn, NumPy, SciPy,
  pandas or the standard library): ``model.joblib``, for KServe's ``sklearn`` runtime;
* an XGBoost model (a ``Booster`` or the scikit-learn API): ``model.json``, XGBoost's own
  format, for the ``xgboost`` runtime;
* a LightGBM model (a ``Booster`` or the scikit-learn API): ``model.bst``, LightGBM's text
  format, for the ``lightgbm`` runtime;
* anything else: kale_py's own state (``manifest.json`` and the variable's file) and the step
  runtime (``kale_py_runtime.zip``), for kale_py's Python predictor
  (:func:`kale_py.serving.predictor.main`), which answers the Open Inference Protocol as
  ``nb2pipe serve`` does.

Each runtime takes the one model file of its extension in the directory, so the directory
holds nothing else. The built-in runtimes answer what the library's own ``predict`` of the
saved booster answers: for XGBoost and LightGBM classifiers, probabilities.

This module travels in the step runtime: the standard library only, plus the model's own
libraries, imported when the model is one of theirs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

from kale_py import marshal
from kale_py.runtime import CellFailed, StepRuntime, _read_payload, artifact_uri
from kale_py.runtime import _arguments as step_arguments

SKLEARN, XGBOOST, LIGHTGBM, PYTHON = "sklearn", "xgboost", "lightgbm", "kale-py"
FORMATS = (SKLEARN, XGBOOST, LIGHTGBM, PYTHON)
MODEL_FILES = {SKLEARN: "model.joblib", XGBOOST: "model.json", LIGHTGBM: "model.bst"}
RUNTIME_FILE = "kale_py_runtime.zip"
#: the packages whose classes KServe's scikit-learn runtime can unpickle (it installs them)
_SKLEARN_RUNTIME = {"sklearn", "numpy", "scipy", "pandas", "joblib", "builtins", "collections",
                    "copyreg", "_codecs", "pickle", "datetime", "numbers", "functools", "operator",
                    "threadpoolctl", "decimal", "fractions", "re", "enum", "math"}


def model_format(model: Any, predictor: str = "auto") -> str:
    """How ``model`` is served: sklearn, xgboost, lightgbm or kale-py (the Python predictor)."""
    if predictor == "python":
        return PYTHON
    package = type(model).__module__.split(".")[0]
    if package == "xgboost" and (hasattr(model, "get_booster") or hasattr(model, "save_raw")):
        return XGBOOST
    if package == "lightgbm" and (hasattr(model, "booster_") or hasattr(model, "model_to_string")):
        return LIGHTGBM
    if package == "sklearn" and pickled_packages(model) <= _SKLEARN_RUNTIME:
        return SKLEARN
    return PYTHON


def pickled_packages(obj: Any) -> set[str]:
    """The top-level packages of the classes and functions that pickling ``obj`` names."""
    found: set[str] = set()

    class Recorder(pickle.Pickler):
        def persistent_id(self, value: Any) -> None:
            kind = value if isinstance(value, type) else type(value)
            module = getattr(kind, "__module__", None) or ""
            if callable(value) and not isinstance(value, type):
                module = getattr(value, "__module__", None) or module
            found.add(module.split(".")[0])
            return None

    try:  # out-of-band buffers are not copied: only the classes matter here
        Recorder(io.BytesIO(), protocol=5, buffer_callback=lambda _: False).dump(obj)
    except Exception:  # noqa: BLE001  (plain pickle refuses it: not for the built-in runtime)
        found.add("__main__")
    return found


def export_model(model: Any, directory: Path, fmt: str) -> str:
    """Write ``model`` into ``directory`` for ``fmt``; the digest of what the server loads."""
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == PYTHON:
        # by value: the predictor runs none of the notebook's cells
        record = marshal.save_variable("model", model, directory, step="export", shared=())
        manifest = marshal.write_manifest(directory, "export", [record])
        return marshal.manifest_digest(manifest)
    path = directory / MODEL_FILES[fmt]
    if fmt == SKLEARN:
        import joblib  # type: ignore[import-untyped]  # scikit-learn's own dependency

        joblib.dump(model, path)
    elif fmt == XGBOOST:
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        booster.save_model(str(path))
    else:
        booster = model.booster_ if hasattr(model, "booster_") else model
        booster.save_model(str(path))
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _arguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kale_py export")
    p.add_argument("--variable", required=True)
    p.add_argument("--producer", required=True, help="the step that saved the variable")
    p.add_argument("--state-in", required=True)
    p.add_argument("--state-digest", required=True)
    p.add_argument("--model-out", required=True)
    p.add_argument("--format-out", required=True)
    p.add_argument("--digest-out", required=True)
    p.add_argument("--executor-output")
    p.add_argument("--predictor", choices=("auto", "python"), default="auto")
    p.add_argument("--image", help="the Python predictor's image, when it is not this one")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    try:
        # the producer's imports and functions cells first: the model's classes may be theirs
        namespace = _prelude()
        manifest = marshal.read_manifest(args.state_in, digest=args.state_digest,
                                         producer=args.producer)
        record = manifest["variables"].get(args.variable)
        if record is None:
            raise marshal.StateError(f"step {args.producer!r} did not save {args.variable!r}",
                                     step=args.producer)
        model = marshal.load_variables([record], args.state_in, allowed_root=args.state_in,
                                       producer=args.producer,
                                       namespace=namespace)[args.variable]
    except (marshal.StateError, CellFailed) as exc:
        print(f"kale_py: cannot export {args.variable!r}: {exc}", file=sys.stderr)
        return 1
    if not callable(getattr(model, "predict", None)):
        print(f"kale_py: {args.variable!r} is a {type(model).__name__}, which has no predict "
              "method: tag the trained model with serve:VAR", file=sys.stderr)
        return 1
    fmt = model_format(model, args.predictor)
    problem = predictor_problem(model, fmt, args.image)
    if problem:
        print(f"kale_py: {args.variable!r} {problem}", file=sys.stderr)
        return 1
    out = Path(args.model_out)
    try:
        digest = export_model(model, out, fmt)
    except marshal.StateError as exc:
        print(f"kale_py: cannot export {args.variable!r} for the {fmt} runtime: {exc}",
              file=sys.stderr)
        return 1
    if fmt == PYTHON:
        _copy_runtime(out / RUNTIME_FILE)
    _write(args.format_out, fmt)
    _write(args.digest_out, digest)
    if args.executor_output:
        uri = artifact_uri(args.model_out)
        meta = {"framework": fmt, "variable": args.variable}
        _write(args.executor_output, json.dumps(
            {"artifacts": {"model": {"artifacts": [{"name": "model", "uri": uri,
                                                     "metadata": meta}]}}}))
    print(f"kale_py: exported {args.variable!r} ({type(model).__name__}) for the {fmt} "
          f"runtime: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def predictor_problem(model: Any, fmt: str, image: str | None) -> str | None:
    """Why the Python predictor could not serve ``model`` in this step's image, if it could
    not: the image lacks KServe's model server (with ``image`` given, that image is used)."""
    if fmt != PYTHON or image or importlib.util.find_spec("kserve") is not None:
        return None
    return (f"is a {type(model).__module__}.{type(model).__name__}: kale_py serves it with its "
            "Python predictor, in this step's image, which lacks KServe's model server. Add "
            "kserve to the image (a step image of an environment that has it, or base_image), "
            "or name an image that has it and the model's libraries in the notebook metadata "
            "(serving.image)")


def _prelude() -> dict[str, Any]:
    """The producer step's namespace after its imports and functions cells (its program is
    this task's payload), as ``__main__``, where pickles find the notebook's classes."""
    spec = json.loads(_read_payload(None, ".json"))
    program = _read_payload(None, ".py")
    runtime = StepRuntime(spec, program, step_arguments([]))
    runtime.prepare_namespace()
    runtime.run_cells(prelude=True)
    return runtime.namespace


def _copy_runtime(target: Path) -> None:
    """The runtime this task runs from (its zip, which the pipeline spec's digest vouches
    for), beside the model: the Python predictor runs from it."""
    archive = getattr(getattr(marshal, "__loader__", None), "archive", None)
    if not archive:
        raise SystemExit("kale_py: the step runtime is not a zip here; cannot ship it")
    shutil.copyfile(archive, target)


def _write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")

