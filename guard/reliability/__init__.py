"""Reliability tooling: a loopback OpenAI-compatible server that fails on purpose.

Used by `tests/reliability/` and `scripts/reliability.py`; nothing in the engine imports it.
"""

from guard.reliability.fault_server import (
    CannedAnswer,
    CannedUpstream,
    Fault,
    FaultPlan,
    FaultSchedule,
    FaultServer,
    FaultStats,
    running_in_thread,
)

__all__ = [
    "CannedAnswer",
    "CannedUpstream",
    "Fault",
    "FaultPlan",
    "FaultSchedule",
    "FaultServer",
    "FaultStats",
    "running_in_thread",
]
