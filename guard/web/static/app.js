// TruthGuard dashboard: plain ES module, no build step, no outside requests.
// Data comes from the same-origin JSON API; live progress from the run's event stream
// (EventSource, authenticated by the HttpOnly session cookie set at sign-in).

const $ = (selector) => document.querySelector(selector);
const HEADLINE = ["retrieval.nDCG@5", "retrieval.R@5", "retrieval.hit@5", "retrieval.MRR",
  "answer.em", "answer.f1", "abstention.hallucinated", "tools.selection_f1", "tools.correct",
  "ragas.rouge_score", "judge.faithfulness", "judge.answer_relevancy"];
const COLORS = ["#2f6fde", "#e07b39", "#1f9d55", "#8a4fd8", "#d64545", "#0f9bb5"];
const SVG = "http://www.w3.org/2000/svg";

const state = { runId: null, source: null, done: 0, total: 0, summary: null, cases: null,
  refreshTimer: null, lastRefresh: 0, open: new Set() };

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options,
    headers: { Accept: "application/json", ...(options.headers || {}) } });
  if (response.status === 401) { showLogin(); throw new Unauthorized("signed out"); }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ? body.error.message : response.statusText);
  }
  return response.status === 204 ? null : response.json();
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text != null) node.textContent = text;
  return node;
}

const fmt = (x, digits = 3) => (x == null ? "-" : Number(x).toFixed(digits));
function seconds(s) {
  if (s == null) return "-";
  const whole = Math.round(s);
  return whole >= 60 ? `${Math.floor(whole / 60)} min ${whole % 60} s` : `${whole} s`;
}
function report(error) {
  if (!(error instanceof Unauthorized)) $("#app-error").textContent = error.message;
}

// sign-in ----------------------------------------------------------------------------------

function showLogin() {
  closeStream();
  $("#login").hidden = false; $("#app").hidden = true; $("#logout").hidden = true;
  $("#who").textContent = "";
}

async function showApp() {
  const session = await api("/api/session");
  $("#login").hidden = true; $("#app").hidden = false; $("#logout").hidden = false;
  $("#who").textContent = `tenants: ${session.tenants.join(", ")}`;
  const { experiments, demo } = await api("/api/experiments");
  $("#experiment").replaceChildren(...experiments.map((name) => el("option", { value: name }, name)));
  if (experiments.includes(demo)) $("#experiment").value = demo;
  $("#start-demo").disabled = !experiments.includes(demo);
  $("#start-demo").dataset.spec = demo;
  await loadRuns();
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("#token").value.trim();
  const response = await fetch("/api/session", { method: "POST", credentials: "same-origin",
    headers: { Authorization: `Bearer ${token}` } });
  $("#token").value = "";
  if (!response.ok) { $("#login-error").textContent = "That token is not valid."; return; }
  $("#login-error").textContent = "";
  showApp().catch(report);
});

$("#logout").addEventListener("click", async () => {
  await fetch("/api/session", { method: "DELETE", credentials: "same-origin" });
  showLogin();
});

// runs -------------------------------------------------------------------------------------

async function loadRuns() {
  const { runs } = await api("/api/runs");
  $("#runs tbody").replaceChildren(...runs.map((run) => el("tr",
    { class: run.run_id === state.runId ? "selected" : "", data: { runId: run.run_id },
      onclick: () => openRun(run.run_id).catch(report) },
    el("td", {}, run.run_id), el("td", {}, run.experiment),
    el("td", {}, el("span", { class: `badge ${run.status}` }, run.status)),
    el("td", {}, `${run.done}/${run.total}`))));
}

async function startRun(spec) {
  $("#app-error").textContent = "";
  const { run_id: runId } = await api("/api/runs", { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ spec }) });
  await openRun(runId);
}

$("#start-demo").addEventListener("click", () => startRun($("#start-demo").dataset.spec).catch(report));
$("#start-run").addEventListener("click", () => startRun($("#experiment").value).catch(report));
$("#cancel").addEventListener("click", () =>
  api(`/api/runs/${state.runId}/cancel`, { method: "POST" }).catch(report));

function closeStream() {
  if (state.source) state.source.close();
  state.source = null;
  clearTimeout(state.refreshTimer);
  state.refreshTimer = null;
}

async function openRun(runId) {
  closeStream();
  Object.assign(state, { runId, done: 0, total: 0, summary: null, open: new Set() });
  $("#run").hidden = false;
  $("#run-title").textContent = runId;
  const summary = await refresh();
  if (summary.run.status === "running" || summary.run.status === "interrupted") {
    state.done = 0;  // the stream replays the journal from its first event
    listen(runId);
  }
}

function listen(runId) {
  const source = new EventSource(`/api/runs/${runId}/events`);
  state.source = source;
  const on = (type, handler) => source.addEventListener(type, (event) => {
    if (state.source === source) handler(JSON.parse(event.data));
  });
  on("run_started", (data) => {
    state.total = data.total; showProgress({ total: data.total });
    $("#run-status").textContent = "running"; $("#run-status").className = "badge running";
  });
  on("case_finished", () => { state.done += 1; showProgress({}); scheduleRefresh(); });
  on("progress", (data) => { showProgress(data); scheduleRefresh(); });
  on("run_finished", (data) => {
    closeStream(); showProgress(data);
    refresh().then(loadRuns).catch(report);
  });
  source.addEventListener("error", (event) => {
    if (event.data) $("#app-error").textContent = JSON.parse(event.data).message || "run error";
  });
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  const wait = Math.max(0, 1500 - (Date.now() - state.lastRefresh));
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    if (state.source) refresh().catch(report);
  }, wait);
}

async function refresh() {
  const runId = state.runId;
  state.lastRefresh = Date.now();
  const [summary, cases] = await Promise.all([api(`/api/runs/${runId}`), loadCases(runId)]);
  if (runId !== state.runId) return summary;
  state.summary = summary;
  const { run } = summary;
  $("#run-title").textContent = `${run.experiment} · ${run.run_id}`;
  $("#run-status").textContent = run.status;
  $("#run-status").className = `badge ${run.status}`;
  $("#cancel").hidden = !run.cancellable;
  state.total = state.total || run.total;
  if (!state.source) state.done = run.done;
  showProgress({ total: run.total, ...(summary.progress || {}) });
  renderMetrics(summary);
  renderCases(cases);
  return summary;
}

// progress, metrics, chart -----------------------------------------------------------------

function showProgress(p) {
  if (p.total) state.total = p.total;
  if (p.done != null) state.done = Math.max(state.done, p.done);
  const pct = state.total ? Math.floor((100 * state.done) / state.total) : 0;
  $("#bar").style.width = `${pct}%`;
  $("#progress").dataset.percent = String(pct);
  $("#bar-label").textContent = `${state.done} / ${state.total} cases (${pct} %)`;
  const row = document.querySelector(`#runs tr[data-run-id="${state.runId}"] td:last-child`);
  if (row) row.textContent = `${state.done}/${state.total}`;
  if (p.eta_s !== undefined) $("#stat-eta").textContent = pct >= 100 ? "done" : seconds(p.eta_s);
  if (p.throughput_per_s != null) $("#stat-throughput").textContent = `${fmt(p.throughput_per_s, 2)} cases/s`;
  if (p.elapsed_s != null) $("#stat-elapsed").textContent = seconds(p.elapsed_s);
  if (p.retries != null) $("#stat-retries").textContent = String(p.retries);
  if (p.errors != null) $("#stat-errors").textContent = String(p.errors);
  if (p.cost_usd != null) $("#stat-cost").textContent = `$${fmt(p.cost_usd, 4)}`;
}

function renderMetrics(summary) {
  const variants = [...new Set([...summary.run.variants,
    ...summary.summaries.map((s) => s.variant)])].filter((v) => summary.summaries.some((s) => s.variant === v));
  const byKey = new Map(summary.summaries.map((s) => [`${s.variant}\u0000${s.metric}`, s]));
  const available = [...new Set(summary.summaries.map((s) => s.metric))].sort();
  const all = $("#all-metrics").checked;
  const metrics = all ? available : HEADLINE.filter((m) => available.includes(m));
  $("#confidence").textContent = `mean [${Math.round(summary.confidence * 100)} % bootstrap CI], n`;
  $("#metrics thead").replaceChildren(el("tr", {}, el("th", {}, "metric"),
    ...variants.map((v) => el("th", {}, v))));
  $("#metrics tbody").replaceChildren(...metrics.map((metric) => el("tr", {}, el("td", {}, metric),
    ...variants.map((variant) => {
      const s = byKey.get(`${variant}\u0000${metric}`);
      if (!s) return el("td", { class: "mean" }, "-");
      return el("td", { class: "mean", data: { variant, metric, mean: String(s.mean) } },
        fmt(s.mean), " ", el("small", {}, s.low == null ? `n=${s.n}` : `[${fmt(s.low)}, ${fmt(s.high)}] n=${s.n}`));
    }))));
  $("#gates").replaceChildren(...summary.gates.map((g) =>
    el("li", { class: g.passed ? "pass" : "fail" }, `${g.variant} ${g.metric} ${g.rule}: ${g.detail}`)));
  drawChart(variants, metrics.slice(0, all ? 12 : 10), byKey);
}

function drawChart(variants, metrics, byKey) {
  const width = 760, height = 270, left = 64, bottom = 78, top = 12;
  const plotH = height - bottom - top;
  const groupW = (width - left) / Math.max(1, metrics.length);
  const barW = Math.min(26, (groupW - 10) / Math.max(1, variants.length));
  const y = (v) => top + plotH * (1 - Math.max(0, Math.min(1, v)));
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "metric means per variant with confidence intervals" });
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { x1: left, x2: width, y1: y(tick), y2: y(tick), stroke: "#e3e6ec" }),
      svg("text", { x: left - 30, y: y(tick) + 4, "text-anchor": "end", "font-size": 10, fill: "#667085" }, tick));
  }
  metrics.forEach((metric, i) => {
    const x0 = left + i * groupW + (groupW - barW * variants.length) / 2;
    variants.forEach((variant, j) => {
      const s = byKey.get(`${variant}\u0000${metric}`);
      if (!s || s.mean == null) return;
      const x = x0 + j * barW;
      const bar = svg("rect", { x, y: y(s.mean), width: barW - 2, height: y(0) - y(s.mean), fill: COLORS[j % COLORS.length] });
      bar.append(svg("title", {}, `${variant} ${metric}: ${fmt(s.mean)} [${fmt(s.low)}, ${fmt(s.high)}]`));
      chart.append(bar);
      if (s.low != null) {
        const cx = x + (barW - 2) / 2;
        chart.append(svg("line", { x1: cx, x2: cx, y1: y(s.low), y2: y(s.high), stroke: "#1d2330", "stroke-width": 1.2 }));
      }
    });
    chart.append(svg("text", { x: left + (i + 0.5) * groupW, y: height - bottom + 14, "font-size": 10,
      "text-anchor": "end", transform: `rotate(-28 ${left + (i + 0.5) * groupW} ${height - bottom + 14})` }, metric));
  });
  variants.forEach((variant, j) => {
    chart.append(svg("rect", { x: left + j * 110, y: height - 14, width: 10, height: 10, fill: COLORS[j % COLORS.length] }),
      svg("text", { x: left + j * 110 + 14, y: height - 5, "font-size": 11 }, variant));
  });
  $("#chart").replaceChildren(chart);
}

// cases ------------------------------------------------------------------------------------

function caseQuery() {
  const form = new FormData($("#case-filter"));
  const params = new URLSearchParams({ limit: "200" });
  for (const [key, value] of form) if (value !== "") params.set(key, value);
  if (!params.get("metric")) { params.delete("min"); params.delete("max"); }
  return params;
}

function loadCases(runId) {
  return api(`/api/runs/${runId}/cases?${caseQuery()}`);
}

function fillSelect(select, values) {
  const current = select.value;
  const first = select.options[0];
  select.replaceChildren(first, ...values.map((v) => el("option", { value: v }, v)));
  select.value = values.includes(current) ? current : "";
}

function renderCases(page) {
  const form = $("#case-filter");
  fillSelect(form.elements.variant, page.facets.variants);
  fillSelect(form.elements.tag, page.facets.tags);
  fillSelect(form.elements.metric, page.facets.metrics);
  const metric = form.elements.metric.value || "answer.f1";
  $("#case-metric").textContent = metric;
  $("#case-count").textContent = `${page.cases.length} of ${page.total}, failures first`;
  const rows = [];
  for (const c of page.cases) {
    const key = `${c.variant}/${c.case_id}/${c.repeat}`;
    const row = el("tr", { class: "case", data: { key } },
      el("td", { class: `status-${c.status}` }, c.status), el("td", {}, c.variant),
      el("td", { class: "mono" }, c.case_id), el("td", {}, c.question),
      el("td", {}, fmt(c.metrics[metric])));
    const detail = el("tr", { class: "detail" }, el("td", { colspan: 5 }, caseDetail(c)));
    detail.hidden = !state.open.has(key);
    row.addEventListener("click", () => {
      detail.hidden = !detail.hidden;
      if (detail.hidden) state.open.delete(key); else state.open.add(key);
    });
    rows.push(row, detail);
  }
  $("#cases tbody").replaceChildren(...rows);
}

function caseDetail(c) {
  const r = c.response || {};
  const contexts = el("ol", {}, ...(r.contexts || []).map((ctx) => el("li", {},
    el("strong", {}, `${ctx.doc_id} (${fmt(ctx.score)})`), " ",
    ctx.text.length > 400 ? `${ctx.text.slice(0, 400)}…` : ctx.text)));
  const scores = Object.entries(c.metrics).map(([k, v]) => `${k}: ${fmt(v)}`).join("\n");
  return el("div", { class: "detail" }, el("dl", {},
    el("dt", {}, "question"), el("dd", {}, c.question),
    el("dt", {}, "answer"), el("dd", {}, r.answer ?? "-"),
    ...(c.error ? [el("dt", {}, "error"), el("dd", {}, c.error)] : []),
    el("dt", {}, "contexts"), el("dd", {}, contexts),
    el("dt", {}, "tool calls"), el("dd", {}, el("pre", {}, JSON.stringify(r.tool_calls || [], null, 2))),
    el("dt", {}, "scores"), el("dd", {}, el("pre", {}, scores || "-")),
    el("dt", {}, "tags"), el("dd", {}, c.tags.join(", ")),
    el("dt", {}, "attempts"), el("dd", {}, `${c.attempts}, ${fmt(c.latency_ms, 0)} ms${c.cached ? ", cached" : ""}`)));
}

$("#case-filter").addEventListener("change", () => {
  if (state.runId) loadCases(state.runId).then(renderCases).catch(report);
});
$("#case-filter").addEventListener("submit", (event) => event.preventDefault());
$("#all-metrics").addEventListener("change", () => { if (state.summary) renderMetrics(state.summary); });

// start ------------------------------------------------------------------------------------

setInterval(() => { if (!$("#app").hidden) loadRuns().catch(report); }, 5000);
showApp().catch(report);
