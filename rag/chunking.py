"""Split documents into chunks with stable ids, on paragraph and sentence boundaries."""

from __future__ import annotations

import hashlib
import re

from rag.domain import Chunk, Document

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def document_hash(doc: Document) -> str:
    """Content hash of what gets indexed: re-ingesting an unchanged document is a no-op."""
    digest = hashlib.sha256()
    for part in (doc.doc_id, doc.title, doc.text):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _pieces(text: str, max_chars: int) -> list[str]:
    """Paragraphs, and sentences of paragraphs longer than `max_chars`, hard-cut if still long."""
    out: list[str] = []
    for para in _PARAGRAPH.split(text):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para) <= max_chars:
            out.append(para)
            continue
        for sentence in _SENTENCE_END.split(para):
            while len(sentence) > max_chars:
                out.append(sentence[:max_chars])
                sentence = sentence[max_chars:]
            if sentence:
                out.append(sentence)
    return out


def chunk_document(doc: Document, max_chars: int = 1500, overlap: int = 1) -> list[Chunk]:
    """Greedily pack paragraphs/sentences into chunks of at most `max_chars` characters.

    `overlap` is the number of trailing pieces repeated at the start of the next chunk, so a
    sentence that answers a question is never cut off from its neighbour. Chunk ids are
    `"{doc_id}#{n}"`, numbered from 0, stable for the same text and settings.
    """
    doc_hash = document_hash(doc)
    groups: list[list[str]] = []
    current: list[str] = []
    for piece in _pieces(doc.text, max_chars):
        if current and sum(len(p) + 1 for p in current) + len(piece) > max_chars:
            groups.append(current)
            current = current[-overlap:] if overlap else []
            if sum(len(p) + 1 for p in current) + len(piece) > max_chars:
                current = []
        current.append(piece)
    if current or not groups:
        groups.append(current)
    return [
        Chunk(
            chunk_id=f"{doc.doc_id}#{i}",
            doc_id=doc.doc_id,
            index=i,
            text=" ".join(group),
            title=doc.title,
            doc_hash=doc_hash,
        )
        for i, group in enumerate(groups)
    ]


def indexable_text(chunk: Chunk) -> str:
    """The text that embedders and lexical indexes see: title, then the chunk."""
    return f"{chunk.title} {chunk.text}".strip() if chunk.title else chunk.text
