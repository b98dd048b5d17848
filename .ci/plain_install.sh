#!/usr/bin/env bash
# What `pip install kale_py` alone gives, prepared at install time for tests/test_install.py:
# the wheel built from this checkout, installed with no extras into a fresh virtual
# environment (.venv-plain). pip resolves the base dependencies from the package registry
# here, so that the tests themselves download nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-plain build/plain-wheel
SKIP_JUPYTER_BUILDER=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  .venv/bin/python -m pip wheel --quiet --no-deps --wheel-dir build/plain-wheel .
python3 -m venv .venv-plain
PIP_DISABLE_PIP_VERSION_CHECK=1 .venv-plain/bin/python -m pip install --quiet build/plain-wheel/kale_py-*.whl
