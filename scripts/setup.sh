#!/usr/bin/env bash
# Create .venv and install TruthGuard with its pinned dependencies (offline-capable afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch==2.13.0 is pinned in pyproject.toml: it resolves to the CPU wheel, not a CUDA build.
# One pip command for everything, constrained by the lock file, so the set resolves together.
.venv/bin/python -m pip install --quiet -c requirements.lock -e ".[dev]"
echo "installed: $(.venv/bin/python -c 'import rag, guard; print("truthguard", rag.__version__)')"
