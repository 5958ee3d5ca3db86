"""The pipeline service on real stores: idempotent ingestion, modes, arms, conversations,
tenant isolation, and the `rag` CLI end to end on a temporary configuration."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rag.adapters.embedders import HashingEmbedder
from rag.adapters.lancedb_store import LanceDBVectorStore
from rag.adapters.lexical import BM25sLexicalIndex
from rag.adapters.local_provider import LocalExtractiveProvider
from rag.domain import ChatMessage, Document
from rag.entrypoints.cli import main as rag_main
from rag.errors import InputError, TenantIdError
from rag.pipeline import RagPipeline, TenantRuntime

pytestmark = pytest.mark.integration

HR = [
    Document("leave", "Employees receive 25 days of annual leave per year.", "Annual leave"),
    Document("parental", "Parental leave lasts 16 weeks. The first 12 weeks are paid in full.",
             "Parental leave"),
    Document("expenses", "Expense claims must be filed within 30 days with receipts.", "Expenses"),
]
IT = [Document("vpn", "The VPN client is GlobalProtect; the portal is vpn.example.com.", "VPN")]


def _pipeline(root: Path) -> RagPipeline:
    runtime = TenantRuntime(HashingEmbedder(128), LocalExtractiveProvider())
    return RagPipeline({"hr": runtime, "it": runtime}, LanceDBVectorStore(root / "v"),
                       BM25sLexicalIndex(root / "l"))


def test_reingest_is_an_idempotent_upsert(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    first = asyncio.run(pipeline.ingest("hr", HR))
    assert sorted(first.added) == ["expenses", "leave", "parental"] and first.chunks == 3
    changed = [HR[0], Document("parental", "Parental leave lasts 20 weeks.", "Parental leave"),
               HR[2], Document("sick", "Sick leave needs a note after three days.")]
    progress: list[tuple[int, int]] = []
    second = asyncio.run(_pipeline(tmp_path).ingest(
        "hr", changed, progress=lambda done, total: progress.append((done, total))))
    assert second.added == ["sick"] and second.updated == ["parental"]
    assert sorted(second.unchanged) == ["expenses", "leave"] and second.chunks == 2
    assert progress[-1] == (4, 4)
    hits = asyncio.run(pipeline.retrieve("hr", "how many weeks of parental leave", mode="lexical"))
    texts = [h.text for h in hits.hits if h.doc_id == "parental"]
    assert texts == ["Parental leave lasts 20 weeks."]


def test_modes_keep_each_arm(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    asyncio.run(pipeline.ingest("hr", HR))
    hybrid = asyncio.run(pipeline.retrieve("hr", "annual leave days", mode="hybrid", k=2))
    assert set(hybrid.arms) == {"dense", "lexical"} and len(hybrid.hits) == 2
    assert hybrid.hits[0].doc_id == "leave"
    lexical = asyncio.run(pipeline.retrieve("hr", "annual leave days", mode="lexical", k=1))
    assert set(lexical.arms) == {"lexical"} and lexical.hits[0].doc_id == "leave"
    weighted = asyncio.run(pipeline.retrieve("hr", "receipts", fusion="weighted", k=1))
    assert weighted.hits[0].doc_id == "expenses"
    with pytest.raises(InputError):
        asyncio.run(pipeline.retrieve("hr", "x", k=0))


def test_follow_up_turn_retrieves_with_the_earlier_turn(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    asyncio.run(pipeline.ingest("hr", HR))
    turns = [ChatMessage("user", "Tell me about parental leave."),
             ChatMessage("assistant", "It lasts 16 weeks."),
             ChatMessage("user", "How many weeks are paid in full?")]
    answer = asyncio.run(pipeline.answer("hr", turns))
    assert answer.retrieval.hits[0].doc_id == "parental"
    assert "12 weeks" in answer.text and answer.cited_chunk_ids == ["parental#0"]


@pytest.mark.parametrize("tenant", ["it' OR 1=1 --", "../hr", "hr/../it", "\uff48r", "IT", ""])
def test_hostile_tenants_never_reach_storage(tmp_path: Path, tenant: str) -> None:
    pipeline = _pipeline(tmp_path)
    asyncio.run(pipeline.ingest("hr", HR))
    with pytest.raises(TenantIdError):
        asyncio.run(pipeline.retrieve(tenant, "leave"))
    with pytest.raises(TenantIdError):
        asyncio.run(pipeline.ingest(tenant, IT))
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == ["hr"]


def test_tenants_are_isolated_end_to_end(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    asyncio.run(pipeline.ingest("hr", HR))
    asyncio.run(pipeline.ingest("it", IT))
    for mode in ("dense", "lexical", "hybrid"):
        hits = asyncio.run(pipeline.retrieve("it", "annual leave VPN expenses", mode=mode, k=10))
        assert {h.doc_id for h in hits.hits} == {"vpn"}


def test_rag_cli_ingest_ask_retrieve(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "leave.md").write_text("# Leave\n\nEmployees receive 25 days of annual leave.\n")
    (corpus / "vpn.txt").write_text("The VPN client is GlobalProtect.")
    config = tmp_path / "truthguard.toml"
    config.write_text(f'data_dir = "data"\n[defaults]\nembedder = "hashing"\n'
                      f'[tenants.hr]\ncorpus = "{corpus}"\n')
    assert rag_main(["--config", str(config), "ingest"]) == 0
    assert "2 added" in capsys.readouterr().out
    assert rag_main(["--config", str(config), "ingest"]) == 0
    assert "2 unchanged" in capsys.readouterr().out

    assert rag_main(["--config", str(config), "ask", "hr", "How many days of annual leave?"]) == 0
    out = capsys.readouterr().out
    assert "25 days" in out and "[leave#0]" in out

    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q1", "text": "annual leave days"}) + "\n")
    run = tmp_path / "run.txt"
    args = ["--config", str(config), "retrieve", "--tenant", "hr", "--queries", str(queries),
            "--mode", "lexical", "--depth", "5", "--out", str(run)]
    assert rag_main(args) == 0
    first = run.read_text().splitlines()[0].split()
    assert first[:4] == ["q1", "Q0", "leave", "1"] and first[5] == "lexical"

    assert rag_main(["--config", str(config), "ask", "hr'--", "x"]) == 2
    assert "invalid tenant id" in capsys.readouterr().err
    assert rag_main(["--config", str(config), "ask", "finance", "x"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\nk = 0\n")
    assert rag_main(["--config", str(bad), "ingest"]) == 2
    assert "defaults.k" in capsys.readouterr().err
