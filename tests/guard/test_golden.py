"""Golden datasets: the bundled demo, format-independent hashing, and located input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from guard.golden import (
    ExpectedToolCall,
    GoldenCase,
    case_from_dict,
    dataset_hash,
    load_dataset,
    load_tools,
    normalize_tool,
    save_jsonl,
)
from rag.domain import ChatMessage
from rag.errors import InputError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "datasets" / "demo"
GOOD = {"id": "q1", "tenant": "hr", "question": "How many days of leave?"}
TOOL = {
    "name": "reset_password",
    "description": "Reset a password.",
    "parameters": {
        "type": "dict",
        "properties": {"username": {"type": "string"}, "notify": {"type": "boolean"}},
        "required": ["username"],
    },
}


def write_jsonl(path: Path, *rows: object) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def raised(path: Path, **kwargs: Any) -> str:
    with pytest.raises(InputError) as info:
        load_dataset(path, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- the demo


def test_demo_loads_and_validates() -> None:
    dataset = load_dataset(DEMO / "golden.jsonl", known_tenants={"hr", "it"})

    assert dataset.name == "demo"
    assert dataset.tenants() == ("hr", "it")
    assert 40 <= len(dataset.cases) <= 45
    assert len(dataset.content_hash) == 16
    kinds = {tag: sum(tag in c.tags for c in dataset.cases) for tag in ("unanswerable", "tools")}
    assert kinds == {"unanswerable": 8, "tools": 8}
    assert sum(c.conversation is not None for c in dataset.cases) == 4
    assert any(c.expected_tool_calls == () for c in dataset.cases)


def test_demo_document_ids_name_files_of_the_case_tenant() -> None:
    dataset = load_dataset(DEMO / "golden.jsonl")
    for case in dataset.cases:
        stems = {p.stem for p in (DEMO / "corpus" / case.tenant).iterdir()}
        assert set(case.relevant_doc_ids) <= stems, case.id
        assert case.is_impossible or case.answers or case.expected_tool_calls is not None


def test_demo_corpus_has_every_format_per_tenant() -> None:
    for tenant in ("hr", "it"):
        files = list((DEMO / "corpus" / tenant).iterdir())
        assert {p.suffix for p in files} == {".md", ".txt", ".html", ".pdf"}
        assert 6 <= len(files) <= 8
        assert all(p.stat().st_size < 20_000 for p in files)


def test_demo_tools_file_is_attached_to_cases_without_their_own() -> None:
    dataset = load_dataset(DEMO / "golden.jsonl")
    names = {t["name"] for t in load_tools(DEMO / "tools.json")}
    assert names == {"create_it_ticket", "reset_password", "book_leave", "get_leave_balance"}
    assert all({t["name"] for t in case.tools} == names for case in dataset.cases)


# --------------------------------------------------------------------------- formats and hash


def _table(raw_rows: list[dict[str, Any]]) -> pd.DataFrame:
    encoded = [
        {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()}
        for row in raw_rows
    ]
    return pd.DataFrame(encoded)


def test_jsonl_csv_and_parquet_of_the_same_cases_give_the_same_hash(tmp_path: Path) -> None:
    source = DEMO / "golden.jsonl"
    raw = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    table = _table(raw)
    table.to_csv(tmp_path / "golden.csv", index=False)
    table.to_parquet(tmp_path / "golden.parquet", index=False)
    tools = DEMO / "tools.json"

    datasets = [
        load_dataset(source),
        load_dataset(tmp_path / "golden.csv", tools_file=tools),
        load_dataset(tmp_path / "golden.parquet", tools_file=tools),
    ]

    assert len({d.content_hash for d in datasets}) == 1
    assert datasets[0].cases == datasets[1].cases == datasets[2].cases


def test_hash_changes_with_content_and_order() -> None:
    a = GoldenCase(id="a", tenant="hr", question="x?")
    b = GoldenCase(id="b", tenant="hr", question="y?")
    assert dataset_hash([a, b]) != dataset_hash([b, a])
    assert dataset_hash([a]) != dataset_hash([GoldenCase(id="a", tenant="hr", question="z?")])


def test_save_jsonl_round_trips(tmp_path: Path) -> None:
    dataset = load_dataset(DEMO / "golden.jsonl")
    out = save_jsonl(dataset.cases, tmp_path / "nested" / "copy.jsonl")
    again = load_dataset(out)
    assert again.cases == dataset.cases
    assert again.content_hash == dataset.content_hash


# --------------------------------------------------------------------------- case values


def test_list_of_relevant_ids_means_grade_one_and_maps_keep_grades() -> None:
    listed = case_from_dict({**GOOD, "relevant_doc_ids": ["a", "b"]}, location="x")
    graded = case_from_dict({**GOOD, "relevant_doc_ids": {"a": 2, "b": 0}}, location="x")
    assert listed.relevant_doc_ids == {"a": 1, "b": 1}
    assert graded.relevant_doc_ids == {"a": 2, "b": 0}


def test_messages_for_question_and_conversation() -> None:
    single = case_from_dict(GOOD, location="x")
    chat = case_from_dict(
        {
            "id": "c",
            "tenant": "hr",
            "conversation": [
                {"role": "user", "content": "Leave days?"},
                {"role": "assistant", "content": "25."},
                {"role": "user", "content": "And carry-over?"},
            ],
        },
        location="x",
    )
    assert single.messages() == [ChatMessage("user", "How many days of leave?")]
    assert [m.role for m in chat.messages()] == ["user", "assistant", "user"]
    assert chat.question is None


def test_bfcl_dict_types_become_json_schema_and_expectations_keep_allowed_values() -> None:
    case = case_from_dict(
        {
            **GOOD,
            "tools": [TOOL],
            "expected_tool_calls": [
                {"name": "reset_password", "arguments": {"username": ["jo"], "notify": ["", True]}}
            ],
        },
        location="x",
    )
    assert case.tools[0]["parameters"]["type"] == "object"
    assert case.expected_tool_calls == (
        ExpectedToolCall("reset_password", {"username": ["jo"], "notify": ["", True]}),
    )
    assert case.expected_tool_calls[0].is_optional("notify")
    assert not case.expected_tool_calls[0].is_optional("username")


def test_normalize_tool_unwraps_openai_form_and_maps_nested_types() -> None:
    wrapped = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "dict",
                "properties": {
                    "xs": {"type": "tuple", "items": {"type": "float"}},
                    "anything": {"type": "any"},
                },
            },
        },
    }
    params = normalize_tool(wrapped)["parameters"]
    assert params["properties"]["xs"] == {"type": "array", "items": {"type": "number"}}
    assert "type" not in params["properties"]["anything"]


# --------------------------------------------------------------------------- located errors


@pytest.mark.parametrize(
    ("second_line", "expected"),
    [
        ('{"id": "q2", "tenant": "hr"', ":2: invalid JSON"),
        ('["not", "an", "object"]', ":2: expected a JSON object, got list"),
        ({"id": "q2", "tenant": "hr"}, ":2: field 'question': a case needs 'question'"),
        (
            {**GOOD, "id": "q2", "answers": "25"},
            ":2: field 'answers': Input should be a valid list",
        ),
        ({**GOOD, "id": "q2", "question": 7}, ":2: field 'question': Input should be a valid str"),
        ({**GOOD, "id": "q2", "questoin": "x"}, ":2: field 'questoin': unknown field"),
        ({**GOOD, "id": "q2", "tenant": "h'r"}, ":2: field 'tenant': invalid tenant id"),
        (
            {**GOOD, "id": "q2", "relevant_doc_ids": {"d": -1}},
            ":2: field 'relevant_doc_ids.d': Input should be greater than or equal to 0",
        ),
        (
            {**GOOD, "id": "q2", "is_impossible": True, "answers": ["x"]},
            ":2: field 'answers': an unanswerable case",
        ),
        (
            {"id": "q2", "tenant": "hr", "conversation": [{"role": "assistant", "content": "hi"}]},
            ":2: field 'conversation': the last turn must be the user's question",
        ),
        (
            {**GOOD, "id": "q2", "tools": [TOOL], "expected_tool_calls": [{"name": "nuke"}]},
            ":2: field 'expected_tool_calls[0].name': tool 'nuke' is not among the tools",
        ),
        (
            {
                **GOOD,
                "id": "q2",
                "tools": [TOOL],
                "expected_tool_calls": [
                    {"name": "reset_password", "arguments": {"username": ["a"], "user": ["a"]}}
                ],
            },
            ":2: field 'expected_tool_calls[0].arguments.user': 'user' is not a parameter",
        ),
        (
            {**GOOD, "id": "q2", "expected_tool_calls": []},
            ":2: field 'expected_tool_calls': expected tool calls need tool schemas",
        ),
        ({**GOOD}, ":2: field 'id': duplicate id 'q1' (first used at {path}:1)"),
    ],
)
def test_bad_line_is_named_by_file_line_and_field(
    tmp_path: Path, second_line: object, expected: str
) -> None:
    path = tmp_path / "cases.jsonl"
    text = json.dumps(GOOD) + "\n"
    text += second_line if isinstance(second_line, str) else json.dumps(second_line)
    path.write_text(text + "\n", encoding="utf-8")

    message = raised(path)

    assert message.startswith(f"{path}:2")
    assert str(path) + expected.format(path=path) in message


def test_unknown_tenant_is_reported_when_tenants_are_known(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "cases.jsonl", GOOD, {**GOOD, "id": "q2", "tenant": "it"})
    assert f"{path}:2: field 'tenant': unknown tenant 'it' (known: hr)" in raised(
        path, known_tenants={"hr"}
    )


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"id": "caf\xe9"}\n')
    assert raised(path).startswith(f"{path}:2: not UTF-8 text")


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_text(content, encoding="utf-8")
    assert raised(path) == f"{path}: the dataset is empty: no cases found"


def test_many_problems_are_collected_into_one_error(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "cases.jsonl", *({"id": f"q{i}", "tenant": "hr"} for i in range(25))
    )
    lines = raised(path).splitlines()
    assert lines[0] == f"{path}: 25 problems (the first 20 shown):"
    assert len(lines) == 21
    assert lines[1] == f"  {path}:1: field 'question': a case needs 'question' or 'conversation'"
    assert lines[-1].startswith(f"  {path}:20: ")


def test_csv_errors_count_the_header_line(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_text(
        'id,tenant,question,answers,is_impossible\nq1,hr,Leave?,"[""25 days""]",false\n'
        "q2,hr,Leave?,25 days,false\n",
        encoding="utf-8",
    )
    assert raised(path).startswith(f"{path}:3: field 'answers': this cell must hold JSON")


def test_parquet_errors_name_the_row_index(tmp_path: Path) -> None:
    path = tmp_path / "cases.parquet"
    pd.DataFrame({"id": ["q1", "q2"], "tenant": ["hr", "hr"], "question": ["a?", None]}).to_parquet(
        path
    )
    assert raised(path).startswith(f"{path}:row 1: field 'question': a case needs")


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "cases.parquet"
    path.write_text("id,tenant\n", encoding="utf-8")
    assert raised(path).startswith(f"{path}: not a readable Parquet file")


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    assert "unknown dataset format '.xlsx'" in raised(tmp_path / "cases.xlsx")
    assert raised(tmp_path / "absent.jsonl") == f"{tmp_path / 'absent.jsonl'}: no such file"


def test_bad_tools_file_names_the_tool(tmp_path: Path) -> None:
    tools = tmp_path / "my-tools.json"
    tools.write_text(json.dumps([TOOL, {"name": "x", "parameters": {"type": "string"}}]))
    cases = write_jsonl(tmp_path / "cases.jsonl", GOOD)
    message = raised(cases, tools_file=tools)
    assert message.startswith(f"{tools}: field '[1].parameters': tool 'x'")
