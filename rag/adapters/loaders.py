"""Reading corpora: BEIR-style JSON Lines, or a folder of Markdown, text, HTML and PDF files.

Every error names the file (and line or page) it came from; nothing is half-ingested because
the whole input is read and checked before the pipeline touches storage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from rag.domain import Document
from rag.errors import InputError

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
_DOC_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def load_corpus(path: Path) -> list[Document]:
    """Documents from a `.jsonl` file or a folder of supported files, checked before returning."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"corpus not found: {path}")
    docs = list(_iter_folder(path) if path.is_dir() else _iter_jsonl(path))
    if not docs:
        raise InputError(f"{path}: no documents found")
    return docs


def _iter_jsonl(path: Path) -> Iterator[Document]:
    if path.suffix not in (".jsonl", ".json"):
        raise InputError(f"{path}: expected a .jsonl corpus or a folder of documents")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", location=str(path)
        ) from None
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
            if "\\u" in line:  # an escaped lone surrogate parses, but no store can keep it
                json.dumps(row, ensure_ascii=False).encode("utf-8")
        except json.JSONDecodeError as exc:
            raise InputError(
                f"invalid JSON: {exc.msg} (column {exc.colno})", location=where
            ) from None
        except RecursionError:
            raise InputError("invalid JSON: nested too deeply", location=where) from None
        except UnicodeEncodeError:
            raise InputError("not valid Unicode: a lone surrogate escape such as \\ud800",
                             location=where) from None
        if not isinstance(row, dict):
            raise InputError("each line must be a JSON object", location=where)
        doc_id = _field(row, "_id", where, required=True)
        if doc_id in seen:
            raise InputError(f"field '_id': duplicate id {doc_id!r} (first on line {seen[doc_id]})",
                             location=where)
        seen[doc_id] = number
        text = _field(row, "text", where, required=True)
        title = _field(row, "title", where, required=False)
        metadata = row.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InputError("field 'metadata': must be an object", location=where)
        yield Document(doc_id, text, title, metadata, source=where)


def _field(row: dict[str, object], name: str, where: str, *, required: bool) -> str:
    value = row.get(name)
    if value is None:
        if required:
            raise InputError(f"field '{name}': missing", location=where)
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool) and name == "_id":
        return str(value)
    if not isinstance(value, str):
        raise InputError(f"field '{name}': expected a string, got {type(value).__name__}",
                         location=where)
    if required and not value.strip():
        raise InputError(f"field '{name}': empty", location=where)
    return value


def _iter_folder(folder: Path) -> Iterator[Document]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for file in files:
        if file.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        title, text = read_file(file)
        if not text.strip():
            raise InputError("no text could be extracted", location=str(file))
        doc_id = _DOC_ID.sub("-", str(file.relative_to(folder).with_suffix(""))).strip("-")
        yield Document(doc_id, text, title, {"path": str(file.relative_to(folder))},
                       source=str(file))


def read_file(file: Path) -> tuple[str, str]:
    """(title, text) of one supported file."""
    suffix = file.suffix.lower()
    if suffix == ".pdf":
        return _read_pdf(file)
    try:
        raw = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                         location=str(file)) from None
    if suffix in (".html", ".htm"):
        return _read_html(raw, file)
    if suffix in (".md", ".markdown"):
        return _read_markdown(raw, file)
    return file.stem.replace("-", " ").replace("_", " "), raw


def _read_markdown(raw: str, file: Path) -> tuple[str, str]:
    heading = re.search(r"^#\s+(.+)$", raw, flags=re.MULTILINE)
    title = heading.group(1).strip() if heading else file.stem.replace("-", " ")
    text = re.sub(r"^#{1,6}\s*", "", raw, flags=re.MULTILINE)  # headings become plain lines
    text = re.sub(r"(\*\*|__|`)", "", text)
    return title, text


def _read_html(raw: str, file: Path) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "nav", "footer"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else file.stem.replace("-", " ")
    body = soup.body or soup
    blocks = [b.get_text(" ", strip=True) for b in body.find_all(["h1", "h2", "h3", "p", "li"])]
    text = "\n\n".join(b for b in blocks if b) or body.get_text("\n", strip=True)
    return title, text


def _read_pdf(file: Path) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(file))
        if reader.is_encrypted:
            raise InputError("encrypted PDF is not supported", location=str(file))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = reader.metadata.title if reader.metadata else None
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise InputError(f"broken PDF: {exc}", location=str(file)) from None
    return meta_title or file.stem.replace("-", " "), "\n\n".join(pages)


def load_queries(path: Path) -> list[tuple[str, str]]:
    """(query id, text) pairs from a BEIR `queries.jsonl` (`_id`, `text`)."""
    queries: list[tuple[str, str]] = []
    for doc in _iter_jsonl(Path(path)):
        queries.append((doc.doc_id, doc.text))
    if not queries:
        raise InputError(f"{path}: no queries found")
    return queries
