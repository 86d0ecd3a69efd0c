#!/usr/bin/env node
// End-to-end browser test of the web demo (npm test):
//
//   node web_demo/test/run.mjs BUNDLE_DIR [--screenshot PNG] [--json RESULT.json] [--timeout SECONDS]
//
// (or CDX_WEB_BUNDLE, CDX_WEB_SCREENSHOT, CDX_WEB_RESULT, CDX_WEB_TIMEOUT in the environment).
//
// 1. checks serve.mjs (isolation headers, MIME types, path escapes refused);
// 2. opens the page on BUNDLE_DIR in Debian's /usr/bin/chromium (playwright-core, never a downloaded browser), clicks
//    Generate and Check golden, and requires golden max-abs <= 1e-4 over every seed; then sets the page's seed and
//    class to the last golden seed's and clicks Generate again: every input the page fed (noise drawn in the browser
//    with cdx-normal-v1) must equal that seed's golden input bit for bit, and the image its golden output (<= 1e-4);
//    for a text student it types that seed's golden prompt instead of picking a class: the page's input_ids
//    (tokenizer.mjs) must equal the text encoder's golden input_ids for that prompt, the text_embedding the page's
//    text-encoder session made must match the golden one (<= 1e-4) and the image the golden image (<= 1e-4);
// 3. opens the page on a copy of the bundle with one byte of the model's .onnx changed and requires the page to refuse it;
// 4. saves a screenshot, writes a JSON result, exits 0 only when everything passed.

import { promises as fs } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { BundleError, checkRelpath, decodeTensor, pickModel } from '../bundle.mjs';
import { SeededRandom } from '../rng.mjs';
import { DEMO_ROOT, startServer } from '../serve.mjs';

const TOLERANCE = 1e-4;
const CHROMIUM = process.env.CDX_CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];

function parseArgs(argv) {
  const opts = {
    bundle: process.env.CDX_WEB_BUNDLE ?? null,
    screenshot: process.env.CDX_WEB_SCREENSHOT ?? null,
    json: process.env.CDX_WEB_RESULT ?? null,
    timeout: Number(process.env.CDX_WEB_TIMEOUT ?? 120),
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [key, inline] = arg.includes('=') ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    const value = () => inline ?? argv[++i];
    if (key === '--screenshot') opts.screenshot = value();
    else if (key === '--json') opts.json = value();
    else if (key === '--timeout') opts.timeout = Number(value());
    else if (key === '--bundle') opts.bundle = value();
    else if (key === '-h' || key === '--help') opts.help = true;
    else if (!arg.startsWith('-') && opts.bundle === null) opts.bundle = arg;
    else if (!arg.startsWith('-')) opts.bundle = arg;
    else throw new Error(`unknown option ${arg}`);
  }
  return opts;
}

/** A raw GET (no URL normalisation, unlike fetch) → {status, headers}. */
function rawGet(port, rawPath) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: rawPath, method: 'GET' }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function checkServer(port, modelFile, failures) {
  const expect = async (rawPath, status, type) => {
    const res = await rawGet(port, rawPath);
    if (res.status !== status) failures.push(`server: GET ${rawPath} gave ${res.status}, expected ${status}`);
    if (type && !String(res.headers['content-type'] ?? '').startsWith(type)) {
      failures.push(`server: GET ${rawPath} content-type ${res.headers['content-type']}, expected ${type}`);
    }
    if (res.headers['cross-origin-opener-policy'] !== 'same-origin' || res.headers['cross-origin-embedder-policy'] !== 'require-corp') {
      failures.push(`server: GET ${rawPath} lacks COOP/COEP headers`);
    }
  };
  await expect('/', 200, 'text/html');
  await expect('/app.mjs', 200, 'text/javascript');
  await expect('/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm', 200, 'application/wasm');
  await expect('/bundle/manifest.json', 200, 'application/json');
  await expect(`/bundle/${modelFile}`, 200, 'application/octet-stream');
  await expect('/bundle/../package.json', 403);
  await expect('/bundle/%2e%2e/%2e%2e/etc/passwd', 403);
  await expect('/../../etc/passwd', 403);
  await expect('/bundle/..%2fmanifest.json', 403);
  await expect('/bundle/no-such-file.bin', 404);
}

/** Node-side checks of the page's pure modules: the RNG's moments and determinism, manifest path refusals. */
function checkModules(failures) {
  const a = new SeededRandom(7).randn(200_000);
  let mean = 0;
  for (const v of a) mean += v;
  mean /= a.length;
  let variance = 0;
  for (const v of a) variance += (v - mean) ** 2;
  variance /= a.length;
  if (Math.abs(mean) > 0.01 || Math.abs(variance - 1) > 0.02) failures.push(`rng: mean ${mean}, variance ${variance}`);
  const b = new SeededRandom(7).randn(16);
  const c = new SeededRandom(8).randn(16);
  if (!b.every((v, i) => v === a[i])) failures.push('rng: same seed gave a different stream');
  if (b.every((v, i) => v === c[i])) failures.push('rng: different seeds gave the same stream');
  for (const bad of ['../x.onnx', '/etc/passwd', 'a/../../b', 'a\\b', 'http://x/y', '']) {
    try {
      checkRelpath(bad);
      failures.push(`checkRelpath accepted ${JSON.stringify(bad)}`);
    } catch (err) {
      if (!(err instanceof BundleError)) failures.push(`checkRelpath(${JSON.stringify(bad)}) threw ${err}`);
    }
  }
}

/** A file's bytes as an ArrayBuffer of its own (a Buffer may view a larger pooled one). */
async function readArrayBuffer(file) {
  const b = await fs.readFile(file);
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}

/** Bit pattern of a float32 (so -0 vs 0 and NaN payloads count as differences). */
function f32bits(v) {
  const f = new Float32Array([v]);
  return new Uint32Array(f.buffer)[0];
}

/**
 * Generate in the page with the last golden seed S (and its golden class label): the page's own feeds — noise from
 * rng.mjs in the browser — must equal the golden inputs of seed S exactly, and the image its golden output.
 */
async function checkSeedMatchesGolden(page, bundle, model, manifest, stepMs, failures) {
  const golden = model.golden;
  if (!golden?.inputs || !golden?.outputs) return { skipped: 'the model has no golden data' };
  if (manifest.rng?.name !== 'cdx-normal-v1') return { skipped: `manifest rng is ${manifest.rng?.name ?? 'missing'}` };
  const goldenInputs = {};
  for (const input of model.inputs) {
    goldenInputs[input.name] = decodeTensor(await readArrayBuffer(path.join(bundle, golden.inputs[input.name])),
      input.dtype, golden.inputs[input.name]);
  }
  const first = model.inputs[0];
  const perSample = first.shape.reduce((a, b) => a * b, 1);
  const count = goldenInputs[first.name].length / perSample;
  const index = count - 1;
  const seed = Array.isArray(golden.seeds) ? golden.seeds[index] : index;
  const slice = (all) => all.slice((all.length / count) * index, (all.length / count) * (index + 1));
  const classInput = model.inputs.find((i) => i.name === 'class_label');
  const classLabel = classInput ? Number(slice(goldenInputs[classInput.name])[0]) : null;
  const encoder = manifest.models.find((m) => m.role === 'text_encoder' && m.tokenizer && m.format === 'onnx' && m.precision === 'fp32');
  const textInput = encoder ? model.inputs.find((i) => i.name === 'text_embedding') : null;
  const prompt = textInput ? golden.prompts?.[index] : null;
  if (textInput && typeof prompt !== 'string') failures.push(`seed ${seed}: text student without golden.prompts[${index}]`);

  await page.fill('#seed', String(seed));
  if (classLabel !== null) await page.selectOption('#class-select', String(classLabel));
  if (typeof prompt === 'string') await page.fill('#prompt', prompt);
  await page.evaluate(() => { window.cdxGenerate = null; window.cdxLastRun = null; });
  await page.click('#generate');
  await waitFor(page, () => window.cdxGenerate || window.cdxState.error, stepMs);
  const run = await page.evaluate(() => {
    const r = window.cdxLastRun;
    if (!r) return null;
    const feeds = {};
    for (const [name, data] of Object.entries(r.feeds)) feeds[name] = Array.from(data, Number);
    return { seed: r.seed, feeds, prompt: r.prompt, inputIds: r.inputIds, tokens: r.tokens,
      output: { name: r.output.name, data: Array.from(r.output.data) } };
  });
  const out = { seed, classLabel, prompt, inputs: {}, outputMaxAbs: null, pass: false };
  if (!run) {
    failures.push(`seed ${seed}: Generate left no window.cdxLastRun (${await page.evaluate(() => window.cdxState.error)})`);
    return out;
  }
  if (run.seed !== seed) failures.push(`seed ${seed}: the page generated seed ${run.seed}`);
  let pass = true;
  if (typeof prompt === 'string') {
    // the encoder's golden input_ids for this prompt: what the student's own Hugging Face tokenizer produced
    const k = encoder.golden?.prompts?.indexOf(prompt) ?? -1;
    const idsFile = encoder.golden?.inputs?.[encoder.inputs[0].name];
    out.tokens = run.tokens;
    out.inputIds = run.inputIds;
    if (run.prompt !== prompt) failures.push(`seed ${seed}: the page generated prompt ${JSON.stringify(run.prompt)}, not ${JSON.stringify(prompt)}`);
    if (k < 0 || !idsFile) {
      failures.push(`seed ${seed}: prompt ${JSON.stringify(prompt)} is not among ${encoder.name}'s golden prompts`);
      pass = false;
    } else {
      const all = decodeTensor(await readArrayBuffer(path.join(bundle, idsFile)), encoder.inputs[0].dtype, idsFile);
      const per = all.length / encoder.golden.prompts.length;
      const want = Array.from(all.slice(k * per, (k + 1) * per), Number);
      out.inputIdsMatch = JSON.stringify(want) === JSON.stringify(run.inputIds);
      if (!out.inputIdsMatch) {
        pass = false;
        failures.push(`seed ${seed}: tokenizer.mjs gave input_ids ${JSON.stringify(run.inputIds)} for ${JSON.stringify(prompt)}, golden ${JSON.stringify(want)}`);
      }
    }
  }
  for (const input of model.inputs) {
    const want = Array.from(slice(goldenInputs[input.name]), Number);
    const got = run.feeds[input.name] ?? [];
    if (textInput && input.name === textInput.name) {  // computed in the page by the text encoder: a tolerance, not bits
      let worst = got.length === want.length ? 0 : NaN;
      for (let i = 0; i < want.length && !Number.isNaN(worst); i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
      out.inputs[input.name] = { values: want.length, maxAbs: worst, fromPrompt: true };
      if (!(worst <= TOLERANCE)) {
        pass = false;
        failures.push(`seed ${seed}: the page's ${input.name} from the typed prompt differs from the golden one by ${worst} (> ${TOLERANCE})`);
      }
      continue;
    }
    let differing = got.length === want.length ? 0 : Math.max(got.length, want.length);
    if (!differing) {
      for (let i = 0; i < want.length; i++) {
        const same = input.dtype === 'float32' ? f32bits(got[i]) === f32bits(want[i]) : got[i] === want[i];
        if (!same) differing++;
      }
    }
    out.inputs[input.name] = { values: want.length, differing };
    if (differing) {
      pass = false;
      failures.push(`seed ${seed}: the page's ${input.name} differs from the golden input in ${differing} of ${want.length} values`);
    }
  }
  const goldenOut = golden.outputs[run.output.name];
  if (goldenOut) {
    const spec = model.outputs.find((o) => o.name === run.output.name);
    const want = slice(decodeTensor(await readArrayBuffer(path.join(bundle, goldenOut)), spec.dtype, goldenOut));
    let worst = want.length === run.output.data.length ? 0 : NaN;
    for (let i = 0; i < want.length && !Number.isNaN(worst); i++) worst = Math.max(worst, Math.abs(want[i] - run.output.data[i]));
    out.outputMaxAbs = worst;
    if (!(worst <= TOLERANCE)) {
      pass = false;
      failures.push(`seed ${seed}: Generate's ${run.output.name} differs from the golden output by ${worst} (> ${TOLERANCE})`);
    }
  }
  out.pass = pass;
  return out;
}

/** A copy of the bundle with one byte of `modelFile` flipped. */
async function tamperedCopy(bundle, modelFile, dir) {
  await fs.cp(bundle, dir, { recursive: true });
  const file = path.join(dir, modelFile);
  const bytes = await fs.readFile(file);
  const at = Math.floor(bytes.length / 2);
  bytes[at] ^= 0x01;
  await fs.writeFile(file, bytes);
  return { file, offset: at };
}

async function waitFor(page, expression, timeoutMs) {
  await page.waitForFunction(expression, null, { timeout: timeoutMs, polling: 100 });
}

async function main() {
  const started = Date.now();
  const opts = parseArgs(process.argv.slice(2));
  if (opts.help || !opts.bundle) {
    console.error('usage: node web_demo/test/run.mjs BUNDLE_DIR [--screenshot PNG] [--json RESULT.json] [--timeout SECONDS]');
    return 2;
  }
  const bundle = path.resolve(opts.bundle);
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'cdx-web-test-'));
  const screenshot = path.resolve(opts.screenshot ?? path.join(tmp, 'web_demo.png'));
  const failures = [];
  const result = { ok: false, bundle, screenshot, failures };
  const servers = [];
  let context = null;
  const watchdog = setTimeout(() => {
    console.error(`web demo test: timed out after ${opts.timeout} s`);
    process.exit(1);
  }, opts.timeout * 1000);

  try {
    const manifest = JSON.parse(await fs.readFile(path.join(bundle, 'manifest.json'), 'utf8'));
    const expectedModel = pickModel(manifest, null);
    result.expectedModel = expectedModel.name;

    await fs.access(path.join(DEMO_ROOT, 'node_modules', 'onnxruntime-web', 'dist')).catch(() => {
      throw new Error('web_demo/node_modules is missing: run `bash web_demo/setup.sh` first');
    });
    const { chromium } = await import('playwright-core');

    checkModules(failures);
    const good = await startServer({ bundleDir: bundle });
    servers.push(good.server);
    await checkServer(good.port, expectedModel.file, failures);

    const tamperedDir = path.join(tmp, 'tampered');
    const tampered = await tamperedCopy(bundle, expectedModel.file, tamperedDir);
    const bad = await startServer({ bundleDir: tamperedDir });
    servers.push(bad.server);

    const profile = await fs.mkdtemp(path.join(tmp, 'profile-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1200, height: 900 },
    });
    result.chromium = context.browser()?.version() ?? null;

    // --- the real bundle ---
    const page = await context.newPage();
    const logs = [];
    page.on('console', (msg) => logs.push(`${msg.type()}: ${msg.text()}`));
    page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
    const stepMs = Math.max(10_000, opts.timeout * 1000 - (Date.now() - started) - 20_000);
    await page.goto(`${good.url}?bundle=/bundle/`);
    await waitFor(page, () => window.cdxState && (window.cdxState.ready || window.cdxState.error), stepMs);
    const st = await page.evaluate(() => ({ ...window.cdxState, isolated: self.crossOriginIsolated }));
    result.crossOriginIsolated = st.isolated;
    if (!st.ready) throw new Error(`page did not load the bundle: ${st.error}`);
    result.model = st.model;
    if (st.model !== expectedModel.name) failures.push(`page picked ${st.model}, expected ${expectedModel.name}`);

    await page.click('#generate');
    await waitFor(page, () => window.cdxGenerate || window.cdxState.error, stepMs);
    const gen = await page.evaluate(() => window.cdxGenerate ?? null);
    if (!gen) throw new Error(`Generate failed: ${await page.evaluate(() => window.cdxState.error)}`);
    result.generate = gen;
    result.latency = { loadMs: gen.loadMs, firstRunMs: gen.firstRunMs, warmMedianMs: gen.warmMedianMs, warmRunsMs: gen.warmRunsMs };

    await page.click('#check-golden');
    await waitFor(page, () => window.cdxGolden || window.cdxState.error, stepMs);
    const golden = await page.evaluate(() => window.cdxGolden ?? null);
    if (!golden) throw new Error(`Check golden failed: ${await page.evaluate(() => window.cdxState.error)}`);
    result.golden = golden;
    result.maxAbs = golden.maxAbs;
    result.count = golden.count;
    const seeds = expectedModel.golden?.seeds;
    if (Array.isArray(seeds) && golden.count !== seeds.length) failures.push(`golden count ${golden.count} != ${seeds.length} seeds`);
    if (!(golden.maxAbs <= TOLERANCE)) failures.push(`golden max-abs ${golden.maxAbs} > ${TOLERANCE}`);
    if (golden.textEncoder && !golden.textEncoder.pass) failures.push(`text encoder / tokenizer golden check failed: ${JSON.stringify(golden.textEncoder)}`);

    result.seedMatch = await checkSeedMatchesGolden(page, bundle, expectedModel, manifest, stepMs, failures);

    await fs.mkdir(path.dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    result.onnxruntimeWeb = await page.evaluate(() => document.getElementById('runtime-info').textContent);
    const pageErrors = logs.filter((l) => l.startsWith('pageerror') || l.startsWith('error'));
    if (pageErrors.length) failures.push(`page errors: ${pageErrors.join(' | ')}`);
    result.consoleTail = logs.slice(-20);

    // --- the tampered bundle ---
    const badPage = await context.newPage();
    await badPage.goto(`${bad.url}?bundle=/bundle/`);
    await waitFor(badPage, () => window.cdxState && (window.cdxState.ready || window.cdxState.error), stepMs);
    const badState = await badPage.evaluate(() => ({
      ...window.cdxState,
      shown: !document.getElementById('error').hidden ? document.getElementById('error').textContent : null,
      generateDisabled: document.getElementById('generate').disabled,
    }));
    result.tampered = { file: path.relative(tamperedDir, tampered.file), offset: tampered.offset, refused: false, error: badState.error };
    if (badState.ready) failures.push('tampered bundle was loaded instead of refused');
    else if (!/sha256 mismatch/.test(badState.error ?? '')) failures.push(`tampered bundle failed for another reason: ${badState.error}`);
    else if (!badState.shown || !badState.generateDisabled) failures.push('tampered bundle refused but the error is not visible / Generate is enabled');
    else result.tampered.refused = true;
    result.tamperedScreenshot = screenshot.replace(/\.png$/i, '') + '-tampered.png';
    await badPage.screenshot({ path: result.tamperedScreenshot });
  } catch (err) {
    failures.push(err.message ?? String(err));
  } finally {
    clearTimeout(watchdog);
    if (context) await context.close().catch(() => {});
    for (const server of servers) {
      server.closeAllConnections?.();
      server.close();
    }
    await fs.rm(path.join(tmp, 'tampered'), { recursive: true, force: true }).catch(() => {});
    for (const entry of await fs.readdir(tmp).catch(() => [])) {
      if (entry.startsWith('profile-')) await fs.rm(path.join(tmp, entry), { recursive: true, force: true }).catch(() => {});
    }
  }

  result.ok = failures.length === 0;
  result.elapsedS = (Date.now() - started) / 1000;
  const json = JSON.stringify(result, null, 2);
  if (opts.json) {
    await fs.mkdir(path.dirname(path.resolve(opts.json)), { recursive: true });
    await fs.writeFile(opts.json, json + '\n');
  }
  const lat = result.latency ?? {};
  const f = (x) => (typeof x === 'number' ? x.toFixed(1) : '—');
  console.log(`web demo: model ${result.model ?? '?'} · golden max-abs ${result.maxAbs ?? '—'} over ${result.count ?? '?'} seed(s)`
    + ` · load ${f(lat.loadMs)} ms · first run ${f(lat.firstRunMs)} ms · warm median ${f(lat.warmMedianMs)} ms`
    + ` · tampered refused: ${result.tampered?.refused ?? false} · ${result.elapsedS.toFixed(1)} s`);
  console.log(`screenshot: ${screenshot}`);
  for (const failure of failures) console.error(`FAIL: ${failure}`);
  console.log(result.ok ? '1 passed, 0 failed' : '0 passed, 1 failed');
  return result.ok ? 0 : 1;
}

if (process.argv[1] && pathToFileURL(path.resolve(process.argv[1])).href === import.meta.url) {
  main().then((code) => process.exit(code), (err) => {
    console.error(`web demo test: ${err.stack ?? err}`);
    process.exit(1);
  });
}
