"""Fusing the ranked lists of several retrievers into one.

Tie rule, used for every ranked list in the project: higher score first; equal scores are
ordered by id descending, as trec_eval does, so that our metrics and trec_eval's agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rag.domain import ScoredChunk


def rank(hits: Sequence[ScoredChunk]) -> list[ScoredChunk]:
    """Sort by score descending, ties by chunk id descending."""
    return sorted(hits, key=lambda h: (h.score, h.chunk_id), reverse=True)


def _by_id(arms: Mapping[str, Sequence[ScoredChunk]]) -> dict[str, ScoredChunk]:
    seen: dict[str, ScoredChunk] = {}
    for hits in arms.values():
        for hit in hits:
            seen.setdefault(hit.chunk_id, hit)
    return seen


def _with_score(hit: ScoredChunk, score: float) -> ScoredChunk:
    return ScoredChunk(hit.chunk_id, hit.doc_id, hit.text, score, hit.title)


def reciprocal_rank_fusion(
    arms: Mapping[str, Sequence[ScoredChunk]], k: int, rrf_k: int = 60
) -> list[ScoredChunk]:
    """RRF: score(d) = sum over arms of 1 / (rrf_k + rank_arm(d)), ranks from 1.

    A document missing from an arm gets nothing from that arm. Returns the top `k`.
    """
    scores: dict[str, float] = {}
    for hits in arms.values():
        for position, hit in enumerate(rank(hits), start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (rrf_k + position)
    seen = _by_id(arms)
    return rank([_with_score(seen[cid], s) for cid, s in scores.items()])[:k]


def weighted_score_fusion(
    arms: Mapping[str, Sequence[ScoredChunk]], k: int, weights: Mapping[str, float]
) -> list[ScoredChunk]:
    """Convex combination of min-max normalised scores: sum of w_arm * norm_arm(d).

    Each arm's scores are scaled to [0, 1] over its own list (all equal scores become 1);
    a document missing from an arm gets 0 from it. Returns the top `k`.
    """
    scores: dict[str, float] = {}
    for name, hits in arms.items():
        if not hits:
            continue
        low = min(h.score for h in hits)
        span = max(h.score for h in hits) - low
        weight = weights.get(name, 0.0)
        for hit in hits:
            norm = (hit.score - low) / span if span > 0 else 1.0
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight * norm
    seen = _by_id(arms)
    return rank([_with_score(seen[cid], s) for cid, s in scores.items()])[:k]
