"""MLflow as the run tracker: one MLflow run per variant of a guard run, read back as an archive.

Written per variant, in the MLflow experiment named by the spec (`spec.name`), as an MLflow run
named `<variant> <run_id>`:

- params: the guard run id, system, provider, model, embedder, retriever settings
  (`retriever.mode`, `.k`, `.fusion`, `.rrf_k`, ...), dataset name, path, content hash and size,
  judge model, code version, confidence, repeat, ks;
- metrics: per guard metric its mean, `<metric>.ci_low`, `<metric>.ci_high` and `<metric>.n`
  (names sanitised by `metric_key`: `@` becomes `_at_`), case counts per status, latency
  percentiles, cost and token totals;
- tags: `truthguard.run_id`, `.experiment`, `.variant`, `.status`, `.created`, `.tags`,
  `.nightly`, `.baseline`, `.tenants`, `.tenant.<id>`, `.tag.<tag>`, `.gates` (floors);
- artifacts: the per-case table `cases.json` (`MlflowClient.log_table`), the run's manifest
  (`truthguard/manifest.json`, webhook URL redacted), the reports (`report/<run_id>.html|.md`);
- traces (optional): one per case, built after the fact from the journaled responses.

Logging a run again replaces its MLflow runs (the old ones are deleted), so a resumed or
re-reported run never duplicates rows in the case tables.

MLflow 3.17 pitfalls handled here:

- `MlflowClient.load_table` finds runs with the fluent `mlflow.search_runs`, i.e. through the
  *global* tracking URI, not the client's: tables are downloaded with the client instead.
- The tracing exporter is bound to the global tracking URI, whatever client starts the trace:
  traces are written with the global URI pointed at this store, under a lock, flushed, and the
  previous URI restored. Do not log traces concurrently with other fluent MLflow use.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pandas as pd

from guard.compare import ArchivedRun
from guard.domain import CaseResult, CaseStatus
from guard.results import BASE_COLUMNS, status_counts
from guard.runs import RUN_ID_PATTERN
from guard.service import RunOutcome
from rag.errors import InputError, StorageError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

TABLE_FILE = "cases.json"
MANIFEST_FILE = "truthguard/manifest.json"
REPORT_DIR = "report"
TAG_RUN_ID = "truthguard.run_id"
RETRIEVER_KEYS = ("mode", "k", "fusion", "rrf_k", "dense_weight", "candidates", "lexical_engine")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\- ]")
_TRACE_LOCK = threading.Lock()
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def metric_key(name: str) -> str:
    """An MLflow-safe metric or param key: `@` -> `_at_`; anything outside letters, digits,
    `_ - . space` -> `_` (`/` too, so a key never reads as a path); at most 250 characters."""
    key = _BAD_KEY_CHARS.sub("_", name.replace("@", "_at_")).strip()
    return key[:250] or "_"


def default_tracking_uri(data_dir: Path, environ: Mapping[str, str]) -> str:
    """`MLFLOW_TRACKING_URI` when set, else a SQLite file in the data folder (absolute path)."""
    override = environ.get("MLFLOW_TRACKING_URI", "").strip()
    if override:
        return override
    return "sqlite:///" + str((Path(data_dir) / "mlflow.db").resolve())


def local_store_path(tracking_uri: str) -> Path | None:
    """The database file or folder of a local tracking URI (sqlite, file, bare path), else None."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).resolve()
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "file":
        return Path(parsed.path).resolve()
    if parsed.scheme == "" and tracking_uri:
        return Path(tracking_uri).resolve()
    return None


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _redacted(manifest: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(manifest, default=str))
    spec = out.get("spec", {})
    if spec.get("webhook_url"):
        spec["webhook_url"] = "<redacted>"
    return dict(out)


class MLflowRunTracker:
    """Logs guard runs to MLflow and reads them back (a `guard.compare.RunArchive`).

    Everything goes through one `MlflowClient(tracking_uri=...)` with explicit run ids; no
    fluent active run. With a local store (SQLite or file), experiments this tracker creates
    keep their artifacts in `artifact_root` (default: `mlartifacts/` beside the database), not
    in the working directory.
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        store = local_store_path(tracking_uri)
        if artifact_root is None and store is not None:
            artifact_root = (store.parent if store.suffix else store) / "mlartifacts"
        self.artifact_root = artifact_root
        self._client: MlflowClient | None = None

    @classmethod
    def for_data_dir(cls, data_dir: Path, environ: Mapping[str, str]) -> MLflowRunTracker:
        return cls(default_tracking_uri(data_dir, environ))

    def exists(self) -> bool:
        """False when the store is a local file that was never created (nothing logged yet)."""
        store = local_store_path(self.tracking_uri)
        return store is None or store.exists()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except (MlflowException, OSError) as exc:
            raise StorageError(f"MLflow ({self.tracking_uri}): cannot {action}: {exc}") from exc

    # ----------------------------------------------------------------------- writing

    def experiment_id(self, name: str, *, create: bool) -> str | None:
        """The id of the experiment `name` (restored if deleted), created when asked."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"look up experiment {name!r}"):
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                if not create:
                    return None
                location = (self.artifact_root / name).as_uri() if self.artifact_root else None
                try:
                    return str(self.client.create_experiment(
                        name, artifact_location=location, tags={"truthguard": "true"}))
                except MlflowException:
                    experiment = self.client.get_experiment_by_name(name)  # created meanwhile
                    if experiment is None:
                        raise
            if experiment.lifecycle_stage == "deleted":
                if not create:
                    return None
                self.client.restore_experiment(experiment.experiment_id)
            return str(experiment.experiment_id)

    def log_run(
        self,
        outcome: RunOutcome,
        manifest: Mapping[str, Any],
        results: Iterable[CaseResult] = (),
        reports: Sequence[Path] = (),
        traces: bool = False,
    ) -> dict[str, str]:
        """Log every variant of a finished run; return variant -> MLflow run id.

        `results` (the journal's case results) supply the observed model and, with `traces`,
        one MLflow trace per case.
        """
        spec = outcome.spec
        run_id = outcome.run_id
        experiment_id = self.experiment_id(spec.name, create=True)
        assert experiment_id is not None
        by_variant: dict[str, list[CaseResult]] = {}
        for result in results:
            by_variant.setdefault(result.variant, []).append(result)
        frame = outcome.frame
        variants = list(dict.fromkeys([*manifest.get("variants", ()),
                                       *(sorted(frame["variant"].unique())
                                         if not frame.empty else [])]))
        params_of = {p["name"]: p for p in manifest.get("variant_params", ())}
        judge_model = spec.judge.model if spec.judge else "none"
        out: dict[str, str] = {}
        traced: list[tuple[str, list[CaseResult]]] = []
        with self._errors(f"log run {run_id}"):
            for old in self.mlflow_runs(run_id, [experiment_id]):
                self.client.delete_run(old.info.run_id)
            for variant in variants:
                rows = frame[frame["variant"] == variant] if not frame.empty else frame
                cases = by_variant.get(variant, [])
                models = sorted({r.response.model for r in cases if r.response and
                                 r.response.model})
                params = self._params(outcome, manifest, params_of.get(variant, {}), variant,
                                      judge_model, models)
                mlrun = self.client.create_run(
                    experiment_id,
                    start_time=int(float(manifest.get("created", time.time())) * 1000),
                    tags=self._tags(outcome, manifest, variant),
                    run_name=f"{variant} {run_id}",
                )
                mlrun_id = mlrun.info.run_id
                self._log_values(mlrun_id, params, self._metrics(outcome, variant, rows))
                self.client.log_table(mlrun_id, data=_table(rows), artifact_file=TABLE_FILE)
                self.client.log_text(mlrun_id, json.dumps(_redacted(manifest), indent=2),
                                     MANIFEST_FILE)
                for path in reports:
                    self.client.log_artifact(mlrun_id, str(path), REPORT_DIR)
                if traces and cases:
                    traced.append((mlrun_id, cases))
                ended = [float(t) for t in rows.get("finished_at", []) if _finite(t)]
                status = {"finished": "FINISHED", "cancelled": "KILLED"}.get(outcome.status,
                                                                             "FAILED")
                self.client.set_terminated(mlrun_id, status=status,
                                           end_time=int(max(ended) * 1000) if ended else None)
                out[variant] = mlrun_id
            if traced:
                self._log_traces(experiment_id, traced, judge_model)
        return out

    def log_reports(self, run_id: str, paths: Sequence[Path]) -> int:
        """Attach report files to the MLflow runs of a guard run; return how many runs."""
        runs = self.mlflow_runs(run_id)
        with self._errors(f"log reports of run {run_id}"):
            for mlrun in runs:
                for path in paths:
                    self.client.log_artifact(mlrun.info.run_id, str(path), REPORT_DIR)
        return len(runs)

    def _params(self, outcome: RunOutcome, manifest: Mapping[str, Any],
                described: Mapping[str, Any], variant: str, judge_model: str,
                models: Sequence[str]) -> dict[str, str]:
        spec = outcome.spec
        dataset = manifest.get("dataset", {})
        params: dict[str, Any] = {
            TAG_RUN_ID: outcome.run_id,
            "experiment": spec.name,
            "variant": variant,
            "system": described.get("system"),
            "provider": described.get("provider"),
            "model": described.get("model") or ",".join(models) or None,
            "embedder": described.get("embedder"),
            "base_url": described.get("base_url"),
            "url": described.get("url"),
            "dataset.name": dataset.get("name"),
            "dataset.path": dataset.get("path"),
            "dataset.hash": dataset.get("hash"),
            "dataset.cases": dataset.get("cases"),
            "judge.model": judge_model,
            "code_version": manifest.get("code_version"),
            "confidence": spec.confidence,
            "repeat": spec.run.repeat,
            "ks": ",".join(str(k) for k in spec.run.ks),
        }
        params.update({f"retriever.{k}": described[k] for k in RETRIEVER_KEYS if k in described})
        return {metric_key(k): str(v)[:6000] for k, v in params.items() if v is not None}

    def _tags(self, outcome: RunOutcome, manifest: Mapping[str, Any],
              variant: str) -> dict[str, str]:
        run_tags = [str(t) for t in manifest.get("tags", ())]
        tenants = [str(t) for t in manifest.get("tenants", ())]
        gates = [g for g in outcome.gates if g.variant == variant]
        tags = {
            TAG_RUN_ID: outcome.run_id,
            "truthguard.experiment": outcome.spec.name,
            "truthguard.variant": variant,
            "truthguard.status": outcome.status,
            "truthguard.created": repr(float(manifest.get("created", 0.0))),
            "truthguard.tags": ",".join(run_tags),
            "truthguard.nightly": str("nightly" in run_tags).lower(),
            "truthguard.baseline": str("baseline" in run_tags).lower(),
            "truthguard.tenants": ",".join(tenants),
            "truthguard.gates": ("none" if not gates else
                                 "passed" if all(g.passed for g in gates) else "failed"),
        }
        tags.update({metric_key(f"truthguard.tenant.{t}"): "true" for t in tenants})
        tags.update({metric_key(f"truthguard.tag.{t}"): "true" for t in run_tags})
        if outcome.spec.description:
            tags["mlflow.note.content"] = outcome.spec.description
        return tags

    def _metrics(self, outcome: RunOutcome, variant: str,
                 rows: pd.DataFrame) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for summary in outcome.summaries:
            if summary.variant != variant or summary.ci.mean is None:
                continue
            key = metric_key(summary.metric)
            metrics[key] = summary.ci.mean
            if summary.ci.low is not None and summary.ci.high is not None:
                metrics[f"{key}.ci_low"] = summary.ci.low
                metrics[f"{key}.ci_high"] = summary.ci.high
            metrics[f"{key}.n"] = float(summary.ci.n)
        if rows.empty:
            return metrics
        for status, count in status_counts(rows).get(variant, {}).items():
            metrics[metric_key(f"cases.{status}")] = float(count)
        metrics["cases.total"] = float(len(rows))
        latency = pd.to_numeric(rows["latency_ms"], errors="coerce").dropna()
        if not latency.empty:
            for name, q in (("p50", 0.5), ("p95", 0.95)):
                metrics[f"latency_ms.{name}"] = float(latency.quantile(q))
            metrics["latency_ms.mean"] = float(latency.mean())
            metrics["latency_ms.max"] = float(latency.max())
        for column, key in (("cost_usd", "cost_usd.total"), ("prompt_tokens", "tokens.prompt"),
                            ("completion_tokens", "tokens.completion")):
            metrics[key] = float(pd.to_numeric(rows[column], errors="coerce").fillna(0).sum())
        return metrics

    def _log_values(self, mlrun_id: str, params: Mapping[str, str],
                    metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric, Param

        stamp = int(time.time() * 1000)
        param_list = [Param(k, v) for k, v in params.items()]
        metric_list = [Metric(k, v, stamp, 0) for k, v in metrics.items() if math.isfinite(v)]
        for start in range(0, len(param_list), 100):
            self.client.log_batch(mlrun_id, params=param_list[start:start + 100])
        for start in range(0, len(metric_list), _BATCH):
            self.client.log_batch(mlrun_id, metrics=metric_list[start:start + _BATCH])

    # ----------------------------------------------------------------------- traces

    def _log_traces(self, experiment_id: str, traced: Sequence[tuple[str, list[CaseResult]]],
                    judge_model: str) -> None:
        with _global_tracking_uri(self.tracking_uri):
            for mlrun_id, cases in traced:
                for result in cases:
                    _case_trace(self.client, experiment_id, mlrun_id, result, judge_model)

    # ----------------------------------------------------------------------- reading

    def _experiment_ids(self, experiment: str | None = None) -> list[str]:
        if experiment is not None:
            found = self.experiment_id(experiment, create=False)
            return [found] if found else []
        with self._errors("list experiments"):
            return [str(e.experiment_id) for e in self.client.search_experiments()]

    def _search(self, experiment_ids: Sequence[str], filter_string: str) -> list[Run]:
        runs: list[Run] = []
        token: str | None = None
        with self._errors("search runs"):
            while experiment_ids:
                page = self.client.search_runs(list(experiment_ids), filter_string,
                                               max_results=1000, page_token=token)
                runs.extend(page)
                token = page.token
                if not token:
                    break
        return runs

    def mlflow_runs(self, run_id: str, experiment_ids: Sequence[str] | None = None) -> list[Run]:
        """The live MLflow runs (one per variant) of a guard run."""
        if not RUN_ID_PATTERN.fullmatch(run_id):
            raise InputError(f"invalid run id {run_id!r} (expected YYYYMMDD-HHMMSS-xxxxxx)")
        ids = list(experiment_ids) if experiment_ids is not None else self._experiment_ids()
        return self._search(ids, f"tags.`{TAG_RUN_ID}` = '{run_id}'")

    def runs(self, experiment: str | None = None) -> list[ArchivedRun]:
        """Guard runs logged here (of `experiment`, or all), newest first."""
        if not self.exists():
            return []
        grouped: dict[str, list[Run]] = {}
        for mlrun in self._search(self._experiment_ids(experiment),
                                  f"tags.`{TAG_RUN_ID}` LIKE '%'"):
            grouped.setdefault(mlrun.data.tags[TAG_RUN_ID], []).append(mlrun)
        out = []
        for run_id, mlruns in grouped.items():
            tags = mlruns[0].data.tags
            out.append(ArchivedRun(
                run_id=run_id,
                experiment=tags.get("truthguard.experiment", ""),
                created=float(tags.get("truthguard.created") or mlruns[0].info.start_time / 1e3),
                status=tags.get("truthguard.status", ""),
                tags=tuple(t for t in tags.get("truthguard.tags", "").split(",") if t),
                variants=tuple(sorted(r.data.tags.get("truthguard.variant", "") for r in mlruns)),
                source=self.name,
            ))
        return sorted(out, key=lambda r: r.created, reverse=True)

    def _require(self, run_id: str) -> list[Run]:
        runs = self.mlflow_runs(run_id) if self.exists() else []
        if not runs:
            raise InputError(f"no run {run_id!r} in MLflow at {self.tracking_uri}")
        return runs

    def _download(self, mlrun_id: str, artifact: str) -> bytes:
        with self._errors(f"download {artifact} of MLflow run {mlrun_id}"), \
                tempfile.TemporaryDirectory() as folder:
            local = self.client.download_artifacts(mlrun_id, artifact, folder)
            return Path(local).read_bytes()

    def manifest(self, run_id: str) -> dict[str, Any]:
        mlrun = self._require(run_id)[0]
        data: dict[str, Any] = json.loads(self._download(mlrun.info.run_id, MANIFEST_FILE))
        return data

    def cases(self, run_id: str) -> pd.DataFrame:
        """The per-case tables of every variant of the run, as `guard.results.cases_frame`."""
        frames = [read_table(self._download(r.info.run_id, TABLE_FILE))
                  for r in self._require(run_id)]
        frames = [f for f in frames if not f.empty]
        if not frames:
            return pd.DataFrame(columns=list(BASE_COLUMNS))
        return pd.concat(frames, ignore_index=True)

    # ----------------------------------------------------------------------- the UI

    def server_command(self, port: int, host: str = "127.0.0.1") -> list[str]:
        """`mlflow server` against this store, bound to `host`."""
        import sys

        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                   self.tracking_uri, "--host", host, "--port", str(port), "--workers", "1"]
        if self.artifact_root is not None:
            command += ["--artifacts-destination", self.artifact_root.as_uri()]
        return command


def _table(rows: pd.DataFrame) -> pd.DataFrame:
    """The case table as logged (pandas writes NaN as null)."""
    return rows.reset_index(drop=True)


def read_table(raw: bytes) -> pd.DataFrame:
    """Parse a table written by `MlflowClient.log_table` (pandas "split" JSON) back into the
    case-table form: metric columns as floats (null -> NaN), `repeat` as int."""
    data = json.loads(raw)
    frame = pd.DataFrame(data.get("data", []), columns=data.get("columns", []))
    for column in frame.columns:
        if column not in BASE_COLUMNS or column in ("latency_ms", "cost_usd", "finished_at",
                                                    "score_ms"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    if "repeat" in frame:
        frame["repeat"] = pd.to_numeric(frame["repeat"], errors="coerce").fillna(0).astype(int)
    return frame


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI (which the trace exporter uses) at `uri` for a while."""
    import mlflow

    with _TRACE_LOCK:
        previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None  # type: ignore[no-untyped-call]
        previous_env = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.flush_trace_async_logging()
            # None is accepted at run time: it unsets the URI and resets the tracer provider.
            mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
            if previous_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_env


_UNTIMED = ("not reported by the system under test: the span marks the stage, "
            "its duration is unknown")


def _stage_windows(timings: dict[str, float], start_ns: int) -> dict[str, tuple[int, int]]:
    """Each reported stage's (start, end) in ns, laid out in the pipeline's order: the query
    embedding, then the dense search; the lexical search from the start, concurrently; fusion
    after both arms; generation last. Only stages with a reported duration get a window."""
    def ns(stage: str) -> int:
        return int(timings.get(stage, 0.0) * 1e6)

    windows: dict[str, tuple[int, int]] = {}
    embedded = start_ns + ns("embedding")
    if "embedding" in timings:
        windows["embedding"] = (start_ns, embedded)
    if "dense" in timings:
        windows["dense"] = (embedded, embedded + ns("dense"))
    if "lexical" in timings:
        windows["lexical"] = (start_ns, start_ns + ns("lexical"))
    retrieved = max([start_ns] + [end for _, end in windows.values()])
    fused = retrieved + ns("fusion")
    if "fusion" in timings:
        windows["fusion"] = (retrieved, fused)
    if "generation" in timings:
        windows["generation"] = (fused, fused + ns("generation"))
    return windows


def _case_trace(client: MlflowClient, experiment_id: str, mlrun_id: str, result: CaseResult,
                judge_model: str) -> None:
    """One trace per case: case > system_under_test > retrieval arms, fusion, generation; and
    judging. The case span is the engine's measured time; the system span its reported latency
    (zero when the response came from the cache); stage spans the system's reported stage
    timings (`SutResponse.timings_ms`, laid out by `_stage_windows`), instants marked untimed
    when it reports none; judging the scoring time at the end of the case."""
    from mlflow.tracing.constant import SpanAttributeKey

    end_ns = int(result.finished_at * 1e9)
    start_ns = end_ns - int(result.latency_ms * 1e6)
    response = result.response
    metrics = {k: v for k, v in result.metrics.items() if v is not None}
    root = client.start_trace(
        name=f"{result.variant}/{result.case_id}",
        span_type="CHAIN",
        inputs={"question": result.question, "tenant": result.tenant},
        attributes={"truthguard.run_id": result.run_id, "truthguard.variant": result.variant,
                    "truthguard.case_id": result.case_id, "truthguard.status": result.status.value},
        tags={TAG_RUN_ID: result.run_id, "truthguard.variant": result.variant,
              "truthguard.case_id": result.case_id, "truthguard.status": result.status.value},
        experiment_id=experiment_id,
        start_time_ns=start_ns,
        run_id=mlrun_id,
    )
    trace_id = root.trace_id

    def span(name: str, parent: str, kind: str, window: tuple[int, int], *, inputs: Any = None,
             outputs: Any = None, attributes: dict[str, Any] | None = None) -> str:
        start, end = window
        child = client.start_span(name, trace_id=trace_id, parent_id=parent, span_type=kind,
                                  inputs=inputs, attributes=attributes, start_time_ns=start)
        client.end_span(trace_id, child.span_id, outputs=outputs, end_time_ns=max(end, start))
        return str(child.span_id)

    if response is not None:
        sut_ms = 0.0 if result.cached else min(response.latency_ms, result.latency_ms)
        sut_end = start_ns + int(sut_ms * 1e6)
        timings = {} if result.cached else response.timings_ms
        windows = _stage_windows(timings, start_ns)

        def when(stage: str) -> tuple[tuple[int, int], dict[str, Any]]:
            if stage in windows:
                return windows[stage], {"duration_ms": timings[stage]}
            return (start_ns, start_ns), {"truthguard.duration": _UNTIMED}

        sut = client.start_span(
            "system_under_test", trace_id=trace_id, parent_id=root.span_id, span_type="CHAIN",
            inputs={"question": result.question},
            attributes={"model": response.model, "latency_ms": response.latency_ms,
                        "cached": result.cached, "attempts": result.attempts,
                        **({"first_token_ms": timings["first_token"]}
                           if "first_token" in timings else {})},
            start_time_ns=start_ns)
        if "embedding" in windows:
            span("embedding", sut.span_id, "EMBEDDING", windows["embedding"],
                 inputs={"query": result.question}, attributes=when("embedding")[1])
        for arm, doc_ids in response.arms.items():
            window, timing = when(arm)
            span(f"retrieval.{arm}", sut.span_id, "RETRIEVER", window,
                 inputs={"query": result.question},
                 outputs=[{"id": d, "page_content": "", "metadata": {"doc_id": d, "rank": i}}
                          for i, d in enumerate(doc_ids, start=1)],
                 attributes={**timing, "arm": arm, "results": len(doc_ids)})
        documents = [{"id": c.chunk_id, "page_content": c.text,
                      "metadata": {"doc_id": c.doc_id, "rank": c.rank, "score": c.score}}
                     for c in response.contexts]
        fused = len(response.arms) > 1
        # Two arms: their fusion; one arm: its search is the retrieval; none reported: untimed.
        window, timing = when("fusion" if fused else next(iter(response.arms), "retrieval"))
        span("fusion" if fused else "retrieval", sut.span_id,
             "RERANKER" if fused else "RETRIEVER", window,
             inputs={"arms": sorted(response.arms)} if fused else {"query": result.question},
             outputs=documents, attributes={**timing, "results": len(documents)})
        usage = {"input_tokens": response.prompt_tokens,
                 "output_tokens": response.completion_tokens,
                 "total_tokens": response.prompt_tokens + response.completion_tokens}
        window, timing = when("generation")
        span("generation", sut.span_id, "CHAT_MODEL", window,
             inputs={"question": result.question, "contexts": len(documents)},
             outputs={"answer": response.answer, "tool_calls": list(response.tool_calls),
                      "abstained": response.abstained},
             attributes={**timing, SpanAttributeKey.CHAT_USAGE: usage,
                         SpanAttributeKey.MODEL: response.model,
                         "prompt_tokens": response.prompt_tokens,
                         "completion_tokens": response.completion_tokens})
        client.end_span(trace_id, sut.span_id, outputs={"answer": response.answer},
                        end_time_ns=max(sut_end, *(end for _, end in windows.values()))
                        if windows else sut_end)
    judged = max(start_ns, end_ns - int(result.score_ms * 1e6))
    span("judging", root.span_id, "EVALUATOR", (judged, end_ns),
         inputs={"judge": judge_model}, outputs=metrics,
         attributes={"judge.model": judge_model, "metrics": len(metrics),
                     "duration_ms": result.score_ms})
    scored = result.status is CaseStatus.SCORED
    client.end_trace(trace_id,
                     outputs={"answer": response.answer if response else None,
                              "status": result.status.value, "error": result.error},
                     attributes={"truthguard.repeat": result.repeat, "attempts": result.attempts,
                                 "cached": result.cached, "latency_ms": result.latency_ms,
                                 "cost_usd": result.cost_usd, "error": result.error},
                     status="OK" if scored else "ERROR", end_time_ns=end_ns)
