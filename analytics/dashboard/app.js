// mtrank experiment dashboard: plain JS, no build step, no third-party code.
// Reads GET {api}/experiments and GET {api}/experiments/<key>/report from the serving origin and draws
// tables and inline-SVG charts. The JSON shapes are those of analytics/report.py (see normalise*()).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];

const params = new URLSearchParams(window.location.search);
const API = (document.querySelector('meta[name="mtrank-api"]')?.content || "/api").replace(/\/$/, "");
const REFRESH_SECONDS = Math.max(1, Number(params.get("refresh")) || 10);

const state = {
  experiments: [],
  selected: null,
  report: null,
  liftMetric: null,
  timer: null,
};

// ---------------------------------------------------------------- formatting
// Every number is shown with a fixed, documented precision so the browser test can compare the text with
// the JSON report: lifts and CIs in % with 2 decimals, p-values with 4 decimals (or "<0.0001"), values
// with 4 significant digits, user counts as integers with thousands separators.

function fmtInt(n) {
  return Math.round(n).toLocaleString("en-US");
}

function fmtValue(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  const abs = Math.abs(v);
  if (abs >= 1e4) return v.toLocaleString("en-US", { maximumFractionDigits: 0 });
  const decimals = Math.max(0, 3 - Math.floor(Math.log10(abs)));
  return v.toFixed(Math.min(decimals, 8));
}

function fmtPct(x, signed = true, decimals = 2) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  const s = (100 * x).toFixed(decimals);
  return (signed && x > 0 ? "+" : "") + s + "%";
}

function fmtP(p) {
  if (p === null || p === undefined || !Number.isFinite(p)) return "–";
  return p < 0.0001 ? "<0.0001" : p.toFixed(4);
}

function fmtCompact(y) {
  const abs = Math.abs(y);
  if (abs >= 1e6) return `${+(y / 1e6).toFixed(2)}M`;
  if (abs >= 1e3) return `${+(y / 1e3).toFixed(1)}k`;
  return String(+y.toFixed(2));
}

/** "p=0.4312" or "p<0.0001". */
function pEquals(p) {
  const s = fmtP(p);
  return s.startsWith("<") ? `p${s}` : `p=${s}`;
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

// ---------------------------------------------------------------- data shapes

function num(x) {
  return x === null || x === undefined ? null : Number(x);
}

/** One experiment summary of GET /experiments, tolerant of optional fields. */
function normaliseSummary(e) {
  const srm = e.srm || {};
  return {
    key: e.key,
    name: e.name || e.key,
    stage: e.stage || e.layer || "",
    status: e.status || "unknown",
    control: e.control,
    users: e.users || {},
    srm: { pValue: num(srm.p_value), flagged: Boolean(srm.flagged) },
  };
}

/** The report of GET /experiments/<key>/report. */
function normaliseReport(r) {
  const exp = r.experiment || {};
  const settings = r.settings || {};
  const srm = r.srm || {};
  return {
    key: exp.key,
    name: exp.name || exp.key,
    stage: exp.stage || exp.layer || "",
    status: exp.status || "unknown",
    control: exp.control,
    variants: (exp.variants || []).map((v) => v.key),
    generatedAt: r.generated_at,
    alpha: num(settings.alpha),
    correction: settings.correction || "none",
    sequential: Boolean(settings.sequential),
    users: r.users || {},
    srm: { pValue: num(srm.p_value), flagged: Boolean(srm.flagged), threshold: num(srm.threshold) },
    metrics: (r.metrics || []).map((m) => ({
      key: m.key,
      name: m.name || m.key,
      type: m.type || "",
      guardrail: Boolean(m.guardrail),
      values: Object.fromEntries((m.variants || []).map((v) => [v.variant, { n: num(v.n), value: num(v.value) }])),
      comparisons: Object.fromEntries((m.comparisons || []).map((c) => [c.variant, {
        estimate: num(c.estimate),
        ciLow: num(c.ci?.[0]),
        ciHigh: num(c.ci?.[1]),
        pValue: num(c.p_value),
        pAdjusted: num(c.p_value_adjusted),
        significant: Boolean(c.significant),
        boundary: num(c.boundary),
      }])),
    })),
    timeseries: (r.timeseries || []).map((t) => ({ t: new Date(t.timestamp), users: t.users || {}, lifts: t.lifts || {} })),
  };
}

async function getJSON(path) {
  const resp = await fetch(API + path, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

// ---------------------------------------------------------------- DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function colourOf(variants, key) {
  const i = variants.indexOf(key);
  return PALETTE[(i < 0 ? variants.length : i) % PALETTE.length];
}

function statusBadge(status) {
  return el("span", { class: `badge status-${status}`, text: status });
}

function srmCell(srm) {
  if (srm.pValue === null) return el("span", { class: "muted", text: "–" });
  return srm.flagged
    ? el("span", { class: "badge warn", "data-field": "srm", title: "sample ratio mismatch: chi-square p < 0.001" },
      `⚠ SRM ${pEquals(srm.pValue)}`)
    : el("span", { class: "badge ok", "data-field": "srm" }, `OK ${pEquals(srm.pValue)}`);
}

// ---------------------------------------------------------------- experiment list

function renderExperiments() {
  const tbody = document.querySelector("#experiments tbody");
  tbody.replaceChildren();
  if (state.experiments.length === 0) {
    tbody.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No experiments yet." })));
    return;
  }
  for (const e of state.experiments) {
    const variants = Object.keys(e.users);
    const users = el("div", { class: "users" }, ...variants.map((v) => el("span", { class: "user-chip", "data-variant": v },
      el("i", { class: `swatch c${variants.indexOf(v) % PALETTE.length}` }), `${v} `,
      el("b", { "data-field": "users", text: fmtInt(e.users[v]) }))));
    const row = el("tr", {
      class: "clickable" + (e.key === state.selected ? " selected" : "") + (e.srm.flagged ? " srm-flagged" : ""),
      "data-experiment": e.key,
      onclick: () => select(e.key),
    },
    el("td", {}, el("div", { class: "exp-name", text: e.name }), el("div", { class: "exp-key", text: e.key })),
    el("td", { text: e.stage }),
    el("td", {}, statusBadge(e.status)),
    el("td", {}, users),
    el("td", {}, srmCell(e.srm)));
    tbody.append(row);
  }
}

// ---------------------------------------------------------------- metric table

/** A lift CI drawn as a horizontal bar on a scale symmetric around zero. */
function ciBar(cmp, scale, significant) {
  const w = 180, h = 22, mid = w / 2, pad = 6;
  const x = (v) => mid + (v / scale) * (mid - pad);
  const cls = !significant ? "ci-neutral" : cmp.estimate > 0 ? "ci-positive" : "ci-negative";
  const node = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: `ci-bar ${cls}`, role: "img",
    "aria-label": `CI ${fmtPct(cmp.ciLow)} to ${fmtPct(cmp.ciHigh)}` },
  svg("line", { x1: mid, x2: mid, y1: 1, y2: h - 1, class: "zero" }));
  if (cmp.ciLow !== null && cmp.ciHigh !== null) {
    const lo = x(cmp.ciLow), hi = x(cmp.ciHigh);
    node.append(svg("rect", { x: lo, y: 6, width: Math.max(1, hi - lo), height: h - 12, rx: 3, class: "interval" }));
  }
  if (cmp.estimate !== null) node.append(svg("circle", { cx: x(cmp.estimate), cy: h / 2, r: 3.5, class: "point" }));
  return node;
}

function renderMetrics(rep) {
  const table = document.getElementById("metrics");
  const level = rep.alpha === null ? "" : `${+(100 * (1 - rep.alpha)).toFixed(1)}% `;
  const head = ["Metric", "Variant", "Users", "Value", "Lift", `${level}CI`, "", "p-value", `p (${rep.correction})`, "Result"];
  if (rep.sequential) head.splice(9, 0, "Boundary");
  table.tHead.replaceChildren(el("tr", {}, ...head.map((h) => el("th", { text: h }))));
  const tbody = table.tBodies[0];
  tbody.replaceChildren();

  let scale = 0;
  for (const m of rep.metrics) {
    for (const c of Object.values(m.comparisons)) {
      scale = Math.max(scale, Math.abs(c.ciLow ?? 0), Math.abs(c.ciHigh ?? 0), Math.abs(c.estimate ?? 0));
    }
  }
  scale = scale > 0 ? scale * 1.1 : 0.01;

  const variants = rep.variants.length ? rep.variants : Object.keys(rep.users);
  for (const m of rep.metrics) {
    const rows = variants.filter((v) => v in m.values);
    rows.forEach((v, i) => {
      const val = m.values[v];
      const cmp = v === rep.control ? null : m.comparisons[v];
      const cells = [];
      if (i === 0) {
        cells.push(el("td", { rowspan: rows.length, class: "metric-name" },
          el("div", { text: m.name }),
          el("div", { class: "exp-key" }, `${m.key} · ${m.type}`, m.guardrail ? el("span", { class: "badge guard", text: "guardrail" }) : null)));
      }
      cells.push(el("td", {}, el("i", { class: `swatch c${variants.indexOf(v) % PALETTE.length}` }), v,
        v === rep.control ? el("span", { class: "muted", text: " (control)" }) : null));
      cells.push(el("td", { class: "num", "data-field": "n", text: val.n === null ? "–" : fmtInt(val.n) }));
      cells.push(el("td", { class: "num", "data-field": "value", text: fmtValue(val.value) }));
      if (cmp) {
        const liftCls = cmp.significant ? (cmp.estimate > 0 ? "pos" : "neg") : "";
        cells.push(el("td", { class: `num lift ${liftCls}`, "data-field": "lift", text: fmtPct(cmp.estimate) }));
        cells.push(el("td", { class: "num ci-text" },
          "[", el("span", { "data-field": "ci_low", text: fmtPct(cmp.ciLow) }), ", ",
          el("span", { "data-field": "ci_high", text: fmtPct(cmp.ciHigh) }), "]"));
        cells.push(el("td", { class: "ci-cell" }, ciBar(cmp, scale, cmp.significant)));
        cells.push(el("td", { class: "num", "data-field": "p_value", text: fmtP(cmp.pValue) }));
        cells.push(el("td", { class: "num", "data-field": "p_value_adjusted", text: fmtP(cmp.pAdjusted) }));
        if (rep.sequential) cells.push(el("td", { class: "num", "data-field": "boundary", text: fmtPct(cmp.boundary, false) }));
        const verdict = !cmp.significant ? "not significant" : cmp.estimate > 0 ? "significant ▲" : "significant ▼";
        const vcls = !cmp.significant ? "neutral" : cmp.estimate > 0 ? (m.guardrail ? "ok" : "win") : "lose";
        cells.push(el("td", {}, el("span", { class: `badge ${vcls}`, "data-field": "significant",
          "data-significant": String(cmp.significant), text: verdict })));
      } else {
        const empty = rep.sequential ? 7 : 6;
        cells.push(el("td", { colspan: empty, class: "muted baseline", text: "baseline" }));
      }
      tbody.append(el("tr", { "data-metric": m.key, "data-variant": v, class: i === 0 ? "metric-first" : "" }, ...cells));
    });
  }
}

// ---------------------------------------------------------------- charts

/** Round axis ticks (steps of 1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]. */
function niceTicks(lo, hi, target = 5) {
  if (!(hi > lo)) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
  const raw = (hi - lo) / target;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * pow).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.floor(lo / step) * step; v <= Math.ceil(hi / step) * step + step / 2; v += step) {
    ticks.push(Math.abs(v) < step / 1e6 ? 0 : v);
  }
  return ticks;
}

/** A minimal line chart: series = [{label, colour, points: [{t, y, lo?, hi?}]}]. */
function lineChart(series, { yFormat, zeroLine = false, width = 560, height = 240 }) {
  const m = { l: 64, r: 16, t: 12, b: 40 };
  const all = series.flatMap((s) => s.points);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "line-chart", role: "img" });
  if (all.length === 0) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis-label" }, "no data yet"));
    return root;
  }
  const ts = all.map((p) => p.t.getTime());
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  if (t0 === t1) { t0 -= 3.6e6; t1 += 3.6e6; }
  const ys = all.flatMap((p) => [p.y, p.lo ?? p.y, p.hi ?? p.y]).filter(Number.isFinite);
  const ticks = niceTicks(Math.min(...ys, zeroLine ? 0 : Infinity), Math.max(...ys, zeroLine ? 0 : -Infinity));
  const y0 = ticks[0], y1 = ticks[ticks.length - 1];
  const X = (t) => m.l + ((t - t0) / (t1 - t0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);

  const grid = svg("g", { class: "grid-lines" });
  for (const y of ticks) {
    grid.append(svg("line", { x1: m.l, x2: width - m.r, y1: Y(y), y2: Y(y) }));
    grid.append(svg("text", { x: m.l - 6, y: Y(y) + 4, "text-anchor": "end", class: "axis-label" }, yFormat(y)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const d = new Date(t).toISOString();
    const label = t1 - t0 > 2 * 86400e3 ? d.slice(5, 10) : d.slice(11, 16);
    grid.append(svg("text", { x: X(t), y: height - m.b + 16, "text-anchor": "middle", class: "axis-label" }, label));
  }
  root.append(grid);
  if (zeroLine && y0 < 0) root.append(svg("line", { x1: m.l, x2: width - m.r, y1: Y(0), y2: Y(0), class: "zero" }));

  const legend = svg("g", { class: "legend" });
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p.y)).sort((a, b) => a.t - b.t);
    const band = pts.filter((p) => Number.isFinite(p.lo) && Number.isFinite(p.hi));
    if (band.length > 1) {
      const upper = band.map((p) => `${X(p.t.getTime())},${Y(p.hi)}`);
      const lower = band.slice().reverse().map((p) => `${X(p.t.getTime())},${Y(p.lo)}`);
      root.append(svg("polygon", { points: upper.concat(lower).join(" "), fill: s.colour, "fill-opacity": 0.15 }));
    }
    root.append(svg("polyline", { points: pts.map((p) => `${X(p.t.getTime())},${Y(p.y)}`).join(" "),
      fill: "none", stroke: s.colour, "stroke-width": 2, "data-series": s.label }));
    for (const p of pts) root.append(svg("circle", { cx: X(p.t.getTime()), cy: Y(p.y), r: 2.5, fill: s.colour }));
    const lx = m.l + i * 130;
    legend.append(svg("rect", { x: lx, y: height - 14, width: 10, height: 10, rx: 2, fill: s.colour }));
    legend.append(svg("text", { x: lx + 14, y: height - 5, class: "axis-label" }, s.label));
  });
  root.append(legend);
  return root;
}

function renderCharts(rep) {
  const select = document.getElementById("lift-metric");
  if (!rep.metrics.some((m) => m.key === state.liftMetric)) state.liftMetric = rep.metrics[0]?.key ?? null;
  select.replaceChildren(...rep.metrics.map((m) => el("option", { value: m.key, selected: m.key === state.liftMetric, text: m.name })));

  const variants = rep.variants.length ? rep.variants : Object.keys(rep.users);
  const treatments = variants.filter((v) => v !== rep.control);
  const liftSeries = treatments.map((v) => ({
    label: `${v} vs ${rep.control}`,
    colour: colourOf(variants, v),
    points: rep.timeseries
      .map((t) => ({ t: t.t, l: t.lifts?.[state.liftMetric]?.[v] }))
      .filter((p) => p.l && p.l.estimate !== null && p.l.estimate !== undefined)
      .map((p) => ({ t: p.t, y: Number(p.l.estimate), lo: num(p.l.ci?.[0]), hi: num(p.l.ci?.[1]) })),
  }));
  document.getElementById("lift-chart").replaceChildren(
    lineChart(liftSeries, { yFormat: (y) => fmtPct(y, true, Math.abs(y) >= 0.1 || y === 0 ? 0 : 1), zeroLine: true }));

  const trafficSeries = variants.map((v) => ({
    label: v,
    colour: colourOf(variants, v),
    points: rep.timeseries.filter((t) => v in t.users).map((t) => ({ t: t.t, y: Number(t.users[v]) })),
  }));
  document.getElementById("traffic-chart").replaceChildren(
    lineChart(trafficSeries, { yFormat: fmtCompact, zeroLine: true }));
}

// ---------------------------------------------------------------- report panel

function renderReport() {
  const rep = state.report;
  const section = document.getElementById("report");
  if (!rep) { section.hidden = true; return; }
  section.hidden = false;
  section.dataset.experiment = rep.key;
  document.getElementById("report-title").textContent = rep.name;
  const mode = rep.sequential ? "sequential (always-valid)" : "fixed horizon";
  document.getElementById("report-meta").replaceChildren(
    el("span", { text: `${rep.key} · ${rep.stage} layer · control: ${rep.control}` }),
    el("span", { text: ` · α = ${rep.alpha ?? "–"} · correction: ${rep.correction} · ${mode}` }),
    el("span", { class: "muted", text: rep.generatedAt ? ` · computed ${fmtTime(rep.generatedAt)}` : "" }));
  const variants = rep.variants.length ? rep.variants : Object.keys(rep.users);
  document.getElementById("report-badges").replaceChildren(statusBadge(rep.status),
    ...variants.map((v) => el("span", { class: "user-chip", "data-variant": v },
      el("i", { class: `swatch c${variants.indexOf(v) % PALETTE.length}` }), `${v} `,
      el("b", { "data-field": "users", text: fmtInt(rep.users[v] ?? 0) }))));
  const banner = document.getElementById("srm-banner");
  banner.hidden = !rep.srm.flagged;
  banner.textContent = rep.srm.flagged
    ? `⚠ Sample ratio mismatch (chi-square ${pEquals(rep.srm.pValue)}, threshold ${rep.srm.threshold ?? 0.001}): the traffic split differs from the configured weights, so the results below may be biased.`
    : "";
  renderMetrics(rep);
  renderCharts(rep);
}

// ---------------------------------------------------------------- control flow

function showError(err) {
  const box = document.getElementById("error");
  document.getElementById("status-dot").className = err ? "dot down" : "dot up";
  box.hidden = !err;
  box.textContent = err ? `Could not load data: ${err.message}` : "";
}

async function refresh() {
  try {
    const list = await getJSON("/experiments");
    state.experiments = (Array.isArray(list) ? list : list.experiments || []).map(normaliseSummary);
    const fromHash = decodeURIComponent(window.location.hash.replace(/^#\/?/, ""));
    const keys = state.experiments.map((e) => e.key);
    state.selected = keys.includes(fromHash) ? fromHash : keys.includes(state.selected) ? state.selected : keys[0] ?? null;
    renderExperiments();
    state.report = state.selected
      ? normaliseReport(await getJSON(`/experiments/${encodeURIComponent(state.selected)}/report`))
      : null;
    renderReport();
    showError(null);
    document.getElementById("last-updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  } catch (err) {
    showError(err);
  }
}

function select(key) {
  window.location.hash = `#/${encodeURIComponent(key)}`;
}

function schedule() {
  clearInterval(state.timer);
  state.timer = document.getElementById("auto-refresh").checked ? setInterval(refresh, REFRESH_SECONDS * 1000) : null;
}

document.getElementById("refresh-seconds").textContent = String(REFRESH_SECONDS);
document.getElementById("auto-refresh").addEventListener("change", schedule);
document.getElementById("refresh-now").addEventListener("click", refresh);
document.getElementById("lift-metric").addEventListener("change", (ev) => {
  state.liftMetric = ev.target.value;
  if (state.report) renderCharts(state.report);
});
window.addEventListener("hashchange", refresh);
refresh();
schedule();
