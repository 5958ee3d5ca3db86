"""LocalExtractiveProvider: extractive answers, abstention, tool choice and argument filling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rag.adapters.local_provider import ABSTENTION, LocalExtractiveProvider
from rag.domain import ChatMessage, ScoredChunk
from rag.errors import InputError
from rag.pipeline import RagPipeline

pytestmark = pytest.mark.anyio

CONTEXTS = [
    ScoredChunk(
        "hr-leave#0",
        "hr-leave",
        "Full-time employees receive 25 vacation days per year. Unused vacation days can be "
        "carried over until March 31. Parental leave lasts 16 weeks at full pay.",
        0.9,
        "Leave policy",
    ),
    ScoredChunk(
        "hr-pay#0",
        "hr-pay",
        "Salaries are paid on the last working day of each month. Expense claims must be "
        "filed within 30 days.",
        0.5,
        "Payroll",
    ),
]


def user(*turns: str) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    for turn in turns:
        messages += [ChatMessage("user", turn), ChatMessage("assistant", "...")]
    return messages[:-1]


async def test_answers_with_the_right_sentence_and_cites_its_chunk() -> None:
    provider = LocalExtractiveProvider()
    generation = await provider.chat(user("When are salaries paid?"), contexts=CONTEXTS)
    assert generation.text == "Salaries are paid on the last working day of each month."
    assert generation.cited_chunk_ids == ["hr-pay#0"]
    assert not generation.abstained
    assert generation.model == "local-extractive"
    assert generation.usage.prompt_tokens > 0 and generation.usage.completion_tokens == 11
    assert generation.latency_ms >= 0


async def test_rare_words_decide_between_sentences() -> None:
    provider = LocalExtractiveProvider()
    generation = await provider.chat(user("How long is parental leave?"), contexts=CONTEXTS)
    assert generation.text == "Parental leave lasts 16 weeks at full pay."


async def test_abstains_when_the_contexts_do_not_cover_the_question() -> None:
    provider = LocalExtractiveProvider()
    for question in ("What is the capital of France?", "What is the dress code for Fridays?"):
        generation = await provider.chat(user(question), contexts=CONTEXTS)
        assert generation.abstained
        assert generation.text == ABSTENTION
        assert generation.cited_chunk_ids == []
    empty = await provider.chat(user("When are salaries paid?"), contexts=[])
    assert empty.abstained


async def test_threshold_is_configurable() -> None:
    question = user("How many vacation days do interns get per year?")
    lenient = await LocalExtractiveProvider(min_coverage=0.5).chat(question, contexts=CONTEXTS)
    strict = await LocalExtractiveProvider(min_coverage=0.9).chat(question, contexts=CONTEXTS)
    assert lenient.text.startswith("Full-time employees receive 25 vacation days")
    assert strict.abstained


async def test_earlier_turns_help_only_when_the_latest_falls_short() -> None:
    provider = LocalExtractiveProvider()
    follow_up = user("Is parental leave paid?", "For how many weeks?")
    generation = await provider.chat(follow_up, contexts=CONTEXTS)
    assert generation.text == "Parental leave lasts 16 weeks at full pay."
    # The latest turn alone is enough here, so the earlier one does not drag the answer back.
    switched = user("Is parental leave paid?", "When are salaries paid?")
    generation = await provider.chat(switched, contexts=CONTEXTS)
    assert generation.text == "Salaries are paid on the last working day of each month."


async def test_a_second_sentence_is_added_when_it_covers_more() -> None:
    provider = LocalExtractiveProvider()
    question = user("How many vacation days per year, and until when can unused days carry over?")
    generation = await provider.chat(question, contexts=CONTEXTS)
    assert generation.text == (
        "Unused vacation days can be carried over until March 31. "
        "Full-time employees receive 25 vacation days per year."
    )
    assert generation.cited_chunk_ids == ["hr-leave#0"]


async def test_max_tokens_cuts_the_answer() -> None:
    provider = LocalExtractiveProvider()
    generation = await provider.chat(
        user("When are salaries paid?"), contexts=CONTEXTS, max_tokens=3
    )
    assert generation.text == "Salaries are paid"


async def test_picks_the_tool_and_fills_enum_number_and_date(tools: list[Any]) -> None:
    provider = LocalExtractiveProvider()
    question = "Please book the Borealis room on 2025-03-14 for 6 attendees"
    generation = await provider.chat(user(question), contexts=CONTEXTS, tools=tools)
    assert [c.name for c in generation.tool_calls] == ["book_meeting_room"]
    assert generation.tool_calls[0].arguments == {
        "room": "Borealis",
        "date": "2025-03-14",
        "attendees": 6,
    }
    assert generation.text == "" and not generation.abstained


async def test_fills_user_and_enum_and_falls_back_for_required_strings(tools: list[Any]) -> None:
    provider = LocalExtractiveProvider()
    question = "Open a high priority ticket for user alice: the VPN is down"
    generation = await provider.chat(user(question), tools=tools)
    (call,) = generation.tool_calls
    assert call.name == "create_ticket"
    assert call.arguments["username"] == "alice"
    assert call.arguments["priority"] == "high"
    # Nothing names a summary, and it is required: the question stands in for it.
    assert (
        call.arguments["summary"] == "Open a high priority ticket for user alice: the VPN is down"
    )


@pytest.mark.parametrize(
    ("tool", "question", "expected"),
    [
        (
            {
                "name": "getOrderStatus",
                "description": "Status of a customer order",
                "parameters": {
                    "type": "object",
                    "properties": {"order_id": {"type": "integer"}},
                    "required": ["order_id"],
                },
            },
            "What is the status of order 5512?",
            {"order_id": 5512},
        ),
        (
            {
                "name": "send_email",
                "description": "Send an email message",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "to": {"type": "string", "format": "email"},
                        "subject": {"type": "string"},
                        "urgent": {"type": "boolean"},
                    },
                    "required": ["to", "subject"],
                },
            },
            "Send an email to bob@example.com with subject 'Quarterly numbers'",
            {"to": "bob@example.com", "subject": "Quarterly numbers"},
        ),
        (
            {
                "name": "set_leave",
                "description": "Register leave days for an employee",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "employee": {"type": "string"},
                        "start_date": {"type": "string"},
                        "end_date": {"type": "string"},
                        "days": {"type": "number"},
                        "kind": {"type": "string", "enum": ["vacation", "sick", "parental"]},
                    },
                    "required": ["employee", "start_date"],
                },
            },
            "Register sick leave for jdoe from 2025-01-06 to 2025-01-08, 2.5 days",
            {
                "employee": "jdoe",
                "start_date": "2025-01-06",
                "end_date": "2025-01-08",
                "days": 2.5,
                "kind": "sick",
            },
        ),
    ],
)
async def test_argument_filling(tool: dict[str, Any], question: str, expected: Any) -> None:
    generation = await LocalExtractiveProvider().chat(user(question), tools=[tool])
    (call,) = generation.tool_calls
    assert call.name == tool["name"]
    assert call.arguments == expected


async def test_no_tool_when_none_fits_and_the_answer_comes_from_the_contexts(
    tools: list[Any],
) -> None:
    provider = LocalExtractiveProvider()
    generation = await provider.chat(
        user("When are salaries paid?"), contexts=CONTEXTS, tools=tools
    )
    assert generation.tool_calls == []
    assert generation.text == "Salaries are paid on the last working day of each month."


async def test_generic_words_alone_do_not_pick_a_tool() -> None:
    weather = [{"name": "get_weather", "description": "Get the current weather for a city"}]
    generation = await LocalExtractiveProvider().chat(
        user("Can I get paid leave for my wedding?"), contexts=CONTEXTS, tools=weather
    )
    assert generation.tool_calls == []


async def test_deterministic(tools: list[Any]) -> None:
    provider = LocalExtractiveProvider()
    question = user("Please book the Aurora room on 2025-04-01 for 3 attendees")
    first = await provider.chat(question, contexts=CONTEXTS, tools=tools)
    second = await provider.chat(question, contexts=CONTEXTS, tools=tools)
    assert (first.text, first.tool_calls) == (second.text, second.tool_calls)


async def test_bad_input_is_an_input_error() -> None:
    provider = LocalExtractiveProvider()
    with pytest.raises(InputError):
        await provider.chat([ChatMessage("system", "hello")], contexts=CONTEXTS)
    with pytest.raises(InputError, match="function name"):
        await provider.chat(user("book a room"), tools=[{"description": "nameless"}])


async def test_in_the_real_pipeline(make_pipeline: Callable[[], RagPipeline]) -> None:
    pipeline = make_pipeline()
    answer = await pipeline.answer("hr", user("How long does parental leave last?"))
    assert answer.text == "Parental leave lasts 16 weeks at full pay."
    assert answer.cited_chunk_ids and all(c.startswith("hr-leave#") for c in answer.cited_chunk_ids)
    unsupported = await pipeline.answer("it", user("How long does parental leave last?"))
    assert unsupported.abstained
