#!/usr/bin/env bash
# What the browser tests need: Debian's Chromium (Playwright's own browser download does not work
# on a closed network, so tests launch /usr/bin/chromium) and, in the virtual environment given as
# $1 (default .venv), JupyterLab and the Playwright Python package (which bundles its driver).
# Idempotent and non-interactive; a no-op in well under a second when everything is present.
set -euo pipefail

VENV="${1:-.venv}"
PY="$VENV/bin/python"
JUPYTERLAB_VERSION="4.6.6"
PLAYWRIGHT_VERSION="1.65.2"

if [ ! -x "$PY" ]; then
  echo "install-browser-deps: no Python at $PY (create the virtual environment first)" >&2
  exit 1
fi

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
# (Debian's launcher may print a harmless "[: ...: unexpected operator" from /etc/chromium.d/dev-shm.)
/usr/bin/chromium --version 2>/dev/null | grep -q Chromium || { echo "chromium does not run" >&2; exit 1; }

# pip only when a pinned version is missing or different.
if ! "$PY" - "$JUPYTERLAB_VERSION" "$PLAYWRIGHT_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("jupyterlab"), version("playwright")) == tuple(sys.argv[1:3]) else 1)
EOF
then
  "$PY" -m pip install -q "jupyterlab==$JUPYTERLAB_VERSION" "playwright==$PLAYWRIGHT_VERSION"
fi
