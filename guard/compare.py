"""Comparing runs, and gating a run against a baseline, over archived runs.

Runs are read through a `RunArchive`: the local journals (`LocalRunArchive`) or an MLflow
tracking store (`guard.adapters.mlflow_tracker.MLflowRunTracker`), so `guard compare` and
`guard gate` work the same against this machine's data folder and a remote tracking server.

Significance is always a paired test on the same cases (case id and repeat): the sign-flip
permutation test of `guard.metrics.stats.paired_comparison`. `compare` tests every pair of
columns per metric and controls the family-wise error per metric with Holm's step-down
correction; `gate` tests the candidate against one baseline per gated metric (no correction:
one test per gate, as the spec's `confidence` says).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from guard.gates import GateResult, check_drops, check_floors, higher_is_better
from guard.metrics.stats import MeanCI, paired_comparison
from guard.results import cases_frame, metric_columns, summarize
from guard.runs import RunStore
from guard.service import RunOutcome
from guard.spec import ExperimentSpec, parse_spec
from rag.errors import InputError

BASELINE_TAG = "baseline"
UNFINISHED = ("running", "interrupted", "cancelled")


# --------------------------------------------------------------------------- the archive port


@dataclass(frozen=True)
class ArchivedRun:
    """One guard run as an archive knows it (all its variants)."""

    run_id: str
    experiment: str
    created: float
    status: str
    tags: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    source: str = ""


class RunArchive(Protocol):
    """Where finished runs can be read back: their manifest and their per-case table."""

    name: str

    def runs(self, experiment: str | None = None) -> list[ArchivedRun]:
        """Runs (of `experiment`, or all), newest first."""

    def manifest(self, run_id: str) -> dict[str, Any]:
        """The run's manifest (`guard.runs`); InputError when the archive lacks the run."""

    def cases(self, run_id: str) -> pd.DataFrame:
        """One row per case and variant, one column per metric (`guard.results.cases_frame`)."""


class LocalRunArchive:
    """The runs in this machine's data folder, read from their journals."""

    name = "local"

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def runs(self, experiment: str | None = None) -> list[ArchivedRun]:
        out = []
        for info in self.store.list():
            if experiment is not None and info.experiment != experiment:
                continue
            tags = tuple(self.store.manifest(info.run_id).get("tags", ()))
            out.append(ArchivedRun(info.run_id, info.experiment, info.created, info.status,
                                   tags, info.variants, self.name))
        return sorted(out, key=lambda r: r.created, reverse=True)

    def manifest(self, run_id: str) -> dict[str, Any]:
        return self.store.manifest(run_id)

    def cases(self, run_id: str) -> pd.DataFrame:
        self.store.require(run_id)
        return cases_frame([self.store.journal_path(run_id)])


class CombinedArchive:
    """Several archives as one: the first archive that has a run answers for it."""

    def __init__(self, archives: Sequence[RunArchive]) -> None:
        if not archives:
            raise ValueError("CombinedArchive needs at least one archive")
        self.archives = list(archives)
        self.name = "+".join(a.name for a in archives)

    def runs(self, experiment: str | None = None) -> list[ArchivedRun]:
        seen: dict[str, ArchivedRun] = {}
        for archive in self.archives:
            for run in archive.runs(experiment):
                seen.setdefault(run.run_id, run)
        return sorted(seen.values(), key=lambda r: r.created, reverse=True)

    def _first(self, run_id: str) -> RunArchive:
        for archive in self.archives:
            try:
                archive.manifest(run_id)
            except InputError:
                continue
            return archive
        where = ", ".join(a.name for a in self.archives)
        raise InputError(f"no run {run_id!r} in {where}")

    def manifest(self, run_id: str) -> dict[str, Any]:
        return self._first(run_id).manifest(run_id)

    def cases(self, run_id: str) -> pd.DataFrame:
        return self._first(run_id).cases(run_id)


def spec_from_manifest(manifest: Mapping[str, Any]) -> ExperimentSpec:
    """The experiment spec a run was started with, as stored in its manifest."""
    return parse_spec(dict(manifest["spec"]), str(manifest.get("spec_source", manifest["run_id"])),
                      Path(str(manifest.get("base_dir", "."))))


def headline_metrics(available: Iterable[str]) -> list[str]:
    """The metrics worth a first look, in a fixed order, among `available`: retrieval at the
    largest k, answers, abstention, tools, ragas ROUGE and every LLM-judge metric."""
    names = set(available)
    ks = sorted({int(m.rsplit("@", 1)[1]) for m in names
                 if m.startswith("retrieval.nDCG@") and m.rsplit("@", 1)[1].isdigit()})
    top = [f"retrieval.nDCG@{ks[-1]}", f"retrieval.R@{ks[-1]}", f"retrieval.hit@{ks[-1]}"] \
        if ks else []
    order = [*top, "retrieval.MRR", "answer.em", "answer.f1", "abstention.hallucinated",
             "abstention.missed_answer", "tools.selection_f1", "tools.argument_accuracy",
             "tools.correct", "ragas.rouge_score", *sorted(m for m in names
                                                         if m.startswith("judge."))]
    return [m for m in dict.fromkeys(order) if m in names]


def load_outcome(archive: RunArchive, run_id: str) -> RunOutcome:
    """A run's outcome (spec, case table, summaries, floor gates) from any archive."""
    manifest = archive.manifest(run_id)
    spec = spec_from_manifest(manifest)
    frame = archive.cases(run_id)
    summaries = summarize(frame, spec.confidence)
    experiment = str(manifest.get("experiment", spec.name))
    status = next((r.status for r in archive.runs(experiment) if r.run_id == run_id), "unknown")
    return RunOutcome(run_id, status, spec, frame, summaries,
                      check_floors(summaries, spec.gates))


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """The case table with its metric columns rounded exactly as an MLflow case table stores
    them (`MlflowClient.log_table` writes pandas JSON with 10 decimal places).

    Without this, a run read from its journal and the same run read back from MLflow differ by
    ~1e-11 on most cases, and the paired test calls that swarm of tiny one-signed differences
    significant. The rounding is idempotent, so tables from either source compare as equal.
    """
    columns = metric_columns(frame)
    if frame.empty or not columns:
        return frame
    data = json.loads(frame[columns].to_json(orient="split", index=False))
    out = frame.copy()
    out[columns] = pd.DataFrame(data["data"], columns=data["columns"],
                                index=frame.index).astype(float)
    return out


def _case_key(frame: pd.DataFrame) -> pd.Series:
    return frame["case_id"].astype(str) + "#" + frame["repeat"].astype(int).astype(str)


def _scores(frame: pd.DataFrame, variant: str, metric: str) -> dict[str, float | None]:
    """Per case key: the variant's score on `metric` over scored cases (None when undefined)."""
    if metric not in frame or frame.empty:
        return {}
    rows = frame[(frame["variant"] == variant) & (frame["status"] == "scored")]
    return {key: (None if pd.isna(value) else float(value))
            for key, value in zip(_case_key(rows), rows[metric], strict=True)}


# --------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class Column:
    """One compared system: a variant of a run."""

    label: str
    run_id: str
    variant: str


@dataclass(frozen=True)
class Win:
    """`winner` is significantly better than `loser` on `metric` over `n_pairs` shared cases."""

    metric: str
    winner: str
    loser: str
    diff: float  # mean of winner - loser (raw, not oriented)
    p_value: float
    p_adjusted: float  # Holm-adjusted within the metric
    n_pairs: int


@dataclass(frozen=True)
class Comparison:
    columns: tuple[Column, ...]
    metrics: tuple[str, ...]
    cells: dict[tuple[str, str], MeanCI]  # (metric, column label) -> mean and CI
    wins: tuple[Win, ...]
    confidence: float
    notes: tuple[str, ...] = ()

    def beaten_by(self, metric: str, label: str) -> list[str]:
        """Labels of the columns that `label` is significantly better than on `metric`."""
        return [w.loser for w in self.wins if w.metric == metric and w.winner == label]


def select_runs(
    archive: RunArchive, experiment: str | None, run_ids: Sequence[str] = ()
) -> list[ArchivedRun]:
    """The runs named by `run_ids`, or else the newest run of `experiment`."""
    if run_ids:
        known = {r.run_id: r for r in archive.runs()}
        missing = [rid for rid in run_ids if rid not in known]
        if missing:
            raise InputError(f"no run {', '.join(missing)} in {archive.name}")
        return [known[rid] for rid in dict.fromkeys(run_ids)]
    if experiment is None:
        raise InputError("name an experiment (--experiment) or runs (--runs)")
    runs = archive.runs(experiment)
    if not runs:
        raise InputError(f"no run of experiment {experiment!r} in {archive.name}")
    return [runs[0]]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given), each capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def compare_frames(
    frames: Mapping[str, pd.DataFrame],
    metrics: Sequence[str] | None = None,
    confidence: float = 0.95,
    all_metrics: bool = False,
) -> Comparison:
    """Every variant of every run (`frames`: run id -> case table) side by side, on `metrics`
    (default: the headline metrics, or every metric with `all_metrics`).

    Cells are means with bootstrap CIs over scored cases; a `Win` is recorded when the paired
    test on the cases both columns scored is significant at `confidence` after Holm's
    correction over the column pairs of that metric.
    """
    frames = {run_id: comparable(frame) for run_id, frame in frames.items()}
    columns: list[Column] = []
    multi = len(frames) > 1
    for run_id, frame in frames.items():
        variants = sorted(frame["variant"].unique()) if not frame.empty else []
        for variant in variants:
            label = f"{variant}@{run_id[-6:]}" if multi else str(variant)
            columns.append(Column(label, run_id, str(variant)))
    available = sorted({m for frame in frames.values() for m in metric_columns(frame)})
    if metrics:
        chosen = [m for m in metrics if m in available]
    else:
        chosen = available if all_metrics else (headline_metrics(available) or available)
    notes = [f"metric {m!r} not in these runs" for m in (metrics or []) if m not in available]

    cells: dict[tuple[str, str], MeanCI] = {}
    for column in columns:
        frame = frames[column.run_id]
        for summary in summarize(frame[frame["variant"] == column.variant], confidence, chosen):
            cells[(summary.metric, column.label)] = summary.ci

    wins: list[Win] = []
    alpha = 1 - confidence
    for metric in chosen:
        tests = []
        scores = {c.label: _scores(frames[c.run_id], c.variant, metric) for c in columns}
        for first, second in itertools.combinations(columns, 2):
            result = paired_comparison(scores[second.label], scores[first.label],
                                       confidence=confidence,
                                       higher_is_better=higher_is_better(metric))
            if result.p_value is not None and result.diff.mean is not None:
                tests.append((first.label, second.label, result.diff.mean, result.p_value,
                              result.n_pairs))
        adjusted = holm([t[3] for t in tests])
        for (a, b, diff, p, n), p_adj in zip(tests, adjusted, strict=True):
            if p_adj >= alpha or diff == 0:
                continue
            better_a = diff > 0 if higher_is_better(metric) else diff < 0
            winner, loser = (a, b) if better_a else (b, a)
            wins.append(Win(metric, winner, loser, diff if better_a else -diff, p, p_adj, n))
    return Comparison(tuple(columns), tuple(chosen), cells, tuple(wins), confidence, tuple(notes))


def compare_runs(
    archive: RunArchive,
    runs: Sequence[ArchivedRun],
    metrics: Sequence[str] | None = None,
    confidence: float = 0.95,
    all_metrics: bool = False,
) -> Comparison:
    frames = {run.run_id: archive.cases(run.run_id) for run in runs}
    comparison = compare_frames(frames, metrics, confidence, all_metrics)
    hashes = {archive.manifest(r.run_id).get("dataset", {}).get("hash") for r in runs}
    if len(hashes) > 1:
        note = ("the runs used different dataset contents: paired tests use only the cases "
                "they share")
        comparison = Comparison(comparison.columns, comparison.metrics, comparison.cells,
                                comparison.wins, comparison.confidence,
                                (*comparison.notes, note))
    return comparison


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class GateReport:
    """A run's gates: floors from its spec, and paired drop tests against `baseline_id`."""

    run_id: str
    experiment: str
    baseline_id: str | None
    results: tuple[GateResult, ...]
    confidence: float
    notes: tuple[str, ...] = ()
    # (variant, metric) -> case key -> (baseline score, candidate score), for drop gates
    changes: dict[tuple[str, str], dict[str, tuple[float, float]]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]


def find_baseline(
    archive: RunArchive, experiment: str, run_id: str, created: float
) -> ArchivedRun | None:
    """The newest run of `experiment` tagged `baseline`, other than `run_id`, created no later
    than `created` (the candidate's creation time)."""
    for run in archive.runs(experiment):
        if run.run_id != run_id and BASELINE_TAG in run.tags and run.created <= created:
            return run
    return None


def gate_run(archive: RunArchive, run_id: str, baseline_id: str | None = None) -> GateReport:
    """Check a run against its spec's gates (floors, and drops against a baseline run)."""
    manifest = archive.manifest(run_id)
    spec = spec_from_manifest(manifest)
    experiment = str(manifest.get("experiment", spec.name))
    candidate = comparable(archive.cases(run_id))
    gated = list(spec.gates)
    notes: list[str] = []
    results: list[GateResult] = []

    status = next((r.status for r in archive.runs(experiment) if r.run_id == run_id), None)
    if status in UNFINISHED:
        results.append(GateResult("*", "run", "complete", False,
                                  f"run is {status}: finish it with guard run --resume {run_id}"))
    counts = candidate.groupby(["variant", "status"]).size() if not candidate.empty else None
    if counts is not None:
        for (variant, case_status), n in counts.items():
            if case_status != "scored":
                notes.append(f"{variant}: {n} case(s) ended {case_status} and are left out of "
                             "the means")

    summaries = summarize(candidate, spec.confidence, gated)
    results += check_floors(summaries, spec.gates)

    changes: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    if any(g.max_drop is not None for g in spec.gates.values()):
        if baseline_id is None:
            found = find_baseline(archive, experiment, run_id,
                                  float(manifest.get("created", float("inf"))))
            baseline_id = found.run_id if found else None
        if baseline_id is None:
            notes.append(f"no earlier run of experiment {experiment!r} is tagged "
                         f"{BASELINE_TAG!r}: drop gates skipped (tag one with "
                         f"`guard run --tag {BASELINE_TAG}`)")
        else:
            base_manifest = archive.manifest(baseline_id)
            if base_manifest.get("experiment") != experiment:
                notes.append(f"baseline {baseline_id} is from experiment "
                             f"{base_manifest.get('experiment')!r}, not {experiment!r}")
            if base_manifest.get("dataset", {}).get("hash") != manifest.get("dataset", {}).get(
                    "hash"):
                notes.append("baseline and candidate used different dataset contents: the "
                             "paired tests use only the cases both scored")
            baseline = comparable(archive.cases(baseline_id))
            drops = check_drops(candidate, baseline, spec.gates, spec.confidence)
            results += drops
            for result in drops:
                before = _scores(baseline, result.variant, result.metric)
                after = _scores(candidate, result.variant, result.metric)
                changes[(result.variant, result.metric)] = {
                    key: (b, a) for key in (*result.regressed, *result.improved)
                    if (b := before.get(key)) is not None and (a := after.get(key)) is not None
                }
            missing = sorted(set(candidate["variant"]) - set(baseline["variant"])) \
                if not candidate.empty and not baseline.empty else []
            for variant in missing:
                notes.append(f"variant {variant} is not in baseline {baseline_id}: "
                             "no drop test for it")
    return GateReport(run_id, experiment, baseline_id, tuple(results), spec.confidence,
                      tuple(notes), changes)


def gate_payload(report: GateReport, limit: int = 20) -> dict[str, Any]:
    """A Slack-compatible JSON summary (`text`) with the structured gate results beside it."""
    verdict = "passed" if report.passed else "FAILED"
    lines = [f"TruthGuard gate {verdict}: experiment {report.experiment}, run {report.run_id}"
             + (f" vs baseline {report.baseline_id}" if report.baseline_id else "")]
    for result in report.failures[:limit]:
        lines.append(f"- {result.variant} {result.metric} {result.rule}: {result.detail}")
        if result.regressed:
            shown = ", ".join(result.regressed[:10])
            more = f" and {len(result.regressed) - 10} more" if len(result.regressed) > 10 else ""
            lines.append(f"  regressed: {shown}{more}")
    if len(report.failures) > limit:
        lines.append(f"... and {len(report.failures) - limit} more failed gates")
    return {
        "text": "\n".join(lines),
        "passed": report.passed,
        "experiment": report.experiment,
        "run_id": report.run_id,
        "baseline_run_id": report.baseline_id,
        "confidence": report.confidence,
        "gates": [
            {"variant": r.variant, "metric": r.metric, "rule": r.rule, "passed": r.passed,
             "detail": r.detail, "p_value": r.comparison.p_value if r.comparison else None,
             "regressed": list(r.regressed), "improved": list(r.improved)}
            for r in report.results
        ],
        "notes": list(report.notes),
    }
