"""Tool-call scoring on the real BFCL v4 data: ground truth scores 1.0, every perturbation fails."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guard.metrics.tools import (
    argument_errors,
    normalize_string,
    score_tool_calls,
    tool_parameters,
    value_matches,
)

BFCL = Path(__file__).resolve().parents[3] / "shared" / "data" / "bfcl"
CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple"]
Case = tuple[str, list[dict[str, Any]], list[dict[str, Any]]]  # id, tools, ground truth


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _cases(category: str) -> list[Case]:
    tools = {q["id"]: q["function"] for q in _jsonl(BFCL / f"BFCL_v4_{category}.json")}
    answers = _jsonl(BFCL / "possible_answer" / f"BFCL_v4_{category}.json")
    return [(a["id"], tools[a["id"]], a["ground_truth"]) for a in answers]


def _concrete(value: Any, last: bool) -> Any:
    """An allowed value made concrete: dict patterns {key: [options]} become plain dicts."""
    if isinstance(value, dict):
        out = {}
        for key, options in value.items():
            choice = options[-1] if last else options[0]
            if choice != "":
                out[key] = _concrete(choice, last)
        return out
    if isinstance(value, list):
        return [_concrete(v, last) for v in value]
    return value


def _calls_from_truth(truth: list[dict[str, Any]], tools: list[dict[str, Any]],
                      last: bool = False) -> list[dict[str, Any]]:
    """First (or last) allowed value of each parameter; "" means leave the parameter out.

    Two answers contradict their own schema, and are read the only way that can be right:
    simple_python_200 lists "" first for a required parameter (take the first real value), and
    parallel_multiple_26 lists an optional parameter that the schema lacks (leave it out).
    """
    schemas = tool_parameters(tools)
    calls = []
    for call in truth:
        for name, params in call.items():
            props, required = schemas[name]["properties"], schemas[name].get("required", [])
            args = {}
            for param, options in params.items():
                choice = options[-1] if last else options[0]
                if choice == "" and param in required:
                    choice = next(o for o in options if o != "")
                if choice != "" and param in props:
                    args[param] = _concrete(choice, last)
            calls.append({"name": name, "arguments": args})
    return calls


@pytest.mark.parametrize("last", [False, True], ids=["first-allowed", "last-allowed"])
@pytest.mark.parametrize("category", CATEGORIES)
def test_ground_truth_scores_one(category: str, last: bool) -> None:
    cases = _cases(category)
    assert len(cases) in (200, 400)
    for case_id, tools, truth in cases:
        scores = score_tool_calls(_calls_from_truth(truth, tools, last), truth, tools)
        assert scores.correct and scores.exact_match, (case_id, scores.errors)
        assert scores.as_dict() == {
            "selection_precision": 1.0, "selection_recall": 1.0, "selection_f1": 1.0,
            "argument_accuracy": 1.0, "exact_match": 1.0, "ordered_match": 1.0,
            "unordered_match": 1.0, "correct": 1.0}, case_id


@pytest.mark.parametrize("category", ["parallel", "parallel_multiple"])
def test_parallel_order_does_not_matter(category: str) -> None:
    out_of_order = 0
    for case_id, tools, truth in _cases(category):
        calls = _calls_from_truth(truth, tools)[::-1]
        scores = score_tool_calls(calls, truth, tools)
        assert scores.correct and scores.unordered_match, case_id
        strict = score_tool_calls(calls, truth, tools, order_matters=True)
        assert strict.correct == strict.exact_match == scores.exact_match, case_id
        # Reversal can still match in order: BFCL's normalisation folds case ("AA" == "aa").
        out_of_order += not strict.correct
    assert out_of_order > 150


def _rename(calls: list[dict[str, Any]], tools: Any) -> bool:
    calls[0]["name"] += "_v2"
    return True


def _drop_required(calls: list[dict[str, Any]], tools: Any) -> bool:
    required = tool_parameters(tools)[calls[0]["name"]].get("required", [])
    present = [p for p in required if p in calls[0]["arguments"]]
    if not present:
        return False
    del calls[0]["arguments"][present[0]]
    return True


def _wrong_value(calls: list[dict[str, Any]], tools: Any) -> bool:
    for param, value in calls[0]["arguments"].items():
        if isinstance(value, str):
            calls[0]["arguments"][param] = value + " zzz"
            return True
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            calls[0]["arguments"][param] = value + 1000
            return True
    return False


def _extra_call(calls: list[dict[str, Any]], tools: Any) -> bool:
    calls.append(copy.deepcopy(calls[0]))
    return True


def _unknown_param(calls: list[dict[str, Any]], tools: Any) -> bool:
    calls[0]["arguments"]["not_a_parameter"] = 1
    return True


def _wrong_type(calls: list[dict[str, Any]], tools: Any) -> bool:
    props = tool_parameters(tools)[calls[0]["name"]]["properties"]
    for param, value in calls[0]["arguments"].items():
        declared = props[param]["type"]
        if declared == "integer" and isinstance(value, int) and not isinstance(value, bool):
            calls[0]["arguments"][param] = str(value)
            return True
        if declared == "string" and isinstance(value, str) and value.strip("0123456789") != "":
            calls[0]["arguments"][param] = 12345
            return True
        if declared == "boolean" and isinstance(value, bool):
            calls[0]["arguments"][param] = int(value)
            return True
    return False


PERTURBATIONS: dict[str, Callable[[list[dict[str, Any]], Any], bool]] = {
    "renamed": _rename, "missing required": _drop_required, "wrong value": _wrong_value,
    "extra call": _extra_call, "unknown parameter": _unknown_param, "wrong type": _wrong_type}


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("perturbation", list(PERTURBATIONS))
def test_perturbed_calls_are_wrong(category: str, perturbation: str) -> None:
    applied = 0
    for case_id, tools, truth in _cases(category):
        calls = _calls_from_truth(truth, tools)
        if not PERTURBATIONS[perturbation](calls, tools):
            continue
        applied += 1
        scores = score_tool_calls(calls, truth, tools)
        assert not scores.correct and not scores.exact_match, (case_id, calls)
        assert scores.errors, case_id
        if perturbation == "renamed":
            assert scores.selection_recall is not None and scores.selection_recall < 1
        elif perturbation == "extra call":
            assert scores.selection_recall == 1.0
            assert scores.selection_precision is not None and scores.selection_precision < 1
        else:  # selection is right, arguments are not
            assert scores.selection_f1 == 1.0 and scores.unordered_match
            assert scores.argument_accuracy is not None and scores.argument_accuracy < 1
        if perturbation == "wrong type":
            assert any("wrong type" in e for e in scores.errors), scores.errors
    assert applied >= 20


def test_irrelevance_no_call_is_right_any_call_is_wrong() -> None:
    questions = _jsonl(BFCL / "BFCL_v4_irrelevance.json")
    assert len(questions) == 240
    for q in questions:
        none = score_tool_calls([], [], q["function"])
        assert none.correct and none.exact_match and none.selection_f1 == 1.0
        assert none.selection_precision is None and none.selection_recall is None
        assert none.argument_accuracy is None
        call = [{"name": q["function"][0]["name"], "arguments": {}}]
        some = score_tool_calls(call, [], q["function"])
        assert not some.correct and not some.exact_match and not some.unordered_match
        assert some.selection_precision == 0.0 and some.selection_recall is None
        assert some.selection_f1 == 0.0


def test_selection_is_scored_over_name_multisets() -> None:
    tools = [{"name": n, "parameters": {"type": "dict", "properties": {}}} for n in "abc"]
    calls = [{"name": n, "arguments": {}} for n in ("a", "a", "b")]
    scores = score_tool_calls(calls, [{"a": {}}, {"c": {}}], tools)
    assert scores.selection_precision == pytest.approx(1 / 3)
    assert scores.selection_recall == 0.5
    assert scores.selection_f1 == pytest.approx(0.4)
    assert scores.argument_accuracy == 1.0 and not scores.correct
    missed = score_tool_calls([], [{"a": {}}], tools)
    assert missed.selection_precision is None and missed.selection_recall == 0.0
    assert missed.selection_f1 == 0.0 and missed.argument_accuracy is None


def test_ordered_and_unordered_name_matches() -> None:
    tools = [{"name": n, "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}}}
             for n in "ab"]
    expected = [{"a": {"x": [1]}}, {"b": {"x": [2]}}]
    swapped = [{"name": "b", "arguments": {"x": 2}}, {"name": "a", "arguments": {"x": 1}}]
    scores = score_tool_calls(swapped, expected, tools)
    assert scores.correct and scores.unordered_match
    assert not scores.ordered_match and not scores.exact_match
    bad_args = [{"name": "a", "arguments": {"x": 2}}, {"name": "b", "arguments": {"x": 2}}]
    scores = score_tool_calls(bad_args, expected, tools)
    assert scores.ordered_match and not scores.exact_match and scores.argument_accuracy == 0.5


def test_openai_schema_and_json_text_arguments() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "number"}},
        "required": ["city"]}}}]
    expected = [{"get_weather": {"city": ["New York"], "days": [3.0, ""]}}]
    good = [{"name": "get_weather", "arguments": '{"city": "new-york", "days": 3}'}]
    assert score_tool_calls(good, expected, tools).correct
    broken = [{"name": "get_weather", "arguments": '{"city": '}]
    scores = score_tool_calls(broken, expected, tools)
    assert not scores.correct and "not a JSON object" in scores.errors[0]


def test_value_matching_rules() -> None:
    assert normalize_string("New-York, N.Y. */^_") == "newyorkny"
    assert value_matches("new york", "New_York")
    assert value_matches(7, 7.0) and not value_matches(True, 1) and not value_matches(1, True)
    assert value_matches(["A b", 2], ["a-b", 2.0]) and not value_matches(["a"], ["a", "b"])
    pattern = {"name": ["John Doe"], "age": ["", 30]}
    assert value_matches({"name": "john doe"}, pattern)
    assert value_matches({"name": "John Doe", "age": 30}, pattern)
    assert not value_matches({"age": 30}, pattern)
    assert not value_matches({"name": "John Doe", "extra": 1}, pattern)
    assert value_matches(None, None) and not value_matches(0, None)


def test_argument_errors_type_rules() -> None:
    schema = {"type": "dict", "required": ["n"], "properties": {
        "n": {"type": "integer"}, "f": {"type": "float"},
        "xs": {"type": "array", "items": {"type": "float"}}}}
    allowed = {"n": [2], "f": [1.0, ""], "xs": [[1, 2.5], ""]}
    assert argument_errors({"n": 2, "f": 1, "xs": [1, 2.5]}, allowed, schema) == []
    assert "wrong type" in argument_errors({"n": 2.0}, allowed, schema)[0]
    assert "wrong type" in argument_errors({"n": True}, allowed, schema)[0]
    assert "wrong type" in argument_errors({"n": 2, "xs": ["1", 2.5]}, allowed, schema)[0]
    assert "missing required" in argument_errors({"f": 1.0}, allowed, schema)[0]
    assert argument_errors({"n": 2}, {"n": [2], "f": [1.0]}, schema) == ["missing parameter 'f'"]
    outside = argument_errors({"n": 2, "extra": 1}, {"n": [2], "extra": [1, ""]}, schema)
    assert outside == ["parameter 'extra' is not in the schema"]  # as parallel_multiple_26
    unexpected = argument_errors({"n": 2, "f": 1.0}, {"n": [2]}, None)
    assert unexpected == ["parameter 'f' is not expected"]


def test_expected_call_must_name_one_function() -> None:
    with pytest.raises(ValueError, match="function_name"):
        score_tool_calls([], [{"a": {}, "b": {}}], [])
