"""Any OpenAI-compatible chat endpoint as an LLM provider, through the official `openai` client.

Works with OpenAI, Azure, vLLM, Ollama, llama.cpp server, or `rag serve` itself. The contexts
go into a system prompt, each under its chunk id, and the model is asked to cite them as
`[chunk_id]`; the cited ids are read back from the reply. A reply that says it cannot answer
from the documents, citing nothing, counts as an abstention.

Errors are translated here, so the rest of the project catches only its own tree:
429, 408, 5xx, timeouts and dropped connections become `RetryableProviderError` (with the
server's `Retry-After` hint, if any); any other failure, including tool arguments that are not
a JSON object, becomes `ProviderError`. The client retries transient errors itself
`max_retries` times (default 2) before the error reaches us; pass 0 when an outer layer
retries instead.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2  # openai 3's HTTP library, a dependency of the pinned `openai`
import openai

from rag.domain import ChatMessage, Generation, ScoredChunk, ToolCall, Usage
from rag.errors import ProviderError, RetryableProviderError

logger = logging.getLogger("rag.provider")

ABSTENTION = "I cannot answer that from the available documents."

SYSTEM_PROMPT = """\
Answer the user's question using only the context passages below. Cite every passage you use \
by its id in square brackets, for example [{example}]. If the passages do not contain the \
answer, reply exactly: "{abstention}" When one of the available tools fits the request, call \
it instead of answering.

Context passages:
{passages}"""

_CITATION = re.compile(r"\[([^\[\]\n]{1,300})\]")
_ABSTAINING = re.compile(
    r"\b(?:cannot|can ?not|can't|unable to|not able to) (?:answer|find|determine)"
    r"|\b(?:do not|does not|don't|doesn't) "
    r"(?:contain|mention|provide|include|say|specify|cover)"
    r"|\bno (?:relevant )?information\b|\bnot enough information\b"
    r"|\bi (?:do not|don't) know\b"
    r"|\bnot (?:mentioned|provided|specified|stated|covered) in\b",
    re.IGNORECASE,
)
_RETRYABLE_STATUS = frozenset({408, 429})


class OpenAICompatibleProvider:
    """Implements `rag.ports.LLMProvider` over `/v1/chat/completions`, with tools.

    Give either `client` (an `openai.AsyncOpenAI`, not closed by `aclose`) or `base_url` and
    `api_key`. `max_connections` sizes the HTTP connection pool: set it to at least the
    number of calls in flight; None keeps the SDK's own pool. With `stream=True` replies are
    streamed and the time to the first token is logged.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: openai.AsyncOpenAI | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_connections: int | None = None,
        stream: bool = False,
        temperature: float | None = 0.0,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        self.model = model
        self.stream = stream
        self.temperature = temperature
        self.system_prompt = system_prompt
        self._owns_client = client is None
        self._client = client or build_client(
            base_url, api_key, timeout, max_retries, max_connections
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this provider built it."""
        if self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> OpenAICompatibleProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        contexts: Sequence[ScoredChunk] = (),
        tools: Sequence[dict[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> Generation:
        """One chat completion over the contexts; errors come out as `ProviderError`s."""
        started = time.perf_counter()
        request = self._request(messages, contexts, tools, max_tokens)
        try:
            reply = await (self._stream(request, started) if self.stream else self._call(request))
        except openai.OpenAIError as exc:
            error = translate_error(exc)
            _log_failure(self, started, error)
            raise error from exc
        except json.JSONDecodeError as exc:  # the SDK lets a body or event that is not JSON out
            error = RetryableProviderError(f"the chat endpoint's reply is not valid JSON: {exc}")
            _log_failure(self, started, error)
            raise error from exc
        except ProviderError as error:
            _log_failure(self, started, error)
            raise
        generation = self._generation(reply, messages, contexts, started)
        _log_success(self, generation, reply.ttft_ms)
        return generation

    # request -------------------------------------------------------------------------------
    def _request(
        self,
        messages: Sequence[ChatMessage],
        contexts: Sequence[ScoredChunk],
        tools: Sequence[Mapping[str, Any]],
        max_tokens: int | None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self._system_message(contexts)},
                *(_wire_message(m) for m in messages),
            ],
        }
        if tools:
            request["tools"] = [as_openai_tool(t) for t in tools]
            request["tool_choice"] = "auto"
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if self.temperature is not None:
            request["temperature"] = self.temperature
        return request

    def _system_message(self, contexts: Sequence[ScoredChunk]) -> str:
        passages = "\n\n".join(
            f"[{c.chunk_id}] {c.title}: {c.text}" if c.title else f"[{c.chunk_id}] {c.text}"
            for c in contexts
        )
        return self.system_prompt.format(
            example=contexts[0].chunk_id if contexts else "doc-1#0",
            abstention=ABSTENTION,
            passages=passages or "(no passages were retrieved)",
        )

    # calls ---------------------------------------------------------------------------------
    async def _call(self, request: dict[str, Any]) -> _Reply:
        response = await self._client.chat.completions.create(**request)
        if not response.choices:
            raise ProviderError(f"{self.model}: the response has no choices")
        message = response.choices[0].message
        calls = [
            _tool_call(c.function.name, c.function.arguments)
            for c in message.tool_calls or []
            if c.type == "function"
        ]
        usage = None
        if response.usage is not None:
            usage = Usage(response.usage.prompt_tokens, response.usage.completion_tokens)
        return _Reply(message.content or "", calls, usage, response.model or self.model)

    async def _stream(self, request: dict[str, Any], started: float) -> _Reply:
        stream = await self._client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        acc = _StreamAccumulator()
        try:
            async for chunk in stream:
                acc.add(chunk, started)
        except (httpx2.TransportError, httpx.TransportError) as exc:
            # Once the body streams, the SDK no longer wraps transport errors for us.
            raise RetryableProviderError(f"the chat stream broke off: {exc!r}") from exc
        return acc.reply(self.model)

    def _generation(
        self,
        reply: _Reply,
        messages: Sequence[ChatMessage],
        contexts: Sequence[ScoredChunk],
        started: float,
    ) -> Generation:
        cited = parse_citations(reply.text, [c.chunk_id for c in contexts])
        return Generation(
            text=reply.text,
            tool_calls=reply.tool_calls,
            cited_chunk_ids=cited,
            abstained=not reply.tool_calls and is_abstention(reply.text, cited),
            usage=reply.usage or _estimated_usage(self.system_prompt, messages, contexts, reply),
            latency_ms=(time.perf_counter() - started) * 1000,
            model=reply.model,
            first_token_ms=reply.ttft_ms,
        )


@dataclass
class _Reply:
    text: str
    tool_calls: list[ToolCall]
    usage: Usage | None
    model: str
    ttft_ms: float | None = None


@dataclass
class _StreamAccumulator:
    """Joins streamed deltas: content in order, tool calls by their index, usage at the end."""

    content: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    usage: Usage | None = None
    model: str = ""
    ttft_ms: float | None = None

    def add(self, chunk: Any, started: float) -> None:
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            self.usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            delta = choice.delta
            if delta is None:
                continue
            if self.ttft_ms is None and (delta.content or delta.tool_calls):
                self.ttft_ms = (time.perf_counter() - started) * 1000
            if delta.content:
                self.content.append(delta.content)
            for piece in delta.tool_calls or []:
                self._add_tool_piece(piece)

    def _add_tool_piece(self, piece: Any) -> None:
        slot = self.calls.setdefault(piece.index, {"name": "", "arguments": ""})
        if piece.function is None:
            return
        # Per the OpenAI streaming format every field arrives in pieces to be concatenated;
        # in practice the name comes whole in the first piece and arguments in many.
        slot["name"] += piece.function.name or ""
        slot["arguments"] += piece.function.arguments or ""

    def reply(self, model: str) -> _Reply:
        calls = [_tool_call(c["name"], c["arguments"]) for _, c in sorted(self.calls.items())]
        return _Reply("".join(self.content), calls, self.usage, self.model or model, self.ttft_ms)


# pure helpers --------------------------------------------------------------------------------


def as_openai_tool(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A tool schema in the wire shape `{"type": "function", "function": {...}}`."""
    if schema.get("type") == "function" and isinstance(schema.get("function"), Mapping):
        return {"type": "function", "function": dict(schema["function"])}
    if not isinstance(schema.get("name"), str):
        raise ProviderError(f"tool schema without a function name: {dict(schema)!r}")
    return {"type": "function", "function": dict(schema)}


def parse_citations(text: str, known_ids: Sequence[str]) -> list[str]:
    """Chunk ids cited as `[id]` or `[id1, id2]`, in order of first citation.

    Only ids of the given contexts count: a bracket holding anything else (a footnote
    number, a made-up id) is not a citation of a retrieved passage.
    """
    known = set(known_ids)
    cited: dict[str, None] = {}
    for match in _CITATION.finditer(text):
        for part in re.split(r"[,;]", match.group(1)):
            candidate = part.strip()
            if candidate in known:
                cited.setdefault(candidate, None)
    return list(cited)


def is_abstention(text: str, cited: Sequence[str] = ()) -> bool:
    """True if the reply declines to answer: our exact phrase, or a refusal citing nothing."""
    if ABSTENTION.lower().rstrip(".") in text.lower():
        return True
    return not cited and bool(_ABSTAINING.search(text))


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def translate_error(exc: openai.OpenAIError) -> ProviderError:
    """Map an `openai` exception onto our tree: transient ones become retryable."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"HTTP {status} from the chat endpoint: {exc.message}"
        if status in _RETRYABLE_STATUS or status >= 500:
            headers = dict(exc.response.headers) if exc.response is not None else None
            return RetryableProviderError(message, retry_after=parse_retry_after(headers))
        return ProviderError(message)
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return RetryableProviderError(f"the chat endpoint timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return RetryableProviderError(f"cannot reach the chat endpoint: {exc}")
    return ProviderError(f"the chat endpoint failed: {exc}")


def _refused(exc: BaseException) -> bool:
    """True when the cause is a failed connect, not a timeout: the SDK's aiohttp transport
    reports a refused connection as a connect timeout."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__
    return False


def _tool_call(name: str, arguments: str | None) -> ToolCall:
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        raise ProviderError(f"tool call {name!r}: arguments are not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ProviderError(f"tool call {name!r}: arguments must be a JSON object")
    if not name:
        raise ProviderError("a tool call without a function name")
    return ToolCall(name, parsed)


def _wire_message(message: ChatMessage) -> dict[str, str]:
    # Our ChatMessage keeps no tool_call_id, which the API requires on "tool" messages;
    # a tool result is passed on as user-visible text instead.
    if message.role == "tool":
        return {"role": "user", "content": f"Tool result: {message.content}"}
    return {"role": message.role, "content": message.content}


def build_client(
    base_url: str | None,
    api_key: str | None,
    timeout: float,
    max_retries: int,
    max_connections: int | None,
) -> openai.AsyncOpenAI:
    """The official async client over the SDK's aiohttp transport.

    aiohttp costs about a third less CPU per request than the default httpx2 transport
    (1.3 vs 1.9 ms on this project's 2-core machine, `scripts/bench_engine.py`), which is what
    bounds throughput at high concurrency. The pool is sized explicitly: one smaller than the
    calls in flight queues them silently.
    """
    connections = max_connections or 100
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    try:
        http_client = openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
        return openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http_client,
        )
    except openai.OpenAIError as exc:
        raise ProviderError(f"cannot configure the OpenAI client: {exc}") from exc


def _estimated_usage(
    system_prompt: str,
    messages: Sequence[ChatMessage],
    contexts: Sequence[ScoredChunk],
    reply: _Reply,
) -> Usage:
    """Whitespace words, for endpoints that report no usage: rough, but never missing."""
    prompt = len(system_prompt.split()) + sum(len(m.content.split()) for m in messages)
    prompt += sum(len(c.text.split()) for c in contexts)
    completion = len(reply.text.split()) + sum(
        1 + len(json.dumps(c.arguments).split()) for c in reply.tool_calls
    )
    return Usage(prompt, completion)


def _log_success(
    provider: OpenAICompatibleProvider, generation: Generation, ttft_ms: float | None
) -> None:
    logger.info(
        "provider call",
        extra={
            "provider": provider.name,
            "model": generation.model,
            "latency_ms": round(generation.latency_ms, 3),
            "ttft_ms": None if ttft_ms is None else round(ttft_ms, 3),
            "prompt_tokens": generation.usage.prompt_tokens,
            "completion_tokens": generation.usage.completion_tokens,
            "tool_calls": len(generation.tool_calls),
            "abstained": generation.abstained,
            "stream": provider.stream,
        },
    )


def _log_failure(provider: OpenAICompatibleProvider, started: float, error: ProviderError) -> None:
    logger.warning(
        "provider call failed",
        extra={
            "provider": provider.name,
            "model": provider.model,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "error": type(error).__name__,
            "detail": str(error),
            "retry_after": getattr(error, "retry_after", None),
            "stream": provider.stream,
        },
    )
