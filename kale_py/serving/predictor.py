"""kale_py's Python predictor: a model no built-in KServe runtime serves, in its InferenceService.

The InferenceService's container runs ``python3 -c PREDICTOR_BOOTSTRAP DIR NAME SHA DIGEST``:
the bootstrap checks the runtime zip that the export task put beside the model against the
SHA-256 written in the InferenceService (kept by the Kubernetes API, not the object store),
then calls :func:`main`, which checks the model's manifest against ``DIGEST`` and every byte
against the manifest before unpickling, and serves the model with KServe's model server over
the Open Inference Protocol (V2), as ``nb2pipe serve`` does on a laptop.
"""

from __future__ import annotations

import os
import sys

#: Run in the predictor container as ``python3 -c PREDICTOR_BOOTSTRAP <dir> <name> <sha256>
#: <manifest digest>`` (KServe's storage initializer has put the model in ``<dir>``).
PREDICTOR_BOOTSTRAP = "; ".join([
    "import hashlib, sys",
    "d, n, h, m = sys.argv[1:5]",
    "z = d + '/kale_py_runtime.zip'",
    "hashlib.sha256(open(z, 'rb').read()).hexdigest() != h and sys.exit("
    "'kale_py: the predictor runtime in ' + z + ' differs from the one the pipeline exported "
    "(its SHA-256 is in the InferenceService): it was damaged or replaced, so nothing is served')",
    "sys.path.insert(0, z)",
    "from kale_py.serving.predictor import main",
    "sys.exit(main(d, n, m))",
])


def main(directory: str, name: str, digest: str, port: int | None = None) -> int:
    """Load the exported model (verified) and serve it until the container stops."""
    from kale_py import marshal
    from kale_py.serving.export import PYTHON

    try:
        manifest = marshal.read_manifest(directory, digest=digest, producer="export")
        record = manifest["variables"]["model"]
        model = marshal.load_variables([record], directory, allowed_root=directory,
                                       producer="export", namespace={})["model"]
    except (marshal.StateError, KeyError) as exc:
        print(f"kale_py: the {PYTHON} model in {directory} cannot be served: {exc}",
              file=sys.stderr)
        return 1
    import kserve

    from kale_py.serving.model import model_class

    served = model_class()(name, model)
    served.load()
    http_port = port or int(os.environ.get("KALE_PY_PREDICTOR_PORT") or 8080)
    print(f"kale_py: serving {type(model).__name__} as /v2/models/{name}/infer on port "
          f"{http_port}", flush=True)
    kserve.ModelServer(http_port=http_port, enable_grpc=False, workers=1).start([served])
    return 0
