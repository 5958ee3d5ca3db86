"""RagasJudge against a real OpenAI-compatible judge server on loopback.

The server is an honest, deterministic stand-in for an LLM: it answers each ragas prompt with
the JSON document ragas' output model expects (found by the schema title ragas embeds in the
prompt), and its verdicts follow the words: a statement is supported only when all its content
words occur in the context. Embeddings are bags of hashed words. The model name selects a
failure: `status-503`, `status-400`, `garbage` (not JSON), `slow`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from loopback import serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from guard.adapters.ragas_judge import RagasJudge
from guard.domain import Context, SutResponse
from guard.golden import GoldenCase
from rag.errors import ProviderError, RetryableProviderError

pytestmark = pytest.mark.anyio

QUESTION = "When was the Eiffel Tower completed?"
REFERENCE = "The Eiffel Tower was completed in 1889."
EIFFEL = "The Eiffel Tower stands in Paris. The Eiffel Tower was completed in 1889."
BANANA = "Bananas are rich in potassium and grow in tropical climates."
FAITHFUL = "The Eiffel Tower was completed in 1889."
UNFAITHFUL = "The Eiffel Tower was completed in 1925. The Eiffel Tower is made of gold."

# --------------------------------------------------------------------------- the judge server

_STOP = frozenset(
    "a an the is was are were be been of in on at to and or it its by for with as has had "
    "that this what when where who which how do does did".split())
_DIMENSIONS = 64


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def _supported(statement: str, context: str) -> bool:
    words = _words(statement)
    return bool(words) and words <= _words(context)


def _embed(text: str) -> list[float]:
    vector = [0.0] * _DIMENSIONS
    for word in _words(text):
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % _DIMENSIONS] += 1.0
    return vector


def _parse_prompt(prompt: str) -> tuple[str, dict[str, Any]]:
    """The output model's title and the input document of a ragas `BasePrompt` string."""
    start = prompt.index("JSON Schema:\n") + len("JSON Schema:\n")
    schema, _ = json.JSONDecoder().raw_decode(prompt, start)
    payload = prompt.rsplit("input: ", 1)[1].rsplit("\nOutput:", 1)[0]
    return schema["title"], json.loads(payload)


def _verdict(title: str, data: dict[str, Any]) -> dict[str, Any]:
    if title == "StatementGeneratorOutput":
        return {"statements": _sentences(data["answer"])}
    if title == "NLIStatementOutput":
        return {"statements": [
            {"statement": s, "reason": "word overlap",
             "verdict": int(_supported(s, data["context"]))}
            for s in data["statements"]]}
    if title == "AnswerRelevanceOutput":
        response = data["response"]
        evasive = any(p in response.lower() for p in ("don't know", "not sure"))
        return {"question": response.rstrip(".") + "?", "noncommittal": int(evasive)}
    if title == "ContextPrecisionOutput":
        answer = _words(data["answer"])
        useful = 2 * len(answer & _words(data["context"])) >= len(answer) > 0
        return {"reason": "word overlap", "verdict": int(useful)}
    if title == "ContextRecallOutput":
        return {"classifications": [
            {"statement": s, "reason": "word overlap",
             "attributed": int(_supported(s, data["context"]))}
            for s in _sentences(data["answer"])]}
    raise KeyError(title)


@dataclass
class JudgeServer:
    base_url: str = ""
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def chat(self) -> list[dict[str, Any]]:
        return [body for path, body in self.requests if path.endswith("/chat/completions")]

    def embeddings(self) -> list[dict[str, Any]]:
        return [body for path, body in self.requests if path.endswith("/embeddings")]


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "test", "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def _app(server: JudgeServer) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        server.requests.append((request.url.path, body))
        model = body.get("model", "")
        if model == "status-503":
            return _error(503, "overloaded", {"Retry-After": "7"})
        if model == "status-400":
            return _error(400, "bad request")
        if body.get("response_format") != {"type": "json_object"}:
            return _error(400, "this judge only speaks JSON mode")
        if model == "garbage":
            return JSONResponse(_completion(model, "definitely not JSON"))
        if model == "slow":
            await asyncio.sleep(1.0)
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        try:
            title, data = _parse_prompt(user)
            document = _verdict(title, data)
        except (KeyError, ValueError, IndexError) as exc:
            return _error(400, f"unrecognised ragas prompt: {exc!r}")
        return JSONResponse(_completion(model, json.dumps(document)))

    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        server.requests.append((request.url.path, body))
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = [{"object": "embedding", "index": i, "embedding": _embed(t)}
                for i, t in enumerate(texts)]
        return JSONResponse({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": 0, "total_tokens": 0}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/embeddings", embeddings, methods=["POST"])])


@pytest.fixture(scope="module")
def judge_server() -> Iterator[JudgeServer]:
    server = JudgeServer()
    with serve_in_thread(_app(server), lifespan="off") as url:
        server.base_url = f"{url}/v1"
        yield server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server(judge_server: JudgeServer) -> JudgeServer:
    judge_server.requests.clear()
    return judge_server


@pytest.fixture
async def judge(server: JudgeServer) -> AsyncIterator[RagasJudge]:
    async with RagasJudge(server.base_url, "judge", "not-needed") as made:
        yield made


# --------------------------------------------------------------------------- helpers


def _case(reference: str | None = REFERENCE, **kwargs: Any) -> GoldenCase:
    kwargs.setdefault("question", QUESTION)
    return GoldenCase(id="eiffel", tenant="t", reference_answer=reference, **kwargs)


def _response(answer: str, *texts: str) -> SutResponse:
    contexts = tuple(Context(f"c{rank}", f"d{rank}", text, 1.0 / rank, rank)
                     for rank, text in enumerate(texts, start=1))
    return SutResponse(answer=answer, contexts=contexts)


# --------------------------------------------------------------------------- tests


async def test_faithful_answer_scores_higher_than_unfaithful(
        judge: RagasJudge, server: JudgeServer) -> None:
    faithful = await judge.score(_case(), _response(FAITHFUL, EIFFEL))
    unfaithful = await judge.score(_case(), _response(UNFAITHFUL, EIFFEL))

    assert faithful["judge.faithfulness"] == 1.0
    assert unfaithful["judge.faithfulness"] == 0.0
    assert faithful["judge.answer_relevancy"] is None  # no embedding model
    chat = server.chat()
    assert chat and all(b["response_format"] == {"type": "json_object"} for b in chat)
    assert all("tools" not in b and b.get("n", 1) == 1 for b in chat)
    assert {b["model"] for b in chat} == {"judge"}
    assert not server.embeddings()


async def test_context_metrics_prefer_the_right_contexts(judge: RagasJudge) -> None:
    right = await judge.score(_case(), _response(FAITHFUL, EIFFEL, BANANA))
    late = await judge.score(_case(), _response(FAITHFUL, BANANA, EIFFEL))
    unrelated = await judge.score(_case(), _response(FAITHFUL, BANANA))

    for scores in (right, late, unrelated):
        for name in ("judge.context_precision", "judge.context_recall"):
            value = scores[name]
            assert value is not None and 0.0 <= value <= 1.0
    assert right["judge.context_recall"] == 1.0
    assert unrelated["judge.context_recall"] == 0.0
    assert right["judge.context_precision"] == pytest.approx(1.0)
    assert late["judge.context_precision"] == pytest.approx(0.5)  # average precision: rank 2
    assert unrelated["judge.context_precision"] == 0.0


async def test_answer_relevancy_needs_an_embedding_model(server: JudgeServer) -> None:
    async with RagasJudge(server.base_url, "judge", "k", embedding_model="hash-64") as judge:
        on_topic = await judge.score(_case(), _response(FAITHFUL, EIFFEL))
        off_topic = await judge.score(_case(), _response(BANANA, EIFFEL))
        evasive = await judge.score(_case(), _response("I don't know.", EIFFEL))

    assert on_topic["judge.answer_relevancy"] is not None
    assert off_topic["judge.answer_relevancy"] is not None
    assert 0.0 <= off_topic["judge.answer_relevancy"] < on_topic["judge.answer_relevancy"] <= 1.0
    assert evasive["judge.answer_relevancy"] == 0.0  # noncommittal: ragas' rule
    assert {b["model"] for b in server.embeddings()} == {"hash-64"}
    generated = [b for b in server.chat() if "AnswerRelevanceOutput" in json.dumps(b)]
    assert len(generated) == 3 * 3  # three generated questions per score


async def test_without_reference_context_metrics_are_none(
        judge: RagasJudge, server: JudgeServer) -> None:
    scores = await judge.score(_case(reference=None), _response(FAITHFUL, EIFFEL))

    assert scores == {"judge.faithfulness": 1.0, "judge.answer_relevancy": None,
                      "judge.context_precision": None, "judge.context_recall": None}
    assert len(server.chat()) == 2  # statements, then verdicts; nothing for the context metrics


async def test_answers_are_a_reference_and_the_latest_user_turn_is_the_question(
        judge: RagasJudge, server: JudgeServer) -> None:
    conversation = ({"role": "user", "content": "Tell me about Paris."},
                    {"role": "assistant", "content": "Paris is the capital of France."},
                    {"role": "user", "content": QUESTION})
    case = _case(reference=None, question=None, conversation=conversation,
                 answers=(REFERENCE,))
    scores = await judge.score(case, _response(FAITHFUL, EIFFEL))

    assert scores["judge.context_recall"] == 1.0
    prompts = [b["messages"][-1]["content"] for b in server.chat()]
    assert any(json.dumps(QUESTION) in p for p in prompts)
    assert not any("Tell me about Paris" in p for p in prompts)


async def test_nothing_to_judge_is_none_not_zero(judge: RagasJudge, server: JudgeServer) -> None:
    no_answer = await judge.score(_case(), _response("", EIFFEL))
    no_contexts = await judge.score(_case(), _response(FAITHFUL))

    assert no_answer["judge.faithfulness"] is None
    assert no_answer["judge.context_recall"] == 1.0  # judged from the reference, not the answer
    assert set(no_contexts.values()) == {None}


async def test_503_is_retryable_and_not_retried_behind_our_back(server: JudgeServer) -> None:
    async with RagasJudge(server.base_url, "status-503", "k") as judge:
        with pytest.raises(RetryableProviderError) as caught:
            await judge.score(_case(), _response(FAITHFUL, EIFFEL))

    assert "503" in str(caught.value)
    assert caught.value.retry_after == 7.0
    # Three metrics apply, each fails on its first request: no client, instructor or ragas retry.
    assert 1 <= len(server.requests) <= 3


async def test_400_is_not_retryable(server: JudgeServer) -> None:
    async with RagasJudge(server.base_url, "status-400", "k") as judge:
        with pytest.raises(ProviderError) as caught:
            await judge.score(_case(reference=None), _response(FAITHFUL, EIFFEL))

    assert not isinstance(caught.value, RetryableProviderError)
    assert len(server.requests) == 1


async def test_unparseable_reply_is_a_provider_error_after_one_reask(server: JudgeServer) -> None:
    async with RagasJudge(server.base_url, "garbage", "k") as judge:
        with pytest.raises(ProviderError) as caught:
            await judge.score(_case(reference=None), _response(FAITHFUL, EIFFEL))

    assert not isinstance(caught.value, RetryableProviderError)
    assert "schema" in str(caught.value)
    assert len(server.requests) == 2


async def test_timeout_is_retryable(server: JudgeServer) -> None:
    async with RagasJudge(server.base_url, "slow", "k", timeout=0.2) as judge:
        with pytest.raises(RetryableProviderError, match="timed out"):
            await judge.score(_case(reference=None), _response(FAITHFUL, EIFFEL))

    assert len(server.requests) == 1


async def test_unreachable_endpoint_is_retryable_and_construction_does_no_io() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = RagasJudge(f"http://127.0.0.1:{port}/v1", "judge", "k")  # nothing listens there
    try:
        with pytest.raises(RetryableProviderError, match="cannot reach"):
            await judge.score(_case(), _response(FAITHFUL, EIFFEL))
    finally:
        await judge.aclose()
    await judge.aclose()  # idempotent
