"""Step images, built and pushed to a real OCI registry, checked with the field's own tools.

The registry is Debian's ``docker-registry`` on 127.0.0.1 (plain HTTP, optionally with htpasswd
logins), the base image is made with ``umoci`` and pushed with ``skopeo`` (tests/oci_registry.py),
and every built image is read back with ``skopeo inspect`` and unpacked with ``umoci``: the
oracle for the hand-written distribution-API client.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from oci_registry import (
    OciRegistry,
    docker_config,
    missing_tools,
    push_base_image,
    skopeo_inspect,
    start_registry,
    unpack,
)

from kale_py.diagnostics import KalePyError
from kale_py.images.build import build_step_image, python_version
from kale_py.images.distributions import closure
from kale_py.images.layer import SITE_DIR, build_layer
from kale_py.kubeflow.ir import check_python

BASE_DISTS = {f"certifi-{metadata.version('certifi')}": "certifi", "idna-0.1": "idna"}
SITE = f"usr/local/lib/python{python_version()}/site-packages"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    if missing_tools():
        pytest.fail(f"the image tests need {', '.join(missing_tools())}: "
                    "apt-get install -y docker-registry skopeo umoci (see .ci/run)")
    running = start_registry(tmp_path_factory.mktemp("registry"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def base(registry: OciRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    full = ".".join(map(str, sys.version_info[:3]))
    return push_base_image(registry, tmp_path_factory.mktemp("base"), "team/base", BASE_DISTS,
                           python=full)


@pytest.fixture
def no_docker_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_layer_holds_what_the_base_lacks_and_config_keeps_the_base(
        registry: OciRegistry, base: str, tmp_path: Path, no_docker_login: None) -> None:
    built = build_step_image({"requests", "json", "kale_py"}, f"{registry.host}/team/steps",
                             base)
    # idna is in the base at another version, certifi at the same one: only idna is added
    names = {pin.partition("==")[0] for pin in built.distributions}
    assert names == {"requests", "urllib3", "idna", "charset-normalizer"}
    assert built.reference.startswith(f"{registry.host}/team/steps@sha256:")

    inspected = skopeo_inspect(registry, built.reference)
    assert inspected["Digest"] == built.reference.partition("@")[2]
    base_layers = skopeo_inspect(registry, base)["Layers"]
    assert inspected["Layers"] == [*base_layers, built.layer_digest]  # type: ignore[misc]
    labels: dict[str, str] = inspected["Labels"]  # type: ignore[assignment]
    assert labels["io.kale-py.python"] == python_version()
    assert labels["io.kale-py.platform"] == built.platform
    # the whole image's distributions, for builds that use this image as their base
    assert json.loads(labels["io.kale-py.distributions"]) == {
        "certifi": metadata.version("certifi"),
        **{pin.partition("==")[0]: pin.partition("==")[2] for pin in built.distributions}}
    config: Any = skopeo_inspect(registry, built.reference, config=True)
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/entry"]
    assert config["config"]["Cmd"] == ["serve"]
    assert config["config"]["WorkingDir"] == "/srv"
    env = config["config"]["Env"]
    assert "BASE_SETTING=kept" in env and f"KALE_PY_PYTHON={python_version()}" in env
    assert f"PYTHONPATH=/{SITE_DIR}" in env

    rootfs = unpack(registry, built.reference, tmp_path)
    site = rootfs / SITE_DIR
    assert sorted(p.name for p in site.glob("*.dist-info")) == sorted(
        f"{d.name.replace('-', '_')}-{d.version}.dist-info"
        for d in closure({"requests"}).distributions if d.name != "certifi")
    assert (rootfs / "etc" / "base-marker").read_text() == "base\n"  # the base's files are there
    # a Python of the recorded version imports the layer's packages, as the image's PYTHONPATH
    # and the base's site-packages give them
    paths = [str(rootfs / e.partition("=")[2].lstrip("/")) for e in env
             if e.startswith("PYTHONPATH=")] + [str(rootfs / SITE)]
    probe = ("import sys; sys.path[:0] = sys.argv[1:]; import requests, idna, certifi; "
             "print(requests.__file__); print(idna.__version__); print(certifi.BASE_VERSION)")
    done = subprocess.run([sys.executable, "-S", "-E", "-c", probe, *paths],
                          capture_output=True, text=True, check=True)
    requests_file, idna_version, certifi_version = done.stdout.split()
    assert requests_file.startswith(str(site))
    assert idna_version == __import__("idna").__version__
    assert certifi_version == metadata.version("certifi")  # the base's, not a copy


def test_unchanged_environment_gives_the_same_layer_and_pushes_nothing(
        registry: OciRegistry, base: str, no_docker_login: None, tmp_path: Path) -> None:
    target = f"{registry.host}/team/again"
    first = build_step_image({"yaml"}, target, base)
    second = build_step_image({"yaml"}, target, base)
    assert first.pushed and second.pushed == ()
    assert (second.reference, second.layer_digest) == (first.reference, first.layer_digest)
    dists = closure({"yaml"}).distributions
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = build_layer(dists, tmp_path / "a"), build_layer(dists, tmp_path / "b")
    assert one.path is not None and two.path is not None
    assert one.path.read_bytes() == two.path.read_bytes()
    assert one.digest == "sha256:" + hashlib.sha256(one.path.read_bytes()).hexdigest()


def test_a_step_image_as_base_is_read_from_its_labels(
        registry: OciRegistry, base: str, no_docker_login: None) -> None:
    first = build_step_image({"yaml"}, f"{registry.host}/team/layered", base)
    again = build_step_image({"yaml"}, f"{registry.host}/team/layered2", first.reference)
    assert again.distributions == ()  # everything is in the base already


def test_python_mismatch_is_warned_at_build_and_stops_the_step_at_once(
        registry: OciRegistry, tmp_path: Path, no_docker_login: None) -> None:
    old = push_base_image(registry, tmp_path, "team/old-python", {}, python="3.9.18")
    built = build_step_image({"yaml"}, f"{registry.host}/team/mismatch", old)
    [warned] = [d for d in built.diagnostics if d.code == "IM202"]
    assert f"has Python 3.9 and this environment Python {python_version()}" in warned.message
    done = subprocess.run([sys.executable, "-c", check_python("3.9"), "x", "--step", "a"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"kale_py: the step image was built for Python 3.9 but this "
                                   f"is Python {python_version()}: rebuild it from an "
                                   "environment with the image's Python")


def code_of(call: Any) -> tuple[str, str]:
    with pytest.raises(KalePyError) as caught:
        call()
    [d] = caught.value.diagnostics
    assert "\n" not in d.message
    return d.code, d.message


def test_registry_errors_are_one_line_with_a_code(
        registry: OciRegistry, base: str, no_docker_login: None) -> None:
    code, message = code_of(lambda: build_step_image(
        {"yaml"}, f"{registry.host}/team/x", f"{registry.host}/team/nothing-here:1"))
    assert code == "IM103" and "team/nothing-here:1 not found in the registry" in message
    code, message = code_of(lambda: build_step_image({"yaml"}, "127.0.0.1:9/team/x", base))
    assert code == "IM101" and "cannot reach the registry http://127.0.0.1:9" in message
    code, message = code_of(lambda: build_step_image({"yaml"}, "Not A Reference!", base))
    assert code == "IM001"


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    if missing_tools():
        pytest.fail("the image tests need docker-registry, skopeo and umoci")
    running = start_registry(tmp_path_factory.mktemp("private"), "alice", "s3cret")
    yield running
    running.stop()


def test_private_registry_with_docker_login_and_credential_helper(
        private: OciRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = push_base_image(private, tmp_path / "b", "team/base", BASE_DISTS)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    code, message = code_of(lambda: build_step_image({"yaml"}, f"{private.host}/t/s", base))
    assert code == "IM102" and f"docker login {private.host}" in message

    docker_config(tmp_path / "docker", private)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    built = build_step_image({"yaml"}, f"{private.host}/team/steps", base)
    assert built.private
    assert skopeo_inspect(private, built.reference)["Digest"] == built.reference.split("@")[1]

    # a credential helper, as `credHelpers` names it, answering on stdin/stdout
    helper = tmp_path / "bin" / "docker-credential-testhelper"
    helper.parent.mkdir()
    helper.write_text("#!/bin/sh\nread server\necho '{\"Username\": \"alice\", "
                      "\"Secret\": \"wrong\"}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "docker" / "config.json").write_text(
        json.dumps({"credHelpers": {private.host: "testhelper"}}))
    code, message = code_of(lambda: build_step_image({"yaml"}, f"{private.host}/t/s", base))
    assert code == "IM102" and "user 'alice'" in message


# --- compile and the command line ---------------------------------------------------------------

def notebook(path: Path, metadata: dict[str, Any]) -> Path:
    cells = [(["imports"], "import yaml\nimport json"),
             (["step:load"], "data = yaml.safe_load('a: 1')"),
             (["step:show", "image:python:3.12"], "print(json.dumps(data))")]
    path.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"},
                     "kubeflow_notebook": metadata},
        "cells": [{"cell_type": "code", "metadata": {"tags": tags}, "source": source,
                   "outputs": [], "execution_count": None, "id": f"c{i}"}
                  for i, (tags, source) in enumerate(cells)]}))
    return path


def test_compile_runs_the_steps_in_the_step_image_by_digest(
        registry: OciRegistry, base: str, tmp_path: Path, no_docker_login: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    from kale_py.cli import main

    nb = notebook(tmp_path / "nb.ipynb", {"base_image": base})
    target = f"{registry.host}/team/nb"
    assert main(["image", str(nb), "--push", target]) == 0
    out, err = capsys.readouterr()
    reference = out.strip()
    assert reference.startswith(f"{target}@sha256:")
    assert "1 distributions" in err and "blobs pushed" in err

    assert main(["compile", str(nb), "--step-image", target]) == 0
    spec = next(yaml.safe_load_all((tmp_path / "nb.yaml").read_text()))
    load = spec["deploymentSpec"]["executors"]["exec-load"]["container"]
    assert load["image"] == reference  # unchanged environment: the same image
    assert load["command"] == ["python3", "-c", check_python(python_version())]
    show = spec["deploymentSpec"]["executors"]["exec-show"]["container"]
    assert show["image"] == "python:3.12"  # a step's own image tag wins, without the check
    assert show["command"][2].startswith("import atexit")

    # step_image in the metadata does the same
    nb = notebook(tmp_path / "meta.ipynb", {"base_image": base, "step_image": target})
    assert main(["compile", str(nb)]) == 0
    spec = next(yaml.safe_load_all((tmp_path / "meta.yaml").read_text()))
    assert spec["deploymentSpec"]["executors"]["exec-load"]["container"]["image"] == reference


def test_submit_runs_the_steps_in_the_step_image(
        registry: OciRegistry, base: str, tmp_path: Path, no_docker_login: None,
        kfp: Any, clean_kfp_environment: None) -> None:
    """Submitted to the fake KFP API (tests/fake_kfp.py: no KFP backend can run here)."""
    from kale_py.cli import main

    nb = notebook(tmp_path / "nb.ipynb", {"base_image": base})
    target = f"{registry.host}/team/submitted"
    assert main(["submit", str(nb), "--host", kfp.url, "--step-image", target]) == 0
    [upload] = kfp.calls("POST", "/pipelines/upload")
    spec = next(yaml.safe_load_all(upload.upload()[1].decode()))
    image = spec["deploymentSpec"]["executors"]["exec-load"]["container"]["image"]
    assert image.startswith(f"{target}@sha256:")


def test_compile_with_an_unreachable_registry_writes_nothing(
        base: str, tmp_path: Path, no_docker_login: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    from kale_py.cli import main

    nb = notebook(tmp_path / "nb.ipynb", {"base_image": base})
    assert main(["compile", str(nb), "--step-image", "127.0.0.1:9/team/nb"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "IM101" in err[0] and "cannot reach the registry" in err[0]
    assert not (tmp_path / "nb.yaml").exists()
    assert main(["image", str(nb)]) == 1
    assert "no registry to push the step image to" in capsys.readouterr().err


def test_a_changed_installed_file_changes_the_layer(tmp_path: Path) -> None:
    from kale_py.images.distributions import Distribution
    from kale_py.images.layer import fingerprint

    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg" / "__init__.py"
    module.write_text("X = 1\n")
    dist = Distribution("pkg", "1.0", tmp_path, ("pkg/__init__.py",))
    before, layer = fingerprint([dist]), build_layer([dist], tmp_path)
    module.write_text("X = 22\n")
    assert fingerprint([dist]) != before
    assert build_layer([dist], tmp_path).digest != layer.digest


def test_the_notebook_pods_pull_secret_logs_in_and_names_the_steps_secret(
        private: OciRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kubernetes API is tests/fake_kubernetes.py (no API server can run here)."""
    import base64

    from fake_kubernetes import NAMESPACE, POD_NAME, TOKEN, FakeKubernetes

    from kale_py.cluster import ClusterConfig, discover_notebook
    from kale_py.kubeflow.pull_secrets import pod_pull_secrets

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    base = push_base_image(private, tmp_path / "b", "team/base2", BASE_DISTS)
    login = base64.b64encode(f"{private.user}:{private.password}".encode()).decode()
    dockerconfig = json.dumps({"auths": {private.host: {"auth": login}}}).encode()
    k8s = FakeKubernetes().start()
    try:
        k8s.pods[(NAMESPACE, POD_NAME)]["spec"]["imagePullSecrets"] = [
            {"name": "regcred"}, {"name": "missing"}]
        k8s.secrets[(NAMESPACE, "regcred")] = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "regcred", "namespace": NAMESPACE},
            "data": {".dockerconfigjson": base64.b64encode(dockerconfig).decode()}}
        config = ClusterConfig(api_url=k8s.url, token=TOKEN, ca_file=None, namespace=NAMESPACE,
                               pod_name=POD_NAME)
        pod = discover_notebook(config)
        assert pod.image_pull_secrets == ("regcred", "missing")
        secrets, problems = pod_pull_secrets(config, pod)
    finally:
        k8s.stop()
    [warned] = problems
    assert warned.code == "IM102" and "pull secret missing" in warned.message
    built = build_step_image({"yaml"}, f"{private.host}/team/from-secret", base,
                             pull_secret=secrets)
    assert built.private
    assert skopeo_inspect(private, built.reference)["Digest"] == built.reference.split("@")[1]


def test_an_import_no_distribution_provides_is_warned_about(
        registry: OciRegistry, base: str, no_docker_login: None) -> None:
    built = build_step_image({"yaml", "no_such_module_xyz"}, f"{registry.host}/team/w", base)
    [warned] = [d for d in built.diagnostics if d.code == "IM201"]
    assert warned.message == ("the steps import no_such_module_xyz, which no distribution "
                              "installed here provides: the base image must have them")


def test_an_editable_install_is_warned_about(
        registry: OciRegistry, base: str, no_docker_login: None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    info = site / "mylib-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mylib\nVersion: 0.3\n")
    (info / "RECORD").write_text("__editable__.mylib-0.3.pth,,\nmylib-0.3.dist-info/METADATA,,\n")
    (info / "direct_url.json").write_text(
        json.dumps({"url": "file:///src/mylib", "dir_info": {"editable": True}}))
    (site / "__editable__.mylib-0.3.pth").write_text("/src/mylib\n")
    monkeypatch.syspath_prepend(str(site))
    from kale_py.images import distributions

    monkeypatch.setattr(distributions.metadata, "packages_distributions",
                        lambda: {"mylib": ["mylib"]})
    built = build_step_image({"mylib"}, f"{registry.host}/team/editable", base)
    [warned] = [d for d in built.diagnostics if d.code == "IM204"]
    assert warned.message.startswith("mylib is installed in editable mode (pip install -e)")
    assert built.distributions == ("mylib==0.3",)


def test_compile_warns_when_the_steps_could_not_pull_the_private_step_image(
        private: OciRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kale_py.graph import build_pipeline
    from kale_py.kubeflow.compile import compile_pipeline
    from kale_py.notebook import read_notebook

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = push_base_image(private, tmp_path / "b", "team/base3", BASE_DISTS)
    docker_config(tmp_path / "docker", private)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    nb = notebook(tmp_path / "nb.ipynb", {"base_image": base})
    target = f"{private.host}/team/nb"
    compiled = compile_pipeline(build_pipeline(read_notebook(nb)), step_image=target,
                                discover=False)
    [warned] = [d for d in compiled.diagnostics if d.code == "IM203"]
    assert "name a pull secret in image_pull_secrets" in warned.message
    nb = notebook(tmp_path / "secret.ipynb", {"base_image": base,
                                              "image_pull_secrets": ["regcred"]})
    compiled = compile_pipeline(build_pipeline(read_notebook(nb)), step_image=target,
                                discover=False)
    assert not [d for d in compiled.diagnostics if d.code == "IM203"]
    _, platform = yaml.safe_load_all(compiled.yaml)
    config = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-load"]
    assert config["imagePullSecret"][0]["secretName"] == "regcred"


def test_a_base_on_another_registry_is_copied_layer_by_layer(
        registry: OciRegistry, private: OciRegistry, base: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    docker_config(tmp_path / "docker", private)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    built = build_step_image({"yaml"}, f"{private.host}/team/copied", base)
    base_layers = skopeo_inspect(registry, base)["Layers"]
    assert set(base_layers) <= set(built.pushed)  # type: ignore[arg-type]
    inspected = skopeo_inspect(private, built.reference)
    assert inspected["Layers"] == [*base_layers, built.layer_digest]  # type: ignore[misc]
    rootfs = unpack(private, built.reference, tmp_path)
    assert (rootfs / "etc" / "base-marker").read_text() == "base\n"
