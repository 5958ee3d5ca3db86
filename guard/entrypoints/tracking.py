"""The CLI's tracking commands, wired into `guard.entrypoints.cli`:

    guard compare [--experiment NAME] [--metric M ...] [--runs RUN_ID ...]
    guard gate RUN_ID [--baseline RUN_ID]
    guard report RUN_ID [--out-dir reports]
    guard ui [--port 5000]

and the step after `guard run`: write the reports, then log the run to MLflow (`--traces` adds
one trace per case; `--no-mlflow` skips MLflow). The MLflow store is `MLFLOW_TRACKING_URI`, or
`sqlite:///<data dir>/mlflow.db`. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import InputError, TruthGuardError

if TYPE_CHECKING:
    from guard.adapters.mlflow_tracker import MLflowRunTracker
    from guard.compare import CombinedArchive, Comparison, GateReport
    from guard.gates import GateResult
    from guard.service import GuardService, RunOutcome

EXIT_OK, EXIT_GATE = 0, 1
REPORTS_DIR = Path("reports")
SHOWN_CASES = 10


def add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--traces", action="store_true",
                     help="also log one MLflow trace per case (retrieval, fusion, generation, "
                     "judging spans)")
    run.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")


def add_parsers(sub: Any) -> None:
    compare = sub.add_parser("compare", help="variants by metric with CIs; marks significant "
                             "differences (paired test on the same cases)")
    compare.add_argument("--experiment", help="compare the newest run of this experiment "
                         "(default: the experiment of the newest local run)")
    compare.add_argument("--runs", nargs="+", default=[], metavar="RUN_ID",
                         help="compare these runs' variants instead")
    compare.add_argument("--metric", nargs="+", action="extend", metavar="M",
                         help="metrics to show (default: the headline metrics)")
    compare.add_argument("--all-metrics", action="store_true", help="show every metric")
    compare.add_argument("--confidence", type=float, default=0.95,
                         help="confidence of the paired tests (default 0.95)")

    gate = sub.add_parser("gate", help="check a run's gates: floors, and drops against a "
                          "baseline judged by a paired test; exit 1 when one fails")
    gate.add_argument("run_id")
    gate.add_argument("--baseline", metavar="RUN_ID", help="baseline run (default: the newest "
                      "earlier run of the same experiment tagged 'baseline')")
    gate.add_argument("--no-webhook", action="store_true",
                      help="do not POST a failed gate to the spec's webhook_url")

    report = sub.add_parser("report", help="write reports/<run_id>.html and .md (with the "
                            "gate results against the baseline) and log them to MLflow")
    report.add_argument("run_id")
    report.add_argument("--out-dir", type=Path, default=REPORTS_DIR)
    report.add_argument("--no-mlflow", action="store_true")

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 against the run store")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--timeout", type=float, default=90.0,
                    help="seconds to wait for the server to answer /health (default 90)")


# --------------------------------------------------------------------------- wiring


def _console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _tracker(args: argparse.Namespace) -> MLflowRunTracker:
    from guard.adapters.mlflow_tracker import MLflowRunTracker

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # CLI output
    return MLflowRunTracker.for_data_dir(args.data_dir, os.environ)


def _archive(args: argparse.Namespace, *, mlflow_first: bool) -> CombinedArchive:
    """Local journals and the MLflow store (when it exists) as one archive."""
    from guard.compare import CombinedArchive, LocalRunArchive, RunArchive
    from guard.runs import RunStore

    local = LocalRunArchive(RunStore(args.data_dir / "runs"))
    tracker = _tracker(args)
    archives: list[RunArchive] = [local]
    if tracker.exists():
        archives = [tracker, local] if mlflow_first else [local, tracker]
    return CombinedArchive(archives)


def _expected_tools(outcome: RunOutcome) -> dict[str, str] | None:
    from guard.bootstrap import rag_config_for
    from guard.reports import expected_tool_labels
    from guard.service import load_spec_dataset

    try:
        return expected_tool_labels(load_spec_dataset(outcome.spec,
                                                      rag_config_for(outcome.spec)).cases)
    except (InputError, OSError):
        return None


def _write_reports(outcome: RunOutcome, manifest: Mapping[str, Any], out_dir: Path,
                   gates: Sequence[GateResult] | None = None) -> tuple[Path, Path]:
    from guard.reports import build_report, write_report

    report = build_report(outcome, manifest, _expected_tools(outcome), gates)
    return write_report(report, out_dir)


# --------------------------------------------------------------------------- after `guard run`


def after_run(args: argparse.Namespace, service: GuardService, outcome: RunOutcome) -> None:
    """Write the run's reports and log it to MLflow; failures are reported, never fatal (the
    journal already holds every result: `guard report RUN_ID` retries both)."""
    from guard.journal import read_results

    manifest = service.store.manifest(outcome.run_id)
    paths: tuple[Path, ...] = ()
    try:
        paths = _write_reports(outcome, manifest, REPORTS_DIR)
        print(f"report: {paths[0]}  (summary: {paths[1]})", file=sys.stderr)
    except (TruthGuardError, OSError) as exc:
        print(f"guard: warning: report not written: {exc}", file=sys.stderr)
    if args.no_mlflow:
        return
    tracker = _tracker(args)
    try:
        started = time.monotonic()
        results = list(read_results(service.store.journal_path(outcome.run_id)))
        logged = tracker.log_run(outcome, manifest, results, paths, traces=args.traces)
        traces = f", {len(results)} traces" if args.traces else ""
        print(f"mlflow: experiment {outcome.spec.name!r}, {len(logged)} runs{traces} logged to "
              f"{tracker.tracking_uri} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    except TruthGuardError as exc:
        print(f"guard: warning: not logged to MLflow: {exc} (retry: guard report "
              f"{outcome.run_id})", file=sys.stderr)


# --------------------------------------------------------------------------- commands


def compare_command(args: argparse.Namespace) -> int:
    from guard.compare import compare_runs, select_runs

    archive = _archive(args, mlflow_first=True)
    experiment = args.experiment
    if experiment is None and not args.runs:
        newest = archive.runs()
        if not newest:
            raise InputError(f"no runs in {archive.name}: run `guard run` first")
        experiment = newest[0].experiment
    runs = select_runs(archive, experiment, args.runs)
    comparison = compare_runs(archive, runs, args.metric, args.confidence, args.all_metrics)
    sources = ", ".join(f"{r.run_id} ({r.source})" for r in runs)
    _print_comparison(comparison, f"{runs[0].experiment}: {sources}")
    return EXIT_OK


def _print_comparison(comparison: Comparison, title: str) -> None:
    from rich.table import Table

    from guard.reports import fmt_ci

    letters = {c.label: chr(ord("A") + i) if i < 26 else str(i)
               for i, c in enumerate(comparison.columns)}
    table = Table(title=f"{title}\nmean [{comparison.confidence:.0%} bootstrap CI] n; "
                  "▲X = significantly better than column X")
    table.add_column("metric")
    for column in comparison.columns:
        table.add_column(f"{letters[column.label]}: {column.label}", justify="right")
    for metric in comparison.metrics:
        cells = []
        for column in comparison.columns:
            ci = comparison.cells.get((metric, column.label))
            text = f"{fmt_ci(ci)} n={ci.n}" if ci is not None and ci.mean is not None else "-"
            beaten = comparison.beaten_by(metric, column.label)
            if beaten:
                text += " [bold green]▲" + ",".join(letters[b] for b in beaten) + "[/]"
            cells.append(text)
        table.add_row(metric, *cells)
    console = _console()
    console.print(table)
    for win in comparison.wins:
        console.print(f"{win.winner} > {win.loser} on {win.metric}: {win.diff:+.4f} over "
                      f"{win.n_pairs} shared cases, p={win.p_value:.3g} "
                      f"(Holm {win.p_adjusted:.3g})", markup=False)
    if not comparison.wins:
        console.print("no significant difference between columns on these metrics")
    console.print(f"paired sign-flip test on the cases both columns scored; Holm-corrected over "
                  f"the column pairs of each metric at {comparison.confidence:.0%}.", markup=False)
    for note in comparison.notes:
        console.print(f"note: {note}", markup=False)


def gate_command(args: argparse.Namespace) -> int:
    from guard.compare import gate_payload, gate_run, spec_from_manifest

    archive = _archive(args, mlflow_first=False)
    report = gate_run(archive, args.run_id, args.baseline)
    _print_gate(report)
    if report.passed:
        return EXIT_OK
    url = spec_from_manifest(archive.manifest(args.run_id)).webhook_url
    if url and url != "<redacted>" and not args.no_webhook:
        from guard.adapters.webhook import post_json

        problem = post_json(url, gate_payload(report))
        if problem:
            print(f"guard: warning: webhook not notified: {problem}", file=sys.stderr)
        else:
            print("webhook notified", file=sys.stderr)
    return EXIT_GATE


def _print_gate(report: GateReport) -> None:
    console = _console()
    against = f" against baseline {report.baseline_id}" if report.baseline_id else ""
    console.print(f"gate: experiment {report.experiment}, run {report.run_id}{against} "
                  f"(confidence {report.confidence:.0%})", markup=False)
    for result in report.results:
        mark = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
        console.print(f"{mark} {result.variant} {result.metric} {result.rule}: {result.detail}")
        changes = report.changes.get((result.variant, result.metric), {})
        for label, cases in (("regressed", result.regressed), ("improved", result.improved)):
            if not cases:
                continue
            shown = ", ".join(
                c.removesuffix("#0")  # case#repeat; most runs have one repeat
                + (f" {changes[c][0]:.3f}->{changes[c][1]:.3f}" if c in changes else "")
                for c in cases[:SHOWN_CASES])
            more = f" ... and {len(cases) - SHOWN_CASES} more" if len(cases) > SHOWN_CASES else ""
            console.print(f"    {label} ({len(cases)}): {shown}{more}", markup=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    verdict = "[green]PASSED[/]" if report.passed else \
        f"[red]FAILED[/] ({len(report.failures)} of {len(report.results)} gates)"
    console.print(f"gate {verdict}")


def report_command(args: argparse.Namespace) -> int:
    from guard.compare import gate_run, load_outcome

    archive = _archive(args, mlflow_first=False)
    outcome = load_outcome(archive, args.run_id)
    manifest = archive.manifest(args.run_id)
    gates = gate_run(archive, args.run_id).results  # floors, and drops against the baseline
    html_path, md_path = _write_reports(outcome, manifest, args.out_dir, gates)
    print(f"wrote {html_path} and {md_path}")
    if args.no_mlflow:
        return EXIT_OK
    tracker = _tracker(args)
    if tracker.exists() and tracker.mlflow_runs(args.run_id):
        count = tracker.log_reports(args.run_id, [html_path, md_path])
        print(f"logged the reports to {count} MLflow runs at {tracker.tracking_uri}")
    else:
        from guard.journal import read_results
        from guard.runs import RunStore

        store = RunStore(args.data_dir / "runs")
        logged = tracker.log_run(outcome, manifest,
                                 list(read_results(store.journal_path(args.run_id))),
                                 (html_path, md_path))
        print(f"logged run {args.run_id} ({len(logged)} variants) to {tracker.tracking_uri}")
    return EXIT_OK


def ui_command(args: argparse.Namespace) -> int:
    """Run `mlflow server` on 127.0.0.1 until Ctrl-C or SIGTERM; the server runs in its own
    process group (it starts job-runner children), which is stopped as a whole."""
    import signal

    import httpx

    tracker = _tracker(args)
    if tracker.tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow runs are on the tracking server: {tracker.tracking_uri}")
        return EXIT_OK
    args.data_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    print(f"starting the MLflow UI on {url} for {tracker.tracking_uri} "
          "(it takes about 20 s to answer)...", file=sys.stderr)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    # A local viewer needs no job runners (GenAI evaluation jobs: ~7 processes, ~2 GB).
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    process = subprocess.Popen(tracker.server_command(args.port), env=env,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise TruthGuardError(f"mlflow server exited with code {process.returncode} "
                                      f"(is port {args.port} free?)")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise TruthGuardError(f"mlflow server did not answer {url}/health within "
                                  f"{args.timeout:g} s")
        print(f"MLflow UI: {url}  (Ctrl-C to stop)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        _stop_group(process)
        signal.signal(signal.SIGTERM, previous)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    import signal

    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)  # the server's own group (start_new_session)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "compare": compare_command,
    "gate": gate_command,
    "report": report_command,
    "ui": ui_command,
}
