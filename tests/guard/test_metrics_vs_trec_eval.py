"""Our retrieval metrics against pytrec_eval on real SciFact runs of all three modes.

The runs come from the `rag` CLI itself (ingest + retrieve as a user would), with the hashing
embedder standing in for MiniLM so the test needs no model; the metric code is what is tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytrec_eval

from guard.metrics.retrieval import rank_by_score, retrieval_metrics
from rag.entrypoints.cli import main as rag_main

pytestmark = pytest.mark.integration
SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact"
MEASURES = {"P_1", "P_5", "P_10", "recall_5", "recall_10", "recall_100", "ndcg_cut_5",
            "ndcg_cut_10", "recip_rank", "map"}
OURS = {"P_1": "P@1", "P_5": "P@5", "P_10": "P@10", "recall_5": "R@5", "recall_10": "R@10",
        "recall_100": "R@100", "ndcg_cut_5": "nDCG@5", "ndcg_cut_10": "nDCG@10",
        "recip_rank": "MRR", "map": "MAP"}


def _qrels() -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, grade = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(grade)
    return qrels


def _run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        run.setdefault(qid, {})[did] = float(score)
    return run


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not SCIFACT.exists():
        pytest.skip(f"reference data not found at {SCIFACT}")
    root = tmp_path_factory.mktemp("scifact")
    config = root / "truthguard.toml"
    config.write_text(f'data_dir = "{root / "data"}"\n[defaults]\nembedder = "hashing"\n'
                      f'[tenants.scifact]\ncorpus = "{SCIFACT / "corpus.jsonl"}"\n')
    assert rag_main(["--config", str(config), "ingest"]) == 0
    files = {}
    for mode in ("lexical", "dense", "hybrid"):
        files[mode] = root / f"{mode}.run"
        assert rag_main(["--config", str(config), "retrieve", "--tenant", "scifact",
                         "--queries", str(SCIFACT / "queries.jsonl"), "--mode", mode,
                         "--depth", "100", "--out", str(files[mode])]) == 0
    return files


@pytest.mark.parametrize("mode", ["lexical", "dense", "hybrid"])
def test_every_measure_of_every_query_equals_trec_eval(run_files, mode: str) -> None:
    qrels = _qrels()
    run = _run(run_files[mode])
    expected = pytrec_eval.RelevanceEvaluator(qrels, MEASURES).evaluate(run)
    compared = 0
    for qid, judged in qrels.items():
        ours = retrieval_metrics(rank_by_score(run.get(qid, {})), judged, ks=(1, 5, 10, 100))
        for measure, name in OURS.items():
            theirs = expected.get(qid, {}).get(measure, 0.0)  # absent from the run: 0
            assert ours[name] == pytest.approx(theirs, abs=1e-6), (mode, qid, name)
            compared += 1
    assert compared == len(qrels) * len(OURS)
