"""Structured JSON logging on top of the standard library, with a per-request correlation id.

One line of JSON per record: `ts`, `level`, `logger`, `message`, `correlation_id` and every
field passed through `extra=`. The correlation id lives in a context variable, so it follows a
request through `await`s and into tasks started from it without being passed around.

    configure_logging("INFO")
    with bind_correlation_id(request_id):
        logger.info("provider call", extra={"provider": "openai", "latency_ms": 812.4})
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime", "taskName"]
)


def new_correlation_id() -> str:
    """A fresh random id: 32 hex characters."""
    return uuid.uuid4().hex


@contextmanager
def bind_correlation_id(value: str | None = None) -> Iterator[str]:
    """Bind `value` (or a fresh id) as the correlation id for the enclosed code; restore after."""
    bound = value or new_correlation_id()
    token = correlation_id.set(bound)
    try:
        yield bound
    finally:
        correlation_id.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON; values JSON cannot encode become strings."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": correlation_id.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _TruthGuardHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `configure_logging` installed, so calling it again replaces it."""


def configure_logging(level: int | str = "INFO", stream: IO[str] | None = None) -> None:
    """Send every log record to `stream` (default stderr) as JSON lines, at `level` and above.

    Idempotent: a second call replaces the handler installed by the first rather than adding
    another, so records are never printed twice.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _TruthGuardHandler):
            root.removeHandler(handler)
    handler = _TruthGuardHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
