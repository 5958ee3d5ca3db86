#!/usr/bin/env bash
# Provider comparison: start `rag serve` on loopback, run experiments/providers.toml (in-process
# pipeline vs the same pipeline over HTTP, plus an external model when OPENAI_BASE_URL and
# OPENAI_MODEL are set), then print `guard compare` for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${RAG_SERVE_PORT:-8018}"
export HF_HUB_OFFLINE=1 RAG_SERVE_URL="http://127.0.0.1:${PORT}/v1"
.venv/bin/rag ingest >/dev/null
.venv/bin/rag serve --port "$PORT" > data/rag-serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -fsS "$RAG_SERVE_URL/models" >/dev/null 2>&1 && break
    sleep 0.5
done
status=0
.venv/bin/guard run experiments/providers.toml "$@" || status=$?
.venv/bin/guard compare --experiment providers || true
exit $status
