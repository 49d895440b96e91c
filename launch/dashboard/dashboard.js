// The Loom dashboard: live charts of training runs, drawn with uPlot. One front end for three sources:
// - `loom dashboard RUN_DIR...` and the controller (`loom-controller serve`): polls /api/runs and
//   /api/runs/<id> (launch/dashboard_server.h) once a second; several runs are overlaid, one colour each;
// - `loom plot` (launch/plot_command.h): the runs come in window.loomStatic; the page draws once and sets
//   <html data-ready="1"> for the headless browser that takes the picture.
// Each chart's section carries data-points (the points drawn) and window.loomCharts holds the uPlot instances, so
// tests (tests/browser) can check what the page shows.
"use strict";

const palette = ["#1e88e5", "#e53935", "#43a047", "#8e24aa", "#fb8c00", "#00897b", "#6d4c41", "#3949ab"];
const phases = [  // a step's time split; "other" is what the parts leave of the step
  ["data_ms", "data", "#90caf9"], ["forward_ms", "forward", "#1e88e5"], ["backward_ms", "backward", "#3949ab"],
  ["grad_sync_ms", "grad sync", "#26a69a"], ["optimizer_ms", "optimizer", "#ffb300"], ["other_ms", "other", "#bdbdbd"],
];
const staticRuns = window.loomStatic ? window.loomStatic.runs : null;
const state = {
  mode: staticRuns ? "static" : null,
  runs: [],          // summaries, as /api/runs lists them
  selected: [],      // ids drawn
  docs: {},          // id -> /api/runs/<id>
  logScale: false,
  smoothing: 0,
  heartbeats: {},    // job id -> {time: [...], ranks: {rank: [...]}}: the page keeps their history
};
const charts = {};
window.loomCharts = charts;

// ---- numbers and axes ----

const compactFormats = {};
function formatNumber(v, digits = 3) {
  if (v == null || !Number.isFinite(v)) return "";
  if (v !== 0 && Math.abs(v) < 0.01) return v.toExponential(Math.max(0, digits - 3));
  compactFormats[digits] ??= new Intl.NumberFormat("en-US", { maximumSignificantDigits: digits, notation: "compact" });
  return compactFormats[digits].format(v);
}
// Tick labels with the fewest digits that still tell every tick apart (6e-4 for five ticks near 6e-4 would not).
function tickLabels(values) {
  for (let digits = 3; digits <= 8; ++digits) {
    const labels = values.map(v => formatNumber(v, digits));
    if (new Set(labels).size === new Set(values).size) return labels;
  }
  return values.map(v => String(v));
}

// Wide enough for its longest tick label (uPlot's own size is fixed).
function axisSize(u, values, axisIdx, cycleNum) {
  const axis = u.axes[axisIdx];
  if (cycleNum > 1) return axis._size;
  let size = axis.ticks.size + axis.gap;
  const longest = (values || []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), "");
  if (longest !== "") {
    u.ctx.font = axis.font[0];
    size += u.ctx.measureText(longest).width / devicePixelRatio;
  }
  return Math.ceil(size) + 4;
}

const stepIncrements = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6];
function xAxis(kind) {
  if (kind === "time") return { space: 110 };  // wall clock: wide enough that labels never overlap
  if (kind === "block") return { label: "block", incrs: [1], values: (u, vals) => vals.map(v => String(v)) };
  // Steps are integers: whole increments, labels without decimals.
  return { label: "step", space: 70, incrs: stepIncrements,
           values: (u, vals) => vals.map(v => (Number.isInteger(v) ? v.toLocaleString("en-US") : "")) };
}
function yAxis(integers) {
  return { size: axisSize, values: (u, vals) => tickLabels(vals), ...(integers ? { incrs: stepIncrements } : {}) };
}

// ---- series helpers ----

// TensorBoard's smoothing: an exponential moving average, debiased, over the finite values.
function smooth(values, weight) {
  if (!weight) return values;
  let last = 0, n = 0;
  return values.map(v => {
    if (v == null || !Number.isFinite(v)) return v;
    last = weight * last + (1 - weight) * v;
    n += 1;
    return last / (1 - Math.pow(weight, n));
  });
}
const scaled = (values, factor) => values.map(v => (v == null ? null : v * factor));
function positiveIfLog(values, log) { return log ? values.map(v => (v != null && v > 0 ? v : null)) : values; }
function runColor(id) { return palette[Math.max(0, state.selected.indexOf(id)) % palette.length]; }
function runName(doc) { return doc.name || doc.id; }
function isVit(doc) { return doc.kind === "vit"; }
function selectedDocs() { return state.selected.map(id => state.docs[id]).filter(Boolean); }

// The number of finite y values (what data-points reports).
function countPoints(data) {
  let n = 0;
  for (let s = 1; s < data.length; ++s) for (const v of data[s]) if (v != null && Number.isFinite(v)) n += 1;
  return n;
}

// ---- what each chart shows: {x: "step" | "time" | "block", tables: [[xs, ys...]...], series: [...]} ----

function perRun(column, { factor = 1, smoothIt = true, label = "" } = {}) {
  const docs = selectedDocs();
  return {
    tables: docs.map(d => {
      let ys = scaled(d.series[typeof column === "function" ? column(d) : column], factor);
      if (smoothIt) ys = smooth(ys, state.smoothing);
      return [d.series.step, positiveIfLog(ys, state.logScale)];
    }),
    series: docs.map(d => ({ label: `${runName(d)}${label}`, stroke: runColor(d.id), width: 1.5 })),
  };
}

const specs = {
  "chart-loss": () => {
    const docs = selectedDocs();
    const tables = [], series = [];
    for (const d of docs) {
      tables.push([d.series.step, positiveIfLog(smooth(d.series.loss, state.smoothing), state.logScale)]);
      series.push({ label: `${runName(d)} train`, stroke: runColor(d.id), width: 1.5 });
      if (d.val.step.length) {
        tables.push([d.val.step, positiveIfLog(d.val.loss, state.logScale)]);
        series.push({ label: `${runName(d)} val`, stroke: runColor(d.id), width: 1.5, dash: [6, 4], spanGaps: true,
                      points: { show: true, size: 5 } });
      }
    }
    return { x: "step", log: true, tables, series };
  },
  "chart-lr": () => ({ x: "step", log: true, ...perRun("lr", { smoothIt: false }) }),
  "chart-grad-norm": () => ({ x: "step", log: true, ...perRun("grad_norm") }),
  "chart-throughput": () => {
    const docs = selectedDocs();
    const title = docs.some(isVit) ? (docs.every(isVit) ? "images/s" : "tokens/s · images/s (ViT)") : "tokens/s";
    document.querySelector("#chart-throughput h2").textContent = `throughput (${title})`;
    return { x: "step", log: true, ...perRun(d => (isVit(d) ? "samples_per_s" : "tokens_per_s")) };
  },
  "chart-mfu": () => ({ x: "step", log: false, ...perRun("mfu", { factor: 100 }) }),
  "chart-memory": () => {
    const docs = selectedDocs(), gib = 1 / 1024 ** 3;
    const tables = [], series = [];
    for (const d of docs) {
      tables.push([d.series.step, scaled(d.series.device_bytes, gib)]);
      series.push({ label: `${runName(d)} device`, stroke: runColor(d.id), width: 1.5 });
      tables.push([d.series.step, scaled(d.series.host_rss_bytes, gib)]);
      series.push({ label: `${runName(d)} host`, stroke: runColor(d.id), width: 1, dash: [4, 3] });
    }
    return { x: "step", log: false, tables, series };
  },
  // The first selected run's step, stacked by phase (each band's legend value is its own time), and its
  // communication: all collectives, and the part the computation waited for.
  "chart-step-time": () => {
    const d = selectedDocs()[0];
    if (!d) return { x: "step", tables: [], series: [] };
    document.querySelector("#chart-step-time h2").textContent = `step time (ms): ${runName(d)}`;
    const s = d.series;
    const other = s.step_ms.map((total, i) => (total == null ? null : Math.max(0, total -
      phases.slice(0, 5).reduce((sum, [key]) => sum + (s[key][i] || 0), 0))));
    const raw = phases.map(([key]) => smooth(key === "other_ms" ? other : s[key], state.smoothing));
    const stacked = [];
    raw.forEach((ys, p) => stacked.push(ys.map((v, i) => (v == null ? null : v + (p ? stacked[p - 1][i] || 0 : 0)))));
    const series = phases.map(([, label, color], p) => ({
      label, stroke: color, fill: color + "b0", width: 1,
      value: (u, v, si, i) => (i == null || raw[p][i] == null ? "--" : raw[p][i].toFixed(2)),
    }));
    series.push({ label: "communication", stroke: "#d81b60", width: 1.5, dash: [5, 3] });
    series.push({ label: "exposed communication", stroke: "#6a1b9a", width: 1.5 });
    const bands = phases.slice(1).map((_, p) => ({ series: [p + 2, p + 1] }));
    return { x: "step", log: false, bands, tables: [[s.step, ...stacked,
      smooth(s.communication_ms, state.smoothing), smooth(s.exposed_communication_ms, state.smoothing)]], series };
  },
  // Restarts as a step function of time: the controller's restarts, or a run folder's resumes.
  "chart-restarts": () => {
    const tables = [], series = [];
    for (const d of selectedDocs()) {
      const times = [], counts = [];
      let n = 0;
      const start = d.series.time.find(t => t != null);
      if (d.job) {
        for (const e of d.job.events) {
          if (e.state === "restarting") n += 1;
          times.push(e.time);
          counts.push(n);
        }
      } else {
        if (start != null) { times.push(start); counts.push(0); }
        for (const e of d.events) if (e.event === "resumed" && e.time != null) { times.push(e.time); counts.push(++n); }
      }
      const end = d.series.time.length ? d.series.time[d.series.time.length - 1] : null;
      if (times.length && end != null && end > times[times.length - 1]) { times.push(end); counts.push(n); }
      tables.push([times, counts]);
      series.push({ label: runName(d), stroke: runColor(d.id), width: 2, paths: uPlot.paths.stepped({ align: 1 }) });
    }
    return { x: "time", log: false, integers: true, tables, series, range: (u, min, max) => [0, Math.max(1, max)],
             empty: "no restarts to show: no run has a timed history yet" };
  },
  "chart-heartbeat": () => {
    const d = selectedDocs().find(doc => doc.job);
    const history = d && state.heartbeats[d.id];
    if (!history) return { x: "time", tables: [], series: [], empty: "heartbeats come from jobs under the controller" };
    const ranks = Object.keys(history.ranks).sort((a, b) => a - b);
    return { x: "time", log: false, tables: [[history.time, ...ranks.map(r => history.ranks[r])]],
             series: ranks.map((r, i) => ({ label: `rank ${r}`, stroke: palette[i % palette.length], width: 1.5 })) };
  },
  "chart-prune-latency": () => {
    const docs = selectedDocs().filter(d => d.series.predicted_ms.some(v => v != null));
    return { x: "step", log: false, empty: "no pruning run selected",
             tables: docs.map(d => [d.series.step, d.series.predicted_ms]),
             series: docs.map(d => ({ label: runName(d), stroke: runColor(d.id), width: 1.5 })) };
  },
  // The first pruning run's widths per block: at its first pruning record (light, wide bars) and now.
  "chart-prune-widths": () => {
    const d = selectedDocs().find(doc => doc.widths);
    if (!d) return { x: "block", tables: [], series: [], empty: "no pruning run selected" };
    const { first, last } = d.widths;
    const blocks = last.mlp.map((_, i) => i);
    const attention = w => w.heads.map((h, i) => h * w.v_dim[i]);
    const bars = (size, color) => ({ paths: uPlot.paths.bars({ size: [size, 60] }), fill: color, stroke: color,
                                     points: { show: false } });
    return { x: "block", log: false, xRange: [-0.5, blocks.length - 0.5],
             tables: [[blocks, first.mlp, last.mlp, attention(first), attention(last)]],
             series: [{ label: `MLP, step ${first.step}`, ...bars(0.8, "#90caf9") },
                      { label: `MLP, step ${last.step}`, ...bars(0.45, "#1565c0") },
                      { label: `heads × v dim, step ${first.step}`, ...bars(0.3, "#ffcc80") },
                      { label: `heads × v dim, step ${last.step}`, ...bars(0.15, "#e65100") }] };
  },
};

// ---- drawing ----

function chartWidth(section) { return Math.max(280, section.clientWidth - 16); }
// A picture (`loom plot`) is two rows of charts filling the window; the live page has rows of fixed height.
function chartHeight() {
  return staticRuns ? Math.max(150, Math.floor((window.loomStatic.height - 50) / 2) - 46) : 230;
}

function draw(id) {
  const section = document.getElementById(id);
  const spec = specs[id]();
  const data = spec.tables.length ? uPlot.join(spec.tables) : [[]];
  const key = JSON.stringify([spec.series.map(s => s.label), spec.log && state.logScale, spec.x]);
  let u = charts[id];
  if (u && u.loomKey !== key) {
    u.destroy();
    u = null;
  }
  if (!u) {
    u = new uPlot({
      width: chartWidth(section), height: chartHeight(),
      scales: { x: { time: spec.x === "time", ...(spec.xRange ? { range: () => spec.xRange } : {}) },
                y: { distr: spec.log && state.logScale ? 3 : 1, ...(spec.range ? { range: spec.range } : {}) } },
      axes: [xAxis(spec.x), yAxis(spec.integers)],
      series: [{ label: spec.x }, ...spec.series.map(s => ({ spanGaps: true, ...s }))],
      bands: spec.bands || [],
      legend: { show: !staticRuns },  // a picture has one legend for all its charts
      cursor: { show: !staticRuns },
    }, data, section);
    u.loomKey = key;
    charts[id] = u;
  } else {
    u.setData(data);
  }
  const points = spec.tables.length ? countPoints(data) : 0;
  section.dataset.points = String(points);
  let empty = section.querySelector(".empty");
  if (points === 0) {
    if (!empty) section.appendChild(Object.assign(document.createElement("div"), { className: "empty" }));
    section.querySelector(".empty").textContent = spec.empty || "no data yet";
  } else if (empty) {
    empty.remove();
  }
}

function drawAll() {
  for (const section of document.querySelectorAll("section.chart")) if (specs[section.id]) draw(section.id);
}

new ResizeObserver(() => {
  for (const [id, u] of Object.entries(charts))
    u.setSize({ width: chartWidth(document.getElementById(id)), height: chartHeight() });
}).observe(document.querySelector("main"));

// ---- the controller's job: ranks, events, heartbeat history ----

function drawRanks(job) {
  const box = document.getElementById("rank-bars");
  if (!box) return;
  document.getElementById("ranks").hidden = !job;
  if (!job) return;
  const legend = document.getElementById("rank-legend");
  legend.replaceChildren(...phases.map(([, label, color]) =>
    Object.assign(document.createElement("span"), { textContent: label, style: `background:${color}` })));
  const parts = t => {
    const known = [t.data_ms, t.forward_ms, t.backward_ms, t.grad_sync_ms, t.optimizer_ms];
    return [...known, Math.max(0, t.total_ms - known.reduce((a, b) => a + b, 0))];
  };
  const longest = Math.max(1e-9, ...job.ranks.map(r => r.step_times.total_ms));
  box.replaceChildren(...job.ranks.map(r => {
    const t = r.step_times, ms = parts(t);
    const row = Object.assign(document.createElement("div"), { className: "rank-row" });
    row.dataset.rank = String(r.rank);
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.title = phases.map(([, label], i) => `${label} ${ms[i].toFixed(2)} ms`).join(", ") +
      `; communication ${t.communication_ms.toFixed(2)} ms (exposed ${t.exposed_communication_ms.toFixed(2)} ms)`;
    ms.forEach((v, i) => bar.appendChild(Object.assign(document.createElement("span"),
      { style: `width:${(100 * v) / longest}%;background:${phases[i][2]}` })));
    row.append(Object.assign(document.createElement("span"), { className: "label", textContent: `rank ${r.rank}` }),
               bar, Object.assign(document.createElement("span"), { textContent: `${t.total_ms.toFixed(1)} ms` }));
    return row;
  }));
}

function drawEvents(doc) {
  const list = document.getElementById("event-list");
  if (!list) return;
  const items = doc && doc.job
    ? doc.job.events.map(e => `${new Date(e.time * 1000).toLocaleTimeString()} [${e.state}] ${e.message}`)
    : selectedDocs().flatMap(d => d.events.map(e =>
      `${runName(d)}: step ${e.step} ${e.event}${e.checkpoint ? ` from ${e.checkpoint}` : ""}`));
  list.replaceChildren(...items.map(text => Object.assign(document.createElement("li"), { textContent: text })));
}

function recordHeartbeats(doc) {
  if (!doc.job) return;
  const h = state.heartbeats[doc.id] || (state.heartbeats[doc.id] = { time: [], ranks: {} });
  const n = h.time.length;
  h.time.push(Date.now() / 1000);
  for (const r of doc.job.ranks) {
    if (!h.ranks[r.rank]) h.ranks[r.rank] = new Array(n).fill(null);
    h.ranks[r.rank].push(r.seconds_since_heartbeat);
  }
  for (const values of Object.values(h.ranks)) if (values.length < h.time.length) values.push(null);
  if (h.time.length > 3600) {  // an hour at one poll a second
    h.time.shift();
    for (const values of Object.values(h.ranks)) values.shift();
  }
}

// ---- the run picker and the toggles ----

function drawPicker() {
  const picker = document.getElementById("run-picker");
  if (!picker) return;
  picker.replaceChildren(...state.runs.map(run => {
    const label = document.createElement("label");
    const box = Object.assign(document.createElement("input"),
                              { type: "checkbox", checked: state.selected.includes(run.id) });
    box.addEventListener("change", () => {
      state.selected = box.checked ? [...state.selected, run.id] : state.selected.filter(id => id !== run.id);
      refresh();
    });
    const swatch = Object.assign(document.createElement("span"), { className: "swatch" });
    swatch.style.background = state.selected.includes(run.id) ? runColor(run.id) : "transparent";
    label.append(box, swatch, document.createTextNode(` ${run.name}${run.state ? ` (${run.state})` : ""}`));
    return label;
  }));
}

function initialSelection(runs) {
  const params = new URLSearchParams(location.search);
  const wanted = [...params.getAll("run"), ...params.getAll("job")];
  const known = runs.map(r => r.id);
  const picked = wanted.filter(id => known.includes(id));
  if (picked.length) return picked;
  return state.mode === "controller" ? known.slice(-1) : known.slice(0, palette.length);
}

async function refresh() {
  const listing = await (await fetch("/api/runs")).json();
  const firstTime = state.mode === null;
  state.mode = listing.mode;
  state.runs = listing.runs;
  if (firstTime || !state.selected.length) state.selected = initialSelection(listing.runs);
  state.selected = state.selected.filter(id => listing.runs.some(r => r.id === id));
  await Promise.all(state.selected.map(async id => {
    const doc = await (await fetch(`/api/runs/${encodeURIComponent(id)}`)).json();
    if (doc.error) return;
    state.docs[id] = doc;
    recordHeartbeats(doc);
  }));
  drawPicker();
  const job = selectedDocs().find(d => d.job);
  document.getElementById("summary").textContent = job
    ? `${job.name}: ${job.job.state}${job.job.paused ? " (paused)" : ""} · step ${job.job.step} · ` +
      `${job.job.world_size} rank(s) · attempt ${job.job.attempt} · ` +
      `restarts ${job.job.restarts}/${job.job.max_restarts}`
    : `${state.selected.length} of ${state.runs.length} run(s)`;
  drawRanks(job && job.job);
  drawEvents(job);
  drawAll();
}

function wireToggles() {
  const log = document.getElementById("log-scale"), smoothing = document.getElementById("smoothing");
  if (log) log.addEventListener("change", () => { state.logScale = log.checked; drawAll(); });
  if (smoothing) smoothing.addEventListener("input", () => {
    state.smoothing = Number(smoothing.value);
    document.getElementById("smoothing-value").textContent = smoothing.value;
    drawAll();
  });
}

if (staticRuns) {
  for (const doc of staticRuns) state.docs[doc.id] = doc;
  state.selected = staticRuns.map(d => d.id);
  state.smoothing = window.loomStatic.smoothing || 0;
  const legend = document.getElementById("plot-legend");
  legend.replaceChildren(...staticRuns.map(d => {
    const item = Object.assign(document.createElement("span"), { className: "plot-run" });
    item.append(Object.assign(document.createElement("span"), { className: "swatch" }), runName(d));
    item.firstChild.style.background = runColor(d.id);
    return item;
  }), Object.assign(document.createElement("span"), { className: "plot-note",
    textContent: `validation dashed${state.smoothing ? ` · smoothing ${state.smoothing}` : ""}` }));
  drawAll();
  document.documentElement.dataset.ready = "1";
} else {
  wireToggles();
  (async function loop() {
    try { await refresh(); } catch (e) { console.error("dashboard refresh failed:", e); }
    setTimeout(loop, 1000);
  })();
}
