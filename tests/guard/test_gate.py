"""`guard gate` and `guard compare` on real SciFact retrieval: a deliberately degraded variant
(k=1 instead of k=10) fails the drop gate, a re-run of the healthy variant passes it.

Fast suite: the first 60 judged SciFact queries against the full 5,183-abstract corpus, lexical
mode (BM25), hashing embedder (no model load). The full 300-query version, hybrid with the
real MiniLM embedder, is marked slow.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from guard.adapters.webhook import post_json
from guard.compare import compare_frames, holm
from guard.entrypoints.cli import main as guard_main
from guard.importers import import_dataset
from guard.runs import RunStore

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
needs_data = pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"no SciFact at {SCIFACT}")


# --------------------------------------------------------------------------- a webhook receiver


@dataclass
class Hook:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    state = Hook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(json.loads(body))
            self.send_response(state.status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- the SciFact runs


def _spec(folder: Path, name: str, k: int, webhook: str, *, mode: str = "lexical",
          embedder: str = "hashing", rag: str | None = None) -> Path:
    index = f'[rag]\ndata_dir = "{folder / "index"}"\n[rag.defaults]\nembedder = "{embedder}"\n' \
            f'[rag.tenants.scifact]\ncorpus = "{SCIFACT / "corpus.jsonl"}"\n'
    spec = folder / f"{name}-k{k}.toml"
    spec.write_text(f"""
name = "{name}"
dataset = "{folder / 'golden.jsonl'}"
webhook_url = "{webhook}"
confidence = 0.95
{f'rag_config = "{rag}"' if rag else ''}
{'ingest = false' if rag else ''}
[run]
concurrency = 4
ks = [1, 10]
ragas = false
[[variants]]
name = "{mode}"
mode = "{mode}"
k = {k}
[gates]
"retrieval.nDCG@10" = {{ min = 0.3, max_drop = 0.05 }}
"retrieval.R@10" = {{ max_drop = 0.05 }}
{'' if rag else index}""")
    return spec


@dataclass
class Runs:
    folder: Path
    data: Path
    baseline: str
    degraded: str
    rerun: str


def _guard(data: Path, *args: str) -> int:
    return guard_main(["--data-dir", str(data), *args])


def _run(data: Path, *args: str) -> str:
    """`guard run` that must pass; the id of the run it made. (Ids sort by second, then at
    random: two runs in one second cannot be told apart by sorting.)"""
    before = set(RunStore(data / "runs").run_ids())
    assert _guard(data, "run", *args) == 0
    [made] = set(RunStore(data / "runs").run_ids()) - before
    return made


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, hook: Hook) -> Iterator[Runs]:
    if not SCIFACT.is_dir():
        pytest.skip(f"no SciFact at {SCIFACT}")
    folder = tmp_path_factory.mktemp("gate")
    data = folder / "data"
    import_dataset("beir", {"queries": SCIFACT / "queries.jsonl",
                            "qrels": SCIFACT / "qrels" / "test.tsv"},
                   folder / "golden.jsonl", tenant="scifact", limit=60)
    healthy = _spec(folder, "scifact-nightly", 10, hook.url)
    degraded = _spec(folder, "scifact-nightly", 1, hook.url)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        baseline = _run(data, str(healthy), "--tag", "baseline")
        bad = _run(data, str(degraded), "--tag", "nightly")  # floors still pass
        rerun = _run(data, str(healthy), "--tag", "nightly", "--no-cache")
        yield Runs(folder, data, baseline, bad, rerun)


@needs_data
def test_degraded_variant_fails_the_gate(runs: Runs, hook: Hook,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    hook.received.clear()
    assert _guard(runs.data, "gate", runs.degraded) == 1
    out = capsys.readouterr().out
    assert f"against baseline {runs.baseline}" in out
    assert "FAIL lexical retrieval.nDCG@10 max_drop" in out
    assert "FAIL lexical retrieval.R@10 max_drop" in out
    assert "pass lexical retrieval.nDCG@10 min" in out
    assert "regressed (" in out and "->0.000" in out  # case ids with before -> after scores

    [payload] = hook.received
    assert payload["passed"] is False
    assert payload["run_id"] == runs.degraded and payload["baseline_run_id"] == runs.baseline
    assert "TruthGuard gate FAILED" in payload["text"]
    failed = [g for g in payload["gates"] if not g["passed"]]
    assert {g["metric"] for g in failed} == {"retrieval.nDCG@10", "retrieval.R@10"}
    assert all(g["p_value"] < 0.05 and g["regressed"] for g in failed)


@needs_data
def test_rerun_of_the_healthy_variant_passes(runs: Runs, hook: Hook,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    hook.received.clear()
    assert _guard(runs.data, "gate", runs.rerun) == 0
    out = capsys.readouterr().out
    assert "gate PASSED" in out and "FAIL" not in out
    assert "mean change +0.0000 over 60 shared cases (p=1)" in out
    assert hook.received == []  # only failed gates notify
    # an explicit baseline: the degraded run; against it the healthy run improves
    assert _guard(runs.data, "gate", runs.rerun, "--baseline", runs.degraded) == 0
    assert "improved (" in capsys.readouterr().out


@needs_data
def test_the_first_baseline_has_no_baseline(runs: Runs,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _guard(runs.data, "gate", runs.baseline) == 0
    assert "drop gates skipped" in capsys.readouterr().out


@needs_data
def test_baseline_is_found_in_mlflow_when_not_on_disk(runs: Runs, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"  # as on a fresh CI runner with a shared tracking store
    shutil.copytree(runs.data, data, ignore=shutil.ignore_patterns("lancedb", "lexical"))
    shutil.rmtree(data / "runs" / runs.baseline)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert _guard(data, "gate", runs.degraded, "--no-webhook") == 1
        assert f"against baseline {runs.baseline}" in capsys.readouterr().out
        assert _guard(data, "gate", runs.rerun) == 0


@needs_data
def test_compare_marks_the_significantly_better_run(runs: Runs,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _guard(runs.data, "compare", "--runs", runs.baseline, runs.degraded,
                  "--metric", "retrieval.nDCG@10", "retrieval.R@10", "retrieval.hit@1") == 0
    out = capsys.readouterr().out
    better, worse = f"lexical@{runs.baseline[-6:]}", f"lexical@{runs.degraded[-6:]}"
    assert f"{better} > {worse} on retrieval.nDCG@10" in out
    assert f"{better} > {worse} on retrieval.R@10" in out
    assert "on retrieval.hit@1" not in out  # k=1 and k=10 share the first hit: no difference
    assert "▲B" in out


def test_holm_adjusts_in_step_down_order() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([]) == []


def test_compare_frames_on_identical_columns_finds_nothing() -> None:
    import pandas as pd

    rows = [{"variant": v, "case_id": str(i), "repeat": 0, "status": "scored",
             "m.score": (i % 3) / 2} for v in ("a", "b") for i in range(30)]
    comparison = compare_frames({"20260101-000000-aaaaaa": pd.DataFrame(rows)}, ["m.score"])
    assert comparison.wins == ()
    assert comparison.cells[("m.score", "a")].mean == comparison.cells[("m.score", "b")].mean


def test_webhook_failures_are_reported_not_raised(hook: Hook) -> None:
    assert post_json("http://127.0.0.1:9/nothing-listens", {"text": "x"}, timeout=2) is not None
    hook.status = 500
    try:
        problem = post_json(hook.url, {"text": "x"})
    finally:
        hook.status = 200
    assert problem is not None and problem.startswith("HTTP 500")
    assert post_json(hook.url, {"text": "y"}) is None


# --------------------------------------------------------------------------- full SciFact


@needs_data
@pytest.mark.slow
def test_full_scifact_hybrid_k1_fails_and_k10_rerun_passes(
        tmp_path: Path, hook: Hook, capsys: pytest.CaptureFixture[str]) -> None:
    """All 300 queries, hybrid retrieval with the real all-MiniLM-L6-v2 embedder. Reuses the
    index of scripts/reproduce_scifact.py when present (embedding the corpus takes ~5 min)."""
    repro = REPO / "data" / "scifact-repro" / "truthguard.toml"
    import_dataset("beir", {"queries": SCIFACT / "queries.jsonl",
                            "qrels": SCIFACT / "qrels" / "test.tsv"},
                   tmp_path / "golden.jsonl", tenant="scifact")
    rag = str(repro) if repro.is_file() else None
    healthy, degraded = (_spec(tmp_path, "scifact-full", k, hook.url, mode="hybrid",
                               embedder="minilm", rag=rag) for k in (10, 1))
    data = tmp_path / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        _run(data, str(healthy), "--tag", "baseline")
        assert _guard(data, "gate", _run(data, str(degraded)), "--no-webhook") == 1
        assert _guard(data, "gate", _run(data, str(healthy), "--no-cache")) == 0
    out = capsys.readouterr().out
    assert "over 300 shared cases" in out
