"""Golden datasets: the cases a run is scored against, loaded and validated at the edge.

A dataset is JSON Lines, CSV or Parquet (chosen by extension), one case a row. CSV and Parquet
cells of list or object fields hold JSON text. Every problem is reported as an `InputError` whose
location names the file, the line (JSONL: 1-based line; CSV: data row number + 1 for the header;
Parquet: `row N`, 0-based) and the field; up to `MAX_PROBLEMS` problems are listed at once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rag.domain import ChatMessage
from rag.errors import InputError
from rag.tenancy import validate_tenant_id

MAX_PROBLEMS = 20
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
CSV_SUFFIXES = frozenset({".csv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
DEFAULT_TOOLS_FILE = "tools.json"

# Fields whose CSV/Parquet cells hold JSON text rather than a plain string.
JSON_FIELDS = frozenset(
    {
        "conversation",
        "answers",
        "relevant_doc_ids",
        "reference_contexts",
        "expected_tool_calls",
        "tools",
        "tags",
    }
)

# BFCL writes Python-ish type names; providers expect JSON Schema ones. None drops the keyword
# ("any" means unconstrained, which in JSON Schema is the absence of "type").
_SCHEMA_TYPES: dict[str, str | None] = {
    "dict": "object",
    "float": "number",
    "double": "number",
    "int": "integer",
    "long": "integer",
    "bool": "boolean",
    "str": "string",
    "list": "array",
    "tuple": "array",
    "any": None,
}
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")

_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}

Role = Literal["system", "user", "assistant", "tool"]


# --------------------------------------------------------------------------- domain values


@dataclass(frozen=True)
class ExpectedToolCall:
    """One expected call in BFCL form: `arguments` maps a parameter to its allowed values.

    An allowed value `""` means the parameter may be left out.
    """

    name: str
    arguments: dict[str, list[Any]] = field(default_factory=dict)

    def is_optional(self, param: str) -> bool:
        """True when `param` may be left out (a parameter not listed must be left out)."""
        return "" in self.arguments.get(param, [""])

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in datasets."""
        return {"name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class GoldenCase:
    """One golden case. Either `question` or `conversation` (multi-turn, ending on a user turn).

    `expected_tool_calls` is None when tools are not evaluated; an empty tuple means that calling
    any tool is wrong. `relevant_doc_ids` maps document ids to graded relevance (1+ = relevant).
    """

    id: str
    tenant: str
    question: str | None = None
    conversation: tuple[dict[str, str], ...] | None = None
    reference_answer: str | None = None
    answers: tuple[str, ...] = ()
    is_impossible: bool = False
    relevant_doc_ids: dict[str, int] = field(default_factory=dict)
    reference_contexts: tuple[str, ...] = ()
    expected_tool_calls: tuple[ExpectedToolCall, ...] | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.question is None) == (self.conversation is None):
            raise ValueError(f"case {self.id!r}: give exactly one of question and conversation")

    def messages(self) -> list[ChatMessage]:
        """The chat to send: the conversation's turns, or the question as one user message."""
        if self.conversation is None:
            return [ChatMessage(role="user", content=cast(str, self.question))]
        return [ChatMessage(cast(Role, m["role"]), m["content"]) for m in self.conversation]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in datasets; empty optional fields are left out."""
        out: dict[str, Any] = {"id": self.id, "tenant": self.tenant}
        optional: dict[str, Any] = {
            "question": self.question,
            "conversation": None if self.conversation is None else list(self.conversation),
            "reference_answer": self.reference_answer,
            "answers": list(self.answers),
            "is_impossible": self.is_impossible or None,
            "relevant_doc_ids": self.relevant_doc_ids,
            "reference_contexts": list(self.reference_contexts),
            "tools": list(self.tools),
            "tags": list(self.tags),
        }
        out.update({key: value for key, value in optional.items() if value not in (None, [], {})})
        if self.expected_tool_calls is not None:
            out["expected_tool_calls"] = [call.to_dict() for call in self.expected_tool_calls]
        return out


@dataclass(frozen=True)
class GoldenDataset:
    """A validated dataset; `content_hash` identifies its cases whatever the file format."""

    name: str
    path: Path
    cases: tuple[GoldenCase, ...]
    content_hash: str

    def tenants(self) -> tuple[str, ...]:
        """The tenants the cases belong to, sorted."""
        return tuple(sorted({case.tenant for case in self.cases}))


# --------------------------------------------------------------------------- problem collection


class _Problems:
    """Collects located problems and raises them as one InputError."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[str, str]] = []
        self.total = 0

    def add(self, location: str, message: str) -> None:
        self.total += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append((location, message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if self.total == 1:
            location, message = self.items[0]
            raise InputError(message, location=location)
        shown = "" if self.total <= MAX_PROBLEMS else f" (the first {MAX_PROBLEMS} shown)"
        lines = [f"  {location}: {message}" for location, message in self.items]
        raise InputError(
            "\n".join([f"{self.total} problems{shown}:", *lines]), location=self.source
        )


def _field_location(where: str, loc: Sequence[int | str]) -> str:
    path, suffix = "", ""
    for part in loc:
        if part == "[key]":
            suffix = " (the key)"  # pydantic's marker for a bad dict key
        elif isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if part.isidentifier() else f"[{json.dumps(part)}]"
    return f"{where}: field '{path.lstrip('.')}'{suffix}" if path else where


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- tool schemas


def normalize_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A function schema `{name, description, parameters}` with JSON Schema type names.

    Accepts the OpenAI tool wrapper `{"type": "function", "function": {...}}` and BFCL's
    `"type": "dict"` / `"float"` / `"tuple"` / `"any"`, converted recursively.
    """
    inner = tool.get("function") if tool.get("type") == "function" else None
    function = dict(inner) if isinstance(inner, Mapping) else dict(tool)
    if isinstance(function.get("parameters"), Mapping):
        function["parameters"] = _json_schema(function["parameters"])
    return function


def _json_schema(node: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(node)
    kind = out.get("type")
    if isinstance(kind, str) and kind.lower() in _SCHEMA_TYPES:
        mapped = _SCHEMA_TYPES[kind.lower()]
        if mapped is None:
            del out["type"]
        else:
            out["type"] = mapped
    if isinstance(out.get("properties"), Mapping):
        out["properties"] = {
            name: _json_schema(sub) if isinstance(sub, Mapping) else sub
            for name, sub in out["properties"].items()
        }
    for key in _SUBSCHEMA_KEYS:
        if isinstance(out.get(key), Mapping):
            out[key] = _json_schema(out[key])
    for key in _SUBSCHEMA_LIST_KEYS:
        if isinstance(out.get(key), list):
            out[key] = [_json_schema(s) if isinstance(s, Mapping) else s for s in out[key]]
    return out


def _tool_problems(tool: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) pairs for a normalized function schema."""
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        return [("name", f"a tool needs a non-empty string name, got {_short(name)}")]
    if not isinstance(tool.get("description", ""), str):
        return [("description", f"tool '{name}': description must be a string")]
    params = tool.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, Mapping) or params.get("type") != "object":
        return [("parameters", f"tool '{name}': parameters must be a JSON Schema object")]
    props = params.get("properties", {})
    if not isinstance(props, Mapping) or not all(isinstance(p, Mapping) for p in props.values()):
        return [("parameters.properties", f"tool '{name}': properties must map names to schemas")]
    required = params.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return [("parameters.required", f"tool '{name}': required must be a list of names")]
    return [
        ("parameters.required", f"tool '{name}': required parameter '{r}' is not in properties")
        for r in required
        if r not in props
    ]


def _parameters(tool: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[str]]:
    params = tool.get("parameters") or {}
    return params.get("properties") or {}, list(params.get("required") or [])


def load_tools(path: str | Path) -> tuple[dict[str, Any], ...]:
    """Read a dataset-level tools file: a JSON list of (OpenAI or BFCL) function schemas."""
    path = Path(path)
    text = _read_text(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", location=f"{path}:{exc.lineno}") from exc
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply", location=str(path)) from None
    if not isinstance(raw, list):
        raise InputError("a tools file holds a JSON list of function schemas", location=str(path))
    problems = _Problems(str(path))
    tools: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            problems.add(f"{path}: item [{index}]", "expected a function schema object")
            continue
        tool = normalize_tool(item)
        for name, message in _tool_problems(tool):
            problems.add(f"{path}: field '[{index}].{name}'", message)
        tools.append(tool)
    for name in _duplicate_names(tools):
        problems.add(str(path), f"two tools are named '{name}'")
    problems.raise_if_any()
    return tuple(tools)


def _duplicate_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    names = [str(tool.get("name")) for tool in tools]
    return sorted({name for name in names if names.count(name) > 1})


# --------------------------------------------------------------------------- row validation

_NonEmpty = Annotated[str, Field(min_length=1)]
_Grade = Annotated[int, Field(ge=0)]


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    role: Role
    content: str


class _ExpectedCall(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: _NonEmpty
    arguments: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}


class _CaseRow(BaseModel):
    """The edge schema of one case; semantic checks follow in `_case_problems`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    id: _NonEmpty
    tenant: str
    question: _NonEmpty | None = None
    conversation: Annotated[list[_Message], Field(min_length=1)] | None = None
    reference_answer: str | None = None
    answers: list[str] = []
    is_impossible: bool = False
    relevant_doc_ids: dict[_NonEmpty, _Grade] = {}
    reference_contexts: list[str] = []
    expected_tool_calls: list[_ExpectedCall] | None = None
    tools: list[dict[str, Any]] = []
    tags: list[_NonEmpty] = []

    @field_validator("relevant_doc_ids", mode="before")
    @classmethod
    def _list_means_grade_one(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        if not all(isinstance(item, str) and item for item in value):
            raise ValueError("a list of relevant document ids must hold non-empty strings")
        return dict.fromkeys(value, 1)


def _pydantic_problems(where: str, exc: ValidationError) -> list[tuple[str, str]]:
    found = []
    for error in exc.errors(include_url=False):
        message = error["msg"]
        if error["type"] not in ("missing", "extra_forbidden"):
            message += f" (got {_short(error['input'])})"
        elif error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see the golden case format)"
        found.append((_field_location(where, error["loc"]), message))
    return found


def _case_problems(
    row: _CaseRow, where: str, known_tenants: Collection[str] | None
) -> list[tuple[str, str]]:
    """Checks pydantic cannot express: tenant, question/conversation, tools vs expectations."""
    found: list[tuple[str, str]] = []
    at = f"{where}: field"
    try:
        validate_tenant_id(row.tenant)
    except InputError as exc:
        found.append((f"{at} 'tenant'", str(exc)))
    else:
        if known_tenants is not None and row.tenant not in known_tenants:
            known = ", ".join(sorted(known_tenants)) or "none"
            found.append((f"{at} 'tenant'", f"unknown tenant '{row.tenant}' (known: {known})"))
    if row.question is None and row.conversation is None:
        found.append((f"{at} 'question'", "a case needs 'question' or 'conversation'"))
    elif row.question is not None and row.conversation is not None:
        found.append((f"{at} 'conversation'", "give 'question' or 'conversation', not both"))
    elif row.question is not None and not row.question.strip():
        found.append((f"{at} 'question'", "the question is blank"))
    elif row.conversation is not None and row.conversation[-1].role != "user":
        found.append((f"{at} 'conversation'", "the last turn must be the user's question"))
    if row.is_impossible and row.answers:
        found.append((f"{at} 'answers'", "an unanswerable case (is_impossible) has no answers"))
    return found


def _tool_call_problems(
    calls: Sequence[ExpectedToolCall], tools: Sequence[Mapping[str, Any]], where: str
) -> list[tuple[str, str]]:
    if not tools:
        message = "expected tool calls need tool schemas: add 'tools' or a dataset tools file"
        return [(f"{where}: field 'expected_tool_calls'", message)]
    by_name = {str(tool.get("name")): tool for tool in tools}
    found: list[tuple[str, str]] = []
    for index, call in enumerate(calls):
        at = f"{where}: field 'expected_tool_calls[{index}]"
        if call.name not in by_name:
            offered = ", ".join(sorted(by_name))
            found.append((f"{at}.name'", f"tool '{call.name}' is not among the tools ({offered})"))
            continue
        props, required = _parameters(by_name[call.name])
        found += [
            (f"{at}.arguments.{param}'", f"'{param}' is not a parameter of tool '{call.name}'")
            for param in call.arguments
            if param not in props
        ]
        found += [
            (f"{at}.arguments'", f"required parameter '{param}' of '{call.name}' is missing")
            for param in required
            if param not in call.arguments
        ]
    return found


def _own_tools(
    raw: Sequence[Mapping[str, Any]], where: str
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    tools = [normalize_tool(item) for item in raw]
    found = [
        (f"{where}: field 'tools[{index}].{name}'", message)
        for index, tool in enumerate(tools)
        for name, message in _tool_problems(tool)
    ]
    found += [
        (f"{where}: field 'tools'", f"two tools are named '{n}'") for n in _duplicate_names(tools)
    ]
    return tools, found


def _validate_case(
    where: str,
    data: object,
    problems: _Problems,
    *,
    shared_tools: Sequence[dict[str, Any]] = (),
    known_tenants: Collection[str] | None = None,
) -> GoldenCase | None:
    """Validate one raw row; add its problems and return None if there are any."""
    if not isinstance(data, Mapping):
        problems.add(where, f"expected a JSON object, got {type(data).__name__}")
        return None
    try:
        row = _CaseRow.model_validate(data)
    except ValidationError as exc:
        for location, message in _pydantic_problems(where, exc):
            problems.add(location, message)
        return None
    found = _case_problems(row, where, known_tenants)
    tools, tool_found = _own_tools(row.tools, where)
    found += tool_found
    calls = None
    if row.expected_tool_calls is not None:
        calls = tuple(ExpectedToolCall(c.name, c.arguments) for c in row.expected_tool_calls)
        if not tool_found:
            found += _tool_call_problems(calls, tools or shared_tools, where)
    for location, message in found:
        problems.add(location, message)
    if found:
        return None
    return _build_case(row, tuple(tools or shared_tools), calls)


def _build_case(
    row: _CaseRow, tools: tuple[dict[str, Any], ...], calls: tuple[ExpectedToolCall, ...] | None
) -> GoldenCase:
    conversation = None
    if row.conversation is not None:
        conversation = tuple({"role": m.role, "content": m.content} for m in row.conversation)
    return GoldenCase(
        id=row.id,
        tenant=row.tenant,
        question=row.question,
        conversation=conversation,
        reference_answer=row.reference_answer,
        answers=tuple(row.answers),
        is_impossible=row.is_impossible,
        relevant_doc_ids=dict(row.relevant_doc_ids),
        reference_contexts=tuple(row.reference_contexts),
        expected_tool_calls=calls,
        tools=tools,
        tags=tuple(row.tags),
    )


def case_from_dict(
    data: Mapping[str, Any],
    *,
    location: str,
    tools: Sequence[dict[str, Any]] = (),
    known_tenants: Collection[str] | None = None,
) -> GoldenCase:
    """Validate one case given as a dict (JSON form); raise InputError naming `location`.

    `tools` are the dataset-level function schemas, used when the case has none of its own.
    """
    problems = _Problems(location)
    case = _validate_case(location, data, problems, shared_tools=tools, known_tenants=known_tenants)
    problems.raise_if_any()
    assert case is not None  # no problems means a case was built
    return case


# --------------------------------------------------------------------------- readers


class JsonLine(NamedTuple):
    """One non-blank line of a JSON Lines file: `value` if it parsed, else `error`."""

    location: str
    value: Any
    error: str | None


def iter_json_lines(path: str | Path) -> Iterator[JsonLine]:
    """Stream the non-blank lines of a JSON Lines file with their 1-based `file:line`."""
    path = Path(path)
    with _open_binary(path) as handle:
        for lineno, raw in enumerate(handle, 1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                yield JsonLine(where, None, message)
                continue
            if not text.strip():
                continue
            try:
                yield JsonLine(where, json.loads(text.rstrip("\r\n")), None)
            except json.JSONDecodeError as exc:
                yield JsonLine(where, None, f"invalid JSON: {exc.msg} at column {exc.colno}")
            except RecursionError:
                yield JsonLine(where, None, "invalid JSON: nested too deeply")


def _open_binary(path: Path) -> io.BufferedReader:
    try:
        return path.open("rb")
    except FileNotFoundError as exc:
        raise InputError("no such file", location=str(path)) from exc
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", location=str(path)) from exc


def _read_text(path: Path) -> str:
    with _open_binary(path) as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError("not UTF-8 text", location=f"{path}:{line}") from exc


class _Row(NamedTuple):
    """A raw record and where it came from; `unreadable` holds problems found while reading."""

    where: str
    data: object
    unreadable: tuple[tuple[str, str], ...] = ()


def _jsonl_rows(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    for where, value, error in iter_json_lines(path):
        rows.append(_Row(where, value, () if error is None else ((where, error),)))
    return rows


def _csv_rows(path: Path) -> list[_Row]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise InputError(f"unreadable CSV header: {exc}", location=f"{path}:1") from None
    if len(set(header)) != len(header):
        raise InputError("the header names a column twice", location=f"{path}:1")
    rows: list[_Row] = []
    line = 2  # where the next record starts: line 1 is the header
    try:
        for record in reader:
            where = f"{path}:{line}"
            line = reader.line_num + 1
            if None in record:
                rows.append(_Row(where, None, ((where, "more cells than the header has columns"),)))
            else:
                rows.append(_decode_cells(where, record, from_text=True))
    except csv.Error as exc:  # a cell past the csv module's size limit, say
        raise InputError(f"unreadable CSV: {exc}", location=f"{path}:{line}") from None
    return rows


def _parquet_rows(path: Path) -> list[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except FileNotFoundError as exc:
        raise InputError("no such file", location=str(path)) from exc
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"not a readable Parquet file: {exc}", location=str(path)) from exc
    except UnicodeDecodeError as exc:  # a string column whose bytes are not UTF-8
        raise InputError(f"a text cell is not UTF-8: {exc.reason}", location=str(path)) from exc
    return [
        _decode_cells(f"{path}:row {index}", record, from_text=False)
        for index, record in enumerate(records)
    ]


def _decode_cells(where: str, record: Mapping[str | None, Any], *, from_text: bool) -> _Row:
    """Turn a CSV/Parquet record into the JSON form: empty cells are absent, JSON cells parsed."""
    out: dict[str, Any] = {}
    unreadable: list[tuple[str, str]] = []
    for column, cell in record.items():
        if column is None or column.startswith("__index_level_"):
            continue  # pandas stores a non-default index as an extra column
        if cell is None or (from_text and cell == ""):
            continue
        if column in JSON_FIELDS and isinstance(cell, str):
            try:
                out[column] = json.loads(cell)
            except json.JSONDecodeError as exc:
                message = f'this cell must hold JSON, e.g. ["a", "b"] ({exc.msg})'
                unreadable.append((f"{where}: field '{column}'", message))
            except RecursionError:
                unreadable.append((f"{where}: field '{column}'", "JSON nested too deeply"))
        elif column == "is_impossible" and isinstance(cell, str):
            out[column] = _BOOL_TEXT.get(cell.strip().lower(), cell)
        else:
            out[column] = cell
    return _Row(where, out, tuple(unreadable))


def _read_rows(path: Path) -> list[_Row]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_rows(path)
    if suffix in CSV_SUFFIXES:
        return _csv_rows(path)
    if suffix in PARQUET_SUFFIXES:
        return _parquet_rows(path)
    known = ", ".join(sorted(JSONL_SUFFIXES | CSV_SUFFIXES | PARQUET_SUFFIXES))
    raise InputError(f"unknown dataset format {suffix!r}; use one of {known}", location=str(path))


# --------------------------------------------------------------------------- dataset


def _validate_rows(
    rows: Iterable[_Row],
    problems: _Problems,
    *,
    shared_tools: Sequence[dict[str, Any]] = (),
    known_tenants: Collection[str] | None = None,
) -> list[GoldenCase]:
    """Validate located raw rows, including duplicate ids across rows."""
    cases: list[GoldenCase] = []
    first_seen: dict[str, str] = {}
    for where, data, unreadable in rows:
        for location, message in unreadable:
            problems.add(location, message)
        if unreadable:
            continue
        case = _validate_case(
            where, data, problems, shared_tools=shared_tools, known_tenants=known_tenants
        )
        if case is None:
            continue
        if case.id in first_seen:
            message = f"duplicate id '{case.id}' (first used at {first_seen[case.id]})"
            problems.add(f"{where}: field 'id'", message)
            continue
        first_seen[case.id] = where
        cases.append(case)
    return cases


def load_dataset(
    path: str | Path,
    *,
    tools_file: str | Path | None = None,
    known_tenants: Collection[str] | None = None,
    name: str | None = None,
) -> GoldenDataset:
    """Load and validate a golden dataset from .jsonl, .csv or .parquet.

    `tools_file` is a JSON list of function schemas for cases without their own `tools`; by
    default a `tools.json` beside the dataset is used when present. `known_tenants`, if given,
    rejects cases of any other tenant. `name` defaults to the file stem, or the folder name for
    a file called `golden.*`. Raises InputError listing every problem (up to MAX_PROBLEMS).
    """
    path = Path(path)
    shared_tools = _dataset_tools(path, tools_file)
    problems = _Problems(str(path))
    rows = _read_rows(path)
    if not rows:
        raise InputError("the dataset is empty: no cases found", location=str(path))
    cases = _validate_rows(rows, problems, shared_tools=shared_tools, known_tenants=known_tenants)
    problems.raise_if_any()
    default_name = path.parent.name if path.stem == "golden" and path.parent.name else path.stem
    return GoldenDataset(name or default_name, path, tuple(cases), dataset_hash(cases))


def _dataset_tools(path: Path, tools_file: str | Path | None) -> tuple[dict[str, Any], ...]:
    if tools_file is not None:
        return load_tools(tools_file)
    beside = path.parent / DEFAULT_TOOLS_FILE
    return load_tools(beside) if beside.is_file() and beside != path else ()


def dataset_hash(cases: Iterable[GoldenCase]) -> str:
    """First 16 hex chars of sha256 over the canonical JSON of the cases, in order."""
    canonical = json.dumps(
        [case.to_dict() for case in cases],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def save_jsonl(cases: Iterable[GoldenCase], path: str | Path) -> Path:
    """Write cases as JSON Lines, atomically: a failure leaves any existing file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            for case in cases:
                handle.write(json.dumps(case.to_dict(), ensure_ascii=False) + "\n")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path
