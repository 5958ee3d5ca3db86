"""Fixtures for the dashboard tests, loaded with `pytest_plugins = ["conftest_web"]`.

One real uvicorn per session on a loopback port-0 socket, serving `guard.web.app.create_app`
over a temporary data folder; a fake HTTP system under test (a second uvicorn) that answers
slowly enough for runs to be watched live, fails "laptop" questions (error cases) and answers
"VPN" questions only on the second try (retry events); tiny experiment specs; three tokens.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from demo_spec import demo_rag_tables
from httpx_sse import ServerSentEvent, connect_sse
from loopback import serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from guard.domain import Event
from guard.journal import read_events
from guard.web.app import create_app
from guard.web.settings import WebSettings

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "datasets" / "demo"
GUARD = Path(sys.executable).with_name("guard")
# name -> tenants; the token text itself is made per session
TENANT_SETS = {"all": ["hr", "it"], "hr": ["hr"], "it": ["it"]}




def fake_system() -> Starlette:
    """A user's assistant behind the plain HTTP JSON contract of `guard.adapters.http_sut`."""
    attempts: collections.Counter[str] = collections.Counter()
    docs = {"hr": ["annual-leave", "expenses", "remote-work"],
            "it": ["vpn", "password-reset", "mfa"]}

    async def answer(request: Request) -> JSONResponse:
        body = await request.json()
        question = body["messages"][-1]["content"]
        await asyncio.sleep(int(request.path_params["delay_ms"]) / 1000)
        if "laptop" in question.lower():
            return JSONResponse({"detail": "refused"}, status_code=400)
        attempts[question] += 1
        if "vpn" in question.lower() and attempts[question] % 2 == 1:
            return JSONResponse({"detail": "busy"}, status_code=503,
                                headers={"Retry-After": "0"})
        contexts = [{"doc_id": d, "text": f"{d}: text for {question}"}
                    for d in docs.get(body["tenant"], [])]
        return JSONResponse({"answer": f"The answer to: {question}", "contexts": contexts,
                             "tool_calls": [], "usage": {"prompt_tokens": 40,
                                                         "completion_tokens": 8}})

    return Starlette(routes=[Route("/answer/{delay_ms:int}", answer, methods=["POST"])])


def _write_dataset(path: Path, tenants: set[str]) -> None:
    lines = [line for line in (DEMO / "golden.jsonl").read_text().splitlines()
             if line.strip() and json.loads(line)["tenant"] in tenants]
    path.write_text("\n".join(lines) + "\n")


def _http_spec(name: str, dataset: str, sut: str, variants: dict[str, int],
               concurrency: int) -> str:
    out = [f'name = "{name}"', f'dataset = "{dataset}"', f'tools_file = "{DEMO / "tools.json"}"',
           "ingest = false", "", "[run]", f"concurrency = {concurrency}", "max_retries = 2",
           "retry_base_delay_s = 0", "ragas = false", "ks = [1, 3]", ""]
    for variant, delay_ms in variants.items():
        out += ["[[variants]]", f'name = "{variant}"', 'system = "http"',
                f'url = "{sut}/answer/{delay_ms}"', ""]
    out += ["[gates]", '"retrieval.hit@3" = { min = 0.1 }']
    return "\n".join(out) + "\n"


DEMO_SPEC = f"""# The demo for tests: the built-in pipeline, hashing embedder, both tenants.
name = "demo"
dataset = "{DEMO / 'golden.jsonl'}"
tools_file = "{DEMO / 'tools.json'}"
tags = ["demo"]

{demo_rag_tables('../rag-data')}
[run]
concurrency = 2
ks = [1, 3, 5]

[[variants]]
name = "{{mode}}"
k = 3
matrix = {{ mode = ["hybrid", "dense", "lexical"] }}

[gates]
"retrieval.hit@5" = {{ min = 0.8 }}
"""


@dataclass
class Dashboard:
    """The running server, its folders and tokens, and helpers to drive it."""

    url: str
    data_dir: Path
    experiments_dir: Path
    sut_url: str
    tokens: dict[str, str]  # tenant-set name -> token

    def auth(self, who: str = "all") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def client(self, who: str | None = "all", **kwargs: Any) -> httpx.Client:
        headers = self.auth(who) if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def start(self, spec: str, who: str = "all", **body: Any) -> str:
        with self.client(who) as client:
            reply = client.post("/api/runs", json={"spec": spec, **body})
        assert reply.status_code == 202, reply.text
        run_id: str = reply.json()["run_id"]
        return run_id

    def wait(self, run_id: str, who: str = "all", timeout: float = 60) -> dict[str, Any]:
        """Poll until the run is no longer running; return its summary."""
        deadline = time.monotonic() + timeout
        with self.client(who) as client:
            while True:
                summary: dict[str, Any] = client.get(f"/api/runs/{run_id}").json()
                if summary["run"]["status"] != "running" and not summary["run"]["cancellable"]:
                    return summary
                if time.monotonic() > deadline:
                    raise AssertionError(f"run {run_id} still running after {timeout} s")
                time.sleep(0.1)

    def journal_path(self, run_id: str) -> Path:
        return self.data_dir / "runs" / run_id / "journal.jsonl"

    def journal(self, run_id: str) -> list[Event]:
        return list(read_events(self.journal_path(run_id)))

    def finished_in_journal(self, run_id: str) -> bool:
        return any(e.type == "run_finished" for e in self.journal(run_id))

    root = ROOT
    guard_cli = GUARD

    @staticmethod
    def triples(events: list[Any]) -> list[tuple[int, str, Any]]:
        return as_triples(events)

    def stream(self, run_id: str, who: str = "all", last_id: int | None = None,
               limit: int | None = None, timeout: float = 60) -> list[ServerSentEvent]:
        return read_stream(self, run_id, who, last_id, limit, timeout)

    def iter_stream(self, run_id: str, who: str = "all") -> Iterator[ServerSentEvent]:
        """Events as they arrive (pings skipped) until the server closes the stream."""
        with httpx.Client(base_url=self.url, timeout=60) as client, connect_sse(
                client, "GET", f"/api/runs/{run_id}/events", headers=self.auth(who)) as source:
            source.response.raise_for_status()
            for sse in source.iter_sse():
                if sse.data:
                    yield sse


def as_triples(events: list[Any]) -> list[tuple[int, str, Any]]:
    """Journal events or SSE messages as comparable (id, type, data) triples."""
    out = []
    for event in events:
        if isinstance(event, Event):
            out.append((event.id, event.type, event.data))
        else:
            out.append((int(event.id), event.event, json.loads(event.data)))
    return out


def read_stream(
    dashboard: Dashboard, run_id: str, who: str = "all", last_id: int | None = None,
    limit: int | None = None, timeout: float = 60,
) -> list[ServerSentEvent]:
    """Events of the run's stream (keep-alive pings skipped), up to `limit`, or until the
    server closes the stream."""
    headers = dashboard.auth(who)
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    received: list[ServerSentEvent] = []
    with httpx.Client(base_url=dashboard.url, timeout=timeout) as client, connect_sse(
        client, "GET", f"/api/runs/{run_id}/events", headers=headers
    ) as source:
        source.response.raise_for_status()
        for sse in source.iter_sse():
            if not sse.data:
                continue  # a keep-alive ping
            received.append(sse)
            if limit is not None and len(received) >= limit:
                break
    return received


@pytest.fixture
def serve_web_app() -> Iterator[Callable[[ASGIApp], str]]:
    """Start extra ASGI apps on loopback for one test: `base_url = serve_web_app(app)`."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_in_thread(app))


@pytest.fixture(scope="session")
def fake_sut() -> Iterator[str]:
    with serve_in_thread(fake_system(), lifespan="off") as url:
        yield url


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory, fake_sut: str) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("dashboard")
    experiments, data = root / "experiments", root / "data"
    experiments.mkdir()
    for tenants in (["hr"], ["it"], ["hr", "it"]):
        _write_dataset(root / f"golden-{'-'.join(tenants)}.jsonl", set(tenants))
    both, hr, it = (str(root / f"golden-{n}.jsonl") for n in ("hr-it", "hr", "it"))
    specs = {
        "live": _http_spec("live", both, fake_sut, {"fast": 30, "slow": 60}, 2),
        "hr": _http_spec("hr", hr, fake_sut, {"only": 5}, 4),
        "it": _http_spec("it", it, fake_sut, {"only": 5}, 4),
        "mixed": _http_spec("mixed", both, fake_sut, {"a": 5, "b": 10}, 4),
        "slow": _http_spec("slow", hr, fake_sut, {"only": 400}, 1),
        "cli": _http_spec("cli", both, fake_sut, {"only": 40}, 2),
        "demo": DEMO_SPEC,
    }
    for name, text in specs.items():
        (experiments / f"{name}.toml").write_text(text)
    (root / "outside.toml").write_text(specs["hr"].replace('name = "hr"', 'name = "outside"'))
    tokens = {name: f"tg-{name}-{os.urandom(12).hex()}" for name in TENANT_SETS}
    settings = WebSettings(
        data_dir=data, experiments_dir=experiments,
        tokens={hashlib.sha256(tokens[n].encode()).hexdigest(): frozenset(t)
                for n, t in TENANT_SETS.items()},
        ping_interval_s=1.0, use_cache=False, cancel_grace_s=5.0,
    )
    with serve_in_thread(create_app(settings)) as url:
        yield Dashboard(url, data, experiments, fake_sut, tokens)


@pytest.fixture(scope="session")
def finished_runs(dashboard: Dashboard) -> dict[str, str]:
    """One finished run each of the `hr`, `it` and `mixed` (both tenants) specs."""
    runs = {spec: dashboard.start(spec) for spec in ("hr", "it", "mixed")}
    for run_id in runs.values():
        assert dashboard.wait(run_id)["run"]["status"] == "finished"
    return runs
