"""The guard engine's speed and memory, measured against a loopback OpenAI-compatible endpoint.

Usage:
    .venv/bin/python scripts/bench_engine.py [--cases 2000] [--concurrency 64] [--delay-ms 200]
        [--memory-cases 5000 50000] [--skip-ragas-evaluate] [--skip-memory] [--profile]

What it prints
--------------
1. Speed: `--cases` synthetic golden cases through `RunEngine` with the `openai` system
   (`OpenAIEndpointSystem`, the official client) against an endpoint in a separate process
   (Starlette + uvicorn) that answers every `/v1/chat/completions` after `--delay-ms` with a
   fixed completion carrying the `truthguard` extra field (five contexts), at `--concurrency`.
   Runs with ragas' non-LLM metrics off and on. For each: wall time, the ideal
   (cases x delay / concurrency), their ratio (target <= 1.1) and throughput. A plain asyncio
   loop sending the same requests through the same client (no engine, no scoring, no journal)
   is printed first: it is the client's own ceiling, so the engine's overhead is the gap
   between the two.
2. ragas' own `evaluate()` on the same cases and metrics. ragas cannot call a system under
   test; it scores a dataset that already holds the responses. The fair equivalent of one
   engine run is therefore: fetch every response from the same endpoint with a plain asyncio
   loop (same client, same concurrency), then `ragas.evaluate()` over an `EvaluationDataset`
   of those responses with the same non-LLM metrics (BLEU, ROUGE-L, chrF, string similarity,
   exact match, string presence, non-LLM context precision and recall; ragas' LLM metrics
   need a judge model, which this endpoint is not). Both phases are timed and summed, and set
   against the engine's ragas-on run, which does the same work and also journals every case.
3. Memory: the engine over 5k and 50k cases (`--memory-cases`) with an instant fake system, each
   in its own process, printing each peak RSS (`ru_maxrss`) and the ratio (target < 1.3). The
   cases come from a lazy sequence, so the figure is what the engine holds, not the dataset
   (a materialised dataset is the caller's memory and grows with it, by design).

`--profile` adds a cProfile of the ragas-on engine run (top functions by cumulative time).
The endpoint and the client share the machine: on 2 cores the endpoint's own CPU (uvicorn, h11)
competes with the engine's, so the ratio is a conservative figure.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import resource
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from guard.domain import CaseStatus, Context, SutResponse
from guard.engine import RunEngine, RunSettings, Variant
from guard.golden import GoldenCase
from guard.journal import Journal, read_results

MODEL = "bench-model"
ANSWER = ("Full-time employees receive 25 days of annual leave per calendar year, on top of "
          "public holidays [annual-leave#0].")
CONTEXT_TEXT = ("Full-time employees receive 25 days of annual leave per calendar year, on top "
                "of public holidays. Part-time employees receive a pro-rata share. Unused days "
                "can be carried over until 31 March of the following year.")


# --------------------------------------------------------------------------- the endpoint


def completion_body() -> bytes:
    """The fixed chat completion, with `rag serve`'s `truthguard` extra field."""
    contexts = [
        {"chunk_id": f"doc-{rank}#0", "doc_id": f"doc-{rank}", "title": f"Doc {rank}",
         "text": CONTEXT_TEXT, "score": round(1 / rank, 4), "rank": rank}
        for rank in range(1, 6)
    ]
    body = {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": ANSWER, "refusal": None}}],
        "usage": {"prompt_tokens": 420, "completion_tokens": 24, "total_tokens": 444},
        "truthguard": {"tenant": "bench", "contexts": contexts,
                       "arms": {"dense": ["doc-1#0", "doc-2#0"], "lexical": ["doc-2#0"]},
                       "cited_chunk_ids": ["doc-1#0"], "abstained": False,
                       "retrieval_latency_ms": 1.0, "generator_model": MODEL},
    }
    return json.dumps(body).encode()


def serve(delay_ms: float) -> None:
    """Child process: serve the endpoint on a free loopback port; print the port first."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    body, delay = completion_body(), delay_ms / 1000

    async def completions(request: Request) -> Response:
        await request.body()
        await asyncio.sleep(delay)
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            backlog=4096, timeout_keep_alive=120)
    uvicorn.Server(config).run(sockets=[sock])


class Endpoint:
    """The endpoint in its own process, for the lifetime of a `with` block."""

    def __init__(self, delay_ms: float) -> None:
        self._args = [sys.executable, __file__, "--serve", "--delay-ms", str(delay_ms)]
        self._process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Endpoint:
        self._process = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        port = int(self._process.stdout.readline())
        self.base_url = f"http://127.0.0.1:{port}/v1"
        _wait_for_port(port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the endpoint on port {port} did not start")


# --------------------------------------------------------------------------- cases


def make_case(index: int) -> GoldenCase:
    return GoldenCase(
        id=f"case-{index:06d}",
        tenant="bench",
        question=f"How many days of annual leave do full-time employees get? (variant {index})",
        reference_answer="Full-time employees get 25 days of annual leave per calendar year.",
        answers=("25 days",),
        relevant_doc_ids={"doc-1": 1, "doc-3": 1},
        reference_contexts=("Full-time employees receive 25 days of annual leave per calendar "
                            "year, on top of public holidays.",),
        tags=("bench",),
    )


class LazyCases(Sequence[GoldenCase]):
    """`count` synthetic cases, built when asked for: the dataset costs no memory."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> GoldenCase: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[GoldenCase]: ...

    def __getitem__(self, index: int | slice) -> GoldenCase | Sequence[GoldenCase]:
        if isinstance(index, slice):
            return [make_case(i) for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return make_case(index % self._count)

    def __iter__(self) -> Iterator[GoldenCase]:
        return (make_case(i) for i in range(self._count))


# --------------------------------------------------------------------------- speed


@dataclass
class Timing:
    label: str
    wall_s: float
    cases: int

    def line(self, ideal_s: float) -> str:
        return (f"{self.label:<34} wall {self.wall_s:7.2f} s   ideal {ideal_s:5.2f} s   "
                f"ratio {self.wall_s / ideal_s:5.3f}   {self.cases / self.wall_s:7.1f} cases/s")


def openai_system(base_url: str, concurrency: int) -> Any:
    from guard.adapters.openai_sut import OpenAIEndpointSystem

    return OpenAIEndpointSystem(base_url, MODEL, "not-needed", timeout=60,
                                max_connections=concurrency)


async def warm_up(system: Any, concurrency: int) -> None:
    """Open the client's connections and import ragas before anything is timed."""
    from guard.metrics.ragas_nonllm import nonllm_scores

    await nonllm_scores(response="a", reference="a b", retrieved_contexts=["a"],
                        reference_contexts=["a"])
    await asyncio.gather(*(system.respond(make_case(i)) for i in range(concurrency)))


async def fetch_all(
    cases: Sequence[GoldenCase], base_url: str, concurrency: int
) -> tuple[float, list[SutResponse]]:
    """The plain loop: every case through the same client, `concurrency` at a time."""
    system = openai_system(base_url, concurrency)
    try:
        await warm_up(system, concurrency)
        gate = asyncio.Semaphore(concurrency)

        async def one(case: GoldenCase) -> SutResponse:
            async with gate:
                response: SutResponse = await system.respond(case)
                return response

        started = time.perf_counter()
        responses = await asyncio.gather(*(one(c) for c in cases))
        return time.perf_counter() - started, list(responses)
    finally:
        await system.aclose()


async def engine_run(
    cases: Sequence[GoldenCase], base_url: str, concurrency: int, ragas: bool, folder: Path,
    profile: bool = False,
) -> float:
    """One engine run over `cases`; returns its wall time and checks every case was scored."""
    system = openai_system(base_url, concurrency)
    journal = Journal.open(folder / f"journal-{ragas}.jsonl", "bench")
    try:
        await warm_up(system, concurrency)
        engine = RunEngine(journal)
        settings = RunSettings(concurrency=concurrency, timeout_s=60, ragas=ragas)
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        await engine.run(cases, [Variant("bench", system, settings)], {"experiment": "bench"})
        wall = time.perf_counter() - started
        if profiler:
            profiler.disable()
            print_profile(profiler)
    finally:
        journal.close()
        await system.aclose()
    _check_all_scored(journal.path, len(cases))
    return wall


def _check_all_scored(path: Path, expected: int) -> None:
    statuses = [r.status for r in read_results(path)]
    scored = statuses.count(CaseStatus.SCORED)
    if len(statuses) != expected or scored != expected:
        raise RuntimeError(f"{path}: {scored} of {len(statuses)} results scored, "
                           f"{expected} expected")


def print_profile(profiler: cProfile.Profile, top: int = 25) -> None:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print("\nprofile of the ragas-on engine run (top by own time):")
    print("\n".join(out.getvalue().splitlines()[:top + 12]))


def ragas_evaluate(cases: Sequence[GoldenCase], responses: Sequence[SutResponse]) -> float:
    """ragas' own `evaluate()` with the same non-LLM metrics; returns its wall time."""
    from ragas import EvaluationDataset, evaluate
    from ragas.dataset_schema import SingleTurnSample

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.metrics import (
            BleuScore,
            ChrfScore,
            ExactMatch,
            NonLLMContextPrecisionWithReference,
            NonLLMContextRecall,
            NonLLMStringSimilarity,
            RougeScore,
            StringPresence,
        )

    samples = [
        SingleTurnSample(user_input=case.question, response=response.answer,
                         reference=case.reference_answer,
                         retrieved_contexts=[c.text for c in response.contexts],
                         reference_contexts=list(case.reference_contexts))
        for case, response in zip(cases, responses, strict=True)
    ]
    metrics = [BleuScore(), RougeScore(rouge_type="rougeL", mode="fmeasure"), ChrfScore(),
               NonLLMStringSimilarity(), ExactMatch(), StringPresence(),
               NonLLMContextPrecisionWithReference(), NonLLMContextRecall()]
    started = time.perf_counter()
    evaluate(EvaluationDataset(samples=samples), metrics=metrics, show_progress=False,
             raise_exceptions=True)
    return time.perf_counter() - started


def speed(args: argparse.Namespace) -> None:
    cases = [make_case(i) for i in range(args.cases)]
    ideal = args.cases * args.delay_ms / 1000 / args.concurrency
    print(f"speed: {args.cases} cases, concurrency {args.concurrency}, endpoint delay "
          f"{args.delay_ms:g} ms, ideal {ideal:.2f} s, {os.cpu_count()} CPUs")
    with Endpoint(args.delay_ms) as endpoint, tempfile.TemporaryDirectory() as tmp:
        fetch_s, responses = asyncio.run(fetch_all(cases, endpoint.base_url, args.concurrency))
        print(Timing("plain loop, same client (ceiling)", fetch_s, args.cases).line(ideal))
        for ragas in (False, True):
            wall = asyncio.run(engine_run(cases, endpoint.base_url, args.concurrency, ragas,
                                          Path(tmp), profile=args.profile and ragas))
            label = f"engine, ragas non-LLM {'on' if ragas else 'off'}"
            print(Timing(label, wall, args.cases).line(ideal))
        if not args.skip_ragas_evaluate:
            evaluate_s = ragas_evaluate(cases, responses)
            total = fetch_s + evaluate_s
            print(f"{'ragas.evaluate() alone':<34} wall {evaluate_s:7.2f} s")
            print(Timing("plain loop + ragas.evaluate()", total, args.cases).line(ideal))


# --------------------------------------------------------------------------- memory


class InstantSystem:
    """A system under test that answers at once with a fixed response (five contexts)."""

    name = "instant"

    def __init__(self) -> None:
        contexts = tuple(Context(f"doc-{r}#0", f"doc-{r}", CONTEXT_TEXT, 1 / r, r)
                         for r in range(1, 6))
        self._response = SutResponse(answer=ANSWER, contexts=contexts, prompt_tokens=420,
                                     completion_tokens=24, model=MODEL)

    def describe(self) -> dict[str, Any]:
        return {"system": "instant"}

    async def respond(self, case: GoldenCase) -> SutResponse:
        await asyncio.sleep(0)
        return self._response

    async def aclose(self) -> None:
        return None


def memory_child(count: int, folder: Path) -> None:
    """Child process: run `count` lazy cases through the engine; print peak RSS in KiB."""

    async def main() -> None:
        journal = Journal.open(folder / f"journal-{count}.jsonl", "memory")
        try:
            engine = RunEngine(journal)
            settings = RunSettings(concurrency=64, ragas=False)
            await engine.run(LazyCases(count), [Variant("mem", InstantSystem(), settings)], {})
        finally:
            journal.close()

    started = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - started
    print(json.dumps({"cases": count, "peak_rss_kib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss, "wall_s": round(elapsed, 2)}))


def memory(counts: Sequence[int]) -> None:
    print(f"\nmemory: engine over {', '.join(map(str, counts))} lazy cases, instant fake "
          "system, ragas off, one process each")
    # A tmpfs journal when there is one: the figure is memory, not the disk's fsync speed.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        peaks = []
        for count in counts:
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(count),
                                  "--folder", tmp], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            peaks.append(row["peak_rss_kib"])
            print(f"{count:>7} cases: peak RSS {row['peak_rss_kib'] / 1024:7.1f} MiB   "
                  f"({row['wall_s']:.1f} s)")
    print(f"ratio {counts[-1]} / {counts[0]}: {peaks[-1] / peaks[0]:.3f} (target < 1.3)")


# --------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=200.0)
    parser.add_argument("--memory-cases", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--skip-ragas-evaluate", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.serve:
        serve(args.delay_ms)
    elif args.memory_child:
        memory_child(args.memory_child, args.folder)
    else:
        if not args.skip_speed:
            speed(args)
        if not args.skip_memory:
            memory(args.memory_cases)


if __name__ == "__main__":
    main()
