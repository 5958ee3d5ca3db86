"""The guard engine's speed and memory, measured against a loopback OpenAI-compatible endpoint.

Usage:
    .venv/bin/python scripts/bench_engine.py [--cases 2000] [--concurrency 64] [--delay-ms 200]
        [--score-workers 1] [--rounds 3] [--memory-cases 5000 50000] [--skip-speed] [--skip-memory]
        [--skip-ragas-evaluate] [--profile]

What it prints
--------------
1. Speed: `--cases` synthetic golden cases against an endpoint in a separate process
   (Starlette + uvicorn) that answers every `/v1/chat/completions` after `--delay-ms` with a
   fixed completion carrying `rag serve`'s `truthguard` extra field (five contexts), at
   `--concurrency`, through the `openai` system (`OpenAIEndpointSystem`, the official client).
   Each row: wall time, ratio to the ideal (cases x delay / concurrency; target <= 1.1),
   throughput, this process's CPU per case, and the endpoint process's CPU per request. Rows:
   - plain loop: the same requests through the same client, no engine, no scoring, no
     journal, workers started as the engine starts them (`stagger_s` apart): the client's own
     ceiling; the engine's overhead is the gap to it;
   - engine with ragas' non-LLM metrics off, on (scored on the event loop), and on with a
     scoring process pool (`RunEngine(score_pool=...)`, `--score-workers` processes);
   - the plain loop again over the SDK's default httpx2 transport, for comparison: the adapter
     uses the SDK's aiohttp transport (`openai.DefaultAioHttpClient`), measured lighter here.
2. ragas' own `evaluate()` on the same cases and metrics. ragas cannot call a system under
   test; it scores a dataset that already holds the responses. The fair equivalent of one
   engine run is therefore: fetch every response from the same endpoint with the plain loop
   (same client, same concurrency; its time is row one), then `ragas.evaluate()` over an
   `EvaluationDataset` of those responses with the same non-LLM metrics (BLEU, ROUGE-L, chrF,
   string similarity, exact match, string presence, non-LLM context precision and recall;
   ragas' LLM metrics need a judge model, which this endpoint is not). The sum is set against
   the engine's ragas-on runs, which do the same work and also journal every case.
3. Memory: the engine over 5k and 50k cases (`--memory-cases`) with an instant fake system, each
   in its own process, printing each peak RSS (`ru_maxrss`) and the ratio (target < 1.3). The
   cases come from a lazy sequence, so the figure is what the engine holds, not the dataset
   (a materialised dataset is the caller's memory and grows with it, by design).

`--profile` adds a cProfile of the engine run that scores ragas on the loop. The endpoint, the
scoring pool and the engine share the machine's cores (and, here, other people's jobs: the load
average is printed), so wall-time ratios are conservative; CPU per case is the steadier figure.
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
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from guard.domain import CaseStatus, Context, SutResponse
from guard.engine import RunEngine, RunSettings, Variant, score_offline
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
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle off only on sockets whose protocol
    # says TCP, and an accepted socket inherits it. With Nagle on, the body written after the
    # headers waits for the client's delayed ACK: 40 ms on every response, the endpoint's
    # fault and not the client's.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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

    def cpu_s(self) -> float:
        """The endpoint process's CPU time so far (Linux; 0 elsewhere)."""
        assert self._process is not None
        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


@dataclass(frozen=True)
class Setup:
    """One timed configuration: the plain loop or the engine, its HTTP backend, its scoring."""

    label: str
    backend: str  # "adapter": the adapter's own client (aiohttp); "httpx2": the SDK's default
    engine: bool = True
    ragas: bool = False
    pool: bool = False  # score in a process pool (`RunEngine(score_pool=...)`)


SETUPS = (
    Setup("plain loop, adapter's client", "adapter", engine=False),
    Setup("plain loop, httpx2 transport", "httpx2", engine=False),
    Setup("engine, ragas off", "adapter"),
    Setup("engine, ragas off, httpx2", "httpx2"),
    Setup("engine, ragas on", "adapter", ragas=True),
    Setup("engine, ragas on, score pool", "adapter", ragas=True, pool=True),
)


@dataclass
class Timing:
    label: str
    wall_s: float
    cpu_s: float  # this process's CPU time, every thread (not the pool's workers)
    cases: int

    def line(self, ideal_s: float) -> str:
        return (f"{self.label:<31} wall {self.wall_s:6.2f} s  ratio {self.wall_s / ideal_s:5.3f}"
                f"  {self.cases / self.wall_s:6.1f} cases/s  "
                f"cpu {self.cpu_s * 1000 / self.cases:4.2f} ms/case")


class Clock:
    """Wall and process CPU time of a `with` block."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def openai_system(base_url: str, concurrency: int, backend: str) -> Any:
    """The `openai` system under test, as `guard.bootstrap` builds it; with `httpx2`, the
    same adapter over the SDK's default transport instead of aiohttp."""
    import httpx2
    import openai

    from guard.adapters.openai_sut import OpenAIEndpointSystem

    system = OpenAIEndpointSystem(base_url, MODEL, "not-needed", timeout=60,
                                  max_connections=concurrency)
    if backend == "httpx2":
        limits = httpx2.Limits(max_connections=concurrency,
                               max_keepalive_connections=concurrency)
        http_client = openai.DefaultAsyncHttpx2Client(limits=limits, timeout=60)
        system._client = openai.AsyncOpenAI(base_url=base_url, api_key="not-needed",
                                            max_retries=0, timeout=60, http_client=http_client)
    return system


async def warm_up(system: Any, concurrency: int) -> None:
    """Open the client's connections and import ragas before anything is timed."""
    from guard.metrics.ragas_nonllm import nonllm_scores

    await nonllm_scores(response="a", reference="a b", retrieved_contexts=["a"],
                        reference_contexts=["a"])
    await asyncio.gather(*(system.respond(make_case(i)) for i in range(concurrency)))


async def plain_loop(
    cases: Sequence[GoldenCase], system: Any, concurrency: int, clock: Clock
) -> list[SutResponse]:
    """Every case through the client by `concurrency` workers started `stagger_s` apart, as
    the engine starts its own: no scoring, journal or cache."""
    stagger, pending = RunSettings().stagger_s, iter(enumerate(cases))
    responses: list[SutResponse | None] = [None] * len(cases)

    async def worker(number: int) -> None:
        await asyncio.sleep(number * stagger)
        for index, case in pending:
            responses[index] = await system.respond(case)

    with clock:
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return [r for r in responses if r is not None]


async def engine_loop(
    cases: Sequence[GoldenCase], system: Any, setup: Setup, concurrency: int, folder: Path,
    pool: Executor | None, clock: Clock, profiler: cProfile.Profile | None,
) -> None:
    # A new folder each time: an existing journal would be resumed, not run.
    journal = Journal.open(Path(tempfile.mkdtemp(dir=folder)) / "journal.jsonl", "bench")
    try:
        engine = RunEngine(journal, score_pool=pool if setup.pool else None)
        settings = RunSettings(concurrency=concurrency, timeout_s=60, ragas=setup.ragas)
        with clock:
            if profiler:
                profiler.enable()
            await engine.run(cases, [Variant("bench", system, settings)], {})
            if profiler:
                profiler.disable()
    finally:
        journal.close()
    _check_all_scored(journal.path, len(cases))


async def timed(
    setup: Setup, cases: Sequence[GoldenCase], args: argparse.Namespace, base_url: str,
    folder: Path, pool: Executor | None,
) -> tuple[Timing, list[SutResponse]]:
    system = openai_system(base_url, args.concurrency, setup.backend)
    clock, responses = Clock(), []
    profiler = cProfile.Profile() if args.profile and setup.ragas and not setup.pool else None
    try:
        await warm_up(system, args.concurrency)
        if setup.engine:
            await engine_loop(cases, system, setup, args.concurrency, folder, pool, clock,
                              profiler)
        else:
            responses = await plain_loop(cases, system, args.concurrency, clock)
    finally:
        await system.aclose()
    if profiler:
        print_profile(profiler)
    return Timing(setup.label, clock.wall_s, clock.cpu_s, len(cases)), responses


def _check_all_scored(path: Path, expected: int) -> None:
    statuses = [r.status for r in read_results(path)]
    scored = statuses.count(CaseStatus.SCORED)
    if len(statuses) != expected or scored != expected:
        raise RuntimeError(f"{path}: {scored} of {len(statuses)} results scored, "
                           f"{expected} expected")


def print_profile(profiler: cProfile.Profile, top: int = 25) -> None:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print("\nprofile of the engine run with ragas on the loop (top by own time; the profiler"
          " itself slows it):")
    print("\n".join(out.getvalue().splitlines()[:top + 12]) + "\n")


def score_pool(workers: int) -> Executor:
    """The scoring pool `guard run` builds for `score_workers`, warmed up before timing."""
    from guard.service import score_pool as service_score_pool  # here: it imports pandas

    pool = service_score_pool(workers)
    assert pool is not None
    response = InstantSystem().response
    warm = [pool.submit(score_offline, make_case(i), response, (1, 3, 5, 10), True)
            for i in range(4 * workers)]
    for future in warm:
        future.result()
    return pool


def ragas_evaluate(cases: Sequence[GoldenCase], responses: Sequence[SutResponse]) -> Clock:
    """ragas' own `evaluate()` with the same non-LLM metrics, timed."""
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
    with Clock() as clock:
        evaluate(EvaluationDataset(samples=samples), metrics=metrics, show_progress=False,
                 raise_exceptions=True)
    return clock


def speed(args: argparse.Namespace) -> None:
    cases = [make_case(i) for i in range(args.cases)]
    ideal = args.cases * args.delay_ms / 1000 / args.concurrency
    print("ratio = wall / ideal; cpu = this process's CPU per case (not the scoring pool's);"
          " endpoint = the endpoint process's CPU per request, ms")
    print(f"speed: {args.cases} cases, concurrency {args.concurrency}, endpoint delay "
          f"{args.delay_ms:g} ms: ideal {args.cases} x {args.delay_ms / 1000:g} / "
          f"{args.concurrency} = {ideal:.2f} s (target ratio <= 1.1); {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"{args.rounds} rounds, the setups taking turns; each row is the round with the "
          "median wall time, then the range of ratios over all rounds")
    rounds: dict[str, list[tuple[Timing, float]]] = {setup.label: [] for setup in SETUPS}
    fetched: list[SutResponse] = []
    pool = score_pool(args.score_workers)
    try:
        with Endpoint(args.delay_ms) as endpoint, tempfile.TemporaryDirectory() as tmp:
            # One untimed pass first: a fresh endpoint process answers its first thousands of
            # requests measurably slower (3-4 % here), which would count against one setup.
            asyncio.run(timed(SETUPS[0], cases, args, endpoint.base_url, Path(tmp), pool))
            for _ in range(args.rounds):
                for setup in SETUPS:
                    served = endpoint.cpu_s()
                    timing, responses = asyncio.run(
                        timed(setup, cases, args, endpoint.base_url, Path(tmp), pool))
                    fetched = fetched or responses
                    served_ms = ((endpoint.cpu_s() - served) * 1000
                                 / (len(cases) + args.concurrency))
                    rounds[setup.label].append((timing, served_ms))
    finally:
        pool.shutdown()
    timings = {}
    for label, runs in rounds.items():
        runs.sort(key=lambda run: run[0].wall_s)
        timing, served_ms = runs[len(runs) // 2]
        timings[label] = timing
        low, high = runs[0][0].wall_s / ideal, runs[-1][0].wall_s / ideal
        print(f"{timing.line(ideal)}  endpoint {served_ms:4.2f}  range {low:.3f}-{high:.3f}")
    if not args.skip_ragas_evaluate:
        compare_with_ragas(cases, fetched, timings, ideal)


def compare_with_ragas(
    cases: Sequence[GoldenCase], responses: Sequence[SutResponse], timings: dict[str, Timing],
    ideal: float,
) -> None:
    fetch = timings[SETUPS[0].label]
    clock = ragas_evaluate(cases, responses)
    both = Timing("plain loop + ragas.evaluate()", fetch.wall_s + clock.wall_s,
                  fetch.cpu_s + clock.cpu_s, len(cases))
    print(f"\nragas.evaluate() over the fetched responses: wall {clock.wall_s:.2f} s, "
          f"cpu {clock.cpu_s * 1000 / len(cases):.2f} ms/case")
    print(both.line(ideal))
    for label in ("engine, ragas on", "engine, ragas on, score pool"):
        engine = timings[label]
        print(f"{label + ' vs that':<31} {engine.wall_s / both.wall_s:5.2f} x the wall time")


# --------------------------------------------------------------------------- memory


class InstantSystem:
    """A system under test that answers at once with a fixed response (five contexts)."""

    name = "instant"

    def __init__(self) -> None:
        contexts = tuple(Context(f"doc-{r}#0", f"doc-{r}", CONTEXT_TEXT, 1 / r, r)
                         for r in range(1, 6))
        self.response = SutResponse(answer=ANSWER, contexts=contexts, prompt_tokens=420,
                                    completion_tokens=24, model=MODEL)

    def describe(self) -> dict[str, Any]:
        return {"system": "instant"}

    async def respond(self, case: GoldenCase) -> SutResponse:
        await asyncio.sleep(0)
        return self.response

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
    print(json.dumps({"cases": count, "wall_s": round(elapsed, 2), "vm_hwm_kib": _vm_hwm(),
                      "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _vm_hwm() -> int | None:
    """The kernel's own peak RSS of this process image (Linux), to cross-check ru_maxrss,
    which Linux carries over from the parent through fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory(counts: Sequence[int]) -> None:
    print(f"memory: engine over {', '.join(map(str, counts))} lazy cases, instant fake "
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
            hwm = f"{row['vm_hwm_kib'] / 1024:.1f} MiB" if row["vm_hwm_kib"] else "n/a"
            print(f"{count:>7} cases: peak RSS (ru_maxrss) {row['peak_rss_kib'] / 1024:6.1f} MiB"
                  f"   VmHWM {hwm}   ({row['wall_s']:.1f} s)")
    print(f"ratio {counts[-1]} / {counts[0]}: {peaks[-1] / peaks[0]:.3f} (target < 1.3)\n")


# --------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=200.0)
    parser.add_argument("--memory-cases", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--rounds", type=int, default=3,
                        help="times each speed setup runs; the median is shown (default 3)")
    parser.add_argument("--skip-ragas-evaluate", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--score-workers", type=int, default=1,
                        help="processes in the scoring pool of the 'pool' setups (default 1)")
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
        # Memory first: a child's ru_maxrss starts from its parent's, which speed() inflates.
        if not args.skip_memory:
            memory(args.memory_cases)
        if not args.skip_speed:
            speed(args)


if __name__ == "__main__":
    main()
