"""Terminal output for the CLI: progress bars and summary tables (rich)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from guard.domain import Event
from guard.results import status_counts
from guard.runs import RunInfo
from guard.service import GuardService, RunOutcome

_out = Console()
_err = Console(stderr=True)


async def execute_with_progress(service: GuardService, run_id: str) -> RunOutcome:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=_err, disable=not sys.stderr.isatty()) as bar:
        tasks: dict[str, TaskID] = {}

        def on_ingest(tenant: str, done: int, total: int) -> None:
            key = f"ingest {tenant}"
            if key not in tasks:
                tasks[key] = bar.add_task(key, total=total, info="")
            bar.update(tasks[key], completed=done)

        def on_event(event: Event) -> None:
            data = event.data
            if event.type == "run_started":
                tasks["run"] = bar.add_task("cases", total=data["total"],
                                            completed=data["resumed"], info="")
            elif event.type == "progress" and "run" in tasks:
                info = f"{data['throughput_per_s']:.1f}/s  errors {data['errors']}  " \
                       f"retries {data['retries']}"
                bar.update(tasks["run"], completed=data["done"], info=info)
            elif event.type == "case_finished" and "run" in tasks:
                bar.advance(tasks["run"])

        return await service.execute(run_id, [on_event], on_ingest)


def _fmt(mean: float | None, low: float | None, high: float | None) -> str:
    if mean is None:
        return "-"
    if low is None or high is None:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def print_outcome(outcome: RunOutcome, metrics: Sequence[str] | None) -> None:
    spec = outcome.spec
    variants = sorted({s.variant for s in outcome.summaries} | set(
        outcome.frame["variant"].unique() if not outcome.frame.empty else []))
    table = Table(title=f"{spec.name} - run {outcome.run_id} ({outcome.status}); "
                  f"mean [{spec.confidence:.0%} bootstrap CI]")
    table.add_column("metric")
    for variant in variants:
        table.add_column(variant, justify="right")
    by_key = {(s.variant, s.metric): s for s in outcome.summaries}
    names = sorted({s.metric for s in outcome.summaries})
    if metrics is not None:
        names = [m for m in metrics if m in names]
    for name in names:
        cells = []
        for variant in variants:
            summary = by_key.get((variant, name))
            cells.append(_fmt(summary.ci.mean, summary.ci.low, summary.ci.high) + (
                f" n={summary.ci.n}" if summary else "") if summary else "-")
        table.add_row(name, *cells)
    counts = status_counts(outcome.frame) if not outcome.frame.empty else {}
    table.add_row("cases (status)", *[
        ", ".join(f"{k} {v}" for k, v in sorted(counts.get(variant, {}).items()))
        for variant in variants])
    _out.print(table)
    for gate in outcome.gates:
        mark = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
        _out.print(f"gate {mark} {gate.variant} {gate.metric} {gate.rule}: {gate.detail}")


def print_runs(runs: Sequence[RunInfo]) -> None:
    table = Table(title="runs")
    table.add_column("run id", no_wrap=True)
    for column in ("experiment", "status", "done", "variants", "tenants"):
        table.add_column(column)
    for run in runs:
        table.add_row(run.run_id, run.experiment, run.status, f"{run.done}/{run.total}",
                      ", ".join(run.variants), ", ".join(run.tenants))
    _out.print(table)
