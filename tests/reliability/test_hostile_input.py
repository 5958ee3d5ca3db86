"""Hostile input, property-based: every loader, the spec, `rag serve` and the tenant ids.

Whatever arrives (malformed or truncated JSON, wrong types, duplicate ids, huge lines, binary
and non-UTF-8 bytes, corrupt Parquet, quotes, SQL fragments, path traversal, unicode look-alikes,
NUL bytes), the answer is a clear `InputError` (a 4xx over HTTP, exit code 2 from a CLI): never
another exception, never a traceback, never a write outside the data folder.
"""

from __future__ import annotations

import asyncio
import io
import json
import string
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TENANTS, build_tenant_pipeline, owner_of, run_cli, snapshot
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from guard.golden import load_dataset, load_tools
from guard.runs import RunStore
from guard.spec import load_spec, parse_spec
from rag.adapters.loaders import load_corpus
from rag.config import config_from_dict, parse_config
from rag.entrypoints.server import create_app
from rag.errors import InputError, TenantIdError
from rag.tenancy import TENANT_ID_PATTERN, validate_tenant_id

FAST = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

HOSTILE_TENANTS = [
    "hr' OR '1'='1", "hr\" OR 1=1 --", "hr'; DROP TABLE chunks_hr; --",
    "x OR tenant_id IS NOT NULL",
    "../it", "..", "../../etc/passwd", "hr/../it", "hr\\..\\it", "/abs", "hr%2F..%2Fit",
    "hr\x00", "\x00", "h\x00r", "hr\n", " hr", "hr ", "", "HR", "Hr",
    "hr\u0131", "\u04bbr", "\uff48\uff52", "h\u200br", "hr\u0301", "\u0430cme",  # look-alikes
    "a" * 49, "1hr", "_hr", "hr-it", "hr.it", "hr*", "%", "hr`", "hr$x", "hr\ud800",
]

# -- strategies -----------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
                | st.text(max_size=20))
json_values = st.recursive(json_scalars,
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
hostile_text = st.sampled_from(HOSTILE_TENANTS) | st.text(max_size=30)
CASE_FIELDS = ("id", "tenant", "question", "conversation", "reference_answer", "answers",
               "is_impossible", "relevant_doc_ids", "reference_contexts", "expected_tool_calls",
               "tools", "tags")
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "id": st.sampled_from(["a", "b", "a", ""]) | st.text(max_size=10),
    "tenant": st.sampled_from(["acme", "hr"]) | hostile_text,
    "question": st.text(max_size=40),
    "conversation": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]),
         "content": st.text(max_size=10) | json_scalars}), max_size=3),
    "reference_answer": st.text(max_size=20),
    "answers": st.lists(st.text(max_size=10) | json_scalars, max_size=3),
    "is_impossible": st.booleans() | st.sampled_from(["true", "no", 1]),
    "relevant_doc_ids": st.lists(st.text(max_size=6), max_size=3)
    | st.dictionaries(st.text(max_size=6), st.integers(-2, 3) | json_scalars, max_size=3),
    "reference_contexts": st.lists(st.text(max_size=10), max_size=2),
    "expected_tool_calls": st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["create_it_ticket", "nope"]) | json_scalars,
         "arguments": st.dictionaries(st.text(max_size=6),
                                      st.lists(json_scalars, max_size=2) | json_scalars)}),
        max_size=2),
    "tools": st.lists(json_values, max_size=2),
    "tags": st.lists(st.text(max_size=6) | json_scalars, max_size=3),
}


@st.composite
def case_rows(draw: st.DrawFn) -> dict[str, Any]:
    """A case-like object: plausible fields, wrong types, unknown keys."""
    fields = draw(st.lists(st.sampled_from(CASE_FIELDS), max_size=8, unique=True))
    row = {f: draw(PLAUSIBLE[f] | json_values) if draw(st.booleans()) else draw(PLAUSIBLE[f])
           for f in fields}
    if draw(st.integers(0, 9)) == 0:
        row[draw(st.text(max_size=8))] = draw(json_values)
    return row


@st.composite
def jsonl_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    line = json.dumps(draw(case_rows()), ensure_ascii=draw(st.booleans())).encode(
        "utf-8", "surrogatepass")
    if kind == 0:
        return line[: draw(st.integers(0, max(0, len(line) - 1)))]  # truncated
    if kind == 1:
        return draw(st.binary(max_size=40))
    if kind == 2:
        return b"\xff\xfe" + line  # not UTF-8
    if kind == 3:
        return json.dumps(draw(json_values)).encode()
    if kind == 4:
        return b"[" * draw(st.sampled_from([10, 5000, 100_000]))  # nested too deeply
    return line


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(jsonl_lines(), max_size=6))
    if lines and draw(st.booleans()):
        lines.append(lines[0])  # a duplicate
    body = draw(st.sampled_from([b"\n", b"\r\n"])).join(lines)
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + body


cells = (st.text(max_size=12) | st.sampled_from(['["a"]', '{"a": 1}', "[", '"', "true", "\x00"])
         | json_values.map(json.dumps))


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    columns = draw(st.lists(st.sampled_from(CASE_FIELDS) | st.text(max_size=5), max_size=7))
    rows = draw(st.lists(st.lists(cells, max_size=len(columns) + 2), max_size=5))
    out = io.StringIO()
    import csv

    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(rows)
    data = out.getvalue().encode("utf-8", "surrogatepass")
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return data[: draw(st.integers(0, len(data)))]
    if kind == 1:
        return data + draw(st.binary(max_size=30))
    if kind == 2:  # one cell past the csv module's field limit
        return b"id,tenant,question\nx,acme,\"" + b"a" * 140_000 + b"\"\n"
    return data


ARROW_TYPES = {
    "string": (pa.string(), st.text(max_size=8) | st.none()),
    "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1) | st.none()),
    "float": (pa.float64(), st.floats() | st.none()),
    "bool": (pa.bool_(), st.booleans() | st.none()),
    "binary": (pa.binary(), st.binary(max_size=8) | st.none()),
    "list": (pa.list_(pa.string()), st.lists(st.text(max_size=5) | st.none(), max_size=3)),
    "ints": (pa.list_(pa.int64()), st.lists(st.integers(-5, 5), max_size=3)),
    "struct": (pa.struct([("a", pa.int64())]), st.fixed_dictionaries({"a": st.integers(0, 3)})),
    "map": (pa.map_(pa.string(), pa.int64()),
            st.lists(st.tuples(st.text(max_size=4), st.integers(-1, 3)), max_size=2)),
}


@st.composite
def parquet_files(draw: st.DrawFn) -> bytes:
    columns = draw(st.lists(st.sampled_from(CASE_FIELDS) | st.text(min_size=1, max_size=5),
                            min_size=1, max_size=6, unique=True))
    rows = draw(st.integers(0, 4))
    arrays = {}
    for column in columns:
        arrow_type, values = ARROW_TYPES[draw(st.sampled_from(sorted(ARROW_TYPES)))]
        if column in ("id", "tenant", "question") and draw(st.booleans()):
            arrow_type, values = pa.string(), PLAUSIBLE[column].filter(
                lambda v: isinstance(v, str))
        arrays[column] = pa.array([draw(values) for _ in range(rows)], type=arrow_type)
    sink = io.BytesIO()
    try:
        pq.write_table(pa.table(arrays), sink)
    except (pa.ArrowException, UnicodeEncodeError):
        return b"PAR1 not really"
    data = sink.getvalue()
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return data[: draw(st.integers(0, len(data)))]
    if kind == 1:
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    return data


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder for hostile files, with the working directory inside it; on exit, nothing
    else under tmp_path changed and no file appeared in it besides the test's own."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    before = snapshot(tmp_path, skip=inputs)
    yield inputs
    assert snapshot(tmp_path, skip=inputs) == before


def loads_or_input_error(load: Callable[[], Any]) -> Any:
    """Return what `load` returns, or None for an InputError; anything else fails the test."""
    try:
        return load()
    except InputError as exc:
        assert str(exc).strip(), "an InputError must say what is wrong"
        return None


# -- golden datasets ----------------------------------------------------------------------------


@FAST
@given(data=jsonl_files())
@example(data=b'{"id": "a", "tenant": "acme", "question": "q"}\n' * 2)  # duplicate ids
@example(data=b"[" * 100_000)
@example(data=b'{"id": "a", "tenant": "acme", "question": "' + b"x" * 3_000_000 + b'"}')
def test_jsonl_datasets(sandbox: Path, data: bytes) -> None:
    path = sandbox / "golden.jsonl"
    path.write_bytes(data)
    dataset = loads_or_input_error(lambda: load_dataset(path, known_tenants={"acme"}))
    if dataset is not None:
        assert all(c.tenant == "acme" and c.id for c in dataset.cases)
        assert len({c.id for c in dataset.cases}) == len(dataset.cases)


@FAST
@given(data=csv_files())
def test_csv_datasets(sandbox: Path, data: bytes) -> None:
    path = sandbox / "golden.csv"
    path.write_bytes(data)
    dataset = loads_or_input_error(lambda: load_dataset(path))
    if dataset is not None:
        assert all(validate_tenant_id(c.tenant) for c in dataset.cases)


def _not_utf8_parquet() -> bytes:
    """A string column whose bytes are not UTF-8 (found by the fuzzer)."""
    text = pa.array([b"\x90abc"], type=pa.binary()).view(pa.string())
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": text, "tenant": ["acme"], "question": ["q"]}), sink)
    return sink.getvalue()


@FAST
@given(data=parquet_files())
@example(data=_not_utf8_parquet())
def test_parquet_datasets(sandbox: Path, data: bytes) -> None:
    path = sandbox / "golden.parquet"
    path.write_bytes(data)
    dataset = loads_or_input_error(lambda: load_dataset(path))
    if dataset is not None:
        assert all(validate_tenant_id(c.tenant) for c in dataset.cases)


@FAST
@given(data=st.lists(json_values, max_size=3).map(json.dumps).map(str.encode)
       | st.binary(max_size=30) | st.just(b"[" * 100_000))
def test_tools_files(sandbox: Path, data: bytes) -> None:
    path = sandbox / "tools.json"
    path.write_bytes(data)
    loads_or_input_error(lambda: load_tools(path))


def test_huge_files_are_read_or_refused_cleanly(sandbox: Path) -> None:
    path = sandbox / "golden.jsonl"
    row = {"id": "x", "tenant": "acme", "question": "q " * 50}
    with path.open("wb") as fh:
        for i in range(50_000):  # ~6 MB, the last line broken
            fh.write(json.dumps({**row, "id": f"c{i}"}).encode() + b"\n")
        fh.write(b'{"id": "last", "tenant": "acme", "question": ')
    with pytest.raises(InputError, match=r"golden\.jsonl:50001"):
        load_dataset(path)


# -- corpora ------------------------------------------------------------------------------------


@st.composite
def corpus_lines(draw: st.DrawFn) -> bytes:
    fields = {"_id": st.text(max_size=6) | json_scalars, "text": st.text(max_size=20) | json_values,
              "title": st.text(max_size=6) | json_scalars, "metadata": json_values}
    row = {k: draw(v) for k, v in fields.items() if draw(st.integers(0, 4))}
    line = json.dumps(row).encode()
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return line[: draw(st.integers(0, len(line)))]
    if kind == 1:
        return draw(st.binary(max_size=20))
    if kind == 2:
        return b"[" * 100_000
    return line


@FAST
@given(lines=st.lists(corpus_lines(), max_size=5))
@example(lines=[b'{"_id": "a\\ud800", "text": "lone surrogate"}'])
def test_jsonl_corpora(sandbox: Path, lines: list[bytes]) -> None:
    path = sandbox / "corpus.jsonl"
    path.write_bytes(b"\n".join(lines))
    docs = loads_or_input_error(lambda: load_corpus(path))
    if docs is not None:
        assert all(d.doc_id and d.text.strip() for d in docs)
        for doc in docs:  # whatever loads can be stored: valid Unicode throughout
            json.dumps([doc.doc_id, doc.text, doc.title, doc.metadata],
                       ensure_ascii=False).encode("utf-8")


@FAST
@given(files=st.lists(st.tuples(st.sampled_from(["a.md", "b.txt", "c.html", "d.pdf", "e.bin",
                                                 "sub/f.md", ".hidden.md", "g h.md"]),
                                st.binary(max_size=60)
                                | st.text(max_size=40).map(lambda t: t.encode("utf-8",
                                                                              "surrogatepass"))
                                | st.just(b"%PDF-1.4\n" + b"[" * 5000)),
                      max_size=4))
def test_folder_corpora(sandbox: Path, files: list[tuple[str, bytes]]) -> None:
    folder = sandbox / "corpus"
    folder.mkdir(exist_ok=True)
    for name, data in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    loads_or_input_error(lambda: load_corpus(folder))
    for path in sorted(folder.rglob("*"), reverse=True):  # next example starts empty
        path.unlink() if path.is_file() else path.rmdir()


# -- experiment specs and configuration ------------------------------------------------------


toml_fragments = st.sampled_from([
    'name = "x"', 'name = 5', 'dataset = "golden.jsonl"', 'dataset = "../../../etc/passwd"',
    "[[variants]]", 'name = "{mode}"', 'name = "{nope}"', 'name = "{0}"', 'name = "{mode.x}"',
    'name = "{"', 'matrix = { mode = ["dense", "bogus"] }', 'matrix = { k = [] }',
    'system = "openai"', 'base_url = "${NOT_SET_ANYWHERE}"', "[run]", "concurrency = -1",
    "concurrency = 1e400", 'timeout_s = "soon"', "[gates]", '"x" = { min = "a" }',
    '"retrieval.hit@5" = 5', "[[dataset_import]]", 'kind = "beir"', "[judge]", "a = " + "[" * 50,
    "a = " + "[" * 5000, "\x00", "\udfff", '[tenants."../x"]', "[rag]", "[rag.tenants.\"hr'\"]",
]) | st.text(max_size=20)


@FAST
@given(fragments=st.lists(toml_fragments, max_size=8))
@example(fragments=['name = "x"', 'dataset = "d.jsonl"', "[[variants]]", 'name = "{nope}"',
                    'matrix = { mode = ["dense"] }'])
@example(fragments=["a = " + "[" * 5000])
def test_experiment_specs(sandbox: Path, fragments: list[str]) -> None:
    path = sandbox / "spec.toml"
    path.write_bytes("\n".join(fragments).encode("utf-8", "surrogatepass"))
    spec = loads_or_input_error(lambda: load_spec(path))
    if spec is not None:
        assert spec.expanded_variants()


@FAST
@given(raw=st.dictionaries(st.sampled_from(["name", "dataset", "variants", "run", "gates",
                                            "rag", "judge", "matrix"]), json_values))
def test_parsed_specs_and_configs(sandbox: Path, raw: dict[str, Any]) -> None:
    loads_or_input_error(lambda: parse_spec(raw, "fuzz.toml", sandbox))
    loads_or_input_error(lambda: config_from_dict(raw, "fuzz.toml", sandbox))


@FAST
@given(text=st.text(max_size=60) | st.just("a = " + "[" * 5000))
def test_config_text(sandbox: Path, text: str) -> None:
    loads_or_input_error(lambda: parse_config(text, "fuzz.toml", sandbox))


# -- tenant ids -------------------------------------------------------------------------------


@FAST
@given(tenant=st.sampled_from(HOSTILE_TENANTS) | st.text(max_size=60)
       | st.text(alphabet=string.ascii_lowercase + "_0", min_size=1, max_size=50))
def test_tenant_ids_match_the_pattern_or_are_refused(tenant: str) -> None:
    try:
        assert validate_tenant_id(tenant) == tenant
    except TenantIdError as exc:
        assert "invalid tenant id" in str(exc)
        assert not TENANT_ID_PATTERN.fullmatch(tenant)
    else:
        assert TENANT_ID_PATTERN.fullmatch(tenant) and tenant.isascii()


@pytest.mark.parametrize("tenant", HOSTILE_TENANTS)
def test_hostile_tenant_ids_are_refused_everywhere(tenant: str, tenant_data: Path,
                                                   tmp_path: Path) -> None:
    data_before = snapshot(tenant_data)
    pipeline = build_tenant_pipeline(tenant_data)

    async def attempts() -> list[Callable[[], Any]]:
        refused = []
        for call in (lambda: pipeline.retrieve(tenant, "vacation"),
                     lambda: pipeline.ingest(tenant, []),
                     lambda: pipeline.vectors.search(tenant, [0.0] * 256, 3),
                     lambda: pipeline.lexical.search(tenant, "vacation", 3),
                     lambda: pipeline.vectors.delete_documents(tenant, ["x"]),
                     lambda: pipeline.lexical.document_hashes(tenant)):
            with pytest.raises(TenantIdError):
                await call()
            refused.append(call)
        return refused

    assert len(asyncio.run(attempts())) == 6
    with pytest.raises(InputError):
        config_from_dict({"tenants": {tenant: {}}}, "fuzz", tmp_path)
    golden = tmp_path / "golden.jsonl"
    golden.write_text(json.dumps({"id": "a", "tenant": tenant, "question": "q"}) + "\n",
                      errors="surrogatepass")
    with pytest.raises(InputError, match="tenant"):
        load_dataset(golden)
    with pytest.raises(InputError):
        RunStore(tmp_path / "runs").folder(tenant)
    assert snapshot(tenant_data) == data_before


# -- rag serve --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tenant_data: Path) -> Iterator[TestClient]:
    app = create_app(build_tenant_pipeline(tenant_data))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def post_json(api: TestClient, path: str, body: object) -> Any:
    """POST `body` as JSON the way a sloppy client might: NaN, lone surrogates escaped."""
    return api.post(path, content=json.dumps(body).encode(),
                    headers={"content-type": "application/json"})


def check_api_answer(response: Any, model: object) -> None:
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"
        return
    body = response.json()
    assert isinstance(model, str) and model.removeprefix("rag-") in TENANTS
    tenant = model.removeprefix("rag-")
    extra = body["truthguard"]
    assert extra["tenant"] == tenant
    assert all(owner_of(c["doc_id"]) == tenant for c in extra["contexts"])


messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "developer", "bot"]),
     "content": st.text(max_size=30) | json_values}), max_size=3)
chat_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([f"rag-{t}" for t in TENANTS])
     | st.sampled_from(HOSTILE_TENANTS).map(lambda t: f"rag-{t}") | json_scalars,
     "messages": messages | json_values},
    optional={"tools": st.lists(json_values | st.fixed_dictionaries(
                  {"type": st.just("function"),
                   "function": st.fixed_dictionaries(
                       {"name": st.sampled_from(["f", "book_room", "x y"]),
                        "parameters": st.dictionaries(st.sampled_from(["type", "properties",
                                                                       "required", "enum"]),
                                                      json_values)})}), max_size=2),
              "tool_choice": json_values | st.sampled_from(["none", "auto", "required"]),
              "stream": st.booleans() | json_scalars,
              "retrieval": st.dictionaries(st.sampled_from(["mode", "k", "fusion", "rrf_k",
                                                            "dense_weight", "candidates",
                                                            "history_turns"]), json_scalars),
              "n": json_scalars})


@FAST
@given(body=chat_bodies)
@example(body={"model": "rag-acme", "messages": [{"role": "user", "content": "vacation"}],
               "tools": [{"type": "function",
                          "function": {"name": "f", "parameters": {"properties": 5}}}]})
@example(body={"model": "rag-acme", "messages": [{"role": "user", "content": "vacation"}],
               "tools": [{"type": "function", "function": {
                   "name": "f", "parameters": {"type": "object", "required": 3,
                                               "properties": {"a": {"enum": 7}}}}}]})
def test_chat_completions_with_random_bodies(api: TestClient, body: dict[str, Any]) -> None:
    response = post_json(api, "/v1/chat/completions", body)
    check_api_answer(response, body.get("model"))


@FAST
@given(raw=st.binary(max_size=60) | st.just(b"[" * 100_000)
       | json_values.map(lambda v: json.dumps(v).encode()))
def test_chat_completions_with_raw_bytes(api: TestClient, raw: bytes) -> None:
    response = api.post("/v1/chat/completions", content=raw,
                        headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text


@FAST
@given(body=st.dictionaries(st.sampled_from(["input", "model", "encoding_format", "dimensions",
                                             "input_type"]), json_values)
       | st.fixed_dictionaries({"input": st.text(max_size=20) | st.lists(st.text(max_size=5)),
                                "model": st.sampled_from(HOSTILE_TENANTS)}))
def test_embeddings_with_random_bodies(api: TestClient, body: dict[str, Any]) -> None:
    response = post_json(api, "/v1/embeddings", body)
    assert response.status_code < 500, response.text


@FAST
@given(name=st.sampled_from(HOSTILE_TENANTS) | st.text(max_size=40))
def test_hostile_model_names(api: TestClient, name: str) -> None:
    model = f"rag-{name}"
    response = post_json(api, "/v1/chat/completions",
                         {"model": model, "messages": [{"role": "user", "content": "vpn"}]})
    check_api_answer(response, model)
    if name not in TENANTS:
        assert response.status_code in (400, 404)
        message = response.json()["error"]["message"]
        assert not any(f"rag-{t}\"" in message for t in TENANTS if t != name)
    lookup = api.get("/v1/models/" + quote(model.encode("utf-8", "surrogatepass"), safe=""))
    assert lookup.status_code in (200, 400, 404)


# -- the CLIs, as subprocesses ----------------------------------------------------------------


HASHING_CONFIG = """data_dir = "data"
[defaults]
embedder = "hashing"
provider = "local"
[tenants.acme]
corpus = "corpus.jsonl"
"""


def _hostile_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "golden_truncated.jsonl": b'{"id": "a", "tenant": "acme", "question": "q"}\n{"id": "b"',
        "golden_binary.jsonl": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe",
        "golden_tenant.jsonl": b'{"id": "a", "tenant": "acme\' OR 1=1", "question": "q"}\n',
        "golden_deep.jsonl": b"[" * 100_000,
        "corpus.jsonl": b'{"_id": "a", "text": "\xff\xfe"}\n',
        "spec_binary.toml": b"\xff\xfe\x00name",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for name in ("golden_truncated.jsonl", "golden_binary.jsonl", "golden_tenant.jsonl",
                 "golden_deep.jsonl"):
        (folder / f"spec_{name}.toml").write_text(
            f'name = "x"\ndataset = "{name}"\n[[variants]]\nname = "v"\nsystem = "http"\n'
            'url = "http://127.0.0.1:9/x"\n')
    (folder / "spec_matrix.toml").write_text(
        'name = "x"\ndataset = "golden_truncated.jsonl"\n[[variants]]\nname = "{nope}"\n'
        'matrix = { mode = ["dense"] }\n')
    (folder / "truthguard.toml").write_text(HASHING_CONFIG)
    return {name: folder / name for name in [*files, *(p.name for p in folder.glob("spec_*"))]}


def cli_commands(folder: Path, fast: bool) -> list[tuple[str, list[str]]]:
    """(program, argv) pairs that must each end with exit code 2 and no traceback."""
    files = _hostile_inputs(folder)
    config = str(folder / "truthguard.toml")
    data = str(folder / "data")
    commands = [
        ("guard", ["--data-dir", data, "run", str(files["spec_golden_tenant.jsonl.toml"])]),
        ("guard", ["--data-dir", data, "run", str(files["spec_matrix.toml"])]),
        ("rag", ["--config", config, "ingest", "--tenant", "acme"]),
        ("rag", ["--config", config, "ask", "acme' OR '1'='1", "what?"]),
    ]
    if not fast:
        commands += [
            ("guard", ["--data-dir", data, "run", str(files["spec_golden_truncated.jsonl.toml"])]),
            ("guard", ["--data-dir", data, "run", str(files["spec_golden_binary.jsonl.toml"])]),
            ("guard", ["--data-dir", data, "run", str(files["spec_golden_deep.jsonl.toml"])]),
            ("guard", ["--data-dir", data, "run", str(files["spec_binary.toml"])]),
            ("guard", ["--data-dir", data, "run", "--resume", "../../etc"]),
            ("guard", ["--data-dir", data, "show", "20260101-000000-abcdef"]),
            ("rag", ["--config", config, "ask", "../acme", "what?"]),
            ("rag", ["--config", config, "ask", "acme\u0131", "what?"]),
            ("rag", ["--config", str(files["spec_binary.toml"]), "ask", "acme", "q"]),
            ("rag", ["--config", config, "ingest", "--tenant", "acme", "--corpus",
                     str(files["golden_deep.jsonl"])]),
        ]
    return commands


@pytest.mark.integration
def test_clis_refuse_hostile_files_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    commands = cli_commands(tmp_path / "inputs", fast=True)
    before = snapshot(tmp_path, skip=tmp_path / "inputs")
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        results = list(pool.map(lambda c: run_cli(c[0], *c[1], cwd=cwd), commands))
    for (program, argv), done in zip(commands, results, strict=True):
        assert "Traceback" not in done.stderr, (program, argv, done.stderr)
        assert done.code == 2, (program, argv, done.code, done.stderr)
        assert f"{program}: error:" in done.stderr, done.stderr
    assert snapshot(tmp_path, skip=tmp_path / "inputs") == before
