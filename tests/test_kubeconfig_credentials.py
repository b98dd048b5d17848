"""Submitting through the Kubernetes API service proxy with each kind of kubeconfig credential.

The API server is the fake KFP backend of fake_kfp.py served over HTTPS (no Kubernetes API server
can run here), answering on the service-proxy path. A test CA, the server's certificate for
127.0.0.1 and a client certificate are made in the test with the ``cryptography`` package; the
kubeconfig is read by the official ``kubernetes`` client, as kale_py does.
"""

from __future__ import annotations

import base64
import datetime
import json
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_kfp import API, SERVICE_PROXY, FakeKfp

from kale_py.diagnostics import SubmitError
from kale_py.kubeflow.client import resolve_endpoint, submit_pipeline

PIPELINE_YAML = "# PIPELINE DEFINITION\n# Name: demo\npipelineInfo:\n  name: demo\n"

pytestmark = pytest.mark.usefixtures("clean_kfp_environment")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
                 ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A test CA, the server's certificate for 127.0.0.1, and a client certificate ``alice``."""
    tmp = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("test-ca", ca_key, "test-ca", ca_key, ca=True)
    server = _certificate("kube-apiserver", server_key, "test-ca", ca_key, ip="127.0.0.1")
    client = _certificate("alice", client_key, "test-ca", ca_key)
    pem = serialization.Encoding.PEM
    (tmp / "ca.crt").write_bytes(ca.public_bytes(pem))
    (tmp / "server.crt").write_bytes(server.public_bytes(pem))
    (tmp / "server.key").write_bytes(_pem_key(server_key))
    return {"dir": tmp, "ca": ca.public_bytes(pem), "client_cert": client.public_bytes(pem),
            "client_key": _pem_key(client_key)}


@pytest.fixture
def apiserver(pki: dict[str, Any]) -> Iterator[FakeKfp]:
    tmp = pki["dir"]
    fake = FakeKfp(tls=(str(tmp / "server.crt"), str(tmp / "server.key"),
                        str(tmp / "ca.crt"))).start()
    yield fake
    fake.stop()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(server: str, ca: bytes, user: dict[str, Any]) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kind-dev",
        "contexts": [{"name": "kind-dev", "context": {"cluster": "kind", "user": "me",
                                                      "namespace": "team-a"}}],
        "clusters": [{"name": "kind", "cluster": {"server": server,
                                                  "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": "me", "user": user}],
    }
    path = Path.home() / ".kube" / "config"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def _submit() -> None:
    submit_pipeline(PIPELINE_YAML, name="demo", out=lambda _: None)


def _through_the_proxy(fake: FakeKfp) -> None:
    assert fake.requests, "no request reached the API server"
    assert {r.path.split(API)[0] for r in fake.requests} == {SERVICE_PROXY}
    assert fake.calls("POST", "/experiments")[0].json()["namespace"] == "team-a"


def test_bearer_token_over_tls_with_the_kubeconfig_ca(apiserver: FakeKfp,
                                                      pki: dict[str, Any]) -> None:
    write_kubeconfig(apiserver.url, pki["ca"], {"token": "kube-tok"})
    _submit()
    _through_the_proxy(apiserver)
    assert {r.headers.get("Authorization") for r in apiserver.requests} == {"Bearer kube-tok"}


def test_client_certificate(apiserver: FakeKfp, pki: dict[str, Any]) -> None:
    """kind, minikube and k3d write client certificates: the TLS handshake authenticates."""
    write_kubeconfig(apiserver.url, pki["ca"], {
        "client-certificate-data": _b64(pki["client_cert"]),
        "client-key-data": _b64(pki["client_key"])})
    _submit()
    _through_the_proxy(apiserver)
    assert {r.client_cn for r in apiserver.requests} == {"alice"}
    assert {r.headers.get("Authorization") for r in apiserver.requests} == {None}


def _exec_plugin(tmp_path: Path, body: str) -> str:
    script = tmp_path / "get-token"
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_exec_plugin_prints_an_exec_credential(apiserver: FakeKfp, pki: dict[str, Any],
                                               tmp_path: Path) -> None:
    """EKS, GKE and AKS run a plugin (aws eks get-token, gke-gcloud-auth-plugin, kubelogin)."""
    credential = {"apiVersion": "client.authentication.k8s.io/v1beta1",
                  "kind": "ExecCredential", "status": {"token": "exec-tok"}}
    command = _exec_plugin(tmp_path, f"import json\nprint(json.dumps({credential!r}))\n")
    write_kubeconfig(apiserver.url, pki["ca"], {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": command,
        "args": ["--cluster", "dev"], "interactiveMode": "Never"}})
    _submit()
    _through_the_proxy(apiserver)
    assert {r.headers.get("Authorization") for r in apiserver.requests} == {"Bearer exec-tok"}


def test_exec_plugin_failure_is_one_line(apiserver: FakeKfp, pki: dict[str, Any],
                                         tmp_path: Path) -> None:
    command = _exec_plugin(tmp_path, "import sys\nsys.stderr.write('not logged in\\n')\n"
                                     "sys.exit(1)\n")
    write_kubeconfig(apiserver.url, pki["ca"], {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": command}})
    with pytest.raises(SubmitError) as caught:
        _submit()
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "KF105" and "\n" not in diagnostic.message
    assert "cannot use the kubeconfig" in diagnostic.message and "exec" in diagnostic.message
    assert apiserver.requests == []


def _jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_oidc_auth_provider(apiserver: FakeKfp, pki: dict[str, Any]) -> None:
    """An OIDC auth-provider (kubectl oidc-login, Dex): its id-token, while it is valid."""
    token = _jwt({"iss": "https://dex.example.com", "sub": "alice",
                  "exp": int(time.time()) + 3600})
    write_kubeconfig(apiserver.url, pki["ca"], {"auth-provider": {"name": "oidc", "config": {
        "client-id": "kubernetes", "idp-issuer-url": "https://dex.example.com",
        "id-token": token, "refresh-token": "r"}}})
    _submit()
    _through_the_proxy(apiserver)
    assert {r.headers.get("Authorization") for r in apiserver.requests} == {f"Bearer {token}"}


def test_untrusted_server_certificate_is_refused(apiserver: FakeKfp) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    stranger = _certificate("other-ca", other, "other-ca", other, ca=True)
    write_kubeconfig(apiserver.url, stranger.public_bytes(serialization.Encoding.PEM),
                     {"token": "kube-tok"})
    with pytest.raises(SubmitError, match="KF101|certificate verify failed"):
        _submit()


def test_kubernetes_is_imported_only_for_kubeconfig_access(apiserver: FakeKfp) -> None:
    """--host with a token never loads the kubernetes package (it costs ~0.3-0.6 s)."""
    import subprocess

    code = ("import sys; from kale_py.kubeflow.client import resolve_endpoint; "
            f"resolve_endpoint({apiserver.url!r}, 't'); print('kubernetes' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
    assert resolve_endpoint(apiserver.url, "t").auth.kind == "token"


@pytest.mark.parametrize("host", ["10.96.0.1", "fd00:10:96::1"])
def test_in_cluster_service_account_matches_the_kubernetes_client(tmp_path: Path,
                                                                  host: str) -> None:
    """kale_py.cluster reads the pod's service account itself (no kubernetes import on the
    compile path); the official client's in-cluster loader is the oracle."""
    from kubernetes import client as k8s_client
    from kubernetes.config.incluster_config import InClusterConfigLoader

    from kale_py.cluster import ClusterConfig

    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "namespace").write_text("team-a")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": "443",
           "HOSTNAME": "nb-0"}
    ours = ClusterConfig.from_environment(env, tmp_path)
    theirs = k8s_client.Configuration()
    InClusterConfigLoader(str(tmp_path / "token"), str(tmp_path / "ca.crt"),
                          environ=env).load_and_set(theirs)
    assert ours.api_url == theirs.host
    scheme, token = theirs.api_key["authorization"].split(" ", 1)
    assert (scheme.lower(), token.strip()) == ("bearer", ours.token)
    assert ours.ca_file == theirs.ssl_ca_cert
