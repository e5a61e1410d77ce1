// mtrank experiment dashboard: plain JS, no build step, no third-party code.
// Reads GET {api}/experiments and GET {api}/experiments/<key>/report from the serving origin and draws
// tables and inline-SVG charts. The JSON shapes are those of analytics/report.py (see normalise*()).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];

const params = new URLSearchParams(window.location.search);
const API = (document.querySelector('meta[name="mtrank-api"]')?.content || "/api").replace(/\/$/, "");
// ?refresh=N refreshes every N seconds (default 10); ?refresh=0 starts with auto-refresh off.
const REFRESH_PARAM = params.get("refresh");
const REFRESH_SECONDS = REFRESH_PARAM === "0" ? 10 : Math.max(1, Number(REFRESH_PARAM) || 10);

const state = {
  experiments: [],
  selected: null,
  report: null,
  liftMetric: null,
  timer: null,
  // Refreshes overlap (auto-refresh, Refresh, a click): each is numbered, and an answer older than what the
  // page shows is dropped. A refresh waiting for a report (computing one takes a second or two) when the
  // analyst selected another experiment answered last, and its report replaced the one selected.
  started: 0,
  listShown: 0,  // the refresh whose experiment list is shown
  reportShown: 0,  // the refresh whose report is shown
};

// ---------------------------------------------------------------- formatting
// Every number is shown with a fixed, documented precision so the browser test can compare the text with
// the JSON report: lifts and CIs in % with 2 decimals (2 significant digits below 0.005%), p-values with 4
// decimals (or "<0.0001"), values with 4 significant digits (in exponent notation below 0.0001 and from 1e9),
// chances to win in % with 1 decimal (">99.9%", "<0.1%" at the ends), user counts as integers with thousands
// separators.

function fmtInt(n) {
  return Math.round(n).toLocaleString("en-US");
}

function fmtValue(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  const abs = Math.abs(v);
  // Fixed decimals would print a metric in tiny units (3e-9 per user) as 0.00000000, and a huge one
  // (1e200) in 200 digits.
  if (abs < 1e-4 || abs >= 1e9) return v.toExponential(3);
  if (abs >= 1e4) return v.toLocaleString("en-US", { maximumFractionDigits: 0 });
  return v.toFixed(Math.max(0, 3 - Math.floor(Math.log10(abs))));
}

function fmtPct(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  // Below 0.005% two decimals read "+0.00%" (a CI that excludes 0 shown as reaching it, "-0.00%"): such a
  // number keeps 2 significant digits (+0.00040%, +4.0e-10% below 1e-6%).
  const pct = 100 * x;
  const s = pct !== 0 && Math.abs(pct) < 0.005 ? pct.toPrecision(2) : pct.toFixed(2);
  return (x > 0 ? "+" : "") + s + "%";
}

/** The decimals a multiple of `step` needs (steps are 1, 2, 2.5 or 5 times a power of ten). */
function stepDecimals(step) {
  let d = 0;
  while (d < 20 && Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) > 1e-6) d += 1;
  return d;
}

/** An axis label of a tick `step` apart from the next, as precise as the step (12.5% is not "+13%", ticks
 * 2e-9 apart are not all "0"): in % for relative lifts, else "1.5k", "2M", or exponent notation for tiny
 * steps. */
function fmtTick(y, step, percent) {
  const v = percent ? 100 * y : y, s = percent ? 100 * step : step;
  if (v === 0) return percent ? "0%" : "0";
  const [div, unit] = percent ? [1, "%"]
    : Math.abs(v) >= 1e6 ? [1e6, "M"] : Math.abs(v) >= 1e3 ? [1e3, "k"] : [1, ""];
  let text;
  if (s < 1e-4) {
    const exponent = (n) => Math.floor(Math.log10(Math.abs(n)));
    const digits = Math.max(0, exponent(v) - exponent(s)) + stepDecimals(s / 10 ** exponent(s));
    text = v.toExponential(Math.min(digits, 20));
  } else {
    text = (v / div).toFixed(stepDecimals(s / div));
  }
  return (percent && v > 0 ? "+" : "") + text + unit;
}

/** A chance to win: "93.4%"; ">99.9%" and "<0.1%" where one decimal would round to a certainty (100.0%, 0.0%)
 * that a posterior probability never is. */
function fmtChance(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  if (x >= 0.9995) return ">99.9%";
  if (x < 0.0005) return "<0.1%";
  return `${(100 * x).toFixed(1)}%`;
}

function fmtP(p) {
  if (p === null || p === undefined || !Number.isFinite(p)) return "–";
  return p < 0.0001 ? "<0.0001" : p.toFixed(4);
}

/** "p=0.4312" or "p<0.0001". */
function pEquals(p) {
  const s = fmtP(p);
  return s.startsWith("<") ? `p${s}` : `p=${s}`;
}

function fmtTime(ms) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? String(ms) : d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

/** A window bound: "2024-05-01 00:00 UTC" (seconds and milliseconds only when set); "…" when open. */
function fmtBound(ms) {
  if (ms === null) return "…";
  // bounds come from the analysis config, which refuses any past year 9999 (metrics.epoch_ms)
  const iso = new Date(ms).toISOString().replace(/(:00)?\.000Z$/, "Z");
  return iso.replace("T", " ").replace(/Z$/, " UTC");
}

/** "window 2024-05-01 00:00 UTC – 2024-05-15 00:00 UTC" of an analysis_window (null: none, ""). */
function fmtWindow(w) {
  return w ? `window ${fmtBound(w.start)} – ${fmtBound(w.end)}` : "";
}

/** analysis_window of a report or summary: { start, end } in ms (null: open); null when none is set. */
function normaliseWindow(w) {
  return w ? { start: num(w.start_ms), end: num(w.end_ms) } : null;
}

/** A lift in the report's units: % for relative, metric units for absolute. */
function fmtLift(x, differenceType) {
  if (differenceType !== "absolute") return fmtPct(x);
  const s = fmtValue(x);
  return x > 0 ? `+${s}` : s;
}

// ---------------------------------------------------------------- data shapes

function num(x) {
  return x === null || x === undefined ? null : Number(x);
}

function variantUsers(variants) {
  return Object.fromEntries((variants || []).map((v) => [v.key, num(v.users)]));
}

function normaliseSrm(srm = {}) {
  return { pValue: num(srm.p_value), flagged: Boolean(srm.flagged), threshold: num(srm.threshold) };
}

/** One entry of GET /experiments (analytics.report.ExperimentSummary). */
function normaliseSummary(e) {
  return {
    key: e.experiment_key,
    kind: e.kind || "ab",
    status: e.status || "unknown",
    control: e.control,
    totalUsers: num(e.total_users),
    users: variantUsers(e.variants),
    srm: normaliseSrm(e.srm),
    window: normaliseWindow(e.analysis_window),
  };
}

/** The lift a row shows: relative or absolute, as the report's difference_type says. Its interval is the
 * one the verdict agrees with: adjusted_ci (at the level where it excludes 0 exactly when the corrected p-value
 * is below alpha), the test's own ci where there is none. */
function normaliseRow(v, differenceType) {
  const lift = (differenceType === "absolute" ? v.absolute_lift : v.relative_lift) || null;
  const ci = v.adjusted_ci || lift?.ci;
  const lo = num(ci?.[0]), hi = num(ci?.[1]);
  return {
    variant: v.variant,
    isControl: Boolean(v.is_control),
    users: num(v.users),
    value: num(v.value),
    lift: lift && {
      estimate: num(lift.estimate),
      ciLow: lo,
      ciHigh: hi,
      unadjustedLow: num(lift.ci?.[0]),
      unadjustedHigh: num(lift.ci?.[1]),
      // The sequential boundary: the half-width of the always-valid interval, which the lift must exceed.
      boundary: lo !== null && hi !== null ? (hi - lo) / 2 : null,
    },
    pValue: num(v.p_value),
    pAdjusted: num(v.adjusted_p_value),
    chanceToWin: num(v.chance_to_win),
    significant: Boolean(v.significant),
    error: v.error || null,
    errorMessage: v.error_message || null,
  };
}

/** One test of an interleaving report (analytics.interleaving_report.TestReport). */
function normaliseTest(t = {}) {
  const lo = num(t.ci?.[0]), hi = num(t.ci?.[1]);
  return {
    estimate: num(t.estimate), ciLow: lo, ciHigh: hi, pValue: num(t.p_value),
    significant: Boolean(t.significant), error: t.error || null, errorMessage: t.error_message || null,
  };
}

/** ExperimentReport.interleaving (analytics.interleaving_report.InterleavingReport); null for A/B tests. */
function normaliseInterleaving(il) {
  if (!il) return null;
  const arm = (a = {}) => ({ key: a.key, model: a.model_name, version: a.model_version });
  return {
    clickMetric: il.click_metric || "click",
    armA: arm(il.arm_a),
    armB: arm(il.arm_b),
    armSets: (il.arm_sets || []).map((s) => ({ a: arm(s.a), b: arm(s.b), exposures: num(s.exposures) })),
    users: num(il.users),
    usersWithClicks: num(il.users_with_clicks),
    winsA: num(il.wins_a),
    winsB: num(il.wins_b),
    ties: num(il.ties),
    preference: normaliseTest(il.preference),
    credit: normaliseTest(il.credit),
    preferred: il.preferred || null,
    sequential: Boolean(il.sequential),
    timeline: (il.timeline || []).map((p) => ({
      t: new Date(p.time_ms), y: num(p.estimate), lo: num(p.ci?.[0]), hi: num(p.ci?.[1]),
    })),
  };
}

/** GET /experiments/<key>/report (analytics.report.ExperimentReport). */
function normaliseReport(r) {
  const differenceType = r.difference_type || "relative";
  const bucket = num(r.traffic_bucket_ms) || 0;
  return {
    key: r.experiment_key,
    kind: r.kind || "ab",
    interleaving: normaliseInterleaving(r.interleaving),
    status: r.status || "unknown",
    control: r.control,
    variants: (r.variants || []).map((v) => v.key),
    users: variantUsers(r.variants),
    generatedAt: num(r.generated_at_ms),
    alpha: num(r.alpha),
    correction: r.correction || "none",
    correctionFamilySize: num(r.correction_family_size),
    differenceType,
    sequential: Boolean(r.sequential),
    srm: normaliseSrm(r.srm),
    window: normaliseWindow(r.analysis_window),
    metrics: (r.metrics || []).map((m) => ({
      name: m.name,
      description: m.description || "",
      type: m.type || "",
      guardrail: Boolean(m.guardrail),
      inverse: Boolean(m.inverse),
      cuped: Boolean(m.cuped),
      corrected: Boolean(m.corrected),
      rows: (m.variants || []).map((v) => normaliseRow(v, differenceType)),
    })),
    timeline: (r.timeline || []).map((p) => ({
      t: new Date(p.time_ms), metric: p.metric, variant: p.variant,
      y: num(p.estimate), lo: num(p.ci?.[0]), hi: num(p.ci?.[1]),
    })),
    // Cumulative users at the end of each bucket.
    traffic: (r.traffic || []).map((p) => ({ t: new Date(p.bucket_start_ms + bucket), variant: p.variant, y: num(p.cumulative_users) })),
  };
}

async function getJSON(path) {
  const resp = await fetch(API + path, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!resp.ok) {
    // 503 {waiting: true}: the server is up but its store is not created yet (a fresh deployment): a notice
    const body = await resp.json().catch(() => ({}));
    throw Object.assign(new Error(body.waiting ? String(body.error) : `${path}: HTTP ${resp.status}`),
      { waiting: Boolean(body.waiting) });
  }
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

/** A name from events (experiment, variant, arm, model) with every non-printable character escaped as the
 * text reports escape it (analytics.text_format.name: \x1b, \n, \u202e). Raw, ESC showed as a box, a newline
 * as a space and a right-to-left override reversed the text after it, so two names could look alike. */
function displayName(value) {
  return String(value).replace(/[\p{C}\p{Z}]/gu, (c) => {
    if (c === " ") return c;
    const named = { "\t": "\\t", "\n": "\\n", "\r": "\\r" }[c];
    if (named) return named;
    const code = c.codePointAt(0);
    const [prefix, width] = code < 0x100 ? ["\\x", 2] : code < 0x10000 ? ["\\u", 4] : ["\\U", 8];
    return prefix + code.toString(16).padStart(width, "0");
  });
}

/** A variant's swatch, name and user count, as the experiment list and the report header show them. */
function userChip(variants, key, users) {
  return el("span", { class: "user-chip", "data-variant": key },
    el("i", { class: `swatch c${variants.indexOf(key) % PALETTE.length}` }), `${displayName(key)} `,
    el("b", { "data-field": "users", text: fmtInt(users ?? 0) }));
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
    ? el("span", { class: "badge warn", "data-field": "srm", title: `sample ratio mismatch: chi-square p < ${srm.threshold}` },
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
    const users = el("div", { class: "users" }, ...variants.map((v) => userChip(variants, v, e.users[v])));
    const row = el("tr", {
      class: "clickable" + (e.key === state.selected ? " selected" : "") + (e.srm.flagged ? " srm-flagged" : ""),
      "data-experiment": e.key,
      onclick: () => select(e.key),
    },
    el("td", {}, el("div", { class: "exp-name", text: displayName(e.key) }),
      el("div", { class: "exp-key", "data-field": "kind",
        text: e.kind === "interleaving" ? "interleaving" : e.control ? `control: ${displayName(e.control)}` : "" }),
      ...(e.window
        ? [el("div", { class: "exp-key", "data-field": "window", text: fmtWindow(e.window) })] : [])),
    el("td", { class: "num", "data-field": "total_users", text: e.totalUsers === null ? "–" : fmtInt(e.totalUsers) }),
    el("td", {}, statusBadge(e.status)),
    el("td", {}, users),
    el("td", {}, srmCell(e.srm)));
    tbody.append(row);
  }
}

// ---------------------------------------------------------------- metric table

/** A lift CI drawn as a horizontal bar on a scale symmetric around zero; fmt prints its ends for the label. */
function ciBar(cmp, scale, significant, verdictCls, fmt) {
  const w = 180, h = 22, mid = w / 2, pad = 6;
  const x = (v) => mid + (v / scale) * (mid - pad);
  const cls = !significant ? "ci-neutral"
    : verdictCls === "win" ? "ci-positive" : verdictCls === "lose" ? "ci-negative" : `ci-${verdictCls}`;
  const node = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: `ci-bar ${cls}`, role: "img",
    "aria-label": `CI ${fmt(cmp.ciLow)} to ${fmt(cmp.ciHigh)}` },
  svg("line", { x1: mid, x2: mid, y1: 1, y2: h - 1, class: "zero" }));
  if (cmp.ciLow !== null && cmp.ciHigh !== null) {
    const lo = x(cmp.ciLow), hi = x(cmp.ciHigh);
    node.append(svg("rect", { x: lo, y: 6, width: Math.max(1, hi - lo), height: h - 12, rx: 3, class: "interval" }));
  }
  if (cmp.estimate !== null) node.append(svg("circle", { cx: x(cmp.estimate), cy: h / 2, r: 3.5, class: "point" }));
  return node;
}

/** The cells of a row whose tests could not run: the report's error code and its message, or "no result". */
function errorCell(colspan, code, message) {
  return el("td", { colspan, class: "muted baseline" },
    el("span", { class: "error-code", "data-field": "error", text: code || "no result" }),
    ...(message ? [": ", el("span", { "data-field": "error_message", text: message })] : []));
}

function verdict(row, metric) {
  if (!row.significant || !row.lift) return { text: "not significant", cls: "neutral" };
  const up = row.lift.estimate > 0;
  const good = up !== metric.inverse;
  return { text: `significant ${up ? "▲" : "▼"}`, cls: good ? "win" : "lose" };
}

function renderMetrics(rep) {
  const table = document.getElementById("metrics");
  const level = rep.alpha === null ? "" : `${+(100 * (1 - rep.alpha)).toFixed(1)}% `;
  const liftHead = rep.differenceType === "absolute" ? "Lift (abs.)" : "Lift";
  const corrected = rep.correction !== "none";
  const ciHead = corrected ? `CI (${rep.correction})` : `${level}CI`;
  const head = ["Metric", "Variant", "Users", "Value", liftHead, ciHead, "", "p-value",
    `p (${rep.correction})`, "Chance to win", "Result"];
  if (rep.sequential) head.splice(10, 0, "Boundary");
  // its header may wrap: on one line it pushed the table past a 1,440 px window
  const titles = {
    "Chance to win": { class: "wrap", title: "Bayesian, flat prior: the probability that the variant beats "
      + "control (by a lower value where lower is better)" },
    [ciHead]: corrected ? { title: `widened with the ${rep.correction} correction to the level where it `
      + `excludes 0 exactly when p (${rep.correction}) is below α; the unadjusted ${level}CI is in each `
      + "interval's tooltip" } : {},
  };
  table.tHead.replaceChildren(el("tr", {}, ...head.map((h) => el("th", { text: h, ...(titles[h] || {}) }))));
  const tbody = table.tBodies[0];
  tbody.replaceChildren();

  // CI bars share one scale around zero: across the table for relative lifts (all in %), per metric for
  // absolute lifts (each in its metric's own units).
  const extent = (metrics) => {
    let e = 0;
    for (const m of metrics) {
      for (const r of m.rows) {
        if (r.lift) e = Math.max(e, Math.abs(r.lift.ciLow ?? 0), Math.abs(r.lift.ciHigh ?? 0), Math.abs(r.lift.estimate ?? 0));
      }
    }
    return e > 0 ? e * 1.1 : 0.01;
  };
  const tableScale = extent(rep.metrics);
  const scaleOf = (m) => (rep.differenceType === "absolute" ? extent([m]) : tableScale);
  const fmt = (x) => fmtLift(x, rep.differenceType);
  const cols = rep.sequential ? 8 : 7;

  for (const m of rep.metrics) {
    m.rows.forEach((r, i) => {
      const colour = `swatch c${Math.max(0, rep.variants.indexOf(r.variant)) % PALETTE.length}`;
      const cells = [];
      if (i === 0) {
        cells.push(el("td", { rowspan: m.rows.length, class: "metric-name" },
          el("div", { class: "exp-name", text: displayName(m.name) }),
          el("div", { class: "exp-key" }, [m.description, m.type].filter(Boolean).join(" · "),
            m.guardrail ? el("span", { class: "badge guard", text: "guardrail" }) : null,
            m.inverse ? el("span", { class: "badge guard", text: "lower is better" }) : null,
            // its values are CUPED-adjusted means, not the raw means an analyst computes elsewhere
            m.cuped ? el("span", { class: "badge guard", "data-field": "cuped", text: "CUPED-adjusted",
              title: "values are means adjusted by the pre-exposure covariate (raw: unadjusted_value)" })
              : null,
            // a guardrail is left out of the correction's family: its p-value and interval are its own
            corrected && !m.corrected ? el("span", { class: "badge guard", "data-field": "uncorrected",
              text: "uncorrected", title: `not in the ${rep.correction} correction: its p-value and interval `
                + "are the test's own" }) : null)));
      }
      cells.push(el("td", { class: "variant" }, el("i", { class: colour }), displayName(r.variant),
        r.isControl && r.variant !== "control" ? el("span", { class: "muted", text: " (control)" }) : null));
      cells.push(el("td", { class: "num", "data-field": "users", text: r.users === null ? "–" : fmtInt(r.users) }));
      // the mean of no users is no number (the report says null): "–", not a click-through nobody had
      cells.push(el("td", { class: "num", "data-field": "value", title: r.users === 0 ? "no users" : null,
        text: fmtValue(r.value) }));
      if (r.isControl) {
        cells.push(el("td", { colspan: cols, class: "muted baseline", text: "baseline" }));
      } else if (r.error || !r.lift) {
        cells.push(errorCell(cols, r.error, r.errorMessage));
      } else {
        const v = verdict(r, m);
        cells.push(el("td", { class: `num lift ${r.significant ? v.cls : ""}`, "data-field": "lift", text: fmt(r.lift.estimate) }));
        const widened = r.lift.ciLow !== r.lift.unadjustedLow || r.lift.ciHigh !== r.lift.unadjustedHigh;
        cells.push(el("td", { class: "num ci-text", title: widened ? `unadjusted ${level}CI `
          + `[${fmt(r.lift.unadjustedLow)}, ${fmt(r.lift.unadjustedHigh)}]` : null },
          "[", el("span", { "data-field": "ci_low", text: fmt(r.lift.ciLow) }), ", ",
          el("span", { "data-field": "ci_high", text: fmt(r.lift.ciHigh) }), "]"));
        cells.push(el("td", { class: "ci-cell" }, ciBar(r.lift, scaleOf(m), r.significant, v.cls, fmt)));
        cells.push(el("td", { class: "num", "data-field": "p_value", text: fmtP(r.pValue) }));
        cells.push(el("td", { class: "num", "data-field": "adjusted_p_value", text: fmtP(r.pAdjusted) }));
        cells.push(el("td", { class: "num", "data-field": "chance_to_win", text: fmtChance(r.chanceToWin) }));
        if (rep.sequential) {
          cells.push(el("td", { class: "num", title: "half-width of the always-valid interval" }, "±",
            el("span", { "data-field": "boundary", text: fmtLift(r.lift.boundary, rep.differenceType).replace(/^\+/, "") })));
        }
        cells.push(el("td", {}, el("span", { class: `badge ${v.cls}`, "data-field": "significant",
          "data-significant": String(r.significant), text: v.text })));
      }
      tbody.append(el("tr", { "data-metric": m.name, "data-variant": r.variant, class: i === 0 ? "metric-first" : "" }, ...cells));
    });
  }
}

// ---------------------------------------------------------------- interleaving

const ARM_COLOURS = { A: PALETTE[0], B: PALETTE[1] };

function armChip(label, arm) {
  return el("span", { class: "arm", "data-arm": label },
    el("i", { class: `swatch c${label === "A" ? 0 : 1}` }), el("b", { text: `${label} ` }),
    el("span", { "data-field": "arm_key", text: displayName(arm.key) }), " · ",
    el("span", { "data-field": "arm_model", text: displayName(`${arm.model} v${arm.version}`) }));
}

/** Users preferring A to the left of the middle, tied users across it, users preferring B to the right. */
function divergingBar(il) {
  const w = 560, h = 34, mid = w / 2, pad = 4;
  const half = Math.max(il.winsA + il.ties / 2, il.winsB + il.ties / 2, 1);
  const k = (mid - pad) / half;
  const tieLo = mid - (il.ties / 2) * k, tieHi = mid + (il.ties / 2) * k;
  const node = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "diverging-bar", role: "img",
    "aria-label": `prefer A ${il.winsA}, tied ${il.ties}, prefer B ${il.winsB}` });
  const segment = (x, width, cls, fill, n) => svg("rect", { x, y: 4, width: Math.max(0, width), height: h - 8, rx: 2,
    class: cls, fill, "data-users": n });
  node.append(segment(tieLo - il.winsA * k, il.winsA * k, "wins-a", ARM_COLOURS.A, il.winsA));
  node.append(segment(tieLo, tieHi - tieLo, "ties", "#cbd5e1", il.ties));
  node.append(segment(tieHi, il.winsB * k, "wins-b", ARM_COLOURS.B, il.winsB));
  node.append(svg("line", { x1: mid, x2: mid, y1: 0, y2: h, class: "zero" }));
  return node;
}

function renderPreferenceCounts(il) {
  const stat = (label, field, value) => el("div", { class: "stat" },
    el("div", { class: "stat-value", "data-field": field, text: fmtInt(value) }), el("div", { class: "stat-label", text: label }));
  document.getElementById("preference-counts").replaceChildren(
    el("div", { class: "stats" },
      stat("users", "il_users", il.users),
      stat(`users with credited ${il.clickMetric}s`, "users_with_clicks", il.usersWithClicks)),
    el("div", { class: "diverging" },
      el("div", { class: "diverging-labels" },
        el("span", {}, "prefer A ", el("b", { "data-field": "wins_a", text: fmtInt(il.winsA) })),
        el("span", {}, "tied ", el("b", { "data-field": "ties", text: fmtInt(il.ties) })),
        el("span", {}, "prefer B ", el("b", { "data-field": "wins_b", text: fmtInt(il.winsB) }))),
      divergingBar(il)));
}

/** The two tests as rows: Δ (sign test) in %, the credit difference per user (t-test) in clicks. */
function renderPreferenceTests(il, alpha) {
  const table = document.getElementById("preference-tests");
  const level = alpha === null ? "" : `${+(100 * (1 - alpha)).toFixed(1)}% `;
  table.tHead.replaceChildren(el("tr", {}, ...["Test", "Estimate", `${level}CI`, "", "p-value", "Result"].map((h) => el("th", { text: h }))));
  const rows = [
    { key: "preference", name: "Preference Δ", note: "sign test over users who are not tied", test: il.preference,
      fmt: (x) => fmtPct(x) },
    { key: "credit", name: "Credit B − A per user", note: `t-test over all users, in ${il.clickMetric}s`, test: il.credit,
      fmt: (x) => (x > 0 ? `+${fmtValue(x)}` : fmtValue(x)) },
  ];
  const tbody = table.tBodies[0];
  tbody.replaceChildren(...rows.map((r) => {
    const t = r.test;
    const name = el("td", { class: "metric-name" }, el("div", { class: "exp-name", text: r.name }), el("div", { class: "exp-key", text: r.note }));
    if (t.error || t.estimate === null) {
      return el("tr", { "data-test": r.key }, name, errorCell(5, t.error, t.errorMessage));
    }
    const towards = t.estimate > 0 ? "B" : "A";
    const cls = t.significant ? (towards === "B" ? "win-b" : "win-a") : "neutral";
    const scale = Math.max(Math.abs(t.ciLow ?? 0), Math.abs(t.ciHigh ?? 0), Math.abs(t.estimate)) * 1.1 || 0.01;
    return el("tr", { "data-test": r.key }, name,
      el("td", { class: "num lift", "data-field": "estimate", text: r.fmt(t.estimate) }),
      el("td", { class: "num ci-text" }, "[", el("span", { "data-field": "ci_low", text: r.fmt(t.ciLow) }), ", ",
        el("span", { "data-field": "ci_high", text: r.fmt(t.ciHigh) }), "]"),
      el("td", { class: "ci-cell" }, ciBar(t, scale, t.significant, `arm-${towards.toLowerCase()}`, r.fmt)),
      el("td", { class: "num", "data-field": "p_value", text: fmtP(t.pValue) }),
      el("td", {}, el("span", { class: `badge ${cls}`, "data-field": "significant", "data-significant": String(t.significant),
        text: t.significant ? `users prefer ${towards}` : "no preference shown" })));
  }));
}

function renderInterleaving(rep) {
  const il = rep.interleaving;
  document.getElementById("arms").replaceChildren(armChip("A", il.armA), armChip("B", il.armB),
    el("span", { class: "badge", "data-field": "il_sequential", text: il.sequential ? "sequential (always-valid)" : "fixed horizon" }),
    // no preferred arm: nothing (replaceChildren writes a null as the text "null")
    ...(il.preferred ? [el("span", { class: `badge win-${il.preferred.toLowerCase()}`, "data-field": "preferred",
      text: `preferred: ${il.preferred}` })] : []));
  const banner = document.getElementById("arms-banner");
  banner.hidden = il.armSets.length < 2;
  banner.textContent = il.armSets.length < 2 ? ""
    : `⚠ The arms changed while the experiment ran (${il.armSets.length} pairs of models: `
      + il.armSets.map((s) => `${displayName(`${s.a.model} v${s.a.version} / ${s.b.model} v${s.b.version}`)}: `
        + `${fmtInt(s.exposures)} exposures`).join("; ")
      + "); the comparison mixes them.";
  renderPreferenceCounts(il);
  renderPreferenceTests(il, rep.alpha);
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

/** Time-axis labels (UTC): the first of these formats that tells the ticks apart. Days alone or hours and
 * minutes alone repeated a label (a day's span read "14:30 … 14:30", a demo's minute "11:06" five times). */
function timeLabels(times, span) {
  const iso = times.map((t) => new Date(t).toISOString());  // 2024-05-01T12:34:56.789Z
  const day = (d) => d.slice(5, 10), minute = (d) => d.slice(11, 16);
  const formats = span > 2 * 86400e3 ? [day, (d) => `${day(d)} ${minute(d)}`]
    : [minute, (d) => `${day(d)} ${minute(d)}`, (d) => d.slice(11, 19), (d) => d.slice(11, 23)];
  const format = formats.find((f) => new Set(iso.map(f)).size === iso.length) ?? formats[formats.length - 1];
  return iso.map(format);
}

/** A minimal line chart: series = [{label, colour, points: [{t, y, lo?, hi?}]}], y in % where `percent`; its
 * legend below it, one entry per series. */
function lineChart(series,
  { percent = false, zeroLine = false, empty = "no data yet", width = 560, height = 220 }) {
  const m = { l: 64, r: 16, t: 12, b: 24 };
  // An event stamped beyond what a Date holds (±8.64e15 ms: nanoseconds, say; any producer writes events)
  // puts points at no time: they cannot be placed, and their axis labels threw, failing the whole page.
  series = series.map((s) => ({ ...s, points: s.points.filter((p) => Number.isFinite(p.t.getTime())) }));
  const all = series.flatMap((s) => s.points);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "line-chart", role: "img" });
  if (all.length === 0) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis-label" }, empty));
    return root;
  }
  const ts = all.map((p) => p.t.getTime());
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  if (t0 === t1) { t0 -= 3.6e6; t1 += 3.6e6; }
  const times = [0, 1, 2, 3, 4].map((i) => t0 + ((t1 - t0) * i) / 4);
  const timeLabel = timeLabels(times, t1 - t0);
  m.r = Math.max(m.r, 3.5 * Math.max(...timeLabel.map((l) => l.length)));  // the last label is centred on the end
  const ys = all.flatMap((p) => [p.y, p.lo ?? p.y, p.hi ?? p.y]).filter(Number.isFinite);
  const ticks = niceTicks(Math.min(...ys, zeroLine ? 0 : Infinity), Math.max(...ys, zeroLine ? 0 : -Infinity));
  const y0 = ticks[0], y1 = ticks[ticks.length - 1];
  const X = (t) => m.l + ((t - t0) / (t1 - t0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);

  const grid = svg("g", { class: "grid-lines" });
  const step = ticks.length > 1 ? ticks[1] - ticks[0] : 1;
  for (const y of ticks) {
    grid.append(svg("line", { x1: m.l, x2: width - m.r, y1: Y(y), y2: Y(y) }));
    grid.append(svg("text", { x: m.l - 6, y: Y(y) + 4, "text-anchor": "end", class: "axis-label" },
      fmtTick(y, step, percent)));
  }
  timeLabel.forEach((label, i) => grid.append(
    svg("text", { x: X(times[i]), y: height - m.b + 16, "text-anchor": "middle", class: "axis-label" }, label)));
  root.append(grid);
  if (zeroLine && y0 < 0) root.append(svg("line", { x1: m.l, x2: width - m.r, y1: Y(0), y2: Y(0), class: "zero" }));

  for (const s of series) {
    const pts = s.points.filter((p) => Number.isFinite(p.y)).sort((a, b) => a.t - b.t);
    if (pts.length === 0) continue;  // a variant without users yet: no line (its legend entry shows it)
    const band = pts.filter((p) => Number.isFinite(p.lo) && Number.isFinite(p.hi));
    if (band.length > 1) {
      const upper = band.map((p) => `${X(p.t.getTime())},${Y(p.hi)}`);
      const lower = band.slice().reverse().map((p) => `${X(p.t.getTime())},${Y(p.lo)}`);
      root.append(svg("polygon", { points: upper.concat(lower).join(" "), fill: s.colour, "fill-opacity": 0.15 }));
    }
    root.append(svg("polyline", { points: pts.map((p) => `${X(p.t.getTime())},${Y(p.y)}`).join(" "),
      fill: "none", stroke: s.colour, "stroke-width": 2, "data-series": s.label }));
    for (const p of pts) root.append(svg("circle", { cx: X(p.t.getTime()), cy: Y(p.y), r: 2.5, fill: s.colour }));
  }
  // HTML, not SVG text: entries wrap onto more lines however many variants and however long their names (at
  // fixed offsets in the SVG the fifth fell outside the chart, and a long name ran under the next one).
  const legend = el("div", { class: "legend" }, ...series.map((s) => el("span", { class: "legend-item" },
    el("i", { class: `swatch c${PALETTE.indexOf(s.colour)}` }),
    el("span", { class: "legend-label", text: displayName(s.label) }))));
  const chart = document.createDocumentFragment();
  chart.append(root, legend);
  return chart;
}

function renderCharts(rep) {
  const select = document.getElementById("lift-metric");
  const interleaving = rep.kind === "interleaving";
  select.hidden = interleaving;
  document.getElementById("lift-caption").textContent = interleaving
    ? "Preference Δ over time (B − A, cumulative)" : "Cumulative lift over time";
  if (interleaving) {
    const il = rep.interleaving;
    document.getElementById("lift-chart").replaceChildren(lineChart(
      [{ label: "Δ (B − A)", colour: ARM_COLOURS.B, points: il.timeline.filter((p) => p.y !== null) }],
      { percent: true, zeroLine: true,
        empty: il.timeline.length ? "no credited clicks yet" : "no preference timeline in this report" }));
  }
  if (!rep.metrics.some((m) => m.name === state.liftMetric)) state.liftMetric = rep.metrics[0]?.name ?? null;
  select.replaceChildren(...rep.metrics.map((m) => el("option",
    { value: m.name, selected: m.name === state.liftMetric, text: displayName(m.name) })));

  const colour = (v) => colourOf(rep.variants, v);
  const treatments = rep.variants.filter((v) => v !== rep.control);
  const liftSeries = treatments.map((v) => ({
    label: `${v} vs ${rep.control}`,
    colour: colour(v),
    points: rep.timeline.filter((p) => p.metric === state.liftMetric && p.variant === v && p.y !== null),
  }));
  if (!interleaving) document.getElementById("lift-chart").replaceChildren(lineChart(liftSeries, {
    percent: rep.differenceType !== "absolute",
    zeroLine: true,
    // analytics' timeline_points: 0 leaves the timeline out of the report
    empty: rep.timeline.length ? "no data yet for this metric" : "no lift timeline in this report",
  }));

  const trafficSeries = rep.variants.map((v) => ({
    label: v,
    colour: colour(v),
    points: rep.traffic.filter((p) => p.variant === v),
  }));
  document.getElementById("traffic-chart").replaceChildren(lineChart(trafficSeries, { zeroLine: true }));
}

// ---------------------------------------------------------------- report panel

function renderReport() {
  const rep = state.report;
  const section = document.getElementById("report");
  if (!rep) { section.hidden = true; return; }
  section.hidden = false;
  section.dataset.experiment = rep.key;
  document.getElementById("report-title").textContent = displayName(rep.key);
  const mode = rep.sequential ? "sequential (always-valid)" : "fixed horizon";
  const family = rep.correction === "none" ? "" : ` over ${rep.correctionFamilySize ?? "–"} goal comparisons`;
  const interleaving = rep.kind === "interleaving";
  document.getElementById("report-meta").replaceChildren(
    el("span", { text: interleaving ? `interleaving (team draft) · α = ${rep.alpha ?? "–"}`
      : `control: ${displayName(rep.control)} · ${rep.differenceType} lift · α = ${rep.alpha ?? "–"}` }),
    el("span", { text: interleaving ? "" : ` · correction: ${rep.correction}${family} · ${mode}` }),  // interleaving: a badge by the arms
    ...(rep.window ? [el("span", { "data-field": "window", title: "users first exposed in this window, "
      + "their outcomes before its end", text: ` · ${fmtWindow(rep.window)}` })] : []),
    el("span", { class: "muted", text: rep.generatedAt ? ` · computed ${fmtTime(rep.generatedAt)}` : "" }));
  const variants = rep.variants;
  document.getElementById("report-badges").replaceChildren(statusBadge(rep.status),
    ...variants.map((v) => userChip(variants, v, rep.users[v])));
  const banner = document.getElementById("srm-banner");
  banner.hidden = !rep.srm.flagged;
  banner.textContent = rep.srm.flagged
    ? `⚠ Sample ratio mismatch (chi-square ${pEquals(rep.srm.pValue)}, threshold ${rep.srm.threshold ?? 0.001}): the traffic split differs from the configured weights, so the results below may be biased.`
    : "";
  document.getElementById("interleaving").hidden = !interleaving;
  document.getElementById("metrics").hidden = interleaving;
  if (interleaving) renderInterleaving(rep);
  else renderMetrics(rep);
  renderCharts(rep);
}

// ---------------------------------------------------------------- control flow

function showError(err) {
  const box = document.getElementById("error");
  const waiting = Boolean(err?.waiting);
  document.getElementById("status-dot").className = !err ? "dot up" : waiting ? "dot waiting" : "dot down";
  box.hidden = !err;
  box.className = waiting ? "banner warn" : "banner error";
  box.textContent = !err ? "" : waiting ? err.message : `Could not load data: ${err.message}`;
  if (waiting) document.getElementById("last-updated").textContent = "waiting for events";
}

async function refresh() {
  const run = ++state.started;
  try {
    const list = await getJSON("/experiments");
    if (run < state.listShown) return;
    state.listShown = run;
    state.experiments = (Array.isArray(list) ? list : list.experiments || []).map(normaliseSummary);
    const fromHash = hashKey();
    const keys = state.experiments.map((e) => e.key);
    state.selected = keys.includes(fromHash) ? fromHash : keys.includes(state.selected) ? state.selected : keys[0] ?? null;
    renderExperiments();
    const selected = state.selected;
    const report = selected
      ? normaliseReport(await getJSON(`/experiments/${encodeURIComponent(selected)}/report`)) : null;
    if (selected !== state.selected || run < state.reportShown) return;  // another is selected, or newer
    state.reportShown = run;
    state.report = report;
    renderReport();
    showError(null);
    document.getElementById("last-updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  } catch (err) {
    if (run >= state.listShown) showError(err);
  }
}

/** The experiment key in the URL's #/<key>. select() percent-encodes it; typed by hand, as the README shows, it
 * may hold a bare "%" (#/rollout-50%), on which decodeURIComponent throws: such a "%" stands for itself. */
function hashKey() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  try {
    return decodeURIComponent(raw.replace(/%(?![0-9A-Fa-f]{2})/g, "%25"));
  } catch {
    return raw;  // an escape that is not UTF-8 (#/%E0%A4): no key has that name, the list shows anyway
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
document.getElementById("auto-refresh").checked = REFRESH_PARAM !== "0";
document.getElementById("auto-refresh").addEventListener("change", schedule);
document.getElementById("refresh-now").addEventListener("click", refresh);
document.getElementById("lift-metric").addEventListener("change", (ev) => {
  state.liftMetric = ev.target.value;
  if (state.report) renderCharts(state.report);
});
window.addEventListener("hashchange", refresh);
refresh();
schedule();
