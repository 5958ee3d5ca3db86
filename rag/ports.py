"""Ports of the pipeline: the seams where adapters plug in. All I/O is async."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from rag.domain import ChatMessage, Chunk, Generation, ScoredChunk

Vectors = npt.NDArray[np.float32]
EmbedKind = Literal["query", "passage"]


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dimension: int

    async def embed(self, texts: Sequence[str], kind: EmbedKind = "passage") -> Vectors: ...


class VectorStore(Protocol):
    """Dense vectors of chunks, isolated per tenant. Scores: higher is better (cosine)."""

    async def upsert(self, tenant: str, chunks: Sequence[Chunk], vectors: Vectors) -> None:
        """Replace every stored chunk of the documents named in `chunks` with `chunks`."""

    async def delete_documents(self, tenant: str, doc_ids: Sequence[str]) -> None: ...

    async def document_hashes(self, tenant: str) -> dict[str, str]:
        """Map of stored doc_id to the content hash it was ingested with."""

    async def search(self, tenant: str, vector: Vectors, k: int) -> list[ScoredChunk]: ...

    async def count(self, tenant: str) -> int: ...

    async def optimize(self, tenant: str) -> None:
        """Called after an ingestion: build or refresh an ANN index if the store has one."""


class LexicalIndex(Protocol):
    """A persistent BM25 index per tenant. Scores: higher is better."""

    name: str

    async def upsert(self, tenant: str, chunks: Sequence[Chunk]) -> None:
        """Replace every indexed chunk of the documents named in `chunks` with `chunks`."""

    async def delete_documents(self, tenant: str, doc_ids: Sequence[str]) -> None: ...

    async def document_hashes(self, tenant: str) -> dict[str, str]:
        """Map of indexed doc_id to the content hash it was indexed with."""

    async def search(self, tenant: str, query: str, k: int) -> list[ScoredChunk]: ...


class LLMProvider(Protocol):
    """Answers a conversation from the retrieved contexts, optionally choosing tools."""

    name: str
    model: str

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        contexts: Sequence[ScoredChunk] = (),
        tools: Sequence[dict[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> Generation: ...
