"""Logging in to a multi-user Kubeflow through Dex, against the fake gateway of fake_dex.py
(oauth2-proxy and oidc-authservice flows) with the fake KFP backend of fake_kfp.py behind it."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_dex import FakeDex
from fake_kfp import FakeKfp

from kale_py.cli import main
from kale_py.diagnostics import SubmitError
from kale_py.kubeflow import dex
from kale_py.kubeflow.client import resolve_endpoint, submit_pipeline

PIPELINE_YAML = "# PIPELINE DEFINITION\n# Name: demo\npipelineInfo:\n  name: demo\n"
USER, PASSWORD = "user@example.com", "12341234"

pytestmark = pytest.mark.usefixtures("clean_kfp_environment")


@pytest.fixture(params=["oauth2-proxy", "authservice"])
def gateway(request: pytest.FixtureRequest, kfp: FakeKfp, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDex]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(dex.PASSWORD_ENV, raising=False)
    fake = FakeDex(kfp_url=kfp.url, flavor=request.param).start()
    yield fake
    fake.stop()


def _submit(gateway: FakeDex) -> None:
    submit_pipeline(PIPELINE_YAML, name="demo", host=f"{gateway.url}/pipeline",
                    namespace="kubeflow-user-example-com", username=USER, out=lambda _: None)


def test_login_then_submit_with_the_session_cookie(gateway: FakeDex, kfp: FakeKfp,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dex.PASSWORD_ENV, PASSWORD)
    _submit(gateway)
    assert gateway.logins == 1
    assert kfp.calls("POST", "/runs"), "the run did not reach KFP through the gateway"
    api_calls = [r for r in gateway.requests if r[1].startswith("/pipeline/apis/")]
    assert api_calls and all(f"{gateway.cookie_name}=" in cookies for _, _, cookies in api_calls)
    visited = {path for _, path, _ in gateway.requests}
    assert "/dex/approval" in visited
    assert ("/oauth2/callback" if gateway.flavor == "oauth2-proxy" else "/login/oidc") in visited


def test_session_is_cached_privately_and_reused(gateway: FakeDex, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dex.PASSWORD_ENV, PASSWORD)
    _submit(gateway)
    (cached,) = (tmp_path / "cache" / "kale_py" / "sessions").glob("*.json")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    data = json.loads(cached.read_text())
    assert gateway.cookie_name in data["cookie"] and data["expires"] > 0
    monkeypatch.delenv(dex.PASSWORD_ENV)  # no password needed while the session lasts
    _submit(gateway)
    assert gateway.logins == 1


def test_expired_session_logs_in_again(gateway: FakeDex,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dex.PASSWORD_ENV, PASSWORD)
    _submit(gateway)
    gateway.expire_sessions()  # the proxy forgot it (restart, logout, cookie-expire)
    _submit(gateway)
    assert gateway.logins == 2


def test_wrong_password_is_kf102_in_one_line(
        gateway: FakeDex, kfp: FakeKfp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(dex.PASSWORD_ENV, "s3cr3t-typo")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE_YAML)
    code = main(["submit", str(pipeline), "--host", f"{gateway.url}/pipeline",
                 "--namespace", "ns", "--username", USER])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "Traceback" not in err
    assert "KF102" in err and "Dex refused the login of user@example.com" in err
    assert "wrong username or password" in err and "s3cr3t-typo" not in err
    assert kfp.requests == []
    assert not (tmp_path / "cache" / "kale_py" / "sessions").exists()


def test_no_password_and_no_terminal_says_how(gateway: FakeDex,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(SubmitError, match="no password for user@example.com: set "
                                          "KF_PIPELINES_PASSWORD"):
        _submit(gateway)


def test_password_prompt(gateway: FakeDex, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr(dex.getpass, "getpass", lambda prompt: asked.append(prompt) or PASSWORD)
    _submit(gateway)
    assert asked == [f"Kubeflow password for {USER}: "] and gateway.logins == 1


def test_username_needs_the_gateway_address() -> None:
    with pytest.raises(SubmitError, match="--username logs in through the Kubeflow gateway: "
                                          "pass --host"):
        resolve_endpoint(username=USER)


def test_an_endpoint_without_login_says_so(kfp: FakeKfp, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(dex.PASSWORD_ENV, PASSWORD)
    with pytest.raises(SubmitError, match="did not ask for a login"):
        resolve_endpoint(kfp.url, username=USER)


def test_service_account_token_for_programmatic_access(kfp: FakeKfp) -> None:
    """`kubectl create token default-editor`: a bearer token, no login."""
    endpoint = resolve_endpoint(kfp.url, token="eyJhbGciOi.sa.token", username=USER)
    assert endpoint.auth.headers() == {"Authorization": "Bearer eyJhbGciOi.sa.token"}


def test_recurring_runs_are_managed_with_the_session(
        gateway: FakeDex, kfp: FakeKfp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--disable asks KFP (through the session) for the pipeline's recurring runs: none here."""
    monkeypatch.setenv(dex.PASSWORD_ENV, PASSWORD)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE_YAML)
    assert main(["submit", str(pipeline), "--host", f"{gateway.url}/pipeline", "--namespace",
                 "ns", "--username", USER, "--disable"]) == 1
    assert "KF107: no recurring run named 'demo'" in capsys.readouterr().err
    assert gateway.logins == 1
    api_calls = [r for r in gateway.requests if r[1].startswith("/pipeline/apis/")]
    assert api_calls and all(f"{gateway.cookie_name}=" in cookies for _, _, cookies in api_calls)
