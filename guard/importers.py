"""Importers: public benchmarks (BEIR, SQuAD 2.0, BFCL) turned into golden datasets.

Each `*_cases` function reads the benchmark's own files, builds cases in the golden JSON form and
validates them with the same rules as `guard.golden.load_dataset`, so a bad source line fails with
its file and line. Nothing is written until every case is valid.

    python -m guard.importers beir --queries q.jsonl --qrels test.tsv --out x.jsonl --tenant t
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.golden import GoldenCase, case_from_dict, iter_json_lines, normalize_tool, save_jsonl
from rag.domain import Document
from rag.errors import InputError
from rag.tenancy import validate_tenant_id

KINDS = ("beir", "squad", "bfcl")
SOURCE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required source keys, optional source keys)
    "beir": (("queries", "qrels"), ("corpus",)),
    "squad": (("qa",), ("corpus",)),
    "bfcl": (("questions",), ("answers",)),
}
_BFCL_PREFIX = re.compile(r"^BFCL_v\d+_")


@dataclass(frozen=True)
class ImportResult:
    """The imported cases, how many source records were skipped, and notes for the user."""

    cases: tuple[GoldenCase, ...]
    skipped: int = 0
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- shared readers


def _objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file:line, object) for each line of a JSON Lines file; stop at the first bad line."""
    for where, value, error in iter_json_lines(path):
        if error is not None:
            raise InputError(error, location=where)
        if not isinstance(value, dict):
            raise InputError(f"expected a JSON object, got {type(value).__name__}", location=where)
        yield where, value


def _text_field(record: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = record.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # some BEIR exports write numeric ids
    if isinstance(value, str) and (value or not required):
        return value
    if value is None and not required:
        return ""
    message = f"expected a non-empty string, got {value!r}"
    raise InputError(message, location=f"{where}: field '{key}'")


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read judgments: BEIR TSV (`query-id corpus-id score` header) or TREC (`qid 0 doc rel`)."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(_lines(path), 1):
        cells = line.split()
        if not cells or (lineno == 1 and cells[0] == "query-id"):
            continue
        if len(cells) not in (3, 4):
            message = f"expected 3 (BEIR) or 4 (TREC) columns, got {len(cells)}"
            raise InputError(message, location=f"{path}:{lineno}")
        query_id, doc_id, score = cells[0], cells[-2], cells[-1]
        try:
            qrels.setdefault(query_id, {})[doc_id] = int(score)
        except ValueError as exc:
            message = f"score must be an integer, got {score!r}"
            raise InputError(message, location=f"{path}:{lineno}: field 'score'") from exc
    return qrels


def _lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError("no such file", location=str(path)) from exc
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", location=str(path)) from exc
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError("not UTF-8 text", location=f"{path}:{line}") from exc


def _ids(path: Path) -> dict[str, str]:
    """Document id -> the text of each line of a BEIR-style corpus."""
    return {
        _text_field(record, "_id", where): _text_field(record, "text", where, required=False)
        for where, record in _objects(path)
    }


# --------------------------------------------------------------------------- BEIR


def beir_documents(corpus_path: str | Path) -> Iterator[Document]:
    """Stream a BEIR corpus.jsonl as Documents; `source` is the `file:line` of each."""
    for where, record in _objects(Path(corpus_path)):
        metadata = record.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InputError("metadata must be an object", location=f"{where}: field 'metadata'")
        yield Document(
            doc_id=_text_field(record, "_id", where),
            text=_text_field(record, "text", where, required=False),
            title=_text_field(record, "title", where, required=False),
            metadata=metadata,
            source=where,
        )


def beir_cases(
    queries_path: str | Path,
    qrels_path: str | Path,
    *,
    tenant: str,
    corpus_path: str | Path | None = None,
    limit: int | None = None,
) -> ImportResult:
    """Golden cases from BEIR queries and graded judgments.

    Queries without judgments are skipped and counted. A judged document whose id equals the
    query id is dropped (BEIR's convention for self-retrieval). With `corpus_path`, judgments
    naming documents absent from the corpus are counted in the notes (and kept).
    """
    validate_tenant_id(tenant)
    qrels = read_qrels(qrels_path)
    cases: list[GoldenCase] = []
    skipped = self_judged = 0
    for where, record in _objects(Path(queries_path)):
        query_id = _text_field(record, "_id", where)
        judged = dict(qrels.get(query_id, {}))
        self_judged += judged.pop(query_id, None) is not None
        if not judged:
            skipped += 1
            continue
        raw = {
            "id": query_id,
            "tenant": tenant,
            "question": _text_field(record, "text", where),
            "relevant_doc_ids": judged,
            "tags": ["beir"],
        }
        cases.append(case_from_dict(raw, location=where))
        if limit is not None and len(cases) >= limit:
            break
    notes = [f"{skipped} queries without judgments skipped"] if skipped else []
    if self_judged:
        notes.append(f"{self_judged} judgments of a document with the query's own id dropped")
    if corpus_path is not None:
        notes += _missing_documents(cases, Path(corpus_path))
    return ImportResult(tuple(cases), skipped, tuple(notes))


def _missing_documents(cases: Sequence[GoldenCase], corpus_path: Path) -> list[str]:
    known = _ids(corpus_path)
    missing = {doc for case in cases for doc in case.relevant_doc_ids if doc not in known}
    if not missing:
        return []
    sample = ", ".join(sorted(missing)[:5])
    return [f"{len(missing)} judged documents are not in {corpus_path} (e.g. {sample})"]


# --------------------------------------------------------------------------- SQuAD 2.0


def squad_cases(
    qa_path: str | Path,
    *,
    tenant: str,
    corpus_path: str | Path | None = None,
    limit: int | None = None,
) -> ImportResult:
    """Golden cases from SQuAD 2.0 questions (qa.jsonl: answers, is_impossible, context id).

    Answerable questions get `answers`, `reference_answer` (the first answer) and the reference
    paragraph as their one relevant document; unanswerable ones get neither. Both keep the
    paragraph's text as `reference_contexts`, read from the line or else from `corpus_path`.
    """
    validate_tenant_id(tenant)
    corpus = _ids(Path(corpus_path)) if corpus_path is not None else None
    cases: list[GoldenCase] = []
    for where, record in _objects(Path(qa_path)):
        cases.append(case_from_dict(_squad_case(record, where, tenant, corpus), location=where))
        if limit is not None and len(cases) >= limit:
            break
    return ImportResult(tuple(cases))


def _squad_case(
    record: Mapping[str, Any], where: str, tenant: str, corpus: Mapping[str, str] | None
) -> dict[str, Any]:
    impossible = record.get("is_impossible", False)
    answers = record.get("answers", [])
    context_id = _text_field(record, "reference_context_id", where)
    if not isinstance(impossible, bool) or not isinstance(answers, list):
        raise InputError("is_impossible must be a boolean, answers a list", location=where)
    if not impossible and not answers:
        message = "an answerable question needs answers"
        raise InputError(message, location=f"{where}: field 'answers'")
    context = record.get("reference_context")
    if context is None and corpus is not None:
        if context_id not in corpus:
            message = f"paragraph {context_id!r} is not in the corpus"
            raise InputError(message, location=f"{where}: field 'reference_context_id'")
        context = corpus[context_id]
    case: dict[str, Any] = {
        "id": _text_field(record, "id", where),
        "tenant": tenant,
        "question": _text_field(record, "question", where),
        "answers": answers,
        "is_impossible": impossible,
        "reference_contexts": [context] if context is not None else [],
        "tags": ["squad", "unanswerable" if impossible else "answerable"],
    }
    if not impossible:
        case["reference_answer"] = answers[0]
        case["relevant_doc_ids"] = {context_id: 1}
    return case


# --------------------------------------------------------------------------- BFCL


def bfcl_cases(
    questions_path: str | Path,
    answers_path: str | Path | None = None,
    *,
    tenant: str,
    limit: int | None = None,
) -> ImportResult:
    """Golden tool-calling cases from a BFCL question file and its possible_answer file.

    The answer file defaults to `possible_answer/<same name>` beside the questions. Irrelevance
    categories have none: their cases expect no call at all (`expected_tool_calls == ()`).
    Tool schemas are converted to JSON Schema types ("dict" -> "object", "float" -> "number").
    Ground-truth parameters missing from the tool's schema are dropped when they are optional
    (a call could not pass the official checker with them) and are an error otherwise.
    """
    validate_tenant_id(tenant)
    questions = Path(questions_path)
    category = _BFCL_PREFIX.sub("", questions.stem)
    answers = _bfcl_answers(questions, answers_path, category)
    cases: list[GoldenCase] = []
    dropped: list[str] = []
    for where, record in _objects(questions):
        raw = _bfcl_case(record, where, tenant, category)
        raw["expected_tool_calls"] = _expected_calls(raw, answers, where, dropped)
        cases.append(case_from_dict(raw, location=where))
        if limit is not None and len(cases) >= limit:
            break
    notes = []
    if dropped:
        joined = ", ".join(dropped)
        notes.append(f"dropped optional ground-truth parameters not in the schema: {joined}")
    return ImportResult(tuple(cases), 0, tuple(notes))


def _bfcl_answers(
    questions: Path, answers_path: str | Path | None, category: str
) -> dict[str, tuple[str, Any]] | None:
    """id -> (file:line, ground truth); None for irrelevance categories (no answer file)."""
    default = questions.parent / "possible_answer" / questions.name
    path = Path(answers_path) if answers_path is not None else default
    if answers_path is None and not path.is_file():
        if "irrelevance" in category:
            return None
        message = f"no answer file for category {category!r}: expected {path}"
        raise InputError(message, location=str(questions))
    return {
        _text_field(record, "id", where): (where, record.get("ground_truth"))
        for where, record in _objects(path)
    }


def _bfcl_case(record: Mapping[str, Any], where: str, tenant: str, category: str) -> dict[str, Any]:
    turns = record.get("question")
    if not isinstance(turns, list) or len(turns) != 1 or not isinstance(turns[0], list):
        message = "expected one turn, [[{role, content}, ...]]; multi-turn BFCL is not supported"
        raise InputError(message, location=f"{where}: field 'question'")
    functions = record.get("function")
    if not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions):
        raise InputError("expected a list of function docs", location=f"{where}: field 'function'")
    messages = turns[0]
    case: dict[str, Any] = {
        "id": _text_field(record, "id", where),
        "tenant": tenant,
        "tools": [normalize_tool(function) for function in functions],
        "tags": ["bfcl", category, "tools"],
    }
    single = len(messages) == 1 and isinstance(messages[0], dict)
    if single and messages[0].get("role") == "user":
        case["question"] = messages[0].get("content")
    else:
        case["conversation"] = messages
    return case


def _expected_calls(
    case: Mapping[str, Any],
    answers: Mapping[str, tuple[str, Any]] | None,
    where: str,
    dropped: list[str],
) -> list[dict[str, Any]]:
    if answers is None:
        return []
    if case["id"] not in answers:
        raise InputError(f"no ground truth for {case['id']!r}", location=where)
    answer_at, truth = answers[case["id"]]
    if not isinstance(truth, list) or not all(isinstance(c, dict) and len(c) == 1 for c in truth):
        message = "expected a list of {function name: {parameter: [allowed values]}}"
        raise InputError(message, location=f"{answer_at}: field 'ground_truth'")
    schemas = {tool["name"]: tool for tool in case["tools"]}
    calls = []
    for call in truth:
        [(name, arguments)] = call.items()
        kept = _in_schema(case["id"], name, arguments, schemas, dropped)
        calls.append({"name": name, "arguments": kept})
    return calls


def _in_schema(
    case_id: str, name: str, arguments: Any, schemas: Mapping[str, Any], dropped: list[str]
) -> Any:
    known = schemas.get(name, {}).get("parameters", {}).get("properties")
    if not isinstance(arguments, dict) or not isinstance(known, dict):
        return arguments  # left for case_from_dict to report
    kept = {}
    for param, allowed in arguments.items():
        if param not in known and isinstance(allowed, list) and "" in allowed:
            dropped.append(f"{case_id}:{name}.{param}")
        else:
            kept[param] = allowed
    return kept


# --------------------------------------------------------------------------- entry points


def import_dataset(
    kind: str,
    sources: Mapping[str, str | Path],
    out_path: str | Path,
    *,
    tenant: str,
    limit: int | None = None,
) -> ImportResult:
    """Import a benchmark and write it as a golden JSON Lines file.

    `sources` names the input files by role: beir: queries, qrels (+ corpus, to check that
    judged documents exist); squad: qa (+ corpus); bfcl: questions (+ answers).
    """
    if kind not in SOURCE_KEYS:
        raise InputError(f"unknown dataset kind {kind!r}; use one of {', '.join(KINDS)}")
    required, optional = SOURCE_KEYS[kind]
    missing = [key for key in required if key not in sources]
    unknown = [key for key in sources if key not in required + optional]
    if missing or unknown:
        raise InputError(
            f"{kind} needs sources {required} (optional {optional}); "
            f"missing {missing}, unknown {unknown}"
        )
    result = _import(kind, {key: Path(value) for key, value in sources.items()}, tenant, limit)
    if not result.cases:
        raise InputError("nothing to import: no case was built from the sources")
    try:
        save_jsonl(result.cases, out_path)
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror}", location=str(out_path)) from exc
    return result


def _import(kind: str, paths: Mapping[str, Path], tenant: str, limit: int | None) -> ImportResult:
    if kind == "beir":
        corpus = paths.get("corpus")
        return beir_cases(
            paths["queries"], paths["qrels"], tenant=tenant, corpus_path=corpus, limit=limit
        )
    if kind == "squad":
        corpus = paths.get("corpus")
        return squad_cases(paths["qa"], tenant=tenant, corpus_path=corpus, limit=limit)
    return bfcl_cases(paths["questions"], paths.get("answers"), tenant=tenant, limit=limit)


_EPILOG = r"""examples:
  python -m guard.importers beir --queries scifact/queries.jsonl \
      --qrels scifact/qrels/test.tsv --corpus scifact/corpus.jsonl \
      --out datasets/scifact/golden.jsonl --tenant scifact
  python -m guard.importers squad --qa squad2/qa.jsonl --out squad.jsonl --tenant squad
  python -m guard.importers bfcl --questions bfcl/BFCL_v4_irrelevance.json \
      --out bfcl-irrelevance.jsonl --tenant bfcl

BEIR queries without judgments are skipped; SQuAD unanswerable questions become
is_impossible cases; BFCL categories without an answer file (irrelevance) expect no call.
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m guard.importers",
        description="Turn a public benchmark into a TruthGuard golden dataset (JSON Lines). "
        "Every case is validated before anything is written; bad input exits with status 2 "
        "and names the file, line and field.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    beir = kinds.add_parser("beir", help="BEIR queries + qrels (retrieval judgments)")
    beir.add_argument("--queries", required=True, type=Path, help="queries.jsonl (_id, text)")
    qrels_help = "judgments: TSV with header 'query-id corpus-id score', or TREC qrels"
    beir.add_argument("--qrels", required=True, type=Path, help=qrels_help)
    beir.add_argument("--corpus", type=Path, help="corpus.jsonl, to check judged documents exist")
    squad = kinds.add_parser("squad", help="SQuAD 2.0 qa.jsonl (answerable and unanswerable)")
    qa_help = "qa.jsonl: id, question, answers[], is_impossible, reference_context_id"
    squad.add_argument("--qa", required=True, type=Path, help=qa_help)
    squad.add_argument("--corpus", type=Path, help="corpus.jsonl, for paragraphs not in qa.jsonl")
    bfcl = kinds.add_parser("bfcl", help="BFCL function-calling questions + possible answers")
    bfcl.add_argument("--questions", required=True, type=Path, help="BFCL_v4_<category>.json")
    answers_help = "ground truth (default: possible_answer/<same name>)"
    bfcl.add_argument("--answers", type=Path, help=answers_help)
    for sub in (beir, squad, bfcl):
        sub.add_argument("--out", required=True, type=Path, help="golden .jsonl file to write")
        sub.add_argument("--tenant", required=True, help="tenant id the cases belong to")
        sub.add_argument("--limit", type=_positive, help="import at most this many cases")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input)."""
    args = _parser().parse_args(argv)
    roles = [role for keys in SOURCE_KEYS[args.kind] for role in keys]
    sources = {role: getattr(args, role) for role in roles if getattr(args, role) is not None}
    try:
        result = import_dataset(args.kind, sources, args.out, tenant=args.tenant, limit=args.limit)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(result.cases)} cases to {args.out}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
