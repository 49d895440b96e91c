// The picture a pruning run writes (<out_dir>/pruning.svg: widths per block, the "spindle", and predicted
// latency against the training loss) in a real browser: a tiny GPT is trained, its latency table written and the
// model pruned and fine-tuned with `build/loom`, then Debian's headless Chromium (driven by playwright-core)
// renders the file. Checked from the page: the SVG parses, its bars and both curves have a size, and the file
// rasterised into a canvas is not blank and shows the three bar colours (pixels counted).
//
// Usage: node tests/browser/pruning_picture_test.mjs BUILD_DIR SOURCE_DIR   (ctest labels browser, prune)
// Needs: scripts/setup.sh (chromium, the npm packages in BUILD_DIR/npm). Leaves BUILD_DIR/pruning_picture_test.png.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { replaceTimingsWithWorkCost } from "./cost_table.mjs";

const [buildDir, sourceDir] = process.argv.slice(2);
if (!buildDir || !sourceDir) {
  console.error("usage: node pruning_picture_test.mjs BUILD_DIR SOURCE_DIR");
  process.exit(2);
}
const { chromium } = createRequire(join(buildDir, "npm", "package.json"))("playwright-core");
const tmp = mkdtempSync(join(tmpdir(), "loom-pruning-picture-"));

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
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

// Runs build/loom with `args`; throws with its output unless it exits 0.
function loom(...args) {
  const r = spawnSync(join(buildDir, "loom"), args, { encoding: "utf8", env: { ...process.env, OMP_NUM_THREADS: "1" } });
  if (r.status !== 0) throw new Error(`loom ${args.join(" ")} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

// The bar colours of report.cc's first panel (the curves reuse the first two).
const colours = { heads_v: [0x4c, 0x72, 0xb0], heads_qk: [0xdd, 0x84, 0x52], mlp: [0x55, 0xa8, 0x68] };

let browser = null;
let failed = 0;
try {
  writeShard(join(tmp, "train_000.bin"), 1 << 15, 7);
  const data = `data: {train: "${tmp}/train_*.bin", batch_size: 4, seq_len: 16}`;
  writeFileSync(join(tmp, "base.yaml"), [
    "model: {kind: gpt, n_layer: 3, d_model: 32, n_head: 4, vocab_size: 64, max_seq_len: 16}", data,
    "optim: {lr: 0.003, warmup_steps: 0}",
    `train: {max_steps: 30, device: cpu, progress: false, log_every: 10, val_every: 0, checkpoint_every: 0, out_dir: "${tmp}/base"}`,
    "",
  ].join("\n"));
  loom("train", join(tmp, "base.yaml"));
  const checkpoint = join(tmp, "base", "ckpt_00000030");
  check(existsSync(join(checkpoint, "model.safetensors")), "the unpruned checkpoint exists");
  writeFileSync(join(tmp, "prune.yaml"), [
    `model: {kind: gpt, init_from: "${checkpoint}/model.safetensors"}`, data,
    "optim: {lr: 0.003, warmup_steps: 0}",
    `train: {max_steps: 40, device: cpu, progress: false, log_every: 10, val_every: 0, checkpoint_every: 0, out_dir: "${tmp}/pruned"}`,
    `prune: {latency_table: "${tmp}/table.json", latency_grid: {points_per_axis: 2, warmup: 1, repeats: 3},`,
    "        embedding_group: 8, heads_group: 1, qk_group: 4, v_group: 4, mlp_group: 32, eta: 0,",
    "        target_ratio: 0.6, begin_step: 2, every: 2, saliency_batches: 2, groups_per_step: 3}",
    "",
  ].join("\n"));
  loom("latency-table", join(tmp, "prune.yaml"), "--out", join(tmp, "table.json"));
  replaceTimingsWithWorkCost(join(tmp, "table.json"));  // the picture is under test, not the table
  const log = loom("train", join(tmp, "prune.yaml"));
  check(/pruning target reached/.test(log), `the run reached its target:\n${log}`);
  const svgPath = join(tmp, "pruned", "pruning.svg");
  check(existsSync(svgPath), `the run wrote ${svgPath}:\n${log}`);
  const svg = readFileSync(svgPath, "utf8");

  browser = await chromium.launchPersistentContext(join(tmp, "profile"), {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", e => pageErrors.push(String(e)));
  await page.setContent(`<html><body style="margin:0;background:white">${svg}</body></html>`);
  const shown = await page.evaluate(async ({ svg, colours }) => {
    const root = document.querySelector("svg");
    const sized = sel => [...root.querySelectorAll(sel)].filter(e => {
      const b = e.getBBox();
      return b.width > 0 && b.height > 0;
    }).length;
    const curves = [...root.querySelectorAll("polyline")].map(p => p.getTotalLength());
    // The file as an image (not the inline copy), rasterised into a canvas; pixels counted per colour.
    const url = URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" }));
    const img = new Image();
    img.src = url;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const counts = Object.fromEntries(Object.keys(colours).map(k => [k, 0]));
    let nonWhite = 0;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250) nonWhite++;
      for (const [k, [r, g, b]] of Object.entries(colours))
        if (px[i] === r && px[i + 1] === g && px[i + 2] === b) counts[k]++;
    }
    return { parsed: !!root && !document.querySelector("parsererror"), width: canvas.width, height: canvas.height,
             bars: sized("rect[fill]:not([fill='none']):not([fill='white'])"), curves, nonWhite, counts,
             text: root.textContent };
  }, { svg, colours });
  await page.screenshot({ path: join(buildDir, "pruning_picture_test.png"), fullPage: true });
  check(shown.parsed, "the SVG parses");
  check(shown.width >= 600 && shown.height >= 600, `the picture has a size (${shown.width}x${shown.height})`);
  // 3 blocks x 3 filled bars, plus the 3 legend swatches.
  check(shown.bars >= 12, `the filled bars and legend have a size (${shown.bars})`);
  check(shown.curves.length === 2 && shown.curves.every(l => l > 100), `two curves drawn (lengths ${shown.curves})`);
  const total = shown.width * shown.height;
  check(shown.nonWhite > 0.02 * total, `rendered pixels are not blank (${shown.nonWhite} of ${total} not white)`);
  for (const [k, n] of Object.entries(shown.counts)) check(n > 200, `the ${k} colour is drawn (${n} pixels)`);
  check(/Widths per block/.test(shown.text) && /Predicted latency/.test(shown.text), "both panels have titles");
  check(pageErrors.length === 0, `no page errors: ${pageErrors}`);
} catch (e) {
  failed = 1;
  console.error(String(e.stack || e));
} finally {
  if (browser) await browser.close();
  if (!failed) rmSync(tmp, { recursive: true, force: true });
}
console.log(`pruning_picture_test: ${1 - failed} passed, ${failed} failed`);
process.exit(failed);
