// The Loom dashboard: polls the controller's JSON API once a second and draws the selected job's charts with
// uPlot. Each chart's section carries data-points (the number of points drawn) and window.loomCharts holds the
// uPlot instances, so tests (tests/browser) can check what the page shows.
"use strict";

const charts = {};
window.loomCharts = charts;
let selectedJob = new URLSearchParams(location.search).get("job");

function chart(id, label, color, xLabel, yScale = {}) {
  const section = document.getElementById(id);
  const opts = {
    width: 440, height: 200,
    scales: { x: { time: xLabel === "time" }, y: yScale },
    axes: [{ label: xLabel }, { size: 70 }],  // room for labels such as "120,000" (tokens/s)
    series: [{ label: xLabel }, { label, stroke: color, width: 1.5 }],
  };
  charts[id] = new uPlot(opts, [[], []], section);
  return charts[id];
}

function setData(id, xs, ys) {
  charts[id].setData([xs, ys]);
  document.getElementById(id).dataset.points = String(xs.length);
}

function restartSeries(events) {
  // The restart count over time: one point per state change, counting the transitions into "restarting".
  const times = [], counts = [];
  let restarts = 0;
  for (const e of events) {
    if (e.state === "restarting") restarts += 1;
    times.push(e.time);
    counts.push(restarts);
  }
  return [times, counts];
}

function drawRanks(ranks) {
  const box = document.getElementById("rank-bars");
  box.replaceChildren();
  const longest = Math.max(1e-9, ...ranks.map(r => r.step_times.total_ms));
  for (const r of ranks) {
    const t = r.step_times;
    const row = document.createElement("div");
    row.className = "rank-row";
    row.dataset.rank = String(r.rank);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `rank ${r.rank}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.title = `data ${t.data_ms.toFixed(2)} ms, forward+backward ${t.forward_backward_ms.toFixed(2)} ms, ` +
      `optimizer ${t.optimizer_ms.toFixed(2)} ms, communication ${t.communication_ms.toFixed(2)} ms ` +
      `(exposed ${t.exposed_communication_ms.toFixed(2)} ms), step ${t.total_ms.toFixed(2)} ms`;
    for (const [cls, ms] of [["data", t.data_ms], ["fb", t.forward_backward_ms], ["opt", t.optimizer_ms]]) {
      const part = document.createElement("span");
      part.className = cls;
      part.style.width = `${(100 * ms) / longest}%`;
      bar.appendChild(part);
    }
    const total = document.createElement("span");
    total.textContent = `${t.total_ms.toFixed(1)} ms`;
    row.append(label, bar, total);
    box.appendChild(row);
  }
}

async function refresh() {
  const jobs = await (await fetch("/api/jobs")).json();
  const select = document.getElementById("job-select");
  if (select.options.length !== jobs.length) {
    select.replaceChildren(...jobs.map(j => new Option(`${j.name} (${j.id})`, j.id)));
  }
  if (!selectedJob && jobs.length) selectedJob = jobs[jobs.length - 1].id;
  if (!selectedJob) return;
  select.value = selectedJob;
  const job = await (await fetch(`/api/jobs/${encodeURIComponent(selectedJob)}`)).json();
  if (job.error) return;
  const m = job.metrics;
  document.getElementById("job-summary").textContent =
    `${job.state}${job.paused ? " (paused)" : ""} · step ${job.step} · ${job.world_size} rank(s) · ` +
    `attempt ${job.attempt} · restarts ${job.restarts}/${job.max_restarts}`;
  setData("chart-loss", m.step, m.loss);
  setData("chart-tokens", m.step, m.tokens_per_s);
  setData("chart-mfu", m.step, m.mfu.map(v => 100 * v));
  const [times, counts] = restartSeries(job.events);
  setData("chart-restarts", times, counts);
  drawRanks(job.ranks);
  document.getElementById("event-list").replaceChildren(...job.events.map(e => {
    const li = document.createElement("li");
    li.textContent = `${new Date(e.time * 1000).toLocaleTimeString()} [${e.state}] ${e.message}`;
    return li;
  }));
}

chart("chart-loss", "loss", "#e53935", "step");
chart("chart-tokens", "tokens/s", "#43a047", "step");
chart("chart-mfu", "MFU %", "#1e88e5", "step");
// Restart counts are small integers: the axis starts at 0 and spans at least 0..1.
chart("chart-restarts", "restarts", "#8e24aa", "time", { range: (u, min, max) => [0, Math.max(1, max)] });
document.getElementById("job-select").addEventListener("change", e => { selectedJob = e.target.value; refresh(); });

async function loop() {
  try { await refresh(); } catch (e) { console.error("dashboard refresh failed:", e); }
  setTimeout(loop, 1000);
}
loop();
