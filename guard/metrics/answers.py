"""Answer metrics: SQuAD exact match and token F1, and abstention.

SQuAD scoring follows the official SQuAD 2.0 evaluation script's definitions: answers are
normalised (lowercase, punctuation removed, the articles a/an/the removed, whitespace collapsed),
the score is the maximum over the gold answers, and an unanswerable question has the single gold
answer "" (the empty answer), so only an empty prediction or an abstention scores 1.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

AbstentionOutcome = Literal["correct_refusal", "hallucination", "missed_answer", "answered"]

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop ASCII punctuation, drop the words a/an/the, then
    collapse runs of whitespace to single spaces (no leading or trailing space)."""
    text = text.lower().translate(_NO_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold_answers: Iterable[str]) -> list[str]:
    # As the official script: golds that normalise to nothing are dropped; none left means the
    # question is unanswerable and the gold is the empty answer.
    return [g for g in gold_answers if normalize_answer(g)] or [""]


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold_answers: Sequence[str], *, abstained: bool = False) -> float:
    """1.0 if the normalised prediction equals some normalised gold answer, else 0.0.

    ``gold_answers`` empty (or only blank strings) means unanswerable: the gold is "". With
    ``abstained=True`` the prediction is taken as "" whatever its text (a refusal sentence is
    an empty answer, not a claim).
    """
    pred = "" if abstained else normalize_answer(prediction)
    return max(float(pred == normalize_answer(g)) for g in _golds(gold_answers))


def token_f1(prediction: str, gold_answers: Sequence[str], *, abstained: bool = False) -> float:
    """SQuAD token F1, the maximum over the gold answers.

    Tokens are the whitespace-split normalised text; overlap counts tokens as a multiset;
    F1 = 2PR / (P + R). If either side has no token, F1 is 1.0 when both have none, else 0.0.
    Unanswerable questions and ``abstained`` work as in :func:`exact_match`.
    """
    pred = "" if abstained else prediction
    return max(_f1(pred, g) for g in _golds(gold_answers))


_REFUSAL_PATTERNS = [re.compile(p) for p in (
    r"\bi (?:cannot|can't|can not|am unable to|'m unable to|am not able to|could not|couldn't) "
    r"(?:answer|determine|find|say|tell|provide)",
    r"\bi (?:don't|do not) (?:know|have (?:enough|sufficient|the) information)",
    r"\b(?:not enough|insufficient|no relevant|no sufficient) (?:information|context|data)",
    r"\b(?:does not|doesn't|do not|don't) (?:contain|provide|include|mention|specify) "
    r"(?:enough|sufficient|any|the) (?:information|details|answer)",
    r"\b(?:cannot|can't|can not) be (?:answered|determined)",
    r"\bunanswerable\b",
    r"^(?:no answer|n/a|none|unknown)\W*$",
    r"\bthere is no answer\b",
    r"\bno answer (?:is|can be) (?:found|given|provided)",
)]


def is_abstention(answer: str | None, flag: bool | None = None) -> bool:
    """Whether the system abstained (declined to answer).

    An explicit ``flag`` (``True``/``False``, e.g. a structured ``abstained`` field from the
    system under test) always wins. Otherwise ``None`` or blank text is an abstention, and so is
    text matching a common refusal phrasing, case-insensitively, with curly apostrophes folded:
    "I cannot answer ...", "I don't know", "not enough information", "the context does not
    contain the answer", "cannot be answered", "unanswerable", or an answer that is only "no
    answer", "n/a", "none" or "unknown". A heuristic: prefer the flag when the system has one.
    """
    if flag is not None:
        return flag
    if answer is None or not answer.strip():
        return True
    text = " ".join(answer.lower().replace("\u2019", "'").split())
    return any(pattern.search(text) for pattern in _REFUSAL_PATTERNS)


def classify_abstention(is_impossible: bool, abstained: bool) -> AbstentionOutcome:
    """Classify one answer against whether its question is answerable.

    unanswerable + abstained -> "correct_refusal"; unanswerable + answered -> "hallucination"
    (a claim where none is supported); answerable + abstained -> "missed_answer"; answerable +
    answered -> "answered" (its correctness is for EM/F1 to judge).
    """
    if is_impossible:
        return "correct_refusal" if abstained else "hallucination"
    return "missed_answer" if abstained else "answered"


@dataclass(frozen=True)
class AbstentionRates:
    """Rates over a set of outcomes; each is ``None`` when its denominator is 0.

    hallucination_rate = hallucination / unanswerable questions;
    correct_refusal_rate = correct_refusal / unanswerable questions;
    missed_answer_rate = missed_answer / answerable questions;
    refusal_precision = correct_refusal / all abstentions.
    """

    counts: dict[str, int]
    hallucination_rate: float | None
    correct_refusal_rate: float | None
    missed_answer_rate: float | None
    refusal_precision: float | None


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def abstention_rates(outcomes: Iterable[AbstentionOutcome]) -> AbstentionRates:
    """Count outcomes from :func:`classify_abstention` and derive the rates of
    :class:`AbstentionRates`."""
    counts = Counter(outcomes)
    unanswerable = counts["correct_refusal"] + counts["hallucination"]
    answerable = counts["missed_answer"] + counts["answered"]
    refusals = counts["correct_refusal"] + counts["missed_answer"]
    names: tuple[AbstentionOutcome, ...] = (
        "correct_refusal", "hallucination", "missed_answer", "answered")
    return AbstentionRates(
        counts={name: counts[name] for name in names},
        hallucination_rate=_ratio(counts["hallucination"], unanswerable),
        correct_refusal_rate=_ratio(counts["correct_refusal"], unanswerable),
        missed_answer_rate=_ratio(counts["missed_answer"], answerable),
        refusal_precision=_ratio(counts["correct_refusal"], refusals),
    )
