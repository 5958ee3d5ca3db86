"""Retrieval speed benchmark: synthetic corpora of 10k and 100k chunks, every mode.

Prints, per corpus size: ingestion rate (chunks/s, embedding included), ANN index build
time, p50/p95 query latency for lexical, dense and hybrid, and dense recall@10 against exact
search (numpy over the same vectors). Chunks are recombined SciFact sentences, so texts and
embeddings have the structure of real abstracts; queries are the 300 SciFact claims.

    .venv/bin/python scripts/bench_retrieval.py --sizes 10000 100000   # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "scifact"
sys.path.insert(0, str(ROOT))

from rag.adapters.embedders import HashingEmbedder, MiniLMEmbedder  # noqa: E402
from rag.adapters.lancedb_store import LanceDBVectorStore  # noqa: E402
from rag.adapters.lexical import BM25sLexicalIndex, RankBM25LexicalIndex  # noqa: E402
from rag.domain import Document, Generation  # noqa: E402
from rag.pipeline import RagPipeline, TenantRuntime  # noqa: E402


class _NoProvider:
    name = model = "none"

    async def chat(self, *args: object, **kwargs: object) -> Generation:
        raise RuntimeError("the benchmark never generates")


def synthetic_documents(n: int, seed: int = 7) -> list[Document]:
    sentences: list[str] = []
    for line in SHARED.joinpath("corpus.jsonl").read_text().splitlines():
        sentences.extend(s for s in re.split(r"(?<=[.!?])\s+", json.loads(line)["text"]) if s)
    rng = random.Random(seed)
    return [
        Document(f"d{i}", " ".join(rng.sample(sentences, rng.randint(2, 4))), title="")
        for i in range(n)
    ]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def bench(size: int, args: argparse.Namespace, queries: list[str]) -> dict[str, float]:
    folder = args.work / f"n{size}"
    shutil.rmtree(folder, ignore_errors=True)
    embedder = MiniLMEmbedder(batch_size=128, threads=args.threads) if args.embedder == "minilm" \
        else HashingEmbedder(384)
    store = LanceDBVectorStore(folder / "lancedb", ann_threshold=args.ann_threshold,
                               index_kind=args.index_kind, nprobes=args.nprobes,
                               refine_factor=args.refine_factor)
    lexical_cls = BM25sLexicalIndex if args.engine == "bm25s" else RankBM25LexicalIndex
    lexical = lexical_cls(folder / "lexical")
    runtime = TenantRuntime(embedder=embedder, provider=_NoProvider(), chunk_chars=100_000)
    pipeline = RagPipeline({"bench": runtime}, store, lexical, embed_batch=2048)
    docs = synthetic_documents(size)

    # Ingestion without the final index build, then the build on its own, timed apart.
    store.ann_threshold = size + 1
    started = time.perf_counter()
    await pipeline.ingest("bench", docs)
    ingest_s = time.perf_counter() - started
    store.ann_threshold = args.ann_threshold
    started = time.perf_counter()
    await store.optimize("bench")
    build_s = time.perf_counter() - started

    out: dict[str, float] = {"chunks": size, "ingest_chunks_per_s": size / ingest_s,
                             "index_build_s": build_s}
    for mode in ("lexical", "dense", "hybrid"):
        await pipeline.retrieve("bench", queries[0], mode=mode, k=10)  # warm caches
        latencies = []
        for query in queries:
            t0 = time.perf_counter()
            await pipeline.retrieve("bench", query, mode=mode, k=10)
            latencies.append((time.perf_counter() - t0) * 1000)
        out[f"{mode}_p50_ms"] = statistics.median(latencies)
        out[f"{mode}_p95_ms"] = percentile(latencies, 95)

    # Dense recall@10 of the (ANN) store against exact search over the stored vectors.
    table = await store._table("bench")
    data = await table.query().select(["chunk_id", "vector"]).to_arrow()
    ids = np.asarray(data["chunk_id"].to_pylist())
    matrix = np.stack(data["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    query_vectors = await embedder.embed(queries, kind="query")
    recalls = []
    for qv in query_vectors:
        exact = set(ids[np.argsort(-(matrix @ qv))[:10]])
        found = {h.chunk_id for h in await store.search("bench", qv, 10)}
        recalls.append(len(exact & found) / 10)
    out["dense_recall_at_10"] = float(np.mean(recalls))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--engine", choices=["bm25s", "rank-bm25"], default="bm25s")
    parser.add_argument("--index-kind", choices=["ivf_pq", "ivf_hnsw_sq"], default="ivf_hnsw_sq")
    parser.add_argument("--ann-threshold", type=int, default=50_000)
    parser.add_argument("--nprobes", type=int, default=20)
    parser.add_argument("--refine-factor", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench")
    args = parser.parse_args()
    queries = [json.loads(line)["text"] for line in
               SHARED.joinpath("queries.jsonl").read_text().splitlines()][: args.queries]
    print(f"embedder {args.embedder}, lexical {args.engine}, ANN {args.index_kind} from "
          f"{args.ann_threshold} chunks (nprobes {args.nprobes}, refine {args.refine_factor}), "
          f"{len(queries)} queries, k=10")
    results = []
    for size in args.sizes:
        results.append(asyncio.run(bench(size, args, queries)))
        print(json.dumps(results[-1]), flush=True)  # each size as soon as it is done
    keys = list(results[0])
    print(f"\n{'metric':24}" + "".join(f"{int(r['chunks']):>12,}" for r in results))
    for key in keys[1:]:
        print(f"{key:24}" + "".join(f"{r[key]:12.3f}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
