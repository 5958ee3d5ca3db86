"""The composition root: the only module that turns configuration into adapters."""

from __future__ import annotations

import os
from pathlib import Path

from rag.config import EmbedderConfig, ProviderConfig, RagConfig
from rag.errors import InputError
from rag.pipeline import RagPipeline, RetrievalSettings, TenantRuntime
from rag.ports import Embedder, LexicalIndex, LLMProvider


def data_dir(config: RagConfig) -> Path:
    return config.resolve(config.data_dir)


def build_embedder(config: EmbedderConfig) -> Embedder:
    from rag.adapters.embedders import HashingEmbedder, MiniLMEmbedder, OpenAIEmbedder

    if config.kind == "minilm":
        return MiniLMEmbedder()
    if config.kind == "hashing":
        return HashingEmbedder(config.dimension)
    return OpenAIEmbedder(
        _openai_client(config.base_url, config.api_key_env, timeout=60.0, max_retries=2),
        config.model,
        config.dimension,
        query_prefix=config.query_prefix,
        passage_prefix=config.passage_prefix,
    )


def build_provider(config: ProviderConfig) -> LLMProvider:
    if config.kind == "local":
        from rag.adapters.local_provider import LocalExtractiveProvider

        return LocalExtractiveProvider()
    from rag.adapters.openai_provider import OpenAICompatibleProvider

    return OpenAICompatibleProvider(
        model=config.model,
        base_url=config.base_url,
        api_key=api_key_from_env(config.api_key_env, config.base_url),
        timeout=config.timeout,
        max_retries=config.max_retries,
        stream=config.stream,
        temperature=config.temperature,
    )


def build_lexical(config: RagConfig) -> LexicalIndex:
    from rag.adapters.lexical import BM25sLexicalIndex, RankBM25LexicalIndex

    engine = {"bm25s": BM25sLexicalIndex, "rank-bm25": RankBM25LexicalIndex}[config.lexical.engine]
    root = data_dir(config) / "lexical" / config.lexical.engine
    return engine(root, k1=config.lexical.k1, b=config.lexical.b)


def build_pipeline(
    config: RagConfig,
    embedders: dict[str, Embedder] | None = None,
    providers: dict[str, LLMProvider] | None = None,
) -> RagPipeline:
    """Wire the pipeline. Embedders and providers are shared between tenants by name."""
    from rag.adapters.lancedb_store import LanceDBVectorStore

    embedders = {} if embedders is None else embedders
    providers = {} if providers is None else providers
    runtimes: dict[str, TenantRuntime] = {}
    for tenant, own in config.tenants.items():
        merged = {**config.defaults.model_dump(), **own.model_dump(exclude_none=True)}
        if merged["embedder"] not in embedders:
            embedders[merged["embedder"]] = build_embedder(
                config.embedder_config(merged["embedder"])
            )
        if merged["provider"] not in providers:
            providers[merged["provider"]] = build_provider(
                config.provider_config(merged["provider"])
            )
        retrieval = RetrievalSettings(
            mode=merged["mode"],
            k=merged["k"],
            fusion=merged["fusion"],
            rrf_k=merged["rrf_k"],
            dense_weight=merged["dense_weight"],
            candidates=merged["candidates"],
        )
        runtimes[tenant] = TenantRuntime(
            embedder=embedders[merged["embedder"]],
            provider=providers[merged["provider"]],
            retrieval=retrieval,
            chunk_chars=merged["chunk_chars"],
            max_answer_tokens=merged["max_answer_tokens"],
            max_context_chunks=merged["max_context_chunks"],
        )
    vectors = config.vectors
    store = LanceDBVectorStore(
        data_dir(config) / "lancedb",
        ann_threshold=vectors.ann_threshold,
        index_kind=vectors.index_kind,
        nprobes=vectors.nprobes,
        refine_factor=vectors.refine_factor,
    )
    return RagPipeline(runtimes, store, build_lexical(config))


def api_key_from_env(env_name: str, base_url: str | None) -> str:
    """The API key from `env_name`; loopback endpoints (such as `rag serve`) need none."""
    key = os.environ.get(env_name)
    if key:
        return key
    if base_url and base_url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        return "not-needed"  # loopback servers such as `rag serve` take any key
    raise InputError(f"environment variable {env_name} is not set (API key for {base_url})")


def _openai_client(
    base_url: str | None, api_key_env: str, timeout: float, max_retries: int
) -> object:
    from rag.adapters.openai_provider import build_client

    # An explicit pool: the SDK's default caps in-flight requests at 100.
    key = api_key_from_env(api_key_env, base_url)
    return build_client(base_url, key, timeout, max_retries, 256)
