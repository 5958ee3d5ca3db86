"""The dashboard's run reader: journals read incrementally, live summaries refreshed in the
background, finished runs summarised exactly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guard.domain import CaseResult, CaseStatus
from guard.golden import GoldenCase, save_jsonl
from guard.journal import CASE_FINISHED, Journal
from guard.runs import RunStore
from guard.service import GuardService
from guard.spec import load_spec
from guard.web.reader import RunReader, RunTail

CASES = 40
REFRESH_S = 1.0  # long enough that a busy machine does not cross it between two calls


def _result(run_id: str, index: int) -> dict[str, object]:
    hit = 1.0 if index % 4 else 0.0
    return CaseResult(run_id=run_id, variant="v", case_id=f"c{index:03d}", repeat=0,
                      tenant="hr", tags=(), status=CaseStatus.SCORED,
                      metrics={"retrieval.hit@1": hit}).to_dict()


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[GuardService, str]:
    cases = [GoldenCase(id=f"c{i:03d}", tenant="hr", question=f"q{i}?",
                        relevant_doc_ids={"d": 1}) for i in range(CASES)]
    save_jsonl(cases, tmp_path / "golden.jsonl")
    (tmp_path / "spec.toml").write_text(
        'name = "reader"\ndataset = "golden.jsonl"\ningest = false\n[run]\nragas = false\n'
        '[[variants]]\nname = "v"\nsystem = "http"\nurl = "http://127.0.0.1:9/"\n')
    service = GuardService(RunStore(tmp_path / "runs"), None)
    return service, service.prepare(load_spec(tmp_path / "spec.toml"))


@pytest.fixture
def reader(prepared: tuple[GuardService, str]) -> Iterator[RunReader]:
    reader = RunReader(prepared[0], live_refresh_s=REFRESH_S)
    yield reader
    reader.close()


def _hit_mean(summary: dict[str, object]) -> tuple[float, int]:
    rows = [s for s in summary["summaries"] if s["metric"] == "retrieval.hit@1"]  # type: ignore[attr-defined,index]
    return rows[0]["mean"], rows[0]["n"]


def test_a_tail_reads_only_complete_lines_and_keeps_what_it_read(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal.open(path, "r1")
    tail = RunTail(path)
    journal.append("run_started", {"total": 3})
    journal.append(CASE_FINISHED, _result("r1", 1))
    state, results = tail.look()
    assert (state.done, state.total, state.last_id, len(results)) == (1, 3, 2, 1)

    with path.open("ab") as fh:  # a line being written: no newline yet
        fh.write(b'{"id": 3, "run_id": "r1", "type": "progress"')
    state, results = tail.look()
    assert (state.done, state.last_id) == (1, 2)
    journal.close()


def test_live_summaries_are_served_at_once_and_refreshed_in_the_background(
    prepared: tuple[GuardService, str], reader: RunReader,
) -> None:
    service, run_id = prepared
    journal = Journal.open(service.store.journal_path(run_id), run_id)
    journal.append("run_started", {"total": CASES})
    for index in range(10):
        journal.append(CASE_FINISHED, _result(run_id, index))
    journal.sync()

    first = reader.summary(run_id)  # the first look computes
    assert _hit_mean(first)[1] == 10
    for index in range(10, CASES):
        journal.append(CASE_FINISHED, _result(run_id, index))
    journal.sync()
    assert reader.summary(run_id) is first  # within live_refresh_s: the same summary
    assert reader.info(run_id).done == CASES  # listings are never stale

    time.sleep(REFRESH_S + 0.05)
    assert reader.summary(run_id) is first  # stale: served at once anyway, refresh started
    deadline = time.monotonic() + 10
    while _hit_mean(reader.summary(run_id))[1] != CASES:
        assert time.monotonic() < deadline, "the background refresh never landed"
        time.sleep(0.05)

    journal.append("run_finished", {"status": "finished"})
    journal.close()
    final = reader.summary(run_id)  # no writer: exact, from the whole journal
    assert _hit_mean(final) == (pytest.approx(30 / 40), CASES)
    assert final["progress"] == {} and final["last_event_id"] == CASES + 2
    assert reader.info(run_id).status == "finished"


def test_the_tails_view_agrees_with_a_full_read_across_a_resume(
    prepared: tuple[GuardService, str], reader: RunReader,
) -> None:
    service, run_id = prepared
    path = service.store.journal_path(run_id)
    journal = Journal.open(path, run_id)
    journal.append("run_started", {"total": CASES})
    journal.append(CASE_FINISHED, _result(run_id, 0))
    journal.append("run_finished", {"status": "cancelled"})
    journal.close()
    assert reader.info(run_id) == service.store.info(run_id)

    journal = Journal.open(path, run_id)  # resumed
    journal.append("run_started", {"total": CASES, "resumed": 1})
    journal.append(CASE_FINISHED, _result(run_id, 1))
    assert reader.info(run_id) == service.store.info(run_id)
    assert reader.info(run_id).status == "running"
    journal.close()


def test_derived_pages_lag_a_growing_journal_by_at_most_the_refresh_interval(
    prepared: tuple[GuardService, str], reader: RunReader,
) -> None:
    service, run_id = prepared
    journal = Journal.open(service.store.journal_path(run_id), run_id)
    journal.append(CASE_FINISHED, _result(run_id, 0))

    def ids() -> list[str]:
        return reader.derived(run_id, "ids", lambda cases: [c.case_id for c in cases])

    assert ids() == ["c000"]
    journal.append(CASE_FINISHED, _result(run_id, 1))
    assert ids() == ["c000"]  # within live_refresh_s of the last page
    time.sleep(REFRESH_S + 0.05)
    assert ids() == ["c000", "c001"]
    journal.append(CASE_FINISHED, _result(run_id, 2))
    journal.append("run_finished", {"status": "finished"})
    assert ids() == ["c000", "c001", "c002"]  # finished: never stale
    journal.close()
