"""Concurrency, rate limits and retries: the one layer that retries (clients retry nothing)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass


class RateLimiter:
    """Token buckets for requests per minute and tokens per minute; 0 means unlimited.

    `acquire(tokens)` waits until both buckets can pay. Token use is estimated up front and
    the bucket refills continuously, so bursts up to one minute's budget are allowed.
    """

    def __init__(self, requests_per_minute: float = 0, tokens_per_minute: float = 0) -> None:
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._requests = requests_per_minute
        self._tokens = tokens_per_minute
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self._updated = now - self._updated, now
        self._requests = min(self._rpm, self._requests + elapsed * self._rpm / 60)
        self._tokens = min(self._tpm, self._tokens + elapsed * self._tpm / 60)

    def _wait_needed(self, tokens: int) -> float:
        waits = [0.0]
        if self._rpm and self._requests < 1:
            waits.append((1 - self._requests) * 60 / self._rpm)
        if self._tpm:
            need = min(tokens, self._tpm)
            if self._tokens < need:
                waits.append((need - self._tokens) * 60 / self._tpm)
        return max(waits)

    async def acquire(self, tokens: int = 0) -> float:
        """Wait for capacity; return the seconds waited (0 when unlimited)."""
        if not self._rpm and not self._tpm:
            return 0.0
        waited = 0.0
        async with self._lock:
            while True:
                self._refill()
                delay = self._wait_needed(tokens)
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
                waited += delay
            if self._rpm:
                self._requests -= 1
            if self._tpm:
                self._tokens -= min(tokens, self._tpm)
        return waited


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; a server's Retry-After wins when given."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_delay)
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
