"""Response cache: a re-run of the same case against the same system costs nothing.

Keyed by the system's description (provider, model, parameters), the prompt (the case's
messages and tools) and the repeat index, so `--repeat N` still asks N times. Stored in
SQLite (WAL) so that several processes can share one cache file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from guard.domain import SutResponse
from rag.errors import StorageError


def cache_key(system: dict[str, Any], prompt: dict[str, Any], repeat: int) -> str:
    canonical = json.dumps(
        {"system": system, "prompt": prompt, "repeat": repeat}, sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used from worker threads in turn

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, body TEXT)"
                )
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open response cache {self._path}: {exc}") from exc
            self._conn = conn
        return self._conn

    def _get(self, key: str) -> SutResponse | None:
        with self._lock:
            row = self._connect().execute(
                "SELECT body FROM responses WHERE key = ?", (key,)
            ).fetchone()
        return SutResponse.from_dict(json.loads(row[0])) if row else None

    def _put(self, key: str, response: SutResponse) -> None:
        with self._lock, self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?)",
                (key, json.dumps(response.to_dict(), default=str)),
            )

    async def get(self, key: str) -> SutResponse | None:
        return await asyncio.to_thread(self._get, key)

    async def put(self, key: str, response: SutResponse) -> None:
        try:
            await asyncio.to_thread(self._put, key, response)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write response cache {self._path}: {exc}") from exc

    def close(self) -> None:
        # Under the lock: a worker thread of a cancelled task may still be using the
        # connection, and closing it under that thread crashes the process.
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
