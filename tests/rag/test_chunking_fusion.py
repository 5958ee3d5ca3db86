"""Chunk ids, chunk sizes, fusion arithmetic and the conversation query."""

from __future__ import annotations

import pytest

from rag.chunking import chunk_document, document_hash
from rag.conversation import retrieval_query
from rag.domain import ChatMessage, Document, ScoredChunk
from rag.errors import InputError
from rag.fusion import rank, reciprocal_rank_fusion, weighted_score_fusion


def _hit(chunk_id: str, score: float) -> ScoredChunk:
    return ScoredChunk(chunk_id, chunk_id.split("#")[0], "", score)


def test_chunks_name_their_document_and_respect_the_size() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 60 for i in range(10))
    chunks = chunk_document(Document("policy", text), max_chars=400)
    assert [c.chunk_id for c in chunks] == [f"policy#{i}" for i in range(len(chunks))]
    assert len(chunks) > 3
    assert all(len(c.text) <= 400 for c in chunks)
    assert {c.doc_hash for c in chunks} == {document_hash(Document("policy", text))}


def test_chunk_ids_are_stable_and_hash_follows_content() -> None:
    doc = Document("a", "One. Two. Three.")
    assert chunk_document(doc) == chunk_document(doc)
    assert document_hash(doc) != document_hash(Document("a", "One. Two. Four."))


def test_a_very_long_sentence_is_cut_not_lost() -> None:
    chunks = chunk_document(Document("x", "z" * 1000), max_chars=300)
    assert "".join(c.text.replace(" ", "") for c in chunks).count("z") >= 1000


def test_rank_breaks_ties_by_id_descending() -> None:
    ranked = rank([_hit("a#0", 1.0), _hit("c#0", 1.0), _hit("b#0", 2.0)])
    assert [h.chunk_id for h in ranked] == ["b#0", "c#0", "a#0"]


def test_rrf_scores_are_the_sum_of_reciprocal_ranks() -> None:
    arms = {"dense": [_hit("a#0", 0.9), _hit("b#0", 0.8)], "lexical": [_hit("b#0", 7.0)]}
    fused = reciprocal_rank_fusion(arms, k=10, rrf_k=60)
    scores = {h.chunk_id: h.score for h in fused}
    assert scores["b#0"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["a#0"] == pytest.approx(1 / 61)
    assert [h.chunk_id for h in fused] == ["b#0", "a#0"]


def test_weighted_fusion_normalises_each_arm() -> None:
    arms = {
        "dense": [_hit("a#0", 0.9), _hit("b#0", 0.5)],
        "lexical": [_hit("b#0", 20.0), _hit("c#0", 10.0)],
    }
    fused = weighted_score_fusion(arms, k=2, weights={"dense": 0.3, "lexical": 0.7})
    assert [h.chunk_id for h in fused] == ["b#0", "a#0"]
    assert fused[0].score == pytest.approx(0.7)
    assert fused[1].score == pytest.approx(0.3)


def test_conversation_query_carries_the_earlier_user_turn() -> None:
    messages = [
        ChatMessage("user", "How much parental leave do fathers get?"),
        ChatMessage("assistant", "Twelve weeks."),
        ChatMessage("user", "Is it paid?"),
    ]
    query = retrieval_query(messages)
    assert query.startswith("Is it paid?")
    assert "parental leave" in query
    assert "Twelve" not in query
    with pytest.raises(InputError):
        retrieval_query([ChatMessage("assistant", "hi")])
