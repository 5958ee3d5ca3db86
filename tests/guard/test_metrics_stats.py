"""Bootstrap confidence intervals and the paired regression test."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from guard.metrics.stats import mean_ci, paired_comparison


def _finite_or_none(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def test_ci_contains_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 200, 2000):
        result = mean_ci(rng.uniform(0, 1, n).tolist())
        assert result.low is not None and result.high is not None and result.mean is not None
        assert result.low < result.mean < result.high
        widths.append(result.high - result.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] / widths[2] == pytest.approx(math.sqrt(10), rel=0.25)


def test_ci_is_reproducible_and_counts_missing() -> None:
    values: list[float | None] = [0.1, None, 0.9, 0.4, None, 0.7, 1.0, 0.0]
    first, second = mean_ci(values, seed=7), mean_ci(values, seed=7)
    assert first == second
    assert first.n == 6 and first.n_missing == 2 and first.mean == pytest.approx(3.1 / 6)


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_degenerate_samples_never_give_nan(method: str) -> None:
    empty = mean_ci([None, None], method=method)  # type: ignore[arg-type]
    assert (empty.mean, empty.low, empty.high, empty.n, empty.n_missing) == (None, None, None, 0, 2)
    one = mean_ci([0.25], method=method)  # type: ignore[arg-type]
    assert (one.mean, one.low, one.high, one.n) == (0.25, None, None, 1)
    constant = mean_ci([1.0] * 50, method=method)  # type: ignore[arg-type]
    assert (constant.mean, constant.low, constant.high) == (1.0, 1.0, 1.0)
    for sample in ([0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0] * 99 + [0.0]):
        result = mean_ci(sample, method=method)  # type: ignore[arg-type]
        assert result.low is not None and result.high is not None
        assert _finite_or_none(result.mean, result.low, result.high)
        assert result.low <= result.high


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError, match="None"):
        mean_ci([0.5, float("nan")])


def test_ci_coverage_is_close_to_nominal() -> None:
    """Bernoulli(0.3), n = 60: about 95 % of the intervals should contain 0.3."""
    rng = np.random.default_rng(3)
    trials = 200
    covered = 0
    for _ in range(trials):
        result = mean_ci((rng.random(60) < 0.3).astype(float).tolist(), n_resamples=1000)
        assert result.low is not None and result.high is not None
        covered += result.low <= 0.3 <= result.high
    assert 0.88 <= covered / trials <= 0.99


def _cases(n: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {f"case-{i:03d}": float(v) for i, v in enumerate(rng.uniform(0.4, 1.0, n))}


def test_paired_test_detects_a_real_drop() -> None:
    baseline = _cases(200, seed=11)
    candidate = {cid: v - 0.3 if i % 2 == 0 else v
                 for i, (cid, v) in enumerate(baseline.items())}
    result = paired_comparison(baseline, candidate)
    assert result.verdict == "regression"
    assert result.p_value is not None and result.p_value < 0.001
    assert result.diff.mean == pytest.approx(-0.15)
    assert result.diff.high is not None and result.diff.high < 0
    assert result.n_pairs == 200 and len(result.regressed) == 100 and result.improved == ()
    lower_is_better = paired_comparison(baseline, candidate, higher_is_better=False)
    assert lower_is_better.verdict == "improvement" and len(lower_is_better.improved) == 100


def test_paired_test_does_not_flag_noise() -> None:
    baseline = _cases(200, seed=5)
    ids = list(baseline)
    values = list(baseline.values())
    permuted = dict(zip(ids, np.random.default_rng(6).permutation(values).tolist(), strict=True))
    result = paired_comparison(baseline, permuted)
    assert result.verdict == "no_change" and result.p_value is not None and result.p_value > 0.5
    assert result.regressed and result.improved  # cases moved both ways, none of it significant
    flagged = 0
    for seed in range(40):
        noise = np.random.default_rng(100 + seed).normal(0.0, 0.1, len(ids))
        candidate = {cid: baseline[cid] + float(e) for cid, e in zip(ids, noise, strict=True)}
        flagged += paired_comparison(baseline, candidate, n_resamples=999).verdict != "no_change"
    assert flagged <= 6  # about 2 expected at the 5 % level


def test_small_samples_use_the_exact_sign_flip_distribution() -> None:
    diffs = [0.5, -0.1, 0.3, 0.2, 0.0, 0.4, -0.2, 0.6]
    observed = abs(sum(diffs))
    extreme = sum(abs(sum(s * d for s, d in zip(signs, diffs, strict=True))) >= observed - 1e-12
                  for signs in itertools.product((1, -1), repeat=len(diffs)))
    baseline = {str(i): 0.0 for i in range(len(diffs))}
    candidate = {str(i): d for i, d in enumerate(diffs)}
    result = paired_comparison(baseline, candidate)
    assert result.p_value == pytest.approx(extreme / 2 ** len(diffs))


def test_edge_cases() -> None:
    same = {"a": 1.0, "b": 0.0, "c": 0.5}
    result = paired_comparison(same, dict(same))
    assert (result.verdict, result.p_value, result.regressed, result.improved) == (
        "no_change", 1.0, (), ())
    assert (result.diff.mean, result.diff.low, result.diff.high) == (0.0, 0.0, 0.0)
    one = paired_comparison({"a": 1.0}, {"a": 0.0})
    assert one.verdict == "no_change" and one.p_value == 1.0 and one.regressed == ("a",)
    nothing = paired_comparison({"a": None}, {"b": 1.0})
    assert nothing.verdict == "no_data" and nothing.n_pairs == 0 and nothing.n_missing == 2
    partial = paired_comparison({"a": 1.0, "b": None, "c": 0.5, "x": 1.0},
                                {"a": 0.5, "b": 1.0, "c": 0.75, "y": 0.0})
    assert partial.n_pairs == 2 and partial.n_missing == 3
    assert partial.regressed == ("a",) and partial.improved == ("c",)
    assert partial.mean_baseline == 0.75 and partial.mean_candidate == 0.625
