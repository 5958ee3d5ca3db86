"""Use cases: run (or resume) an experiment, and read a run's results back.

Shared by the CLI and the dashboard server; the adapters come from `guard.bootstrap`.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from guard.bootstrap import build_judge, build_wiring, describe_variants, rag_config_for
from guard.cache import ResponseCache
from guard.engine import Listener, RunEngine, warm_scoring
from guard.gates import GateResult, check_floors
from guard.golden import GoldenCase, GoldenDataset, dataset_hash, load_dataset
from guard.journal import Journal
from guard.results import MetricSummary, cases_frame, summarize
from guard.runs import RunStore
from guard.spec import ExperimentSpec, parse_spec
from rag.config import RagConfig
from rag.errors import InputError

IngestProgress = Callable[[str, int, int], None]  # tenant, done, total


@dataclass
class RunOutcome:
    run_id: str
    status: str
    spec: ExperimentSpec
    frame: pd.DataFrame
    summaries: list[MetricSummary]
    gates: list[GateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_spec_dataset(spec: ExperimentSpec, config: RagConfig) -> GoldenDataset:
    needs_config = any(v.system == "pipeline" for v in spec.expanded_variants())
    known = set(config.tenants) if needs_config else None
    if spec.dataset is not None:
        tools = spec.path(spec.tools_file) if spec.tools_file else None
        dataset = load_dataset(spec.path(spec.dataset), tools_file=tools, known_tenants=known)
    else:
        dataset = _imported(spec, known)
    if spec.limit:
        cases = dataset.cases[: spec.limit]
        dataset = replace(dataset, cases=cases, content_hash=dataset_hash(cases))
    return dataset


def _imported(spec: ExperimentSpec, known: set[str] | None) -> GoldenDataset:
    from guard.importers import beir_cases, bfcl_cases, squad_cases

    cases: list[GoldenCase] = []
    for item in spec.dataset_import:
        if known is not None and item.tenant not in known:
            raise InputError(f"[[dataset_import]] tenant {item.tenant!r} is not configured "
                             f"(configured: {', '.join(sorted(known))})", location=spec.source)

        def path(value: str | None) -> Path | None:
            return spec.path(value) if value else None

        if item.kind == "beir":
            result = beir_cases(spec.path(item.queries or ""), spec.path(item.qrels or ""),
                                tenant=item.tenant, corpus_path=path(item.corpus))
        elif item.kind == "squad":
            result = squad_cases(spec.path(item.qa or ""), tenant=item.tenant,
                                 corpus_path=path(item.corpus))
        else:
            result = bfcl_cases(spec.path(item.questions or ""), path(item.answers),
                                tenant=item.tenant)
        cases.extend(result.cases)
    return GoldenDataset(spec.name, Path(spec.source), tuple(cases), dataset_hash(cases))


class GuardService:
    def __init__(self, store: RunStore, cache_path: Path | None) -> None:
        self.store = store
        self.cache_path = cache_path

    def prepare(self, spec: ExperimentSpec, tags: Sequence[str] = ()) -> str:
        """Create a run: validate everything, write its manifest, return its id."""
        config = rag_config_for(spec)
        dataset = load_spec_dataset(spec, config)
        run_id = self.store.new_run_id()
        self.store.write_manifest(run_id, {
            "run_id": run_id,
            "experiment": spec.name,
            "spec": spec.model_dump(exclude={"source", "base_dir"}),
            "spec_source": spec.source,
            "base_dir": spec.base_dir,
            "dataset": {"name": dataset.name, "path": str(dataset.path),
                        "hash": dataset.content_hash, "cases": len(dataset.cases)},
            "tenants": list(dataset.tenants()),
            "variants": [v.name for v in spec.expanded_variants()],
            "variant_params": describe_variants(spec, config),
            "total": len(dataset.cases) * spec.run.repeat * len(spec.expanded_variants()),
            "tags": sorted({*spec.tags, *tags}),
            "code_version": code_version(),
            "created": time.time(),
        })
        return run_id

    def spec_of(self, run_id: str) -> ExperimentSpec:
        manifest = self.store.manifest(run_id)
        return parse_spec(manifest["spec"], manifest.get("spec_source", run_id),
                          Path(manifest["base_dir"]))

    async def execute(
        self,
        run_id: str,
        listeners: Sequence[Listener] = (),
        ingest_progress: IngestProgress | None = None,
        engine_ready: Callable[[RunEngine], None] | None = None,
    ) -> RunOutcome:
        """Run, or resume, a prepared run until every case has a journaled result."""
        manifest = self.store.manifest(run_id)
        spec = self.spec_of(run_id)
        config = rag_config_for(spec)
        dataset = load_spec_dataset(spec, config)
        if dataset.content_hash != manifest["dataset"]["hash"]:
            raise InputError(
                f"dataset {dataset.path} changed since run {run_id} started "
                f"({manifest['dataset']['hash']} -> {dataset.content_hash}); start a new run"
            )
        wiring = build_wiring(spec, config)
        journal = Journal.open(self.store.journal_path(run_id), run_id)
        cache = ResponseCache(self.cache_path) if self.cache_path else None
        pool = score_pool(spec.run.score_workers)
        try:
            if spec.ingest:
                await ingest_tenants(wiring.pipelines.values(), config, dataset.tenants(),
                                     ingest_progress)
            engine = RunEngine(journal, cache, build_judge(spec), listeners, score_pool=pool)
            if engine_ready:
                engine_ready(engine)
            meta = {"experiment": spec.name, "dataset": manifest["dataset"],
                    "tags": manifest.get("tags", [])}
            status = await engine.run(dataset.cases, wiring.variants, meta)
        finally:
            journal.close()
            if cache:
                cache.close()
            if pool:
                pool.shutdown(cancel_futures=True)
            await wiring.aclose()
        return self.outcome(run_id, status)

    def outcome(self, run_id: str, status: str | None = None) -> RunOutcome:
        spec = self.spec_of(run_id)
        frame = cases_frame([self.store.journal_path(run_id)])
        summaries = summarize(frame, spec.confidence)
        return RunOutcome(run_id, status or self.store.info(run_id).status, spec, frame,
                          summaries, check_floors(summaries, spec.gates))


def score_pool(workers: int) -> Executor | None:
    """Processes for the CPU-bound metrics, or None to score on the event loop. forkserver:
    forking a process that runs threads (the journal's fsync, the cache) is unsafe."""
    if workers == 0:
        return None
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
    for _ in range(workers):  # start the workers now, so they import while the run sets up
        pool.submit(warm_scoring)
    return pool


async def ingest_tenants(
    pipelines: Any, config: RagConfig, tenants: Sequence[str],
    progress: IngestProgress | None = None,
) -> None:
    """Index each tenant's configured corpus once per pipeline (idempotent upsert)."""
    from rag.adapters.loaders import load_corpus

    corpora = {}
    for tenant in tenants:
        settings = config.tenant(tenant)
        if settings.corpus:
            corpora[tenant] = load_corpus(config.resolve(settings.corpus))
    seen: set[int] = set()
    for pipeline in pipelines:
        if id(pipeline.vectors) in seen:
            continue
        seen.add(id(pipeline.vectors))
        for tenant, docs in corpora.items():
            callback = None
            if progress is not None:
                def callback(done: int, total: int, tenant: str = tenant) -> None:
                    progress(tenant, done, total)
            await pipeline.ingest(tenant, docs, progress=callback)
