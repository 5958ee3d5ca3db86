"""The guard's composition root: experiment spec in, wired systems under test out."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from guard.engine import RunSettings, Variant
from guard.limits import RetryPolicy
from guard.ports import SystemUnderTest
from guard.scoring import Judge
from guard.spec import ExperimentSpec, VariantSpec
from rag.bootstrap import api_key_from_env
from rag.config import RagConfig, config_from_dict, load_config
from rag.errors import InputError
from rag.pipeline import RagPipeline
from rag.ports import Embedder, LLMProvider

ProgressFactory = Callable[[str, int], Callable[[int, int], None]]


def rag_config_for(spec: ExperimentSpec) -> RagConfig:
    """The spec's inline `[rag]` table, else its `rag_config` file, else the usual lookup."""
    if spec.rag:
        return config_from_dict(spec.rag, f"{spec.source} [rag]", Path(spec.base_dir))
    if spec.rag_config:
        return load_config(spec.path(spec.rag_config))
    return load_config(None)


@dataclass
class Wiring:
    config: RagConfig
    variants: list[Variant]
    pipelines: dict[str, RagPipeline] = field(default_factory=dict)
    systems: list[SystemUnderTest] = field(default_factory=list)

    async def aclose(self) -> None:
        for system in self.systems:
            await system.aclose()


@lru_cache(maxsize=1)
def rag_code_hash() -> str:
    """Hash of the `rag` package's source: part of the response-cache key of in-process runs."""
    import rag

    digest = hashlib.sha256()
    for path in sorted(Path(rag.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def corpus_fingerprint(config: RagConfig) -> str:
    """Sizes and modification times of every tenant's corpus files: a changed corpus changes
    the answers, so it must change the response-cache key too."""
    digest = hashlib.sha256()
    for tenant, settings in sorted(config.tenants.items()):
        if not settings.corpus:
            continue
        root = config.resolve(settings.corpus)
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for file in files:
            if file.is_file():
                stat = file.stat()
                digest.update(f"{tenant}:{file}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def run_settings(spec: ExperimentSpec, variant: VariantSpec) -> RunSettings:
    run = spec.run
    return RunSettings(
        concurrency=variant.concurrency or run.concurrency,
        timeout_s=variant.timeout_s or run.timeout_s,
        retry=RetryPolicy(max_retries=run.max_retries, base_delay=run.retry_base_delay_s),
        requests_per_minute=(variant.requests_per_minute
                             if variant.requests_per_minute is not None
                             else run.requests_per_minute),
        tokens_per_minute=(variant.tokens_per_minute
                           if variant.tokens_per_minute is not None
                           else run.tokens_per_minute),
        repeat=run.repeat,
        ks=tuple(run.ks),
        ragas=run.ragas,
        stagger_s=run.stagger_s,
        price_prompt_per_mtok=variant.price_prompt_per_mtok,
        price_completion_per_mtok=variant.price_completion_per_mtok,
    )


def _group_config(config: RagConfig, embedder: str | None, provider: str | None) -> RagConfig:
    """The pipeline configuration one variant needs: its embedder and provider forced."""
    if embedder is None and provider is None:
        return config
    defaults = config.defaults.model_copy(
        update={k: v for k, v in (("embedder", embedder), ("provider", provider)) if v}
    )
    tenants = {
        name: settings.model_copy(
            update={k: None for k, v in (("embedder", embedder), ("provider", provider)) if v}
        )
        for name, settings in config.tenants.items()
    }
    data_dir = config.data_dir
    if embedder and embedder != config.defaults.embedder:
        data_dir = str(Path(config.data_dir) / f"embedder-{embedder}")  # vectors differ
    return config.model_copy(update={"defaults": defaults, "tenants": tenants,
                                     "data_dir": data_dir})


def build_wiring(spec: ExperimentSpec, config: RagConfig) -> Wiring:
    from guard.adapters.http_sut import HttpJsonSystem
    from guard.adapters.openai_sut import OpenAIEndpointSystem
    from guard.adapters.pipeline_sut import PipelineSystem
    from rag.bootstrap import build_pipeline

    embedders: dict[str, Embedder] = {}
    providers: dict[str, LLMProvider] = {}
    wiring = Wiring(config, [])
    for variant in spec.expanded_variants():
        system: SystemUnderTest
        if variant.system == "pipeline":
            group = f"{variant.embedder or '-'}|{variant.provider or '-'}"
            if group not in wiring.pipelines:
                wiring.pipelines[group] = build_pipeline(
                    _group_config(config, variant.embedder, variant.provider), embedders,
                    providers,
                )
            provider_name = variant.provider or config.defaults.provider
            describe = {
                "embedder": variant.embedder or config.defaults.embedder,
                "provider": provider_name,
                "provider_config": config.provider_config(provider_name).model_dump(),
                "tenants": {t: s.model_dump() for t, s in config.tenants.items()},
                "corpora": corpus_fingerprint(config),
                # The pipeline is code: a change to it must not be answered from the cache.
                "rag_code": rag_code_hash(),
            }
            system = PipelineSystem(wiring.pipelines[group], variant.retrieval(), describe)
        elif variant.system == "openai":
            system = OpenAIEndpointSystem(
                variant.base_url or "", variant.model or "",
                _key(variant.api_key_env, variant.base_url or "", spec.source),
                timeout=variant.timeout_s or spec.run.timeout_s,
                max_connections=max(variant.concurrency or spec.run.concurrency, 8),
                retrieval=variant.retrieval(),
            )
        else:
            system = HttpJsonSystem(variant.url or "",
                                    timeout=variant.timeout_s or spec.run.timeout_s)
        wiring.systems.append(system)
        wiring.variants.append(Variant(variant.name, system, run_settings(spec, variant)))
    return wiring


def build_judge(spec: ExperimentSpec) -> Judge | None:
    if spec.judge is None:
        return None
    from guard.adapters.ragas_judge import RagasJudge

    judge = spec.judge
    return RagasJudge(
        base_url=judge.base_url,
        model=judge.model,
        api_key=_key(judge.api_key_env, judge.base_url, spec.source),
        embedding_model=judge.embedding_model,
        timeout=judge.timeout_s,
    )


def _key(env_name: str, base_url: str, source: str) -> str:
    try:
        return api_key_from_env(env_name, base_url)
    except InputError as exc:
        raise InputError(str(exc), location=source) from None


def describe_variants(spec: ExperimentSpec, config: RagConfig) -> list[dict[str, Any]]:
    """What MLflow and reports record about each variant."""
    out = []
    for variant in spec.expanded_variants():
        row: dict[str, Any] = {"name": variant.name, "system": variant.system}
        if variant.system == "pipeline":
            merged = {**config.defaults.model_dump(), **variant.retrieval()}
            row.update({
                "provider": variant.provider or config.defaults.provider,
                "embedder": variant.embedder or config.defaults.embedder,
                "lexical_engine": config.lexical.engine,
                **{k: merged[k] for k in ("mode", "k", "fusion", "rrf_k")},
            })
        elif variant.system == "openai":
            row.update({"base_url": variant.base_url, "model": variant.model,
                        **variant.retrieval()})
        else:
            row["url"] = variant.url
        out.append(row)
    return out
