"""SQuAD answer metrics, abstention, and ragas' non-LLM metrics."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from guard.metrics.answers import (
    abstention_rates,
    classify_abstention,
    exact_match,
    is_abstention,
    normalize_answer,
    token_f1,
)

SQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad2-dev-5articles"


@pytest.mark.parametrize(("text", "normalized"), [
    ("The  Quick, brown fox!", "quick brown fox"),
    ("an apple a day", "apple day"),
    ("A.B.C.", "abc"),
    ("Theatre of the absurd", "theatre of absurd"),
    ("  ...  ", ""),
])
def test_squad_normalisation(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_hand_made() -> None:
    assert exact_match("the Eiffel Tower", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel Tower, Paris", ["Eiffel Tower"]) == 0.0
    assert token_f1("Eiffel Tower in Paris", ["the Eiffel Tower"]) == pytest.approx(2 / 3)
    assert token_f1("Paris", ["London", "Paris France"]) == pytest.approx(2 / 3)
    assert exact_match("paris", ["London", "Paris."]) == 1.0
    # tokens overlap as a multiset: 1 of 3 predicted "cat"s is matched
    assert token_f1("the cat cat cat", ["a cat"]) == pytest.approx(0.5)
    assert token_f1("dog", ["cat"]) == 0.0


def test_unanswerable_gold_is_the_empty_answer() -> None:
    assert exact_match("", []) == 1.0 and token_f1("", []) == 1.0
    assert exact_match("Paris", []) == 0.0 and token_f1("Paris", []) == 0.0
    assert exact_match("...", ["", " "]) == 1.0  # blank golds are dropped, as the official script
    refusal = "I cannot answer this from the context."
    assert exact_match(refusal, [], abstained=True) == 1.0
    assert token_f1(refusal, [], abstained=True) == 1.0
    assert exact_match(refusal, ["France"], abstained=True) == 0.0
    assert token_f1("France", ["France"], abstained=True) == 0.0


def test_squad2_first_gold_answer_scores_one() -> None:
    with (SQUAD / "qa.jsonl").open(encoding="utf-8") as handle:
        rows: list[dict[str, Any]] = [json.loads(line) for line in handle if line.strip()]
    assert len(rows) == 1407 and sum(r["is_impossible"] for r in rows) == 702
    for row in rows:
        golds = row["answers"]
        if row["is_impossible"]:
            assert golds == []
            assert exact_match("", golds) == 1.0
            assert exact_match("some claim", golds) == 0.0
        else:
            assert exact_match(golds[0], golds) == 1.0, row["id"]
            assert token_f1(golds[0], golds) == 1.0, row["id"]
            assert exact_match("", golds, abstained=True) == 0.0


@pytest.mark.parametrize("text", [
    "I cannot answer that from the provided context.",
    "I don't know.",
    "I don\u2019t know",
    "Sorry, there is not enough information in the documents.",
    "The context does not contain the answer to this question.",
    "This question cannot be answered from the documents.",
    "No answer",
    "N/A",
    "Unanswerable.",
    "",
    "   ",
    None,
])
def test_abstention_phrasings_detected(text: str | None) -> None:
    assert is_abstention(text)


@pytest.mark.parametrize("text", [
    "Paris",
    "The answer is 42.",
    "Normandy is a region in France.",
    "He said he knew the answer.",
    "None of the Norman rulers spoke English.",
])
def test_claims_are_not_abstentions(text: str) -> None:
    assert not is_abstention(text)


def test_explicit_flag_takes_precedence() -> None:
    assert is_abstention("Paris", flag=True)
    assert not is_abstention("I don't know", flag=False)
    assert not is_abstention("", flag=False)


def test_abstention_classification_and_rates() -> None:
    assert classify_abstention(is_impossible=True, abstained=True) == "correct_refusal"
    assert classify_abstention(is_impossible=True, abstained=False) == "hallucination"
    assert classify_abstention(is_impossible=False, abstained=True) == "missed_answer"
    assert classify_abstention(is_impossible=False, abstained=False) == "answered"
    rates = abstention_rates(["correct_refusal", "hallucination", "hallucination",
                              "missed_answer", "answered", "answered", "answered"])
    assert rates.counts == {"correct_refusal": 1, "hallucination": 2, "missed_answer": 1,
                            "answered": 3}
    assert rates.hallucination_rate == pytest.approx(2 / 3)
    assert rates.correct_refusal_rate == pytest.approx(1 / 3)
    assert rates.missed_answer_rate == pytest.approx(1 / 4)
    assert rates.refusal_precision == pytest.approx(1 / 2)
    empty = abstention_rates([])
    assert empty.hallucination_rate is None and empty.refusal_precision is None


REFERENCE = "The Normans gave their name to Normandy, a region in France."
CONTEXTS = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to "
    "Normandy, a region in France.",
    "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
]
UNRELATED = ["Photosynthesis converts light energy into chemical energy in plants.",
             "The stock market closed higher on Tuesday after a volatile session."]


def _nonllm(**sample: Any) -> dict[str, float | None]:
    from guard.metrics.ragas_nonllm import nonllm_scores

    return asyncio.run(nonllm_scores(**sample))


def test_ragas_nonllm_runs_offline_and_ranks_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ragas._analytics import do_not_track

    import guard.metrics.ragas_nonllm  # noqa: F401  (sets the opt-outs before ragas loads)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ragas tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert os.environ["RAGAS_DO_NOT_TRACK"] == "true" and do_not_track()
    perfect = _nonllm(response=REFERENCE, reference=REFERENCE,
                      retrieved_contexts=CONTEXTS, reference_contexts=CONTEXTS[:1])
    wrong = _nonllm(response="Vikings founded Paris in 1200.", reference=REFERENCE,
                    retrieved_contexts=UNRELATED, reference_contexts=CONTEXTS[:1])
    assert set(perfect) == set(wrong) and len(perfect) == 8
    for scores in (perfect, wrong):
        assert all(v is not None and 0.0 <= v <= 1.0 for v in scores.values()), scores
    for name in perfect:
        assert perfect[name] > wrong[name], name  # type: ignore[operator]
    assert perfect["ragas_exact_match"] == 1.0 and perfect["ragas_bleu_score"] == pytest.approx(1)
    assert perfect["ragas_non_llm_context_recall"] == 1.0
    assert wrong["ragas_non_llm_context_precision_with_reference"] == pytest.approx(0.0)


def test_ragas_nonllm_not_computable_is_none() -> None:
    no_reference = _nonllm(response="Paris", reference=None,
                           retrieved_contexts=CONTEXTS, reference_contexts=None)
    assert all(v is None for v in no_reference.values())
    nothing_retrieved = _nonllm(response="", reference=REFERENCE,
                                retrieved_contexts=[], reference_contexts=CONTEXTS)
    assert nothing_retrieved["ragas_non_llm_context_recall"] == 0.0
    assert nothing_retrieved["ragas_non_llm_context_precision_with_reference"] == 0.0
    assert nothing_retrieved["ragas_rouge_score"] == 0.0
