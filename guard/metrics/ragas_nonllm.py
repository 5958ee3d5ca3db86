"""ragas 0.4.3's metrics that need no LLM and no embeddings, for one sample, offline.

The answer metrics come from ``ragas.metrics.collections`` (ragas 0.4's current API,
``await metric.ascore(reference=..., response=...)``). The two non-LLM context metrics exist in
0.4.3 only in the legacy API (``single_turn_ascore(SingleTurnSample)``), which warns that its
import path is deprecated; that warning is silenced here, for those two names only.

ragas sends usage analytics from a background thread unless told not to, and reads the switch
once (cached) when first asked. The two variables are set, unless the user already set them,
before ragas is imported, so that importing this module never opens a connection; they are
the documented opt-outs (``RAGAS_DO_NOT_TRACK``, and the cross-tool ``DO_NOT_TRACK``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from functools import cache
from typing import Any

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from ragas.dataset_schema import SingleTurnSample
from ragas.metrics.collections import (
    BleuScore,
    CHRFScore,
    ExactMatch,
    NonLLMStringSimilarity,
    RougeScore,
    StringPresence,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from ragas.metrics import (
        NonLLMContextPrecisionWithReference,
        NonLLMContextRecall,
    )

ANSWER_METRICS: tuple[str, ...] = (
    "ragas_bleu_score", "ragas_rouge_score", "ragas_chrf_score",
    "ragas_non_llm_string_similarity", "ragas_exact_match", "ragas_string_present")
CONTEXT_METRICS: tuple[str, ...] = (
    "ragas_non_llm_context_precision_with_reference", "ragas_non_llm_context_recall")


@cache
def _answer_metrics() -> dict[str, Any]:
    # Built on first use, not at import time; the instances hold no per-call state.
    return {
        "ragas_bleu_score": BleuScore(),
        "ragas_rouge_score": RougeScore(rouge_type="rougeL", mode="fmeasure"),
        "ragas_chrf_score": CHRFScore(),
        "ragas_non_llm_string_similarity": NonLLMStringSimilarity(),
        "ragas_exact_match": ExactMatch(),
        "ragas_string_present": StringPresence(),
    }


@cache
def _context_metrics() -> dict[str, Any]:
    return {
        "ragas_non_llm_context_precision_with_reference": NonLLMContextPrecisionWithReference(),
        "ragas_non_llm_context_recall": NonLLMContextRecall(),
    }


def _finite(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    # Every metric here is defined in [0, 1]; sacrebleu's /100 can land at 1.0000000000000004.
    return min(1.0, max(0.0, number)) if math.isfinite(number) else None


async def nonllm_scores(
    *,
    response: str | None,
    reference: str | None,
    retrieved_contexts: Sequence[str] | None,
    reference_contexts: Sequence[str] | None,
) -> dict[str, float | None]:
    """ragas' non-LLM scores for one sample, each in [0, 1] or ``None`` when not computable.

    Keys (ragas' metric names prefixed with ``ragas_``, so that ``ragas_exact_match``, a raw
    case-sensitive string equality, never collides with SQuAD's exact match):

    - response vs reference: ``ragas_bleu_score`` (sacrebleu corpus BLEU over ". "-split
      sentences, /100), ``ragas_rouge_score`` (ROUGE-L F-measure, stemmed),
      ``ragas_chrf_score`` (chrF, /100), ``ragas_non_llm_string_similarity`` (1 - normalised
      Levenshtein distance), ``ragas_exact_match`` (1.0 if identical), ``ragas_string_present``
      (1.0 if the reference occurs verbatim in the response). ``None`` when ``response`` is
      None or ``reference`` is None or blank. An empty response (an abstention) is scored.
    - retrieved vs reference contexts: ``ragas_non_llm_context_precision_with_reference``
      (average precision of the retrieved contexts, a context counting as relevant when its
      best string similarity to a reference context is >= 0.5) and
      ``ragas_non_llm_context_recall`` (share of reference contexts whose best similarity to a
      retrieved context is > 0.5). ``None`` when ``reference_contexts`` is None or empty or
      ``retrieved_contexts`` is None; 0.0 when nothing was retrieved (ragas itself would fail).

    A NaN from ragas becomes ``None``; float rounding outside [0, 1] is clipped. The metrics
    are CPU-bound and run on the calling event loop; for long texts call this from a worker
    thread.
    """
    scores: dict[str, float | None] = dict.fromkeys(ANSWER_METRICS + CONTEXT_METRICS)
    if response is not None and reference is not None and reference.strip():
        for name, metric in _answer_metrics().items():
            result = await metric.ascore(reference=reference, response=response)
            scores[name] = _finite(result.value)
    if retrieved_contexts is not None and reference_contexts:
        if not retrieved_contexts:
            scores.update(dict.fromkeys(CONTEXT_METRICS, 0.0))
            return scores
        sample = SingleTurnSample(retrieved_contexts=list(retrieved_contexts),
                                  reference_contexts=list(reference_contexts))
        for name, metric in _context_metrics().items():
            scores[name] = _finite(await metric.single_turn_ascore(sample))
    return scores
