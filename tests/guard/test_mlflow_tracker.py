"""MLflow logging end to end: `guard run --traces` on the demo (hashing embedder, lexical and
hybrid), into a real MLflow SQLite store in tmp_path, read back with MLflow's own API."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from demo_spec import DEMO, demo_matrix_spec
from mlflow import MlflowClient

from guard.adapters.mlflow_tracker import MLflowRunTracker, default_tracking_uri, metric_key
from guard.compare import LocalRunArchive
from guard.entrypoints.cli import main as guard_main
from guard.journal import read_results
from guard.runs import RunStore
from guard.service import GuardService, RunOutcome

pytestmark = pytest.mark.integration
CASES = 20


@dataclass
class Logged:
    root: Path
    data: Path
    uri: str
    run_id: str
    outcome: RunOutcome
    manifest: dict[str, object]


def _spec(folder: Path) -> Path:
    header = "\n".join([
        'description = "demo, hashing embedder"',
        f'tools_file = "{DEMO / "tools.json"}"',
        f"limit = {CASES}",
        'webhook_url = "http://127.0.0.1:9/secret-hook-token"',
    ])
    return demo_matrix_spec(folder, "tracker-demo", header=header,
                            gates='"retrieval.hit@5" = { min = 0.5 }')


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    root = tmp_path_factory.mktemp("tracker")
    data = root / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # reports/ land here
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = guard_main(["--data-dir", str(data), "run", str(_spec(root)), "--traces",
                           "--tag", "nightly"])
        assert code == 0
        assert os.environ.get("MLFLOW_TRACKING_URI") is None  # the trace step restored it
        service = GuardService(RunStore(data / "runs"), None)
        run_id = service.store.run_ids()[0]
        yield Logged(root, data, default_tracking_uri(data, {}), run_id,
                     service.outcome(run_id), service.store.manifest(run_id))


@pytest.fixture
def client(logged: Logged) -> Iterator[MlflowClient]:
    mlflow.set_tracking_uri(logged.uri)
    try:
        yield MlflowClient(tracking_uri=logged.uri)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def _runs(logged: Logged) -> pd.DataFrame:
    runs = mlflow.search_runs(experiment_names=["tracker-demo"], order_by=["params.variant"])
    assert isinstance(runs, pd.DataFrame)
    return runs


def test_default_store_is_a_sqlite_file_in_the_data_dir(logged: Logged) -> None:
    assert logged.uri == "sqlite:///" + str((logged.data / "mlflow.db").resolve())
    assert (logged.data / "mlflow.db").is_file()
    assert (logged.data / "mlartifacts" / "tracker-demo").is_dir()
    assert not (logged.root / "mlflow.db").exists() and not (logged.root / "mlruns").exists()
    assert default_tracking_uri(logged.data, {"MLFLOW_TRACKING_URI": "http://x:5000"}) == \
        "http://x:5000"


def test_one_run_per_variant_with_params_and_tags(logged: Logged, client: MlflowClient) -> None:
    runs = _runs(logged)
    assert list(runs["params.variant"]) == ["hybrid", "lexical"]
    assert list(runs["params.retriever.mode"]) == ["hybrid", "lexical"]
    assert set(runs["params.retriever.k"]) == {"5"}
    assert set(runs["params.embedder"]) == {"hashing"}
    assert set(runs["params.provider"]) == {"local"}
    assert set(runs["params.model"]) == {"local-extractive"}
    dataset = logged.manifest["dataset"]
    assert isinstance(dataset, dict)
    assert set(runs["params.dataset.hash"]) == {dataset["hash"]}
    assert set(runs["params.dataset.name"]) == {dataset["name"]}
    assert set(runs["params.judge.model"]) == {"none"}
    assert set(runs["params.code_version"]) == {logged.manifest["code_version"]}
    assert set(runs["params.truthguard.run_id"]) == {logged.run_id}
    assert set(runs["tags.truthguard.run_id"]) == {logged.run_id}
    assert set(runs["tags.truthguard.nightly"]) == {"true"}
    assert set(runs["tags.truthguard.baseline"]) == {"false"}
    assert set(runs["tags.truthguard.tenants"]) == {"hr,it"}
    assert set(runs["tags.truthguard.tenant.hr"]) == {"true"}
    assert set(runs["tags.truthguard.gates"]) == {"passed"}
    assert set(runs["status"]) == {"FINISHED"}
    assert set(runs["tags.mlflow.runName"]) == {f"{v} {logged.run_id}"
                                                for v in ("hybrid", "lexical")}


def test_metrics_are_the_summaries_with_their_intervals(logged: Logged,
                                                        client: MlflowClient) -> None:
    runs = _runs(logged).set_index("params.variant")
    checked = 0
    for summary in logged.outcome.summaries:
        key = f"metrics.{metric_key(summary.metric)}"
        assert runs.loc[summary.variant, key] == pytest.approx(summary.ci.mean)
        assert runs.loc[summary.variant, f"{key}.n"] == summary.ci.n
        if summary.ci.low is not None:
            assert runs.loc[summary.variant, f"{key}.ci_low"] == pytest.approx(summary.ci.low)
            assert runs.loc[summary.variant, f"{key}.ci_high"] == pytest.approx(summary.ci.high)
        checked += 1
    assert checked > 40
    assert "metrics.retrieval.nDCG_at_5" in runs.columns
    assert not any("@" in c for c in runs.columns)
    assert (runs["metrics.cases.scored"] == CASES).all()
    assert (runs["metrics.latency_ms.p95"] > 0).all()
    assert (runs["metrics.tokens.prompt"] > 0).all()


def test_case_table_reads_back_with_load_table(logged: Logged, client: MlflowClient) -> None:
    runs = _runs(logged)
    mlflow.set_experiment("tracker-demo")
    table = mlflow.load_table("cases.json", run_ids=list(runs["run_id"]))
    assert len(table) == 2 * CASES
    assert {"variant", "case_id", "answer", "retrieval.nDCG@5", "answer.f1"} <= set(table)
    local = logged.outcome.frame.set_index(["variant", "case_id"]).sort_index()
    table = table.set_index(["variant", "case_id"]).sort_index()
    assert list(table.index) == list(local.index)
    pd.testing.assert_series_equal(table["retrieval.nDCG@5"], local["retrieval.nDCG@5"],
                                   check_dtype=False, atol=1e-9)
    assert list(table["answer"]) == list(local["answer"])


def test_traces_have_retrieval_fusion_generation_and_judging_spans(
        logged: Logged, client: MlflowClient) -> None:
    runs = _runs(logged).set_index("params.variant")
    experiment_id = runs["experiment_id"].iloc[0]
    results = {(r.variant, r.case_id): r for r in read_results(
        logged.data / "runs" / logged.run_id / "journal.jsonl")}
    for variant, arms in (("hybrid", {"retrieval.dense", "retrieval.lexical", "fusion"}),
                          ("lexical", {"retrieval.lexical", "retrieval"})):
        traces = mlflow.search_traces(locations=[experiment_id], return_type="list",
                                      run_id=runs.loc[variant, "run_id"], max_results=100)
        assert len(traces) == CASES
        for trace in traces:
            names = {span.name for span in trace.data.spans}
            assert arms | {"system_under_test", "generation", "judging"} <= names
            case_id = trace.info.tags["truthguard.case_id"]
            result = results[(variant, case_id)]
            assert result.response is not None
            root = next(s for s in trace.data.spans if s.parent_id is None)
            assert (root.end_time_ns - root.start_time_ns) / 1e6 == pytest.approx(
                result.latency_ms, abs=0.01)
            usage = trace.info.token_usage
            assert usage is not None
            assert usage["input_tokens"] == result.response.prompt_tokens
            judging = next(s for s in trace.data.spans if s.name == "judging")
            assert judging.outputs["retrieval.MRR"] == result.metrics["retrieval.MRR"]
            # Stage spans last as long as the pipeline measured; judging as long as scoring.
            spans = {s.name: s for s in trace.data.spans}
            timings = result.response.timings_ms
            stages = {"retrieval.lexical": "lexical", "generation": "generation"}
            if variant == "hybrid":
                stages |= {"retrieval.dense": "dense", "fusion": "fusion",
                           "embedding": "embedding"}
            for name, stage in stages.items():
                assert _ms(spans[name]) == pytest.approx(timings[stage], abs=0.01), name
            assert timings["generation"] > 0
            assert _ms(spans["judging"]) == pytest.approx(result.score_ms, abs=0.01)


def _ms(span: mlflow.entities.Span) -> float:
    return float(span.end_time_ns - span.start_time_ns) / 1e6


def test_reports_manifest_and_archive(logged: Logged, client: MlflowClient) -> None:
    runs = _runs(logged)
    mlrun = runs["run_id"].iloc[0]
    reports = {a.path for a in client.list_artifacts(mlrun, "report")}
    assert reports == {f"report/{logged.run_id}.html", f"report/{logged.run_id}.md"}
    assert (logged.root / "reports" / f"{logged.run_id}.html").is_file()

    tracker = MLflowRunTracker(logged.uri)
    manifest = tracker.manifest(logged.run_id)
    assert manifest["spec"]["webhook_url"] == "<redacted>"
    assert "secret-hook-token" not in json.dumps(manifest)
    [archived] = tracker.runs("tracker-demo")
    assert (archived.run_id, archived.variants, archived.tags) == (
        logged.run_id, ("hybrid", "lexical"), ("nightly",))
    local = LocalRunArchive(RunStore(logged.data / "runs")).cases(logged.run_id)
    remote = tracker.cases(logged.run_id)
    key = ["variant", "case_id"]
    local, remote = (f.sort_values(key).reset_index(drop=True) for f in (local, remote))
    pd.testing.assert_frame_equal(remote[key], local[key])
    for column in ("retrieval.MRR", "answer.f1", "latency_ms"):
        pd.testing.assert_series_equal(remote[column], local[column], atol=1e-9)


def test_logging_again_replaces_the_runs(logged: Logged, client: MlflowClient) -> None:
    before = set(_runs(logged)["run_id"])
    tracker = MLflowRunTracker(logged.uri)
    results = list(read_results(logged.data / "runs" / logged.run_id / "journal.jsonl"))
    again = tracker.log_run(logged.outcome, logged.manifest, results)
    runs = _runs(logged)
    assert set(runs["run_id"]) == set(again.values()) and not before & set(again.values())
    assert len(tracker.cases(logged.run_id)) == 2 * CASES  # no appended duplicate rows


def test_metric_keys_are_valid_mlflow_names() -> None:
    assert metric_key("retrieval.nDCG@10") == "retrieval.nDCG_at_10"
    assert metric_key("retrieval.dense.R@5") == "retrieval.dense.R_at_5"
    assert metric_key("judge.faithfulness") == "judge.faithfulness"
    assert metric_key("odd/name:ü") == "odd_name__"
