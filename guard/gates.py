"""Gates: absolute floors on a run's metric means, and allowed drops against a baseline.

A drop fails a gate only when it is larger than `max_drop` AND the paired test on the cases
both runs scored says it is real at the spec's confidence: nightly gates fail on real drops,
not on noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from guard.metrics.stats import PairedComparison, paired_comparison
from guard.results import MetricSummary
from guard.spec import Gate


@dataclass(frozen=True)
class GateResult:
    variant: str
    metric: str
    rule: str  # "min" or "max_drop"
    passed: bool
    detail: str
    comparison: PairedComparison | None = None
    regressed: tuple[str, ...] = field(default_factory=tuple)
    improved: tuple[str, ...] = field(default_factory=tuple)


LOWER_IS_BETTER = ("abstention.hallucinated", "abstention.missed_answer", "latency", "cost")


def higher_is_better(metric: str) -> bool:
    return not any(part in metric for part in LOWER_IS_BETTER)


def _applies(gate: Gate, variant: str) -> bool:
    return not gate.variants or variant in gate.variants


def check_floors(
    summaries: Sequence[MetricSummary], gates: Mapping[str, Gate]
) -> list[GateResult]:
    out: list[GateResult] = []
    variants = sorted({s.variant for s in summaries})
    by_key = {(s.variant, s.metric): s for s in summaries}
    for metric, gate in gates.items():
        bounds = [(rule, bound) for rule, bound in (("min", gate.min), ("max", gate.max))
                  if bound is not None]
        for variant in variants:
            if not _applies(gate, variant):
                continue
            summary = by_key.get((variant, metric))
            mean = summary.ci.mean if summary else None
            for rule, bound in bounds:
                if mean is None:
                    out.append(GateResult(variant, metric, rule, False,
                                          f"no value for {metric} ({rule} {bound:g})"))
                    continue
                passed = mean >= bound if rule == "min" else mean <= bound
                sign = {("min", True): ">=", ("min", False): "<",
                        ("max", True): "<=", ("max", False): ">"}[(rule, passed)]
                out.append(GateResult(variant, metric, rule, passed,
                                      f"mean {mean:.4f} {sign} {rule} {bound:g}"))
    return out


def check_drops(
    candidate: pd.DataFrame,
    baseline: pd.DataFrame,
    gates: Mapping[str, Gate],
    confidence: float,
) -> list[GateResult]:
    """Per variant present in both runs and per gated metric: a paired test over shared cases."""
    out: list[GateResult] = []
    shared = sorted(set(candidate.get("variant", [])) & set(baseline.get("variant", [])))
    for metric, gate in gates.items():
        if gate.max_drop is None:
            continue
        for variant in shared:
            if not _applies(gate, variant):
                continue
            cand, base = _scores(candidate, variant, metric), _scores(baseline, variant, metric)
            better_up = higher_is_better(metric)
            comparison = paired_comparison(base, cand, confidence=confidence,
                                           higher_is_better=better_up)
            change = comparison.diff.mean or 0.0
            drop = -change if better_up else change
            significant = comparison.verdict == "regression"
            passed = not (significant and drop > gate.max_drop)
            p_value = "n/a" if comparison.p_value is None else f"{comparison.p_value:.3g}"
            detail = (f"mean change {change:+.4f} over {comparison.n_pairs} shared cases "
                      f"(p={p_value}); allowed drop {gate.max_drop:g}")
            out.append(GateResult(variant, metric, "max_drop", passed, detail, comparison,
                                  tuple(comparison.regressed), tuple(comparison.improved)))
    return out


def _scores(frame: pd.DataFrame, variant: str, metric: str) -> dict[str, float | None]:
    if metric not in frame:
        return {}
    rows = frame[(frame["variant"] == variant) & (frame["status"] == "scored")]
    return {
        f"{case}#{repeat}": (None if pd.isna(value) else float(value))
        for case, repeat, value in zip(rows["case_id"], rows["repeat"], rows[metric], strict=True)
    }
