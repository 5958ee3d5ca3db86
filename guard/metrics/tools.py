"""Tool-call scoring with BFCL (Berkeley Function Calling Leaderboard) semantics.

Inputs are plain data:

- predicted calls: ``[{"name": str, "arguments": dict | JSON text}]``, in the order made;
- expected calls, BFCL form: ``[{func_name: {param: [allowed values, ...]}}]``; the allowed value
  ``""`` means the parameter may be left out; ``[]`` means no call is right (BFCL irrelevance);
- tool schemas: OpenAI function schemas (``{"type": "function", "function": {...}}`` or the inner
  object) or BFCL function docs (``"parameters": {"type": "dict", ...}``).

A predicted call matches an expected call when the names are equal (exactly) and
:func:`argument_errors` finds nothing wrong. Selection (names) and arguments are scored apart.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

Schema = Mapping[str, Any]
ExpectedCall = Mapping[str, Mapping[str, Sequence[Any]]]

_IGNORED_CHARS = re.compile(r"[ ,./\-_*^]")
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "float": (int, float), "number": (int, float),
    "boolean": (bool,), "array": (list, tuple), "tuple": (list, tuple), "dict": (dict,),
    "object": (dict,), "null": (type(None),),
}


def normalize_string(text: str) -> str:
    """BFCL string normalisation: lowercase, then remove spaces and the characters , . / - _ * ^."""
    return _IGNORED_CHARS.sub("", text.lower())


def tool_parameters(tools: Sequence[Schema]) -> dict[str, Schema]:
    """Map each tool name to its parameters schema, from OpenAI or BFCL function schemas."""
    out: dict[str, Schema] = {}
    for tool in tools:
        function = tool.get("function", tool)
        out[function["name"]] = function.get("parameters") or {}
    return out


def _type_ok(value: Any, schema: Schema) -> bool:
    declared = schema.get("type")
    if declared is None or declared == "any":
        return True
    if isinstance(declared, list):
        return any(_type_ok(value, {**schema, "type": t}) for t in declared)
    allowed = _PYTHON_TYPES.get(declared)
    if allowed is None:
        return True
    if isinstance(value, bool) and bool not in allowed:
        return False
    if not isinstance(value, allowed):
        return False
    if isinstance(value, (list, tuple)) and isinstance(schema.get("items"), Mapping):
        return all(_type_ok(item, schema["items"]) for item in value)
    if isinstance(value, dict) and isinstance(schema.get("properties"), Mapping):
        props = schema["properties"]
        return all(_type_ok(v, props[k]) for k, v in value.items() if k in props)
    return True


def _options(allowed: Any) -> list[Any]:
    return list(allowed) if isinstance(allowed, list) else [allowed]


def value_matches(value: Any, allowed: Any) -> bool:
    """Whether ``value`` equals one allowed value, BFCL style.

    Strings compare after :func:`normalize_string`; numbers compare numerically (``7 == 7.0``)
    but a bool is never a number; lists (or tuples) compare element by element with this same
    rule and must have the same length; an allowed dict is a pattern ``{key: [allowed values]}``
    checked key by key (no key outside the pattern, a key whose options include ``""`` may be
    left out); ``None`` matches only ``None``.
    """
    if isinstance(allowed, str):
        return isinstance(value, str) and normalize_string(value) == normalize_string(allowed)
    if isinstance(allowed, bool) or allowed is None:
        return value is allowed
    if isinstance(allowed, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == allowed
    if isinstance(allowed, (list, tuple)):
        return (isinstance(value, (list, tuple)) and len(value) == len(allowed)
                and all(value_matches(v, a) for v, a in zip(value, allowed, strict=True)))
    if isinstance(allowed, Mapping):
        if not isinstance(value, Mapping) or not set(value) <= set(allowed):
            return False
        return (all(any(value_matches(v, a) for a in _options(allowed[k]))
                    for k, v in value.items())
                and all("" in _options(opts) for k, opts in allowed.items() if k not in value))
    return bool(value == allowed)


def argument_errors(
    arguments: Mapping[str, Any], allowed: Mapping[str, Sequence[Any]], schema: Schema | None
) -> list[str]:
    """Everything wrong with one call's arguments against its expected call; ``[]`` if correct.

    Checked, BFCL style: every parameter the schema requires is present; no parameter outside
    the schema; no parameter the expected call does not list; each value has the schema's type
    (an int is accepted for a float/number, a bool is never a number; array ``items`` and dict
    ``properties`` types are checked recursively), except that a value equal to an allowed value
    that itself breaks the schema's type passes (BFCL writes variable references such as
    ``"data['x']"`` for an array, or ``None`` for "no value", that way); each value matches one
    allowed value (:func:`value_matches`); a listed parameter
    may be left out only if ``""`` is among its allowed values. With ``schema`` None only the
    checks against ``allowed`` run.
    """
    errors: list[str] = []
    props: Mapping[str, Any] = (schema or {}).get("properties") or {}
    required: Sequence[str] = (schema or {}).get("required") or []
    errors += [f"missing required parameter {p!r}" for p in required if p not in arguments]
    for param, value in arguments.items():
        if schema is not None and param not in props:
            errors.append(f"parameter {param!r} is not in the schema")
        elif param not in allowed:
            errors.append(f"parameter {param!r} is not expected")
        elif schema is not None and not _type_ok(value, props[param]) and not any(
                value_matches(value, option) and not _type_ok(option, props[param])
                for option in allowed[param]):
            errors.append(f"parameter {param!r} has the wrong type: {value!r}")
        elif not any(value_matches(value, option) for option in allowed[param]):
            errors.append(f"parameter {param!r} has a wrong value: {value!r}")
    errors += [f"missing parameter {p!r}" for p, options in allowed.items()
               if p not in arguments and p not in required and "" not in options]
    return errors


@dataclass(frozen=True)
class ToolCallScores:
    """Scores of one case's tool calls (see :func:`score_tool_calls` for the definitions)."""

    selection_precision: float | None
    selection_recall: float | None
    selection_f1: float
    argument_accuracy: float | None
    exact_match: bool
    ordered_match: bool
    unordered_match: bool
    correct: bool
    errors: tuple[str, ...]

    def as_dict(self) -> dict[str, float | None]:
        """The numeric scores (booleans as 0.0/1.0), without the error messages."""
        return {k: (float(v) if isinstance(v, bool) else v)
                for k, v in asdict(self).items() if k != "errors"}


def _parse_arguments(raw: Any) -> Mapping[str, Any] | None:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return None
    return raw if isinstance(raw, Mapping) else None


def _max_matching(edges: list[list[int]], n_right: int) -> list[int | None]:
    """A maximum bipartite matching, as the left node owning each right node (or None).

    Augmenting paths; n is a handful of calls.
    """
    owner: list[int | None] = [None] * n_right

    def augment(left: int, seen: set[int]) -> bool:
        for right in edges[left]:
            if right not in seen:
                seen.add(right)
                current = owner[right]
                if current is None or augment(current, seen):
                    owner[right] = left
                    return True
        return False

    for left in range(len(edges)):
        augment(left, set())
    return owner


def score_tool_calls(
    predicted: Sequence[Mapping[str, Any]],
    expected: Sequence[ExpectedCall],
    tools: Sequence[Schema],
    *,
    order_matters: bool = False,
) -> ToolCallScores:
    """Score predicted tool calls against expected BFCL calls.

    Selection, over tool names as multisets (m = size of the multiset intersection):
    precision = m / #predicted, ``None`` when nothing was called; recall = m / #expected,
    ``None`` when nothing was expected; F1 = 2PR / (P + R) (0.0 if P + R = 0), and, where P or R
    is undefined, 1.0 when both sides are empty (nothing expected, nothing called) and 0.0
    otherwise. So on an irrelevance case any call gives precision 0.0 and F1 0.0.

    Arguments: ``argument_accuracy`` = (pairs with correct arguments) / m, the pairs being a
    one-to-one assignment of same-name calls that maximises correct pairs; ``None`` when m = 0.

    Whole-case verdicts, all False when the number of calls differs:
    ``exact_match``: the i-th predicted call matches the i-th expected call, names and
    arguments; ``ordered_match``: the sequence of names is the expected one (arguments not
    checked); ``unordered_match``: the multiset of names is the expected one;
    ``correct``: each expected call is matched by a distinct predicted call with the same name and
    correct arguments, and no call is left over, in any order (BFCL's parallel rule), or in the
    expected order when ``order_matters`` (then it equals ``exact_match``). With nothing expected,
    all four are True exactly when nothing was called.

    ``errors`` explains every failure (for reports). A call with unparsable arguments matches
    nothing. Raises ValueError if an expected call does not have exactly one function name.
    """
    if any(len(call) != 1 for call in expected):
        raise ValueError("each expected call must be {function_name: {param: [allowed...]}}")
    schemas = tool_parameters(tools)
    exp = [(name, params) for call in expected for name, params in call.items()]
    pred = [(str(call.get("name", "")), _parse_arguments(call.get("arguments")))
            for call in predicted]
    pred_names, exp_names = Counter(n for n, _ in pred), Counter(n for n, _ in exp)
    matched_names = sum((pred_names & exp_names).values())

    found: dict[tuple[int, int], list[str]] = {}
    for i, (name, args) in enumerate(pred):
        for j, (exp_name, allowed) in enumerate(exp):
            if name == exp_name:
                found[i, j] = (["arguments are not a JSON object"] if args is None
                               else argument_errors(args, allowed, schemas.get(name)))
    edges = [[j for j in range(len(exp)) if found.get((i, j)) == []] for i in range(len(pred))]
    owner = _max_matching(edges, len(exp))
    correct_pairs = sum(o is not None for o in owner)
    # Explain the calls left unmatched by the best assignment, against the expected calls left.
    errors = [f"call {i} ({pred[i][0]}) vs expected {j}: {e}"
              for (i, j), messages in found.items() if i not in owner and owner[j] is None
              for e in messages]
    for name in sorted(pred_names | exp_names):
        surplus = pred_names[name] - exp_names[name]
        if surplus:
            errors.append(f"{surplus} unexpected call(s) to {name!r}" if surplus > 0
                          else f"{-surplus} expected call(s) to {name!r} not made")

    same_size = len(pred) == len(exp)
    exact = same_size and all(i in edges[i] for i in range(len(exp)))
    correct = exact if order_matters else same_size and correct_pairs == len(exp)
    if order_matters and not exact and same_size and correct_pairs == len(exp):
        errors.append("the calls are not in the expected order")

    precision = matched_names / len(pred) if pred else None
    recall = matched_names / len(exp) if exp else None
    if precision is None or recall is None:
        f1 = 1.0 if not pred and not exp else 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ToolCallScores(
        selection_precision=precision,
        selection_recall=recall,
        selection_f1=f1,
        argument_accuracy=correct_pairs / matched_names if matched_names else None,
        exact_match=exact,
        ordered_match=same_size and [n for n, _ in pred] == [n for n, _ in exp],
        unordered_match=pred_names == exp_names,
        correct=correct,
        errors=tuple(errors) if not correct else (),
    )
