"""Reliability tooling: a loopback OpenAI-compatible server that fails on purpose.

Used by `tests/reliability/` and `scripts/reliability.py`; nothing in the engine imports it.
"""

from guard.reliability.fault_server import (
    TRANSIENT_FAULTS,
    AsgiUpstream,
    CannedAnswer,
    CannedUpstream,
    Fault,
    FaultPlan,
    FaultSchedule,
    FaultServer,
    FaultStats,
    UpstreamStatus,
    running_in_thread,
)

__all__ = [
    "TRANSIENT_FAULTS",
    "AsgiUpstream",
    "CannedAnswer",
    "CannedUpstream",
    "Fault",
    "FaultPlan",
    "FaultSchedule",
    "FaultServer",
    "FaultStats",
    "UpstreamStatus",
    "running_in_thread",
]
