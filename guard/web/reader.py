"""What the dashboard reads from runs: listings, summaries and cases, cheap while a run is live.

A live run's journal grows by hundreds of events a second while dozens of dashboards poll it,
so nothing here re-reads a journal from the start per request:

- `RunTail` keeps one run's case results and journal state, and reads only the lines appended
  since its last look;
- a live run's summary (bootstrap intervals over every case so far) is recomputed in the
  background, at most every `live_refresh_s` and never for more than a fifth of the time,
  while requests get the latest one at once;
- a finished run's summary is computed once per journal version (size and mtime);
- pages of cases are kept per query while the journal is unchanged, and for up to
  `live_refresh_s` while it grows.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from guard.domain import CaseResult
from guard.journal import CASE_FINISHED, read_new_lines
from guard.results import status_counts
from guard.runs import RUN_ID_PATTERN, JournalState, RunInfo, RunStore, is_being_written
from guard.service import GuardService
from guard.web.auth import Principal

T = TypeVar("T")


class RunTail:
    """One run's journal, folded incrementally. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._state = JournalState()
        self._results: list[CaseResult] = []
        self._lock = threading.Lock()

    def look(self) -> tuple[JournalState, list[CaseResult]]:
        """The state and results as of now (copies: the caller may keep them)."""
        with self._lock:
            self._read()
            return replace(self._state), list(self._results)

    def state(self) -> JournalState:
        """The state as of now, without copying the results."""
        with self._lock:
            self._read()
            return replace(self._state)

    def _read(self) -> None:
        rows, self._offset = read_new_lines(self.path, self._offset)
        for row in rows:
            self._state.add(row["id"], row["type"], row["data"])
            if row["type"] == CASE_FINISHED:
                self._results.append(CaseResult.from_dict(row["data"]))


class _Lru:
    """A small least-recently-used map. Thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get_or_make(self, key: Any, make: Callable[[], Any]) -> Any:
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value


@dataclass
class _LiveSummary:
    value: dict[str, Any] | None = None
    computed_at: float = float("-inf")
    every_s: float = 1.0
    computing: bool = False


def _stat_key(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


class RunReader:
    """Everything the dashboard's API reads about runs (see the module docstring)."""

    def __init__(self, service: GuardService, live_refresh_s: float = 1.0) -> None:
        self.service = service
        self.store: RunStore = service.store
        self.live_refresh_s = live_refresh_s
        self._tails = _Lru(16)
        self._infos = _Lru(512)
        self._summaries = _Lru(16)
        self._live: dict[str, _LiveSummary] = {}
        self._derived = _Lru(64)  # (run id, key) -> (value, journal's last event id, made at)
        self._lock = threading.Lock()
        self._background = ThreadPoolExecutor(1, thread_name_prefix="live-summary")

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=True)

    def tenants(self, run_id: str) -> tuple[str, ...] | None:
        """The run's tenants, or None when there is no such run."""
        if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
            return None
        if not self.store.exists(run_id):
            return None
        return tuple(self.store.manifest(run_id).get("tenants", ()))

    def _tail(self, run_id: str) -> RunTail:
        path = self.store.journal_path(run_id)
        tail: RunTail = self._tails.get_or_make(run_id, lambda: RunTail(path))
        return tail

    def info(self, run_id: str) -> RunInfo:
        """A live run's from its tail; any other's read once per journal version, without
        keeping its cases (a listing touches every run)."""
        journal = self.store.journal_path(run_id)
        if is_being_written(journal):
            return self.store.info(run_id, self._tail(run_id).state())
        key = (run_id, *_stat_key(journal))
        info: RunInfo = self._infos.get_or_make(key, lambda: self.store.info(run_id))
        return info

    def visible(self, principal: Principal) -> list[RunInfo]:
        out = []
        for run_id in self.store.run_ids():
            tenants = self.tenants(run_id)
            if tenants is not None and principal.can_see(tenants):
                out.append(self.info(run_id))
        return out

    def derived(self, run_id: str, key: Hashable, make: Callable[[list[CaseResult]], T]) -> T:
        """`make(cases)`, reused while the journal has not changed, and for up to
        `live_refresh_s` while the run goes on: a page of a live run's cases may lag by that
        much; once the run has finished, a page is always up to date."""
        state, results = self._tail(run_id).look()
        now = time.monotonic()
        cached = self._derived.get((run_id, key))
        if cached is not None:
            value, version, made_at = cached
            live = state.ended is None
            if version == state.last_id or (live and now - made_at < self.live_refresh_s):
                return cast(T, value)
        value = make(results)
        self._derived.put((run_id, key), (value, state.last_id, now))
        return value

    def summary(self, run_id: str) -> dict[str, Any]:
        journal = self.store.journal_path(run_id)
        if is_being_written(journal) and self._tail(run_id).state().ended is None:
            return self._live_summary(run_id)
        with self._lock:
            self._live.pop(run_id, None)
        key = (run_id, *_stat_key(journal))
        summary: dict[str, Any] = self._summaries.get_or_make(key, lambda: self._summary(run_id))
        return summary

    def _live_summary(self, run_id: str) -> dict[str, Any]:
        """The latest summary of a live run; a stale one starts a refresh in the background.
        Only the very first look at a run waits for one to be computed."""
        with self._lock:
            live = self._live.setdefault(run_id, _LiveSummary(every_s=self.live_refresh_s))
            refresh = (not live.computing
                       and time.monotonic() - live.computed_at >= live.every_s)
            live.computing = live.computing or refresh
            value = live.value
        if value is None:
            return self._refresh(run_id, live, owner=refresh)
        if refresh:
            self._background.submit(self._refresh, run_id, live, True)
        return value

    def _refresh(self, run_id: str, live: _LiveSummary, owner: bool) -> dict[str, Any]:
        started = time.monotonic()
        try:
            value = self._summary(run_id)
        finally:
            if owner:
                with self._lock:
                    live.computing = False
        with self._lock:
            live.value, live.computed_at = value, time.monotonic()
            # Busy for at most a fifth of the time, however long a run grows.
            live.every_s = max(self.live_refresh_s, 5 * (live.computed_at - started))
        return value

    def _summary(self, run_id: str) -> dict[str, Any]:
        state = self._tail(run_id).state()  # before the outcome: never ahead of its cases
        outcome = self.service.outcome(run_id)
        return {
            "confidence": outcome.spec.confidence,
            "summaries": [{"variant": s.variant, "metric": s.metric, "mean": s.ci.mean,
                           "low": s.ci.low, "high": s.ci.high, "n": s.ci.n,
                           "n_missing": s.ci.n_missing} for s in outcome.summaries],
            "status_counts": status_counts(outcome.frame) if not outcome.frame.empty else {},
            "gates": [{"variant": g.variant, "metric": g.metric, "rule": g.rule,
                       "passed": g.passed, "detail": g.detail} for g in outcome.gates],
            "passed": outcome.passed,
            "progress": state.progress,
            "last_event_id": state.last_id,
        }
