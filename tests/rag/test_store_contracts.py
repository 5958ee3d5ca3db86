"""One contract, every real adapter: LanceDB for vectors, bm25s and rank-bm25 for BM25.

Ordering, score direction, `k` respected, empty tenant, idempotent replace by document,
persistence across instances, and tenant A never seeing tenant B.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from rag.adapters.embedders import HashingEmbedder
from rag.adapters.lancedb_store import LanceDBVectorStore
from rag.adapters.lexical import BM25sLexicalIndex, RankBM25LexicalIndex
from rag.chunking import chunk_document, indexable_text
from rag.domain import Chunk, Document
from rag.errors import TenantIdError

pytestmark = pytest.mark.integration

DOCS = {
    "hr": [
        Document("leave", "Employees receive twenty five days of annual leave each year.", "Leave"),
        Document("parental", "Parents receive sixteen weeks of paid parental leave.", "Parental"),
        Document("expenses", "Submit travel expenses within thirty days with receipts."),
    ],
    "it": [
        Document("vpn", "Connect to the office VPN with the GlobalProtect client.", "VPN"),
        Document("password", "Passwords expire every ninety days and need twelve characters."),
    ],
}
EMBEDDER = HashingEmbedder(64)


def _chunks(tenant: str) -> list[Chunk]:
    return [c for d in DOCS[tenant] for c in chunk_document(d)]


async def _vectors(chunks: list[Chunk]) -> np.ndarray:
    return await EMBEDDER.embed([indexable_text(c) for c in chunks])


class DenseAdapter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = LanceDBVectorStore(path, read_consistency_seconds=0)

    def reopen(self) -> DenseAdapter:
        return DenseAdapter(self.path)

    async def upsert(self, tenant: str, chunks: list[Chunk]) -> None:
        await self.store.upsert(tenant, chunks, await _vectors(chunks))

    async def search(self, tenant: str, query: str, k: int) -> list:
        return await self.store.search(tenant, (await EMBEDDER.embed([query]))[0], k)

    async def delete(self, tenant: str, doc_ids: list[str]) -> None:
        await self.store.delete_documents(tenant, doc_ids)

    async def hashes(self, tenant: str) -> dict[str, str]:
        return await self.store.document_hashes(tenant)


class LexicalAdapter:
    def __init__(self, path: Path, cls: type) -> None:
        self.path, self.cls = path, cls
        self.index = cls(path)

    def reopen(self) -> LexicalAdapter:
        return LexicalAdapter(self.path, self.cls)

    async def upsert(self, tenant: str, chunks: list[Chunk]) -> None:
        await self.index.upsert(tenant, chunks)

    async def search(self, tenant: str, query: str, k: int) -> list:
        return await self.index.search(tenant, query, k)

    async def delete(self, tenant: str, doc_ids: list[str]) -> None:
        await self.index.delete_documents(tenant, doc_ids)

    async def hashes(self, tenant: str) -> dict[str, str]:
        return await self.index.document_hashes(tenant)


@pytest.fixture(params=["lancedb", "bm25s", "rank-bm25"])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> DenseAdapter | LexicalAdapter:
    if request.param == "lancedb":
        return DenseAdapter(tmp_path / "lancedb")
    cls = BM25sLexicalIndex if request.param == "bm25s" else RankBM25LexicalIndex
    return LexicalAdapter(tmp_path / "lexical", cls)


def _loaded(adapter: DenseAdapter | LexicalAdapter) -> DenseAdapter | LexicalAdapter:
    async def load() -> None:
        for tenant in DOCS:
            await adapter.upsert(tenant, _chunks(tenant))

    asyncio.run(load())
    return adapter


def test_finds_the_right_chunk_first_with_scores_descending(adapter) -> None:
    hits = asyncio.run(_loaded(adapter).search("hr", "how many days of annual leave", 3))
    assert hits[0].chunk_id == "leave#0"
    assert hits[0].doc_id == "leave"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_respects_k_and_empty_tenant(adapter) -> None:
    _loaded(adapter)
    assert len(asyncio.run(adapter.search("hr", "leave days receipts parents", 1))) == 1
    assert asyncio.run(adapter.search("nobody", "leave", 5)) == []


def test_tenants_never_see_each_other(adapter) -> None:
    _loaded(adapter)
    for tenant, docs in DOCS.items():
        own = {d.doc_id for d in docs}
        for query in ("VPN client", "annual leave", "passwords expire", "expenses receipts"):
            hits = asyncio.run(adapter.search(tenant, query, 10))
            assert {h.doc_id for h in hits} <= own


def test_upsert_replaces_a_documents_chunks_and_persists(adapter) -> None:
    _loaded(adapter)
    changed = Document("leave", "Employees now receive thirty days of holiday.", "Leave")
    asyncio.run(adapter.upsert("hr", chunk_document(changed)))
    reopened = adapter.reopen()
    hashes = asyncio.run(reopened.hashes("hr"))
    assert set(hashes) == {"leave", "parental", "expenses"}
    assert hashes["leave"] == chunk_document(changed)[0].doc_hash
    hits = asyncio.run(reopened.search("hr", "holiday thirty days", 10))
    leave_texts = [h.text for h in hits if h.doc_id == "leave"]
    assert leave_texts == ["Employees now receive thirty days of holiday."]


def test_delete_documents(adapter) -> None:
    _loaded(adapter)
    asyncio.run(adapter.delete("it", ["vpn"]))
    assert set(asyncio.run(adapter.hashes("it"))) == {"password"}
    assert all(h.doc_id != "vpn" for h in asyncio.run(adapter.search("it", "VPN client", 5)))


@pytest.mark.parametrize(
    "tenant",
    ["hr' OR '1'='1", "../it", "it/..", "HR", "hr\u0131", "h r", "", "it;DROP", "\u0430bc"],
)
def test_hostile_tenant_ids_are_refused(adapter, tenant: str) -> None:
    _loaded(adapter)
    with pytest.raises(TenantIdError):
        asyncio.run(adapter.search(tenant, "leave", 5))
    with pytest.raises(TenantIdError):
        asyncio.run(adapter.upsert(tenant, _chunks("hr")))


def test_quotes_in_document_ids_do_not_break_deletes(tmp_path: Path) -> None:
    adapter = DenseAdapter(tmp_path / "lancedb")
    odd = [Document("it's", "A quote in the id."), Document("x') OR ('1'='1", "An injection.")]
    chunks = [c for d in odd for c in chunk_document(d)]
    asyncio.run(adapter.upsert("hr", chunks + _chunks("hr")))
    asyncio.run(adapter.delete("hr", ["x') OR ('1'='1"]))
    assert set(asyncio.run(adapter.hashes("hr"))) == {"it's", "leave", "parental", "expenses"}
