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


def demo_matrix_spec(folder: Path, name: str, *, header: str = "", concurrency: int = 4,
                     gates: str = "") -> Path:
    """`folder/spec.toml`: the demo's golden cases against that pipeline in lexical and hybrid
    mode (k 5, ks 1 and 5). `header` adds top-level keys; `gates` the `[gates]` lines."""
    spec = folder / "spec.toml"
    spec.write_text(f"""
name = "{name}"
dataset = "{DEMO / 'golden.jsonl'}"
{header}
{demo_rag_tables(folder / 'index')}[run]
concurrency = {concurrency}
ks = [1, 5]
[[variants]]
name = "{{mode}}"
k = 5
matrix = {{ mode = ["lexical", "hybrid"] }}
[gates]
{gates}
""")
    return spec
