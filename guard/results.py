"""Reading runs back: flat case tables, summaries with confidence intervals, exports, SQL.

The journal is the only store. DuckDB is the query engine over it: each query opens an
in-memory DuckDB over the journals' case rows, so a `guard run` writing a journal and a
dashboard reading it never contend for a database file lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from guard.domain import CaseResult, CaseStatus
from guard.journal import read_events, read_results
from guard.metrics.stats import MeanCI, mean_ci
from rag.errors import InputError

BASE_COLUMNS = (
    "run_id", "variant", "case_id", "repeat", "tenant", "tags", "status", "error", "question",
    "answer", "contexts", "tool_calls", "abstained", "attempts", "cached", "latency_ms",
    "cost_usd", "prompt_tokens", "completion_tokens", "finished_at", "score_ms", "timings_ms",
)


def case_row(result: CaseResult) -> dict[str, Any]:
    """One flat row: the case's fields, then one column per metric (named as the metric)."""
    response = result.response
    row: dict[str, Any] = {
        "run_id": result.run_id,
        "variant": result.variant,
        "case_id": result.case_id,
        "repeat": result.repeat,
        "tenant": result.tenant,
        "tags": ",".join(result.tags),
        "status": result.status.value,
        "error": result.error,
        "question": result.question,
        "answer": response.answer if response else None,
        "contexts": json.dumps([c.doc_id for c in response.contexts]) if response else None,
        "tool_calls": json.dumps(list(response.tool_calls)) if response else None,
        "abstained": response.abstained if response else None,
        "attempts": result.attempts,
        "cached": result.cached,
        "latency_ms": result.latency_ms,
        "cost_usd": result.cost_usd,
        "prompt_tokens": response.prompt_tokens if response else 0,
        "completion_tokens": response.completion_tokens if response else 0,
        "finished_at": result.finished_at,
        "score_ms": result.score_ms,
        "timings_ms": json.dumps(response.timings_ms) if response else None,
    }
    row.update(result.metrics)
    return row


def cases_frame(journals: Iterable[Path]) -> pd.DataFrame:
    rows = [case_row(r) for path in journals for r in read_results(path)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=list(BASE_COLUMNS))
    return frame


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return sorted(c for c in frame.columns if c not in BASE_COLUMNS)


@dataclass(frozen=True)
class MetricSummary:
    variant: str
    metric: str
    ci: MeanCI


def summarize(
    frame: pd.DataFrame, confidence: float = 0.95, metrics: Sequence[str] | None = None
) -> list[MetricSummary]:
    """Mean and bootstrap CI of every metric per variant, over scored cases (None left out)."""
    out: list[MetricSummary] = []
    if frame.empty:
        return out
    # In case order: the journal's order depends on which answer came back first, and the
    # bootstrap's resamples depend on the order, so same cases, same interval needs a fixed one.
    scored = frame[frame["status"] == CaseStatus.SCORED.value].sort_values(
        ["case_id", "repeat"], kind="stable")
    for variant in sorted(frame["variant"].unique()):
        rows = scored[scored["variant"] == variant]
        for metric in metrics or metric_columns(frame):
            if metric not in rows:
                continue
            values = [None if pd.isna(v) else float(v) for v in rows[metric]]
            if all(v is None for v in values):
                continue
            out.append(MetricSummary(variant, metric, mean_ci(values, confidence=confidence)))
    return out


def status_counts(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per variant: how many cases ended in each status."""
    counts: dict[str, dict[str, int]] = {}
    for (variant, status), group in frame.groupby(["variant", "status"]):
        counts.setdefault(str(variant), {})[str(status)] = len(group)
    return counts


def export(frame: pd.DataFrame, out: Path) -> Path:
    """Write the case table as CSV, JSON Lines or Parquet, chosen by the file extension."""
    import duckdb

    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    formats = {".csv": "(FORMAT csv, HEADER)", ".parquet": "(FORMAT parquet)",
               ".jsonl": "(FORMAT json)", ".json": "(FORMAT json)"}
    if suffix not in formats:
        raise InputError(f"unknown export format {suffix!r}: use .csv, .jsonl or .parquet")
    with duckdb.connect() as db:
        db.register("cases", frame)
        target = str(out).replace("'", "''")
        db.execute(f"COPY (SELECT * FROM cases ORDER BY variant, case_id, repeat) "
                   f"TO '{target}' {formats[suffix]}")
    return out


def query(frame: pd.DataFrame, sql: str) -> pd.DataFrame:
    """Run SQL over the table `cases` (one row per case, one column per metric)."""
    import duckdb

    with duckdb.connect() as db:
        db.register("cases", frame)
        try:
            return db.execute(sql).fetchdf()
        except duckdb.Error as exc:
            raise InputError(f"query failed: {exc}") from None


def last_event(path: Path, type_: str) -> dict[str, Any] | None:
    found = None
    for event in read_events(path):
        if event.type == type_:
            found = event.data
    return found
