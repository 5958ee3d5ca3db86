"""One exception tree for the whole project.

TruthGuardError
 +-- InputError            bad user input: dataset, spec, config, tenant id (CLI exit 2, HTTP 4xx)
 |    +-- TenantIdError    a tenant id that fails the strict pattern
 +-- ProviderError         an LLM / embedding endpoint failed
 |    +-- RetryableProviderError   transient: 429, 5xx, timeouts, dropped connections
 +-- StorageError          the data folder could not be read or written
"""

from __future__ import annotations


class TruthGuardError(Exception):
    """Root of every error this project raises on purpose."""


class InputError(TruthGuardError):
    """Bad input from a user. `location` names the file, line and field when known."""

    def __init__(self, message: str, *, location: str | None = None) -> None:
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class TenantIdError(InputError):
    """A tenant id that does not match the strict pattern."""


class ProviderError(TruthGuardError):
    """An LLM or embedding provider failed in a way a retry will not fix."""


class RetryableProviderError(ProviderError):
    """A transient provider failure; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class StorageError(TruthGuardError):
    """The data folder could not be read or written."""
