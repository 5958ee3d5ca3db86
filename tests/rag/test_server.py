"""`rag serve` on a loopback port, called through the official `openai` client and raw httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.anyio

HOSTILE_MODELS = [
    "rag-hr' OR 1=1",
    "rag-hr' OR '1'='1' --",
    "rag-../it",
    "rag-hr/../it",
    "rag-hr\u0131",  # dotless i
    "rag-\u04bbr",  # Cyrillic shha, looks like h
    "rag-\uff48\uff52",  # fullwidth hr
    "rag-HR",
    "rag-hr\x00",
    "rag-hr it",
    "rag-",
]
# Anything from either tenant's corpus that must never appear in an error.
TENANT_MARKERS = ["hr-", "it-", "vacation", "VPN", "Parental", "laptop", '"it"', "rag-it"]


@pytest.fixture
async def client(rag_server: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{rag_server}/v1", api_key="x", max_retries=0
    ) as sdk_client:
        yield sdk_client


@pytest.fixture
async def http(rag_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=rag_server, timeout=10) as raw:
        yield raw


def user(question: str) -> list[Any]:
    return [{"role": "user", "content": question}]


async def test_models_list_one_per_tenant(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    assert [m.id for m in page.data] == ["rag-hr", "rag-it"]
    assert all(m.object == "model" and m.owned_by == "truthguard" for m in page.data)
    assert (await client.models.retrieve("rag-it")).id == "rag-it"


async def test_chat_returns_the_answer_and_only_its_tenants_contexts(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model="rag-hr",
        messages=user("How long does parental leave last?"),
        extra_body={"retrieval": {"mode": "hybrid", "k": 3}},
    )
    assert completion.object == "chat.completion" and completion.model == "rag-hr"
    choice = completion.choices[0]
    assert choice.message.content == "Parental leave lasts 16 weeks at full pay."
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert completion.usage is not None and completion.usage.total_tokens > 0
    extra = completion.model_extra["truthguard"]  # type: ignore[index]
    assert extra["tenant"] == "hr" and extra["abstained"] is False
    contexts = extra["contexts"]
    assert len(contexts) == 3 and [c["rank"] for c in contexts] == [1, 2, 3]
    assert [c["score"] for c in contexts] == sorted((c["score"] for c in contexts), reverse=True)
    leave = next(c for c in contexts if c["chunk_id"] == "hr-leave#0")
    assert leave["doc_id"] == "hr-leave" and leave["title"] == "Leave policy"
    assert "16 weeks" in leave["text"]
    assert extra["cited_chunk_ids"] == ["hr-leave#0"]
    assert set(extra["arms"]) == {"dense", "lexical"}
    arm_ids = extra["arms"]["dense"] + extra["arms"]["lexical"]
    assert all(i.startswith("hr-") for i in arm_ids + [c["chunk_id"] for c in contexts])
    assert extra["retrieval_latency_ms"] >= 0
    timings = extra["timings_ms"]
    assert set(timings) == {"embedding", "dense", "lexical", "fusion", "generation"}
    assert all(ms >= 0 for ms in timings.values())
    assert max(timings["embedding"] + timings["dense"], timings["lexical"]) <= (
        extra["retrieval_latency_ms"] + 0.01)


async def test_max_tokens_caps_the_answer_below_the_tenant_limit(
    client: openai.AsyncOpenAI,
) -> None:
    question = user("How long does parental leave last?")
    full = await client.chat.completions.create(model="rag-hr", messages=question)
    capped = await client.chat.completions.create(model="rag-hr", messages=question,
                                                  max_tokens=3)
    newer = await client.chat.completions.create(model="rag-hr", messages=question,
                                                 max_tokens=50, max_completion_tokens=2)
    assert len((full.choices[0].message.content or "").split()) > 3
    assert (capped.choices[0].message.content or "").split() == (
        full.choices[0].message.content or "").split()[:3]
    assert len((newer.choices[0].message.content or "").split()) == 2
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="rag-hr", messages=question, max_tokens=0)


async def test_the_other_tenant_sees_only_its_own_documents(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="rag-it",
        messages=user("How long does parental leave last?"),
        extra_body={"retrieval": {"mode": "lexical", "k": 5}},
    )
    extra = completion.model_extra["truthguard"]  # type: ignore[index]
    assert all(c["doc_id"].startswith("it-") for c in extra["contexts"])
    assert list(extra["arms"]) == ["lexical"]
    assert extra["abstained"] is True
    assert completion.choices[0].message.content == (
        "I cannot answer that from the available documents."
    )


async def test_tools_come_back_as_tool_calls(client: openai.AsyncOpenAI, tools: list[Any]) -> None:
    completion = await client.chat.completions.create(
        model="rag-it",
        messages=user("Open a high priority ticket for user alice: the VPN is down"),
        tools=tools,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "create_ticket"
    arguments = json.loads(call.function.arguments)
    assert arguments["username"] == "alice" and arguments["priority"] == "high"


async def test_tool_choice_none_and_named(client: openai.AsyncOpenAI, tools: list[Any]) -> None:
    question = user("Please book the Aurora room on 2025-04-01 for 3 attendees")
    plain = await client.chat.completions.create(
        model="rag-it", messages=question, tools=tools, tool_choice="none"
    )
    assert not plain.choices[0].message.tool_calls
    named = await client.chat.completions.create(
        model="rag-it",
        messages=question,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "book_meeting_room"}},
    )
    (call,) = named.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {
        "room": "Aurora",
        "date": "2025-04-01",
        "attendees": 3,
    }


async def _streamed(client: openai.AsyncOpenAI, **request: Any) -> dict[str, Any]:
    stream = await client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **request
    )
    content: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    out: dict[str, Any] = {"chunks": 0, "pieces": 0}
    async for chunk in stream:
        out["chunks"] += 1
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                content.append(choice.delta.content)
                out["pieces"] += 1
            for piece in choice.delta.tool_calls or []:
                slot = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += piece.id or ""
                slot["name"] += (piece.function and piece.function.name) or ""
                slot["arguments"] += (piece.function and piece.function.arguments) or ""
            if choice.finish_reason:
                out["finish_reason"] = choice.finish_reason
                out["truthguard"] = (chunk.model_extra or {})["truthguard"]
    out["content"] = "".join(content)
    out["calls"] = [calls[i] for i in sorted(calls)]
    return out


async def test_stream_reassembles_to_the_plain_answer(client: openai.AsyncOpenAI) -> None:
    request = {"model": "rag-hr", "messages": user("When are salaries paid?")}
    plain = await client.chat.completions.create(**request)
    streamed = await _streamed(client, **request)
    assert streamed["content"] == plain.choices[0].message.content
    assert streamed["pieces"] > 3  # really in pieces, not one blob
    assert streamed["finish_reason"] == "stop"
    plain_extra = plain.model_extra["truthguard"]  # type: ignore[index]
    assert streamed["truthguard"]["contexts"] == plain_extra["contexts"]
    assert streamed["truthguard"]["cited_chunk_ids"] == plain_extra["cited_chunk_ids"]
    assert plain.usage is not None
    assert streamed["usage"].total_tokens == plain.usage.total_tokens


async def test_stream_with_tool_call_deltas(client: openai.AsyncOpenAI, tools: list[Any]) -> None:
    request = {
        "model": "rag-it",
        "messages": user("Please book the Borealis room on 2025-03-14 for 6 attendees"),
        "tools": tools,
    }
    plain = await client.chat.completions.create(**request)
    streamed = await _streamed(client, **request)
    assert streamed["finish_reason"] == "tool_calls"
    (call,) = streamed["calls"]
    (plain_call,) = plain.choices[0].message.tool_calls or []
    assert call["name"] == plain_call.function.name == "book_meeting_room"
    assert json.loads(call["arguments"]) == json.loads(plain_call.function.arguments)
    assert call["id"].startswith("call_")


async def test_raw_stream_is_openai_sse_ending_with_done(http: httpx.AsyncClient) -> None:
    body = {"model": "rag-hr", "messages": user("When are salaries paid?"), "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "usage" not in chunks[-1]  # only when stream_options.include_usage asks for it
    assert chunks[-1]["truthguard"]["tenant"] == "hr"


async def test_embeddings(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    response = await client.embeddings.create(model="hashing", input=["vacation days", "VPN"])
    assert [d.index for d in response.data] == [0, 1]
    assert all(len(d.embedding) == 256 for d in response.data)
    assert response.model == "hashing" and response.usage.prompt_tokens == 3
    small = await client.embeddings.create(
        model="hashing-64", input="vacation days", encoding_format="float"
    )
    assert len(small.data) == 1 and len(small.data[0].embedding) == 64
    raw = await http.post("/v1/embeddings", json={"input": "vacation days"})  # default model
    assert raw.status_code == 200
    body = raw.json()
    assert body["object"] == "list" and body["model"] == "hashing"
    assert body["data"][0]["object"] == "embedding"
    assert body["data"][0]["embedding"] == response.data[0].embedding
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="hashing", input=[""])


@pytest.mark.parametrize("model", HOSTILE_MODELS)
async def test_hostile_model_names_get_a_4xx_and_no_data(
    model: str, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model=model, messages=user("vacation days VPN"))
    assert 400 <= caught.value.status_code < 500
    body = {"model": model, "messages": user("vacation days VPN")}
    raw = await http.post("/v1/chat/completions", json=body)
    assert 400 <= raw.status_code < 500
    error = raw.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == "model"
    assert "truthguard" not in raw.text and "choices" not in raw.text
    assert not [m for m in TENANT_MARKERS if m in raw.text]


async def test_unknown_models_are_404(client: openai.AsyncOpenAI) -> None:
    for model in ("rag-finance", "gpt-4o"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model=model, messages=user("hello"))
        error = caught.value.body
        assert isinstance(error, dict) and error["code"] == "model_not_found"
        assert "rag-hr" not in error["message"]  # no list of the tenants that do exist


HI = user("hi")
IMAGE = [{"role": "user", "content": [{"type": "image_url"}]}]
SYSTEM_ONLY = [{"role": "system", "content": "no user turn"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, "model"),
        ({"model": "rag-hr"}, "messages"),
        ({"model": "rag-hr", "messages": []}, "messages"),
        ({"model": "rag-hr", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": "rag-hr", "messages": HI, "retrieval": {"k": 0}}, "retrieval.k"),
        ({"model": "rag-hr", "messages": HI, "retrieval": {"mode": "x"}}, "retrieval.mode"),
        ({"model": "rag-hr", "messages": HI, "retrieval": {"kk": 3}}, "retrieval.kk"),
        (
            {"model": "rag-hr", "messages": HI, "tools": [{"function": {}}]},
            "tools[0].function.name",
        ),
        ({"model": "rag-hr", "messages": IMAGE}, "messages[0].content"),
        ({"model": "rag-hr", "messages": SYSTEM_ONLY}, None),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], param: str | None
) -> None:
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


async def test_invalid_json_and_unknown_routes(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    response = await http.get("/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_request_id_is_honoured_or_generated(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/models", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = await http.get("/v1/models")
    assert len(generated.headers["x-request-id"]) == 32
    forged = await http.get("/v1/models", headers={"X-Request-ID": 'x"\\n{"level":"ERROR"}'})
    assert forged.headers["x-request-id"] != 'x"\\n{"level":"ERROR"}'
    error = await http.post("/v1/chat/completions", json={}, headers={"X-Request-ID": "e-1"})
    assert error.headers["x-request-id"] == "e-1"
