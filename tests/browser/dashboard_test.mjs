// The dashboard in a real browser: starts loom-controller, submits a small CPU training job through the CLI,
// opens the dashboard in Debian's headless Chromium (driven by playwright-core) and checks, from the page, that
// the job's MFU chart shows real data points; also checks the live /metrics text with promtool. Then stops the
// job and the controller.
//
// Usage: node tests/browser/dashboard_test.mjs BUILD_DIR SOURCE_DIR   (ctest label `browser`)
// Needs: scripts/setup.sh (chromium, prometheus's promtool, npm packages in BUILD_DIR/npm).
import { spawn, spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";

const [buildDir, sourceDir] = process.argv.slice(2);
if (!buildDir || !sourceDir) {
  console.error("usage: node dashboard_test.mjs BUILD_DIR SOURCE_DIR");
  process.exit(2);
}
const { chromium } = createRequire(join(buildDir, "npm", "package.json"))("playwright-core");
const tmp = mkdtempSync(join(tmpdir(), "loom-dashboard-"));
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

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

// llm.c token shard: 256 int32 header (magic, version, count), then uint16 tokens (here random, vocab 64).
function writeShard(path, count, seed) {
  const header = new Int32Array(256);
  header.set([20240520, 1, count]);
  const tokens = new Uint16Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    tokens[i] = state >>> 26;
  }
  writeFileSync(path, Buffer.concat([Buffer.from(header.buffer), Buffer.from(tokens.buffer)]));
}

const controllerBin = join(buildDir, "loom-controller");
const tokenFile = join(tmp, "admin_token");
writeFileSync(tokenFile, randomBytes(32).toString("hex") + "\n", { mode: 0o600 });
writeShard(join(tmp, "train_000.bin"), 1 << 16, 7);
const configFile = join(tmp, "job.yaml");
writeFileSync(configFile, [
  "model: {kind: gpt, n_layer: 2, d_model: 64, n_head: 4, vocab_size: 64, max_seq_len: 32}",
  `data: {train: "${tmp}/train_*.bin", batch_size: 4, seq_len: 32}`,
  `train: {max_steps: 100000, log_every: 1000, device: cpu, progress: false, out_dir: "${tmp}/out"}`,
  "",
].join("\n"));

const readyFile = join(tmp, "ready");
const controllerLog = [];
const controller = spawn(controllerBin, [
  "serve", "--address", "127.0.0.1:0", "--http-port", "0", "--jobs-dir", join(tmp, "jobs"),
  "--admin-token-file", tokenFile, "--ready-file", readyFile,
  "--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "5000",
], { stdio: ["ignore", "pipe", "pipe"] });
controller.stdout.on("data", d => controllerLog.push(d.toString()));
controller.stderr.on("data", d => controllerLog.push(d.toString()));
const controllerExit = new Promise(resolve => controller.on("exit", code => resolve(code)));

function cli(...args) {
  const r = spawnSync(controllerBin, [...args, "--address", address, "--token-file", tokenFile], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`loom-controller ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout.trim();
}

let address = "";
let browser = null;
let failed = 0;
try {
  await until("the controller to listen", 30000, () => existsSync(readyFile));
  const [grpcPort, httpPort] = readFileSync(readyFile, "utf8").trim().split(" ").map(Number);
  address = `127.0.0.1:${grpcPort}`;
  const http = `http://127.0.0.1:${httpPort}`;
  const jobId = cli("submit", configFile, "--np", "1", "--name", "browser-test");
  check(/^job-\d+$/.test(jobId), `submit printed a job id, got "${jobId}"`);
  await until("the job's first metrics", 90000, async () => {
    const job = await (await fetch(`${http}/api/jobs/${jobId}`)).json();
    return job.metrics && job.metrics.mfu.length >= 5;
  });

  browser = await chromium.launchPersistentContext(join(tmp, "profile"), {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", e => pageErrors.push(String(e)));
  await page.goto(`${http}/?job=${jobId}`);
  await page.waitForFunction(() => Number(document.querySelector("#chart-mfu").dataset.points) >= 5,
                             null, { timeout: 30000 });
  const shown = await page.evaluate(() => {
    const chart = window.loomCharts["chart-mfu"];
    return {
      steps: Array.from(chart.data[0]),
      mfu: Array.from(chart.data[1]),
      canvas: !!document.querySelector("#chart-mfu canvas"),
      summary: document.getElementById("job-summary").textContent,
      rankRows: document.querySelectorAll("#rank-bars .rank-row").length,
    };
  });
  await page.screenshot({ path: join(buildDir, "dashboard_test.png"), fullPage: true });
  check(shown.canvas, "the MFU chart has a canvas");
  check(shown.mfu.length >= 5, `the MFU chart has >= 5 points (${shown.mfu.length})`);
  check(shown.mfu.every(v => Number.isFinite(v) && v > 0 && v <= 100), `MFU values in (0, 100] %: ${shown.mfu}`);
  check(shown.steps.every((s, i) => i === 0 || s > shown.steps[i - 1]), "steps increase along the chart");
  // The points are the job's: the same steps and values as the controller's JSON.
  const job = await (await fetch(`${http}/api/jobs/${jobId}`)).json();
  const byStep = new Map(job.metrics.step.map((s, i) => [s, 100 * job.metrics.mfu[i]]));
  check(shown.steps.every((s, i) => Math.abs(byStep.get(s) - shown.mfu[i]) < 1e-9), "chart points match the job");
  check(/running/.test(shown.summary), `summary shows the running job: "${shown.summary}"`);
  check(shown.rankRows === 1, `one rank row in the step-time breakdown (${shown.rankRows})`);
  check(pageErrors.length === 0, `no page errors: ${pageErrors}`);

  // The Prometheus endpoint of a live job passes promtool's linter.
  const metricsText = await (await fetch(`${http}/metrics`)).text();
  check(metricsText.includes(`loom_job_mfu_ratio{job="${jobId}"}`), "/metrics has the job's MFU");
  const lint = spawnSync("promtool", ["check", "metrics"], { input: metricsText, encoding: "utf8" });
  check(lint.status === 0 && lint.stdout === "" && lint.stderr === "",
        `promtool check metrics: status ${lint.status} ${lint.stdout} ${lint.stderr}`);

  cli("stop", jobId);
  await until("the job to stop", 60000, async () => {
    const j = await (await fetch(`${http}/api/jobs/${jobId}`)).json();
    return j.state === "stopped";
  });
} catch (e) {
  failed = 1;
  console.error(String(e.stack || e));
  console.error("controller output:\n" + controllerLog.join(""));
} finally {
  if (browser) await browser.close();
  controller.kill("SIGTERM");
  const code = await Promise.race([controllerExit, sleep(10000).then(() => "timeout")]);
  if (code !== 0) {
    console.error(`controller exit: ${code}`);
    failed = 1;
  }
  if (!failed) rmSync(tmp, { recursive: true, force: true });
}
console.log(`dashboard_test: ${1 - failed} passed, ${failed} failed`);
process.exit(failed);
