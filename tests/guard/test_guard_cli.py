"""`guard run`, `show`, `export`, `query` and `runs` end to end on a small real setup:
LanceDB and BM25 on disk, the hashing embedder, the offline provider."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from demo_spec import demo_matrix_spec

from guard.entrypoints.cli import main as guard_main

pytestmark = pytest.mark.integration


def _spec(tmp_path: Path, gates: str = "", extra: str = "") -> Path:
    return demo_matrix_spec(tmp_path, "mini", header=f"limit = 12\n{extra}", concurrency=3,
                            gates=gates)


def _run(tmp_path: Path, *args: str) -> int:
    if args[0] == "run":  # MLflow logging has its own tests
        args = (*args, "--no-mlflow")
    return guard_main(["--data-dir", str(tmp_path / "data"), *args])


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # reports/ are written relative to the working directory


def _run_id(tmp_path: Path) -> str:
    runs = sorted((tmp_path / "data" / "runs").iterdir())
    return runs[-1].name


def test_run_export_query_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, gates='"retrieval.hit@5" = { min = 0.5 }')
    assert _run(tmp_path, "run", str(spec)) == 0
    out = capsys.readouterr().out
    assert "lexical" in out and "hybrid" in out and "gate pass" in out
    run_id = _run_id(tmp_path)

    frames = {}
    for suffix in ("csv", "jsonl", "parquet"):
        target = tmp_path / f"cases.{suffix}"
        assert _run(tmp_path, "export", run_id, "--out", str(target)) == 0
        frames[suffix] = duckdb.sql(f"select * from '{target}'").df()
    assert len(frames["csv"]) == 24  # 12 cases x 2 variants, each exactly once
    assert set(frames["parquet"]["status"]) == {"scored"}
    for frame in frames.values():
        assert frame[["variant", "case_id"]].duplicated().sum() == 0
    merged = frames["csv"].merge(frames["parquet"], on=["variant", "case_id"])
    pd.testing.assert_series_equal(merged["answer.f1_x"], merged["answer.f1_y"],
                                   check_names=False)

    assert _run(tmp_path, "query", run_id,
                'select variant, count(*) n from cases group by 1 order by 1') == 0
    assert "hybrid" in capsys.readouterr().out
    assert _run(tmp_path, "runs") == 0
    assert run_id in capsys.readouterr().out

    # A second run answers every case from the response cache.
    assert _run(tmp_path, "run", str(spec)) == 0
    second = _run_id(tmp_path)
    journal = tmp_path / "data" / "runs" / second / "journal.jsonl"
    finished = [json.loads(line) for line in journal.read_text().splitlines()]
    cached = [e["data"]["cached"] for e in finished if e["type"] == "case_finished"]
    assert len(cached) == 24 and all(cached)


def test_failed_gate_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, gates='"retrieval.hit@1" = { min = 1.01 }')
    assert _run(tmp_path, "run", str(spec)) == 1
    assert "FAIL" in capsys.readouterr().out
    assert _run(tmp_path, "show", _run_id(tmp_path)) == 1


@pytest.mark.parametrize(
    ("extra", "gates", "message"),
    [
        ("concurrency = 3", "", "concurrency"),  # a [run] key at top level: unknown field
        ("", '"retrieval.hit@1" = { minimum = 1 }', "minimum"),
    ],
)
def test_bad_spec_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, gates: str, message: str
) -> None:
    assert _run(tmp_path, "run", str(_spec(tmp_path, gates=gates, extra=extra))) == 2
    err = capsys.readouterr().err
    assert "spec.toml" in err and message in err and "Traceback" not in err


def test_bad_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "run", str(tmp_path / "missing.toml")) == 2
    assert "not found" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    assert _run(tmp_path, "run", str(broken)) == 2
    assert "invalid TOML" in capsys.readouterr().err
    assert _run(tmp_path, "export", "../../etc") == 2
    assert "invalid run id" in capsys.readouterr().err
    assert _run(tmp_path, "show", "20990101-000000-abcdef") == 2
    assert "no run" in capsys.readouterr().err
