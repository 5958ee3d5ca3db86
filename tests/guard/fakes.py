"""Hand-written fakes for the engine's tests: a scripted system under test and an event log.

`ScriptedSystem` implements the `SystemUnderTest` port. What it does for a case is scripted by
case id (`Answer`, `Flaky`, `Hang`, `Fail`, `Bug`); every call is recorded with its start time,
and the number of calls in flight is tracked, so tests can check retries, spacing and bounds.
Answers are a pure function of the case (and, with `Answer.per_call`, of the call number), so
two runs of the same cases score the same.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from guard.cache import ResponseCache
from guard.domain import CaseResult, Context, Event, SutResponse
from guard.engine import RunEngine, RunSettings, Variant
from guard.golden import GoldenCase
from guard.journal import Journal, read_events, read_results
from guard.scoring import Judge
from rag.errors import ProviderError, RetryableProviderError


@dataclass(frozen=True)
class Answer:
    """Answer the case after `delay_s`; `per_call` appends the call number to the answer."""

    delay_s: float = 0.0
    doc_ids: tuple[str, ...] = ("doc-a", "doc-b")
    per_call: bool = False


@dataclass(frozen=True)
class Flaky:
    """Raise `RetryableProviderError(retry_after=...)` `times` times, then do `then`."""

    times: int
    retry_after: float | None = None
    then: Answer = Answer()


@dataclass(frozen=True)
class Hang:
    """Sleep for `seconds` (past any test timeout), then answer."""

    seconds: float = 30.0


@dataclass(frozen=True)
class Fail:
    """Raise a non-retryable `ProviderError`."""

    message: str = "HTTP 400 from the endpoint: bad request"


@dataclass(frozen=True)
class Bug:
    """Raise a plain exception, as a buggy adapter would."""

    message: str = "'choices'"


Behaviour = Answer | Flaky | Hang | Fail | Bug


@dataclass
class ScriptedSystem:
    """A system under test whose behaviour per case id is scripted (default: `default`)."""

    script: Mapping[str, Behaviour] = field(default_factory=dict)
    default: Behaviour = Answer()
    name: str = "scripted"
    on_call: Callable[[GoldenCase, int], None] | None = None
    calls: list[tuple[str, float]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    closed: bool = False
    _counts: Counter[str] = field(default_factory=Counter)

    def describe(self) -> dict[str, Any]:
        return {"system": self.name}

    async def respond(self, case: GoldenCase) -> SutResponse:
        self._counts[case.id] += 1
        number = self._counts[case.id]
        self.calls.append((case.id, time.monotonic()))
        if self.on_call is not None:
            self.on_call(case, len(self.calls))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._behave(self.script.get(case.id, self.default), case, number)
        finally:
            self.in_flight -= 1

    async def _behave(self, behaviour: Behaviour, case: GoldenCase, number: int) -> SutResponse:
        if isinstance(behaviour, Flaky):
            if number <= behaviour.times:
                raise RetryableProviderError("HTTP 429 from the endpoint",
                                             retry_after=behaviour.retry_after)
            behaviour = behaviour.then
        if isinstance(behaviour, Hang):
            await asyncio.sleep(behaviour.seconds)
            behaviour = Answer()
        if isinstance(behaviour, Fail):
            raise ProviderError(behaviour.message)
        if isinstance(behaviour, Bug):
            raise KeyError(behaviour.message)
        await asyncio.sleep(behaviour.delay_s)
        return answer_for(case, behaviour, number)

    def call_count(self, case_id: str) -> int:
        return self._counts[case_id]

    def call_times(self, case_id: str) -> list[float]:
        return [at for cid, at in self.calls if cid == case_id]

    async def aclose(self) -> None:
        self.closed = True


def answer_for(case: GoldenCase, answer: Answer, number: int) -> SutResponse:
    """The deterministic response to `case`: its reference answer, half of it for odd ids."""
    reference = case.reference_answer or ""
    words = reference.split()
    text = " ".join(words[: len(words) // 2]) if case.id[-1] in "13579" else reference
    if answer.per_call:
        text = f"{text} (call {number})"
    contexts = tuple(
        Context(f"{doc}#0", doc, f"{doc}: {reference}", 1.0 / rank, rank)
        for rank, doc in enumerate(answer.doc_ids, start=1)
    )
    return SutResponse(answer=text, contexts=contexts, prompt_tokens=40, completion_tokens=8,
                       model="scripted-1")


def make_case(case_id: str, **fields: Any) -> GoldenCase:
    """A plain answerable case whose relevant document is `doc-a`."""
    values: dict[str, Any] = {
        "tenant": "hr",
        "question": f"How many leave days does {case_id} get?",
        "reference_answer": f"Employees in {case_id} get 25 days of annual leave",
        "relevant_doc_ids": {"doc-a": 1},
        "reference_contexts": (f"Employees in {case_id} get 25 days of annual leave.",),
    }
    values.update(fields)
    return GoldenCase(id=case_id, **values)


def make_cases(count: int, prefix: str = "case") -> list[GoldenCase]:
    return [make_case(f"{prefix}-{i:04d}") for i in range(count)]


@dataclass
class EventLog:
    """A listener that keeps every event it hears, and can check the journal had it first."""

    journal_path: Path | None = None
    events: list[Event] = field(default_factory=list)
    heard_before_journaled: list[int] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        if self.journal_path is not None:
            on_disk = [e.id for e in read_events(self.journal_path, after_id=event.id - 1)]
            if event.id not in on_disk:
                self.heard_before_journaled.append(event.id)
        self.events.append(event)

    def of_type(self, type_: str) -> list[Event]:
        return [e for e in self.events if e.type == type_]


@dataclass
class Outcome:
    status: str
    log: EventLog
    results: list[CaseResult]


def settings(**overrides: Any) -> RunSettings:
    """Engine settings for tests: ragas off (fast), short timeout, no progress throttling."""
    values: dict[str, Any] = {"concurrency": 4, "timeout_s": 5.0, "ragas": False,
                              "progress_interval_s": 0.0}
    values.update(overrides)
    return RunSettings(**values)


async def run_engine(
    journal_path: Path,
    cases: Sequence[GoldenCase],
    variants: Iterable[Variant],
    *,
    cache: ResponseCache | None = None,
    engine_ready: Callable[[RunEngine], None] | None = None,
    check_journal_first: bool = False,
    log: EventLog | None = None,
    score_pool: Executor | None = None,
    judge: Judge | None = None,
) -> Outcome:
    """Open the journal, run (or resume) the cases, close it; return what was heard."""
    log = log or EventLog(journal_path if check_journal_first else None)
    journal = Journal.open(journal_path, "run-test")
    try:
        engine = RunEngine(journal, cache, judge, listeners=[log], score_pool=score_pool)
        if engine_ready is not None:
            engine_ready(engine)
        status = await engine.run(cases, list(variants), {"experiment": "test"})
    finally:
        journal.close()
    return Outcome(status, log, list(read_results(journal_path)))


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs on `folder` for the block; skip the test where mounting is not allowed.

    Root ignores permission bits, so a read-only or full file system is the honest way to make
    a journal unwritable: `options` such as "ro,size=64k" or "size=64k".
    """
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}), "
                    "so read-only and full-disk journals are not exercised")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
