"""`guard`: run golden datasets against RAG systems, gate on the results, export them."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guard.entrypoints import tracking
from rag.errors import InputError, TruthGuardError

EXIT_OK, EXIT_GATE, EXIT_INPUT = 0, 1, 2
DEFAULT_SPEC = Path("experiments/demo.toml")
HEADLINE = ("retrieval.nDCG@5", "retrieval.nDCG@10", "retrieval.R@5", "retrieval.R@10",
            "retrieval.MRR", "answer.em", "answer.f1", "abstention.hallucinated",
            "abstention.missed_answer", "tools.selection_f1", "tools.argument_accuracy",
            "tools.correct", "ragas.rouge_score", "judge.faithfulness", "judge.answer_relevancy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guard",
        description="TruthGuard: evaluate RAG systems on golden datasets, with live progress, "
        "crash-safe journals, confidence intervals and regression gates.",
        epilog="Exit codes: 0 ran and passed its gates, 1 a gate failed, 2 bad input.",
    )
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("TRUTHGUARD_DATA", "data")),
                        help="where runs and the response cache live (default: ./data, or "
                        "$TRUTHGUARD_DATA)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment (default: experiments/demo.toml)")
    run.add_argument("spec", nargs="?", type=Path, help="experiment spec (TOML)")
    run.add_argument("--resume", metavar="RUN_ID", help="finish a run that was interrupted")
    run.add_argument("--limit", type=int, help="only the first N cases of the dataset")
    run.add_argument("--repeat", type=int, help="ask every case N times")
    run.add_argument("--tag", action="append", default=[], help="tag the run (repeatable)")
    run.add_argument("--no-cache", action="store_true", help="ignore the response cache")
    run.add_argument("--all-metrics", action="store_true", help="print every metric")
    tracking.add_run_options(run)  # --traces, --no-mlflow

    show = sub.add_parser("show", help="print a run's summary")
    show.add_argument("run_id")
    show.add_argument("--all-metrics", action="store_true")

    sub.add_parser("runs", help="list runs, newest first")

    export = sub.add_parser("export", help="write a run's per-case results")
    export.add_argument("run_id")
    export.add_argument("--out", type=Path, help="file to write: .csv, .jsonl or .parquet "
                        "(default: reports/<run_id>.csv)")

    query = sub.add_parser("query", help="SQL over a run's cases with DuckDB (table: cases)")
    query.add_argument("run_id")
    query.add_argument("sql")

    sub.add_parser("import", help="turn BEIR, SQuAD or BFCL files into a golden dataset",
                   add_help=False)

    serve = sub.add_parser("serve", help="serve the live dashboard and its API")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (loopback)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token-file", type=Path, help="TOML [tokens] table: SHA-256 of a "
                       "token = [tenants] (default: $TRUTHGUARD_TOKEN_FILE)")
    serve.add_argument("--experiments", type=Path, default=Path("experiments"),
                       help="the only folder runs may be started from (default: experiments)")
    tracking.add_parsers(sub)  # compare, gate, report, ui
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["import"]:
        from guard.importers import main as import_main

        return import_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except InputError as exc:
        print(f"guard: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except TruthGuardError as exc:
        print(f"guard: failed: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("guard: interrupted; resume with `guard run --resume RUN_ID`", file=sys.stderr)
        return 130


def _service(args: argparse.Namespace, no_cache: bool = False) -> Any:
    from guard.runs import RunStore
    from guard.service import GuardService

    cache = None if no_cache else args.data_dir / "cache" / "responses.sqlite"
    return GuardService(RunStore(args.data_dir / "runs"), cache)


def _dispatch(args: argparse.Namespace) -> int:
    from guard.entrypoints import console

    if args.command == "run":
        return _run(args)
    if args.command in tracking.COMMANDS:
        return tracking.COMMANDS[args.command](args)
    if args.command == "serve":
        from guard.web.app import serve
        from guard.web.settings import load_settings

        serve(load_settings(data_dir=args.data_dir, experiments_dir=args.experiments,
                            token_file=args.token_file, env=os.environ, host=args.host,
                            port=args.port))
        return EXIT_OK
    service = _service(args)
    if args.command == "runs":
        console.print_runs(service.store.list())
        return EXIT_OK
    if args.command == "show":
        outcome = service.outcome(args.run_id)
        console.print_outcome(outcome, None if args.all_metrics else HEADLINE)
        return EXIT_OK if outcome.passed else EXIT_GATE
    if args.command == "export":
        from guard.results import export

        service.store.require(args.run_id)
        out = args.out or Path("reports") / f"{args.run_id}.csv"
        frame = service.outcome(args.run_id).frame
        export(frame, out)
        print(f"wrote {len(frame)} cases to {out}")
        return EXIT_OK
    if args.command == "query":
        from guard.results import query

        service.store.require(args.run_id)
        print(query(service.outcome(args.run_id).frame, args.sql).to_string(index=False))
        return EXIT_OK
    raise InputError(f"unknown command {args.command}")


def _run(args: argparse.Namespace) -> int:
    from guard.entrypoints import console
    from guard.spec import load_spec

    service = _service(args, args.no_cache)
    if args.resume:
        if args.spec or args.limit or args.repeat:
            raise InputError("--resume takes the run's own spec; drop the other options")
        run_id = args.resume
        service.store.require(run_id)
    else:
        spec_path = args.spec or DEFAULT_SPEC
        if args.spec is None and not DEFAULT_SPEC.exists():
            raise InputError(f"no spec given and {DEFAULT_SPEC} not found: run from the project "
                             "root or pass a spec file")
        spec = load_spec(spec_path)
        updates: dict[str, Any] = {}
        if args.limit:
            updates["limit"] = args.limit
        if args.repeat:
            updates["run"] = spec.run.model_copy(update={"repeat": args.repeat})
        spec = spec.model_copy(update=updates)
        run_id = service.prepare(spec, args.tag)
    print(f"run {run_id}  (resume with: guard run --resume {run_id})", file=sys.stderr)
    outcome = asyncio.run(console.execute_with_progress(service, run_id))
    console.print_outcome(outcome, None if args.all_metrics else HEADLINE)
    tracking.after_run(args, service, outcome)  # reports, then MLflow
    return EXIT_OK if outcome.passed else EXIT_GATE


if __name__ == "__main__":
    sys.exit(main())
