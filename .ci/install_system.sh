#!/usr/bin/env bash
# Debian packages the tests use, installed only when missing:
# - chromium for the browser tests (tests/test_e2e_panel.py); Playwright's own browser
#   download is never used;
# - docker-registry, skopeo and umoci for the step image tests (a real OCI registry on
#   127.0.0.1, images checked and unpacked without a container engine).
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo"
fi
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v umoci >/dev/null || missing+=(umoci)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
/usr/bin/chromium --version
