"""Retrieval metrics by document id, with trec_eval conventions.

Conventions shared by every function here:

- ``ranked`` is a list of document ids, best first, already ordered by the caller. Rank with
  :func:`rank_by_score` to get trec_eval's tie rule (score descending, then id descending).
- ``qrels`` maps a document id to a grade: grade >= 1 is relevant, grade 0 or an absent id is
  not. nDCG uses the grade itself as the gain (linear gain, as trec_eval).
- A duplicate id in ``ranked`` counts only at its first occurrence; later copies are dropped
  before anything is counted (so they neither score nor take a rank).
- A query with no relevant judgment has no defined score: every function returns ``None``, to be
  left out of means and counted, never averaged as 0. (trec_eval would report 0 for such a query.)
- A query with no results scores 0 on every measure.
- ``k`` must be a positive integer; P@k always divides by ``k``, even when fewer than ``k``
  documents were retrieved (trec_eval's ``P_k``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

Qrels = Mapping[str, int]

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 100)


def rank_by_score(scores: Mapping[str, float]) -> list[str]:
    """Order ``{doc_id: score}`` the way trec_eval does: score descending, ties by id descending.

    Ids compare as Python strings (code-point order, the same as trec_eval's byte order on
    UTF-8). This is TruthGuard's one tie rule for retrieval scores.
    """
    ordered = sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return [doc_id for doc_id, _ in ordered]


def dedupe(ids: Iterable[str]) -> list[str]:
    """Keep the first occurrence of each id, preserving order."""
    return list(dict.fromkeys(ids))


def documents_from_chunks(chunk_doc_ids: Iterable[str]) -> list[str]:
    """Turn a ranked list of chunks (given as their document ids) into a ranked list of documents.

    Each document takes the rank of its best (first-ranked) chunk; later chunks of the same
    document are dropped. ``["d2", "d1", "d2", "d3"]`` becomes ``["d2", "d1", "d3"]``.
    """
    return dedupe(chunk_doc_ids)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")


def _relevant(qrels: Qrels) -> set[str]:
    return {doc_id for doc_id, grade in qrels.items() if grade >= 1}


def precision_at_k(ranked: Sequence[str], qrels: Qrels, k: int) -> float | None:
    """P@k = (relevant documents among the first k) / k. ``None`` if no document is relevant."""
    _check_k(k)
    relevant = _relevant(qrels)
    if not relevant:
        return None
    return sum(doc_id in relevant for doc_id in dedupe(ranked)[:k]) / k


def recall_at_k(ranked: Sequence[str], qrels: Qrels, k: int) -> float | None:
    """R@k = (relevant documents among the first k) / (relevant documents in ``qrels``).

    ``None`` if no document is relevant.
    """
    _check_k(k)
    relevant = _relevant(qrels)
    if not relevant:
        return None
    return sum(doc_id in relevant for doc_id in dedupe(ranked)[:k]) / len(relevant)


def hit_at_k(ranked: Sequence[str], qrels: Qrels, k: int) -> float | None:
    """hit@k = 1.0 if any of the first k documents is relevant, else 0.0 (trec_eval ``success``).

    ``None`` if no document is relevant.
    """
    _check_k(k)
    relevant = _relevant(qrels)
    if not relevant:
        return None
    return float(any(doc_id in relevant for doc_id in dedupe(ranked)[:k]))


def reciprocal_rank(ranked: Sequence[str], qrels: Qrels) -> float | None:
    """RR = 1 / (rank of the first relevant document), ranks from 1; 0.0 if none is retrieved.

    Over the whole list (trec_eval ``recip_rank``); its mean over queries is MRR. ``None`` if no
    document is relevant.
    """
    relevant = _relevant(qrels)
    if not relevant:
        return None
    for rank, doc_id in enumerate(dedupe(ranked), start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], qrels: Qrels, k: int) -> float | None:
    """nDCG@k with linear gain and log2 discount (trec_eval ``ndcg_cut_k``).

    DCG@k = sum over the first k documents of gain / log2(rank + 1), gain = the grade if it is
    >= 1, else 0. The ideal DCG@k ranks every judged document by grade, descending, and cuts at
    k. nDCG@k = DCG@k / ideal DCG@k. ``None`` if no document is relevant.
    """
    _check_k(k)
    gains = {doc_id: grade for doc_id, grade in qrels.items() if grade >= 1}
    if not gains:
        return None
    dcg = sum(gains.get(doc_id, 0) / math.log2(rank + 1)
              for rank, doc_id in enumerate(dedupe(ranked)[:k], start=1))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ideal, start=1))
    return dcg / idcg


def average_precision(ranked: Sequence[str], qrels: Qrels, k: int | None = None) -> float | None:
    """AP = (sum of P@rank over the ranks holding a relevant document) / (relevant documents).

    Over the whole list when ``k`` is None (trec_eval ``map``), else over the first k documents
    with the same denominator (trec_eval ``map_cut_k``). Relevant documents never retrieved add 0.
    Its mean over queries is MAP. ``None`` if no document is relevant.
    """
    relevant = _relevant(qrels)
    if not relevant:
        return None
    docs = dedupe(ranked)
    if k is not None:
        _check_k(k)
        docs = docs[:k]
    hits = 0
    total = 0.0
    for rank, doc_id in enumerate(docs, start=1):
        if doc_id in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


def retrieval_metrics(
    ranked_doc_ids: Sequence[str], qrels: Qrels, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float | None]:
    """Every retrieval metric for one query, keyed ``"P@k"``, ``"R@k"``, ``"hit@k"``,
    ``"nDCG@k"`` for each k in ``ks``, plus ``"MRR"`` (reciprocal rank) and ``"MAP"`` (average
    precision over the whole list).

    All values are ``None`` when no document is relevant (see the module docstring).
    """
    docs = dedupe(ranked_doc_ids)
    scores: dict[str, float | None] = {}
    for k in ks:
        scores[f"P@{k}"] = precision_at_k(docs, qrels, k)
        scores[f"R@{k}"] = recall_at_k(docs, qrels, k)
        scores[f"hit@{k}"] = hit_at_k(docs, qrels, k)
        scores[f"nDCG@{k}"] = ndcg_at_k(docs, qrels, k)
    scores["MRR"] = reciprocal_rank(docs, qrels)
    scores["MAP"] = average_precision(docs, qrels)
    return scores
