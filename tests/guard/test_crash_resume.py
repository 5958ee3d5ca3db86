"""Crash safety, end to end: `guard run` killed with SIGKILL at random points, then
`guard run --resume`, must end with the same results as a run that was never interrupted.

The system under test is the `http` adapter against a deterministic fake on loopback (a real
uvicorn in a thread), slow enough (a few ms a request) for kills to land mid-run; every answer
is a pure function of the request, so two runs score the same. Each check: the set of
(variant, case id, repeat) is complete with each key exactly once, every case's metrics equal
the uninterrupted run's, and the journal's event ids run 1..n with no gap or repeat.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from loopback import serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from guard.journal import CASE_FINISHED, read_events

pytestmark = pytest.mark.integration

GUARD = [sys.executable, "-m", "guard.entrypoints.cli"]
CASES = 40
VARIANTS = ("alpha", "beta")
REPEAT = 2
TOTAL = CASES * len(VARIANTS) * REPEAT
DELAY_S = 0.03
Key = tuple[str, str, int]


# --------------------------------------------------------------------------- the fake system


def answer(question: str, variant: str) -> dict[str, Any]:
    """The fake's reply: a pure function of the question and the variant."""
    number = int(question.split("#")[1].split()[0])
    docs = [f"doc-{(number + shift) % 7}" for shift in range(3 if variant == "alpha" else 4)]
    text = f"Case {number} gets {number % 5 + 20} days of leave"
    if number % 6 == 0:
        text = "I cannot answer that from the documents."
    return {
        "answer": text,
        "contexts": [{"doc_id": d, "text": f"{d}: case {number} gets {number % 5 + 20} days"}
                     for d in docs],
        "usage": {"prompt_tokens": 30 + number, "completion_tokens": 9},
    }


async def respond(request: Request) -> JSONResponse:
    body = await request.json()
    await asyncio.sleep(DELAY_S)
    return JSONResponse(answer(body["messages"][-1]["content"], request.path_params["variant"]))


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    """The fake system on a free loopback port, for the whole module."""
    app = Starlette(routes=[Route("/answer/{variant}", respond, methods=["POST"])])
    with serve_in_thread(app, lifespan="off") as url:
        yield url


# --------------------------------------------------------------------------- spec and runs


def write_spec(folder: Path, url: str, ragas: bool) -> Path:
    """A dataset of CASES cases and a spec with two http variants, each case asked twice."""
    rows = [
        {"id": f"case-{n:03d}", "tenant": "hr",
         "question": f"How many leave days for case #{n} ?",
         "reference_answer": f"Case {n} gets {n % 5 + 20} days of leave",
         "relevant_doc_ids": [f"doc-{n % 7}", f"doc-{(n + 5) % 7}"],
         "reference_contexts": [f"doc-{n % 7}: case {n} gets {n % 5 + 20} days"],
         "is_impossible": n % 9 == 0}
        for n in range(CASES)
    ]
    (folder / "golden.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    variants = "".join(
        f'[[variants]]\nname = "{name}"\nsystem = "http"\nurl = "{url}/answer/{name}"\n\n'
        for name in VARIANTS
    )
    path = folder / "crash.toml"
    path.write_text(
        'name = "crash"\ndataset = "golden.jsonl"\ningest = false\n\n'
        f"[run]\nconcurrency = 4\nrepeat = {REPEAT}\ntimeout_s = 30\nks = [1, 3]\n"
        f"ragas = {str(ragas).lower()}\n\n" + variants
    )
    return path


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory, fake_url: str) -> Path:
    """Without ragas' metrics: each `guard` process then starts in a few seconds."""
    return write_spec(tmp_path_factory.mktemp("spec"), fake_url, ragas=False)


@pytest.fixture(scope="module")
def asked_for_slow(request: pytest.FixtureRequest) -> None:
    """Skip unless the run selects markers (`-m slow`): the project's addopts do not
    deselect slow tests, and these take minutes."""
    if not request.config.getoption("markexpr"):
        pytest.skip("slow: run with -m slow")


@pytest.fixture(scope="module")
def spec_with_ragas(
    tmp_path_factory: pytest.TempPathFactory, fake_url: str, asked_for_slow: None
) -> Path:
    return write_spec(tmp_path_factory.mktemp("spec-ragas"), fake_url, ragas=True)


def guard(data_dir: Path, *args: str) -> list[str]:
    """`guard run` with this data folder; MLflow logging (seconds per process) is off."""
    return [*GUARD, "--data-dir", str(data_dir), "run", "--no-mlflow", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "RAGAS_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true"}


def journal_of(data_dir: Path) -> Path:
    (journal,) = (data_dir / "runs").glob("*/journal.jsonl")
    return journal


@dataclass(frozen=True)
class Results:
    keys: Counter[Key]
    metrics: dict[Key, dict[str, float | None]]
    ids: list[int]


def results(journal: Path) -> Results:
    events = list(read_events(journal))
    finished = [e.data for e in events if e.type == CASE_FINISHED]
    keys: Counter[Key] = Counter((d["variant"], d["case_id"], d["repeat"]) for d in finished)
    metrics = {(d["variant"], d["case_id"], d["repeat"]): d["metrics"] for d in finished}
    return Results(keys, metrics, [e.id for e in events])


def run_uninterrupted(spec: Path, data_dir: Path) -> Results:
    done = subprocess.run(guard(data_dir, str(spec)), capture_output=True, text=True,
                          cwd=spec.parent, env=environment(), timeout=180)
    assert done.returncode == 0, done.stderr
    baseline = results(journal_of(data_dir))
    assert set(baseline.keys.values()) == {1} and len(baseline.keys) == TOTAL
    return baseline


@pytest.fixture(scope="module")
def uninterrupted(spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Results:
    return run_uninterrupted(spec, tmp_path_factory.mktemp("uninterrupted"))


@pytest.fixture(scope="module")
def uninterrupted_with_ragas(
    spec_with_ragas: Path, tmp_path_factory: pytest.TempPathFactory
) -> Results:
    baseline = run_uninterrupted(spec_with_ragas, tmp_path_factory.mktemp("uninterrupted"))
    assert any(name.startswith("ragas.") for m in baseline.metrics.values() for name in m)
    return baseline


def finished_lines(data_dir: Path) -> int:
    """Complete case_finished lines in the run's journal so far (0 before it exists)."""
    journals = list((data_dir / "runs").glob("*/journal.jsonl"))
    if not journals:
        return 0
    data = journals[0].read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return complete.count(b'"type":"case_finished"')


def kill_after(command: list[str], data_dir: Path, cwd: Path, target: int) -> int:
    """Start `command`, SIGKILL it once `target` cases are journaled; return how many were."""
    process = subprocess.Popen(command, cwd=cwd, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while (done := finished_lines(data_dir)) < target:
            if process.poll() is not None:
                pytest.fail(f"the run ended before {target} cases (exit {process.returncode}):"
                            f" {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        if process.stderr:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return done


def crash_and_resume(spec: Path, data_dir: Path, target: int) -> Results:
    killed_at = kill_after(guard(data_dir, str(spec)), data_dir, spec.parent, target)
    assert killed_at < TOTAL, "the kill came too late to interrupt anything"
    run_id = journal_of(data_dir).parent.name
    resumed = subprocess.run(guard(data_dir, "--resume", run_id), capture_output=True,
                             text=True, cwd=spec.parent, env=environment(), timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    return results(journal_of(data_dir))


def check_same_as_uninterrupted(after: Results, baseline: Results) -> None:
    assert after.keys == baseline.keys  # every (variant, case, repeat), each exactly once
    mismatched = [k for k in baseline.metrics if after.metrics[k] != baseline.metrics[k]]
    assert mismatched == []
    assert after.ids == list(range(1, len(after.ids) + 1))


def kill_points(seed: int, count: int) -> list[int]:
    """`count` random numbers of journaled cases to kill at, one in each of `count` equal
    slices of the first three quarters of the run (the rest may finish before a kill lands)."""
    rng, span = random.Random(seed), TOTAL * 3 // 4
    return [rng.randint(1 + span * i // count, span * (i + 1) // count) for i in range(count)]


@pytest.mark.parametrize("target", kill_points(seed=20261125, count=2))
def test_a_killed_run_resumes_to_the_uninterrupted_results(
    target: int, spec: Path, uninterrupted: Results, tmp_path: Path
) -> None:
    after = crash_and_resume(spec, tmp_path / "data", target)
    check_same_as_uninterrupted(after, uninterrupted)


def test_a_run_killed_twice_still_resumes_each_case_once(
    spec: Path, uninterrupted: Results, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = kill_after(guard(data_dir, str(spec)), data_dir, spec.parent, TOTAL // 4)
    run_id = journal_of(data_dir).parent.name
    second = kill_after(guard(data_dir, "--resume", run_id), data_dir, spec.parent,
                        first + TOTAL // 4)
    assert first < second < TOTAL
    resumed = subprocess.run(guard(data_dir, "--resume", run_id), capture_output=True,
                             text=True, cwd=spec.parent, env=environment(), timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    check_same_as_uninterrupted(results(journal_of(data_dir)), uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("target", kill_points(seed=7, count=20))
def test_twenty_kill_points_with_ragas_all_resume_to_the_uninterrupted_results(
    target: int, spec_with_ragas: Path, uninterrupted_with_ragas: Results, tmp_path: Path
) -> None:
    after = crash_and_resume(spec_with_ragas, tmp_path / "data", target)
    check_same_as_uninterrupted(after, uninterrupted_with_ragas)
