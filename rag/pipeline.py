"""The pipeline service: ingest, retrieve and answer for one tenant at a time.

It holds no adapter of its own: stores, indexes, embedders and providers are passed in by
`rag.bootstrap`, so tests can wire fakes and production wires LanceDB and BM25.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from rag.chunking import chunk_document, document_hash, indexable_text
from rag.conversation import retrieval_query
from rag.domain import (
    Answer,
    ChatMessage,
    Chunk,
    Document,
    FusionMethod,
    RetrievalMode,
    RetrievalResult,
    ScoredChunk,
)
from rag.errors import InputError
from rag.fusion import rank, reciprocal_rank_fusion, weighted_score_fusion
from rag.ports import Embedder, LexicalIndex, LLMProvider, VectorStore
from rag.tenancy import validate_tenant_id

T = TypeVar("T")


@dataclass(frozen=True)
class RetrievalSettings:
    """How a tenant retrieves. `candidates` is each arm's depth before fusion."""

    mode: RetrievalMode = "hybrid"
    k: int = 5
    fusion: FusionMethod = "rrf"
    rrf_k: int = 60
    dense_weight: float = 0.5
    candidates: int = 100
    history_turns: int = 2


@dataclass(frozen=True)
class TenantRuntime:
    """Everything one tenant answers with: its embedder, provider and settings."""

    embedder: Embedder
    provider: LLMProvider
    retrieval: RetrievalSettings = RetrievalSettings()
    chunk_chars: int = 1500
    max_answer_tokens: int | None = 512
    max_context_chunks: int = 8


@dataclass
class IngestReport:
    tenant: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    chunks: int = 0


ProgressCallback = Callable[[int, int], None]  # (documents done, documents total)


class RagPipeline:
    def __init__(
        self,
        tenants: Mapping[str, TenantRuntime],
        vectors: VectorStore,
        lexical: LexicalIndex,
        embed_batch: int = 64,
    ) -> None:
        for tenant in tenants:
            validate_tenant_id(tenant)
        self._tenants = dict(tenants)
        self.vectors = vectors
        self.lexical = lexical
        self._embed_batch = embed_batch

    @property
    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def runtime(self, tenant: str) -> TenantRuntime:
        validate_tenant_id(tenant)
        try:
            return self._tenants[tenant]
        except KeyError:
            raise InputError(
                f"unknown tenant {tenant!r}; configured tenants: {', '.join(self.tenants)}"
            ) from None

    async def ingest(
        self,
        tenant: str,
        documents: Iterable[Document],
        progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Idempotent upsert: new and changed documents are (re)indexed, unchanged ones skipped.

        A document counts as unchanged only if both stores hold it with the same content hash,
        so an ingestion killed half-way is completed by running it again.
        """
        runtime = self.runtime(tenant)
        docs = _unique(documents)
        dense_hashes, lexical_hashes = await asyncio.gather(
            self.vectors.document_hashes(tenant), self.lexical.document_hashes(tenant)
        )
        report = IngestReport(tenant)
        todo: list[Document] = []
        for doc in docs:
            digest = document_hash(doc)
            if dense_hashes.get(doc.doc_id) == digest == lexical_hashes.get(doc.doc_id):
                report.unchanged.append(doc.doc_id)
            else:
                known = doc.doc_id in dense_hashes or doc.doc_id in lexical_hashes
                (report.updated if known else report.added).append(doc.doc_id)
                todo.append(doc)
        done = len(report.unchanged)
        if progress:
            progress(done, len(docs))
        chunks: list[Chunk] = []
        batch: list[Chunk] = []
        for position, doc in enumerate(todo, start=1):
            batch.extend(chunk_document(doc, runtime.chunk_chars))
            if len(batch) >= self._embed_batch or position == len(todo):
                # A document's chunks always travel in one batch: the store replaces a
                # document's chunks at once, never leaving half a document behind.
                vectors = await runtime.embedder.embed([indexable_text(c) for c in batch])
                await self.vectors.upsert(tenant, batch, vectors)
                chunks.extend(batch)
                batch = []
                if progress:
                    progress(done + position, len(docs))
        if chunks:
            # The lexical index is rebuilt per write, so it gets one write for the whole run.
            await self.lexical.upsert(tenant, chunks)
            await self.vectors.optimize(tenant)
        report.chunks = len(chunks)
        return report

    async def retrieve(
        self,
        tenant: str,
        query: str | Sequence[ChatMessage],
        settings: RetrievalSettings | None = None,
        **overrides: Any,
    ) -> RetrievalResult:
        """Retrieve for a question or for the latest turn of a conversation."""
        runtime = self.runtime(tenant)
        settings = replace(settings or runtime.retrieval, **overrides)
        if settings.k < 1:
            raise InputError(f"k must be at least 1, got {settings.k}")
        text = query if isinstance(query, str) else retrieval_query(query, settings.history_turns)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        depth = max(settings.k, settings.candidates) if settings.mode == "hybrid" else settings.k
        arms: dict[str, list[ScoredChunk]] = {}
        if settings.mode in ("dense", "hybrid"):
            vector = await _timed(timings, "embedding",
                                  runtime.embedder.embed([text], kind="query"))
            dense_task = _timed(timings, "dense", self.vectors.search(tenant, vector[0], depth))
        if settings.mode in ("lexical", "hybrid"):
            lexical_task = _timed(timings, "lexical", self.lexical.search(tenant, text, depth))
        if settings.mode == "hybrid":
            arms["dense"], arms["lexical"] = await asyncio.gather(dense_task, lexical_task)
            fusing = time.perf_counter()
            if settings.fusion == "rrf":
                hits = reciprocal_rank_fusion(arms, settings.k, settings.rrf_k)
            else:
                weights = {"dense": settings.dense_weight, "lexical": 1 - settings.dense_weight}
                hits = weighted_score_fusion(arms, settings.k, weights)
            timings["fusion"] = (time.perf_counter() - fusing) * 1000
        elif settings.mode == "dense":
            arms["dense"] = rank(await dense_task)
            hits = arms["dense"][: settings.k]
        elif settings.mode == "lexical":
            arms["lexical"] = rank(await lexical_task)
            hits = arms["lexical"][: settings.k]
        else:
            raise InputError(f"unknown retrieval mode {settings.mode!r}")
        latency = (time.perf_counter() - started) * 1000
        return RetrievalResult(hits=hits, arms=arms, query=text, latency_ms=latency,
                               timings_ms=timings)

    async def answer(
        self,
        tenant: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: RetrievalSettings | None = None,
        max_tokens: int | None = None,
        **overrides: Any,
    ) -> Answer:
        """Retrieve for the latest turn, then let the tenant's provider answer from the hits,
        in at most `max_tokens` (capped by the tenant's own answer limit)."""
        runtime = self.runtime(tenant)
        started = time.perf_counter()
        retrieval = await self.retrieve(tenant, messages, settings, **overrides)
        generation = await runtime.provider.chat(
            messages,
            contexts=retrieval.hits[: runtime.max_context_chunks],
            tools=tools,
            max_tokens=_smallest(max_tokens, runtime.max_answer_tokens),
        )
        return Answer(
            text=generation.text,
            retrieval=retrieval,
            tool_calls=generation.tool_calls,
            cited_chunk_ids=generation.cited_chunk_ids,
            abstained=generation.abstained,
            usage=generation.usage,
            latency_ms=(time.perf_counter() - started) * 1000,
            model=generation.model,
            timings_ms={**retrieval.timings_ms, "generation": generation.latency_ms,
                        **({"first_token": generation.first_token_ms}
                           if generation.first_token_ms is not None else {})},
        )


def _unique(documents: Iterable[Document]) -> list[Document]:
    docs: dict[str, Document] = {}
    for doc in documents:
        if doc.doc_id in docs:
            raise InputError(f"duplicate document id {doc.doc_id!r}", location=doc.source or None)
        docs[doc.doc_id] = doc
    return list(docs.values())


async def _timed(timings: dict[str, float], stage: str, step: Awaitable[T]) -> T:
    """Await `step`, recording its duration in ms under `stage`."""
    started = time.perf_counter()
    result = await step
    timings[stage] = (time.perf_counter() - started) * 1000
    return result


def _smallest(*caps: int | None) -> int | None:
    """The tightest of the given limits; None when there is none."""
    present = [cap for cap in caps if cap is not None]
    return min(present) if present else None
