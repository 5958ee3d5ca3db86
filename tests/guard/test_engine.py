"""The run engine against a scripted system under test: statuses, retries, limits, cache,
repeats, cancellation and resume, and the event stream's ids and durability."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fakes import (
    Answer,
    Bug,
    EventLog,
    Fail,
    Flaky,
    Hang,
    ScriptedSystem,
    make_case,
    make_cases,
    run_engine,
    settings,
    tmpfs,
)

from guard.cache import ResponseCache, cache_key
from guard.domain import CaseStatus, Event, SutResponse
from guard.engine import RunEngine, Variant, _prompt
from guard.golden import GoldenCase
from guard.journal import CASE_FINISHED, Journal, read_events
from guard.limits import RateLimiter, RetryPolicy
from guard.service import score_pool
from rag.errors import StorageError


def as_json(event: Event) -> dict[str, Any]:
    """An event as the journal stores it (tuples become lists)."""
    return json.loads(json.dumps(event.to_dict()))


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "run-test" / "journal.jsonl"


def test_every_case_ends_with_exactly_one_status(journal_path: Path) -> None:
    system = ScriptedSystem({
        "ok": Answer(),
        "flaky": Flaky(times=2, retry_after=0.0),
        "slow": Hang(30),
        "refused": Fail("HTTP 400 from the endpoint: bad request"),
        "buggy": Bug("'choices'"),
    })
    cases = [make_case(cid) for cid in ("ok", "flaky", "slow", "refused", "buggy")]
    variant = Variant("v", system, settings(timeout_s=0.3))

    outcome = asyncio.run(run_engine(journal_path, cases, [variant]))

    assert outcome.status == "finished"
    by_id = {r.case_id: r for r in outcome.results}
    assert Counter(r.case_id for r in outcome.results) == {c.id: 1 for c in cases}
    assert {cid: r.status for cid, r in by_id.items()} == {
        "ok": CaseStatus.SCORED, "flaky": CaseStatus.SCORED, "slow": CaseStatus.TIMEOUT,
        "refused": CaseStatus.ERROR, "buggy": CaseStatus.ERROR,
    }
    for result in by_id.values():
        if result.status is CaseStatus.SCORED:
            assert result.error is None and result.metrics
        else:
            assert result.error and result.metrics == {}
    assert "0.3 s" in (by_id["slow"].error or "")
    assert "ProviderError" in (by_id["refused"].error or "")
    assert "bad request" in (by_id["refused"].error or "")
    assert "KeyError" in (by_id["buggy"].error or "")
    assert by_id["flaky"].attempts == 3


def test_retries_are_counted_and_each_retry_event_carries_its_wait(journal_path: Path) -> None:
    system = ScriptedSystem({"a": Flaky(times=2), "b": Flaky(times=1)})
    policy = RetryPolicy(max_retries=4, base_delay=0.01, max_delay=0.05)
    variant = Variant("v", system, settings(retry=policy))

    outcome = asyncio.run(run_engine(journal_path, [make_case("a"), make_case("b")], [variant]))

    retries = outcome.log.of_type("retry")
    assert Counter(e.data["case_id"] for e in retries) == {"a": 2, "b": 1}
    for event in retries:
        assert 0 <= event.data["wait_s"] <= 0.05
        assert event.data["variant"] == "v" and event.data["error"]
    assert [e.data["attempt"] for e in retries if e.data["case_id"] == "a"] == [1, 2]
    assert {r.case_id: r.attempts for r in outcome.results} == {"a": 3, "b": 2}
    final = outcome.log.of_type("run_finished")[0]
    assert final.data["retries"] == 3


def test_retry_after_from_the_server_is_honoured(journal_path: Path) -> None:
    # A base delay of 30 s would time the test out: only Retry-After (0.25 s) can be in play.
    system = ScriptedSystem({"a": Flaky(times=1, retry_after=0.25)})
    variant = Variant("v", system, settings(retry=RetryPolicy(base_delay=30, max_delay=60)))

    outcome = asyncio.run(run_engine(journal_path, [make_case("a")], [variant]))

    first, second = system.call_times("a")
    assert 0.25 <= second - first < 1.0
    (retry,) = outcome.log.of_type("retry")
    assert retry.data["retry_after"] == 0.25 and retry.data["wait_s"] == 0.25
    assert outcome.results[0].status is CaseStatus.SCORED


def test_retries_give_up_after_the_policy_allows(journal_path: Path) -> None:
    system = ScriptedSystem({"a": Flaky(times=10, retry_after=0.0)})
    variant = Variant("v", system, settings(retry=RetryPolicy(max_retries=2)))

    outcome = asyncio.run(run_engine(journal_path, [make_case("a")], [variant]))

    (result,) = outcome.results
    assert result.status is CaseStatus.ERROR
    assert "RetryableProviderError" in (result.error or "")
    assert system.call_count("a") == 3
    assert result.attempts == 3
    assert len(outcome.log.of_type("retry")) == 2


def test_concurrency_bound_is_respected_and_reached(journal_path: Path) -> None:
    system = ScriptedSystem(default=Answer(delay_s=0.02))
    variant = Variant("v", system, settings(concurrency=5))

    outcome = asyncio.run(run_engine(journal_path, make_cases(40), [variant]))

    assert system.max_in_flight == 5
    assert len(outcome.results) == 40


def test_each_variant_has_its_own_concurrency_bound(journal_path: Path) -> None:
    first = ScriptedSystem(default=Answer(delay_s=0.02))
    second = ScriptedSystem(default=Answer(delay_s=0.02))
    variants = [Variant("a", first, settings(concurrency=2)),
                Variant("b", second, settings(concurrency=6))]

    outcome = asyncio.run(run_engine(journal_path, make_cases(24), variants))

    assert (first.max_in_flight, second.max_in_flight) == (2, 6)
    assert Counter(r.variant for r in outcome.results) == {"a": 24, "b": 24}


def test_workers_start_staggered_so_requests_do_not_leave_in_one_burst(
    journal_path: Path,
) -> None:
    system = ScriptedSystem(default=Answer(delay_s=0.5))
    variant = Variant("v", system, settings(concurrency=4, stagger_s=0.05))

    asyncio.run(run_engine(journal_path, make_cases(4), [variant]))

    starts = sorted(at for _, at in system.calls)
    # The last worker sleeps 3 x 50 ms before its first request; the first does not sleep.
    assert starts[-1] - starts[0] >= 0.149
    assert all(later - earlier > 0.01 for earlier, later in itertools.pairwise(starts))


def test_a_slow_judge_does_not_hold_the_systems_request_slots(journal_path: Path) -> None:
    """The judge scores case 1 only once the system has been asked for all four cases: an
    engine that scored inside the request slot (concurrency 2) would wait forever."""
    cases = make_cases(4)
    all_asked = asyncio.Event()
    system = ScriptedSystem(on_call=lambda _, calls: all_asked.set() if calls == 4 else None)

    class WaitingJudge:
        async def score(self, case: GoldenCase, response: SutResponse) -> dict[str, float | None]:
            await all_asked.wait()
            return {"judge.faithfulness": 1.0}

    variant = Variant("v", system, settings(concurrency=2, timeout_s=3.0))
    outcome = asyncio.run(run_engine(journal_path, cases, [variant], judge=WaitingJudge()))

    assert [r.status for r in outcome.results] == [CaseStatus.SCORED] * 4
    assert all(r.metrics["judge.faithfulness"] == 1.0 for r in outcome.results)


def test_answers_waiting_for_scores_are_bounded_by_the_concurrency(journal_path: Path) -> None:
    """Scoring is stuck until 0.3 s after the 4th request: 2 answers hold the 2 scoring
    slots and each of the 2 workers holds one more, so no 5th request leaves before then."""
    release = asyncio.Event()

    def on_call(case: GoldenCase, calls: int) -> None:
        if calls == 4:
            asyncio.get_running_loop().call_later(0.3, release.set)

    class StuckJudge:
        async def score(self, case: GoldenCase, response: SutResponse) -> dict[str, float | None]:
            await release.wait()
            return {}

    system = ScriptedSystem(on_call=on_call)
    variant = Variant("v", system, settings(concurrency=2))
    outcome = asyncio.run(run_engine(journal_path, make_cases(10), [variant],
                                     judge=StuckJudge()))

    assert len(system.calls) == 10 and len(outcome.results) == 10
    times = [at for _, at in system.calls]
    assert times[4] - times[3] >= 0.29


def test_rate_limiter_spaces_requests_once_the_burst_is_spent() -> None:
    async def scenario() -> tuple[float, list[float], list[float]]:
        limiter = RateLimiter(requests_per_minute=600)  # 10 a second, after a burst of 600
        started = time.monotonic()
        for _ in range(600):
            assert await limiter.acquire() == 0.0
        burst = time.monotonic() - started
        waits, times = [], []
        for _ in range(5):
            waits.append(await limiter.acquire())
            times.append(time.monotonic())
        return burst, waits, times

    burst, waits, times = asyncio.run(scenario())
    assert burst < 0.5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.09 <= gap < 0.5 for gap in gaps), gaps  # one request per 0.1 s
    assert all(0.09 <= wait <= 0.11 for wait in waits[1:]), waits


def test_rate_limited_calls_are_spaced_and_reported(journal_path: Path) -> None:
    rpm, extra = 120, 4  # a burst of 120 (the bucket starts full), then one call per 0.5 s
    system = ScriptedSystem()
    variant = Variant("v", system, settings(concurrency=8, requests_per_minute=rpm))

    outcome = asyncio.run(run_engine(journal_path, make_cases(rpm + extra), [variant]))

    times = sorted(at for _, at in system.calls)
    for index, at in enumerate(times):  # never more calls than the bucket allows
        assert index + 1 <= rpm + (at - times[0]) * rpm / 60 + 1e-6
    backoffs = outcome.log.of_type("backoff")
    assert backoffs  # the refill during the burst cannot cover all four extra calls
    assert all(e.data["reason"] == "rate limit" and 0 < e.data["wait_s"] <= 0.5
               for e in backoffs)
    assert len(outcome.results) == rpm + extra


def test_a_second_run_is_served_from_the_cache_with_identical_metrics(tmp_path: Path) -> None:
    cases = make_cases(12)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    first_system, second_system = ScriptedSystem(), ScriptedSystem()
    try:
        first = asyncio.run(run_engine(tmp_path / "one.jsonl", cases,
                                       [Variant("v", first_system, settings())], cache=cache))
        second = asyncio.run(run_engine(tmp_path / "two.jsonl", cases,
                                        [Variant("v", second_system, settings())], cache=cache))
    finally:
        cache.close()

    assert len(first_system.calls) == 12
    assert second_system.calls == []
    assert {r.case_id: r.metrics for r in first.results} == {
        r.case_id: r.metrics for r in second.results}
    assert all(r.cached and r.attempts == 0 and r.cost_usd == 0 for r in second.results)
    assert not any(r.cached for r in first.results)


def test_a_cache_that_cannot_be_written_costs_savings_not_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    class FullCache(ResponseCache):
        async def put(self, key: str, response: SutResponse) -> None:
            raise StorageError("cannot write response cache: database or disk is full")

    cache = FullCache(tmp_path / "cache.sqlite")
    variant = Variant("v", ScriptedSystem(), settings())
    with caplog.at_level("WARNING", logger="guard.engine"):
        outcome = asyncio.run(run_engine(tmp_path / "j.jsonl", make_cases(6), [variant],
                                         cache=cache))
    cache.close()

    assert [r.status for r in outcome.results] == [CaseStatus.SCORED] * 6
    warnings = [r for r in caplog.records if "response cache" in r.getMessage()]
    assert len(warnings) == 1 and "disk is full" in warnings[0].getMessage()


def test_repeat_asks_every_case_n_times_under_distinct_cache_keys(tmp_path: Path) -> None:
    cases = make_cases(4)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    system = ScriptedSystem(default=Answer(per_call=True))
    try:
        outcome = asyncio.run(run_engine(tmp_path / "run.jsonl", cases,
                                         [Variant("v", system, settings(repeat=3))],
                                         cache=cache))
        again = ScriptedSystem(default=Answer(per_call=True))
        replay = asyncio.run(run_engine(tmp_path / "replay.jsonl", cases,
                                        [Variant("v", again, settings(repeat=3))],
                                        cache=cache))
    finally:
        cache.close()

    assert Counter(cid for cid, _ in system.calls) == {c.id: 3 for c in cases}
    assert sorted(r.key for r in outcome.results) == sorted(
        ("v", c.id, repeat) for c in cases for repeat in range(3))
    keys = {cache_key(system.describe(), _prompt(c), repeat) for c in cases for repeat in range(3)}
    assert len(keys) == 12
    answers = {r.key: r.response.answer for r in outcome.results if r.response}
    assert len(set(answers.values())) == 12  # three different answers per case, all kept
    assert again.calls == []
    assert {r.key: r.response.answer for r in replay.results if r.response} == answers


def test_cancel_stops_early_and_resume_finishes_the_rest_once_each(journal_path: Path) -> None:
    cases = make_cases(60)
    engines: list[RunEngine] = []

    def cancel_after_ten(_case: object, calls: int) -> None:
        if calls == 10:
            engines[0].cancel()

    system = ScriptedSystem(default=Answer(delay_s=0.01), on_call=cancel_after_ten)
    first = asyncio.run(run_engine(journal_path, cases, [Variant("v", system, settings())],
                                   engine_ready=engines.append))
    assert first.status == "cancelled"
    assert 0 < len(first.results) < 20
    assert first.log.of_type("run_finished")[0].data["status"] == "cancelled"

    resumed_system = ScriptedSystem(default=Answer(delay_s=0.01))
    second = asyncio.run(run_engine(journal_path, cases,
                                    [Variant("v", resumed_system, settings())]))

    assert second.status == "finished"
    assert Counter(r.case_id for r in second.results) == {c.id: 1 for c in cases}
    done_first = {r.case_id for r in first.results}
    assert not done_first & {cid for cid, _ in resumed_system.calls}  # never asked again
    started = second.log.of_type("run_started")[0]
    assert started.data["resumed"] == len(done_first)


def test_cancel_does_not_wait_for_cases_in_flight(journal_path: Path) -> None:
    engines: list[RunEngine] = []

    def cancel_on_third(_case: object, calls: int) -> None:
        if calls == 3:
            asyncio.get_running_loop().call_later(0.05, engines[0].cancel)

    system = ScriptedSystem(default=Hang(30), on_call=cancel_on_third)
    started = time.monotonic()
    outcome = asyncio.run(run_engine(journal_path, make_cases(6),
                                     [Variant("v", system, settings(concurrency=3,
                                                                    timeout_s=20))],
                                     engine_ready=engines.append))

    assert time.monotonic() - started < 5
    assert outcome.status == "cancelled"
    assert outcome.results == []  # dropped, to be done again on resume


def test_event_ids_run_from_one_without_gaps_and_match_the_journal(journal_path: Path) -> None:
    variants = [
        Variant(name, ScriptedSystem({"case-0003": Flaky(times=1, retry_after=0.0)},
                                     default=Answer(delay_s=0.002)), settings())
        for name in ("a", "b")
    ]

    outcome = asyncio.run(run_engine(journal_path, make_cases(30), variants,
                                     check_journal_first=True))

    heard = outcome.log.events
    assert [e.id for e in heard] == list(range(1, len(heard) + 1))
    assert [e.to_dict() for e in read_events(journal_path)] == [as_json(e) for e in heard]
    assert outcome.log.heard_before_journaled == []
    types = Counter(e.type for e in heard)
    assert types[CASE_FINISHED] == 60 and types["run_started"] == types["run_finished"] == 1
    assert types["retry"] == 2
    assert heard[0].type == "run_started" and heard[-1].type == "run_finished"


class SyncRecordingJournal(Journal):
    """A real journal that remembers up to which event id each fsync reached."""

    synced_through = 0

    def sync(self) -> None:
        through = self.last_id  # appends made before this call are covered by it
        super().sync()
        self.synced_through = through


def test_no_listener_hears_of_a_case_before_its_fsync(journal_path: Path) -> None:
    journal = SyncRecordingJournal.open(journal_path, "run-test")
    unsynced: list[int] = []

    def listener(event: Event) -> None:
        if event.type == CASE_FINISHED and event.id > journal.synced_through:
            unsynced.append(event.id)

    async def scenario() -> None:
        engine = RunEngine(journal, listeners=[listener])
        await engine.run(make_cases(50), [Variant("v", ScriptedSystem(), settings(
            concurrency=16))], {})

    try:
        asyncio.run(scenario())
    finally:
        journal.close()
    assert unsynced == []
    assert journal.synced_through == journal.last_id


def test_event_ids_continue_across_a_resume(journal_path: Path) -> None:
    engines: list[RunEngine] = []

    def cancel_after_five(_case: object, calls: int) -> None:
        if calls == 5:
            engines[0].cancel()

    cases = make_cases(20)
    system = ScriptedSystem(default=Answer(delay_s=0.005), on_call=cancel_after_five)
    first = asyncio.run(run_engine(journal_path, cases, [Variant("v", system, settings())],
                                   engine_ready=engines.append))
    second = asyncio.run(run_engine(journal_path, cases,
                                    [Variant("v", ScriptedSystem(), settings())]))

    heard = first.log.events + second.log.events
    assert [e.id for e in heard] == list(range(1, len(heard) + 1))
    assert [e.to_dict() for e in read_events(journal_path)] == [as_json(e) for e in heard]


def test_the_engine_runs_inside_an_already_running_loop(journal_path: Path) -> None:
    async def host() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        beat = asyncio.create_task(ticker())
        system = ScriptedSystem(default=Answer(delay_s=0.01))
        outcome = await run_engine(journal_path, make_cases(30),
                                   [Variant("v", system, settings())])
        beat.cancel()
        return outcome.status, ticks

    status, ticks = asyncio.run(host())
    assert status == "finished"
    assert ticks >= 10  # the host loop kept running while the engine worked


def test_progress_events_report_counts_and_means(journal_path: Path) -> None:
    system = ScriptedSystem({"case-0002": Fail()})
    outcome = asyncio.run(run_engine(journal_path, make_cases(5),
                                     [Variant("v", system, settings())]))

    last = outcome.log.of_type("progress")[-1].data
    assert (last["done"], last["total"], last["errors"]) == (5, 5, 1)
    assert "v/answer.f1" in last["means"]


@pytest.mark.integration
@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs mounts are Linux only")
def test_a_full_disk_stops_the_run_with_a_storage_error_and_a_sound_journal(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "small", "size=64k") as folder:
        path = folder / "journal.jsonl"
        system = ScriptedSystem(default=Answer(doc_ids=tuple(f"doc-{i}" for i in range(12))))
        log = EventLog(path)

        with pytest.raises(StorageError, match="the disk is full"):
            asyncio.run(run_engine(path, make_cases(400), [Variant("v", system, settings())],
                                   log=log))

        events = list(read_events(path))
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        assert log.heard_before_journaled == []
        assert [e.id for e in log.events] == [e.id for e in events][: len(log.events)]
        assert 0 < sum(e.type == CASE_FINISHED for e in events) < 400
        assert len(system.calls) < 400  # it stopped, rather than failing every case


@pytest.mark.integration
def test_scoring_in_a_process_pool_gives_the_same_metrics(tmp_path: Path) -> None:
    cases = make_cases(16)
    in_loop = asyncio.run(run_engine(tmp_path / "loop.jsonl", cases,
                                     [Variant("v", ScriptedSystem(), settings())]))
    pool = score_pool(1)  # as `guard run` builds it for `score_workers = 1`
    assert pool is not None
    with pool:
        pooled = asyncio.run(run_engine(tmp_path / "pool.jsonl", cases,
                                        [Variant("v", ScriptedSystem(), settings())],
                                        score_pool=pool))

    assert {r.case_id: r.metrics for r in pooled.results} == {
        r.case_id: r.metrics for r in in_loop.results}
    assert all(r.status is CaseStatus.SCORED for r in pooled.results)
