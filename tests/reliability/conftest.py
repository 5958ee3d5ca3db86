"""Fixtures of the reliability suite: golden datasets scaled from the demo, fault servers in a
thread, experiment specs that point at them, CLIs as subprocesses, filesystem snapshots, and a
multi-tenant pipeline whose tenant ids are prefixes and look-alikes of one another."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guard.golden import GoldenCase, load_dataset, save_jsonl
from guard.reliability import FaultServer, running_in_thread
from rag.adapters.embedders import HashingEmbedder
from rag.adapters.lancedb_store import LanceDBVectorStore
from rag.adapters.lexical import BM25sLexicalIndex
from rag.adapters.local_provider import LocalExtractiveProvider
from rag.domain import Document
from rag.pipeline import RagPipeline, TenantRuntime

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "datasets" / "demo"
BIN = Path(sys.executable).parent


# datasets and specs -----------------------------------------------------------------------------


def scaled_cases(count: int) -> list[GoldenCase]:
    """`count` demo cases (answers, abstention, tools, multi-turn), each with a unique id and a
    unique last user message, which is the fault server's key."""
    demo = load_dataset(DEMO / "golden.jsonl").cases
    cases = []
    for i in range(count):
        case = demo[i % len(demo)]
        if case.conversation is None:
            case = dataclasses.replace(case, question=f"{case.question} (#{i})")
        else:
            turns = list(case.conversation)
            turns[-1] = {**turns[-1], "content": f"{turns[-1]['content']} (#{i})"}
            case = dataclasses.replace(case, conversation=tuple(turns))
        cases.append(dataclasses.replace(case, id=f"{case.id}-{i}"))
    return cases


def write_dataset(folder: Path, cases: list[GoldenCase]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO / "tools.json", folder / "tools.json")
    return save_jsonl(cases, folder / "golden.jsonl")


def write_spec(folder: Path, base_url: str, *, name: str = "reliability", **run: Any) -> Path:
    """An experiment over `folder/golden.jsonl` with one `openai` variant at `base_url`."""
    limits = {"concurrency": 4, "timeout_s": 5, "max_retries": 4, "retry_base_delay_s": 0.01,
              "ragas": False, **run}
    lines = [f'name = "{name}"', 'dataset = "golden.jsonl"', "ingest = false", "", "[run]"]
    lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in limits.items()]
    lines += ["", "[[variants]]", 'name = "endpoint"', 'system = "openai"',
              f'base_url = "{base_url}"', 'model = "canned-{tenant}"', ""]
    path = folder / "spec.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def start_fault_server() -> Iterator[Callable[[FaultServer], str]]:
    """`url = start_fault_server(server)`: serves it from a thread until the test ends."""
    with ExitStack() as stack:
        yield lambda server: stack.enter_context(running_in_thread(server))


# CLIs as subprocesses -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cli:
    code: int
    stdout: str
    stderr: str


def run_cli(program: str, *args: str | Path, cwd: Path, timeout: float = 120,
            preexec: Callable[[], None] | None = None) -> Cli:
    """Run `rag` or `guard` from the venv in `cwd`, with HOME and TMPDIR inside `cwd`."""
    env = {**os.environ, "HOME": str(cwd), "TMPDIR": str(cwd), "NO_COLOR": "1",
           "COLUMNS": "200", "RAGAS_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true"}
    env.pop("TRUTHGUARD_DATA", None)
    done = subprocess.run([str(BIN / program), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec)
    return Cli(done.returncode, done.stdout, done.stderr)


# mounts ---------------------------------------------------------------------------------------


def _mount(*args: str) -> bool:
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(target: Path) -> None:
    for _ in range(20):  # busy for a moment while a child process lets go
        if subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def tiny_disk(target: Path, size: str = "200k") -> Iterator[bool]:
    """Mount a tmpfs of `size` on `target`; yields False (nothing mounted) if not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)):
        yield False
        return
    try:
        yield True
    finally:
        _umount(target)


@contextlib.contextmanager
def read_only(target: Path) -> Iterator[bool]:
    """Bind-mount `target` read-only over itself; yields False if not allowed."""
    if not _mount("--bind", str(target), str(target)):
        yield False
        return
    try:
        yield _mount("-o", "remount,bind,ro", str(target))
    finally:
        _umount(target)


# filesystem snapshots -------------------------------------------------------------------------


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file and folder under `root`, except under `skip`."""
    out: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if skip is not None and (here == skip or skip in here.parents):
            dirs[:] = []
            continue
        for name in [*dirs, *files]:
            path = here / name
            if path == skip:
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.lstat()
                out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return out


# a multi-tenant pipeline ------------------------------------------------------------------------

# Tenant ids that are prefixes, suffixes and near-spellings of one another: a prefix match, a
# LIKE, a path join or a case fold anywhere would hand one of them another's rows.
TENANTS = ("acme", "acme_eu", "acme2", "acm", "or_1", "a")
TOPICS = (
    ("leave", "Employees receive {n} vacation days per year and may carry over five days."),
    ("vpn", "Connect to the VPN with the {n} client and your company credentials."),
    ("laptop", "Every new employee receives a laptop; lost laptops cost {n} euros to replace."),
    ("password", "Passwords must be at least {n} characters long and rotate every 180 days."),
    ("parking", "Parking permits cost {n} euros per month at the main office garage."),
)


def tenant_corpus(tenant: str) -> list[Document]:
    """The same topics in every tenant, with tenant-specific numbers and doc ids that carry
    the tenant: similar enough that a leak would rank, and traceable when it does."""
    docs = []
    for i, (topic, text) in enumerate(TOPICS):
        number = 10 + i + 7 * TENANTS.index(tenant)
        docs.append(Document(f"{tenant}--{topic}", text.format(n=number) + f" Owner {tenant}.",
                             title=f"{topic} policy"))
    return docs


def owner_of(doc_id: str) -> str:
    return doc_id.split("--", 1)[0]


def build_tenant_pipeline(root: Path) -> RagPipeline:
    runtime = TenantRuntime(embedder=HashingEmbedder(256), provider=LocalExtractiveProvider())
    return RagPipeline({t: runtime for t in TENANTS},
                       vectors=LanceDBVectorStore(root / "vectors"),
                       lexical=BM25sLexicalIndex(root / "lexical"))


@pytest.fixture(scope="session")
def tenant_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tenant's corpus ingested once per session; returns the data folder."""
    root = tmp_path_factory.mktemp("tenant-data")

    async def ingest() -> None:
        pipeline = build_tenant_pipeline(root)
        for tenant in TENANTS:
            await pipeline.ingest(tenant, tenant_corpus(tenant))

    asyncio.run(ingest())
    return root


