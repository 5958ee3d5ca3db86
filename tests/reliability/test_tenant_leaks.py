"""Tenant isolation as a metric: the share of retrieved chunks that belong to another tenant.

Six tenants whose ids are prefixes and near-spellings of one another (`acme`, `acme_eu`,
`acme2`, `acm`, `or_1`, `a`) hold the same topics with their own numbers, so another tenant's
chunk would rank if isolation broke anywhere. Queries are fuzzed, including ones that quote
another tenant's facts and SQL fragments. The share must be exactly 0 in the pipeline (every
mode, every arm), in `rag serve` (plain and streamed), and through a guard run against it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    TENANTS,
    TOPICS,
    build_tenant_pipeline,
    owner_of,
    tenant_corpus,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from loopback import serve_in_thread

from guard.domain import CaseStatus
from guard.golden import GoldenCase, save_jsonl
from guard.journal import read_results
from guard.runs import RunStore
from guard.service import GuardService
from guard.spec import load_spec
from rag.entrypoints.server import create_app
from rag.errors import InputError
from rag.tenancy import TENANT_ID_PATTERN

SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True)
MODES = ("dense", "lexical", "hybrid")


def pointed_queries() -> list[str]:
    """Queries aimed at other tenants: their facts, their ids, SQL and FTS syntax."""
    queries = [topic for topic, _ in TOPICS]
    for tenant in TENANTS:
        for doc in tenant_corpus(tenant)[:2]:
            queries.append(doc.text)
        queries += [f"Owner {tenant}", f"{tenant}--vpn", f"tenant_id = '{tenant}'"]
    queries += ["vacation' OR '1'='1", "x\" OR tenant_id != \"acme", "* OR vpn",
                "vpn AND NOT acme", "laptop -- comment", "\x00vpn", "𝓿𝓹𝓷 vacation", ""]
    return queries


queries = st.sampled_from(pointed_queries()) | st.text(min_size=1, max_size=40)


class LeakMeter:
    """Counts retrieved chunks, and those that belong to another tenant."""

    def __init__(self) -> None:
        self.seen = 0
        self.leaked: Counter[tuple[str, str]] = Counter()

    def add(self, tenant: str, doc_ids: list[str]) -> None:
        self.seen += len(doc_ids)
        for doc_id in doc_ids:
            if owner_of(doc_id) != tenant:
                self.leaked[(tenant, doc_id)] += 1

    @property
    def share(self) -> float:
        return sum(self.leaked.values()) / self.seen if self.seen else 0.0


@pytest.fixture(scope="module")
def meter() -> Iterator[LeakMeter]:
    meter = LeakMeter()
    yield meter
    assert meter.seen > 0 and meter.share == 0.0, meter.leaked


@pytest.fixture(scope="module")
def rag_server(tenant_data: Path) -> Iterator[str]:
    with serve_in_thread(create_app(build_tenant_pipeline(tenant_data))) as url:
        yield url


def test_every_tenant_sees_only_its_own_corpus(tenant_data: Path, meter: LeakMeter) -> None:
    async def sweep() -> None:
        pipeline = build_tenant_pipeline(tenant_data)
        for tenant in TENANTS:
            assert await pipeline.vectors.count(tenant) == len(TOPICS)
            for mode in MODES:
                result = await pipeline.retrieve(tenant, "vacation days vpn laptop", mode=mode,
                                                 k=len(TOPICS) * len(TENANTS))
                ids = [h.doc_id for h in result.hits]
                assert sorted(set(ids)) == sorted(d.doc_id for d in tenant_corpus(tenant)) or (
                    mode == "lexical" and set(ids) <= {d.doc_id for d in tenant_corpus(tenant)})
                meter.add(tenant, ids)

    asyncio.run(sweep())


async def retrieve_everywhere(pipeline: Any, queries: Iterable[str], meter: LeakMeter) -> None:
    """Each query for each tenant in each mode, k 10: the final list and every arm metered.
    (A query the pipeline refuses, such as a blank one, is skipped.)"""
    for query in queries:
        for tenant in TENANTS:
            for mode in MODES:
                try:
                    result = await pipeline.retrieve(tenant, query, mode=mode, k=10)
                except InputError:
                    continue
                meter.add(tenant, [h.doc_id for h in result.hits])
                for hits in result.arms.values():
                    meter.add(tenant, [h.doc_id for h in hits])


@SETTINGS
@given(query=queries)
def test_pipeline_retrieval_never_crosses_tenants(tenant_data: Path, meter: LeakMeter,
                                                  query: str) -> None:
    asyncio.run(retrieve_everywhere(build_tenant_pipeline(tenant_data), [query], meter))


@SETTINGS
@given(tenant=st.from_regex(TENANT_ID_PATTERN, fullmatch=True).filter(lambda t: t not in TENANTS))
def test_an_unknown_valid_tenant_gets_an_error_not_a_neighbour(tenant_data: Path,
                                                               tenant: str) -> None:
    async def ask() -> None:
        pipeline = build_tenant_pipeline(tenant_data)
        with pytest.raises(InputError, match="unknown tenant"):
            await pipeline.retrieve(tenant, "vacation")
        # The stores themselves hold nothing under a name no one ingested.
        assert await pipeline.vectors.search(tenant, [1.0] * 256, 5) == []
        assert await pipeline.lexical.search(tenant, "vacation", 5) == []

    asyncio.run(ask())


def _chat(client: httpx.Client, tenant: str, query: str, **extra: Any) -> httpx.Response:
    body = {"model": f"rag-{tenant}", "messages": [{"role": "user", "content": query}],
            "retrieval": {"k": 10}, **extra}
    return client.post("/v1/chat/completions", content=json.dumps(body).encode(),
                       headers={"content-type": "application/json"})


def _streamed_extra(response: httpx.Response) -> dict[str, Any]:
    for line in response.text.splitlines():
        if line.startswith("data: {") and '"truthguard"' in line:
            extra: dict[str, Any] = json.loads(line[6:])["truthguard"]
            return extra
    raise AssertionError("no chunk carried the truthguard field")


def serve_leaks(client: httpx.Client, meter: LeakMeter, query: str, streamed: str) -> None:
    """Ask every tenant `query` (hybrid: both arms are reported); `streamed` also streams."""
    for tenant in TENANTS:
        response = _chat(client, tenant, query)
        if response.status_code == 400:  # say, a query that is only whitespace
            continue
        assert response.status_code == 200, response.text
        extra = response.json()["truthguard"]
        assert extra["tenant"] == tenant
        meter.add(tenant, [c["doc_id"] for c in extra["contexts"]])
        for chunk_ids in extra["arms"].values():
            meter.add(tenant, [c.split("#")[0] for c in chunk_ids])
        if tenant == streamed:
            stream = _chat(client, tenant, query, stream=True)
            assert stream.status_code == 200, stream.text
            meter.add(tenant, [c["doc_id"] for c in _streamed_extra(stream)["contexts"]])


@settings(SETTINGS, max_examples=10)
@given(query=queries, streamed=st.sampled_from(TENANTS))
def test_rag_serve_never_crosses_tenants(rag_server: str, meter: LeakMeter, query: str,
                                         streamed: str) -> None:
    with httpx.Client(base_url=rag_server, timeout=30) as client:
        serve_leaks(client, meter, query, streamed)


@SETTINGS
@given(tenant=st.from_regex(TENANT_ID_PATTERN, fullmatch=True).filter(lambda t: t not in TENANTS)
       | st.sampled_from([t.upper() for t in TENANTS] + [f"{t}_" for t in TENANTS]
                         + [t[:-1] for t in TENANTS if len(t) > 1 and t[:-1] not in TENANTS]))
def test_rag_serve_answers_unknown_tenants_with_4xx(rag_server: str, tenant: str) -> None:
    with httpx.Client(base_url=rag_server, timeout=30) as client:
        response = _chat(client, tenant, "vacation days")
    assert response.status_code in (400, 404), response.text
    message = response.json()["error"]["message"]
    assert not any(f"--{topic}" in message for topic, _ in TOPICS)


def test_a_guard_run_against_rag_serve_scores_only_own_tenant_contexts(
    rag_server: str, tmp_path: Path, meter: LeakMeter,
) -> None:
    cases = [GoldenCase(id=f"{tenant}-{topic}", tenant=tenant, question=f"{topic} policy",
                        relevant_doc_ids={f"{tenant}--{topic}": 1})
             for tenant in TENANTS for topic, _ in TOPICS]
    save_jsonl(cases, tmp_path / "golden.jsonl")
    (tmp_path / "spec.toml").write_text(
        'name = "tenants"\ndataset = "golden.jsonl"\ningest = false\n'
        "[run]\nconcurrency = 4\nragas = false\n"
        '[[variants]]\nname = "serve"\nsystem = "openai"\n'
        f'base_url = "{rag_server}/v1"\nmodel = "rag-{{tenant}}"\nk = 10\n')
    service = GuardService(RunStore(tmp_path / "runs"), None)
    run_id = service.prepare(load_spec(tmp_path / "spec.toml"))
    outcome = asyncio.run(service.execute(run_id))

    results = list(read_results(service.store.journal_path(run_id)))
    assert outcome.status == "finished" and len(results) == len(cases)
    for result in results:
        assert result.status is CaseStatus.SCORED and result.response is not None
        meter.add(result.tenant, [c.doc_id for c in result.response.contexts])
    hits = [r.metrics["retrieval.hit@10"] for r in results]
    assert sum(h == 1.0 for h in hits if h is not None) >= len(cases) * 0.8


# -- the dashboard API ------------------------------------------------------------------------

DASHBOARD_TOKENS = {"tok-acme": {"acme"}, "tok-eu": {"acme_eu"}, "tok-both": {"acme", "acme_eu"}}


def dashboard_runs(root: Path, fault_server_url: str) -> dict[str, frozenset[str]]:
    """Three finished runs under `root/runs`: acme's, acme_eu's and one of both; returns each
    run's tenants by run id."""
    runs: dict[str, frozenset[str]] = {}
    for tenants in (("acme",), ("acme_eu",), ("acme", "acme_eu")):
        folder = root / "inputs" / "-".join(tenants)
        folder.mkdir(parents=True)
        cases = [GoldenCase(id=f"{t}-{topic}", tenant=t, question=f"{topic} ({t})",
                            relevant_doc_ids={f"{t}--{topic}": 1})
                 for t in tenants for topic, _ in TOPICS]
        save_jsonl(cases, folder / "golden.jsonl")
        (folder / "spec.toml").write_text(
            'name = "leaks"\ndataset = "golden.jsonl"\ningest = false\n'
            "[run]\nragas = false\n"
            '[[variants]]\nname = "canned"\nsystem = "openai"\n'
            f'base_url = "{fault_server_url}"\nmodel = "canned-{{tenant}}"\n')
        service = GuardService(RunStore(root / "runs"), None)
        run_id = service.prepare(load_spec(folder / "spec.toml"))
        assert asyncio.run(service.execute(run_id)).status == "finished"
        runs[run_id] = frozenset(tenants)
    return runs


def dashboard_leaks(client: Any, runs: dict[str, frozenset[str]],
                    odd_run_ids: list[str]) -> tuple[int, list[str]]:
    """(items the dashboard API showed, items that were another tenant's), over every token,
    run and endpoint; an invisible run must answer exactly like a missing one (404)."""
    seen, leaks = 0, []
    for token, allowed in DASHBOARD_TOKENS.items():
        auth = {"Authorization": f"Bearer {token}"}
        listed = client.get("/api/runs", headers=auth)
        assert listed.status_code == 200, listed.text
        for run in listed.json()["runs"]:
            seen += 1
            if not set(run["tenants"]) <= allowed:
                leaks.append(f"{token} listed {run['run_id']} of {run['tenants']}")
        listed_ids = {r["run_id"] for r in listed.json()["runs"]}
        expected = {run_id for run_id, tenants in runs.items() if tenants <= allowed}
        if listed_ids & set(runs) != expected:
            leaks.append(f"{token} listed {sorted(listed_ids)}, expected {sorted(expected)}")
        for run_id, tenants in runs.items():
            visible = tenants <= allowed
            for path in ("", "/cases?limit=1000", "/events"):
                response = client.get(f"/api/runs/{run_id}{path}", headers=auth)
                if not visible:
                    seen += 1
                    if response.status_code != 404 or any(t in response.text for t in tenants):
                        leaks.append(f"{token} got {response.status_code} for {run_id}{path}")
                    continue
                assert response.status_code == 200, (token, path, response.text)
                if path.startswith("/cases"):
                    for case in response.json()["cases"]:
                        seen += 1
                        if case["tenant"] not in allowed:
                            leaks.append(f"{token} saw case {case['case_id']}")
                elif path == "/events":
                    for line in response.text.splitlines():
                        if line.startswith("data:") and '"tenant"' in line:
                            seen += 1
                            if json.loads(line[5:]).get("tenant") not in allowed:
                                leaks.append(f"{token} streamed {line[:80]}")
        for odd in odd_run_ids:
            response = client.get(f"/api/runs/{odd}", headers=auth)
            seen += 1
            if response.status_code not in (400, 404):
                leaks.append(f"{token} got {response.status_code} for run id {odd!r}")
    return seen, leaks


def dashboard_client(root: Path) -> Any:
    from starlette.testclient import TestClient

    from guard.web.app import create_app
    from guard.web.auth import hash_token
    from guard.web.settings import WebSettings

    (root / "experiments").mkdir(exist_ok=True)
    settings = WebSettings(data_dir=root, experiments_dir=root / "experiments",
                           tokens={hash_token(t): frozenset(v)
                                   for t, v in DASHBOARD_TOKENS.items()},
                           poll_interval_s=0.05)
    return TestClient(create_app(settings), raise_server_exceptions=False)


ODD_RUN_IDS = ["20260101-000000-abcdef", "..%2F..%2Fetc", "%00", "20260101-000000-ABCDEF",
               "x' OR '1'='1", "20260101-000000-abcdef%2F..", "-1", "a" * 300]


def test_the_dashboard_api_shows_each_token_only_its_tenants_runs(
    tmp_path: Path, start_fault_server: Any,
) -> None:
    pytest.importorskip("guard.web.app")
    from guard.reliability import CannedUpstream, FaultServer

    url = start_fault_server(FaultServer(CannedUpstream()))
    runs = dashboard_runs(tmp_path, url)
    with dashboard_client(tmp_path) as client:
        seen, leaks = dashboard_leaks(client, runs, ODD_RUN_IDS)
    assert seen > 50 and leaks == []
