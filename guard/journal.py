"""The run journal: an append-only JSON Lines file of every event of a run, on disk first.

A case result is written and fsync'd before any listener hears of it, so the journal is the
source of truth: resuming a killed run reads it to skip finished cases, the dashboard replays
it for `Last-Event-ID`, exports and summaries read it through DuckDB. A torn last line (a kill
mid-write) is cut off when the journal is reopened; every complete line before it survives.
One process writes a journal at a time, enforced with an advisory lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from guard.domain import CaseResult, Event
from rag.errors import StorageError

CASE_FINISHED = "case_finished"


def repair(path: Path) -> int:
    """Cut a torn last line (no trailing newline) off; return how many bytes were dropped."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as fh:
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return 0
        # Walk back to the last newline; everything after it is a partial write.
        position, chunk = size, 65536
        while position > 0:
            start = max(0, position - chunk)
            fh.seek(start)
            block = fh.read(position - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            position = start
        else:
            keep = 0
        fh.truncate(keep)
        os.fsync(fh.fileno())
        return size - keep


def read_events(path: Path, after_id: int = 0) -> Iterator[Event]:
    """Every complete event with id > `after_id`, in order. Skips a torn trailing line."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # being written right now, or torn: not an event yet
            row = json.loads(raw)
            if row["id"] > after_id:
                yield Event(**row)


def read_results(path: Path) -> Iterator[CaseResult]:
    for event in read_events(path):
        if event.type == CASE_FINISHED:
            yield CaseResult.from_dict(event.data)


def read_new_lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines from byte `offset` on, parsed, and the offset just past the last
    of them. A line still being written has no newline yet and is left for the next call."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            block = fh.read()
    except FileNotFoundError:
        return [], offset
    end = block.rfind(b"\n") + 1
    return [json.loads(line) for line in block[:end].splitlines()], offset + end


class ResultTail:
    """A journal's case results, kept and extended by reading only what was appended since
    the last call: a live run's reader pays per new case, not per case, on every call.
    Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._results: list[CaseResult] = []
        self._lock = threading.Lock()

    def results(self) -> list[CaseResult]:
        with self._lock:
            rows, self._offset = read_new_lines(self.path, self._offset)
            self._results.extend(CaseResult.from_dict(row["data"]) for row in rows
                                 if row["type"] == CASE_FINISHED)
            return list(self._results)


def _lock_exclusively(handle: IO[bytes], patience_s: float = 1.0) -> bool:
    """Take the writer lock. A reader asking whether the journal is being written holds a
    shared lock for a few microseconds, so a refusal is retried for `patience_s` before it
    means that another writer has the journal."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


class Journal:
    """The writer side. Open with `Journal.open(path)`; close with `close()`."""

    def __init__(self, path: Path, run_id: str, handle: IO[bytes], last_id: int) -> None:
        self.path = path
        self.run_id = run_id
        self._fh = handle
        self.last_id = last_id

    @classmethod
    def open(cls, path: Path, run_id: str) -> Journal:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            repair(path)
            # Unbuffered: a failed write must leave no bytes behind in a buffer for `close`
            # to flush later, after `_undo` has cut the file back.
            handle = path.open("ab", buffering=0)
        except OSError as exc:
            raise StorageError(f"cannot open journal {path}: {exc.strerror or exc}") from exc
        if not _lock_exclusively(handle):
            handle.close()
            raise StorageError(f"run journal {path} is being written by another process")
        last_id = 0
        for event in read_events(path):
            last_id = event.id
        return cls(path, run_id, handle, last_id)

    def append(self, type_: str, data: dict[str, Any], *, durable: bool = False) -> Event:
        """Write one event; with `durable`, fsync before returning (used for case results)."""
        event = Event(self.last_id + 1, self.run_id, type_, data, time.time())
        # A flat dict, not `event.to_dict()`: asdict would deep-copy `data` once more per event.
        row = {"id": event.id, "run_id": event.run_id, "type": event.type, "data": event.data,
               "at": event.at}
        line = (json.dumps(row, separators=(",", ":"), default=str) + "\n").encode()
        try:
            offset = self._fh.seek(0, os.SEEK_END)
        except OSError as exc:
            raise StorageError(f"cannot append to journal {self.path}: {exc}") from exc
        try:
            self._write_all(line)
            if durable:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            self._undo(offset)
            reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise StorageError(
                f"cannot append to journal {self.path}: {reason}; "
                "every event written before is intact"
            ) from exc
        self.last_id = event.id
        return event

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a raw write may be short (say, the disk filled up mid-line)
            written = self._fh.write(view)
            if not written:
                raise OSError(errno.EIO, "the journal accepted no bytes")
            view = view[written:]

    def sync(self) -> None:
        """fsync every event appended so far: one call makes a whole batch durable.

        Safe to call from a worker thread while the owning thread appends (group commit)."""
        try:
            os.fsync(self._fh.fileno())
        except OSError as exc:
            reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise StorageError(f"cannot sync journal {self.path}: {reason}") from exc

    def _undo(self, offset: int) -> None:
        with contextlib.suppress(OSError):  # else `repair` cuts the torn line at next open
            self._fh.truncate(offset)

    def close(self) -> None:
        if not self._fh.closed:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
