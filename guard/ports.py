"""Ports of the guard: the system under test and the run tracker."""

from __future__ import annotations

from typing import Any, Protocol

from guard.domain import SutResponse
from guard.golden import GoldenCase


class SystemUnderTest(Protocol):
    """Anything the guard can evaluate: given a golden case, answer it.

    Raise `rag.errors.RetryableProviderError` for transient failures (the engine retries),
    any other `TruthGuardError` for a failed case.
    """

    name: str

    def describe(self) -> dict[str, Any]:
        """Parameters that identify this system in reports and in the response cache."""

    async def respond(self, case: GoldenCase) -> SutResponse: ...

    async def aclose(self) -> None: ...
