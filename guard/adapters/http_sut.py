"""A user's own assistant behind a plain HTTP JSON endpoint, as a system under test.

Request (POST): `{"tenant", "messages": [{"role", "content"}], "tools": [...]}`.
Response: `{"answer": str, "contexts": [{"doc_id", "text", "chunk_id"?, "score"?}],
"tool_calls": [{"name", "arguments"}], "abstained"?: bool, "usage"?: {"prompt_tokens",
"completion_tokens"}}`. 429 and 5xx are retried (honouring Retry-After); other 4xx fail.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from guard.domain import Context, SutResponse
from guard.golden import GoldenCase
from rag.adapters.openai_provider import parse_retry_after
from rag.errors import ProviderError, RetryableProviderError


class HttpJsonSystem:
    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
        max_connections: int = 64,
    ) -> None:
        self.name = "http"
        self._url = url
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)

    def describe(self) -> dict[str, Any]:
        return {"system": "http", "url": self._url}

    async def respond(self, case: GoldenCase) -> SutResponse:
        body = {
            "tenant": case.tenant,
            "messages": [{"role": m.role, "content": m.content} for m in case.messages()],
            "tools": list(case.tools),
        }
        started = time.perf_counter()
        try:
            reply = await self._client.post(self._url, json=body)
        except httpx.TimeoutException as exc:
            raise RetryableProviderError(f"{self._url} timed out") from exc
        except httpx.TransportError as exc:
            raise RetryableProviderError(f"cannot reach {self._url}: {exc}") from exc
        if reply.status_code == 429 or reply.status_code >= 500:
            raise RetryableProviderError(
                f"HTTP {reply.status_code} from {self._url}",
                retry_after=parse_retry_after(dict(reply.headers)),
            )
        if reply.status_code >= 400:
            raise ProviderError(f"HTTP {reply.status_code} from {self._url}: {reply.text[:200]}")
        try:
            data = reply.json()
        except ValueError as exc:
            raise ProviderError(f"{self._url} returned invalid JSON") from exc
        return _parse(data, (time.perf_counter() - started) * 1000, self._url)

    async def aclose(self) -> None:
        await self._client.aclose()


def _parse(data: Any, latency_ms: float, url: str) -> SutResponse:
    if not isinstance(data, dict) or not isinstance(data.get("answer"), str):
        raise ProviderError(f"{url}: the response needs a string field 'answer'")
    contexts = []
    for rank, item in enumerate(data.get("contexts") or [], start=1):
        if not isinstance(item, dict):
            raise ProviderError(f"{url}: contexts[{rank - 1}] must be an object")
        doc_id = str(item.get("doc_id", ""))
        contexts.append(Context(str(item.get("chunk_id", doc_id)), doc_id,
                                str(item.get("text", "")), float(item.get("score", 0.0)), rank))
    usage = data.get("usage") or {}
    return SutResponse(
        answer=data["answer"],
        contexts=tuple(contexts),
        tool_calls=tuple(data.get("tool_calls") or ()),
        abstained=data.get("abstained"),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        latency_ms=latency_ms,
    )
