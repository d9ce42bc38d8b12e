#!/usr/bin/env bash
# The browser test's needs: Debian's chromium (Playwright's own browser download does not work
# offline), and JupyterLab + Playwright in the virtual environment given as $1.
set -euo pipefail
VENV=${1:-.venv}
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi
"$VENV/bin/python" -m pip install -q 'jupyterlab>=4.2,<5' 'playwright>=1.45,<2'
