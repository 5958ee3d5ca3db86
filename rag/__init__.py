"""TruthGuard's reference RAG pipeline: multi-tenant ingestion, hybrid retrieval, providers.

`rag` never imports `guard`. Core modules (domain, ports, errors, tenancy, chunking, fusion,
conversation, pipeline) import no adapter; `rag.bootstrap` is the one place that wires adapters.
"""

__version__ = "0.1.0"
