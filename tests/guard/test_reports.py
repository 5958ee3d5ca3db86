"""Reports of a real demo run (hashing embedder, lexical and hybrid): a self-contained HTML page
with its plots and numbers, and a Markdown summary."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from demo_spec import DEMO, demo_matrix_spec

from guard.bootstrap import rag_config_for
from guard.entrypoints.cli import main as guard_main
from guard.reports import expected_tool_labels, tool_confusion, tool_label
from guard.runs import RunStore
from guard.service import GuardService, RunOutcome, load_spec_dataset

pytestmark = pytest.mark.integration


@dataclass
class Rendered:
    outcome: RunOutcome
    html: str
    markdown: str


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    folder = tmp_path_factory.mktemp("report")
    spec = demo_matrix_spec(folder, "report-demo", header=f'tools_file = "{DEMO / "tools.json"}"',
                            gates='"retrieval.hit@5" = { min = 0.5 }\n'
                                  '"abstention.hallucinated" = { max = 0.01 }')
    data = folder / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert guard_main(["--data-dir", str(data), "run", str(spec), "--no-mlflow"]) in (0, 1)
        run_id = RunStore(data / "runs").run_ids()[0]
        assert (folder / "reports" / f"{run_id}.html").is_file()  # written after the run
        out = folder / "out"
        assert guard_main(["--data-dir", str(data), "report", run_id, "--out-dir", str(out),
                           "--no-mlflow"]) == 0
    outcome = GuardService(RunStore(data / "runs"), None).outcome(run_id)
    yield Rendered(outcome, (out / f"{run_id}.html").read_text(encoding="utf-8"),
                   (out / f"{run_id}.md").read_text(encoding="utf-8"))


def test_html_is_self_contained(rendered: Rendered) -> None:
    html = rendered.html
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"<(?:script|link|iframe)\b", html, re.I)
    assert "url(" not in html  # no external fonts or images from the stylesheet


def test_html_has_the_plots_as_inline_png(rendered: Rendered) -> None:
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
                        rendered.html)
    assert [alt for alt, _ in images] == [
        "Metrics per variant", "Per-tag slices", "Latency, tokens and cost",
        "Tool selection: expected vs chosen"]
    for _, data in images:
        png = base64.b64decode(data, validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_html_and_markdown_have_the_numbers(rendered: Rendered) -> None:
    by_key = {(s.variant, s.metric): s.ci for s in rendered.outcome.summaries}
    for variant in ("lexical", "hybrid"):
        for metric in ("retrieval.nDCG@5", "answer.f1", "ragas.rouge_score", "tools.correct"):
            ci = by_key[(variant, metric)]
            assert ci.mean is not None and ci.low is not None and ci.high is not None
            text = f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}] n={ci.n}"
            assert text in rendered.html
            assert text in rendered.markdown
    assert "scored 44" in rendered.html and "| lexical | scored 44 |" in rendered.markdown
    for tag in ("leave", "vpn", "multi-turn"):  # per-tag slice table
        assert f'<td class="txt">{tag}</td>' in rendered.html
    assert "latency p50 ms" in rendered.html and "latency p50 ms" in rendered.markdown
    assert "FAIL" in rendered.html and "failed." in rendered.markdown  # the strict max gate
    assert rendered.markdown.startswith(f"# report-demo - run {rendered.outcome.run_id}")


def test_tool_confusion_counts_every_tool_case_once_per_variant(rendered: Rendered) -> None:
    spec = rendered.outcome.spec
    expected = expected_tool_labels(load_spec_dataset(spec, rag_config_for(spec)).cases)
    assert "(no tool)" in expected.values() and "reset_password" in expected.values()
    confusion = tool_confusion(rendered.outcome.frame, expected)
    per_variant = confusion.groupby("variant")["count"].sum().to_dict()
    assert per_variant == {"hybrid": len(expected), "lexical": len(expected)}
    diagonal = confusion[confusion["expected"] == confusion["chosen"]]["count"].sum()
    correct = rendered.outcome.frame["tools.selection_f1"].eq(1.0).sum()
    assert diagonal <= correct  # a right selection may still have wrong arguments


def test_tool_label() -> None:
    assert tool_label([]) == "(no tool)"
    assert tool_label(["b", "a", "b"]) == "a+b"
