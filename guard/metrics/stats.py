"""Aggregates over cases: a mean with a bootstrap confidence interval, and a paired regression test.

``None`` marks a value that is undefined for a case (no judgments, no expected tools, no
reference): it is left out and counted, never averaged as 0. NaN is refused (ValueError): an
undefined value must be ``None`` by the time it gets here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

Method = Literal["BCa", "percentile"]
Verdict = Literal["regression", "improvement", "no_change", "no_data"]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MeanCI:
    """A mean over ``n`` values with its confidence interval [low, high]; ``n_missing`` values
    were ``None`` and left out. ``mean`` is None when n = 0; ``low``/``high`` are None when n < 2
    (one value says nothing about spread)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    n_missing: int
    confidence: float


def _present(values: Iterable[float | None]) -> tuple[list[float], int]:
    kept: list[float] = []
    missing = 0
    for value in values:
        if value is None:
            missing += 1
        elif not math.isfinite(value):
            raise ValueError(f"non-finite value {value!r}: mark undefined values as None")
        else:
            kept.append(float(value))
    return kept, missing


def _mean(sample: FloatArray, axis: int = -1) -> FloatArray:
    return np.asarray(np.mean(sample, axis=axis), dtype=np.float64)


def _bootstrap(sample: FloatArray, confidence: float, n_resamples: int, seed: int,
               method: Method) -> tuple[float, float]:
    def run(how: Method) -> tuple[float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate-data warnings: handled below
            result = stats.bootstrap((sample,), _mean, n_resamples=n_resamples, batch=256,
                                     vectorized=True, confidence_level=confidence, method=how,
                                     rng=np.random.default_rng(seed))
        return float(result.confidence_interval.low), float(result.confidence_interval.high)

    low, high = run(method)
    if not (math.isfinite(low) and math.isfinite(high)) and method != "percentile":
        low, high = run("percentile")
    return low, high


def mean_ci(
    values: Iterable[float | None],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    method: Method = "BCa",
) -> MeanCI:
    """Mean of the non-None values with a bootstrap confidence interval (``scipy.stats.bootstrap``).

    The interval resamples the cases with replacement ``n_resamples`` times from a generator
    seeded with ``seed`` (same input, same interval). ``method`` "BCa" (bias-corrected and
    accelerated, the default: better coverage for skewed metrics such as MRR) falls back to
    "percentile" when BCa is undefined. Edge cases, never NaN: no value -> mean, low, high None;
    one value -> mean only; all values equal -> low = high = mean (every resample is equal).
    """
    kept, missing = _present(values)
    if not kept:
        return MeanCI(None, None, None, 0, missing, confidence)
    sample = np.asarray(kept, dtype=np.float64)
    mean = float(sample.mean())
    if len(kept) < 2:
        return MeanCI(mean, None, None, 1, missing, confidence)
    if np.all(sample == sample[0]):
        return MeanCI(mean, mean, mean, len(kept), missing, confidence)
    low, high = _bootstrap(sample, confidence, n_resamples, seed, method)
    return MeanCI(mean, low, high, len(kept), missing, confidence)


def sign_flip_p_value(diffs: Sequence[float], *, n_resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test for a mean difference of 0.

    Under the null each difference is as likely to carry either sign; the p-value is the share
    of sign patterns whose |sum| is at least the observed |sum| (with a 1e-9 relative slack for
    float rounding). Exact, over all 2**n patterns, when 2**n <= ``n_resamples``; otherwise
    ``n_resamples`` random patterns from ``seed``, counted as (extreme + 1) / (n_resamples + 1)
    so that it is never 0. No difference, one difference or all zero differences give 1.0.
    """
    sample = np.asarray(diffs, dtype=np.float64)
    n = len(sample)
    if n < 2 or not np.any(sample):
        return 1.0
    total = float(sample.sum())
    threshold = abs(total) * (1 - 1e-9)
    # A pattern is a 0/1 matrix row marking the flipped differences: its sum is total - 2 * flipped.
    if 2**n <= n_resamples:
        flips = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64)
        return float(np.mean(np.abs(total - 2 * (flips @ sample)) >= threshold))
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, n_resamples, 1000):  # batches keep memory at 1000 x n
        size = (min(1000, n_resamples - start), n)
        flips = rng.integers(0, 2, size=size, dtype=np.int8).astype(np.float64)
        extreme += int(np.count_nonzero(np.abs(total - 2 * (flips @ sample)) >= threshold))
    return (extreme + 1) / (n_resamples + 1)


@dataclass(frozen=True)
class PairedComparison:
    """Candidate vs baseline on the cases scored in both; differences are candidate - baseline.

    ``diff`` holds the mean difference and its bootstrap CI; ``p_value`` is two-sided;
    ``regressed``/``improved`` list the case ids whose score got worse/better, largest change
    first; ``n_missing`` counts ids absent from one side or ``None`` on either side.
    """

    n_pairs: int
    n_missing: int
    mean_baseline: float | None
    mean_candidate: float | None
    diff: MeanCI
    p_value: float | None
    verdict: Verdict
    regressed: tuple[str, ...]
    improved: tuple[str, ...]


def paired_comparison(
    baseline: Mapping[str, float | None],
    candidate: Mapping[str, float | None],
    *,
    confidence: float = 0.95,
    higher_is_better: bool = True,
    n_resamples: int = 9999,
    seed: int = 0,
) -> PairedComparison:
    """Decide whether the candidate regressed against the baseline on the same cases.

    Test: the paired sign-flip permutation test on the per-case differences
    (:func:`sign_flip_p_value`). Why this test: it tests the very statistic the gate reports,
    the mean difference; it assumes no normality; and it stays valid with the many zero and
    tied differences that 0/1 metrics (hit@k, exact match) produce, where Wilcoxon's
    signed-rank test must drop or split zeros and tests the pseudo-median, not the mean. Its
    null hypothesis: within each case the two scores are exchangeable (differences symmetric
    about 0).

    Verdict: "regression" when p < 1 - ``confidence`` and the mean difference is worse (lower, or
    higher when ``higher_is_better`` is False); "improvement" when significant and better;
    "no_change" otherwise; "no_data" when no case
    is scored on both sides. The CI is :func:`mean_ci` of the differences.
    """
    scored: list[tuple[str, float, float]] = []
    for cid in sorted(set(baseline) & set(candidate)):
        b, c = baseline[cid], candidate[cid]
        if b is not None and c is not None:
            scored.append((cid, b, c))
    n_missing = len(set(baseline) | set(candidate)) - len(scored)
    diffs = [c - b for _, b, c in scored]
    diff = mean_ci(diffs, confidence=confidence, seed=seed)
    if not scored:
        return PairedComparison(0, n_missing, None, None, diff, None, "no_data", (), ())

    sign = 1.0 if higher_is_better else -1.0
    oriented = [(sign * d, cid) for d, (cid, _, _) in zip(diffs, scored, strict=True)]
    regressed = tuple(cid for d, cid in sorted(oriented) if d < 0)
    improved = tuple(cid for d, cid in sorted(oriented, key=lambda x: (-x[0], x[1])) if d > 0)

    p_value = sign_flip_p_value(diffs, n_resamples=n_resamples, seed=seed)
    verdict: Verdict = "no_change"
    if p_value < 1 - confidence and diff.mean is not None and diff.mean != 0:
        verdict = "regression" if sign * diff.mean < 0 else "improvement"
    return PairedComparison(
        n_pairs=len(scored),
        n_missing=n_missing,
        mean_baseline=float(np.mean([b for _, b, _ in scored])),
        mean_candidate=float(np.mean([c for _, _, c in scored])),
        diff=diff,
        p_value=p_value,
        verdict=verdict,
        regressed=regressed,
        improved=improved,
    )
