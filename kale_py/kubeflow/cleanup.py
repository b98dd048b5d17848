"""Deletes what a run made on the cluster; runs in the run's exit task (standard library only).

``python3 cleanup.py --run-id ID [--claim-suffix S]... [--snapshot NAME]...``

The exit task runs when the run ends, succeeded or failed, and no task output can reach it. So:

* claims: kfp-kubernetes's CreatePVC names a claim ``<uuid><suffix>``; the claims of this run
  are the ones its pods (label ``pipeline/runid=ID``, set by KFP on every task pod) mount whose
  name ends with one of the suffixes;
* VolumeSnapshots: deleted by name, and only when they carry the label
  ``app.kubernetes.io/created-by=kale-py`` (a snapshot the notebook's metadata named is not ours).

Outside a pod (``kfp.local``) there is nothing to delete: it says so and succeeds. Something
already gone (404) counts as deleted; any other failure is printed, the rest is still tried,
and the task fails. ``$KALE_PY_KUBERNETES_API`` and ``$KALE_PY_SERVICE_ACCOUNT_DIR`` override
the in-cluster API address and service-account directory.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SNAPSHOTS = "/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{name}"
CREATED_BY = ("app.kubernetes.io/created-by", "kale-py")


def main(argv: list[str]) -> int:
    run_id, suffixes, snapshots = _arguments(argv)
    sa_dir = os.environ.get("KALE_PY_SERVICE_ACCOUNT_DIR", SA_DIR)
    api = os.environ.get("KALE_PY_KUBERNETES_API") or in_cluster_api()
    if not api or not os.path.isfile(os.path.join(sa_dir, "token")):
        print("kale-py cleanup: not in a Kubernetes pod, nothing to delete")
        return 0
    with open(os.path.join(sa_dir, "token")) as f:
        token = f.read().strip()
    with open(os.path.join(sa_dir, "namespace")) as f:
        ns = f.read().strip()
    ca = os.path.join(sa_dir, "ca.crt")
    call = _Api(api, token, ca if os.path.isfile(ca) else None)
    failures = 0
    if suffixes:
        selector = urllib.parse.urlencode({"labelSelector": f"pipeline/runid={run_id}"})
        pods = call.request("GET", f"/api/v1/namespaces/{ns}/pods?{selector}")
        for claim in sorted(_claims(pods, suffixes)):
            failures += not call.delete(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}",
                                        f"claim {claim}")
    for name in snapshots:
        path = SNAPSHOTS.format(ns=ns, name=name)
        found = call.request("GET", path, missing_ok=True)
        labels = (found or {}).get("metadata", {}).get("labels") or {}
        if found is None:
            print(f"kale-py cleanup: snapshot {name} is already gone")
        elif labels.get(CREATED_BY[0]) != CREATED_BY[1]:
            print(f"kale-py cleanup: snapshot {name} was not made by kale-py; kept")
        else:
            failures += not call.delete(path, f"snapshot {name}")
    return 1 if failures or call.failed else 0


def _arguments(argv: list[str]) -> tuple[str, list[str], list[str]]:
    run_id, suffixes, snapshots = "", [], []
    for i in range(0, len(argv) - 1, 2):  # any Python 3 in the image: no zip(strict=)
        flag, value = argv[i], argv[i + 1]
        if flag == "--run-id":
            run_id = value
        elif flag == "--claim-suffix":
            suffixes.append(value)
        elif flag == "--snapshot":
            snapshots.append(value)
    return run_id, suffixes, snapshots


def in_cluster_api() -> str | None:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{os.environ.get('KUBERNETES_SERVICE_PORT') or '443'}"


def _claims(pods: Any, suffixes: list[str]) -> set[str]:
    found = set()
    for pod in (pods or {}).get("items") or []:
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or ""
            if any(claim.endswith(s) and len(claim) > len(s) for s in suffixes):
                found.add(claim)
    return found


class _Api:
    def __init__(self, url: str, token: str, ca: str | None) -> None:
        self.url, self.token, self.failed = url.rstrip("/"), token, False
        self.context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None

    def request(self, method: str, path: str, missing_ok: bool = False) -> Any:
        request = urllib.request.Request(self.url + path, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as e:
            with e:
                if e.code == 404 and missing_ok:
                    return None
                print(f"kale-py cleanup: {method} {path}: HTTP {e.code}", file=sys.stderr)
        except (OSError, ValueError) as e:
            print(f"kale-py cleanup: {method} {path}: {e}", file=sys.stderr)
        self.failed = True
        return None

    def delete(self, path: str, what: str) -> bool:
        before = self.failed
        answer = self.request("DELETE", path, missing_ok=True)
        if self.failed and not before:
            return False
        print(f"kale-py cleanup: deleted {what}" if answer is not None
              else f"kale-py cleanup: {what} is already gone")
        return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
