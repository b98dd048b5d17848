"""Shared pytest fixtures.

Jupyter server: pytest-jupyter's fixtures (``jp_fetch``, ``jp_root_dir``, ...) with kale_py's
server extension enabled. pytest-jupyter runs ``async def`` tests on the server's event loop.
Do not set pytest-asyncio's ``asyncio_mode = "auto"``: two loops make every request time out.
"""

from __future__ import annotations

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
