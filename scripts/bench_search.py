"""Search-only latency and ANN recall on an index that `bench_retrieval.py` left on disk.

`bench_retrieval.py` times whole queries, MiniLM query embedding included. This script embeds
the 300 SciFact claims once, then times the stores alone (dense, lexical, RRF fusion of both)
and sweeps `nprobes` / `refine_factor` for dense recall@10 against exact search.

    .venv/bin/python scripts/bench_retrieval.py --sizes 100000     # builds data/bench/n100000
    .venv/bin/python scripts/bench_search.py --size 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag.adapters.embedders import MiniLMEmbedder  # noqa: E402
from rag.adapters.lancedb_store import LanceDBVectorStore  # noqa: E402
from rag.adapters.lexical import BM25sLexicalIndex  # noqa: E402
from rag.fusion import reciprocal_rank_fusion  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "scifact"


def p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def main(args: argparse.Namespace) -> None:
    folder = args.work / f"n{args.size}"
    if not (folder / "lancedb").exists():
        raise SystemExit(f"no index at {folder}: run bench_retrieval.py --sizes {args.size} first")
    queries = [json.loads(line)["text"] for line in
               SHARED.joinpath("queries.jsonl").read_text().splitlines()]
    vectors = await MiniLMEmbedder(threads=2).embed(queries, kind="query")
    lexical = BM25sLexicalIndex(folder / "lexical")
    store = LanceDBVectorStore(folder / "lancedb", read_consistency_seconds=3600)
    table = await store._table("bench")
    data = await table.query().select(["chunk_id", "vector"]).to_arrow()
    ids = np.asarray(data["chunk_id"].to_pylist())
    matrix = np.stack(data["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    exact = [set(ids[np.argsort(-(matrix @ v))[:10]]) for v in vectors]
    print(f"{args.size:,} chunks, {len(queries)} queries, k=10, search only (queries embedded "
          "beforehand)\n")
    print(f"{'nprobes':>7} {'refine':>6} {'recall@10':>9} {'dense p50':>9} {'p95':>6} "
          f"{'hybrid p50':>10} {'p95':>6}")
    for nprobes, refine in args.sweep:
        store.nprobes, store.refine_factor = nprobes, refine
        await store.search("bench", vectors[0], 10)
        dense_ms, hybrid_ms, recalls = [], [], []
        for query, vector, truth in zip(queries, vectors, exact, strict=True):
            t0 = time.perf_counter()
            dense = await store.search("bench", vector, 100)
            dense_ms.append((time.perf_counter() - t0) * 1000)
            recalls.append(len(truth & {h.chunk_id for h in dense[:10]}) / 10)
            t0 = time.perf_counter()
            arms = await asyncio.gather(store.search("bench", vector, 100),
                                        lexical.search("bench", query, 100))
            reciprocal_rank_fusion({"dense": arms[0], "lexical": arms[1]}, 10)
            hybrid_ms.append((time.perf_counter() - t0) * 1000)
        print(f"{nprobes:>7} {refine:>6} {statistics.mean(recalls):>9.3f} "
              f"{p(dense_ms, 50):>9.1f} {p(dense_ms, 95):>6.1f} {p(hybrid_ms, 50):>10.1f} "
              f"{p(hybrid_ms, 95):>6.1f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--sweep", type=lambda s: tuple(int(x) for x in s.split(":")),
                        nargs="+", default=[(20, 10), (40, 10), (64, 20), (128, 30)],
                        help="nprobes:refine_factor pairs")
    asyncio.run(main(parser.parse_args()))
