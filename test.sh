#!/usr/bin/env bash
# Installs everything the tests need into .venv (and .venv-gradio3 for the gradio 3.41.2 checks),
# then runs the linters, the type checker and the whole test suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
# pip installs without byte-compiling (--no-compile: 103 s instead of 198 s for .venv on a fresh
# clone), and Python writes the bytecode of what the tests import as they first import it; a shell
# with PYTHONDONTWRITEBYTECODE set would have every process compile its imports again
unset PYTHONDONTWRITEBYTECODE
PIP=(pip install -q --disable-pip-version-check --no-compile)

# A stand-in for Automatic1111's environment (its pins: gradio 3.41.2, lark 1.1.2, numpy 1.26.2, no
# torch): the gallery tab, the extension's tab code and the syntax tables also run inside it.
# (Python 3.10's grammar is checked by ruff --target-version py310 and the extension's compile test;
# a 3.10 venv would need other pins: today's matplotlib/contourpy wheels that gradio 3 pulls are 3.11+.)
# Its packages install in the background while .venv's do (about a minute less on a fresh clone).
if [ ! -x .venv-gradio3/bin/python ]; then "$PY" -m venv .venv-gradio3; fi
if ! .venv-gradio3/bin/python -c "import gradio, lark, pytest, hypothesis, sys; sys.exit(gradio.__version__ != '3.41.2' or lark.__version__ != '1.1.2')" 2>/dev/null; then
  .venv-gradio3/bin/"${PIP[@]}" -c tests/gradio3-constraints.txt -r tests/gradio3-requirements.txt pytest hypothesis &
fi

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
# The pinned CPU wheel first: an unpinned torch requirement could pull a multi-GB CUDA build.
.venv/bin/"${PIP[@]}" torch==2.13.0
.venv/bin/"${PIP[@]}" -c constraints.txt -e ".[test]"

# A real browser for the web UI tests (Debian's Chromium; Playwright cannot download one here).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "test.sh: /usr/bin/chromium is missing and this is not root; browser tests will be skipped" >&2
  fi
fi

wait_all() { local pid; for pid in $(jobs -p); do wait "$pid"; done; }
wait_all  # the gradio 3 install: a failure stops here (set -e)
# loraprompt itself after the wait: two editable installs at once would share the source's build files.
.venv-gradio3/bin/"${PIP[@]}" --no-deps -e .

echo "== ruff"; .venv/bin/ruff check .
echo "== ruff (python 3.10 grammar)"; .venv/bin/ruff check --select E9 --target-version py310 .
echo "== mypy"; .venv/bin/mypy -n 2  # two processes: a fresh clone has no cache (38 s, not 137 s)
echo "== pytest"
export LORAPROMPT_GRADIO3_PYTHON="$PWD/.venv-gradio3/bin/python"
export LORAPROMPT_LARK112_PYTHON="$PWD/.venv-gradio3/bin/python"
# Two worker processes (pytest-xdist), a whole file per worker (its web UI or model fixtures are made
# once): about half the time of one process on a 2-CPU machine. `./test.sh -n 0 ...` runs in one.
# One torch thread per worker: two workers with a thread per core each would oversubscribe the two
# CPUs (about 8% slower on tests/tools).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -n "${LORAPROMPT_TEST_WORKERS:-2}" --dist loadfile "$@"
