"""Turning one golden case and one response into named metric values.

Names: `retrieval.<M>` for the final list, `retrieval.<arm>.<M>` per hybrid arm, `answer.em`,
`answer.f1`, `abstention.*`, `tools.*`, `ragas.*`, `judge.*`. A metric that does not apply to a
case (no judgments, no gold answers, no expected tools, no judge) is None, never 0 or NaN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from guard.domain import SutResponse
from guard.golden import GoldenCase
from guard.metrics.answers import exact_match, is_abstention, token_f1
from guard.metrics.retrieval import dedupe, retrieval_metrics
from guard.metrics.tools import score_tool_calls

Scores = dict[str, float | None]


class Judge(Protocol):
    """LLM-judged answer metrics (ragas' faithfulness, relevancy, context precision/recall)."""

    async def score(self, case: GoldenCase, response: SutResponse) -> Scores: ...


def retrieval_scores(case: GoldenCase, response: SutResponse, ks: Sequence[int]) -> Scores:
    if not case.relevant_doc_ids:
        return {}
    ranked = dedupe(c.doc_id for c in sorted(response.contexts, key=lambda c: c.rank))
    scores = {f"retrieval.{k}": v for k, v in
              retrieval_metrics(ranked, case.relevant_doc_ids, ks).items()}
    for arm, doc_ids in response.arms.items():
        arm_scores = retrieval_metrics(dedupe(doc_ids), case.relevant_doc_ids, ks)
        scores.update({f"retrieval.{arm}.{k}": v for k, v in arm_scores.items()})
    return scores


_CITATION = re.compile(r"\s*\[[^\[\]\s]+#\d+\]")


def answer_text(response: SutResponse) -> str:
    """The answer without `[doc#0]`-style citation markers, which no gold answer contains."""
    return _CITATION.sub("", response.answer).strip()


def answer_scores(case: GoldenCase, response: SutResponse) -> Scores:
    """EM/F1 against the gold answers and abstention, for cases that have an answer key:
    gold answers, or `is_impossible`. Tool-only cases have none."""
    golds = list(case.answers) or ([case.reference_answer] if case.reference_answer else [])
    if not (case.is_impossible or golds):
        return {}
    text = answer_text(response)
    abstained = is_abstention(text, response.abstained)
    return {
        "abstention.abstained": float(abstained),
        "abstention.hallucinated": float(not abstained) if case.is_impossible else None,
        "abstention.missed_answer": float(abstained) if not case.is_impossible else None,
        "answer.em": exact_match(text, golds, abstained=abstained),
        "answer.f1": token_f1(text, golds, abstained=abstained),
    }


def tool_scores(case: GoldenCase, response: SutResponse) -> Scores:
    if case.expected_tool_calls is None:
        return {}
    expected = [{call.name: call.arguments} for call in case.expected_tool_calls]
    result = score_tool_calls(list(response.tool_calls), expected, list(case.tools))
    return {f"tools.{name}": value for name, value in result.as_dict().items()}


async def ragas_scores(case: GoldenCase, response: SutResponse) -> Scores:
    from guard.metrics.ragas_nonllm import nonllm_scores

    reference = case.reference_answer or (case.answers[0] if case.answers else None)
    if reference is None and not case.reference_contexts:
        return {}
    raw = await nonllm_scores(
        response=answer_text(response),
        reference=reference,
        retrieved_contexts=[c.text for c in response.contexts],
        reference_contexts=list(case.reference_contexts) or None,
    )
    return {f"ragas.{name.removeprefix('ragas_')}": value for name, value in raw.items()}


async def score_case(
    case: GoldenCase,
    response: SutResponse,
    ks: Sequence[int] = (1, 3, 5, 10),
    judge: Judge | None = None,
    with_ragas: bool = True,
) -> Scores:
    """Every metric that applies to this case."""
    scores: Scores = {}
    scores.update(retrieval_scores(case, response, ks))
    scores.update(answer_scores(case, response))
    scores.update(tool_scores(case, response))
    if with_ragas:
        scores.update(await ragas_scores(case, response))
    if judge is not None:
        scores.update(await judge.score(case, response))
    return scores


def jsonable(value: Any) -> Any:
    """Metric values as stored: floats or None (a NaN from any library becomes None)."""
    if isinstance(value, float) and value != value:
        return None
    return value
