"""Serving a notebook's model: the variable tagged ``serve:VAR``, over the Open Inference
Protocol (V2). Locally (``nb2pipe serve``, the ``serve`` extra) with KServe's model server; on
the cluster by the pipeline's export and deploy tasks, as a KServe InferenceService. The
modules the pipeline's tasks run (``export``, ``deploy``, ``predictor``, ``model``) travel in
the step runtime and import KServe or a model library only where they need one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kale_py.graph import Pipeline


def service_name(variable: str) -> str:
    """The name a served variable gets in URLs and as an InferenceService (a DNS label)."""
    name = re.sub(r"[^a-z0-9]+", "-", variable.lower()).strip("-")
    return name if name[:1].isalpha() else f"model-{name}".rstrip("-")


def served_services(pipeline: Pipeline) -> list[dict[str, str]]:
    """Each ``serve:VAR`` model's variable and service name (``serving.name`` or the
    variable's), in the order the pipeline's serving tasks are made."""
    name = pipeline.settings.serving.name
    return [{"variable": variable, "name": name or service_name(variable)}
            for variable in sorted(pipeline.served)]
