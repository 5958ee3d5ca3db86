"""The dashboard's JSON API against a real uvicorn: runs, summaries, cases, starting and
cancelling runs, tokens, sessions, tenant isolation, static files and request logs."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from guard.results import status_counts
from guard.runs import RunStore
from guard.service import GuardService
from guard.spec import load_spec
from guard.web.app import create_app
from guard.web.auth import hash_token
from guard.web.auth import main as token_main
from guard.web.settings import WebSettings, load_settings, load_tokens
from rag.errors import InputError
from rag.logging import JsonFormatter

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest_web import Dashboard
    from starlette.types import ASGIApp

pytest_plugins = ["conftest_web"]
pytestmark = pytest.mark.integration

TENANTS = {"all": {"hr", "it"}, "hr": {"hr"}, "it": {"it"}}
RUN_ENDPOINTS = [("GET", ""), ("GET", "/cases"), ("POST", "/cancel"), ("GET", "/events")]
ENDPOINTS = [("GET", "/api/session"), ("GET", "/api/experiments"), ("GET", "/api/runs"),
             ("POST", "/api/runs")]


def _get(dashboard: Dashboard, path: str, who: str = "all") -> Any:
    with dashboard.client(who) as client:
        reply = client.get(path)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_runs_are_listed_only_to_tokens_holding_all_their_tenants(
    dashboard: Dashboard, finished_runs: dict[str, str]
) -> None:
    expected = {"all": {"hr", "it", "mixed"}, "hr": {"hr"}, "it": {"it"}}
    for who, experiments in expected.items():
        runs = _get(dashboard, "/api/runs", who)["runs"]
        assert {r["experiment"] for r in runs if r["run_id"] in finished_runs.values()} \
            == experiments
        assert all(set(r["tenants"]) <= TENANTS[who] for r in runs)
        assert [r["run_id"] for r in runs] == sorted((r["run_id"] for r in runs), reverse=True)
    run = next(r for r in _get(dashboard, "/api/runs")["runs"]
               if r["run_id"] == finished_runs["mixed"])
    assert run["status"] == "finished" and run["done"] == run["total"] == 88
    assert run["variants"] == ["a", "b"] and run["started_here"] and not run["cancellable"]


def test_summary_equals_the_service_outcome_and_the_journal(
    dashboard: Dashboard, finished_runs: dict[str, str]
) -> None:
    run_id = finished_runs["mixed"]
    summary = _get(dashboard, f"/api/runs/{run_id}")
    outcome = GuardService(RunStore(dashboard.data_dir / "runs"), None).outcome(run_id)
    assert summary["summaries"] == [
        {"variant": s.variant, "metric": s.metric, "mean": s.ci.mean, "low": s.ci.low,
         "high": s.ci.high, "n": s.ci.n, "n_missing": s.ci.n_missing}
        for s in outcome.summaries]
    assert summary["status_counts"] == status_counts(outcome.frame)
    assert [(g["variant"], g["metric"], g["passed"]) for g in summary["gates"]] == [
        (g.variant, g.metric, g.passed) for g in outcome.gates]
    # Recomputed by hand from the journal's case events: scored cases, None left out.
    values: dict[tuple[str, str], list[float]] = {}
    statuses: dict[str, dict[str, int]] = {}
    for event in dashboard.journal(run_id):
        if event.type != "case_finished":
            continue
        case = event.data
        counts = statuses.setdefault(case["variant"], {})
        counts[case["status"]] = counts.get(case["status"], 0) + 1
        if case["status"] == "scored":
            for metric, value in case["metrics"].items():
                if value is not None:
                    values.setdefault((case["variant"], metric), []).append(value)
    means = {(s["variant"], s["metric"]): s["mean"] for s in summary["summaries"]}
    assert means.keys() == values.keys()
    for key, found in values.items():
        assert math.isclose(means[key], sum(found) / len(found), rel_tol=1e-12, abs_tol=1e-12)
    assert summary["status_counts"] == statuses
    assert statuses["a"]["error"] > 0  # the fake system refuses laptop questions
    progress = summary["progress"]
    assert progress["done"] == progress["total"] == 88
    assert progress["errors"] == sum(c.get("error", 0) for c in statuses.values())
    assert progress["retries"] > 0  # it answers VPN questions on the second try
    assert summary["last_event_id"] == dashboard.journal(run_id)[-1].id
    assert summary["confidence"] == 0.95 and summary["run"]["status"] == "finished"


def test_cases_come_failures_first_and_filter(
    dashboard: Dashboard, finished_runs: dict[str, str]
) -> None:
    run_id = finished_runs["mixed"]
    base = f"/api/runs/{run_id}/cases"
    page = _get(dashboard, f"{base}?limit=1000")
    cases = page["cases"]
    assert page["total"] == len(cases) == 88
    statuses = [c["status"] for c in cases]
    first_scored = statuses.index("scored")
    assert first_scored > 0 and set(statuses[:first_scored]) == {"error"}
    assert set(statuses[first_scored:]) == {"scored"}
    failure = cases[0]
    assert "laptop" in failure["question"].lower() and "HTTP 400" in failure["error"]
    scored = cases[first_scored]
    assert scored["response"]["answer"].startswith("The answer to:")
    assert [c["rank"] for c in scored["response"]["contexts"]] == [1, 2, 3]
    assert scored["response"]["tool_calls"] == [] and "retrieval.MRR" in scored["metrics"]
    assert page["facets"]["variants"] == ["a", "b"] and "leave" in page["facets"]["tags"]

    def ids(query: str) -> list[tuple[str, str]]:
        found = _get(dashboard, f"{base}?limit=1000&{query}")["cases"]
        return [(c["variant"], c["case_id"]) for c in found]

    def expect(keep: Any) -> set[tuple[str, str]]:
        return {(c["variant"], c["case_id"]) for c in cases if keep(c)}

    assert set(ids("status=error")) == expect(lambda c: c["status"] == "error")
    assert set(ids("status=error,scored")) == expect(lambda c: True)
    assert set(ids("tag=leave")) == expect(lambda c: "leave" in c["tags"])
    assert set(ids("variant=b&tag=vpn")) == expect(
        lambda c: c["variant"] == "b" and "vpn" in c["tags"])
    metric = "retrieval.MRR"
    assert set(ids(f"metric={metric}&min=0.5")) == expect(
        lambda c: c["metrics"].get(metric) is not None and c["metrics"][metric] >= 0.5)
    assert set(ids(f"metric={metric}&max=0.2&variant=a")) == expect(
        lambda c: c["variant"] == "a" and c["metrics"].get(metric) is not None
        and c["metrics"][metric] <= 0.2)
    worst_first = _get(dashboard, f"{base}?limit=1000&status=scored&metric=answer.f1")["cases"]
    f1 = [c["metrics"]["answer.f1"] for c in worst_first if c["metrics"].get("answer.f1")
          is not None]
    assert f1 == sorted(f1)
    paged = _get(dashboard, f"{base}?limit=10&offset=20")
    assert [c["case_id"] for c in paged["cases"]] == [c["case_id"] for c in cases[20:30]]
    with dashboard.client() as client:
        for bad in ("status=bogus", "min=0.5", "metric=answer.f1&min=abc", "limit=0",
                    "limit=5000", "offset=-1"):
            assert client.get(f"{base}?{bad}").status_code == 400, bad


def test_start_a_run_by_name_or_path_inside_the_experiments_folder(dashboard: Dashboard) -> None:
    run_id = dashboard.start("hr.toml", who="hr", limit=3, tags=["smoke"])
    summary = dashboard.wait(run_id, who="hr")
    assert summary["run"]["experiment"] == "hr" and summary["run"]["total"] == 3
    assert RunStore(dashboard.data_dir / "runs").manifest(run_id)["tags"] == ["smoke"]
    names = {who: set(_get(dashboard, "/api/experiments", who)["experiments"])
             for who in TENANTS}
    assert names["hr"] == {"hr", "slow"} and names["it"] == {"it"}
    assert names["all"] == {"hr", "it", "live", "mixed", "slow", "cli", "demo"}


@pytest.mark.parametrize("spec", [
    "../outside", "../outside.toml", "/etc/passwd", "nope", "..", "hr/../../outside",
    "%2e%2e/outside", "a\x00b", "",
])
def test_starting_a_spec_outside_the_experiments_folder_is_refused(
    dashboard: Dashboard, spec: str
) -> None:
    before = RunStore(dashboard.data_dir / "runs").run_ids()
    with dashboard.client() as client:
        reply = client.post("/api/runs", json={"spec": spec})
    assert reply.status_code in (400, 404), reply.text
    assert "passwd" not in reply.text and "root:" not in reply.text
    assert RunStore(dashboard.data_dir / "runs").run_ids() == before


def test_start_run_validates_its_body_and_the_tenants(dashboard: Dashboard) -> None:
    before = RunStore(dashboard.data_dir / "runs").run_ids()
    with dashboard.client("hr") as client:
        assert client.post("/api/runs", json={}).status_code == 400
        assert client.post("/api/runs", json={"spec": "hr", "limit": 0}).status_code == 400
        assert client.post("/api/runs", json={"spec": "hr", "x": 1}).status_code == 400
        assert client.post("/api/runs", content=b"{", headers={
            "Content-Type": "application/json"}).status_code == 400
        assert client.post("/api/runs", data={"spec": "hr"}).status_code == 415
        for other in ("it", "mixed", "demo"):
            reply = client.post("/api/runs", json={"spec": other})
            assert reply.status_code == 404 and "tenant" not in reply.text
    assert RunStore(dashboard.data_dir / "runs").run_ids() == before


def test_cancel_only_a_running_run_this_server_started(
    dashboard: Dashboard, finished_runs: dict[str, str]
) -> None:
    run_id = dashboard.start("slow", who="hr")
    with dashboard.client("hr") as client:
        deadline = time.monotonic() + 20
        while client.get(f"/api/runs/{run_id}").json()["run"]["done"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with dashboard.client("it") as other:
            assert other.post(f"/api/runs/{run_id}/cancel").status_code == 404
        reply = client.post(f"/api/runs/{run_id}/cancel")
        assert reply.status_code == 202 and reply.json()["status"] == "cancelling"
        summary = dashboard.wait(run_id, who="hr", timeout=20)
        assert summary["run"]["status"] == "cancelled"
        assert 0 < summary["run"]["done"] < summary["run"]["total"]
        assert client.post(f"/api/runs/{run_id}/cancel").status_code == 409
        assert client.post(f"/api/runs/{finished_runs['hr']}/cancel").status_code == 409
        # A run this server did not start (prepared by another process): 409, untouched.
        service = GuardService(RunStore(dashboard.data_dir / "runs"), None)
        foreign = service.prepare(load_spec(dashboard.experiments_dir / "hr.toml"))
        reply = client.post(f"/api/runs/{foreign}/cancel")
        assert reply.status_code == 409 and "did not start" in reply.json()["error"]["message"]
        assert client.post("/api/runs/20990101-000000-abcdef/cancel").status_code == 404
    assert dashboard.journal(run_id)[-1].data["status"] == "cancelled"


def test_every_endpoint_needs_a_valid_token(
    dashboard: Dashboard, finished_runs: dict[str, str]
) -> None:
    run_id = finished_runs["hr"]
    paths = ENDPOINTS + [(m, f"/api/runs/{run_id}{p}") for m, p in RUN_ENDPOINTS]
    token = dashboard.tokens["all"]
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {token}"},
             {"Authorization": f"bearer{token}"}, {"Authorization": "Bearer"},
             {"Cookie": "tg_session=forged"}, {"X-Api-Token": token}]
    with httpx.Client(base_url=dashboard.url, timeout=10) as client:
        for method, path in paths:
            for headers in wrong:
                reply = client.request(method, path, headers=headers,
                                       json={"spec": "hr"} if method == "POST" else None)
                assert reply.status_code == 401, (method, path, headers)
                assert reply.headers["www-authenticate"].startswith("Bearer")
            for query in (f"token={token}", f"access_token={token}"):
                reply = client.request(method, f"{path}?{query}")
                assert reply.status_code == 401, (method, path, query)


def test_another_tenants_run_is_answered_as_missing(
    dashboard: Dashboard, finished_runs: dict[str, str]
) -> None:
    with dashboard.client("hr") as client:
        for method, suffix in RUN_ENDPOINTS:
            for run_id in (finished_runs["it"], finished_runs["mixed"]):
                hidden = client.request(method, f"/api/runs/{run_id}{suffix}")
                missing = client.request(method, f"/api/runs/20990101-000000-abcdef{suffix}")
                assert hidden.status_code == missing.status_code == 404, (method, suffix)
                assert hidden.json() == missing.json()
                assert run_id not in hidden.text
            assert client.request(method, f"/api/runs/not-a-run{suffix}").status_code == 404
        assert client.get(f"/api/runs/{finished_runs['hr']}").status_code == 200


def test_session_cookie_from_a_token(dashboard: Dashboard, finished_runs: dict[str, str]) -> None:
    with httpx.Client(base_url=dashboard.url, timeout=10) as client:
        assert client.post("/api/session").status_code == 401
        assert client.post("/api/session", headers={"Authorization": "Bearer x"}).status_code \
            == 401
        reply = client.post("/api/session", headers=dashboard.auth("hr"))
        assert reply.status_code == 200 and reply.json() == {"tenants": ["hr"]}
        cookie = reply.headers["set-cookie"]
        assert cookie.startswith("tg_session=") and dashboard.tokens["hr"] not in cookie
        attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")}
        assert {"httponly", "path", "samesite"} <= attributes.keys()
        assert attributes["samesite"].split("=")[1].lower() == "strict"
        session_id = client.cookies["tg_session"]
        # The cookie alone works for the API and the event stream.
        assert client.get("/api/session").json()["tenants"] == ["hr"]
        runs = {r["run_id"] for r in client.get("/api/runs").json()["runs"]}
        assert finished_runs["hr"] in runs and finished_runs["it"] not in runs
        assert client.get(f"/api/runs/{finished_runs['it']}").status_code == 404
        stream = client.get(f"/api/runs/{finished_runs['hr']}/events")
        assert stream.status_code == 200 and "event: run_finished" in stream.text
        # A bad token is not rescued by a good cookie.
        assert client.get("/api/runs", headers={"Authorization": "Bearer x"}).status_code == 401
        # Other origins (say, another port of localhost) cannot use the cookie to act.
        cancel = f"/api/runs/{finished_runs['hr']}/cancel"
        assert client.post(cancel, headers={"Origin": "http://127.0.0.1:1"}).status_code == 403
        assert client.post(cancel, headers={"Sec-Fetch-Site": "same-site"}).status_code == 403
        assert client.post(cancel, headers={"Origin": dashboard.url}).status_code == 409
        assert client.delete("/api/session").status_code == 204
        assert client.get("/api/runs").status_code == 401
        client.cookies.set("tg_session", session_id)
        assert client.get("/api/runs").status_code == 401  # dropped on the server too


def test_page_and_static_files_make_no_outside_requests(dashboard: Dashboard) -> None:
    with httpx.Client(base_url=dashboard.url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "access-control-allow-origin" not in page.headers
        for name in ("app.js", "app.css"):
            assert client.get(f"/static/{name}").status_code == 200
        assert client.get("/static/../app.py").status_code == 404
        preflight = client.options("/api/runs", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
    static = Path(__file__).resolve().parents[2] / "guard" / "web" / "static"
    for path in static.iterdir():
        text = path.read_text()
        outside = [u for u in re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", text)
                   if not u.startswith("http://www.w3.org/2000/svg")]
        assert outside == [], (path.name, outside)
    assert len((static / "app.js").read_text().splitlines()) < 450


def test_requests_are_logged_as_json_with_a_correlation_id(dashboard: Dashboard) -> None:
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("guard.web")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with dashboard.client() as client:
            ok = client.get("/api/runs", headers={"X-Request-ID": "req-42"})
            forged = client.get("/api/runs", headers={"X-Request-ID": "not a plain id!"})
        with httpx.Client(base_url=dashboard.url) as anonymous:
            anonymous.get("/api/runs", headers={"X-Request-ID": "req-43"})
        assert ok.headers["x-request-id"] == "req-42"
        assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])
        deadline = time.monotonic() + 5
        while sink.getvalue().count('"http request"') < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    requests = {line["correlation_id"]: line for line in lines
                if line["message"] == "http request"}
    assert requests["req-42"]["status"] == 200 and requests["req-42"]["path"] == "/api/runs"
    assert requests["req-43"]["status"] == 401
    assert any(line["correlation_id"] == "req-43" and line["message"] ==
               "unauthenticated request" for line in lines)
    assert all(token not in sink.getvalue() for token in dashboard.tokens.values())


def test_token_file_and_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert token_main(["hr", "it"]) == 0
    out = capsys.readouterr().out
    token = out.splitlines()[0].split()[-1]
    line = out.splitlines()[-1]
    assert line == f'"{hash_token(token)}" = ["hr", "it"]'
    path = tmp_path / "tokens.toml"
    path.write_text(f"[tokens]\n{line}\n")
    assert load_tokens(path) == {hash_token(token): frozenset({"hr", "it"})}
    settings = load_settings(data_dir=tmp_path, experiments_dir=tmp_path, token_file=None,
                             env={"TRUTHGUARD_TOKEN_FILE": str(path)})
    assert settings.host == "127.0.0.1" and settings.port == 8765 and settings.tokens
    with pytest.raises(InputError, match="no API tokens"):
        load_settings(data_dir=tmp_path, experiments_dir=tmp_path, token_file=None, env={})
    for bad, message in [
        ("[tokens]\n", "non-empty"),
        ('[tokens]\n"plain-token" = ["hr"]\n', "SHA-256"),
        (f'[tokens]\n"{hash_token("x")}" = []\n', "non-empty list"),
        (f'[tokens]\n"{hash_token("x")}" = ["HR\'; drop"]\n', "invalid tenant"),
        ("[tokens\n", "invalid TOML"),
    ]:
        path.write_text(bad)
        with pytest.raises(InputError, match=message):
            load_tokens(path)
    with pytest.raises(InputError, match="not found"):
        load_tokens(tmp_path / "missing.toml")


def test_a_server_runs_at_most_max_active_runs_at_once(
    dashboard: Dashboard, serve_web_app: Callable[[ASGIApp], str], tmp_path: Path
) -> None:
    settings = WebSettings(data_dir=tmp_path, experiments_dir=dashboard.experiments_dir,
                           tokens={hash_token("t"): frozenset({"hr"})}, max_active_runs=0)
    url = serve_web_app(create_app(settings))
    reply = httpx.post(f"{url}/api/runs", json={"spec": "hr"},
                       headers={"Authorization": "Bearer t"})
    assert reply.status_code == 429 and reply.headers["retry-after"] == "10"
    assert RunStore(tmp_path / "runs").run_ids() == []
