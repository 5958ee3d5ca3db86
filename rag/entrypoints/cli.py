"""`rag`: ingest corpora, ask questions, write TREC run files, serve the pipeline over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.config import RagConfig, load_config
from rag.domain import ChatMessage
from rag.errors import InputError, TruthGuardError
from rag.pipeline import RagPipeline

EXIT_OK, EXIT_ERROR, EXIT_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag",
        description="TruthGuard's reference RAG pipeline: multi-tenant hybrid retrieval "
        "(LanceDB + BM25) with offline or OpenAI-compatible providers.",
    )
    parser.add_argument("--config", type=Path,
                        help="TOML configuration (default: ./truthguard.toml if present, "
                        "else the embedded demo defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="index a tenant's corpus (idempotent upsert)")
    ingest.add_argument("--tenant", help="tenant id (default: every tenant with a corpus)")
    ingest.add_argument("--corpus", type=Path,
                        help="a BEIR .jsonl file or a folder of .md/.txt/.html/.pdf files "
                        "(default: the tenant's configured corpus)")

    ask = sub.add_parser("ask", help="answer a question and list the cited sources")
    ask.add_argument("tenant")
    ask.add_argument("question", nargs="+", help="the question; several values make a "
                     "conversation of user turns, the last one answered")
    _retrieval_args(ask)
    ask.add_argument("--json", action="store_true", help="print the full answer as JSON")

    retrieve = sub.add_parser("retrieve", help="run BEIR queries and write a TREC run file")
    retrieve.add_argument("--tenant", required=True)
    retrieve.add_argument("--queries", type=Path, required=True, help="BEIR queries.jsonl")
    retrieve.add_argument("--out", type=Path, required=True, help="TREC run file to write")
    retrieve.add_argument("--depth", type=int, default=100, help="documents per query")
    retrieve.add_argument("--tag", default=None, help="run tag (default: the mode)")
    _retrieval_args(retrieve)

    serve = sub.add_parser("serve", help="serve the pipeline as an OpenAI-compatible API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8008)
    return parser


def _retrieval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["dense", "lexical", "hybrid"])
    parser.add_argument("--k", type=int, help="chunks to retrieve")
    parser.add_argument("--fusion", choices=["rrf", "weighted"])
    parser.add_argument("--rrf-k", type=int, dest="rrf_k")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("mode", "k", "fusion", "rrf_k")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "serve":
            return _serve(config, args)
        return asyncio.run(_run(config, args))
    except InputError as exc:
        print(f"rag: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except TruthGuardError as exc:
        print(f"rag: failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


async def _run(config: RagConfig, args: argparse.Namespace) -> int:
    from rag.bootstrap import build_pipeline

    pipeline = build_pipeline(config)
    if args.command == "ingest":
        return await _ingest(config, pipeline, args)
    if args.command == "ask":
        return await _ask(pipeline, args)
    return await _retrieve(pipeline, args)


async def _ingest(config: RagConfig, pipeline: RagPipeline, args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn

    from rag.adapters.loaders import load_corpus

    if args.tenant is None and args.corpus is not None:
        raise InputError("--corpus needs --tenant")
    tenants = [args.tenant] if args.tenant else [t for t, s in config.tenants.items() if s.corpus]
    if not tenants:
        raise InputError(f"no tenant with a corpus in {config.source}")
    for tenant in tenants:
        settings = config.tenant(tenant)
        if args.corpus is None and settings.corpus is None:
            raise InputError(f"tenant {tenant!r} has no corpus configured; pass --corpus")
        corpus = args.corpus or config.resolve(settings.corpus or "")
        documents = load_corpus(corpus)
        with Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), transient=False, disable=not sys.stderr.isatty(),
        ) as bar:
            task = bar.add_task(f"ingest {tenant}", total=len(documents))

            def advance(done: int, total: int, task: TaskID = task) -> None:
                bar.update(task, completed=done)

            report = await pipeline.ingest(tenant, documents, progress=advance)
        print(
            f"{tenant}: {len(report.added)} added, {len(report.updated)} updated, "
            f"{len(report.unchanged)} unchanged, {report.chunks} chunks indexed from {corpus}"
        )
    return EXIT_OK


async def _ask(pipeline: RagPipeline, args: argparse.Namespace) -> int:
    messages = [ChatMessage("user", q) for q in args.question]
    answer = await pipeline.answer(args.tenant, messages, **_overrides(args))
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(answer), indent=2, default=str))
        return EXIT_OK
    print(answer.text)
    cited = answer.cited_chunk_ids or []
    if cited:
        print("\nSources:")
        by_id = {h.chunk_id: h for h in answer.retrieval.hits}
        for chunk_id in cited:
            hit = by_id.get(chunk_id)
            title = f"  {hit.title}" if hit and hit.title else ""
            print(f"  [{chunk_id}]{title}")
    return EXIT_OK


async def _retrieve(pipeline: RagPipeline, args: argparse.Namespace) -> int:
    from rag.adapters.loaders import load_queries

    if args.depth < 1:
        raise InputError("--depth must be at least 1")
    queries = load_queries(args.queries)
    overrides = _overrides(args)
    mode = overrides.get("mode") or pipeline.runtime(args.tenant).retrieval.mode
    tag = args.tag or mode
    # Several chunks of one document may rank high: fetch extra chunks so that `depth`
    # distinct documents remain after keeping each document's best chunk.
    overrides["k"] = args.depth * 3
    overrides.setdefault("candidates", args.depth * 3)
    lines: list[str] = []
    for query_id, text in queries:
        result = await pipeline.retrieve(args.tenant, text, **overrides)
        best: dict[str, float] = {}
        for hit in result.hits:
            best.setdefault(hit.doc_id, hit.score)
        ranked = sorted(best.items(), key=lambda item: (item[1], item[0]), reverse=True)
        for position, (doc_id, score) in enumerate(ranked[: args.depth], start=1):
            lines.append(f"{query_id} Q0 {doc_id} {position} {score:.6f} {tag}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    print(f"wrote {len(lines)} lines for {len(queries)} queries to {args.out}")
    return EXIT_OK


def _serve(config: RagConfig, args: argparse.Namespace) -> int:
    from rag.bootstrap import build_pipeline
    from rag.entrypoints.server import create_app, serve
    from rag.logging import configure_logging

    configure_logging()
    pipeline = build_pipeline(config)
    asyncio.run(serve(create_app(pipeline), host=args.host, port=args.port))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
