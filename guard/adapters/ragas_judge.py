"""ragas 0.4.3's LLM-judged metrics against any OpenAI-compatible endpoint.

`RagasJudge` satisfies `guard.scoring.Judge`: for one case and one response it returns
`judge.faithfulness`, `judge.answer_relevancy`, `judge.context_precision` and
`judge.context_recall`, each a float (in [0, 1], except answer relevancy, a mean cosine, which
real embeddings can push slightly below 0) or None when it cannot be computed. Values are
ragas' own: a perfect context precision is 0.9999999999 (ragas adds 1e-10 to the divisor).

It uses ragas 0.4's current API: `ragas.llms.llm_factory(model, client=AsyncOpenAI(...))` (an
`InstructorLLM` that sends JSON-mode chat completions, `response_format: {"type":
"json_object"}`, with the output schema in a system message and in the prompt),
`ragas.embeddings.OpenAIEmbeddings(client=...)` (what `embedding_factory("openai", client=...)`
returns) on the same client for the embeddings, and `ragas.metrics.collections`'
`Faithfulness`, `AnswerRelevancy` (three question generations, then embeddings),
`ContextPrecisionWithReference` (one call per retrieved context) and `ContextRecall`, through
their `ascore(...)`. The metrics of one `score` run concurrently.

What ragas 0.4.3 does on errors and retries, read from its source and instructor 1.17.0's:

- The ten retries on any `Exception` (`RunConfig(max_retries=10, exception_types=(Exception,))`
  applied with tenacity) live only in the legacy path: `BaseRagasLLM.generate` and
  `BaseRagasEmbeddings.embed_*`, as `evaluate(run_config=...)` sets them. Collections metrics call
  `InstructorLLM.agenerate` and the modern `OpenAIEmbeddings` directly; neither retries, and
  there is no `RunConfig` on that path to configure.
- `InstructorLLM.agenerate` goes through instructor's patched `create`, whose `max_retries`
  (default 1) re-asks only when the reply does not parse or validate against the output model
  (pydantic `ValidationError`, `JSONDecodeError`); an API error is not retried but re-raised
  wrapped in `InstructorRetryException`, with the `openai` error as `__cause__`. Extra keyword
  arguments of `llm_factory` reach that `create`, so `max_retries=_PARSE_RETRIES` is set
  explicitly: one re-ask for an unparseable verdict, never a retry of an HTTP failure.
- The `openai` client's own retries (2 by default, on 408/409/429/5xx and connection errors)
  are turned off (`max_retries=0`): retrying is the caller's job, in one layer (ours).
- The embeddings raise the `openai` error unwrapped.

Errors are translated here: an `openai` error anywhere in the cause chain becomes
`RetryableProviderError` for 408, 429, 5xx, timeouts and connection failures (with the
server's Retry-After), `ProviderError` otherwise; a reply that still does not match ragas'
schema after the re-ask becomes `ProviderError`. Anything else (a bug) propagates unchanged.
When one metric fails the others of the same call are cancelled and the error is raised: a
failure is never reported as a score, nor as None.

ragas' metrics reject missing inputs with `ValueError`; they are checked first and the metric
is None: faithfulness and answer relevancy need a non-blank answer (faithfulness also needs
retrieved contexts), context precision and recall need a reference answer
(`case.reference_answer`, else the first of `case.answers`) and retrieved contexts, and answer
relevancy needs an embedding model. A NaN from ragas (no statements extracted, a zero vector)
is None. Caveat kept from ragas: answer relevancy is 0.0, not None, when the judge generates
only empty questions.

Nothing is imported from ragas, and no client is built, until the first `score`.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import openai

from guard.domain import SutResponse
from guard.golden import GoldenCase
from rag.adapters.openai_provider import translate_error
from rag.errors import ProviderError, RetryableProviderError

# ragas reads these once, when it first decides whether to send analytics.
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

FAITHFULNESS = "judge.faithfulness"
ANSWER_RELEVANCY = "judge.answer_relevancy"
CONTEXT_PRECISION = "judge.context_precision"
CONTEXT_RECALL = "judge.context_recall"
METRICS: tuple[str, ...] = (FAITHFULNESS, ANSWER_RELEVANCY, CONTEXT_PRECISION, CONTEXT_RECALL)

_PARSE_RETRIES = 1  # instructor re-asks once when a reply does not match the output model


@dataclass(frozen=True)
class _Metrics:
    client: openai.AsyncOpenAI
    faithfulness: Any
    answer_relevancy: Any | None
    context_precision: Any
    context_recall: Any


class RagasJudge:
    """ragas' faithfulness, answer relevancy, context precision and recall, judged by an
    OpenAI-compatible endpoint (which must honour JSON mode).

    `embedding_model` is served by the same endpoint (`/embeddings`); without it answer
    relevancy is None. `timeout` bounds each HTTP request, in seconds. The client is built on
    the first `score` and closed by `aclose()` (or `close()`, or leaving `async with`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str,
        embedding_model: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.embedding_model = embedding_model
        self.timeout = timeout
        self._api_key = api_key
        self._metrics: _Metrics | None = None

    def describe(self) -> dict[str, Any]:
        """The judge's configuration, without the key (for run records and cache keys)."""
        return {"judge": "ragas", "base_url": self.base_url, "model": self.model,
                "embedding_model": self.embedding_model}

    async def score(self, case: GoldenCase, response: SutResponse) -> dict[str, float | None]:
        """The four `judge.*` metrics for one case; None for each that cannot be computed.

        Raises `RetryableProviderError` or `ProviderError` when the endpoint fails.
        """
        scores: dict[str, float | None] = dict.fromkeys(METRICS)
        question = latest_user_turn(case)
        answer = response.answer.strip()
        contexts = [c.text for c in sorted(response.contexts, key=lambda c: c.rank)
                    if c.text.strip()]
        reference = _reference(case)
        if not question:
            return scores

        jobs: dict[str, Awaitable[Any]] = {}
        metrics = self._built()
        if answer and contexts:
            jobs[FAITHFULNESS] = metrics.faithfulness.ascore(
                user_input=question, response=answer, retrieved_contexts=contexts)
        if answer and metrics.answer_relevancy is not None:
            jobs[ANSWER_RELEVANCY] = metrics.answer_relevancy.ascore(
                user_input=question, response=answer)
        if reference and contexts:
            jobs[CONTEXT_PRECISION] = metrics.context_precision.ascore(
                user_input=question, reference=reference, retrieved_contexts=contexts)
            jobs[CONTEXT_RECALL] = metrics.context_recall.ascore(
                user_input=question, retrieved_contexts=contexts, reference=reference)
        results = await _run_all(jobs)
        scores.update({name: _finite(result.value) for name, result in results.items()})
        return scores

    async def aclose(self) -> None:
        """Close the HTTP client, if one was built; a later `score` builds a new one."""
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            await metrics.client.close()

    async def close(self) -> None:
        """Same as `aclose()` (the name `AsyncOpenAI` uses)."""
        await self.aclose()

    async def __aenter__(self) -> RagasJudge:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _built(self) -> _Metrics:
        if self._metrics is None:
            self._metrics = self._build()
        return self._metrics

    def _build(self) -> _Metrics:
        from ragas.embeddings.openai_provider import OpenAIEmbeddings
        from ragas.llms import llm_factory
        from ragas.metrics.collections import (
            AnswerRelevancy,
            ContextPrecisionWithReference,
            ContextRecall,
            Faithfulness,
        )

        try:
            client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key,
                                        timeout=self.timeout, max_retries=0)
        except openai.OpenAIError as exc:
            raise ProviderError(f"cannot configure the judge client: {exc}") from exc
        try:
            llm = llm_factory(self.model, client=client, max_retries=_PARSE_RETRIES)
            embeddings = None if self.embedding_model is None else OpenAIEmbeddings(
                client=client, model=self.embedding_model)
        except ValueError as exc:
            raise ProviderError(f"ragas rejected the judge configuration: {exc}") from exc
        return _Metrics(
            client=client,
            faithfulness=Faithfulness(llm=llm),
            answer_relevancy=None if embeddings is None else AnswerRelevancy(
                llm=llm, embeddings=embeddings),
            context_precision=ContextPrecisionWithReference(llm=llm),
            context_recall=ContextRecall(llm=llm),
        )


def latest_user_turn(case: GoldenCase) -> str:
    """The question a response answers: the last user message of the case, stripped."""
    for message in reversed(case.messages()):
        if message.role == "user":
            return message.content.strip()
    return ""


def _reference(case: GoldenCase) -> str:
    reference = case.reference_answer or (case.answers[0] if case.answers else "")
    return reference.strip()


def _finite(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


async def _run_all(jobs: dict[str, Awaitable[Any]]) -> dict[str, Any]:
    """Await the metrics concurrently; the first failure cancels the rest and is raised."""
    if not jobs:
        return {}
    try:
        async with asyncio.TaskGroup() as group:
            tasks = {name: group.create_task(_translated(name, job))
                     for name, job in jobs.items()}
    except BaseExceptionGroup as failures:
        leaves = list(_leaves(failures))
        if not all(isinstance(leaf, ProviderError) for leaf in leaves):
            raise
        # Prefer an error a retry will not fix over a transient one.
        final = next((e for e in leaves if not isinstance(e, RetryableProviderError)), leaves[0])
        raise final from final.__cause__
    return {name: task.result() for name, task in tasks.items()}


async def _translated(name: str, job: Awaitable[Any]) -> Any:
    try:
        return await job
    except Exception as exc:
        translated = _translate(name, exc)
        if translated is exc:
            raise
        raise translated from exc


def _translate(metric: str, exc: Exception) -> Exception:
    """Our error for a failure inside a ragas metric; `exc` itself when it is no I/O error."""
    from instructor.core import InstructorError

    cause = next((e for e in _causes(exc) if isinstance(e, openai.OpenAIError)), None)
    if cause is not None:
        return _from_openai(metric, cause)
    if isinstance(exc, InstructorError):
        return ProviderError(f"{metric}: the judge's reply does not match ragas' schema "
                             f"after {_PARSE_RETRIES + 1} attempts: {exc}")
    return exc


def _from_openai(metric: str, exc: openai.OpenAIError) -> ProviderError:
    """The provider's own translation, named after the metric that failed."""
    error = translate_error(exc)
    message = f"{metric} (judge): {error}"
    if isinstance(error, RetryableProviderError):
        return RetryableProviderError(message, retry_after=error.retry_after)
    return ProviderError(message)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
