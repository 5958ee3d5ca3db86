"""Experiment specs (TOML): a dataset, a matrix of variants, a judge, run limits and gates.

Relative paths resolve against the spec file's folder. `${NAME}` in a string is replaced by
the environment variable NAME (an error names it when unset; `${NAME:-default}` falls back),
so specs can point at endpoints and keys without holding them. A variant with `requires_env`
is left out unless those variables are set.
"""

from __future__ import annotations

import itertools
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rag.errors import InputError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunLimits(_Strict):
    concurrency: int = Field(8, ge=1, le=1024)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    retry_base_delay_s: float = Field(0.5, ge=0)
    requests_per_minute: float = Field(0, ge=0)
    tokens_per_minute: float = Field(0, ge=0)
    repeat: int = Field(1, ge=1, le=100)
    ks: tuple[Annotated[int, Field(ge=1)], ...] = (1, 3, 5, 10)
    ragas: bool = True
    # Processes that compute the non-LLM metrics; 0 computes them on the event loop. ragas'
    # metrics cost ~1.5 ms of CPU a case: at hundreds of cases a second that crowds the loop.
    score_workers: int = Field(0, ge=0, le=64)
    # Pause between starting one request worker and the next (see RunSettings.stagger_s).
    stagger_s: float = Field(0.005, ge=0, le=10)


class VariantSpec(_Strict):
    """One system configuration. List values in `matrix` expand into one variant each."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.{}=,-]+$")
    system: Literal["pipeline", "openai", "http"] = "pipeline"
    # pipeline
    provider: str | None = None
    embedder: str | None = None
    mode: Literal["dense", "lexical", "hybrid"] | None = None
    k: Annotated[int, Field(ge=1, le=1000)] | None = None
    fusion: Literal["rrf", "weighted"] | None = None
    rrf_k: Annotated[int, Field(ge=1)] | None = None
    dense_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    candidates: Annotated[int, Field(ge=1)] | None = None
    # openai / http
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    url: str | None = None
    # limits and prices, overriding [run]
    concurrency: Annotated[int, Field(ge=1, le=1024)] | None = None
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    requests_per_minute: Annotated[float, Field(ge=0)] | None = None
    tokens_per_minute: Annotated[float, Field(ge=0)] | None = None
    requires_env: list[str] = []  # the variant is left out unless all of these are set
    price_prompt_per_mtok: float = Field(0.0, ge=0)
    price_completion_per_mtok: float = Field(0.0, ge=0)
    matrix: dict[str, list[Any]] = {}

    @model_validator(mode="after")
    def _system_fields(self) -> VariantSpec:
        if self.system == "openai" and not (self.base_url and self.model):
            raise ValueError("an openai variant needs base_url and model")
        if self.system == "http" and not self.url:
            raise ValueError("an http variant needs url")
        return self

    def retrieval(self) -> dict[str, Any]:
        names = ("mode", "k", "fusion", "rrf_k", "dense_weight", "candidates")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class JudgeSpec(_Strict):
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    embedding_model: str | None = None
    timeout_s: float = Field(120.0, gt=0)


class Gate(_Strict):
    """`min` / `max`: absolute bounds on the variant's mean; `max_drop`: the largest allowed
    worsening of the mean against the baseline (a fall, or a rise for metrics where lower is
    better), failing only when the paired test says the change is real."""

    min: float | None = None
    max: float | None = None
    max_drop: float | None = Field(None, ge=0)
    variants: list[str] = []  # empty: every variant


class DatasetImport(_Strict):
    """Cases built at run time from public files by an importer (nothing is copied)."""

    kind: Literal["beir", "squad", "bfcl"]
    tenant: str
    queries: str | None = None  # beir
    qrels: str | None = None  # beir
    qa: str | None = None  # squad
    corpus: str | None = None  # beir, squad: checks judged ids and fills reference contexts
    questions: str | None = None  # bfcl
    answers: str | None = None  # bfcl (none for the irrelevance category)

    @model_validator(mode="after")
    def _files(self) -> DatasetImport:
        needed = {"beir": ("queries", "qrels"), "squad": ("qa",), "bfcl": ("questions",)}
        missing = [f for f in needed[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} import needs {', '.join(missing)}")
        return self


class ExperimentSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    dataset: str | None = None
    dataset_import: list[DatasetImport] = []
    tools_file: str | None = None
    limit: Annotated[int, Field(ge=1)] | None = None
    tags: list[str] = []
    rag: dict[str, Any] = {}  # an inline pipeline configuration (rag.config schema)
    rag_config: str | None = None  # or a path to one
    ingest: bool = True
    run: RunLimits = RunLimits()
    judge: JudgeSpec | None = None
    variants: list[VariantSpec] = Field(min_length=1)
    gates: dict[str, Gate] = {}
    confidence: float = Field(0.95, gt=0.5, lt=1)
    webhook_url: str | None = None
    source: str = ""
    base_dir: str = "."

    @model_validator(mode="after")
    def _one_dataset(self) -> ExperimentSpec:
        if (self.dataset is None) == (not self.dataset_import):
            raise ValueError("give either dataset (a golden file) or [[dataset_import]]")
        return self

    @model_validator(mode="after")
    def _unique_variants(self) -> ExperimentSpec:
        names = [v.name for v in self.expanded_variants()]
        if not names:
            raise ValueError("the variants expand to none: a matrix list is empty")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate variant names: {', '.join(duplicates)}")
        return self

    def expanded_variants(self) -> list[VariantSpec]:
        """Every variant, with `matrix` lists expanded (name gets `{key}` placeholders filled)."""
        out: list[VariantSpec] = []
        for variant in self.variants:
            if not variant.matrix:
                out.append(variant)
                continue
            keys = sorted(variant.matrix)
            for values in itertools.product(*(variant.matrix[k] for k in keys)):
                chosen = dict(zip(keys, values, strict=True))
                try:
                    name = variant.name.format(**chosen) if "{" in variant.name else (
                        variant.name + "-" + "-".join(f"{k}={v}" for k, v in chosen.items()))
                except (KeyError, IndexError, AttributeError) as exc:
                    raise ValueError(f"variant name {variant.name!r}: a placeholder names no "
                                     f"matrix key ({', '.join(keys)}): {exc!r}") from None
                data = {**variant.model_dump(), **chosen, "name": name, "matrix": {}}
                out.append(VariantSpec.model_validate(data))
        return out

    def path(self, relative: str) -> Path:
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else Path(self.base_dir) / candidate


def _expand_env(value: Any, source: str) -> Any:
    if isinstance(value, str):
        def replace(match: re.Match[str]) -> str:
            name, fallback = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if fallback is not None:
                return fallback
            raise InputError(f"environment variable {name} is not set", location=source)
        return _ENV.sub(replace, value)
    if isinstance(value, list):
        return [_expand_env(v, source) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v, source) for k, v in value.items()}
    return value


def load_spec(path: Path) -> ExperimentSpec:
    """Read, expand and validate a spec; errors name the file and the field."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"experiment spec not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read experiment spec: {exc}", location=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"invalid TOML: {exc}", location=str(path)) from None
    except RecursionError:
        raise InputError("invalid TOML: nested too deeply", location=str(path)) from None
    return parse_spec(raw, str(path), Path(path).resolve().parent)


def _enabled(variant: Any) -> bool:
    needs = variant.get("requires_env", []) if isinstance(variant, dict) else []
    return all(isinstance(n, str) and os.environ.get(n) for n in needs)


def parse_spec(raw: dict[str, Any], source: str, base_dir: Path) -> ExperimentSpec:
    if isinstance(raw.get("variants"), list):  # before expansion: skipped ones may name unset vars
        raw = {**raw, "variants": [v for v in raw["variants"] if _enabled(v)]}
    raw = _expand_env(raw, source)
    try:
        return ExperimentSpec.model_validate({**raw, "source": source, "base_dir": str(base_dir)})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(f"field '{field}': {first['msg']}{more}", location=source) from None
