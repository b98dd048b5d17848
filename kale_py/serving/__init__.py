"""Serving a notebook's model: the variable tagged ``serve:VAR``, over the Open Inference
Protocol (V2). Locally (``nb2pipe serve``, the ``serve`` extra) with KServe's model server; on
the cluster by the pipeline's export and deploy tasks, as a KServe InferenceService. The
modules the pipeline's tasks run (``export``, ``deploy``, ``predictor``, ``model``) travel in
the step runtime and import KServe or a model library only where they need one.
"""

from __future__ import annotations

import re


def service_name(variable: str) -> str:
    """The name a served variable gets in URLs and as an InferenceService (a DNS label)."""
    name = re.sub(r"[^a-z0-9]+", "-", variable.lower()).strip("-")
    return name if name[:1].isalpha() else f"model-{name}".rstrip("-")
