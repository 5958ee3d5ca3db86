"""Summaries depend on the cases, not on the order the journal happened to record them in."""

from __future__ import annotations

import pandas as pd

from guard.domain import CaseResult, CaseStatus
from guard.results import case_row, summarize


def _frame() -> pd.DataFrame:
    rows = [case_row(CaseResult(
        run_id="r", variant="v", case_id=f"c{i:03d}", repeat=0, tenant="hr", tags=(),
        status=CaseStatus.SCORED, metrics={"answer.f1": ((i * 37) % 11) / 10}))
        for i in range(60)]
    return pd.DataFrame(rows)


def test_the_same_cases_in_another_order_give_the_same_interval() -> None:
    frame = _frame()
    shuffled = frame.sample(frac=1.0, random_state=7)
    assert list(shuffled["case_id"]) != list(frame["case_id"])

    first, second = summarize(frame), summarize(shuffled)

    assert [s.ci for s in first] == [s.ci for s in second]
    assert first[0].ci.low is not None and first[0].ci.low < first[0].ci.mean
