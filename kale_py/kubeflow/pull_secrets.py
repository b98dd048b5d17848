"""The notebook pod's image pull secrets: registry credentials, and the steps' imagePullSecrets.

A Kubeflow notebook pulls its image with the secrets in its pod's ``imagePullSecrets``
(``kubernetes.io/dockerconfigjson``: the same ``auths`` as Docker's config). When the Docker
config of the machine has no login for the step image's registry, these are read
(``GET secrets/NAME``, which the notebook's ``default-editor`` account may do) and the steps get
the same secrets to pull the step image with.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..cluster import ClusterConfig, NotebookPod, _Call, _request
from ..diagnostics import Diagnostic, KalePyError, warning

Json = dict[str, Any]


def pod_pull_secrets(config: ClusterConfig, pod: NotebookPod
                     ) -> tuple[dict[str, Any], list[Diagnostic]]:
    """The ``auths`` of every pull secret of ``pod`` merged (earlier secrets win), as a
    Docker config; a secret that cannot be read is a warning, not an error."""
    auths: dict[str, Any] = {}
    found: list[Diagnostic] = []
    for name in pod.image_pull_secrets:
        path = f"/api/v1/namespaces/{config.namespace}/secrets/{name}"
        try:
            secret = _request(config, _Call("get", "secrets", name, path))
        except KalePyError as e:
            found.append(warning("IM102", f"cannot read the notebook's pull secret {name}: {e}"))
            continue
        raw = (secret.get("data") or {}).get(".dockerconfigjson", "")
        try:
            document = json.loads(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            found.append(warning("IM102", f"pull secret {name} holds no .dockerconfigjson"))
            continue
        for host, entry in (document.get("auths") or {}).items():
            auths.setdefault(host, entry)
    return {"auths": auths}, found
