"""The async validation engine: every case of every variant, bounded, rate-limited, retried,
timed out, cached, scored and journaled exactly once.

Safe to call from a running event loop (a server, a notebook): it creates no loop of its own.
Memory stays flat in the number of cases: workers pull cases from an iterator, and nothing
per case is kept after it is journaled except running sums for progress.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from guard.cache import ResponseCache, cache_key
from guard.domain import CaseResult, CaseStatus, Event, SutResponse
from guard.golden import GoldenCase
from guard.journal import CASE_FINISHED, Journal, read_results
from guard.limits import RateLimiter, RetryPolicy
from guard.ports import SystemUnderTest
from guard.scoring import Judge, score_case
from rag.errors import RetryableProviderError, TruthGuardError

Listener = Callable[[Event], None]
T = TypeVar("T")


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


@dataclass
class Variant:
    name: str
    system: SystemUnderTest
    settings: RunSettings = RunSettings()


@dataclass
class _Progress:
    total: int
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

    def snapshot(self, resumed: int) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        fresh = self.done - resumed
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


class RunEngine:
    def __init__(
        self,
        journal: Journal,
        cache: ResponseCache | None = None,
        judge: Judge | None = None,
        listeners: Sequence[Listener] = (),
        seed: int = 0,
    ) -> None:
        self.journal = journal
        self.cache = cache
        self.judge = judge
        self.listeners = list(listeners)
        self._rng = random.Random(seed)
        self._cancelled = asyncio.Event()

    @property
    def run_id(self) -> str:
        return self.journal.run_id

    def cancel(self) -> None:
        """Stop taking new cases; cases in flight are dropped and done again on resume."""
        self._cancelled.set()

    def _emit(self, type_: str, data: dict[str, Any], durable: bool = False) -> Event:
        event = self.journal.append(type_, data, durable=durable)
        for listener in self.listeners:
            listener(event)
        return event

    async def run(
        self, cases: Sequence[GoldenCase], variants: Sequence[Variant], meta: dict[str, Any]
    ) -> str:
        """Run (or resume) the run; returns its final status: finished or cancelled."""
        finished = {r.key for r in read_results(self.journal.path)}
        total = sum(len(cases) * v.settings.repeat for v in variants)
        progress = _Progress(total=total, done=len(finished))
        resumed = len(finished)
        self._emit("run_started", {**meta, "total": total, "resumed": resumed,
                                   "variants": [v.name for v in variants]})
        limiters = {v.name: RateLimiter(v.settings.requests_per_minute,
                                        v.settings.tokens_per_minute) for v in variants}
        workers = [
            self._variant(v, cases, finished, progress, resumed, limiters[v.name])
            for v in variants
        ]
        await asyncio.gather(*workers)
        status = "cancelled" if self._cancelled.is_set() else "finished"
        self._emit("progress", progress.snapshot(resumed))
        self._emit("run_finished", {"status": status, **progress.snapshot(resumed)},
                   durable=True)
        return status

    async def _variant(
        self,
        variant: Variant,
        cases: Sequence[GoldenCase],
        finished: set[tuple[str, str, int]],
        progress: _Progress,
        resumed: int,
        limiter: RateLimiter,
    ) -> None:
        todo: Iterator[tuple[GoldenCase, int]] = iter(
            (case, repeat)
            for repeat in range(variant.settings.repeat)
            for case in cases
            if (variant.name, case.id, repeat) not in finished
        )

        async def worker() -> None:
            for case, repeat in todo:
                if self._cancelled.is_set():
                    return
                result = await self._case(variant, case, repeat, limiter, progress)
                if result.key in finished:
                    continue  # never journal a case twice
                finished.add(result.key)
                self._emit(CASE_FINISHED, result.to_dict(), durable=True)
                progress.add(result)
                now = time.monotonic()
                if now - progress.last_emit >= variant.settings.progress_interval_s:
                    progress.last_emit = now
                    self._emit("progress", progress.snapshot(resumed))

        await asyncio.gather(*(worker() for _ in range(max(1, variant.settings.concurrency))))

    async def _case(
        self,
        variant: Variant,
        case: GoldenCase,
        repeat: int,
        limiter: RateLimiter,
        progress: _Progress,
    ) -> CaseResult:
        settings = variant.settings
        started = time.monotonic()
        key = cache_key(variant.system.describe(), _prompt(case), repeat)
        attempts, cached, error = 0, False, None
        status = CaseStatus.SCORED
        response: SutResponse | None = None
        metrics: dict[str, float | None] = {}
        try:
            async with asyncio.timeout(settings.timeout_s):
                response = await self.cache.get(key) if self.cache else None
                cached = response is not None
                if response is None:
                    response, attempts = await self._ask(variant, case, limiter, progress)
                    if self.cache:
                        await self.cache.put(key, response)
                answered = response
                metrics, _ = await self._retrying(
                    variant, case, progress,
                    lambda: score_case(case, answered, settings.ks, self.judge, settings.ragas),
                )
        except TimeoutError:
            status, error = CaseStatus.TIMEOUT, f"no answer within {settings.timeout_s:g} s"
        except TruthGuardError as exc:
            status, error = CaseStatus.ERROR, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug in an adapter must not take the run down
            status, error = CaseStatus.ERROR, f"unexpected {type(exc).__name__}: {exc}"
        cost = 0.0
        if response is not None and not cached:
            cost = (response.prompt_tokens * settings.price_prompt_per_mtok
                    + response.completion_tokens * settings.price_completion_per_mtok) / 1e6
        return CaseResult(
            run_id=self.run_id,
            variant=variant.name,
            case_id=case.id,
            repeat=repeat,
            tenant=case.tenant,
            tags=case.tags,
            status=status,
            metrics=metrics if status is CaseStatus.SCORED else {},
            question=_question(case),
            error=error,
            response=response,
            attempts=max(attempts, 1) if not cached else 0,
            latency_ms=(time.monotonic() - started) * 1000,
            cost_usd=cost,
            cached=cached,
            finished_at=time.time(),
        )

    async def _ask(
        self, variant: Variant, case: GoldenCase, limiter: RateLimiter, progress: _Progress
    ) -> tuple[SutResponse, int]:
        async def call() -> SutResponse:
            waited = await limiter.acquire(_estimate_tokens(case))
            if waited > 0:
                self._emit("backoff", {"variant": variant.name, "case_id": case.id,
                                       "reason": "rate limit", "wait_s": round(waited, 3)})
            return await variant.system.respond(case)

        return await self._retrying(variant, case, progress, call)

    async def _retrying(
        self,
        variant: Variant,
        case: GoldenCase,
        progress: _Progress,
        call: Callable[[], Awaitable[T]],
    ) -> tuple[T, int]:
        """Call until it succeeds, retrying transient provider errors (system or judge)."""
        policy = variant.settings.retry
        attempt = 0
        while True:
            attempt += 1
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
