"""A loopback OpenAI-compatible chat server that misbehaves on purpose, and counts it.

It speaks HTTP/1.1 itself, on plain asyncio streams, so that it can fail the way real networks
and overloaded providers fail: close the socket mid-response, stop a stream half-way, send a
body that is not JSON. Endpoints: `POST /v1/chat/completions` (plain and `stream: true`),
`GET /v1/models`, and `GET /stats` (the counters below, as JSON).

Faults (`Fault`)
----------------
`rate_limit` 429 with `Retry-After`; `rate_limit_no_hint` 429 without it; `server_error` 500;
`unavailable` 503; `slow` answers only after `slow_s` (past the client's timeout);
`disconnect` reads the request and closes the socket without a byte of response;
`truncated_body` sends the headers and half the body, then closes the socket; `truncated_stream`
streams a few chunks, then closes the socket (on a non-streaming request it behaves like
`truncated_body`); `invalid_json` answers 200 with a JSON content type and a body that is not
JSON; `bad_tool_arguments` answers 200 with a tool call whose arguments are not valid JSON.
All but the last are transient: a client that retries gets the right answer in the end. A tool
call with broken arguments is a well-formed answer that is wrong, and must be scored as wrong.

Which request gets which fault
------------------------------
A request's key is the text of its last user message (a golden case's question). The server
counts attempts per key, and the first rule that names a fault wins:

1. the request header `X-Fault: <fault>` (`X-Fault: none` forces a clean answer);
2. the `FaultPlan`: key -> the faults of its 1st, 2nd, ... attempt;
3. the `FaultSchedule`: a seeded draw per (key, attempt), at most `max_in_a_row` faults per key,
   so that a client allowed that many retries always recovers. Because the draw depends only on
   the seed, the key and the attempt number, it is the same however requests interleave.

`faults_enabled = False` turns every rule off: the same server then gives the clean baseline.
A request that gets no fault is answered by the upstream: `CannedUpstream` (deterministic
answers, contexts and tool calls per question) or `AsgiUpstream` (any OpenAI-compatible ASGI
app in process, such as `rag serve`'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from guard.golden import GoldenCase

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_HEADER_LINES = 100
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}


class Fault(StrEnum):
    RATE_LIMIT = "rate_limit"
    RATE_LIMIT_NO_HINT = "rate_limit_no_hint"
    SERVER_ERROR = "server_error"
    UNAVAILABLE = "unavailable"
    SLOW = "slow"
    DISCONNECT = "disconnect"
    TRUNCATED_BODY = "truncated_body"
    TRUNCATED_STREAM = "truncated_stream"
    INVALID_JSON = "invalid_json"
    BAD_TOOL_ARGUMENTS = "bad_tool_arguments"

    @property
    def transient(self) -> bool:
        """True when a retry recovers the right answer."""
        return self is not Fault.BAD_TOOL_ARGUMENTS


TRANSIENT_FAULTS: tuple[Fault, ...] = tuple(f for f in Fault if f.transient)


@dataclass(frozen=True)
class FaultPlan:
    """Key (a question) -> the fault of each attempt, in order; None means answer cleanly."""

    faults: Mapping[str, Sequence[Fault | None]] = field(default_factory=dict)

    def fault(self, key: str, attempt: int) -> Fault | None:
        planned = self.faults.get(key, ())
        return planned[attempt - 1] if attempt <= len(planned) else None


@dataclass(frozen=True)
class FaultSchedule:
    """A seeded draw per (key, attempt): a fault from `kinds` with probability `rate` on each
    of a key's first `max_in_a_row` attempts, never after."""

    seed: int
    rate: float = 0.3
    kinds: tuple[Fault, ...] = TRANSIENT_FAULTS
    max_in_a_row: int = 2

    def fault(self, key: str, attempt: int) -> Fault | None:
        if attempt > self.max_in_a_row or not self.kinds:
            return None
        digest = hashlib.sha256(f"{self.seed}\0{key}\0{attempt}".encode()).digest()
        rng = random.Random(digest)
        return rng.choice(self.kinds) if rng.random() < self.rate else None


@dataclass
class FaultStats:
    """What the server saw and did. `history[key]` holds the outcome of each attempt: a fault's
    name, or "ok" for a clean answer."""

    requests: int = 0
    answered: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    history: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "answered": self.answered,
                "injected": dict(self.injected), "history": self.history}


# upstreams ------------------------------------------------------------------------------------

Upstream = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class UpstreamStatus(Exception):
    """An upstream's non-200 answer, passed through to the client as it is."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status, self.body = status, body


@dataclass(frozen=True)
class CannedAnswer:
    """One deterministic answer: text, contexts as (doc id, text) in rank order, tool calls as
    (name, arguments)."""

    text: str
    contexts: tuple[tuple[str, str], ...] = ()
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    abstained: bool = False


class CannedUpstream:
    """Answers each question from a table; an unknown question gets an echo, never an error."""

    def __init__(self, answers: Mapping[str, CannedAnswer] | None = None,
                 delay_s: float = 0.0) -> None:
        self.answers = dict(answers or {})
        self.delay_s = delay_s

    @classmethod
    def from_cases(cls, cases: Iterable[GoldenCase], delay_s: float = 0.0) -> CannedUpstream:
        """A good-but-imperfect system: each case's gold answer and relevant documents, with a
        distractor document ranked second, and the expected tool calls with their first
        allowed values. Scores are high, not all perfect, and the same on every call."""
        answers: dict[str, CannedAnswer] = {}
        for case in cases:
            key = case.messages()[-1].content
            docs = sorted(case.relevant_doc_ids)
            contexts = [(doc, f"Text of {doc}.") for doc in docs]
            contexts.insert(min(1, len(contexts)), (f"distractor-{case.id}", "Unrelated text."))
            gold = case.answers[0] if case.answers else case.reference_answer or ""
            calls = tuple(
                (call.name, {name: values[0] for name, values in call.arguments.items()
                             if values and values[0] != ""})
                for call in case.expected_tool_calls or ())
            abstained = case.is_impossible
            text = "I cannot answer that from the available documents." if abstained else gold
            answers[key] = CannedAnswer(text, tuple(contexts), calls, abstained)
        return cls(answers, delay_s)

    async def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        question = question_of(body)
        answer = self.answers.get(question) or CannedAnswer(f"echo: {question}")
        return completion_body(str(body.get("model", "canned")), answer)


class AsgiUpstream:
    """Forwards each request (as non-streaming) to an OpenAI-compatible ASGI app in process."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._client: Any = None

    async def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        if self._client is None:  # created in the server's own event loop
            self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self._app),
                                             base_url="http://upstream", timeout=60)
        response = await self._client.post("/v1/chat/completions", json={**body, "stream": False})
        data: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise UpstreamStatus(response.status_code, data)
        return data

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def question_of(body: Mapping[str, Any]) -> str:
    """The text of the last user message: the key faults are planned by."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def completion_body(model: str, answer: CannedAnswer) -> dict[str, Any]:
    """A `chat.completion` with the `truthguard` extra field `rag serve` also returns."""
    key = hashlib.sha256(f"{model}\0{answer.text}".encode()).hexdigest()[:24]
    calls = [{"id": f"call_{i}_{key[:8]}", "type": "function",
              "function": {"name": name, "arguments": json.dumps(arguments, sort_keys=True)}}
             for i, (name, arguments) in enumerate(answer.tool_calls)]
    message: dict[str, Any] = {"role": "assistant", "refusal": None,
                               "content": answer.text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    contexts = [{"chunk_id": f"{doc}#0", "doc_id": doc, "title": "", "text": text,
                 "score": round(1.0 / rank, 6), "rank": rank}
                for rank, (doc, text) in enumerate(answer.contexts, start=1)]
    prompt_tokens = 20 + sum(len(t.split()) for _, t in answer.contexts)
    completion_tokens = max(1, len(answer.text.split()))
    return {
        "id": f"chatcmpl-{key}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "truthguard": {"contexts": contexts, "arms": {},
                       "cited_chunk_ids": [c["chunk_id"] for c in contexts[:1]],
                       "abstained": answer.abstained},
    }


def stream_chunks(body: Mapping[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The `chat.completion.chunk` objects that stream the same answer as `body`."""
    head = {k: body[k] for k in ("id", "created", "model", "system_fingerprint") if k in body}
    head["object"] = "chat.completion.chunk"
    choice = body["choices"][0]
    message = choice["message"]
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                     "finish_reason": finish}], **extra}

    out = [chunk({"role": "assistant", "content": ""})]
    text = message.get("content") or ""
    out += [chunk({"content": text[i:i + 16]}) for i in range(0, len(text), 16)]
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        out.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                          "function": {"name": function["name"],
                                                       "arguments": ""}}]}))
        arguments = function["arguments"]
        out += [chunk({"tool_calls": [{"index": index,
                                       "function": {"arguments": arguments[i:i + 8]}}]})
                for i in range(0, len(arguments), 8)]
    final = chunk({}, choice.get("finish_reason") or "stop")
    if "truthguard" in body:
        final["truthguard"] = body["truthguard"]
    out.append(final)
    if include_usage:
        out.append({**head, "choices": [], "usage": body.get("usage")})
    return out


# the server -----------------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FaultServer:
    """The server. `await start()` in a running loop (or use `running_in_thread`), then point
    an OpenAI client at `base_url`; `stats` counts what it injected."""

    def __init__(
        self,
        upstream: Upstream | None = None,
        *,
        plan: FaultPlan | None = None,
        schedule: FaultSchedule | None = None,
        retry_after_s: float = 1.0,
        slow_s: float = 30.0,
        models: Sequence[str] = ("canned",),
    ) -> None:
        self.upstream: Upstream = upstream or CannedUpstream()
        self.plan = plan or FaultPlan()
        self.schedule = schedule
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.models = list(models)
        self.faults_enabled = True
        self.stats = FaultStats()
        self._lock = threading.Lock()
        self._attempts: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.base_url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0: a free port); returns the base URL, ending in `/v1`."""
        self._server = await asyncio.start_server(self._connection, host, port, limit=2**20)
        bound = self._server.sockets[0].getsockname()
        self.base_url = f"http://{bound[0]}:{bound[1]}/v1"
        return self.base_url

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        closer = getattr(self.upstream, "aclose", None)
        if closer is not None:
            await closer()

    def reset(self) -> None:
        """Forget attempts and counters (the plan and schedule stay)."""
        with self._lock:
            self.stats = FaultStats()
            self._attempts.clear()

    def snapshot(self) -> FaultStats:
        """A consistent copy of the counters, safe to read from another thread."""
        with self._lock:
            return FaultStats(self.stats.requests, self.stats.answered,
                              Counter(self.stats.injected),
                              {k: list(v) for k, v in self.stats.history.items()})

    # connection handling ----------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except _BadRequest as exc:
                    await _send(writer, exc.status, _error_body(str(exc), "invalid_request_error"),
                                keep_alive=False)
                    return
                if request is None:
                    return
                if not await self._dispatch(request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return  # the client went away: normal after its timeout
        except asyncio.CancelledError:
            return  # the server is closing; asyncio's stream callback would log it as an error
        finally:
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _dispatch(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        keep = request.headers.get("connection", "").lower() != "close"
        if request.path == "/stats" and request.method == "GET":
            return await _send(writer, 200, _json(self.snapshot().to_dict()), keep_alive=keep)
        if request.path.rstrip("/") == "/v1/models" and request.method == "GET":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fault-server"}
                    for m in self.models]
            return await _send(writer, 200, _json({"object": "list", "data": data}),
                               keep_alive=keep)
        if request.path.rstrip("/") != "/v1/chat/completions":
            return await _send(writer, 404, _error_body("not found", "invalid_request_error"),
                               keep_alive=keep)
        if request.method != "POST":
            return await _send(writer, 405, _error_body("use POST", "invalid_request_error"),
                               keep_alive=keep)
        try:
            body = json.loads(request.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return await _send(writer, 400, _error_body("The request body is not a JSON object.",
                                                        "invalid_request_error"), keep_alive=keep)
        fault = self._choose(question_of(body), request.headers.get("x-fault", ""))
        return await self._answer(body, fault, writer, keep)

    def _choose(self, key: str, forced: str) -> Fault | None:
        with self._lock:
            self.stats.requests += 1
            self._attempts[key] += 1
            attempt = self._attempts[key]
            fault: Fault | None = None
            if forced and forced.lower() != "none":
                try:
                    fault = Fault(forced.lower())
                except ValueError:
                    fault = None
            elif not forced and self.faults_enabled:
                fault = self.plan.fault(key, attempt)
                if fault is None and self.schedule is not None:
                    fault = self.schedule.fault(key, attempt)
            outcome = fault.value if fault is not None else "ok"
            self.stats.history.setdefault(key, []).append(outcome)
            if fault is not None:
                self.stats.injected[fault.value] += 1
            return fault

    async def _answer(self, body: dict[str, Any], fault: Fault | None,
                      writer: asyncio.StreamWriter, keep: bool) -> bool:
        hint = {"Retry-After": f"{self.retry_after_s:g}"}
        if fault is Fault.RATE_LIMIT:
            return await _send(writer, 429, _error_body("Rate limit reached.", "rate_limit"),
                               hint, keep_alive=keep)
        if fault is Fault.RATE_LIMIT_NO_HINT:
            return await _send(writer, 429, _error_body("Rate limit reached.", "rate_limit"),
                               keep_alive=keep)
        if fault is Fault.SERVER_ERROR:
            return await _send(writer, 500, _error_body("The server had an error.",
                                                        "server_error"), keep_alive=keep)
        if fault is Fault.UNAVAILABLE:
            return await _send(writer, 503, _error_body("The engine is overloaded.",
                                                        "server_error"), keep_alive=keep)
        if fault is Fault.DISCONNECT:
            return False
        streaming = body.get("stream") is True
        if fault is Fault.INVALID_JSON:
            if streaming:
                return await _send_stream(writer, [], cut=False, keep_alive=keep,
                                          raw=[b'data: {"id": "chatcmpl-broken", "choi\n\n'])
            return await _send(writer, 200, b'{"id": "chatcmpl-broken", "choices": [{"ind',
                               keep_alive=keep)
        if fault is Fault.SLOW:
            await asyncio.sleep(self.slow_s)
        try:
            completion = await self.upstream(body)
        except UpstreamStatus as exc:
            return await _send(writer, exc.status, _json(exc.body), keep_alive=keep)
        if fault is Fault.BAD_TOOL_ARGUMENTS:
            completion = _with_broken_tool_call(completion)
        if fault is Fault.TRUNCATED_BODY or (fault is Fault.TRUNCATED_STREAM and not streaming):
            payload = _json(completion)
            await _write_head(writer, 200, {"Content-Type": "application/json",
                                            "Content-Length": str(len(payload))}, keep_alive=True)
            writer.write(payload[: len(payload) // 2])
            await writer.drain()
            return False
        if streaming:
            options = body.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            chunks = stream_chunks(completion, usage)
            if fault is Fault.TRUNCATED_STREAM:
                return await _send_stream(writer, chunks[: max(1, len(chunks) // 2)], cut=True)
            with self._lock:
                self.stats.answered += 1
            return await _send_stream(writer, chunks, cut=False, keep_alive=keep)
        with self._lock:
            self.stats.answered += 1
        return await _send(writer, 200, _json(completion), keep_alive=keep)


def _with_broken_tool_call(completion: dict[str, Any]) -> dict[str, Any]:
    broken: dict[str, Any] = json.loads(json.dumps(completion))
    message = broken["choices"][0]["message"]
    message["tool_calls"] = [{"id": "call_broken", "type": "function",
                              "function": {"name": "lookup", "arguments": '{"query": "unterm'}}]
    message["content"] = None
    broken["choices"][0]["finish_reason"] = "tool_calls"
    return broken


# HTTP/1.1, just enough ------------------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    except ValueError:
        raise _BadRequest(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        raise _BadRequest(400, "too many headers")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise _BadRequest(413, "request body too large")
        body = await reader.readexactly(length) if length else b""
    return _Request(method.upper(), target.split("?", 1)[0], headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size_total = 0
    while True:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        except ValueError:
            raise _BadRequest(400, "bad chunk size") from None
        if size == 0:
            await reader.readline()  # the blank line after the last chunk (no trailers sent)
            return b"".join(parts)
        size_total += size
        if size_total > MAX_BODY_BYTES:
            raise _BadRequest(413, "request body too large")
        parts.append(await reader.readexactly(size))
        await reader.readline()


async def _write_head(writer: asyncio.StreamWriter, status: int, headers: Mapping[str, str],
                      *, keep_alive: bool) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
             f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}",
             "Server: truthguard-fault-server",
             f"Connection: {'keep-alive' if keep_alive else 'close'}",
             *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _send(writer: asyncio.StreamWriter, status: int, payload: bytes,
                headers: Mapping[str, str] | None = None, *, keep_alive: bool = True) -> bool:
    all_headers = {"Content-Type": "application/json", "Content-Length": str(len(payload)),
                   **(headers or {})}
    await _write_head(writer, status, all_headers, keep_alive=keep_alive)
    writer.write(payload)
    await writer.drain()
    return keep_alive


async def _send_stream(writer: asyncio.StreamWriter, chunks: Sequence[dict[str, Any]], *,
                       cut: bool, keep_alive: bool = True, raw: Sequence[bytes] = ()) -> bool:
    """Server-sent events, chunked; with `cut`, the socket closes before the stream ends.
    `raw` events are sent as they are, after `chunks`."""
    await _write_head(writer, 200, {"Content-Type": "text/event-stream",
                                    "Cache-Control": "no-cache",
                                    "Transfer-Encoding": "chunked"}, keep_alive=keep_alive)
    events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks]
    events += raw
    if not cut:
        events.append(b"data: [DONE]\n\n")
    for event in events:
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
    if cut:
        return False
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return keep_alive


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _error_body(message: str, kind: str) -> bytes:
    return _json({"error": {"message": message, "type": kind, "param": None, "code": None}})


# running it -----------------------------------------------------------------------------------


@contextlib.contextmanager
def running_in_thread(server: FaultServer, host: str = "127.0.0.1",
                      port: int = 0) -> Iterator[str]:
    """Serve `server` from its own event loop in a daemon thread; yields the base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome["url"] = loop.run_until_complete(server.start(host, port))
        except BaseException as exc:  # reported to the caller below
            outcome["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.aclose())
        loop.close()

    thread = threading.Thread(target=run, name="fault-server", daemon=True)
    thread.start()
    if not ready.wait(10) or "error" in outcome:
        raise RuntimeError(f"the fault server did not start: {outcome.get('error')!r}")
    try:
        yield str(outcome["url"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
