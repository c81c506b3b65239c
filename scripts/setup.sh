#!/usr/bin/env bash
# One-step setup: creates .venv/ in the repository root and installs the project with its test tools.
# Also installs Debian's chromium (used by the map rendering test) when it is missing and apt-get is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -c constraints.txt -e '.[dev]'
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: chromium could not be installed; the map rendering test will be skipped" >&2
fi
.venv/bin/python -c "import crobim, pipelines; print('setup: crobim and pipelines import')"
