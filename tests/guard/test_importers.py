"""Importers on the real BEIR SciFact, SQuAD 2.0 and BFCL files, and on small broken inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guard.golden import load_dataset
from guard.importers import (
    beir_cases,
    beir_documents,
    bfcl_cases,
    import_dataset,
    main,
    read_qrels,
    squad_cases,
)
from rag.errors import InputError

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
SCIFACT = DATA / "scifact"
SQUAD = DATA / "squad2-dev-5articles"
BFCL = DATA / "bfcl"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")


# --------------------------------------------------------------------------- real data


@needs_data
def test_scifact_gives_300_judged_queries_with_339_judgments() -> None:
    result = beir_cases(
        SCIFACT / "queries.jsonl",
        SCIFACT / "qrels" / "test.tsv",
        tenant="scifact",
        corpus_path=SCIFACT / "corpus.jsonl",
    )
    assert len(result.cases) == 300
    assert sum(len(c.relevant_doc_ids) for c in result.cases) == 339
    assert result.skipped == 0
    assert result.notes == ()  # every judged document is in the corpus
    assert result.cases[0].tags == ("beir",)


@needs_data
def test_scifact_corpus_streams_as_documents() -> None:
    docs = list(beir_documents(SCIFACT / "corpus.jsonl"))
    assert len(docs) == 5183
    assert docs[0].source == f"{SCIFACT / 'corpus.jsonl'}:1"
    assert docs[0].doc_id == "4983" and docs[0].title.startswith("Microstructural")
    assert len({d.doc_id for d in docs}) == 5183


@needs_data
def test_squad_gives_answerable_and_unanswerable_cases() -> None:
    result = squad_cases(SQUAD / "qa.jsonl", tenant="squad", corpus_path=SQUAD / "corpus.jsonl")
    cases = result.cases
    unanswerable = [c for c in cases if c.is_impossible]
    answerable = [c for c in cases if not c.is_impossible]

    assert (len(cases), len(unanswerable)) == (1407, 702)
    assert all(c.answers == () and not c.relevant_doc_ids for c in unanswerable)
    assert all(c.reference_answer == c.answers[0] for c in answerable)
    assert all(len(c.reference_contexts) == 1 for c in cases)
    assert {c.id: c.relevant_doc_ids for c in answerable} == read_qrels(SQUAD / "qrels_test.tsv")
    assert {t for c in unanswerable for t in c.tags} == {"squad", "unanswerable"}


@needs_data
@pytest.mark.parametrize(
    ("category", "count"),
    [
        ("simple_python", 400),
        ("multiple", 200),
        ("parallel", 200),
        ("parallel_multiple", 200),
        ("irrelevance", 240),
    ],
)
def test_bfcl_categories(category: str, count: int) -> None:
    result = bfcl_cases(BFCL / f"BFCL_v4_{category}.json", tenant="bfcl")
    cases = result.cases
    assert len(cases) == count
    assert all(c.tags == ("bfcl", category, "tools") for c in cases)
    assert '"dict"' not in json.dumps([c.tools for c in cases])
    if category == "irrelevance":
        assert all(c.expected_tool_calls == () for c in cases)
    else:
        assert all(c.expected_tool_calls for c in cases)
    if category.startswith("parallel"):
        assert all(len(c.expected_tool_calls or ()) >= 2 for c in cases)


@needs_data
def test_bfcl_ground_truth_keeps_allowed_values_and_drops_out_of_schema_optionals() -> None:
    first = bfcl_cases(BFCL / "BFCL_v4_simple_python.json", tenant="bfcl", limit=1).cases[0]
    assert first.question is not None and first.question.startswith("Find the area of a triangle")
    assert first.expected_tool_calls is not None
    call = first.expected_tool_calls[0]
    assert (call.name, call.arguments) == (
        "calculate_triangle_area",
        {"base": [10], "height": [5], "unit": ["units", ""]},
    )
    result = bfcl_cases(BFCL / "BFCL_v4_parallel_multiple.json", tenant="bfcl")
    assert "parallel_multiple_12:calculate_voltage_difference.permeability" in result.notes[0]


@needs_data
def test_import_dataset_writes_a_dataset_that_loads(tmp_path: Path) -> None:
    out = tmp_path / "bfcl.jsonl"
    result = import_dataset(
        "bfcl", {"questions": BFCL / "BFCL_v4_multiple.json"}, out, tenant="bfcl", limit=50
    )
    loaded = load_dataset(out, known_tenants={"bfcl"})
    assert len(result.cases) == 50
    assert loaded.cases == result.cases


@needs_data
def test_cli_imports_scifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scifact.jsonl"
    argv = ["beir", "--queries", str(SCIFACT / "queries.jsonl")]
    argv += ["--qrels", str(SCIFACT / "qrels" / "test.tsv"), "--out", str(out)]
    assert main([*argv, "--tenant", "scifact"]) == 0
    assert f"wrote 300 cases to {out}" in capsys.readouterr().out
    assert len(load_dataset(out).cases) == 300


# --------------------------------------------------------------------------- small inputs


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_beir_skips_unjudged_queries_and_drops_self_judgments(tmp_path: Path) -> None:
    queries = _write(
        tmp_path / "queries.jsonl",
        '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n'
        '{"_id": "q3", "text": "only judged against itself"}\n',
    )
    qrels = _write(
        tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\tq1\t1\nq3\tq3\t1\n"
    )
    result = beir_cases(queries, qrels, tenant="t")
    assert [c.id for c in result.cases] == ["q1"]
    assert result.cases[0].relevant_doc_ids == {"d1": 2}
    assert result.skipped == 2
    assert any("own id dropped" in note for note in result.notes)


def test_trec_qrels_are_read_too(tmp_path: Path) -> None:
    qrels = _write(tmp_path / "qrels.txt", "q1 0 d1 1\nq1 0 d2 0\n")
    assert read_qrels(qrels) == {"q1": {"d1": 1, "d2": 0}}


def test_bad_source_lines_are_named(tmp_path: Path) -> None:
    queries = _write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "x"}\n{"_id": \n')
    qrels = _write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\tyes\n")
    with pytest.raises(InputError, match=r"test\.tsv:2: field 'score': score must be an integer"):
        read_qrels(qrels)
    with pytest.raises(InputError, match=r"queries\.jsonl:2: invalid JSON"):
        beir_cases(queries, _write(tmp_path / "ok.tsv", "q1\td1\t1\n"), tenant="t")


def test_bfcl_without_answer_file_is_an_error_outside_irrelevance(tmp_path: Path) -> None:
    line = {
        "id": "simple_0",
        "question": [[{"role": "user", "content": "hi"}]],
        "function": [{"name": "f", "parameters": {"type": "dict", "properties": {}}}],
    }
    questions = _write(tmp_path / "BFCL_v4_simple.json", json.dumps(line) + "\n")
    with pytest.raises(InputError, match="no answer file for category 'simple'"):
        bfcl_cases(questions, tenant="t")


def test_invalid_tenant_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="invalid tenant id"):
        squad_cases(tmp_path / "absent.jsonl", tenant="Bad Tenant")


def test_cli_exits_2_with_the_message_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qa = _write(tmp_path / "qa.jsonl", '{"id": "a", "question": "q", "answers": [], ')
    status = main(["squad", "--qa", str(qa), "--out", str(tmp_path / "o.jsonl"), "--tenant", "t"])
    captured = capsys.readouterr()
    assert status == 2
    assert f"{qa}:1: invalid JSON" in captured.err
    assert not (tmp_path / "o.jsonl").exists()
