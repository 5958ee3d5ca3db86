"""OpenAICompatibleProvider against a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from rag.adapters.openai_provider import (
    OpenAICompatibleProvider,
    is_abstention,
    parse_citations,
    parse_retry_after,
)
from rag.domain import ChatMessage, ScoredChunk
from rag.errors import ProviderError, RetryableProviderError
from rag.logging import JsonFormatter, bind_correlation_id

pytestmark = pytest.mark.anyio

CONTEXTS = [
    ScoredChunk("hr-leave#0", "hr-leave", "Parental leave lasts 16 weeks.", 0.9, "Leave"),
    ScoredChunk("hr-pay#0", "hr-pay", "Salaries are paid monthly.", 0.4, "Payroll"),
]
QUESTION = [ChatMessage("user", "How long is parental leave?")]
ROOM_TOOL = {
    "name": "book_meeting_room",
    "description": "Book a meeting room",
    "parameters": {"type": "object", "properties": {"room": {"type": "string"}}},
}


def _completion(message: dict[str, Any], model: str) -> dict[str, Any]:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": f"{model}-2025",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132},
    }


def _tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }


def _stream_chunks() -> list[dict[str, Any]]:
    """Content in pieces, then two tool calls whose argument pieces interleave by index."""
    call = {"index": 0, "id": "call_a", "type": "function"}
    second = {"name": "book_room", "arguments": '{"ro'}
    return [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Booking "}),
        _chunk({"content": "two rooms [hr-leave#0]."}),
        _chunk({"tool_calls": [{**call, "function": {"name": "book_room", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"room": '}}]}),
        _chunk({"tool_calls": [{**call, "index": 1, "id": "call_b", "function": second}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Aurora"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": 'om": "Borealis"}'}}]}),
        _chunk({}, "tool_calls"),
        {**_chunk({}), "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 9}},
    ]


class FakeOpenAI:
    """An OpenAI-compatible endpoint whose behaviour is picked by the requested model."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def app(self) -> ASGIApp:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        model = body["model"]
        if model == "plain":
            text = "Parental leave lasts 16 weeks [hr-leave#0]. Pay: [hr-pay#0, made-up#1]."
            return JSONResponse(_completion({"role": "assistant", "content": text}, model))
        if model == "abstain":
            text = "The documents do not mention that."
            return JSONResponse(_completion({"role": "assistant", "content": text}, model))
        if model in ("tool", "badjson"):
            arguments = '{"room": "Aurora"}' if model == "tool" else '{room: "Aurora"'
            call = _tool_call("call_1", "book_meeting_room", arguments)
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            return JSONResponse(_completion(message, model))
        if model == "stream":
            return StreamingResponse(self._sse(_stream_chunks()), media_type="text/event-stream")
        if model == "slow":
            await asyncio.sleep(0.8)
        return self._error(model)

    @staticmethod
    async def _sse(chunks: list[dict[str, Any]]) -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    @staticmethod
    def _error(model: str) -> Response:
        status, headers = {
            "ratelimit": (429, {"Retry-After": "7"}),
            "boom": (500, {"retry-after-ms": "1"}),
            "bad": (400, {}),
        }.get(model, (404, {}))
        error = {"message": f"scripted {status}", "type": "x", "param": None, "code": None}
        return JSONResponse({"error": error}, status_code=status, headers=headers)


@pytest.fixture
def fake(serve_app: Callable[[ASGIApp], str]) -> tuple[FakeOpenAI, str]:
    server = FakeOpenAI()
    return server, serve_app(server.app()) + "/v1"


def provider(base_url: str, model: str, **options: Any) -> OpenAICompatibleProvider:
    options.setdefault("max_retries", 0)
    return OpenAICompatibleProvider(model, base_url=base_url, api_key="test", **options)


async def test_plain_answer_with_citations_usage_and_prompt(fake: tuple[FakeOpenAI, str]) -> None:
    server, url = fake
    async with provider(url, "plain", max_connections=8) as llm:
        generation = await llm.chat(QUESTION, contexts=CONTEXTS, max_tokens=64)
    assert generation.text.startswith("Parental leave lasts 16 weeks [hr-leave#0].")
    assert generation.cited_chunk_ids == ["hr-leave#0", "hr-pay#0"]  # made-up#1 is no context
    assert not generation.abstained and generation.tool_calls == []
    assert (generation.usage.prompt_tokens, generation.usage.completion_tokens) == (120, 12)
    assert generation.model == "plain-2025" and generation.latency_ms > 0
    (request,) = server.requests
    system, user = request["messages"]
    assert system["role"] == "system"
    assert "[hr-leave#0] Leave: Parental leave lasts 16 weeks." in system["content"]
    assert "[hr-pay#0]" in system["content"]
    assert user == {"role": "user", "content": "How long is parental leave?"}
    assert request["max_tokens"] == 64 and request["temperature"] == 0.0
    assert "tools" not in request


async def test_abstention_is_detected(fake: tuple[FakeOpenAI, str]) -> None:
    _, url = fake
    async with provider(url, "abstain") as llm:
        generation = await llm.chat(QUESTION, contexts=CONTEXTS)
    assert generation.abstained and generation.cited_chunk_ids == []


async def test_tool_call(fake: tuple[FakeOpenAI, str]) -> None:
    server, url = fake
    async with provider(url, "tool") as llm:
        generation = await llm.chat(QUESTION, contexts=CONTEXTS, tools=[ROOM_TOOL])
    assert [(c.name, c.arguments) for c in generation.tool_calls] == [
        ("book_meeting_room", {"room": "Aurora"})
    ]
    assert generation.text == "" and not generation.abstained
    request = server.requests[0]
    assert request["tools"] == [{"type": "function", "function": ROOM_TOOL}]
    assert request["tool_choice"] == "auto"


async def test_streaming_joins_content_and_tool_call_deltas(fake: tuple[FakeOpenAI, str]) -> None:
    server, url = fake
    async with provider(url, "stream", stream=True) as llm:
        generation = await llm.chat(QUESTION, contexts=CONTEXTS, tools=[ROOM_TOOL])
    assert generation.text == "Booking two rooms [hr-leave#0]."
    assert generation.cited_chunk_ids == ["hr-leave#0"]
    assert [(c.name, c.arguments) for c in generation.tool_calls] == [
        ("book_room", {"room": "Aurora"}),
        ("book_room", {"room": "Borealis"}),
    ]
    assert (generation.usage.prompt_tokens, generation.usage.completion_tokens) == (50, 9)
    assert generation.first_token_ms is not None
    assert 0 < generation.first_token_ms <= generation.latency_ms
    request = server.requests[0]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}


async def test_429_is_retryable_with_retry_after(fake: tuple[FakeOpenAI, str]) -> None:
    _, url = fake
    async with provider(url, "ratelimit") as llm:
        with pytest.raises(RetryableProviderError) as caught:
            await llm.chat(QUESTION, contexts=CONTEXTS)
    assert caught.value.retry_after == 7.0
    assert "429" in str(caught.value)


async def test_500_is_retryable_and_the_client_retries_as_configured(
    fake: tuple[FakeOpenAI, str],
) -> None:
    server, url = fake
    async with provider(url, "boom", max_retries=1) as llm:
        with pytest.raises(RetryableProviderError) as caught:
            await llm.chat(QUESTION, contexts=CONTEXTS)
    assert caught.value.retry_after == 0.001
    assert len(server.requests) == 2  # the first call and one retry


async def test_400_is_a_provider_error_and_not_retryable(fake: tuple[FakeOpenAI, str]) -> None:
    server, url = fake
    async with provider(url, "bad", max_retries=2) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(QUESTION, contexts=CONTEXTS)
    assert not isinstance(caught.value, RetryableProviderError)
    assert len(server.requests) == 1


async def test_tool_arguments_that_are_not_json_are_a_provider_error(
    fake: tuple[FakeOpenAI, str],
) -> None:
    _, url = fake
    async with provider(url, "badjson") as llm:
        with pytest.raises(ProviderError, match="not valid JSON"):
            await llm.chat(QUESTION, contexts=CONTEXTS, tools=[ROOM_TOOL])


async def test_timeouts_and_refused_connections_are_retryable(
    fake: tuple[FakeOpenAI, str],
) -> None:
    _, url = fake
    async with provider(url, "slow", timeout=0.2) as llm:
        with pytest.raises(RetryableProviderError, match="timed out"):
            await llm.chat(QUESTION, contexts=CONTEXTS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with provider(f"http://127.0.0.1:{closed_port}/v1", "plain") as llm:
            with pytest.raises(RetryableProviderError, match="cannot reach"):
                await llm.chat(QUESTION, contexts=CONTEXTS)


async def test_each_call_logs_one_json_line_with_the_correlation_id(
    fake: tuple[FakeOpenAI, str],
) -> None:
    _, url = fake
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("rag.provider")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        async with provider(url, "plain") as llm:
            with bind_correlation_id("req-42"):
                await llm.chat(QUESTION, contexts=CONTEXTS)
            with bind_correlation_id("req-43"), pytest.raises(ProviderError):
                await llm.chat(QUESTION, contexts=CONTEXTS, tools=[{"nameless": True}])
    finally:
        log.removeHandler(handler)
    ok = json.loads(stream.getvalue().splitlines()[0])
    assert ok["message"] == "provider call" and ok["correlation_id"] == "req-42"
    assert ok["provider"] == "openai" and ok["model"] == "plain-2025"
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (120, 12)
    assert ok["latency_ms"] > 0
    assert len(stream.getvalue().splitlines()) == 1  # a bad tool schema fails before any call


async def test_against_rag_serve(rag_server: str) -> None:
    async with provider(f"{rag_server}/v1", "rag-hr") as llm:
        generation = await llm.chat([ChatMessage("user", "How long does parental leave last?")])
    assert generation.text == "Parental leave lasts 16 weeks at full pay."
    assert generation.model == "rag-hr"
    assert generation.usage.prompt_tokens > 0


def test_helpers() -> None:
    assert parse_citations("See [a#0][b#1] and [a#0; c#2] [1].", ["a#0", "b#1", "c#2"]) == [
        "a#0",
        "b#1",
        "c#2",
    ]
    assert is_abstention("I cannot answer that from the available documents.")
    assert is_abstention("I don't know.")
    assert not is_abstention("It lasts 16 weeks [a#0].", ["a#0"])
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
