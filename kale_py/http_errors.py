"""The message of an HTTP error answer, for one-line diagnostics.

Both the Kubernetes API (a ``Status`` object) and the KFP API (grpc-gateway JSON) put a
human-readable ``message`` in their JSON error bodies.
"""

from __future__ import annotations

import json
import urllib.error


def error_message(e: urllib.error.HTTPError, keys: tuple[str, ...] = ("message",)) -> str:
    """The first of ``keys`` in the JSON body, else the raw body, else the reason; one line."""
    try:
        raw = e.read().decode("utf-8", "replace")
    except OSError:
        raw = ""
    try:
        body = json.loads(raw)
    except json.JSONDecodeError:
        body = None
    text = raw
    if isinstance(body, dict):
        text = str(next((body[k] for k in keys if body.get(k)), raw))
    return one_line(text) or str(e.reason)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text[:limit] + "..." if len(text) > limit else text
