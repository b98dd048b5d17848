"""Shared pytest fixtures.

Jupyter server: pytest-jupyter's fixtures (``jp_fetch``, ``jp_root_dir``, ...) with kale_py's
server extension enabled. pytest-jupyter runs ``async def`` tests on the server's event loop.
Do not set pytest-asyncio's ``asyncio_mode = "auto"``: two loops make every request time out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The check's test notebooks are data (some are broken on purpose), not nbval tests.
collect_ignore_glob = ["notebooks/*.ipynb"]

try:
    import pytest_jupyter  # noqa: F401
except ImportError:  # the e2e extra is not installed: only the server tests need it
    _HAS_PYTEST_JUPYTER = False
else:
    _HAS_PYTEST_JUPYTER = True
    pytest_plugins = ("pytest_jupyter.jupyter_server",)


if _HAS_PYTEST_JUPYTER:

    @pytest.fixture
    def jp_server_config(jp_server_config: dict[str, Any]) -> dict[str, Any]:
        return {
            "ServerApp": {
                "jpserver_extensions": {"kale_py": True},
                # every route must refuse requests without a token
                "allow_unauthenticated_access": False,
            }
        }

else:

    @pytest.fixture
    def jp_fetch() -> None:
        pytest.fail("the server tests need pytest-jupyter: pip install -e '.[test,e2e]'")


# --- Kubeflow Pipelines: a fake backend and a machine without KFP settings -----------------


@pytest.fixture
def clean_kfp_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KFP, Kubernetes or proxy settings from the machine running the tests."""
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_TOKEN",
                 "KF_PIPELINES_SA_TOKEN_PATH", "KUBERNETES_SERVICE_HOST", "KUBECONFIG",
                 "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    from kale_py.kubeflow import client

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(client, "DEFAULT_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setattr(client, "POD_NAMESPACE_PATH", str(tmp_path / "no-namespace"))


@pytest.fixture
def kfp() -> Iterator[Any]:
    """A fake KFP backend on 127.0.0.1 (see fake_kfp.py)."""
    from fake_kfp import FakeKfp

    fake = FakeKfp().start()
    yield fake
    fake.stop()


# --- the user's key that signs local run records --------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def _user_key_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Local runs sign their records with the user's key: the tests' runs use one of their
    own instead of the key in the user's configuration folder."""
    import os

    from kale_py.integrity import KEY_ENV

    saved = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = str(tmp_path_factory.mktemp("user-config") / "key")
    yield
    if saved is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = saved
