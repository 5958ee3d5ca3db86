"""Shared fixtures: a real two-tenant pipeline on disk, and real uvicorn servers on loopback."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from loopback import serve_in_thread
from starlette.types import ASGIApp

from rag.adapters.embedders import HashingEmbedder
from rag.adapters.lancedb_store import LanceDBVectorStore
from rag.adapters.lexical import BM25sLexicalIndex
from rag.adapters.local_provider import LocalExtractiveProvider
from rag.domain import Document
from rag.entrypoints.server import create_app
from rag.pipeline import RagPipeline, TenantRuntime

# Doc ids carry their tenant's name, so a test can see at a glance whose data came back.
CORPUS: dict[str, list[Document]] = {
    "hr": [
        Document(
            "hr-leave",
            "Full-time employees receive 25 vacation days per year. Part-time employees "
            "receive vacation days in proportion to their contracted hours. Unused vacation "
            "days can be carried over until March 31 of the following year.\n\n"
            "Parental leave lasts 16 weeks at full pay.",
            title="Leave policy",
        ),
        Document(
            "hr-pay",
            "Salaries are paid on the last working day of each month. Expense claims must be "
            "filed within 30 days of the expense.",
            title="Payroll",
        ),
        Document(
            "hr-remote",
            "Employees may work from home up to three days per week with their manager's "
            "approval. The office is open from 7 am to 8 pm.",
            title="Remote work",
        ),
    ],
    "it": [
        Document(
            "it-vpn",
            "Connect to the VPN with the GlobalProtect client and your company credentials. "
            "The VPN portal address is vpn.example.com.",
            title="VPN access",
        ),
        Document(
            "it-password",
            "Passwords must be at least 14 characters long and are rotated every 180 days. "
            "Reset a forgotten password at the self-service portal.",
            title="Passwords",
        ),
        Document(
            "it-laptop",
            "Every new employee receives a laptop on their first day. Lost laptops must be "
            "reported to the service desk within 24 hours.",
            title="Laptops",
        ),
    ],
}

TOOLS: list[dict[str, object]] = [
    {
        "type": "function",
        "function": {
            "name": "create_ticket",
            "description": "Open an IT support ticket for a user.",
            "parameters": {
                "type": "object",
                "properties": {
                    "username": {"type": "string", "description": "who the ticket is for"},
                    "priority": {"type": "string", "enum": ["low", "medium", "high"]},
                    "summary": {"type": "string", "description": "one-line summary"},
                },
                "required": ["username", "summary"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book_meeting_room",
            "description": "Book a meeting room for a date.",
            "parameters": {
                "type": "object",
                "properties": {
                    "room": {"type": "string", "enum": ["Aurora", "Borealis"]},
                    "date": {"type": "string", "format": "date"},
                    "attendees": {"type": "integer", "description": "number of people"},
                },
                "required": ["room", "date"],
            },
        },
    },
]


@pytest.fixture
def tools() -> list[dict[str, object]]:
    """Two OpenAI function tools: create_ticket and book_meeting_room (a fresh copy)."""
    return copy.deepcopy(TOOLS)


def build_pipeline(root: Path) -> RagPipeline:
    """A fresh pipeline over the data under `root`: LanceDB, bm25s, hashing embedder."""
    runtime = TenantRuntime(embedder=HashingEmbedder(256), provider=LocalExtractiveProvider())
    return RagPipeline(
        {"hr": runtime, "it": runtime},
        vectors=LanceDBVectorStore(root / "vectors"),
        lexical=BM25sLexicalIndex(root / "lexical"),
    )


@pytest.fixture(scope="session")
def rag_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both tenants' corpora ingested once per session; returns the data folder."""
    root = tmp_path_factory.mktemp("rag-data")

    async def ingest() -> None:
        pipeline = build_pipeline(root)
        for tenant, documents in CORPUS.items():
            await pipeline.ingest(tenant, documents)

    asyncio.run(ingest())
    return root


@pytest.fixture
def make_pipeline(rag_data: Path) -> Callable[[], RagPipeline]:
    """Builds pipelines over the ingested data. Each event loop should get its own instance:
    the stores' connections and locks belong to the loop that first used them."""
    return lambda: build_pipeline(rag_data)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"




@pytest.fixture
def serve_app() -> Iterator[Callable[[ASGIApp], str]]:
    """Start ASGI apps on loopback for one test: `base_url = serve_app(app)`."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_in_thread(app))


@pytest.fixture(scope="session")
def rag_server(rag_data: Path) -> Iterator[str]:
    """`rag serve` over both tenants, on loopback for the whole session; yields its base URL.

    Besides the tenants' own embedder ("hashing", 256 dimensions) it serves "hashing-64".
    """
    app = create_app(build_pipeline(rag_data), embedders={"hashing-64": HashingEmbedder(64)})
    with serve_in_thread(app) as url:
        yield url
