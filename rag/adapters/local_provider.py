"""An offline, deterministic LLM provider: extractive answers and keyword tool selection.

Answers. The contexts are split into sentences; each sentence is scored by the question's
content terms (stemmed, stop words out, via `tokenize`) that it contains, each weighted by its
inverse document frequency over the candidate sentences, so a rare word such as "parental"
counts more than a common one such as "leave". The best sentence is the answer, joined by the
next best when that one covers question terms the first missed. Coverage is the share of the
question's content terms the answer contains; below `min_coverage` the provider abstains.
The latest user turn is scored on its own first; only if it falls short (a follow-up such as
"and for contractors?") are earlier user turns added to the terms.

Tools. Each tool is scored by the question terms found in its name (split snake_case and
camelCase), its description and its parameters (names, descriptions, enum values), a name
match counting most. The best tool above `tool_threshold` is called; with none above it the
provider answers from the contexts instead. Arguments are filled from what the question says:
enum values, numbers, ISO dates, quoted strings, emails and user names.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rag.adapters.text_analysis import STOP_WORDS, tokenize
from rag.domain import ChatMessage, Generation, ScoredChunk, ToolCall, Usage
from rag.errors import InputError

ABSTENTION = "I cannot answer that from the available documents."

logger = logging.getLogger("rag.provider")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_IDENTIFIER_BREAK = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|[_\-.\s]+")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\.?\w)")
_ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|(?<!\w)'([^']+)'(?!\w)")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# A lookahead, so that "for user alice" yields both "user" (dropped later) and "alice".
_USER_AFTER = re.compile(
    r"(?=\b(?:username|user|login|account|employee|for)\s+@?([A-Za-z][\w.-]{1,31}))",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")

# Words that ask rather than say: they appear in questions but never carry the answer.
_QUESTION_TERMS = frozenset(tokenize("many much tell know explain describe please"))
# Verbs and nouns every tool has; a match on them alone should not pick a tool.
_GENERIC_TOOL_TERMS = frozenset(
    tokenize(
        "get set fetch retrieve return find look lookup show give make use call query search "
        "list info information data value current given specified specific id new"
    )
)
_USER_PARAM_TERMS = frozenset(
    tokenize("user username login account employee assignee owner member person requester")
)
# "for the team", "for how long": function words and the trigger words are never user names.
_NOT_A_USER = STOP_WORDS | {"me", "us", "all", "every", "each", "user", "username", "employee"}
_FIELD_WEIGHTS = {"name": 3.0, "description": 2.0, "parameters": 1.0}


@dataclass(frozen=True)
class _Sentence:
    text: str
    chunk_id: str
    terms: frozenset[str]


class LocalExtractiveProvider:
    """Implements `rag.ports.LLMProvider` with no model and no network; same input, same output.

    `min_coverage`: share of the question's content terms the answer must contain, else it
    abstains. `tool_threshold`: minimum tool score (0-1) for a tool to be called.
    """

    name = "local"
    model = "local-extractive"

    def __init__(
        self,
        min_coverage: float = 0.65,
        tool_threshold: float = 0.25,
        max_sentences: int = 2,
        language: str = "english",
    ) -> None:
        self.min_coverage = min_coverage
        self.tool_threshold = tool_threshold
        self.max_sentences = max_sentences
        self.language = language

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        contexts: Sequence[ScoredChunk] = (),
        tools: Sequence[dict[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> Generation:
        """Call the best-fitting tool, or answer from the contexts, or abstain."""
        started = time.perf_counter()
        latest, earlier = _user_turns(messages)
        call = choose_tool(latest, tools, self.tool_threshold, self.language) if tools else None
        # A tool call is the whole reply, as with OpenAI models: no text alongside it.
        text, cited, abstained = (
            ("", [], False) if call else self._extract(latest, earlier, contexts)
        )
        text = _truncate_words(text, max_tokens)
        generation = Generation(
            text=text,
            tool_calls=[call] if call else [],
            cited_chunk_ids=cited,
            abstained=abstained,
            usage=_estimate_usage(messages, contexts, tools, text, call),
            latency_ms=(time.perf_counter() - started) * 1000,
            model=self.model,
        )
        _log_call(self, generation)
        return generation

    def _extract(
        self, latest: str, earlier: Sequence[str], contexts: Sequence[ScoredChunk]
    ) -> tuple[str, list[str], bool]:
        sentences = split_sentences(contexts, self.language)
        primary = self._question_terms(latest)
        history = frozenset().union(*(self._question_terms(t) for t in earlier)) - primary
        weights = term_weights(sentences, primary, history)
        # Coverage of the latest turn first; the whole conversation only if that falls short.
        goals = [goal for goal in (primary, primary | history) if goal]
        for goal in dict.fromkeys(goals):
            chosen, coverage = best_sentences(sentences, goal, weights, self.max_sentences)
            if chosen and coverage >= self.min_coverage:
                text = " ".join(s.text for s in chosen)
                return text, _unique(s.chunk_id for s in chosen), False
        return ABSTENTION, [], True

    def _question_terms(self, text: str) -> frozenset[str]:
        return frozenset(tokenize(text, self.language)) - _QUESTION_TERMS


# answers -----------------------------------------------------------------------------------


def split_sentences(contexts: Sequence[ScoredChunk], language: str = "english") -> list[_Sentence]:
    """Every sentence of every context, in rank order, with its stemmed content terms."""
    out: list[_Sentence] = []
    for context in contexts:
        for piece in _SENTENCE_END.split(context.text):
            text = " ".join(piece.split())
            terms = frozenset(tokenize(text, language))
            if terms:
                out.append(_Sentence(text, context.chunk_id, terms))
    return out


def term_weights(
    sentences: Sequence[_Sentence], latest: Iterable[str], history: Iterable[str] = ()
) -> dict[str, float]:
    """IDF over the sentences, log(1 + n / (1 + df)); earlier turns' terms count a quarter.

    The quarter lets a follow-up's subject (named only in an earlier turn) break ties between
    sentences that match the latest turn equally, without outweighing the latest turn.
    """
    n = len(sentences)

    def idf(term: str) -> float:
        return math.log(1.0 + n / (1 + sum(term in s.terms for s in sentences)))

    weights = {t: 0.25 * idf(t) for t in history}
    weights.update({t: idf(t) for t in latest})
    return weights


def best_sentences(
    sentences: Sequence[_Sentence],
    goal: frozenset[str],
    weights: Mapping[str, float],
    limit: int = 2,
) -> tuple[list[_Sentence], float]:
    """Greedy pick: the highest-weighted sentence, then others while they cover new goal terms.

    Returns the picked sentences and the share of `goal` they cover together. Ties go to the
    earlier sentence, that is to the higher-ranked context.
    """
    chosen: list[_Sentence] = []
    covered: set[str] = set()
    while len(chosen) < limit and goal - covered:
        best = _best_addition(sentences, weights, goal, covered, chosen)
        if best is None:
            break
        chosen.append(best)
        covered |= best.terms & weights.keys()
    return chosen, len(covered & goal) / len(goal) if goal else 0.0


def _best_addition(
    sentences: Sequence[_Sentence],
    weights: Mapping[str, float],
    goal: frozenset[str],
    covered: set[str],
    chosen: Sequence[_Sentence],
) -> _Sentence | None:
    best: _Sentence | None = None
    best_score = 0.0
    for sentence in sentences:
        new_terms = (sentence.terms & weights.keys()) - covered
        if sentence in chosen or not new_terms & goal:
            continue
        score = sum(weights[t] for t in new_terms)
        if score > best_score + 1e-12:
            best, best_score = sentence, score
    return best


# tools -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        props = self.parameters.get("properties") or {}
        return {k: v for k, v in props.items() if isinstance(v, dict)}

    @property
    def required(self) -> list[str]:
        return [r for r in self.parameters.get("required") or [] if isinstance(r, str)]


def normalize_tool(schema: Mapping[str, Any]) -> _Tool:
    """Accept `{"type": "function", "function": {...}}` or a bare `{name, description, ...}`."""
    function = schema.get("function", schema)
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise InputError(f"tool schema without a function name: {dict(schema)!r}")
    parameters = function.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InputError(f"tool {function['name']!r}: parameters must be a JSON object")
    properties = parameters.get("properties") or {}
    if (not isinstance(properties, dict) or not isinstance(parameters.get("required") or [], list)
            or any(isinstance(p, dict) and not isinstance(p.get("enum") or [], list)
                   for p in properties.values())):
        raise InputError(f"tool {function['name']!r}: parameters must be a JSON Schema object "
                         "(properties maps names to schemas, enum and required are lists)")
    return _Tool(function["name"], str(function.get("description") or ""), parameters)


def split_identifier(name: str) -> str:
    """`getVacationBalance` and `get_vacation_balance` both become `get Vacation Balance`."""
    return " ".join(p for p in _IDENTIFIER_BREAK.split(name) if p)


def tool_terms(tool: _Tool, language: str = "english") -> dict[str, frozenset[str]]:
    """The tool's stemmed terms per field: name, description, parameters."""
    param_text: list[str] = []
    for pname, prop in tool.properties.items():
        param_text += [split_identifier(pname), str(prop.get("description") or "")]
        param_text += [str(v) for v in prop.get("enum") or []]
    return {
        "name": frozenset(tokenize(split_identifier(tool.name), language)),
        "description": frozenset(tokenize(tool.description, language)),
        "parameters": frozenset(tokenize(" ".join(param_text), language)),
    }


def score_tool(question_terms: frozenset[str], tool: _Tool, language: str = "english") -> float:
    """Sum over question terms of the weight of the best field they appear in, over 3 * |terms|.

    1.0 means every question term is in the tool's name. Generic terms ("get", "list")
    count a quarter; a tool matched on generic terms alone scores 0.
    """
    if not question_terms:
        return 0.0
    fields = tool_terms(tool, language)
    total = 0.0
    specific = False
    for term in question_terms:
        weight = max((w for f, w in _FIELD_WEIGHTS.items() if term in fields[f]), default=0.0)
        if weight and term not in _GENERIC_TOOL_TERMS:
            specific = True
        total += weight * (0.25 if term in _GENERIC_TOOL_TERMS else 1.0)
    return total / (3.0 * len(question_terms)) if specific else 0.0


def choose_tool(
    question: str,
    tools: Sequence[Mapping[str, Any]],
    threshold: float = 0.25,
    language: str = "english",
) -> ToolCall | None:
    """The best tool whose adjusted score reaches `threshold`, with its arguments, or None.

    The adjusted score is `score_tool` times 0.5 + 0.5 * (share of required parameters whose
    value the question gives): a call we could not fill from the question is less likely the
    one meant. Ties go to the tool listed first. Digits are left out of the question terms:
    dates and amounts say what to pass, not which tool to call.
    """
    terms = frozenset(t for t in tokenize(question, language) if not t.isdigit())
    terms -= _QUESTION_TERMS
    best: ToolCall | None = None
    best_score = 0.0
    for tool in (normalize_tool(t) for t in tools):
        score = score_tool(terms, tool, language)
        if score <= 0.0:
            continue
        arguments, found = fill_arguments(question, tool, language)
        required = tool.required
        filled = sum(name in found for name in required) / len(required) if required else 1.0
        score *= 0.5 + 0.5 * filled
        if score > best_score + 1e-12:
            best, best_score = ToolCall(tool.name, arguments), score
    return best if best_score >= threshold else None


def fill_arguments(
    question: str, tool: _Tool, language: str = "english"
) -> tuple[dict[str, Any], set[str]]:
    """Arguments for `tool` from `question`, and the names of those the question gave.

    Dates fill date-like parameters in order of mention, then enums, emails and user names,
    numbers (preferring one next to a word of the parameter's name), quoted strings. A required
    parameter nothing was found for gets its default, its first enum value, the question (for
    a string), 1 (a number), false (a boolean), or an empty list or object.
    """
    found = _Findings.scan(question)
    args: dict[str, Any] = {}
    given: set[str] = set()
    for pname, prop in tool.properties.items():
        value = _find_value(pname, prop, found, language)
        if value is not None:
            given.add(pname)
        elif pname in tool.required:
            value = _fallback(prop, question)
        if value is not None:
            args[pname] = value
    return args, given


@dataclass
class _Findings:
    """Candidate values in a question; each date, number and quote is handed out once."""

    question: str
    dates: list[str]
    numbers: list[tuple[int, str]]  # (word position, text)
    quotes: list[str]
    emails: list[str]
    users: list[str]
    words: list[str]

    @classmethod
    def scan(cls, question: str) -> _Findings:
        without_dates = _ISO_DATE.sub(" ", question)
        without_emails = _EMAIL.sub(" ", without_dates)
        words = _WORD.findall(without_emails.lower())
        numbers = []
        for match in _NUMBER.finditer(without_emails):
            position = len(_WORD.findall(without_emails[: match.start()].lower()))
            numbers.append((position, match.group()))
        users = [
            m.group(1).rstrip(".")
            for m in _USER_AFTER.finditer(without_emails)
            if m.group(1).rstrip(".").lower() not in _NOT_A_USER
        ]
        return cls(
            question=question,
            dates=_ISO_DATE.findall(question),
            numbers=numbers,
            quotes=[next(g for g in m.groups() if g) for m in _QUOTED.finditer(question)],
            emails=_EMAIL.findall(question),
            users=users,
            words=words,
        )


def _find_value(pname: str, prop: Mapping[str, Any], found: _Findings, language: str) -> Any:
    kind = prop.get("type")
    names = frozenset(
        tokenize(f"{split_identifier(pname)} {prop.get('description', '')}", language)
    )
    if prop.get("enum"):
        return _mentioned_enum(prop["enum"], found.question)
    if kind in ("integer", "number"):
        return _take_number(found, frozenset(tokenize(split_identifier(pname), language)), kind)
    if kind not in (None, "string"):
        return None
    if prop.get("format") == "date" or "date" in names:
        return found.dates.pop(0) if found.dates else None
    if prop.get("format") == "email" or "email" in names:
        return found.emails.pop(0) if found.emails else None
    if names & _USER_PARAM_TERMS:
        if found.users:
            return found.users.pop(0)
        return found.emails.pop(0) if found.emails else None
    return found.quotes.pop(0) if found.quotes else None


def _mentioned_enum(values: Sequence[Any], question: str) -> Any:
    """The enum value mentioned earliest in the question (whole words, case-insensitive)."""
    hits: list[tuple[int, int, Any]] = []
    for order, value in enumerate(values):
        pattern = r"(?<!\w)" + re.escape(str(value)) + r"(?!\w)"
        match = re.search(pattern, question, re.IGNORECASE)
        if match:
            # Earliest mention wins; on the same position the longer value ("very high").
            hits.append((match.start(), -len(str(value)), order))
    if not hits:
        return None
    return values[min(hits)[2]]


def _take_number(found: _Findings, name_terms: frozenset[str], kind: str) -> int | float | None:
    if not found.numbers:
        return None
    pick = 0
    for i, (position, _) in enumerate(found.numbers):
        neighbours = found.words[max(position - 1, 0) : position + 2]
        if name_terms & frozenset(tokenize(" ".join(neighbours))):
            pick = i
            break
    _, text = found.numbers.pop(pick)
    number = float(text)
    if kind == "integer":
        return int(number) if number.is_integer() else None
    return int(number) if number.is_integer() else number


def _fallback(prop: Mapping[str, Any], question: str) -> Any:
    if "default" in prop:
        return prop["default"]
    if prop.get("enum"):
        return prop["enum"][0]
    kind = prop.get("type")
    fallbacks: dict[str, Any] = {
        "integer": 1,
        "number": 1,
        "boolean": False,
        "array": [],
        "object": {},
    }
    if kind in fallbacks:
        return fallbacks[kind]
    return question.strip().rstrip("?").strip()


# bookkeeping -------------------------------------------------------------------------------


def _user_turns(messages: Sequence[ChatMessage]) -> tuple[str, list[str]]:
    turns = [m.content.strip() for m in messages if m.role == "user" and m.content.strip()]
    if not turns:
        raise InputError("the conversation has no user message to answer")
    return turns[-1], turns[:-1]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _truncate_words(text: str, max_tokens: int | None) -> str:
    words = text.split()
    if max_tokens is None or len(words) <= max_tokens:
        return text
    return " ".join(words[:max_tokens])


def _word_count(text: str) -> int:
    return len(text.split())


def _estimate_usage(
    messages: Sequence[ChatMessage],
    contexts: Sequence[ScoredChunk],
    tools: Sequence[Mapping[str, Any]],
    text: str,
    call: ToolCall | None,
) -> Usage:
    """Whitespace words as tokens: rough, but never missing, so cost reports always add up."""
    prompt = sum(_word_count(m.content) for m in messages)
    prompt += sum(_word_count(c.text) for c in contexts)
    prompt += sum(_word_count(str(t)) for t in tools)
    completion = _word_count(text)
    if call is not None:
        completion += 1 + sum(_word_count(f"{k} {v}") for k, v in call.arguments.items())
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _log_call(provider: LocalExtractiveProvider, generation: Generation) -> None:
    logger.info(
        "provider call",
        extra={
            "provider": provider.name,
            "model": provider.model,
            "latency_ms": round(generation.latency_ms, 3),
            "prompt_tokens": generation.usage.prompt_tokens,
            "completion_tokens": generation.usage.completion_tokens,
            "tool_calls": len(generation.tool_calls),
            "abstained": generation.abstained,
        },
    )
