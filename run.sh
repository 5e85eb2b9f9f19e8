#!/usr/bin/env bash
# Installs loraprompt with its web UI into .venv and launches the standalone web UI on the
# built-in demo model (or pass --checkpoint PATH, --lora-dir DIR, --port N ...).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[ui]"
exec .venv/bin/loraprompt webui "$@"
