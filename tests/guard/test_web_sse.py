"""The run event stream (`GET /api/runs/{id}/events`) against a real uvicorn: it equals the
journal, resumes from `Last-Event-ID` without loss or repeats, serves 50 clients at once, shows
a run another process writes, and hides other tenants' runs."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from httpx_sse import aconnect_sse

from guard.runs import RunStore
from guard.service import GuardService
from guard.spec import load_spec

if TYPE_CHECKING:
    from conftest_web import Dashboard

pytest_plugins = ["conftest_web"]
pytestmark = pytest.mark.integration


def test_stream_of_a_live_run_equals_its_journal(dashboard: Dashboard) -> None:
    run_id = dashboard.start("live")
    seen_while_running = 0
    events = []
    for sse in dashboard.iter_stream(run_id):
        if sse.event == "case_finished" and not dashboard.finished_in_journal(run_id):
            seen_while_running += 1
        events.append(sse)
    journal = dashboard.journal(run_id)
    assert dashboard.triples(events) == dashboard.triples(journal)
    assert [e.id for e in journal] == list(range(1, len(journal) + 1))
    assert events[-1].event == "run_finished" and events[0].event == "run_started"
    types = {e.event for e in events}
    assert {"case_finished", "progress", "retry"} <= types
    assert seen_while_running > 0, "no case arrived before the run ended: not live"


def test_reconnecting_with_last_event_id_loses_and_repeats_nothing(dashboard: Dashboard) -> None:
    run_id = dashboard.start("live")
    rng = random.Random(7)
    received: list[object] = []
    last_id: int | None = None
    reconnects = 0
    while True:
        chunk = dashboard.stream(run_id, last_id=last_id, limit=rng.randint(1, 12))
        received += chunk
        reconnects += 1
        if chunk:
            last_id = int(chunk[-1].id)
        if chunk and chunk[-1].event == "run_finished":
            break
        assert reconnects < 500
    assert reconnects > 5
    journal = dashboard.journal(run_id)
    assert dashboard.triples(received) == dashboard.triples(journal)
    # After the last event of a finished run: nothing, and the stream closes.
    assert dashboard.stream(run_id, last_id=journal[-1].id, timeout=10) == []
    # From any point of the finished run: exactly the rest.
    for point in rng.sample(range(len(journal)), 5):
        rest = dashboard.stream(run_id, last_id=point)
        assert dashboard.triples(rest) == dashboard.triples(journal[point:])


def test_bad_last_event_id_is_refused(dashboard: Dashboard, finished_runs: dict[str, str]) -> None:
    with dashboard.client() as client:
        for bad in ("abc", "-1", "1.5", "9" * 30):
            reply = client.get(f"/api/runs/{finished_runs['hr']}/events",
                               headers={"Last-Event-ID": bad})
            assert reply.status_code == 400, bad


def test_fifty_concurrent_clients_each_receive_every_event(dashboard: Dashboard) -> None:
    """50 clients follow one live run to its end while 20 more leave early, mid-read: the
    ones that stay still get every event (the journal feed is shared between them)."""
    run_id = dashboard.start("live")
    rng = random.Random(11)

    async def one(client: httpx.AsyncClient, leave_after: int | None) -> list[object]:
        out: list[object] = []
        async with aconnect_sse(client, "GET", f"/api/runs/{run_id}/events") as source:
            source.response.raise_for_status()
            async for sse in source.aiter_sse():
                if sse.data:
                    out.append(sse)
                if leave_after is not None and len(out) >= leave_after:
                    break
        return out

    async def everyone() -> list[list[object]]:
        limits = httpx.Limits(max_connections=80, max_keepalive_connections=80)
        async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth(),
                                     timeout=60, limits=limits) as client:
            stay = [one(client, None) for _ in range(50)]
            leave = [one(client, rng.randint(1, 40)) for _ in range(20)]
            return await asyncio.gather(*stay, *leave)

    streams = asyncio.run(everyone())
    expected = dashboard.triples(dashboard.journal(run_id))
    assert len(streams) == 70
    for stream in streams[:50]:
        assert dashboard.triples(stream) == expected
    for stream in streams[50:]:
        assert dashboard.triples(stream) == expected[:len(stream)]


def test_a_run_started_by_the_cli_in_another_process_streams_live(dashboard: Dashboard) -> None:
    before = set(RunStore(dashboard.data_dir / "runs").run_ids())
    env = {**os.environ, "TRUTHGUARD_DATA": str(dashboard.data_dir)}
    process = subprocess.Popen(
        [str(dashboard.guard_cli), "run", str(dashboard.experiments_dir / "cli.toml"),
         "--no-cache", "--no-mlflow"],
        cwd=dashboard.data_dir.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        run_id = None
        with dashboard.client() as client:
            while run_id is None:
                assert process.poll() is None or time.monotonic() < deadline
                fresh = [r["run_id"] for r in client.get("/api/runs").json()["runs"]
                         if r["run_id"] not in before]
                run_id = fresh[0] if fresh else None
                assert time.monotonic() < deadline, "the CLI run never appeared"
                time.sleep(0.05)
        live = 0
        events = []
        for sse in dashboard.iter_stream(run_id):
            if (sse.event == "case_finished" and process.poll() is None
                    and not dashboard.finished_in_journal(run_id)):
                live += 1
            events.append(sse)
        assert process.wait(timeout=60) in (0, 1), process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert live > 0, "the CLI's cases only showed after it ended"
    assert dashboard.triples(events) == dashboard.triples(dashboard.journal(run_id))
    with dashboard.client() as client:
        listed = {r["run_id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert listed[run_id]["status"] == "finished" and not listed[run_id]["started_here"]


def test_idle_stream_sends_keep_alive_pings(dashboard: Dashboard) -> None:
    # A prepared run that nobody executes: its stream stays open, with only pings.
    service = GuardService(RunStore(dashboard.data_dir / "runs"), None)
    run_id = service.prepare(load_spec(dashboard.experiments_dir / "hr.toml"))
    pings = 0
    with httpx.Client(base_url=dashboard.url, headers=dashboard.auth(), timeout=10) as client, \
            client.stream("GET", f"/api/runs/{run_id}/events") as response:
        assert response.status_code == 200
        started = time.monotonic()
        for line in response.iter_lines():
            assert not line.startswith(("data:", "id:")), line
            if line.startswith(": ping"):
                pings += 1
                break
            assert time.monotonic() - started < 5
    assert pings == 1


def test_stream_access_rules(dashboard: Dashboard, finished_runs: dict[str, str]) -> None:
    it_run = finished_runs["it"]
    with httpx.Client(base_url=dashboard.url, timeout=10) as client:
        assert client.get(f"/api/runs/{it_run}/events").status_code == 401
        bad = {"Authorization": "Bearer not-a-token"}
        assert client.get(f"/api/runs/{it_run}/events", headers=bad).status_code == 401
        hidden = client.get(f"/api/runs/{it_run}/events", headers=dashboard.auth("hr"))
        unknown = client.get("/api/runs/20990101-000000-abcdef/events",
                             headers=dashboard.auth("hr"))
        assert hidden.status_code == unknown.status_code == 404
        assert hidden.json() == unknown.json()
        assert client.get("/api/runs/..%2f..%2fetc/events",
                          headers=dashboard.auth()).status_code == 404
    with dashboard.client("it") as client:
        whole = client.get(f"/api/runs/{it_run}/events")
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("text/event-stream")
    assert whole.headers["cache-control"] == "no-store"
    assert dashboard.stream(it_run, who="it")[-1].event == "run_finished"
