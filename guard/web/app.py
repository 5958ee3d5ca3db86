"""`guard serve`: the live dashboard, its JSON API and its event streams (Starlette).

Endpoints (same origin only; errors are `{"error": {"status": int, "message": str}}`)
-----------------------------------------------------------------------------------
`GET /`                          the dashboard page (static files under `/static/`)
`POST /api/session`              `Authorization: Bearer <token>` -> HttpOnly session cookie
`GET /api/session`               who the caller is: `{"tenants": [...], "via": ...}`
`DELETE /api/session`            sign out (drops the server-side session)
`GET /api/experiments`           spec names in the experiments folder the caller may run
`POST /api/runs`                 `{"spec": "demo" | "sub/name.toml", "limit"?, "tags"?}` ->
                                 202 `{"run_id"}`; runs as a task in this server's event loop
                                 (429 while `max_active_runs` runs are in progress)
`GET /api/runs`                  visible runs, newest first
`GET /api/runs/{id}`             means with CIs per variant and metric, status counts, gates,
                                 the last progress event
`GET /api/runs/{id}/cases`       `?status=error,timeout&tag=&variant=&metric=&min=&max=`
                                 `&limit=&offset=`; failures first, then worst on `metric`
`POST /api/runs/{id}/cancel`     202, or 409 unless this server started it and it is running
`GET /api/runs/{id}/events`      Server-Sent Events tailing the run's journal (see `_events`)

Every endpoint but `/` and `/static/` needs a valid token or session: 401 otherwise. A run whose
tenants are not all the caller's answers 404, exactly like a run that does not exist.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guard.bootstrap import rag_config_for
from guard.domain import CaseResult, CaseStatus
from guard.engine import RunEngine
from guard.gates import higher_is_better
from guard.journal import read_new_lines
from guard.runs import RunInfo, RunStore, is_being_written
from guard.service import GuardService, load_spec_dataset
from guard.spec import load_spec
from guard.web.auth import (
    SESSION_COOKIE,
    Authenticator,
    Principal,
    SessionStore,
    TokenRegistry,
    cross_site,
)
from guard.web.reader import RunReader
from guard.web.settings import WebSettings
from rag.errors import InputError, TruthGuardError
from rag.logging import bind_correlation_id, configure_logging, new_correlation_id

logger = logging.getLogger("guard.web")

STATIC_DIR = Path(__file__).parent / "static"
_STATUS_ORDER = {CaseStatus.ERROR: 0, CaseStatus.TIMEOUT: 1, CaseStatus.SKIPPED: 2,
                 CaseStatus.SCORED: 3}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": {"status": self.status, "message": self.message}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


_NOT_FOUND = "run not found"
_OPEN = ("running", "interrupted")  # statuses of a run that has not ended
_BATCH = 500  # SSE messages per write, at most


# journal tailing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    events: list[tuple[int, str, bytes]]  # id, type, the encoded SSE message
    offset: int  # just past the last complete line read
    writer_active: bool


def _read_journal(path: Path, offset: int, last_id: int) -> _Read:
    """The complete lines from `offset` on, as SSE messages (ids <= `last_id` skipped).
    Pure: a caller cancelled while this runs in a thread loses nothing."""
    rows, end = read_new_lines(path, offset)
    events = []
    for row in rows:
        if row["id"] <= last_id:
            continue
        last_id = row["id"]
        data = json.dumps(row["data"], separators=(",", ":"), ensure_ascii=False)
        message = ServerSentEvent(data, event=row["type"], id=str(last_id)).encode()
        events.append((last_id, row["type"], message))
    # Checked after reading: a run_finished read above is final only if no writer is back.
    return _Read(events, end, is_being_written(path))


class JournalFeed:
    """One run's journal, read incrementally and shared by every stream of that run.

    Each event is encoded once and kept while any stream of the run is open. The stream is
    finished when the last event is run_finished and no process holds the journal (a resume
    reopens it).
    """

    def __init__(self, path: Path, poll_s: float) -> None:
        self.path = path
        self.ids: list[int] = []
        self.chunks: list[bytes] = []
        self.finished = False
        self.subscribers = 0
        self._poll_s = poll_s
        self._offset = 0
        self._last_type = ""
        self._last_read = -1e9
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._last_read < self._poll_s / 2:
                return  # another stream of this run just looked
            read = await asyncio.to_thread(_read_journal, self.path, self._offset,
                                           self.ids[-1] if self.ids else 0)
            # No await from here on: the read is applied whole or, if cancelled above, not at all.
            self._last_read = time.monotonic()
            self._offset = read.offset
            for event_id, type_, chunk in read.events:
                self.ids.append(event_id)
                self.chunks.append(chunk)
                self._last_type = type_
            self.finished = self._last_type == "run_finished" and not read.writer_active


class FeedHub:
    """The open journal feeds, one per run being streamed, dropped with their last stream."""

    def __init__(self, poll_s: float) -> None:
        self._poll_s = poll_s
        self._feeds: dict[str, JournalFeed] = {}

    def acquire(self, run_id: str, path: Path) -> JournalFeed:
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = JournalFeed(path, self._poll_s)
        feed.subscribers += 1
        return feed

    def release(self, run_id: str) -> None:
        feed = self._feeds.get(run_id)
        if feed is not None:
            feed.subscribers -= 1
            if feed.subscribers <= 0:
                del self._feeds[run_id]

    async def stream(self, run_id: str, path: Path, after: int) -> AsyncIterator[bytes]:
        """Every event with id > `after`, then new ones as they are journaled; ends once the
        run has finished and everything was sent."""
        feed = self.acquire(run_id, path)
        try:
            while True:
                await feed.refresh()
                index = bisect.bisect_right(feed.ids, after)
                # Everything new in one write: at hundreds of events a second and a hundred
                # streams, one send per event would keep the event loop busy on its own.
                while index < len(feed.ids):
                    batch = feed.chunks[index:index + _BATCH]
                    index += len(batch)
                    after = feed.ids[index - 1]
                    yield b"".join(batch)
                if feed.finished and (not feed.ids or after >= feed.ids[-1]):
                    return
                await asyncio.sleep(self._poll_s)
        finally:
            self.release(run_id)


# runs started here -------------------------------------------------------------------------


@dataclass
class _Active:
    finished: asyncio.Event  # set on the server's loop once the run's thread is done
    engine: RunEngine | None = None
    loop: asyncio.AbstractEventLoop | None = None  # the run's own loop
    task: asyncio.Task[None] | None = None  # the run, in its own loop
    cancel_requested: bool = False


class Runner:
    """Runs this server started, each in a thread with its own event loop, so that the run's
    work between awaits (scoring, journaling, the final summary) never holds up a request;
    cancellable while they run."""

    def __init__(self, service: GuardService, cancel_grace_s: float) -> None:
        self.service = service
        self._grace = cancel_grace_s
        self._active: dict[str, _Active] = {}
        self._started: set[str] = set()

    def start(self, run_id: str) -> None:
        server_loop = asyncio.get_running_loop()
        entry = _Active(asyncio.Event())
        self._active[run_id] = entry
        self._started.add(run_id)

        def main() -> None:
            try:
                asyncio.run(self._execute(run_id, entry))
            finally:
                server_loop.call_soon_threadsafe(self._ended, run_id, entry)

        threading.Thread(target=main, name=f"run {run_id}", daemon=True).start()

    async def _execute(self, run_id: str, entry: _Active) -> None:
        entry.loop, entry.task = asyncio.get_running_loop(), asyncio.current_task()

        def ready(engine: RunEngine) -> None:
            entry.engine = engine
            if entry.cancel_requested:
                engine.cancel()

        started = time.monotonic()
        try:
            outcome = await self.service.execute(run_id, engine_ready=ready)
            logger.info("run ended", extra={"run_id": run_id, "status": outcome.status,
                                            "passed": outcome.passed,
                                            "duration_s": round(time.monotonic() - started, 3)})
        except asyncio.CancelledError:
            logger.warning("run stopped before it ended; resume with guard run --resume",
                           extra={"run_id": run_id})
        except Exception:  # the server outlives a failing run; the journal keeps what ended
            logger.exception("run failed", extra={"run_id": run_id})

    def _ended(self, run_id: str, entry: _Active) -> None:
        self._active.pop(run_id, None)
        entry.finished.set()

    def started_here(self, run_id: str) -> bool:
        return run_id in self._started

    def running(self, run_id: str) -> bool:
        return run_id in self._active

    @property
    def active(self) -> int:
        return len(self._active)

    def cancel(self, run_id: str) -> bool:
        entry = self._active.get(run_id)
        if entry is None:
            return False
        entry.cancel_requested = True  # before the loop check: `ready` reads it otherwise
        self._in_run(entry, lambda: entry.engine.cancel() if entry.engine else None)
        # Cases in flight may still finish; past the grace period the task stops for good and
        # the run is left interrupted (resumable), with every finished case journaled.
        asyncio.get_running_loop().call_later(self._grace, self._force_stop, entry)
        return True

    def _force_stop(self, entry: _Active) -> None:
        self._in_run(entry, lambda: entry.task.cancel() if entry.task else None)

    @staticmethod
    def _in_run(entry: _Active, action: Callable[[], object]) -> None:
        """Call `action` on the run's own loop, if it still runs."""
        if entry.loop is not None and not entry.finished.is_set():
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                entry.loop.call_soon_threadsafe(action)

    async def aclose(self) -> None:
        entries = list(self._active.values())
        for run_id in list(self._active):
            self.cancel(run_id)
        waits = [asyncio.create_task(e.finished.wait()) for e in entries]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self._grace)
            for entry in entries:
                self._force_stop(entry)
            if pending:
                await asyncio.wait(pending, timeout=self._grace)
            for wait in waits:
                wait.cancel()


# reading runs -------------------------------------------------------------------------------


def _info_json(info: RunInfo, runner: Runner) -> dict[str, Any]:
    out = asdict(info)
    out["started_here"] = runner.started_here(info.run_id)
    # A run ended once its journal says so, even while its task is still wrapping up.
    out["cancellable"] = runner.running(info.run_id) and info.status in _OPEN
    if out["cancellable"]:
        out["status"] = "running"  # "interrupted" while setting up: no journal open yet
    return out


@dataclass(frozen=True)
class CaseFilter:
    statuses: frozenset[str] = frozenset()
    tag: str | None = None
    variant: str | None = None
    metric: str | None = None
    min: float | None = None
    max: float | None = None

    def keep(self, case: CaseResult) -> bool:
        if self.statuses and case.status.value not in self.statuses:
            return False
        if self.tag is not None and self.tag not in case.tags:
            return False
        if self.variant is not None and case.variant != self.variant:
            return False
        if self.metric is not None and (self.min is not None or self.max is not None):
            value = case.metrics.get(self.metric)
            if value is None:
                return False
            if self.min is not None and value < self.min:
                return False
            if self.max is not None and value > self.max:
                return False
        return True

    def order(self, case: CaseResult) -> tuple[Any, ...]:
        """Failures first (error, timeout, skipped), then the worst on `metric`, if given."""
        worst: tuple[int, float] = (0, 0.0)
        if self.metric is not None:
            value = case.metrics.get(self.metric)
            if value is None:
                worst = (1, 0.0)
            else:
                worst = (0, value if higher_is_better(self.metric) else -value)
        return (_STATUS_ORDER[case.status], worst, case.variant, case.case_id, case.repeat)


def _case_page(run_id: str, cases: list[CaseResult], wanted: CaseFilter, limit: int,
               offset: int) -> dict[str, Any]:
    kept = sorted((c for c in cases if wanted.keep(c)), key=wanted.order)
    return {
        "run_id": run_id,
        "total": len(kept),
        "offset": offset,
        "limit": limit,
        "cases": [c.to_dict() for c in kept[offset:offset + limit]],
        "facets": {
            "variants": sorted({c.variant for c in cases}),
            "tags": sorted({t for c in cases for t in c.tags}),
            "metrics": sorted({m for c in cases for m in c.metrics}),
            "statuses": [s.value for s in CaseStatus],
        },
    }


def _case_filter(request: Request) -> CaseFilter:
    params = request.query_params

    def number(name: str) -> float | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        try:
            return float(raw)
        except ValueError:
            raise ApiError(400, f"{name} must be a number") from None

    statuses = frozenset(s for s in ",".join(params.getlist("status")).split(",") if s)
    unknown = statuses - {s.value for s in CaseStatus}
    if unknown:
        raise ApiError(400, "status must be among: " + ", ".join(s.value for s in CaseStatus))
    found = CaseFilter(statuses, params.get("tag") or None, params.get("variant") or None,
                       params.get("metric") or None, number("min"), number("max"))
    if found.metric is None and (found.min is not None or found.max is not None):
        raise ApiError(400, "min and max need metric")
    return found


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}")
    return int(raw)


# starting runs ------------------------------------------------------------------------------


class StartRun(BaseModel):
    """The body of `POST /api/runs`."""

    model_config = ConfigDict(extra="forbid")

    spec: str = Field(min_length=1, max_length=200)
    limit: int | None = Field(None, ge=1, le=1_000_000)
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]] = Field(
        default_factory=list, max_length=20)


def resolve_spec(experiments_dir: Path, name: str) -> Path | None:
    """The spec file `name` names inside the experiments folder (`demo`, `demo.toml`,
    `team/nightly.toml`), or None: nothing outside the folder is ever opened."""
    root = experiments_dir.resolve()
    try:
        path = (root / (name if name.endswith(".toml") else f"{name}.toml")).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def spec_tenants(path: Path) -> tuple[str, ...]:
    spec = load_spec(path)
    return load_spec_dataset(spec, rag_config_for(spec)).tenants()


# the app ------------------------------------------------------------------------------------


class DashboardApi:
    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        service = GuardService(RunStore(settings.runs_dir), settings.cache_path)
        self.reader = RunReader(service)
        self.runner = Runner(service, settings.cancel_grace_s)
        self.hub = FeedHub(settings.poll_interval_s)
        self.auth = Authenticator(TokenRegistry(settings.tokens),
                                  SessionStore(settings.session_ttl_s))

    # access

    def principal(self, request: Request) -> Principal:
        principal = self.auth.resolve(request)
        if principal is None:
            logger.info("unauthenticated request", extra={"path": request.url.path})
            raise ApiError(401, "a valid API token (Authorization: Bearer) or session is needed",
                           {"WWW-Authenticate": 'Bearer realm="truthguard"'})
        if principal.via == "session" and cross_site(request, request.method):
            raise ApiError(403, "cross-origin request refused")
        return principal

    async def visible_run(self, request: Request) -> tuple[Principal, str]:
        principal = self.principal(request)
        run_id = request.path_params["run_id"]
        tenants = await asyncio.to_thread(self.reader.tenants, run_id)
        if tenants is None or not principal.can_see(tenants):
            raise ApiError(404, _NOT_FOUND)
        return principal, run_id

    # session

    async def create_session(self, request: Request) -> Response:
        principal = self.auth.bearer(request)
        if principal is None:
            raise ApiError(401, "send a valid API token as Authorization: Bearer <token>",
                           {"WWW-Authenticate": 'Bearer realm="truthguard"'})
        session_id = self.auth.sessions.create(principal.tenants)
        logger.info("session created", extra={"tenants": sorted(principal.tenants)})
        response = JSONResponse({"tenants": sorted(principal.tenants)})
        response.set_cookie(SESSION_COOKIE, session_id, max_age=int(self.settings.session_ttl_s),
                            path="/", secure=self.settings.secure_cookies, httponly=True,
                            samesite="strict")
        return response

    async def get_session(self, request: Request) -> Response:
        principal = self.principal(request)
        return JSONResponse({"tenants": sorted(principal.tenants), "via": principal.via,
                             "demo_spec": self.settings.demo_spec})

    async def delete_session(self, request: Request) -> Response:
        principal = self.auth.resolve(request)
        if principal is not None and principal.session_id is not None:
            self.principal(request)  # refuses a cross-origin sign-out
            self.auth.sessions.drop(principal.session_id)
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", secure=self.settings.secure_cookies,
                               httponly=True, samesite="strict")
        return response

    # experiments and runs

    async def list_experiments(self, request: Request) -> Response:
        principal = self.principal(request)
        root = self.settings.experiments_dir

        def visible() -> list[str]:
            names = []
            for path in sorted(root.rglob("*.toml")) if root.is_dir() else []:
                try:
                    tenants = spec_tenants(path)
                except TruthGuardError:
                    continue  # a broken spec is reported when someone starts it
                if principal.can_see(tenants):
                    names.append(path.relative_to(root).with_suffix("").as_posix())
            return names

        names = await asyncio.to_thread(visible)
        return JSONResponse({"experiments": names, "demo": self.settings.demo_spec})

    async def start_run(self, request: Request) -> Response:
        principal = self.principal(request)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ApiError(415, "send a JSON body (Content-Type: application/json)")
        try:
            body = StartRun.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            raise ApiError(400, f"field '{field}': {first['msg']}") from None
        if self.runner.active >= self.settings.max_active_runs:
            raise ApiError(429, f"{self.runner.active} runs are in progress on this server; "
                           "start another when one has ended", {"Retry-After": "10"})
        path = resolve_spec(self.settings.experiments_dir, body.spec)
        missing = ApiError(404, "no such experiment in the server's experiments folder")
        if path is None:
            raise missing

        def prepare() -> str:
            spec = load_spec(path)
            if body.limit:
                spec = spec.model_copy(update={"limit": body.limit})
            tenants = load_spec_dataset(spec, rag_config_for(spec)).tenants()
            if not principal.can_see(tenants):
                raise missing
            return self.reader.service.prepare(spec, body.tags)

        run_id = await asyncio.to_thread(prepare)
        self.runner.start(run_id)
        logger.info("run started", extra={"run_id": run_id, "spec": body.spec})
        return JSONResponse({"run_id": run_id, "status": "running"}, status_code=202,
                            headers={"Location": f"/api/runs/{run_id}"})

    async def list_runs(self, request: Request) -> Response:
        principal = self.principal(request)
        infos = await asyncio.to_thread(self.reader.visible, principal)
        return JSONResponse({"runs": [_info_json(i, self.runner) for i in infos]})

    async def get_run(self, request: Request) -> Response:
        _, run_id = await self.visible_run(request)
        info = await asyncio.to_thread(self.reader.info, run_id)
        summary = await asyncio.to_thread(self.reader.summary, run_id)
        return JSONResponse({"run": _info_json(info, self.runner), **summary})

    async def get_cases(self, request: Request) -> Response:
        _, run_id = await self.visible_run(request)
        wanted = _case_filter(request)
        limit = _int_param(request, "limit", 100, 1, 1000)
        offset = _int_param(request, "offset", 0, 0, 10_000_000)

        def select() -> dict[str, Any]:
            return self.reader.derived(
                run_id, ("cases", wanted, limit, offset),
                lambda cases: _case_page(run_id, cases, wanted, limit, offset))

        return JSONResponse(await asyncio.to_thread(select))

    async def cancel_run(self, request: Request) -> Response:
        _, run_id = await self.visible_run(request)
        if not self.runner.started_here(run_id):
            raise ApiError(409, "this server did not start the run, so it cannot cancel it")
        info = await asyncio.to_thread(self.reader.info, run_id)
        if info.status not in _OPEN or not self.runner.cancel(run_id):
            raise ApiError(409, "the run is not running")
        logger.info("run cancel requested", extra={"run_id": run_id})
        return JSONResponse({"run_id": run_id, "status": "cancelling"}, status_code=202)

    async def events(self, request: Request) -> Response:
        """The run's journal as Server-Sent Events: `id` the event id, `event` its type, `data`
        its data as JSON. `Last-Event-ID` resumes after that id: nothing lost, nothing
        repeated. New lines are picked up every `poll_interval_s`, whichever process writes
        the journal; the stream ends once the run has finished and everything was sent."""
        _, run_id = await self.visible_run(request)
        raw = request.headers.get("last-event-id", "").strip()
        if raw and (not raw.isdigit() or len(raw) > 18):
            raise ApiError(400, "Last-Event-ID must be an event id (a non-negative integer)")
        after = int(raw) if raw else 0
        path = self.reader.store.journal_path(run_id)
        return EventSourceResponse(self.hub.stream(run_id, path, after),
                                   ping=self.settings.ping_interval_s, send_timeout=30)

    # pages

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


class RequestContext:
    """Per HTTP request: a correlation id (the caller's `X-Request-ID` when it is a plain
    token, else a fresh one) bound for every log line and returned; security headers; one log
    line when the response ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        plain = 0 < len(incoming) <= 128 and set(incoming) <= _REQUEST_ID_CHARS
        request_id = incoming if plain else new_correlation_id()
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                for name, value in _SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        with bind_correlation_id(request_id):
            try:
                await self.app(scope, receive, send_with_headers)
            finally:
                logger.info("http request", extra={
                    "method": scope["method"], "path": scope["path"], "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3)})


def _handle(handler: Callable[[Request], Awaitable[Response]]) -> Callable[
        [Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except InputError as exc:
            return ApiError(400, str(exc)).response()
        except TruthGuardError:
            logger.exception("request failed")
            return ApiError(500, "the server could not read or write its data").response()

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ApiError(exc.status_code, str(exc.detail), exc.headers).response()


def create_app(settings: WebSettings) -> Starlette:
    """The dashboard app: API, event streams and static page, over `settings.data_dir`."""
    api = DashboardApi(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await api.runner.aclose()
        api.reader.close()

    routes = [
        Route("/", api.index, methods=["GET"]),
        Route("/api/session", _handle(api.create_session), methods=["POST"]),
        Route("/api/session", _handle(api.get_session), methods=["GET"]),
        Route("/api/session", _handle(api.delete_session), methods=["DELETE"]),
        Route("/api/experiments", _handle(api.list_experiments), methods=["GET"]),
        Route("/api/runs", _handle(api.list_runs), methods=["GET"]),
        Route("/api/runs", _handle(api.start_run), methods=["POST"]),
        Route("/api/runs/{run_id}", _handle(api.get_run), methods=["GET"]),
        Route("/api/runs/{run_id}/cases", _handle(api.get_cases), methods=["GET"]),
        Route("/api/runs/{run_id}/cancel", _handle(api.cancel_run), methods=["POST"]),
        Route("/api/runs/{run_id}/events", _handle(api.events), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.add_middleware(RequestContext)
    app.state.api = api
    return app


def serve(settings: WebSettings, log_level: str = "INFO") -> None:
    """Run the dashboard with uvicorn until interrupted; JSON logs on stderr."""
    configure_logging(log_level)
    if settings.host not in ("127.0.0.1", "::1", "localhost"):
        logger.warning("listening beyond loopback: put TLS in front, tokens and cookies "
                       "travel in clear text otherwise", extra={"host": settings.host})
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_config=None, access_log=False)
    logger.info("dashboard starting", extra={
        "url": f"http://{settings.host}:{settings.port}/", "data_dir": str(settings.data_dir),
        "experiments_dir": str(settings.experiments_dir), "tokens": len(settings.tokens)})
    asyncio.run(uvicorn.Server(config).serve())
