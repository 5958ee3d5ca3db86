"""Case results survive the journal's round trip: every field, nothing shared."""

from __future__ import annotations

import dataclasses
import json

from guard.domain import CaseResult, CaseStatus, Context, SutResponse


def _result() -> CaseResult:
    response = SutResponse(
        answer="25 days [leave#0]",
        contexts=(Context("leave#0", "leave", "Full-time staff get 25 days.", 0.9, 1),
                  Context("sick#2", "sick", "Sick leave is separate.", 0.4, 2)),
        arms={"dense": ["leave", "sick"], "lexical": ["leave"]},
        tool_calls=({"name": "book_leave", "arguments": {"days": [1, 2]}},),
        abstained=False,
        cited_chunk_ids=("leave#0",),
        prompt_tokens=420,
        completion_tokens=12,
        latency_ms=201.5,
        model="m",
    )
    return CaseResult(
        run_id="r1", variant="v", case_id="c1", repeat=2, tenant="hr", tags=("leave", "easy"),
        status=CaseStatus.SCORED, metrics={"hit@5": 1.0, "faithfulness": None},
        question="How many days?", error=None, response=response, attempts=3,
        latency_ms=250.0, cost_usd=0.001, cached=False, finished_at=1_700_000_000.5,
    )


def test_a_case_result_round_trips_through_json_with_every_field() -> None:
    result = _result()
    data = result.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(CaseResult)}
    assert set(data["response"]) == {f.name for f in dataclasses.fields(SutResponse)}
    assert CaseResult.from_dict(json.loads(json.dumps(data))) == result


def test_to_dict_matches_asdict_and_shares_no_mutable_value() -> None:
    result = _result()
    data = result.to_dict()
    expected = json.loads(json.dumps(dataclasses.asdict(result)))
    assert json.loads(json.dumps(data)) == expected
    data["metrics"]["hit@5"] = 0.0
    data["response"]["arms"]["dense"].append("x")
    data["response"]["tool_calls"][0]["name"] = "other"
    assert result.metrics["hit@5"] == 1.0
    assert result.response is not None
    assert result.response.arms["dense"] == ["leave", "sick"]
    assert result.response.tool_calls[0]["name"] == "book_leave"


def test_a_result_without_response_keeps_its_error() -> None:
    failed = dataclasses.replace(_result(), status=CaseStatus.TIMEOUT, metrics={}, response=None,
                                 error="no answer within 60 s")
    assert CaseResult.from_dict(failed.to_dict()) == failed
