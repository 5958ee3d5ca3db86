"""`rag serve`: the pipeline behind an OpenAI-compatible HTTP API (Starlette, uvicorn, SSE).

Endpoints
---------
`GET /v1/models`, `GET /v1/models/{id}`
    One chat model per tenant, id `rag-{tenant}`, in OpenAI's list shape.
`POST /v1/chat/completions`
    OpenAI's request body: `model`, `messages` (text content only), `tools`, `tool_choice`
    ("none" drops the tools, a named function keeps only that one, "required" is best effort),
    `stream`, `stream_options.include_usage`, `max_tokens` / `max_completion_tokens` (a cap
    under the tenant's own answer limit, never above it). `temperature` and other sampling
    fields are accepted and ignored: each tenant's provider settings decide. One extra body
    field, `retrieval`, overrides the tenant's retrieval settings for this request:
    `{"mode": "dense" | "lexical" | "hybrid", "k": 5, "fusion": "rrf" | "weighted",
    "rrf_k": 60, "dense_weight": 0.5, "candidates": 100, "history_turns": 2}` (all optional).
    With the official client: `extra_body={"retrieval": {"mode": "hybrid", "k": 5}}`.
`POST /v1/embeddings`
    `input` (a string or a list of strings), `model` (a configured embedder name; default the
    first tenant's embedder), `encoding_format` "float" or "base64". One extra field,
    `input_type`: "passage" (default) or "query", for embedders that embed them differently.

The extra response field `truthguard`
--------------------------------------
Every chat completion (and, when streaming, the chunk that carries `finish_reason`) has a
top-level field next to OpenAI's own, which OpenAI clients ignore but keep
(`completion.model_extra["truthguard"]` in the Python SDK)::

    "truthguard": {
      "tenant": "hr",
      "contexts": [                      # the final ranked list, best first
        {"chunk_id": "leave#0", "doc_id": "leave", "title": "Leave policy",
         "text": "...", "score": 0.0328, "rank": 1}
      ],
      "arms": {"dense": ["leave#0", ...], "lexical": ["leave#0", ...]},  # each retriever's ids
      "cited_chunk_ids": ["leave#0"],    # chunks the answer cites
      "abstained": false,                # the provider declined to answer from the documents
      "retrieval_latency_ms": 4.2,
      "timings_ms": {"embedding": 2.1, "dense": 1.3, "lexical": 0.4, "fusion": 0.1,
                     "generation": 35.0},  # per stage; "first_token" too when streamed
      "generator_model": "local-extractive"   # the tenant provider's own model name
    }

Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
body (`param` names the field) or an invalid tenant in the model name, 404 for an unknown
model, 502 when the tenant's provider fails, 503 (with `Retry-After`) when it is overloaded.
Error messages never name other tenants. Every response carries `X-Request-ID`: the caller's,
if it is a plain token of at most 128 characters, else a fresh one; it is the correlation id
of every log line the request causes.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.domain import Answer, ChatMessage
from rag.errors import InputError, ProviderError, RetryableProviderError, TenantIdError
from rag.logging import bind_correlation_id, new_correlation_id
from rag.pipeline import RagPipeline
from rag.ports import Embedder
from rag.tenancy import validate_tenant_id

logger = logging.getLogger("rag.server")

MODEL_PREFIX = "rag-"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# pydantic puts the union member it tried into error locations ("str", "list[...]"): not fields.
_UNION_TAG = re.compile(r"^(?:str|int|float|bool|none|[a-z-]+\[.*\])$")


# request bodies ------------------------------------------------------------------------------


class _Body(BaseModel):
    # OpenAI adds request fields often; unknown ones are ignored, as OpenAI-compatible servers do.
    model_config = ConfigDict(extra="ignore")


class _Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class _FunctionSpec(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class _Tool(_Body):
    type: Literal["function"] = "function"
    function: _FunctionSpec


class _NamedFunction(_Body):
    name: str


class _NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: _NamedFunction


class _StreamOptions(_Body):
    include_usage: bool = False


class RetrievalOverrides(BaseModel):
    """The `retrieval` extra body field: per-request retrieval settings, all optional."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["dense", "lexical", "hybrid"] | None = None
    k: int | None = Field(None, ge=1, le=200)
    fusion: Literal["rrf", "weighted"] | None = None
    rrf_k: int | None = Field(None, ge=1)
    dense_weight: float | None = Field(None, ge=0.0, le=1.0)
    candidates: int | None = Field(None, ge=1, le=2000)
    history_turns: int | None = Field(None, ge=0, le=50)


class ChatCompletionRequest(_Body):
    """The subset of OpenAI's chat completion request the server acts on, plus `retrieval`."""

    model: str
    messages: list[_Message] = Field(min_length=1)
    tools: list[_Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedToolChoice | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    retrieval: RetrievalOverrides | None = None


class EmbeddingRequest(_Body):
    """OpenAI's embeddings request, plus `input_type`."""

    model: str | None = None
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    input_type: Literal["query", "passage"] = "passage"


# errors --------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


def _unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model {_shown(model)} does not exist.",
        param="model",
        code="model_not_found",
    )


def _shown(value: str) -> str:
    """A caller's value, quoted and cut short, safe to echo in a message."""
    return json.dumps(value[:80] + ("…" if len(value) > 80 else ""), ensure_ascii=True)


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = _param_path(first["loc"])
    return ApiError(400, f"{first['msg']} (field {param or 'body'})", param=param or None)


def _param_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _UNION_TAG.match(part):
            break
        else:
            path += f".{part}" if path else part
    return path


def _from_exception(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, TenantIdError):
        return ApiError(400, str(exc), param="model", code="invalid_tenant")
    if isinstance(exc, InputError):
        return ApiError(400, str(exc))
    if isinstance(exc, RetryableProviderError):
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return ApiError(503, str(exc), type="server_error", code="provider_busy", headers=headers)
    if isinstance(exc, ProviderError):
        return ApiError(502, str(exc), type="server_error", code="provider_error")
    # Anything else is our bug: log it in full, tell the caller nothing internal.
    logger.exception("unhandled error")
    return ApiError(500, "internal server error", type="server_error")


Handler = Callable[[Request], Awaitable[Response]]
_B = TypeVar("_B", bound=BaseModel)


def _openai_errors(handler: Handler) -> Handler:
    """Every failure of `handler` becomes an OpenAI-shaped error response."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # each becomes a 4xx/5xx; our own bugs are logged in full
            return _from_exception(exc).response()

    return endpoint


async def _read_body(request: Request, model: type[_B]) -> _B:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    except RecursionError:
        raise ApiError(400, "The request body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


# responses -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Completion:
    """One answer rendered as OpenAI objects; shared by the plain and streamed forms."""

    id: str
    created: int
    model: str
    tenant: str
    answer: Answer
    tool_call_ids: list[str]

    @classmethod
    def of(cls, answer: Answer, model: str, tenant: str) -> _Completion:
        return cls(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=model,
            tenant=tenant,
            answer=answer,
            tool_call_ids=[f"call_{uuid.uuid4().hex[:24]}" for _ in answer.tool_calls],
        )

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.answer.tool_calls else "stop"

    def tool_calls(self) -> list[dict[str, Any]]:
        return [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call_id, call in zip(self.tool_call_ids, self.answer.tool_calls, strict=True)
        ]

    def usage(self) -> dict[str, int]:
        usage = self.answer.usage
        return {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }

    def truthguard(self) -> dict[str, Any]:
        retrieval = self.answer.retrieval
        return {
            "tenant": self.tenant,
            "contexts": [
                {
                    "chunk_id": hit.chunk_id,
                    "doc_id": hit.doc_id,
                    "title": hit.title,
                    "text": hit.text,
                    "score": hit.score,
                    "rank": rank,
                }
                for rank, hit in enumerate(retrieval.hits, start=1)
            ],
            "arms": {arm: [h.chunk_id for h in hits] for arm, hits in retrieval.arms.items()},
            "cited_chunk_ids": list(self.answer.cited_chunk_ids),
            "abstained": self.answer.abstained,
            "retrieval_latency_ms": round(retrieval.latency_ms, 3),
            "timings_ms": {stage: round(ms, 3) for stage, ms in self.answer.timings_ms.items()},
            "generator_model": self.answer.model,
        }

    def body(self) -> dict[str, Any]:
        """The `chat.completion` object, with `truthguard`."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.answer.text or (None if self.answer.tool_calls else ""),
            "refusal": None,
        }
        if self.answer.tool_calls:
            message["tool_calls"] = self.tool_calls()
        choice = {"index": 0, "message": message, "logprobs": None}
        return {
            **self._head("chat.completion"),
            "choices": [{**choice, "finish_reason": self.finish_reason}],
            "usage": self.usage(),
            "truthguard": self.truthguard(),
        }

    def chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        """The `chat.completion.chunk` objects of the same answer, in order."""
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        out = [self._chunk({"role": "assistant", "content": ""}, extra)]
        out += [self._chunk({"content": piece}, extra) for piece in _pieces(self.answer.text)]
        for index, call in enumerate(self.tool_calls()):
            out.append(self._chunk(_tool_call_head(index, call), extra))
            for piece in _slices(call["function"]["arguments"], 24):
                tool_delta = {"index": index, "function": {"arguments": piece}}
                out.append(self._chunk({"tool_calls": [tool_delta]}, extra))
        final = self._chunk({}, extra, self.finish_reason)
        out.append({**final, "truthguard": self.truthguard()})
        if include_usage:
            out.append(
                {**self._head("chat.completion.chunk"), "choices": [], "usage": self.usage()}
            )
        return out

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def _chunk(
        self, delta: dict[str, Any], extra: dict[str, Any], finish: str | None = None
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self._head("chat.completion.chunk"), "choices": [choice], **extra}


def _tool_call_head(index: int, call: dict[str, Any]) -> dict[str, Any]:
    # The first delta of a call names it; its arguments follow in pieces, as OpenAI streams them.
    head = {
        "index": index,
        "id": call["id"],
        "type": "function",
        "function": {"name": call["function"]["name"], "arguments": ""},
    }
    return {"tool_calls": [head]}


def _pieces(text: str) -> list[str]:
    """Word-sized pieces that join back to exactly `text`."""
    return re.findall(r"\S+\s*|\s+", text)


def _slices(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _sse(chunks: Sequence[dict[str, Any]]) -> AsyncIterator[str]:
    for chunk in chunks:
        yield json.dumps(chunk)
    yield "[DONE]"


# the API -------------------------------------------------------------------------------------


class _Api:
    """The endpoints, over one pipeline and its embedders."""

    def __init__(self, pipeline: RagPipeline, embedders: Mapping[str, Embedder] | None) -> None:
        self.pipeline = pipeline
        self.created = int(time.time())
        self.embedders = dict(embedders or {})
        if pipeline.tenants:
            default = pipeline.runtime(pipeline.tenants[0]).embedder
            self.embedders.setdefault(default.name, default)
            self.default_embedder = default.name
        elif self.embedders:
            self.default_embedder = next(iter(self.embedders))
        else:
            self.default_embedder = ""

    def tenant_of(self, model: str) -> str:
        """The tenant a model id names; 400 for an invalid tenant id, 404 for an unknown one."""
        if not model.startswith(MODEL_PREFIX):
            raise _unknown_model(model)
        tenant = model.removeprefix(MODEL_PREFIX)
        try:
            validate_tenant_id(tenant)
        except TenantIdError:
            raise ApiError(
                400,
                f"Invalid model {_shown(model)}: after '{MODEL_PREFIX}' a tenant id uses "
                "1-48 characters a-z, 0-9 and _, starting with a letter.",
                param="model",
                code="invalid_tenant",
            ) from None
        if tenant not in self.pipeline.tenants:
            raise _unknown_model(model)
        return tenant

    def _model_object(self, tenant: str) -> dict[str, Any]:
        return {
            "id": f"{MODEL_PREFIX}{tenant}",
            "object": "model",
            "created": self.created,
            "owned_by": "truthguard",
        }

    async def list_models(self, request: Request) -> Response:
        data = [self._model_object(t) for t in self.pipeline.tenants]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        tenant = self.tenant_of(request.path_params["model"])
        return JSONResponse(self._model_object(tenant))

    async def chat_completions(self, request: Request) -> Response:
        body = await _read_body(request, ChatCompletionRequest)
        tenant = self.tenant_of(body.model)
        overrides = body.retrieval.model_dump(exclude_none=True) if body.retrieval else {}
        answer = await self.pipeline.answer(
            tenant, _messages(body.messages), tools=_tools(body),
            # OpenAI's newer name wins, as in OpenAI's own API.
            max_tokens=body.max_completion_tokens or body.max_tokens, **overrides
        )
        completion = _Completion.of(answer, body.model, tenant)
        if not body.stream:
            return JSONResponse(completion.body())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventSourceResponse(_sse(completion.chunks(include_usage)), sep="\n")

    async def embeddings(self, request: Request) -> Response:
        body = await _read_body(request, EmbeddingRequest)
        name = body.model or self.default_embedder
        embedder = self.embedders.get(name)
        if embedder is None:
            raise _unknown_model(name)
        texts = [body.input] if isinstance(body.input, str) else body.input
        _check_embedding_input(texts, body.dimensions, embedder)
        vectors = await embedder.embed(texts, kind=body.input_type)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        tokens = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})


def _messages(messages: Sequence[_Message]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        out.append(ChatMessage(role, _text_of(message.content, i)))
    return out


def _text_of(content: str | list[dict[str, Any]] | None, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(
                400,
                "Only text content parts are supported.",
                param=f"messages[{index}].content",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _tools(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    tools = [t.model_dump() for t in body.tools or []]
    choice = body.tool_choice
    if choice == "none":
        return []
    if isinstance(choice, _NamedToolChoice):
        named = [t for t in tools if t["function"]["name"] == choice.function.name]
        if not named:
            raise ApiError(
                400,
                f"tool_choice names {_shown(choice.function.name)}, which is not in tools.",
                param="tool_choice",
            )
        return named
    return tools


def _check_embedding_input(texts: Sequence[str], dimensions: int | None, e: Embedder) -> None:
    if not texts:
        raise ApiError(400, "input must not be empty.", param="input")
    if len(texts) > 2048:
        raise ApiError(400, "input holds more than 2048 texts.", param="input")
    if any(not t.strip() for t in texts):
        raise ApiError(400, "input must not contain empty strings.", param="input")
    if dimensions is not None and dimensions != e.dimension:
        raise ApiError(
            400, f"This model has {e.dimension} dimensions, not {dimensions}.", param="dimensions"
        )


def _encode(vector: np.ndarray[Any, Any], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # What OpenAI sends and its SDK decodes: little-endian float32 bytes, base64.
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


# middleware and app --------------------------------------------------------------------------


class CorrelationIdMiddleware:
    """Binds a correlation id for each HTTP request, returns it as `X-Request-ID`, logs the
    request once.

    The caller's `X-Request-ID` is honoured when it is a plain token (at most 128 characters
    of letters, digits and `._:-`); anything else could forge log lines, so it is replaced.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id") or ""
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else new_correlation_id()
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        with bind_correlation_id(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                logger.info(
                    "http request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    return ApiError(exc.status_code, str(exc.detail), code=code).response()


def create_app(pipeline: RagPipeline, embedders: Mapping[str, Embedder] | None = None) -> Starlette:
    """The OpenAI-compatible app over `pipeline`; `embedders` are served by name.

    The first tenant's embedder is always served, under its `name`, and is the default.
    """
    api = _Api(pipeline, embedders)
    app = Starlette(
        routes=[
            Route("/v1/models", _openai_errors(api.list_models), methods=["GET"]),
            Route("/v1/models/{model:path}", _openai_errors(api.get_model), methods=["GET"]),
            Route("/v1/chat/completions", _openai_errors(api.chat_completions), methods=["POST"]),
            Route("/v1/embeddings", _openai_errors(api.embeddings), methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.add_middleware(CorrelationIdMiddleware)
    return app


async def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 8008, **options: Any) -> None:
    """Run `app` with uvicorn until stopped. Loopback by default: exposing it is a choice.

    Logging is left to `rag.logging.configure_logging` (uvicorn's own config is off) and
    `CorrelationIdMiddleware` logs each request, so uvicorn's access log is off too.
    """
    settings: dict[str, Any] = {"log_config": None, "access_log": False, **options}
    config = uvicorn.Config(app, host=host, port=port, **settings)
    await uvicorn.Server(config).serve()
