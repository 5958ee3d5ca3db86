"""The pipeline's configuration: one TOML file, validated at the edge, loaded once.

Resolution: an explicit path, else `truthguard.toml` in the working directory, else the
embedded defaults (`rag/defaults.toml`: the demo tenants, offline, local provider).
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rag.errors import InputError
from rag.tenancy import validate_tenant_id

CONFIG_FILE_NAME = "truthguard.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbedderConfig(_Strict):
    kind: Literal["minilm", "hashing", "openai"]
    model: str = ""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    dimension: int = Field(384, ge=1)
    query_prefix: str = ""
    passage_prefix: str = ""


class ProviderConfig(_Strict):
    kind: Literal["local", "openai"]
    model: str = ""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(2, ge=0)
    stream: bool = False
    temperature: float = 0.0


class TenantSettings(_Strict):
    """Per-tenant knobs; anything unset falls back to `[defaults]`."""

    corpus: str | None = None
    embedder: str | None = None
    provider: str | None = None
    mode: Literal["dense", "lexical", "hybrid"] | None = None
    k: Annotated[int, Field(ge=1, le=1000)] | None = None
    fusion: Literal["rrf", "weighted"] | None = None
    rrf_k: Annotated[int, Field(ge=1)] | None = None
    dense_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    candidates: Annotated[int, Field(ge=1, le=10000)] | None = None
    chunk_chars: Annotated[int, Field(ge=100)] | None = None
    max_answer_tokens: Annotated[int, Field(ge=1)] | None = None
    max_context_chunks: Annotated[int, Field(ge=1)] | None = None


class Defaults(_Strict):
    embedder: str = "minilm"
    provider: str = "local"
    mode: Literal["dense", "lexical", "hybrid"] = "hybrid"
    k: int = Field(5, ge=1, le=1000)
    fusion: Literal["rrf", "weighted"] = "rrf"
    rrf_k: int = Field(60, ge=1)
    dense_weight: float = Field(0.5, ge=0, le=1)
    candidates: int = Field(100, ge=1, le=10000)
    chunk_chars: int = Field(1500, ge=100)
    max_answer_tokens: int = Field(512, ge=1)
    max_context_chunks: int = Field(8, ge=1)


class LexicalConfig(_Strict):
    engine: Literal["bm25s", "rank-bm25"] = "bm25s"
    k1: float = Field(1.5, gt=0)
    b: float = Field(0.75, ge=0, le=1)


class VectorConfig(_Strict):
    ann_threshold: int = Field(50_000, ge=1)
    index_kind: Literal["ivf_pq", "ivf_hnsw_sq"] = "ivf_hnsw_sq"
    nprobes: int = Field(20, ge=1)
    refine_factor: int = Field(0, ge=0)


class RagConfig(_Strict):
    data_dir: str = "data"
    defaults: Defaults = Defaults()
    lexical: LexicalConfig = LexicalConfig()
    vectors: VectorConfig = VectorConfig()
    embedders: dict[str, EmbedderConfig] = {}
    providers: dict[str, ProviderConfig] = {}
    tenants: dict[str, TenantSettings] = {}
    source: str = ""  # where this configuration was read from
    base_dir: str = "."  # relative paths (data_dir, corpus) resolve against this

    @field_validator("tenants")
    @classmethod
    def _valid_tenant_ids(cls, value: dict[str, TenantSettings]) -> dict[str, TenantSettings]:
        for tenant in value:
            validate_tenant_id(tenant)
        return value

    def embedder_config(self, name: str) -> EmbedderConfig:
        builtin = {"minilm": EmbedderConfig(kind="minilm"),
                   "hashing": EmbedderConfig(kind="hashing", dimension=256)}
        if name in self.embedders:
            return self.embedders[name]
        if name in builtin:
            return builtin[name]
        raise InputError(f"{self.source}: unknown embedder {name!r}")

    def provider_config(self, name: str) -> ProviderConfig:
        if name in self.providers:
            return self.providers[name]
        if name == "local":
            return ProviderConfig(kind="local", model="local-extractive")
        raise InputError(f"{self.source}: unknown provider {name!r}")

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def tenant(self, name: str) -> TenantSettings:
        validate_tenant_id(name)
        if name not in self.tenants:
            known = ", ".join(sorted(self.tenants)) or "none"
            raise InputError(f"unknown tenant {name!r} (configured: {known}) in {self.source}")
        return self.tenants[name]


def load_config(path: Path | None = None, base_dir: Path | None = None) -> RagConfig:
    """Read and validate a configuration; errors name the file and the offending field."""
    if path is None and Path(CONFIG_FILE_NAME).exists():
        path = Path(CONFIG_FILE_NAME)
    if path is None:
        text = resources.files("rag").joinpath("defaults.toml").read_text(encoding="utf-8")
        source, base = "embedded defaults (rag/defaults.toml)", base_dir or Path.cwd()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read configuration {path}: {exc}") from None
        source, base = str(path), base_dir or Path(path).resolve().parent
    return parse_config(text, source, base)


def parse_config(text: str, source: str, base_dir: Path) -> RagConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"invalid TOML: {exc}", location=source) from None
    except RecursionError:
        raise InputError("invalid TOML: nested too deeply", location=source) from None
    return config_from_dict(raw, source, base_dir)


def config_from_dict(raw: dict[str, Any], source: str, base_dir: Path) -> RagConfig:
    """Validate an already parsed configuration (say, a table inside an experiment spec)."""
    try:
        return RagConfig.model_validate({**raw, "source": source, "base_dir": str(base_dir)})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InputError(f"field '{field}': {first['msg']}", location=source) from None
