"""Any OpenAI-compatible chat endpoint as a system under test.

The endpoint does its own retrieval (a RAG service such as `rag serve`); when it returns the
`truthguard` extra field, its contexts are scored too. `model` may contain `{tenant}`, so one
variant can address one model per tenant (`rag-{tenant}` for `rag serve`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from guard.domain import Context, SutResponse
from guard.golden import GoldenCase
from rag.adapters.openai_provider import build_client, translate_error
from rag.errors import ProviderError, RetryableProviderError


class OpenAIEndpointSystem:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        max_connections: int = 64,
        retrieval: dict[str, Any] | None = None,
        temperature: float = 0.0,
    ) -> None:
        self.name = "openai-endpoint"
        self._base_url = base_url
        self._model = model
        self._retrieval = retrieval or {}
        self._temperature = temperature
        # The engine retries; the client must not retry on its own as well.
        self._client = build_client(base_url, api_key, timeout, 0, max_connections)

    def describe(self) -> dict[str, Any]:
        return {"system": "openai", "base_url": self._base_url, "model": self._model,
                "retrieval": self._retrieval, "temperature": self._temperature}

    async def respond(self, case: GoldenCase) -> SutResponse:
        request: dict[str, Any] = {
            "model": self._model.format(tenant=case.tenant),
            "messages": [{"role": m.role, "content": m.content} for m in case.messages()],
            "temperature": self._temperature,
        }
        if case.tools:
            request["tools"] = [_as_tool(t) for t in case.tools]
        if self._retrieval:
            request["retrieval"] = self._retrieval
        started = time.perf_counter()
        try:
            # `post` is the SDK's documented way to send a body as is. `chat.completions.create`
            # would first run its parameter transform, which leaves these plain messages and
            # tool schemas unchanged yet was 30 % of the client's CPU per request, the budget
            # that bounds throughput at high concurrency (scripts/bench_engine.py).
            completion = await self._client.post(
                "/chat/completions", body=request, cast_to=ChatCompletion
            )
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        except json.JSONDecodeError as exc:  # a 200 whose body is not JSON: garbled in transit
            raise RetryableProviderError(f"the endpoint's reply is not valid JSON: {exc}") from exc
        latency = (time.perf_counter() - started) * 1000
        return _response(completion, latency)

    async def aclose(self) -> None:
        await self._client.close()


def _as_tool(schema: dict[str, Any]) -> dict[str, Any]:
    return schema if schema.get("type") == "function" else {"type": "function", "function": schema}


def _response(completion: Any, latency_ms: float) -> SutResponse:
    if not getattr(completion, "choices", None):
        raise ProviderError("the endpoint returned no choices")
    message = completion.choices[0].message
    calls = []
    for call in message.tool_calls or []:
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError:
            arguments = {"__unparsed__": call.function.arguments}  # scored as wrong, not lost
        calls.append({"name": call.function.name, "arguments": arguments})
    extra = (completion.model_extra or {}).get("truthguard") or {}
    contexts = tuple(
        Context(c.get("chunk_id", ""), c.get("doc_id", ""), c.get("text", ""),
                float(c.get("score", 0.0)), int(c.get("rank", i)))
        for i, c in enumerate(extra.get("contexts", []), start=1)
    )
    usage = completion.usage
    return SutResponse(
        answer=message.content or "",
        contexts=contexts,
        arms={k: list(v) for k, v in (extra.get("arms") or {}).items()},
        tool_calls=tuple(calls),
        abstained=extra.get("abstained"),
        cited_chunk_ids=tuple(extra.get("cited_chunk_ids", ())),
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        latency_ms=latency_ms,
        model=completion.model or "",
        timings_ms=_timings(extra.get("timings_ms")),
    )


def _timings(raw: Any) -> dict[str, float]:
    """The endpoint's stage timings, if it reports them as a map of numbers."""
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}
