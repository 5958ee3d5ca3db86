#!/usr/bin/env bash
# Nightly regression gate, cron-friendly: run the nightly spec, gate it, write the reports.
#
#   scripts/nightly.sh                       # run, gate against the last `baseline` run, report
#   NIGHTLY_BASELINE=1 scripts/nightly.sh    # the same, and tag this run as the new baseline
#
# Steps:
#   1. guard run "$NIGHTLY_SPEC" --no-cache --tag nightly
#                                                   (journal, reports/<run_id>.html|.md, MLflow)
#   2. guard gate <run_id>                          (floors, and paired drop tests against the
#                                                    newest earlier run tagged `baseline`; a
#                                                    failure POSTs to the spec's webhook_url)
#   3. guard report <run_id>                        (reports again, now with the drop gates,
#                                                    re-logged to MLflow)
# Exit code: the gate's. 0 passed, 1 a gate failed, 2 bad input or the run did not finish.
#
# Environment:
#   NIGHTLY_SPEC         experiment spec (default: experiments/demo.toml; experiments/scifact.toml
#                        where ../shared/data is present)
#   NIGHTLY_BASELINE=1   also tag the run `baseline` (do this once, and after accepted changes)
#   NIGHTLY_TRACES=1     also log one MLflow trace per case
#   TRUTHGUARD_DATA      data folder: runs, response cache, MLflow store (default: ./data)
#   MLFLOW_TRACKING_URI  MLflow store (default: sqlite:///<data folder>/mlflow.db); point it at a
#                        tracking server to keep baselines across machines
#   GUARD                the guard command (default: .venv/bin/guard, else guard on PATH)
#   GITHUB_STEP_SUMMARY  when set (GitHub Actions), the Markdown summary is appended to it
#
# crontab, every night at 02:30 (logs kept by cron's redirection):
#   30 2 * * * cd /srv/truthguard && scripts/nightly.sh >> data/nightly.log 2>&1
set -uo pipefail
cd "$(dirname "$0")/.."

SPEC="${NIGHTLY_SPEC:-experiments/demo.toml}"
DATA="${TRUTHGUARD_DATA:-data}"
GUARD="${GUARD:-}"
if [ -z "$GUARD" ]; then
    if [ -x .venv/bin/guard ]; then GUARD=.venv/bin/guard; else GUARD=guard; fi
fi
[ -n "${MLFLOW_TRACKING_URI:-}" ] || unset MLFLOW_TRACKING_URI
export TRUTHGUARD_DATA="$DATA" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export RAGAS_DO_NOT_TRACK=true DO_NOT_TRACK=true

# A tag unique to this invocation finds the run id without parsing guard's output.
marker="nightly-$(date -u +%Y%m%dT%H%M%SZ)-$$"
# --no-cache: cached responses are keyed by configuration, not by code; a nightly must ask anew.
run_args=(run "$SPEC" --no-cache --tag nightly --tag "$marker")
[ "${NIGHTLY_BASELINE:-}" = "1" ] && run_args+=(--tag baseline)
[ "${NIGHTLY_TRACES:-}" = "1" ] && run_args+=(--traces)

echo "== $(date -u +%FT%TZ) guard ${run_args[*]}"
"$GUARD" "${run_args[@]}"
run_status=$?
manifest=$(grep -l "\"$marker\"" "$DATA"/runs/*/manifest.json 2>/dev/null | head -n 1)
if [ -z "$manifest" ] || [ "$run_status" -gt 1 ]; then
    echo "nightly: the run failed (exit $run_status); no gate" >&2
    exit 2
fi
run_id=$(basename "$(dirname "$manifest")")

echo "== $(date -u +%FT%TZ) guard gate $run_id"
"$GUARD" gate "$run_id"
gate_status=$?

echo "== $(date -u +%FT%TZ) guard report $run_id"
"$GUARD" report "$run_id" || echo "nightly: warning: report failed" >&2
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f "reports/$run_id.md" ]; then
    cat "reports/$run_id.md" >> "$GITHUB_STEP_SUMMARY"
fi

echo "== nightly run $run_id: gate exit $gate_status"
exit "$gate_status"
