"""Plain domain values of the pipeline. No I/O, no third-party imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RetrievalMode = Literal["dense", "lexical", "hybrid"]
FusionMethod = Literal["rrf", "weighted"]


@dataclass(frozen=True)
class Document:
    """A source document of one tenant, before chunking."""

    doc_id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # file path or "file:line" it came from, for error messages and citations


@dataclass(frozen=True)
class Chunk:
    """A piece of a document. `chunk_id` is `"{doc_id}#{index}"`, so it names its document."""

    chunk_id: str
    doc_id: str
    index: int
    text: str
    title: str = ""
    doc_hash: str = ""  # content hash of the whole document, for idempotent re-ingestion


@dataclass(frozen=True)
class ScoredChunk:
    """A chunk found by a retriever; higher `score` is better within one ranked list."""

    chunk_id: str
    doc_id: str
    text: str
    score: float
    title: str = ""


@dataclass(frozen=True)
class RetrievalResult:
    """The final ranked list plus each arm's own list (keys: "dense", "lexical")."""

    hits: list[ScoredChunk]
    arms: dict[str, list[ScoredChunk]] = field(default_factory=dict)
    query: str = ""
    latency_ms: float = 0.0
    # Stage -> milliseconds: "embedding" (the query), "dense" and "lexical" (each arm's
    # search, concurrent in hybrid mode), "fusion".
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True)
class Generation:
    """What an LLM provider returns for one chat call."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    cited_chunk_ids: list[str] = field(default_factory=list)
    abstained: bool = False
    usage: Usage = Usage()
    latency_ms: float = 0.0
    model: str = ""
    first_token_ms: float | None = None  # streamed replies only


@dataclass(frozen=True)
class Answer:
    """The pipeline's full answer to one conversation turn."""

    text: str
    retrieval: RetrievalResult
    tool_calls: list[ToolCall] = field(default_factory=list)
    cited_chunk_ids: list[str] = field(default_factory=list)
    abstained: bool = False
    usage: Usage = Usage()
    latency_ms: float = 0.0
    model: str = ""
    # The retrieval stages' timings, plus "generation" and, when streamed, "first_token".
    timings_ms: dict[str, float] = field(default_factory=dict)
