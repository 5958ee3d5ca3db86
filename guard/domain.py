"""The guard's plain values: what a system under test returns, and what a case ends as."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class CaseStatus(StrEnum):
    """How a case ended. Every case ends with exactly one; none is left as a silent NaN."""

    SCORED = "scored"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Context:
    """One retrieved context, in rank order (rank 1 first)."""

    chunk_id: str
    doc_id: str
    text: str
    score: float
    rank: int


@dataclass(frozen=True)
class SutResponse:
    """What a system under test returns for one golden case.

    `arms` maps a retriever arm ("dense", "lexical") to its ranked document ids, when the
    system reports them; `abstained` is None when the system does not say.
    """

    answer: str
    contexts: tuple[Context, ...] = ()
    arms: dict[str, list[str]] = field(default_factory=dict)
    tool_calls: tuple[dict[str, Any], ...] = ()
    abstained: bool | None = None
    cited_chunk_ids: tuple[str, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    model: str = ""
    # Stage -> ms, as the system reports them: "embedding", "dense", "lexical", "fusion",
    # "generation", "first_token"; empty when it reports none.
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # By hand, not `asdict`: that deep-copies every leaf, and it was the engine's largest
        # cost per case after the HTTP client. Values are immutable or copied one level.
        return {
            "answer": self.answer,
            "contexts": [
                {"chunk_id": c.chunk_id, "doc_id": c.doc_id, "text": c.text, "score": c.score,
                 "rank": c.rank}
                for c in self.contexts
            ],
            "arms": {arm: list(ids) for arm, ids in self.arms.items()},
            "tool_calls": [dict(call) for call in self.tool_calls],
            "abstained": self.abstained,
            "cited_chunk_ids": list(self.cited_chunk_ids),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": self.latency_ms,
            "model": self.model,
            "timings_ms": dict(self.timings_ms),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SutResponse:
        data = dict(data)
        data["contexts"] = tuple(Context(**c) for c in data.get("contexts", ()))
        data["tool_calls"] = tuple(data.get("tool_calls", ()))
        data["cited_chunk_ids"] = tuple(data.get("cited_chunk_ids", ()))
        return cls(**data)


@dataclass(frozen=True)
class CaseResult:
    """One case of one variant, as written to the journal. `metrics` values are None when
    undefined for the case (no judgments, no expected tools, no judge), never NaN."""

    run_id: str
    variant: str
    case_id: str
    repeat: int
    tenant: str
    tags: tuple[str, ...]
    status: CaseStatus
    metrics: dict[str, float | None]
    question: str = ""
    error: str | None = None
    response: SutResponse | None = None
    attempts: int = 1
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    cached: bool = False
    finished_at: float = 0.0
    score_ms: float = 0.0  # the metrics' and the judge's share of latency_ms

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.variant, self.case_id, self.repeat)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "variant": self.variant,
            "case_id": self.case_id,
            "repeat": self.repeat,
            "tenant": self.tenant,
            "tags": list(self.tags),
            "status": self.status.value,
            "metrics": dict(self.metrics),
            "question": self.question,
            "error": self.error,
            "response": self.response.to_dict() if self.response is not None else None,
            "attempts": self.attempts,
            "latency_ms": self.latency_ms,
            "cost_usd": self.cost_usd,
            "cached": self.cached,
            "finished_at": self.finished_at,
            "score_ms": self.score_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        data = dict(data)
        data["status"] = CaseStatus(data["status"])
        data["tags"] = tuple(data.get("tags", ()))
        if data.get("response") is not None:
            data["response"] = SutResponse.from_dict(data["response"])
        return cls(**data)


@dataclass(frozen=True)
class Event:
    """One event of a run. `id` increases by one within the run, from 1."""

    id: int
    run_id: str
    type: str  # run_started, case_finished, retry, backoff, progress, run_finished, error
    data: dict[str, Any]
    at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
