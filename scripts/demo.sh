#!/usr/bin/env bash
# One command on a fresh machine: install, then run the default experiment offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/guard run "$@"
