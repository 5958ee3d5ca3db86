"""Run reports: one self-contained HTML page and a Markdown summary for CI logs.

The HTML page has no external reference: styles are inline and every plot is a PNG drawn with
matplotlib's Agg canvas (no pyplot, no global state) and embedded as a base64 `data:` URI, so the
file can be mailed, attached to a CI run or logged to MLflow and still open offline.

Contents: the run and its variants' parameters; headline metrics per variant with bootstrap CIs
(table and error-bar plot); every metric; per-tag slices; latency, token and cost
distributions; the tool-selection confusion matrix (expected vs chosen tool names) when the
dataset evaluates tools; case statuses, errors and gates.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from guard.compare import headline_metrics
from guard.gates import GateResult, higher_is_better
from guard.golden import GoldenCase
from guard.metrics.stats import MeanCI
from guard.results import MetricSummary, metric_columns, status_counts
from guard.service import RunOutcome

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NO_TOOL = "(no tool)"
MAX_TAGS = 15
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
           "#8C8C8C", "#CCB974", "#64B5CD")


@dataclass(frozen=True)
class Report:
    run_id: str
    html: str
    markdown: str


def tool_label(names: Iterable[str]) -> str:
    """A tool selection as one label: sorted distinct names joined by '+', or '(no tool)'."""
    distinct = sorted({n for n in names if n})
    return "+".join(distinct) if distinct else NO_TOOL


def expected_tool_labels(cases: Iterable[GoldenCase]) -> dict[str, str]:
    """case id -> expected tool selection label, for the cases that evaluate tools."""
    return {c.id: tool_label(call.name for call in c.expected_tool_calls)
            for c in cases if c.expected_tool_calls is not None}


def _chosen_label(raw: Any) -> str | None:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    calls = json.loads(raw) if isinstance(raw, str) else raw
    return tool_label(str(c.get("name", "")) for c in calls if isinstance(c, dict))


# --------------------------------------------------------------------------- formatting


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_ci(ci: MeanCI | None) -> str:
    if ci is None or ci.mean is None:
        return "-"
    if ci.low is None or ci.high is None:
        return f"{ci.mean:.3f}"
    return f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if i >= numeric_from else "txt"}">{_esc(v)}</td>'
            for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def clean(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(clean(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(clean(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def plot_metrics(summaries: Sequence[MetricSummary], metrics: Sequence[str],
                 variants: Sequence[str]) -> str | None:
    """Horizontal bars: mean per metric and variant, CI as error bars."""
    if not metrics or not variants:
        return None
    by_key = {(s.variant, s.metric): s.ci for s in summaries}
    figure = _figure(8, 0.45 * len(metrics) * max(1, len(variants)) / 1.5 + 1.2)
    axes = figure.add_subplot()
    height = 0.8 / len(variants)
    for v_index, variant in enumerate(variants):
        ys: list[float] = []
        means: list[float] = []
        errors: list[list[float]] = [[], []]
        for m_index, metric in enumerate(metrics):
            ci = by_key.get((variant, metric))
            if ci is None or ci.mean is None:
                continue
            ys.append(m_index + (v_index - (len(variants) - 1) / 2) * height)
            means.append(ci.mean)
            errors[0].append(ci.mean - ci.low if ci.low is not None else 0.0)
            errors[1].append(ci.high - ci.mean if ci.high is not None else 0.0)
        axes.barh(ys, means, height=height, xerr=errors, color=_color(v_index), label=variant,
                  capsize=2, error_kw={"elinewidth": 0.8})
    axes.set_yticks(range(len(metrics)), labels=list(metrics))
    axes.invert_yaxis()
    axes.set_xlabel("mean over scored cases (error bars: bootstrap CI)")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    return _png(figure)


def tag_slices(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and count per tag, variant and metric over scored cases (long form)."""
    columns = ["tag", "variant", "metric", "mean", "n"]
    if frame.empty or "tags" not in frame:
        return pd.DataFrame(columns=columns)
    scored = frame[frame["status"] == "scored"].copy()
    scored["tag"] = scored["tags"].fillna("").astype(str).str.split(",")
    exploded = scored.explode("tag")
    exploded = exploded[exploded["tag"] != ""]
    rows = []
    for (tag, variant), group in exploded.groupby(["tag", "variant"]):
        for metric in metrics:
            if metric not in group:
                continue
            values = pd.to_numeric(group[metric], errors="coerce").dropna()
            if not values.empty:
                rows.append((str(tag), str(variant), metric, float(values.mean()), len(values)))
    return pd.DataFrame(rows, columns=columns)


def plot_tags(slices: pd.DataFrame, metrics: Sequence[str], variants: Sequence[str]) -> str | None:
    """One panel per metric: mean per tag, a bar per variant."""
    if slices.empty:
        return None
    counts = slices.groupby("tag")["n"].max().sort_values(ascending=False)
    tags = sorted(counts.index[:MAX_TAGS])
    shown = [m for m in metrics if m in set(slices["metric"])][:4]
    figure = _figure(max(6.0, 0.55 * len(tags) * max(1, len(variants)) / 1.5 + 2), 2.6 * len(shown))
    width = 0.8 / max(1, len(variants))
    for p_index, metric in enumerate(shown):
        axes = figure.add_subplot(len(shown), 1, p_index + 1)
        part = slices[slices["metric"] == metric]
        for v_index, variant in enumerate(variants):
            rows = part[part["variant"] == variant].set_index("tag")
            xs = [i + (v_index - (len(variants) - 1) / 2) * width
                  for i, t in enumerate(tags) if t in rows.index]
            ys = [float(rows.loc[t, "mean"]) for t in tags if t in rows.index]
            axes.bar(xs, ys, width=width, color=_color(v_index), label=variant)
        labels = [f"{t} ({int(counts[t])})" for t in tags]  # cases with the tag
        axes.set_xticks(range(len(tags)), labels=labels, rotation=30, ha="right",
                        fontsize="small")
        axes.set_title(metric, fontsize="medium")
        axes.grid(axis="y", alpha=0.3)
        if p_index == 0:
            axes.legend(fontsize="small", ncols=min(4, len(variants)))
    return _png(figure)


def plot_costs(frame: pd.DataFrame, variants: Sequence[str]) -> str | None:
    """Distributions per variant: latency per case, tokens per case, cost per case."""
    if frame.empty:
        return None
    tokens = (pd.to_numeric(frame["prompt_tokens"], errors="coerce").fillna(0)
              + pd.to_numeric(frame["completion_tokens"], errors="coerce").fillna(0))
    data = frame.assign(tokens=tokens)
    panels = (("latency_ms", "latency per case (ms)"), ("tokens", "tokens per case"),
              ("cost_usd", "cost per case (USD)"))
    figure = _figure(11, 3.2)
    for index, (column, title) in enumerate(panels):
        axes = figure.add_subplot(1, 3, index + 1)
        series = [pd.to_numeric(data.loc[data["variant"] == v, column], errors="coerce")
                  .dropna().to_numpy() for v in variants]
        axes.set_title(title, fontsize="medium")
        if not any(len(s) and float(s.max()) > 0 for s in series):
            axes.text(0.5, 0.5, "all zero" + (" (no prices set)" if column == "cost_usd" else ""),
                      ha="center", va="center", transform=axes.transAxes)
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        axes.boxplot(series, tick_labels=list(variants), showfliers=True)
        axes.tick_params(axis="x", labelrotation=20, labelsize="small")
        axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def tool_confusion(frame: pd.DataFrame, expected: Mapping[str, str]) -> pd.DataFrame:
    """Counts of (variant, expected selection, chosen selection) over cases that evaluate tools
    and got a response (errors without a response are left out)."""
    columns = ["variant", "expected", "chosen", "count"]
    if frame.empty or not expected:
        return pd.DataFrame(columns=columns)
    rows = []
    for variant, case_id, raw in zip(frame["variant"], frame["case_id"], frame["tool_calls"],
                                     strict=True):
        if case_id not in expected:
            continue
        chosen = _chosen_label(raw)
        if chosen is not None:
            rows.append((str(variant), expected[case_id], chosen))
    if not rows:
        return pd.DataFrame(columns=columns)
    counted = pd.DataFrame(rows, columns=columns[:3]).value_counts().reset_index()
    return counted.rename(columns={0: "count"}) if 0 in counted.columns else counted


MAX_TOOL_LABELS = 15  # BFCL has about a thousand tools: beyond this, a heat map is unreadable


def _fold_rare_tools(confusion: pd.DataFrame, keep: int = MAX_TOOL_LABELS) -> pd.DataFrame:
    """Keep the `keep` most frequent expected labels; every other label becomes "(other)"."""
    totals = confusion.groupby("expected")["count"].sum().sort_values(ascending=False)
    if len(totals) <= keep:
        return confusion
    kept = set(totals.index[:keep]) | {NO_TOOL}
    folded = confusion.copy()
    for column in ("expected", "chosen"):
        folded[column] = folded[column].where(folded[column].isin(kept), "(other)")
    return folded.groupby(["variant", "expected", "chosen"], as_index=False)["count"].sum()


def plot_tools(confusion: pd.DataFrame, variants: Sequence[str]) -> str | None:
    """One heat map per variant: expected tool (rows) vs chosen tool (columns), the most
    frequent expected tools only (the rest folded into "(other)")."""
    if confusion.empty:
        return None
    confusion = _fold_rare_tools(confusion)
    labels_expected = sorted(set(confusion["expected"]))
    labels_chosen = sorted(set(confusion["chosen"]) | set(labels_expected))
    shown = [v for v in variants if v in set(confusion["variant"])]
    figure = _figure(max(5.0, 0.5 * len(labels_chosen) + 3) * len(shown),
                     0.45 * len(labels_expected) + 2.4)
    for index, variant in enumerate(shown):
        axes = figure.add_subplot(1, len(shown), index + 1)
        part = confusion[confusion["variant"] == variant]
        grid = [[0] * len(labels_chosen) for _ in labels_expected]
        for exp, cho, count in zip(part["expected"], part["chosen"], part["count"], strict=True):
            grid[labels_expected.index(exp)][labels_chosen.index(cho)] += int(count)
        top = max(max(row) for row in grid) or 1
        axes.imshow(grid, cmap="Blues", vmin=0, vmax=top, aspect="auto")
        for r, row in enumerate(grid):
            for c, count in enumerate(row):
                if count:
                    axes.text(c, r, str(count), ha="center", va="center", fontsize="small",
                              color="white" if count > top / 2 else "black")
        axes.set_xticks(range(len(labels_chosen)), labels=labels_chosen, rotation=40,
                        ha="right", fontsize="small")
        axes.set_yticks(range(len(labels_expected)), labels=labels_expected, fontsize="small")
        axes.set_xlabel("chosen")
        if index == 0:
            axes.set_ylabel("expected")
        axes.set_title(variant, fontsize="medium")
    return _png(figure)


# --------------------------------------------------------------------------- the report


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;
max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem}th{background:#f4f4f4;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:600}.fail{color:#c62828;font-weight:600}
img{max-width:100%;height:auto}.note{color:#666;font-size:.85rem}
"""


def _variants(outcome: RunOutcome, manifest: Mapping[str, Any]) -> list[str]:
    listed = [str(v) for v in manifest.get("variants", ())]
    seen = sorted(outcome.frame["variant"].unique()) if not outcome.frame.empty else []
    return list(dict.fromkeys([*listed, *seen]))


def _latency_rows(frame: pd.DataFrame, variants: Sequence[str]) -> list[list[str]]:
    rows = []
    for variant in variants:
        part = frame[frame["variant"] == variant] if not frame.empty else frame
        latency = pd.to_numeric(part.get("latency_ms", pd.Series(dtype=float)),
                                errors="coerce").dropna()
        cost = pd.to_numeric(part.get("cost_usd", pd.Series(dtype=float)), errors="coerce")
        prompt = pd.to_numeric(part.get("prompt_tokens", pd.Series(dtype=float)), errors="coerce")
        completion = pd.to_numeric(part.get("completion_tokens", pd.Series(dtype=float)),
                                   errors="coerce")
        p50, p95 = ((_fmt(float(latency.quantile(q)), 1) if not latency.empty else "-")
                    for q in (0.5, 0.95))
        rows.append([variant, p50, p95,
                     _fmt(float(latency.max()), 1) if not latency.empty else "-",
                     f"{int(prompt.fillna(0).sum())}", f"{int(completion.fillna(0).sum())}",
                     f"{float(cost.fillna(0).sum()):.4f}"])
    return rows


def _gate_rows(gates: Sequence[GateResult]) -> list[tuple[str, str, str, str, str]]:
    return [("pass" if g.passed else "FAIL", g.variant, g.metric, g.rule, g.detail)
            for g in gates]


def build_report(
    outcome: RunOutcome,
    manifest: Mapping[str, Any],
    expected_tools: Mapping[str, str] | None = None,
    gates: Sequence[GateResult] | None = None,
) -> Report:
    """The HTML page and the Markdown summary of one run.

    `expected_tools` (case id -> expected selection, see `expected_tool_labels`) enables the
    confusion matrix; `gates` defaults to the run's floor gates (`outcome.gates`).
    """
    frame = outcome.frame
    spec = outcome.spec
    variants = _variants(outcome, manifest)
    gates = list(outcome.gates if gates is None else gates)
    by_key = {(s.variant, s.metric): s.ci for s in outcome.summaries}
    all_metrics = sorted({s.metric for s in outcome.summaries})
    headline = headline_metrics(all_metrics) or all_metrics[:12]
    counts = status_counts(frame) if not frame.empty else {}
    slices = tag_slices(frame, headline[:4])
    confusion = tool_confusion(frame, expected_tools or {})
    dataset = manifest.get("dataset", {})
    title = f"{spec.name} - run {outcome.run_id}"

    plots = [
        ("Metrics per variant", plot_metrics(outcome.summaries, headline, variants)),
        ("Per-tag slices", plot_tags(slices, headline[:4], variants)),
        ("Latency, tokens and cost", plot_costs(frame, variants)),
        ("Tool selection: expected vs chosen", plot_tools(confusion, variants)),
    ]

    info_rows = [
        ("experiment", spec.name), ("run id", outcome.run_id), ("status", outcome.status),
        ("dataset", f"{dataset.get('name', '')} ({dataset.get('cases', '?')} cases, "
                    f"hash {dataset.get('hash', '')})"),
        ("tags", ", ".join(manifest.get("tags", ())) or "-"),
        ("tenants", ", ".join(manifest.get("tenants", ())) or "-"),
        ("judge", spec.judge.model if spec.judge else "none (LLM metrics not computed)"),
        ("code version", manifest.get("code_version", "")),
        ("confidence", f"{spec.confidence:.0%} bootstrap CI; paired sign-flip test for drops"),
    ]
    params = {str(p.get("name")): p for p in manifest.get("variant_params", ())}
    keys = list(dict.fromkeys(k for p in params.values() for k in p if k != "name"))
    param_rows = [[k, *[str(params.get(v, {}).get(k, "-")) for v in variants]] for k in keys]

    def metric_rows(metrics: Sequence[str]) -> list[list[str]]:
        rows = []
        for metric in metrics:
            arrow = "higher is better" if higher_is_better(metric) else "lower is better"
            cells = []
            for variant in variants:
                ci = by_key.get((variant, metric))
                cells.append(f"{fmt_ci(ci)} n={ci.n}" if ci and ci.mean is not None else "-")
            rows.append([f"{metric} ({arrow})", *cells])
        return rows

    status_rows = [[v, ", ".join(f"{k} {n}" for k, n in sorted(counts.get(v, {}).items()))
                    or "-"] for v in variants]
    errors = frame[frame["status"] != "scored"] if not frame.empty else frame
    error_rows = [[str(r.variant), str(r.case_id), str(r.status), str(r.error or "")[:300]]
                  for r in errors.head(50).itertuples()]

    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{_esc(title)}</h1>"]
    if spec.description:
        parts.append(f"<p>{_esc(spec.description)}</p>")
    parts.append(_table(["", ""], info_rows, numeric_from=2))
    if param_rows:
        parts += ["<h2>Variants</h2>", _table(["parameter", *variants], param_rows, 2)]
    parts += ["<h2>Headline metrics</h2>",
              f"<p class=\"note\">mean [{spec.confidence:.0%} bootstrap CI] over scored cases; "
              "n counts the cases where the metric is defined.</p>",
              _table(["metric", *variants], metric_rows(headline))]
    for heading, image in plots:
        if image is None:
            continue
        parts += [f"<h2>{_esc(heading)}</h2>",
                  f'<img alt="{_esc(heading)}" src="data:image/png;base64,{image}">']
        if heading == "Per-tag slices" and not slices.empty:
            rows = []
            for (tag, metric), group in slices.groupby(["tag", "metric"], sort=True):
                means = dict(zip(group["variant"], group["mean"], strict=True))
                rows.append([tag, metric, int(group["n"].max()),
                             *[_fmt(means.get(v)) for v in variants]])
            parts.append(_table(["tag", "metric", "n", *variants], rows, numeric_from=2))
        if heading == "Latency, tokens and cost":
            parts.append(_table(["variant", "latency p50 ms", "p95 ms", "max ms",
                                 "prompt tokens", "completion tokens", "cost USD"],
                                _latency_rows(frame, variants)))
    if expected_tools is None:
        parts.append("<p class=\"note\">Tool confusion matrix: the dataset could not be read, "
                     "so the expected tools are unknown.</p>")
    parts += ["<h2>Case status</h2>", _table(["variant", "cases"], status_rows, numeric_from=2)]
    if error_rows:
        parts += ["<h3>Cases that did not score</h3>",
                  _table(["variant", "case", "status", "error"], error_rows, numeric_from=4)]
    if gates:
        gate_html = []
        for verdict, *rest in _gate_rows(gates):
            css = "pass" if verdict == "pass" else "fail"
            cells = "".join(f"<td>{_esc(v)}</td>" for v in rest)
            gate_html.append(f'<tr><td class="{css}">{verdict}</td>{cells}</tr>')
        parts += ["<h2>Gates</h2>", "<table><thead><tr><th>result</th><th>variant</th>"
                  "<th>metric</th><th>rule</th><th>detail</th></tr></thead><tbody>"
                  + "".join(gate_html) + "</tbody></table>"]
    others = [m for m in metric_columns(frame) if m in all_metrics] if not frame.empty else []
    parts += ["<h2>All metrics</h2><details><summary>every metric per variant</summary>",
              _table(["metric", *variants], metric_rows(others)), "</details>",
              "</body></html>"]
    html_text = "\n".join(parts)

    md = [f"# {title}", "",
          f"Experiment `{spec.name}`, status **{outcome.status}**, dataset "
          f"`{dataset.get('name', '')}` ({dataset.get('cases', '?')} cases, hash "
          f"`{dataset.get('hash', '')}`), tags: {', '.join(manifest.get('tags', ())) or '-'}.",
          "", f"Mean [{spec.confidence:.0%} bootstrap CI] over scored cases:", "",
          _md_table(["metric", *variants], metric_rows(headline)), "",
          _md_table(["variant", "cases"], status_rows), "",
          _md_table(["variant", "latency p50 ms", "p95 ms", "max ms", "prompt tokens",
                     "completion tokens", "cost USD"], _latency_rows(frame, variants))]
    if gates:
        failed = sum(not g.passed for g in gates)
        md += ["", f"Gates: {len(gates) - failed} passed, {failed} failed.", "",
               _md_table(["result", "variant", "metric", "rule", "detail"], _gate_rows(gates))]
    md += ["", f"Full report: `reports/{outcome.run_id}.html`", ""]
    return Report(outcome.run_id, html_text, "\n".join(md))


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write `<out_dir>/<run_id>.html` and `.md`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / f"{report.run_id}.html"
    md_path = out_dir / f"{report.run_id}.md"
    html_path.write_text(report.html, encoding="utf-8")
    md_path.write_text(report.markdown, encoding="utf-8")
    return html_path, md_path
