"""Reproduce published BEIR SciFact retrieval numbers with the `rag` CLI and pytrec_eval.

Runs `rag ingest` and `rag retrieve` (lexical, dense, hybrid) exactly as a user would, then
scores the TREC run files with pytrec_eval (trec_eval conventions: every judged query counts,
a query with no results scores 0, linear-gain nDCG, ties by document id descending).

    .venv/bin/python scripts/reproduce_scifact.py            # ~5 min on 2 cores (embedding)

The index lives under data/scifact-repro; a second run skips ingestion (idempotent upsert).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytrec_eval

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PUBLISHED = {  # nDCG@10, from ../shared/data/README.md and baselines/published_baselines.json
    "lexical": ("BM25, BEIR paper (Anserini 0.679)", 0.665),
    "dense": ("all-MiniLM-L6-v2, MTEB paper", 0.6451),
}


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines()[1:]:
        qid, did, grade = line.split("\t")
        if did != qid:
            qrels.setdefault(qid, {})[did] = int(grade)
    return qrels


def load_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        if did != qid:
            run.setdefault(qid, {})[did] = float(score)
    return run


def evaluate(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]
) -> dict[str, float]:
    """Mean over every judged query (trec_eval -c): a query missing from the run scores 0."""
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "recip_rank"})
    per_query = evaluator.evaluate(run)
    means = {}
    for measure in ("ndcg_cut_10", "recall_100", "recip_rank"):
        means[measure] = sum(per_query.get(q, {}).get(measure, 0.0) for q in qrels) / len(qrels)
    return means


def rag(*args: str) -> None:
    cmd = [sys.executable, "-m", "rag.entrypoints.cli", *args]
    print("$ rag", " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "scifact-repro")
    parser.add_argument("--chunk-chars", type=int, default=20000,
                        help="chunk size; the default keeps each abstract whole, as BEIR "
                        "and MTEB do (1500 splits 44%% of them and ranks by best chunk)")
    parser.add_argument("--engine", choices=["bm25s", "rank-bm25"], default="bm25s")
    parser.add_argument("--rrf-k", type=int, default=60)
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    config = args.data_dir / "truthguard.toml"
    config.write_text(
        f'data_dir = "{args.data_dir / "index"}"\n'
        f"[defaults]\nchunk_chars = {args.chunk_chars}\nrrf_k = {args.rrf_k}\n"
        f'[lexical]\nengine = "{args.engine}"\n'
        f'[tenants.scifact]\ncorpus = "{SHARED / "scifact" / "corpus.jsonl"}"\n'
    )
    rag("--config", str(config), "ingest", "--tenant", "scifact")
    qrels = load_qrels(SHARED / "scifact" / "qrels" / "test.tsv")
    rows = []
    for mode in ("lexical", "dense", "hybrid"):
        out = args.data_dir / f"run.{mode}.txt"
        rag("--config", str(config), "retrieve", "--tenant", "scifact", "--mode", mode,
            "--queries", str(SHARED / "scifact" / "queries.jsonl"), "--depth", "100",
            "--out", str(out))
        rows.append((mode, evaluate(load_run(out), qrels)))

    best_single = max(m["ndcg_cut_10"] for mode, m in rows if mode != "hybrid")
    print(f"\nSciFact test, {len(qrels)} judged queries, mean over all judged queries "
          f"(trec_eval -c); engine {args.engine}, chunk_chars {args.chunk_chars}\n")
    print(f"{'mode':8} {'nDCG@10':>8} {'R@100':>7} {'MRR':>7}  reference")
    for mode, m in rows:
        label, target = PUBLISHED.get(mode, ("better of lexical and dense", best_single))
        print(f"{mode:8} {m['ndcg_cut_10']:8.4f} {m['recall_100']:7.4f} {m['recip_rank']:7.4f}"
              f"  {label}: {target:.4f}")
    summary = {mode: m for mode, m in rows}
    (args.data_dir / "results.json").write_text(json.dumps(summary, indent=2))
    ok = (
        summary["lexical"]["ndcg_cut_10"] >= 0.665
        and abs(summary["dense"]["ndcg_cut_10"] - 0.645) <= 0.01
        and summary["hybrid"]["ndcg_cut_10"] > best_single
    )
    print("\nall targets met" if ok else "\nTARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
