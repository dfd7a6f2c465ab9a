#!/usr/bin/env bash
# Set up .venv with a Python >= 3.12 and install lartpc_bayes with its test extras from PyPI.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
find_python() {
  for c in python3.13 python3.12 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  # pyenv keeps interpreters that its shims may hide when they are not selected
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    if [ -x "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "no Python >= 3.12 found (install one, e.g. 'pyenv install 3.12')" >&2
  return 1
}
if [ ! -x .venv/bin/python ]; then
  PY=$(find_python)
  echo "creating .venv with $PY ($("$PY" --version))"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
