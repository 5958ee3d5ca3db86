"""Every supported corpus format loads; every broken file fails with its name and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.adapters.loaders import load_corpus, load_queries
from rag.errors import InputError


def _pdf(path: Path, lines: list[str]) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4)
    pdf.setTitle("Travel policy")
    y = 800
    for line in lines:
        pdf.drawString(72, y, line)
        y -= 16
    pdf.save()


def test_folder_of_every_supported_type(tmp_path: Path) -> None:
    (tmp_path / "leave.md").write_text("# Annual leave\n\nYou get **25 days** of leave.\n")
    (tmp_path / "notes.txt").write_text("Plain text notes about payroll.")
    (tmp_path / "vpn.html").write_text(
        "<html><head><title>VPN guide</title><script>var x=1;</script></head>"
        "<body><h1>VPN</h1><p>Use the GlobalProtect client.</p><ul><li>Port 443</li></ul>"
        "</body></html>"
    )
    sub = tmp_path / "policies"
    sub.mkdir()
    _pdf(sub / "travel.pdf", ["Book flights through the travel desk.", "Economy class only."])
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # unsupported types are skipped
    docs = {d.doc_id: d for d in load_corpus(tmp_path)}
    assert set(docs) == {"leave", "notes", "vpn", "policies-travel"}
    assert docs["leave"].title == "Annual leave"
    assert "25 days" in docs["leave"].text and "**" not in docs["leave"].text
    assert docs["vpn"].title == "VPN guide"
    assert "GlobalProtect" in docs["vpn"].text and "var x" not in docs["vpn"].text
    assert "travel desk" in docs["policies-travel"].text
    assert docs["policies-travel"].title == "Travel policy"


def test_beir_jsonl(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        '{"_id": "1", "title": "A", "text": "alpha"}\n\n{"_id": 2, "text": "beta", '
        '"metadata": {"year": 2020}}\n'
    )
    docs = load_corpus(corpus)
    assert [(d.doc_id, d.title, d.text) for d in docs] == [("1", "A", "alpha"), ("2", "", "beta")]
    assert docs[1].metadata == {"year": 2020}
    assert docs[1].source.endswith("corpus.jsonl:3")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": ', "corpus.jsonl:2: invalid JSON"),
        ('{"text": "no id"}\n', "corpus.jsonl:1: field '_id': missing"),
        ('{"_id": "1", "text": 5}\n', "corpus.jsonl:1: field 'text': expected a string"),
        ('{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n', "duplicate id '1'"),
        ("[1, 2]\n", "corpus.jsonl:1: each line must be a JSON object"),
        ('{"_id": "1", "text": "  "}\n', "field 'text': empty"),
    ],
)
def test_broken_jsonl_names_file_line_and_field(tmp_path: Path, content: str, expected: str):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(content)
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace("'", "'")):
        load_corpus(corpus)


def test_non_utf8_text_file(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt: not UTF-8"):
        load_corpus(tmp_path)


def test_broken_pdf(tmp_path: Path) -> None:
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    with pytest.raises(InputError, match=r"broken\.pdf"):
        load_corpus(tmp_path)


def test_empty_file_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text("")
    with pytest.raises(InputError, match=r"empty\.md: no text"):
        load_corpus(tmp_path)
    with pytest.raises(InputError, match="corpus not found"):
        load_corpus(tmp_path / "missing")
    with pytest.raises(InputError, match=r"expected a \.jsonl corpus or a folder"):
        load_corpus(tmp_path / "empty.md")
    (tmp_path / "empty.md").unlink()
    with pytest.raises(InputError, match="no documents"):
        load_corpus(tmp_path)


def test_queries(tmp_path: Path) -> None:
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "what?"}\n')
    assert load_queries(queries) == [("q1", "what?")]
