"""Dense vectors in LanceDB on disk: one table per tenant, cosine distance, ANN index when large.

Isolation is structural: tenant `hr` lives in table `chunks_hr`, and the table name is built
only from a validated tenant id. Deletes by document use LanceDB's typed expressions, which
escape values, never SQL strings pasted together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from rag.domain import Chunk, ScoredChunk
from rag.errors import StorageError
from rag.fusion import rank
from rag.ports import Vectors
from rag.tenancy import validate_tenant_id

IndexKind = Literal["ivf_pq", "ivf_hnsw_sq"]


class LanceDBVectorStore:
    def __init__(
        self,
        path: Path,
        ann_threshold: int = 50_000,
        index_kind: IndexKind = "ivf_hnsw_sq",
        nprobes: int = 20,
        refine_factor: int = 0,
        read_consistency_seconds: float = 1.0,
    ) -> None:
        self._path = Path(path)
        self.ann_threshold = ann_threshold
        self.index_kind = index_kind
        self.nprobes = nprobes
        self.refine_factor = refine_factor
        self._consistency = timedelta(seconds=read_consistency_seconds)
        self._db: Any = None
        self._tables: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        if self._db is None:
            import lancedb

            self._path.mkdir(parents=True, exist_ok=True)
            self._db = await lancedb.connect_async(
                str(self._path), read_consistency_interval=self._consistency
            )
        return self._db

    @staticmethod
    def table_name(tenant: str) -> str:
        return f"chunks_{validate_tenant_id(tenant)}"

    async def _table(self, tenant: str, dimension: int | None = None) -> Any:
        name = self.table_name(tenant)
        if name in self._tables:
            return self._tables[name]
        db = await self._connect()
        async with self._lock:
            if name not in self._tables:
                try:
                    self._tables[name] = await db.open_table(name)
                except ValueError:  # LanceDB's "Table ... was not found"
                    if dimension is None:
                        return None
                    self._tables[name] = await db.create_table(
                        name, schema=_schema(dimension), exist_ok=True
                    )
        return self._tables[name]

    async def upsert(self, tenant: str, chunks: Sequence[Chunk], vectors: Vectors) -> None:
        if not chunks:
            return
        if len(chunks) != len(vectors):
            raise StorageError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        table = await self._table(tenant, int(vectors.shape[1]))
        rows = pa.table(
            {
                "chunk_id": [c.chunk_id for c in chunks],
                "doc_id": [c.doc_id for c in chunks],
                "doc_hash": [c.doc_hash for c in chunks],
                "title": [c.title for c in chunks],
                "text": [c.text for c in chunks],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.astype("float32").ravel()), int(vectors.shape[1])
                ),
            },
            schema=_schema(int(vectors.shape[1])),
        )
        try:
            await self._delete(table, sorted({c.doc_id for c in chunks}))
            await table.add(rows)
        except (OSError, ValueError, RuntimeError) as exc:
            raise StorageError(f"cannot write vectors of tenant {tenant!r}: {exc}") from exc

    @staticmethod
    async def _delete(table: Any, doc_ids: Sequence[str]) -> None:
        from lancedb.expr import col, lit

        for start in range(0, len(doc_ids), 500):
            batch = doc_ids[start : start + 500]
            await table.delete(col("doc_id").isin([lit(d) for d in batch]))

    async def delete_documents(self, tenant: str, doc_ids: Sequence[str]) -> None:
        table = await self._table(tenant)
        if table is not None and doc_ids:
            await self._delete(table, list(doc_ids))

    async def document_hashes(self, tenant: str) -> dict[str, str]:
        table = await self._table(tenant)
        if table is None:
            return {}
        data = await table.query().select(["doc_id", "doc_hash"]).to_arrow()
        return dict(zip(data["doc_id"].to_pylist(), data["doc_hash"].to_pylist(), strict=True))

    async def search(self, tenant: str, vector: Vectors, k: int) -> list[ScoredChunk]:
        table = await self._table(tenant)
        if table is None or k < 1:
            return []
        query = (
            table.vector_search(vector.astype("float32"))
            .distance_type("cosine")
            .select(["chunk_id", "doc_id", "title", "text", "_distance"])
            .limit(k)
        )
        if self.nprobes:
            query = query.nprobes(self.nprobes)
        if self.refine_factor:
            query = query.refine_factor(self.refine_factor)
        result = await query.to_arrow()
        return rank(
            [
                ScoredChunk(chunk_id, doc_id, text, 1.0 - float(distance), title)
                for chunk_id, doc_id, title, text, distance in zip(
                    result["chunk_id"].to_pylist(),
                    result["doc_id"].to_pylist(),
                    result["title"].to_pylist(),
                    result["text"].to_pylist(),
                    result["_distance"].to_pylist(),
                    strict=True,
                )
            ]
        )

    async def count(self, tenant: str) -> int:
        table = await self._table(tenant)
        return 0 if table is None else int(await table.count_rows())

    async def optimize(self, tenant: str) -> None:
        """Build the ANN index once the table is large enough; fold new rows into it after."""
        table = await self._table(tenant)
        if table is None:
            return
        has_index = any(i.columns == ["vector"] for i in await table.list_indices())
        if has_index:
            await table.optimize()
        elif await table.count_rows() >= self.ann_threshold:
            await table.create_index("vector", config=self._index_config())

    def _index_config(self) -> Any:
        from lancedb.index import HnswSq, IvfPq

        if self.index_kind == "ivf_hnsw_sq":
            return HnswSq(distance_type="cosine")
        return IvfPq(distance_type="cosine")


def _schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            ("chunk_id", pa.string()),
            ("doc_id", pa.string()),
            ("doc_hash", pa.string()),
            ("title", pa.string()),
            ("text", pa.string()),
            ("vector", pa.list_(pa.float32(), dimension)),
        ]
    )
