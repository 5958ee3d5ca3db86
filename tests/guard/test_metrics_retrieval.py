"""Retrieval metrics against pytrec_eval (trec_eval) on real SciFact judgments and three runs."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest
import pytrec_eval
from rank_bm25 import BM25Okapi

from guard.metrics.retrieval import (
    DEFAULT_KS,
    average_precision,
    dedupe,
    documents_from_chunks,
    hit_at_k,
    ndcg_at_k,
    precision_at_k,
    rank_by_score,
    recall_at_k,
    reciprocal_rank,
    retrieval_metrics,
)

SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "data" / "scifact"
STOP = {"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "of",
        "on", "or", "that", "the", "to", "with"}
KS_TEXT = ",".join(str(k) for k in DEFAULT_KS)
MEASURES = {f"P.{KS_TEXT}", f"recall.{KS_TEXT}", f"ndcg_cut.{KS_TEXT}", f"success.{KS_TEXT}",
            f"map_cut.{KS_TEXT}", "recip_rank", "map"}
TREC_NAMES = {"P": "P", "R": "recall", "hit": "success", "nDCG": "ndcg_cut"}

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def _tokens(text: str) -> list[str]:
    return [t for t in re.findall(r"\w+", text.lower()) if t not in STOP]


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def qrels() -> Qrels:
    judged: Qrels = {}
    with (SCIFACT / "qrels" / "test.tsv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            judged.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return judged


@pytest.fixture(scope="module")
def bm25_run(qrels: Qrels) -> Run:
    """BM25 (rank_bm25, title + text) top 1000 for each of the 300 judged queries."""
    corpus = _read_jsonl(SCIFACT / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in _read_jsonl(SCIFACT / "queries.jsonl")}
    index = BM25Okapi([_tokens(d["title"] + " " + d["text"]) for d in corpus])
    ids = [d["_id"] for d in corpus]
    run: Run = {}
    for qid in qrels:
        scores = index.get_scores(_tokens(queries[qid]))
        by_score = dict(zip(ids, (float(s) for s in scores), strict=True))
        run[qid] = {d: by_score[d] for d in rank_by_score(by_score)[:1000]}
    return run


def _tied_run(run: Run) -> Run:
    """Scores rounded to one decimal, top 200: many ties that only the tie rule orders."""
    return {q: {d: round(s, 1) for d, s in list(docs.items())[:200]} for q, docs in run.items()}


def _perturbed(run: Run, qrels: Qrels) -> tuple[Run, Qrels]:
    """Integer scores from 0 to 9 (heavy ties), random cut-offs, some empty runs, and graded
    judgments (grades 0 to 3, grade-0 entries on retrieved documents, some queries with no
    relevant document at all)."""
    rng = random.Random(20240601)
    new_run: Run = {}
    new_qrels: Qrels = {}
    for qid, docs in run.items():
        top = list(docs)[: rng.choice([0, 1, 7, 30, 150, 400])]
        new_run[qid] = {d: float(rng.randint(0, 9)) for d in top}
        graded = {d: rng.choice([1, 2, 3]) for d in qrels[qid]}
        for d in rng.sample(top, min(3, len(top))):
            graded.setdefault(d, 0)
        if rng.random() < 0.05:
            graded = dict.fromkeys(graded, 0)
        new_qrels[qid] = graded
    return new_run, new_qrels


def _with_duplicates(ranked: list[str]) -> list[str]:
    """Re-insert every third document a few ranks later: must not change any score."""
    out: list[str] = []
    for i, doc_id in enumerate(ranked):
        out.append(doc_id)
        if i >= 2:
            out.append(ranked[i - 2])
    return out


def _assert_matches_trec_eval(run: Run, qrels: Qrels, duplicates: bool = False) -> int:
    trec = pytrec_eval.RelevanceEvaluator(qrels, MEASURES).evaluate(
        {q: docs for q, docs in run.items() if docs})
    compared = 0
    for qid, judged in qrels.items():
        ranked = rank_by_score(run.get(qid, {}))
        ours = retrieval_metrics(_with_duplicates(ranked) if duplicates else ranked, judged)
        if not any(grade >= 1 for grade in judged.values()):
            assert all(value is None for value in ours.values()), qid
            continue
        expected = trec.get(qid)
        for name, value in ours.items():
            if name in ("MRR", "MAP"):
                trec_name = "recip_rank" if name == "MRR" else "map"
            else:
                kind, k = name.split("@")
                trec_name = f"{TREC_NAMES[kind]}_{k}"
            want = 0.0 if expected is None else expected[trec_name]
            assert value == pytest.approx(want, abs=1e-6), (qid, name, value, want)
            compared += 1
        for k in DEFAULT_KS:
            want = 0.0 if expected is None else expected[f"map_cut_{k}"]
            assert average_precision(ranked, judged, k) == pytest.approx(want, abs=1e-6)
    return compared


def test_bm25_run_matches_trec_eval(bm25_run: Run, qrels: Qrels) -> None:
    assert len(qrels) == 300
    assert _assert_matches_trec_eval(bm25_run, qrels) == 300 * (4 * len(DEFAULT_KS) + 2)


def test_tied_run_matches_trec_eval(bm25_run: Run, qrels: Qrels) -> None:
    tied = _tied_run(bm25_run)
    assert sum(len(set(docs.values())) < len(docs) for docs in tied.values()) > 250
    _assert_matches_trec_eval(tied, qrels)


def test_perturbed_graded_run_with_duplicates_matches_trec_eval(
    bm25_run: Run, qrels: Qrels
) -> None:
    run, graded = _perturbed(bm25_run, qrels)
    assert any(not docs for docs in run.values())
    assert any(not any(g >= 1 for g in judged.values()) for judged in graded.values())
    _assert_matches_trec_eval(run, graded, duplicates=True)


def test_rank_by_score_breaks_ties_by_id_descending() -> None:
    assert rank_by_score({"a": 1.0, "c": 2.0, "b": 2.0, "d": 0.5}) == ["c", "b", "a", "d"]
    assert rank_by_score({}) == []


def test_documents_from_chunks_keeps_best_chunk() -> None:
    assert documents_from_chunks(["d2", "d1", "d2", "d3", "d1"]) == ["d2", "d1", "d3"]
    assert dedupe([]) == []


def test_hand_computed_values() -> None:
    judged = {"a": 1, "b": 0, "c": 2}
    ranked = ["x", "a", "b", "c"]
    assert precision_at_k(ranked, judged, 2) == 0.5
    assert precision_at_k(ranked, judged, 10) == 0.2
    assert recall_at_k(ranked, judged, 2) == 0.5
    assert hit_at_k(ranked, judged, 1) == 0.0
    assert hit_at_k(ranked, judged, 2) == 1.0
    assert reciprocal_rank(ranked, judged) == 0.5
    assert average_precision(ranked, judged) == pytest.approx((1 / 2 + 2 / 4) / 2)
    log3, log5 = 1.584962500721156, 2.321928094887362
    assert ndcg_at_k(ranked, judged, 4) == pytest.approx((1 / log3 + 2 / log5) / (2 + 1 / log3))


def test_empty_run_scores_zero_and_no_relevant_is_none() -> None:
    assert all(v == 0.0 for v in retrieval_metrics([], {"a": 1}).values())
    assert all(v is None for v in retrieval_metrics(["a"], {"a": 0}).values())
    assert all(v is None for v in retrieval_metrics(["a"], {}).values())


def test_duplicates_count_once() -> None:
    assert precision_at_k(["a", "a", "b"], {"a": 1}, 2) == 0.5
    assert reciprocal_rank(["x", "x", "a"], {"a": 1}) == 0.5


def test_non_positive_k_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        precision_at_k(["a"], {"a": 1}, 0)
