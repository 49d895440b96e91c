// The dashboard in a real browser (Debian's headless Chromium, driven by playwright-core), three ways:
// 1. `loom dashboard` over run folders written here by `loom train`: two GPT runs (one resumed: a restart) and a
//    pruning run. Every chart shows the runs' real data (the points equal their metrics.jsonl), the runs are
//    overlaid, the log-scale and smoothing toggles change what is drawn, step axes have whole-number ticks, time
//    labels do not overlap, charts fill their panels, a run that goes on is followed live, and a screenshot of
//    each chart's plot area has drawn (coloured) pixels, not only DOM nodes.
// 2. The controller's page for a running job: the same charts from its run folder, plus the ranks' heartbeat
//    ages, step-time bars and events; /metrics passes `promtool check metrics` and follows the conventions.
// 3. `loom plot` of the two GPT runs: a PNG whose four charts have drawn pixels.
//
// Usage: node tests/browser/dashboard_test.mjs BUILD_DIR SOURCE_DIR   (ctest label `browser`)
// Needs: scripts/setup.sh (chromium, prometheus's promtool, npm packages in BUILD_DIR/npm).
import { spawn, spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";

import { replaceTimingsWithWorkCost } from "./cost_table.mjs";

const [buildDir, sourceDir] = process.argv.slice(2);
if (!buildDir || !sourceDir) {
  console.error("usage: node dashboard_test.mjs BUILD_DIR SOURCE_DIR");
  process.exit(2);
}
const { chromium } = createRequire(join(buildDir, "npm", "package.json"))("playwright-core");
const tmp = mkdtempSync(join(tmpdir(), "loom-dashboard-"));
const loomBin = join(buildDir, "loom"), controllerBin = join(buildDir, "loom-controller");
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
const children = [];

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

async function until(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(200);
  }
}

function loom(...args) {
  const r = spawnSync(loomBin, args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`loom ${args.join(" ")} failed (${r.status}): ${r.stdout} ${r.stderr}`);
  return r.stdout;
}

function start(binary, args) {
  const log = [];
  const child = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.on("data", d => log.push(d.toString()));
  child.stderr.on("data", d => log.push(d.toString()));
  child.exited = new Promise(resolve => child.on("exit", code => resolve(code)));
  child.log = log;
  children.push(child);
  return child;
}

// llm.c token shard: 256 int32 header (magic, version, count), then uint16 tokens of a learnable sequence.
function writeShard(path, count) {
  const header = new Int32Array(256);
  header.set([20240520, 1, count]);
  const tokens = new Uint16Array(count);
  for (let i = 0; i < count; i++) tokens[i] = (i * 7 + Math.floor(i / 13)) % 64;
  writeFileSync(path, Buffer.concat([Buffer.from(header.buffer), Buffer.from(tokens.buffer)]));
}

// A tiny GPT run into tmp/<name>; `train` fields replace the defaults.
function gptConfig(name, train = {}) {
  const fields = { max_steps: 30, val_every: 10, val_batches: 2, log_every: 10, checkpoint_every: 10, device: "cpu",
                   progress: false, out_dir: `"${tmp}/${name}"`, ...train };
  const path = join(tmp, `${name}.yaml`);
  writeFileSync(path, [
    "model: {kind: gpt, n_layer: 2, d_model: 32, n_head: 2, vocab_size: 64, max_seq_len: 16}",
    `data: {train: "${tmp}/train_*.bin", val: "${tmp}/train_*.bin", batch_size: 4, seq_len: 16}`,
    `train: {${Object.entries(fields).map(([k, v]) => `${k}: ${v}`).join(", ")}}`, ""].join("\n"));
  return path;
}

// Step -> value of `key` in a run folder's metrics.jsonl.
function fileSeries(dir, key) {
  const out = new Map();
  for (const line of readFileSync(join(dir, "metrics.jsonl"), "utf8").split("\n")) {
    if (!line) continue;
    const r = JSON.parse(line);
    if (!r.event && r[key] !== undefined) out.set(r.step, r[key]);
  }
  return out;
}

// Coloured pixels (max - min channel > 40: series strokes, not white, grey grid lines or black text) of a PNG,
// counted in the page's own canvas.
async function colouredPixels(page, png, regions) {
  return page.evaluate(async ([b64, regions]) => {
    const img = new Image();
    img.src = "data:image/png;base64," + b64;
    await img.decode();
    const canvas = Object.assign(document.createElement("canvas"), { width: img.width, height: img.height });
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const counts = (regions || [[0, 0, img.width, img.height]]).map(([x, y, w, h]) => {
      const d = ctx.getImageData(x, y, w, h).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4)
        if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 40) n++;
      return n;
    });
    return { counts, width: img.width, height: img.height };
  }, [png.toString("base64"), regions]);
}

// What the page shows for each chart: points, series labels, data, axes, sizes.
async function chartsShown(page) {
  return page.evaluate(() => Object.fromEntries(Object.entries(window.loomCharts).map(([id, u]) => {
    const section = document.getElementById(id);
    return [id, {
      points: Number(section.dataset.points),
      labels: u.series.slice(1).map(s => s.label),
      data: u.data.map(a => Array.from(a)),
      distr: u.scales.y.distr,
      width: u.width, panel: section.clientWidth,
      xSplits: u.axes[0]._splits ? Array.from(u.axes[0]._splits) : [],
      xValues: u.axes[0]._values ? Array.from(u.axes[0]._values) : [],
      xPositions: u.axes[0]._splits ? Array.from(u.axes[0]._splits).map(v => u.valToPos(v, "x")) : [],
      xLabelWidths: u.axes[0]._values ? Array.from(u.axes[0]._values).map(t => {
        u.ctx.font = u.axes[0].font[0];
        return u.ctx.measureText(String(t)).width / devicePixelRatio;
      }) : [],
      empty: section.querySelector(".empty") ? section.querySelector(".empty").textContent : "",
    }];
  })));
}

// Every chart in `ids` has drawn pixels in its plot area (a screenshot of uPlot's overlay box, scrolled into view).
async function checkPixels(page, ids) {
  for (const id of ids) {
    const png = await page.locator(`#${id} .u-over`).screenshot();
    const { counts } = await colouredPixels(page, png);
    check(counts[0] > 30, `${id}: ${counts[0]} coloured pixels in its plot area`);
  }
}

const browserArgs = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync"];
let browser = null;
let failed = 0;
try {
  writeShard(join(tmp, "train_000000.bin"), 1 << 15);
  browser = await chromium.launchPersistentContext(join(tmp, "profile"), {
    executablePath: "/usr/bin/chromium", headless: true, args: browserArgs, viewport: { width: 1400, height: 900 } });
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", e => pageErrors.push(String(e)));

  // ---- 1. run folders ----
  const a = gptConfig("gpt_a", { checkpoint_every: 15 });
  loom("train", a);
  loom("train", a, "train.resume=latest", "train.max_steps=45");  // a restart: "resumed" at step 30
  const b = gptConfig("gpt_b");
  loom("train", b, "optim.lr=3e-3");
  // A pruning run: a trained model, its latency table, then pruning and fine-tuning.
  loom("train", gptConfig("base"), "train.max_steps=10");
  const prune = join(tmp, "prune.yaml");
  writeFileSync(prune, [
    `model: {kind: gpt, init_from: "${tmp}/base/ckpt_00000010/model.safetensors"}`,
    `data: {train: "${tmp}/train_*.bin", batch_size: 4, seq_len: 16}`,
    `train: {max_steps: 24, log_every: 10, device: cpu, progress: false, out_dir: "${tmp}/pruned"}`,
    `prune: {latency_table: "${tmp}/table.json", latency_grid: {points_per_axis: 2, warmup: 0, repeats: 1},`,
    "        embedding_group: 16, heads_group: 1, qk_group: 8, v_group: 8, mlp_group: 32, saliency_batches: 1,",
    "        eta: 0, target_ratio: 0.7, every: 2, begin_step: 2, groups_per_step: 3}", ""].join("\n"));
  loom("latency-table", prune, "--out", join(tmp, "table.json"));
  replaceTimingsWithWorkCost(join(tmp, "table.json"));
  loom("train", prune);

  const ready = join(tmp, "dashboard.ready");
  const dashboard = start(loomBin, ["dashboard", join(tmp, "gpt_a"), join(tmp, "gpt_b"), join(tmp, "pruned"),
                                    "--port", "0", "--ready-file", ready]);
  await until("the dashboard to listen", 30000, () => existsSync(ready));
  const url = `http://127.0.0.1:${readFileSync(ready, "utf8").trim()}`;
  await page.goto(url);
  const chartIds = ["chart-loss", "chart-lr", "chart-grad-norm", "chart-throughput", "chart-mfu", "chart-memory",
                    "chart-step-time", "chart-restarts", "chart-prune-latency", "chart-prune-widths"];
  await page.waitForFunction(ids => ids.every(id => Number(document.getElementById(id).dataset.points) > 0),
                             chartIds, { timeout: 30000 });
  let shown = await chartsShown(page);
  for (const id of chartIds) check(shown[id].points > 0 && shown[id].empty === "", `${id} shows data`);
  check(shown["chart-heartbeat"].points === 0 && /controller/.test(shown["chart-heartbeat"].empty),
        `the heartbeat chart says where heartbeats come from: "${shown["chart-heartbeat"].empty}"`);
  // Overlaid runs; the loss points are the files' (run a's train loss by step, its validation as well).
  const loss = shown["chart-loss"];
  check(["gpt_a train", "gpt_a val", "gpt_b train", "gpt_b val", "pruned train"].every(l => loss.labels.includes(l)),
        `the loss chart overlays the runs: ${loss.labels}`);
  for (const [label, key] of [["gpt_a train", "loss"], ["gpt_a val", "val_loss"]]) {
    const want = fileSeries(join(tmp, "gpt_a"), key), ys = loss.data[1 + loss.labels.indexOf(label)];
    let compared = 0;
    loss.data[0].forEach((step, i) => {
      if (ys[i] == null) return;
      check(Math.abs(ys[i] - want.get(step)) < 1e-9, `${label} at step ${step}: ${ys[i]} vs ${want.get(step)}`);
      compared += 1;
    });
    check(compared === want.size, `${label}: ${compared} points drawn of ${want.size} in metrics.jsonl`);
  }
  const mfu = shown["chart-mfu"], mfuA = fileSeries(join(tmp, "gpt_a"), "mfu");
  mfu.data[0].forEach((step, i) => {
    const y = mfu.data[1 + mfu.labels.indexOf("gpt_a")][i];
    if (y != null) check(Math.abs(y - 100 * mfuA.get(step)) < 1e-9, `MFU of gpt_a at step ${step}`);
  });
  check(shown["chart-restarts"].data.slice(1).some(ys => ys.includes(1)), "gpt_a's resume is a restart");
  check(shown["chart-step-time"].labels.join() ===
        "data,forward,backward,grad sync,optimizer,other,communication,exposed communication",
        `the step time is split by phase: ${shown["chart-step-time"].labels}`);
  check(shown["chart-prune-widths"].data[0].length === 2, "widths of both blocks of the pruned model");
  // Readable axes: whole-number steps, time labels apart, charts as wide as their panels.
  for (const id of ["chart-loss", "chart-lr", "chart-mfu"])
    check(shown[id].xSplits.every(Number.isInteger), `${id}: step ticks are whole numbers: ${shown[id].xSplits}`);
  const t = shown["chart-restarts"];
  for (let i = 1; i < t.xPositions.length; i++)
    check(t.xPositions[i] - t.xPositions[i - 1] > (t.xLabelWidths[i] + t.xLabelWidths[i - 1]) / 2,
          `time labels "${t.xValues[i - 1]}" and "${t.xValues[i]}" do not overlap`);
  for (const id of chartIds) check(Math.abs(shown[id].width - (shown[id].panel - 16)) <= 2, `${id} fills its panel`);
  await checkPixels(page, chartIds);
  await page.screenshot({ path: join(buildDir, "dashboard_test_runs.png"), fullPage: true });

  // The toggles: a log scale, and smoothing (the drawn loss is no longer the raw one).
  await page.check("#log-scale");
  await page.fill("#smoothing", "0.9");
  await page.dispatchEvent("#smoothing", "input");
  shown = await chartsShown(page);
  check(shown["chart-loss"].distr === 3 && shown["chart-mfu"].distr === 1, "log scale on the loss, not on MFU");
  const rawA = fileSeries(join(tmp, "gpt_a"), "loss"), smoothA = shown["chart-loss"].data[1];
  check(shown["chart-loss"].data[0].some((step, i) =>
    smoothA[i] != null && Math.abs(smoothA[i] - rawA.get(step)) > 1e-6),
        "smoothing changes the drawn loss");

  // Live: gpt_b goes on; the page follows its metrics.jsonl (rewound at the resume, then growing).
  const more = start(loomBin, ["train", b, "optim.lr=3e-3", "train.resume=latest", "train.max_steps=40"]);
  check(await more.exited === 0, `gpt_b went on: ${more.log.join("")}`);
  await page.waitForFunction(() => {
    const u = window.loomCharts["chart-lr"];
    const ys = u.data[1 + u.series.slice(1).findIndex(s => s.label === "gpt_b")];
    return u.data[0].some((step, i) => step === 40 && ys[i] != null);
  }, null, { timeout: 30000 });
  dashboard.kill("SIGTERM");
  check(await dashboard.exited === 0, "loom dashboard stops on SIGTERM");

  // ---- 3. loom plot ----
  const png = join(tmp, "curves.png");
  loom("plot", join(tmp, "gpt_a"), join(tmp, "gpt_b"), "--out", png, "--width", "1000", "--height", "600");
  const quadrants = [[0, 40, 500, 280], [500, 40, 500, 280], [0, 320, 500, 280], [500, 320, 500, 280]];
  const picture = await colouredPixels(page, readFileSync(png), quadrants);
  check(picture.width === 1000 && picture.height === 600,
        `the picture is 1000 x 600: ${picture.width} x ${picture.height}`);
  check(picture.counts.every(n => n > 200), `each of the picture's four charts has drawn pixels: ${picture.counts}`);

  // ---- 2. the controller ----
  const tokenFile = join(tmp, "admin_token");
  writeFileSync(tokenFile, randomBytes(32).toString("hex") + "\n", { mode: 0o600 });
  const controllerReady = join(tmp, "controller.ready");
  const controller = start(controllerBin, [
    "serve", "--address", "127.0.0.1:0", "--http-port", "0", "--jobs-dir", join(tmp, "jobs"),
    "--admin-token-file", tokenFile, "--ready-file", controllerReady,
    "--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "5000"]);
  await until("the controller to listen", 30000, () => existsSync(controllerReady));
  const [grpcPort, httpPort] = readFileSync(controllerReady, "utf8").trim().split(" ").map(Number);
  const cli = (...args) => {
    const r = spawnSync(controllerBin, [...args, "--address", `127.0.0.1:${grpcPort}`, "--token-file", tokenFile],
                        { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`loom-controller ${args.join(" ")} failed: ${r.stderr}`);
    return r.stdout.trim();
  };
  const http = `http://127.0.0.1:${httpPort}`;
  const jobConfig = gptConfig("job", { max_steps: 100000, val_every: 20, checkpoint_every: 1000 });
  const jobId = cli("submit", jobConfig, "--np", "1", "--name", "browser-test");
  check(/^job-\d+$/.test(jobId), `submit printed a job id, got "${jobId}"`);
  await page.goto(`${http}/?job=${jobId}`);
  // At least: points of the step charts, heartbeat samples, restart-chart points (the job's state changes).
  const jobMinimum = { "chart-loss": 3, "chart-lr": 3, "chart-mfu": 3, "chart-step-time": 3, "chart-heartbeat": 3,
                       "chart-restarts": 2 };
  const jobCharts = Object.keys(jobMinimum);
  await page.waitForFunction(min => Object.entries(min).every(([id, n]) =>
    Number(document.getElementById(id).dataset.points) >= n), jobMinimum, { timeout: 90000 });
  shown = await chartsShown(page);
  const page2 = await page.evaluate(() => ({
    summary: document.getElementById("summary").textContent,
    rankRows: document.querySelectorAll("#rank-bars .rank-row").length,
    rankParts: document.querySelectorAll("#rank-bars .rank-row .bar span").length,
    events: document.querySelectorAll("#event-list li").length,
  }));
  check(/running/.test(page2.summary), `summary shows the running job: "${page2.summary}"`);
  check(page2.rankRows === 1 && page2.rankParts === 6,
        `one rank row with six phases (${page2.rankRows}, ${page2.rankParts})`);
  check(page2.events >= 1, "the job's events are listed");
  check(shown["chart-heartbeat"].labels.join() === "rank 0",
        `one heartbeat series: ${shown["chart-heartbeat"].labels}`);
  const jobLoss = fileSeries(join(tmp, "job"), "loss"), drawn = shown["chart-loss"];
  drawn.data[0].forEach((step, i) => {
    if (drawn.data[1][i] != null && jobLoss.has(step))
      check(Math.abs(drawn.data[1][i] - jobLoss.get(step)) < 1e-9, `job loss at step ${step}`);
  });
  await checkPixels(page, jobCharts);
  await page.screenshot({ path: join(buildDir, "dashboard_test_job.png"), fullPage: true });

  // The Prometheus endpoint of a live job: promtool's linter, and the conventions of launch/prometheus_text.h.
  await until("a validation in /metrics", 60000, async () =>
    (await (await fetch(`${http}/metrics`)).text()).includes("loom_job_val_loss{"));
  const metricsText = await (await fetch(`${http}/metrics`)).text();
  const lint = spawnSync("promtool", ["check", "metrics"], { input: metricsText, encoding: "utf8" });
  check(lint.status === 0 && lint.stdout === "" && lint.stderr === "",
        `promtool check metrics: status ${lint.status} ${lint.stdout} ${lint.stderr}`);
  check(!/[{,]job="/.test(metricsText), "no `job` label");
  check(metricsText.includes(`loom_job_state{loom_job="${jobId}",state="running"} 1`) &&
        metricsText.includes(`loom_job_state{loom_job="${jobId}",state="pending"} 0`), "the state as gauges");
  check(metricsText.includes('loom_jobs{state="running"} 1') && metricsText.includes("loom_controller_up 1"),
        "jobs by state and the controller's up");
  check(/# TYPE loom_job_tokens_total counter/.test(metricsText) &&
        /# TYPE loom_job_steps_total counter/.test(metricsText),
        "counters of tokens and steps");
  check(!metricsText.includes('phase="total"'), "no phase=\"total\" beside the phases");
  for (const family of ["loom_job_learning_rate", "loom_job_grad_norm", "loom_job_communication_seconds",
                        "loom_rank_step_seconds", "loom_rank_heartbeat_age_seconds"])
    check(metricsText.includes(`${family}{loom_job="${jobId}"`), `/metrics has ${family}`);
  check(pageErrors.length === 0, `no page errors: ${pageErrors}`);

  cli("stop", jobId);
  await until("the job to stop", 60000, async () =>
    (await (await fetch(`${http}/api/jobs/${jobId}`)).json()).state === "stopped");
  controller.kill("SIGTERM");
  const code = await Promise.race([controller.exited, sleep(10000).then(() => "timeout")]);
  check(code === 0, `controller exit: ${code}`);
} catch (e) {
  failed = 1;
  console.error(String(e.stack || e));
  for (const child of children)
    console.error(`${child.spawnargs.slice(0, 2).join(" ")} output:\n${child.log.join("")}`);
} finally {
  if (browser) await browser.close();
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  if (!failed) rmSync(tmp, { recursive: true, force: true });
}
console.log(`dashboard_test: ${1 - failed} passed, ${failed} failed`);
process.exit(failed);
