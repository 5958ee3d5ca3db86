"""The async validation engine: every case of every variant, bounded, rate-limited, retried,
timed out, cached, scored and journaled exactly once.

Safe to call from a running event loop (a server, a notebook): it creates no loop of its own.
Memory stays flat in the number of cases: workers pull cases from an iterator, and nothing
per case is kept after it is journaled except running sums for progress (a resumed run also
keeps the keys of the cases it skips). Case ids must be unique within `cases`, as the dataset
loader guarantees.

A worker asks the system for one case after another; each answer is scored in a task of its
own (at most `concurrency` of them per variant), so scoring, and above all an LLM judge, never
holds a request slot. CPU-bound scoring (ragas' non-LLM metrics cost about a millisecond a
case) can run in a process pool passed as `score_pool`, so the loop only does I/O; the judge's
calls stay on the loop. Workers start `stagger_s` apart: started together, they would send
their requests in waves that the provider and this loop serve one by one.

Events are written by group commit (`_Publisher`): each is appended to the journal as it
happens, a worker thread fsyncs the batch of case results that finished meanwhile, and only
then do listeners hear of them, in id order. One fsync covers many cases, and neither the
event loop nor a worker waits for one, yet no case result is heard of before it is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from guard.cache import ResponseCache, cache_key
from guard.domain import CaseResult, CaseStatus, Event, SutResponse
from guard.golden import GoldenCase
from guard.journal import CASE_FINISHED, Journal, read_events
from guard.limits import RateLimiter, RetryPolicy
from guard.ports import SystemUnderTest
from guard.scoring import Judge, Scores, score_case
from rag.errors import RetryableProviderError, StorageError, TruthGuardError

logger = logging.getLogger("guard.engine")

Listener = Callable[[Event], None]
T = TypeVar("T")
Key = tuple[str, str, int]


@dataclass(frozen=True)
class RunSettings:
    concurrency: int = 8
    timeout_s: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    requests_per_minute: float = 0
    tokens_per_minute: float = 0
    repeat: int = 1
    ks: tuple[int, ...] = (1, 3, 5, 10)
    ragas: bool = True
    price_prompt_per_mtok: float = 0.0  # USD per million prompt tokens
    price_completion_per_mtok: float = 0.0
    progress_interval_s: float = 0.5
    # Pause between starting one worker and the next. Workers that all start at once send a
    # burst that the provider and this event loop then serve one by one, wave after wave, so
    # every request waits for the rest of its wave; spread starts keep requests evenly spaced.
    # A few ms (more than the client's CPU per request) suffices whatever the latency.
    stagger_s: float = 0.005


@dataclass
class Variant:
    name: str
    system: SystemUnderTest
    settings: RunSettings = RunSettings()


@dataclass
class _Progress:
    total: int
    resumed: int = 0  # cases already journaled when this run (re)started
    done: int = 0
    errors: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    last_emit: float = 0.0

    def add(self, result: CaseResult) -> None:
        self.done += 1
        self.errors += result.status is not CaseStatus.SCORED
        self.cost_usd += result.cost_usd
        for name, value in result.metrics.items():
            if value is not None:
                key = f"{result.variant}/{name}"
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        fresh = self.done - self.resumed
        rate = fresh / elapsed
        remaining = self.total - self.done
        return {
            "done": self.done,
            "total": self.total,
            "errors": self.errors,
            "retries": self.retries,
            "throughput_per_s": round(rate, 3),
            "eta_s": round(remaining / rate, 1) if rate > 0 else None,
            "elapsed_s": round(elapsed, 3),
            "cost_usd": round(self.cost_usd, 6),
            "means": {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)},
        }


@dataclass
class _Tally:
    """Calls made to the system under test for one case, kept even when the case fails."""

    attempts: int = 0


@dataclass
class _Answer:
    """A case between its answer and its score."""

    case: GoldenCase
    repeat: int
    started: float  # time.monotonic()
    deadline: float  # the loop's clock: the per-case timeout covers answering and scoring
    tally: _Tally = field(default_factory=_Tally)
    response: SutResponse | None = None
    cached: bool = False
    status: CaseStatus = CaseStatus.SCORED
    error: str | None = None


def _failure(exc: Exception, timeout_s: float) -> tuple[CaseStatus, str]:
    """The status and error text of a case that raised."""
    if isinstance(exc, TimeoutError):
        return CaseStatus.TIMEOUT, f"no answer within {timeout_s:g} s"
    if isinstance(exc, TruthGuardError):
        return CaseStatus.ERROR, f"{type(exc).__name__}: {exc}"
    return CaseStatus.ERROR, f"unexpected {type(exc).__name__}: {exc}"  # an adapter's bug


class _Publisher:
    """Group commit of a run's events: append now, fsync in batches, then tell listeners.

    `publish` appends an event to the journal at once (ids stay in call order). A background
    task takes everything appended since its last round, fsyncs it in a worker thread when it
    holds a durable event, and only then hands each event to the listeners, in order. A caller
    need not wait for that (a worker goes on to its next case); `commit` does. A failure (disk,
    or a listener raising) stops the publisher; every later call and every waiting caller gets
    the error.
    """

    max_pending = 1000  # appended but not yet synced: past this, `throttle` makes callers wait

    def __init__(self, journal: Journal, listeners: Sequence[Listener]) -> None:
        self._journal = journal
        self._listeners = listeners
        self._pending: list[tuple[Event, bool, asyncio.Future[Event] | None]] = []
        self._wake = asyncio.Event()
        self._round_done = asyncio.Event()
        self._closing = False
        self._error: BaseException | None = None
        self._task = asyncio.create_task(self._rounds(), name=f"journal {journal.run_id}")

    def publish(
        self, type_: str, data: dict[str, Any], durable: bool = False, *,
        future: asyncio.Future[Event] | None = None,
    ) -> None:
        """Append an event now; listeners hear of it once it (and, if durable, its fsync) is
        done. `future`, if given, gets the event then, or the error that stopped it."""
        if self._error is not None:
            raise self._error
        event = self._journal.append(type_, data)
        self._pending.append((event, durable, future))
        self._wake.set()

    async def commit(self, type_: str, data: dict[str, Any]) -> Event:
        """Append an event; return once it is on disk and every listener has heard of it."""
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self.publish(type_, data, durable=True, future=future)
        return await future

    async def throttle(self) -> None:
        """Wait while too much is pending (a disk slower than the cases)."""
        while len(self._pending) > self.max_pending and self._error is None:
            self._round_done.clear()
            await self._round_done.wait()
        if self._error is not None:
            raise self._error

    async def _rounds(self) -> None:
        while not (self._closing and not self._pending):
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            try:
                if any(durable for _, durable, _ in batch):
                    await asyncio.to_thread(self._journal.sync)
                for event, _, future in batch:
                    for listener in self._listeners:
                        listener(event)
                    if future is not None and not future.done():
                        future.set_result(event)
            except Exception as exc:
                self._fail(exc, batch + self._pending)
                return
            finally:
                self._round_done.set()

    def _fail(self, error: Exception,
              waiting: list[tuple[Event, bool, asyncio.Future[Event] | None]]) -> None:
        self._error = error
        for _, _, future in waiting:
            if future is not None and not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        """Publish what is pending, then stop; raise the error that stopped it, if any."""
        self._closing = True
        self._wake.set()
        await asyncio.shield(self._task)
        if self._error is not None:
            raise self._error


class RunEngine:
    def __init__(
        self,
        journal: Journal,
        cache: ResponseCache | None = None,
        judge: Judge | None = None,
        listeners: Sequence[Listener] = (),
        seed: int = 0,
        score_pool: Executor | None = None,
    ) -> None:
        """`score_pool`: where to run the CPU-bound metrics (a `ProcessPoolExecutor` takes
        them off this process's GIL); None scores on the event loop."""
        self.journal = journal
        self.cache = cache
        self.judge = judge
        self.listeners = list(listeners)
        self.score_pool = score_pool
        self._rng = random.Random(seed)
        self._cancelled = False
        self._workers: set[asyncio.Task[None]] = set()
        self._publisher: _Publisher | None = None
        self._cache_warned = False

    @property
    def run_id(self) -> str:
        return self.journal.run_id

    def cancel(self) -> None:
        """Stop taking new cases; cases in flight are dropped and done again on resume.

        Call it from the loop the run is on; `run` then returns "cancelled" promptly.
        """
        self._cancelled = True
        for task in self._workers:
            task.cancel()

    def _emit(self, type_: str, data: dict[str, Any]) -> None:
        assert self._publisher is not None, "events are emitted only while running"
        self._publisher.publish(type_, data)

    async def run(
        self, cases: Sequence[GoldenCase], variants: Sequence[Variant], meta: dict[str, Any]
    ) -> str:
        """Run (or resume) the run; returns its final status: finished or cancelled."""
        finished = finished_keys(self.journal.path)
        total = sum(len(cases) * v.settings.repeat for v in variants)
        resumed = len(finished)
        progress = _Progress(total=total, resumed=resumed, done=resumed)
        publisher = self._publisher = _Publisher(self.journal, self.listeners)
        try:
            publisher.publish("run_started", {**meta, "total": total, "resumed": resumed,
                                              "variants": [v.name for v in variants]})
            await self._work(cases, variants, finished, progress)
            status = "cancelled" if self._cancelled else "finished"
            publisher.publish("progress", progress.snapshot())
            await publisher.commit("run_finished", {"status": status, **progress.snapshot()})
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                await publisher.aclose()
            raise
        finally:
            self._publisher = None
        await publisher.aclose()
        return status

    async def _work(
        self,
        cases: Sequence[GoldenCase],
        variants: Sequence[Variant],
        finished: set[Key],
        progress: _Progress,
    ) -> None:
        """Every variant's workers in one task group; the first failure stops them all."""
        try:
            async with asyncio.TaskGroup() as group:
                start_after = 0.0
                for variant in variants:
                    todo = _todo(variant, cases, finished)
                    limiter = RateLimiter(variant.settings.requests_per_minute,
                                          variant.settings.tokens_per_minute)
                    # Cases answered but not yet scored, at most `concurrency` per variant.
                    scoring = asyncio.Semaphore(max(1, variant.settings.concurrency))
                    for _ in range(max(1, variant.settings.concurrency)):
                        self._track(group.create_task(self._worker(
                            variant, todo, limiter, progress, start_after, group, scoring)))
                        start_after += variant.settings.stagger_s
        except BaseExceptionGroup as failed:  # a storage error or a bug: report it plainly
            raise failed.exceptions[0] from None

    def _track(self, task: asyncio.Task[None]) -> None:
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def _worker(
        self,
        variant: Variant,
        todo: Iterator[tuple[GoldenCase, int]],
        limiter: RateLimiter,
        progress: _Progress,
        start_after: float,
        group: asyncio.TaskGroup,
        scoring: asyncio.Semaphore,
    ) -> None:
        """Ask the system case after case; each answer is scored in a task of its own, so a
        slow metric or judge never holds a request slot (the system's concurrency stays full)."""
        if start_after > 0:
            await asyncio.sleep(start_after)
        for case, repeat in todo:
            if self._cancelled:
                return
            answer = await self._answer(variant, case, repeat, limiter, progress)
            await scoring.acquire()
            self._track(group.create_task(self._finish(variant, answer, progress, scoring)))

    async def _answer(
        self, variant: Variant, case: GoldenCase, repeat: int, limiter: RateLimiter,
        progress: _Progress,
    ) -> _Answer:
        """The system's response to a case, from the cache or asked for, or why there is none."""
        loop = asyncio.get_running_loop()
        answer = _Answer(case, repeat, time.monotonic(), loop.time() + variant.settings.timeout_s)
        key = cache_key(variant.system.describe(), _prompt(case), repeat)
        try:
            async with asyncio.timeout_at(answer.deadline):
                answer.response = await self.cache.get(key) if self.cache else None
                answer.cached = answer.response is not None
                if answer.response is None:
                    answer.response = await self._ask(variant, case, limiter, progress,
                                                      answer.tally)
                    await self._remember(key, answer.response)
        except Exception as exc:
            answer.status, answer.error = _failure(exc, variant.settings.timeout_s)
        return answer

    async def _remember(self, key: str, response: SutResponse) -> None:
        """Cache a response. A cache that cannot be written (a full disk, say) costs the next
        run its savings, not this run its results: warned once, the run goes on; the journal
        decides whether the run can continue."""
        if self.cache is None:
            return
        try:
            await self.cache.put(key, response)
        except StorageError as exc:
            if not self._cache_warned:
                self._cache_warned = True
                logger.warning("the response cache is not being written; the run goes on "
                               "without it: %s", exc)

    async def _finish(
        self, variant: Variant, answer: _Answer, progress: _Progress, slot: asyncio.Semaphore,
    ) -> None:
        """Score an answer within the case's deadline, then journal it; frees its slot."""
        assert self._publisher is not None
        try:
            result = await self._result(variant, answer, progress)
            progress.add(result)
            # Durable: listeners hear of it after its fsync; nothing here waits for that.
            self._publisher.publish(CASE_FINISHED, result.to_dict(), durable=True)
            await self._publisher.throttle()
        finally:
            slot.release()
        now = time.monotonic()
        if now - progress.last_emit >= variant.settings.progress_interval_s:
            progress.last_emit = now
            self._emit("progress", progress.snapshot())

    async def _result(self, variant: Variant, answer: _Answer, progress: _Progress
                      ) -> CaseResult:
        settings, case, response = variant.settings, answer.case, answer.response
        status, error = answer.status, answer.error
        metrics: dict[str, float | None] = {}
        scoring = time.monotonic()
        if response is not None and status is CaseStatus.SCORED:
            try:
                async with asyncio.timeout_at(answer.deadline):
                    metrics, _ = await self._retrying(
                        variant, case, progress, lambda: self._score(case, response, settings),
                    )
            except Exception as exc:
                status, error = _failure(exc, settings.timeout_s)
        score_ms = (time.monotonic() - scoring) * 1000
        cost = 0.0
        if response is not None and not answer.cached:
            cost = (response.prompt_tokens * settings.price_prompt_per_mtok
                    + response.completion_tokens * settings.price_completion_per_mtok) / 1e6
        return CaseResult(
            run_id=self.run_id,
            variant=variant.name,
            case_id=case.id,
            repeat=answer.repeat,
            tenant=case.tenant,
            tags=case.tags,
            status=status,
            metrics=metrics if status is CaseStatus.SCORED else {},
            question=_question(case),
            error=error,
            response=response,
            attempts=max(answer.tally.attempts, 1) if not answer.cached else 0,
            latency_ms=(time.monotonic() - answer.started) * 1000,
            cost_usd=cost,
            cached=answer.cached,
            finished_at=time.time(),
            score_ms=score_ms,
        )

    async def _score(self, case: GoldenCase, response: SutResponse, settings: RunSettings
                     ) -> Scores:
        if self.score_pool is None:
            return await score_case(case, response, settings.ks, self.judge, settings.ragas)
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(self.score_pool, score_offline, case, response,
                                            tuple(settings.ks), settings.ragas)
        if self.judge is not None:
            scores.update(await self.judge.score(case, response))
        return scores

    async def _ask(
        self, variant: Variant, case: GoldenCase, limiter: RateLimiter, progress: _Progress,
        tally: _Tally,
    ) -> SutResponse:
        async def call() -> SutResponse:
            waited = await limiter.acquire(_estimate_tokens(case))
            if waited > 0:
                self._emit("backoff", {"variant": variant.name, "case_id": case.id,
                                       "reason": "rate limit", "wait_s": round(waited, 3)})
            return await variant.system.respond(case)

        response, _ = await self._retrying(variant, case, progress, call, tally)
        return response

    async def _retrying(
        self,
        variant: Variant,
        case: GoldenCase,
        progress: _Progress,
        call: Callable[[], Awaitable[T]],
        tally: _Tally | None = None,
    ) -> tuple[T, int]:
        """Call until it succeeds, retrying transient provider errors (system or judge)."""
        policy = variant.settings.retry
        attempt = 0
        while True:
            attempt += 1
            if tally is not None:
                tally.attempts = attempt
            try:
                return await call(), attempt
            except RetryableProviderError as exc:
                if attempt > policy.max_retries:
                    raise
                delay = policy.delay(attempt, exc.retry_after, self._rng)
                progress.retries += 1
                self._emit("retry", {"variant": variant.name, "case_id": case.id,
                                     "attempt": attempt, "error": str(exc),
                                     "retry_after": exc.retry_after, "wait_s": round(delay, 3)})
                await asyncio.sleep(delay)


_worker_state = threading.local()


def score_offline(
    case: GoldenCase, response: SutResponse, ks: tuple[int, ...], ragas: bool
) -> Scores:
    """Every metric but the judge's, in a pool worker (process or thread): its own loop."""
    loop = getattr(_worker_state, "loop", None)
    if loop is None:
        loop = _worker_state.loop = asyncio.new_event_loop()
    return loop.run_until_complete(score_case(case, response, ks, None, ragas))


def warm_scoring() -> None:
    """Nothing to do: a pool worker that runs it has imported this module, and with it every
    metric, so the first case it scores does not wait for ragas' import."""


def finished_keys(journal: Path) -> set[Key]:
    """The (variant, case id, repeat) of every case result already in a journal."""
    return {
        (e.data["variant"], e.data["case_id"], e.data["repeat"])
        for e in read_events(journal) if e.type == CASE_FINISHED
    }


def _todo(
    variant: Variant, cases: Sequence[GoldenCase], finished: set[Key]
) -> Iterator[tuple[GoldenCase, int]]:
    """The variant's cases not yet journaled, pulled one at a time by its workers."""
    return (
        (case, repeat)
        for repeat in range(variant.settings.repeat)
        for case in cases
        if (variant.name, case.id, repeat) not in finished
    )


def _question(case: GoldenCase) -> str:
    return case.question if case.question is not None else case.messages()[-1].content


def _prompt(case: GoldenCase) -> dict[str, Any]:
    return {
        "tenant": case.tenant,
        "messages": [(m.role, m.content) for m in case.messages()],
        "tools": list(case.tools),
    }


def _estimate_tokens(case: GoldenCase) -> int:
    words = sum(len(m.content.split()) for m in case.messages())
    return int(words * 1.4) + 600  # the question plus room for contexts and the answer
