#!/usr/bin/env bash
# Lint, type-check, check the architecture, then run the fast test suite.
# Slow reproduction runs are excluded here; run them with: .venv/bin/pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAGAS_DO_NOT_TRACK=true DO_NOT_TRACK=true
.venv/bin/ruff check rag guard tests scripts
.venv/bin/mypy rag guard
.venv/bin/lint-imports
.venv/bin/pytest -m "not slow" -q "$@"
