"""The `[rag]` tables that point a test spec at the bundled demo, with the hashing embedder."""

from __future__ import annotations

from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "datasets" / "demo"


def demo_rag_tables(data_dir: Path | str) -> str:
    """TOML for an inline pipeline over both demo tenants; `data_dir` holds the index."""
    return f"""[rag]
data_dir = "{data_dir}"
[rag.defaults]
embedder = "hashing"
[rag.tenants.hr]
corpus = "{DEMO / 'corpus' / 'hr'}"
[rag.tenants.it]
corpus = "{DEMO / 'corpus' / 'it'}"
"""
