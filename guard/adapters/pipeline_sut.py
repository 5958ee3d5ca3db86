"""The built-in pipeline as a system under test, in process."""

from __future__ import annotations

from typing import Any

from guard.domain import Context, SutResponse
from guard.golden import GoldenCase
from rag.pipeline import RagPipeline


class PipelineSystem:
    """Answers cases with `RagPipeline.answer`, with this variant's retrieval overrides."""

    def __init__(
        self, pipeline: RagPipeline, retrieval: dict[str, Any], describe: dict[str, Any]
    ) -> None:
        self.name = "pipeline"
        self._pipeline = pipeline
        self._retrieval = retrieval
        self._describe = describe

    def describe(self) -> dict[str, Any]:
        return {"system": "pipeline", **self._describe, "retrieval": self._retrieval}

    async def respond(self, case: GoldenCase) -> SutResponse:
        answer = await self._pipeline.answer(
            case.tenant, case.messages(), tools=case.tools, **self._retrieval
        )
        hits = answer.retrieval.hits
        return SutResponse(
            answer=answer.text,
            contexts=tuple(
                Context(h.chunk_id, h.doc_id, h.text, h.score, rank)
                for rank, h in enumerate(hits, start=1)
            ),
            arms={arm: [h.doc_id for h in arm_hits]
                  for arm, arm_hits in answer.retrieval.arms.items()},
            tool_calls=tuple({"name": c.name, "arguments": c.arguments}
                             for c in answer.tool_calls),
            abstained=answer.abstained,
            cited_chunk_ids=tuple(answer.cited_chunk_ids),
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
            latency_ms=answer.latency_ms,
            model=answer.model,
            timings_ms=dict(answer.timings_ms),
        )

    async def aclose(self) -> None:
        return None
