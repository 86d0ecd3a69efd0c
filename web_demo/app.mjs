// The web demo page: load a cdx ONNX bundle (?bundle=URL, optional ?model=NAME, ?threads=N, ?runs=N), verify every
// file it uses against manifest files[] (sha256), run the one-step generator with onnxruntime-web (WASM EP),
// and check it against the bundle's golden data.
//
// Globals for automation (web_demo/test/run.mjs reads them):
//   window.cdxState    = {ready, error, model}
//   window.cdxGenerate = {model, seed, classIndex, guidance, loadMs, firstRunMs, warmMedianMs, warmRunsMs}
//   window.cdxGolden   = {maxAbs, count, model, perSeed, seeds, tolerance, pass}
//   window.cdxLastRun  = {seed, prompt, inputIds, tokens, feeds: {inputName: TypedArray}, output: {name, dims, data}}
//                        (the last Generate)
//
// Generate's noise is cdx-normal-v1 (rng.mjs) with stream = the input's index in the manifest's input list — the
// rule `cdx convert` uses for the golden inputs — so seed S here is exactly Python's seed S.
// A text student's `text_embedding` comes from a typed prompt: tokenizer.mjs (the text_encoder model's manifest
// `tokenizer` section + vocab.json/merges.txt) → input_ids → the text_encoder graph (a second onnxruntime-web
// session) → the generator. Without a text_encoder in the bundle it is seeded N(0, 1) noise (the page says so).

import * as ort from './node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
import {
  BundleError, bundleUrl, decodeTensor, fetchVerified, loadManifest, maxAbsDiff, median, pickModel,
  runnableGenerators, shapeSize,
} from './bundle.mjs';
import { NAME as RNG_NAME, SeededRandom } from './rng.mjs';
import { ClipTokenizer } from './tokenizer.mjs';

const GOLDEN_TOLERANCE = 1e-4;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = { ready: false, error: null, model: null };
window.cdxState = state;

let session = null;
let manifest = null;
let model = null;
let roles = [];           // one per model input: {input, role: noise|class|guidance|text|random|zeros, stream}
let goldenData = null;    // {inputs: {name: TypedArray}, outputs: {name: Float32Array}, count, seeds}
let textPath = null;      // {model, session, tokenizer, outputName, golden, vectors, loadMs}: prompt → text_embedding
let loadMs = null;
let firstRunMs = null;    // the session's very first run (whatever triggered it)
let busy = false;

function showError(err) {
  const message = err instanceof BundleError ? err.message : `${err?.name ?? 'Error'}: ${err?.message ?? err}`;
  state.error = message;
  const box = $('error');
  box.textContent = `Refused / failed: ${message}`;
  box.hidden = false;
  setStatus('Stopped.');
  console.error(err);
}

function setStatus(text) {
  $('status').textContent = text;
}

function setBusy(value) {
  busy = value;
  $('generate').disabled = value || !state.ready;
  $('check-golden').disabled = value || !state.ready || !goldenData;
}

function fmtMs(ms) {
  return ms == null ? '—' : `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;
}

function fmtBytes(n) {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

function addInfo(term, value) {
  const dt = document.createElement('dt');
  dt.textContent = term;
  const dd = document.createElement('dd');
  dd.textContent = value;
  $('bundle-info').append(dt, dd);
}

/** Decides how each model input is filled in "Generate", from the manifest only. Random inputs use cdx-normal-v1
 * with stream = the input's index in the manifest's input list (the manifest's `rng.streams` rule). */
function assignRoles(m, conditioning) {
  return m.inputs.map((input, stream) => {
    const name = input.name;
    if (input.dtype === 'int64') {
      if (conditioning.type === 'class_label' || name.includes('class')) return { input, role: 'class' };
      return { input, role: 'zeros' };
    }
    if (input.dtype !== 'float32') throw new BundleError(`input ${name} has dtype ${input.dtype}: this page feeds float32 and int64`);
    if (name.includes('guidance')) return { input, role: 'guidance' };
    if (conditioning.type === 'text_embedding' && (name.includes('text') || name.includes('embed') || name.includes('encoder'))) {
      return { input, role: textPath && name === textPath.textInput.name ? 'prompt' : 'text', stream };
    }
    return { input, role: name === 'noise' ? 'noise' : 'random', stream };
  });
}

function setupControls(conditioning) {
  const classRole = roles.find((r) => r.role === 'class');
  if (classRole) {
    const n = conditioning.num_classes ?? ((classRole.input.range?.[1] ?? 0) + 1);
    const names = conditioning.class_names ?? [];
    const select = $('class-select');
    for (let i = 0; i < n; i++) {
      const opt = document.createElement('option');
      opt.value = String(i);
      opt.textContent = names[i] ? `${i}: ${names[i]}` : `class ${i}`;
      select.append(opt);
    }
    const wanted = Number(params.get('class') ?? 0);
    select.value = String(Number.isInteger(wanted) && wanted >= 0 && wanted < n ? wanted : 0);
    $('class-row').hidden = false;
  }
  if (roles.some((r) => r.role === 'guidance')) {
    const guidance = conditioning.guidance ?? {};
    const def = typeof guidance.default === 'number' ? guidance.default : 1;
    const [lo, hi] = Array.isArray(guidance.range) ? guidance.range : [Math.min(1, def), Math.max(15, def)];
    const slider = $('guidance');
    slider.min = String(lo);
    slider.max = String(hi);
    slider.step = '0.5';
    slider.value = String(def);
    const show = () => { $('guidance-value').textContent = Number(slider.value).toFixed(1); };
    slider.addEventListener('input', show);
    show();
    $('guidance-row').hidden = false;
  }
  if (roles.some((r) => r.role === 'prompt')) {
    const examples = model.golden?.prompts ?? conditioning.prompts?.texts ?? [];
    const input = $('prompt');
    input.value = params.get('prompt') ?? examples[0] ?? '';
    const list = $('prompt-examples');
    for (const text of conditioning.prompts?.texts ?? examples) {
      const opt = document.createElement('option');
      opt.value = text;
      list.append(opt);
    }
    $('prompt-row').hidden = false;
    const note = $('text-note');
    note.textContent = `Prompt → CLIP BPE in JavaScript (vocab ${textPath.tokenizer.vocab.size} tokens, max length `
      + `${textPath.tokenizer.section.max_length}) → ${textPath.model.name} (onnxruntime-web) → text_embedding → generator.`;
    note.hidden = false;
  }
  if (roles.some((r) => r.role === 'text')) {
    const note = $('text-note');
    note.textContent = 'Text conditioning: no text encoder runs in the browser. The text embedding is a seeded random '
      + 'N(0, 1) tensor of the manifest\'s shape (same seed → same embedding), not a prompt.';
    note.hidden = false;
  }
  const seed = params.get('seed');
  if (seed !== null && /^\d+$/.test(seed)) $('seed').value = seed;
}

function makeTensor(input, data) {
  return new ort.Tensor(input.dtype, data, input.shape);
}

/** input_ids of `prompt` (tokenizer.mjs) through the text encoder session: {inputIds, tokens, embedding, ms}. */
async function encodePrompt(prompt) {
  const { model: enc, session: encSession, tokenizer, outputName } = textPath;
  const ids = tokenizer.encode(prompt);
  const input = enc.inputs[0];
  const data = input.dtype === 'int64' ? BigInt64Array.from(ids, (v) => BigInt(v)) : Int32Array.from(ids);
  const t0 = performance.now();
  const out = await encSession.run({ [input.name]: new ort.Tensor(input.dtype, data, input.shape) });
  const ms = performance.now() - t0;
  return { inputIds: ids, tokens: tokenizer.tokenize(prompt), embedding: out[outputName].data, ms };
}

/** Feeds for "Generate" from the UI controls, the seeded JS RNG and (text students) the typed prompt. */
async function generateFeeds(seed) {
  const feeds = {};
  let prompt = null;
  for (const { input, role, stream } of roles) {
    const size = shapeSize(input.shape, `input ${input.name}`);
    let data;
    switch (role) {
      case 'class':
        data = new BigInt64Array(size).fill(BigInt(Number($('class-select').value)));
        break;
      case 'zeros':
        data = new BigInt64Array(size);
        break;
      case 'guidance':
        data = new Float32Array(size).fill(Number($('guidance').value));
        break;
      case 'prompt':
        prompt = { text: $('prompt').value, ...(await encodePrompt($('prompt').value)) };
        if (prompt.embedding.length !== size) throw new BundleError(`${textPath.model.name} gave ${prompt.embedding.length} values, ${input.name} needs ${size}`);
        data = prompt.embedding;
        break;
      default:
        data = new SeededRandom(seed, stream).randn(size);
    }
    feeds[input.name] = makeTensor(input, data);
  }
  return { feeds, prompt };
}

async function timedRun(feeds) {
  const t0 = performance.now();
  const results = await session.run(feeds);
  const ms = performance.now() - t0;
  if (firstRunMs === null) firstRunMs = ms;
  return { results, ms };
}

/** Draws an NCHW [1, C, H, W] image in [0, 1] (C = 1 grey, 3 RGB, 4 RGBA) onto `canvas`, scaled up by `scale`. */
function drawImage(canvas, data, dims, batchIndex = 0, displaySize = 256) {
  const [, c, h, w] = dims.length === 4 ? dims : [1, ...dims];
  const plane = h * w;
  const base = batchIndex * c * plane;
  const off = new OffscreenCanvas(w, h);
  const ctx = off.getContext('2d');
  const img = ctx.createImageData(w, h);
  const to8 = (v) => Math.max(0, Math.min(255, Math.round(v * 255)));
  for (let i = 0; i < plane; i++) {
    const r = to8(data[base + i]);
    const g = c >= 3 ? to8(data[base + plane + i]) : r;
    const b = c >= 3 ? to8(data[base + 2 * plane + i]) : r;
    img.data[4 * i] = r;
    img.data[4 * i + 1] = g;
    img.data[4 * i + 2] = b;
    img.data[4 * i + 3] = c >= 4 ? to8(data[base + 3 * plane + i]) : 255;
  }
  ctx.putImageData(img, 0, 0);
  const scale = Math.max(1, Math.floor(displaySize / Math.max(h, w)));
  canvas.width = w * scale;
  canvas.height = h * scale;
  const out = canvas.getContext('2d');
  out.imageSmoothingEnabled = false;
  out.drawImage(off, 0, 0, canvas.width, canvas.height);
}

function imageOutputName() {
  return (model.outputs.find((o) => o.name === 'image') ?? model.outputs[0]).name;
}

async function onGenerate() {
  if (busy || !state.ready) return;
  setBusy(true);
  try {
    const seed = Number($('seed').value) >>> 0;
    const warm = Math.max(1, Math.min(50, Number(params.get('runs') ?? 5) || 5));
    setStatus(`Generating (seed ${seed}, 1 + ${warm} runs)…`);
    const { feeds, prompt } = await generateFeeds(seed);
    const first = await timedRun(feeds);
    const warmRunsMs = [];
    for (let i = 0; i < warm; i++) warmRunsMs.push((await timedRun(feeds)).ms);
    const out = first.results[imageOutputName()];
    window.cdxLastRun = {
      seed,
      prompt: prompt?.text ?? null,
      inputIds: prompt?.inputIds ?? null,
      tokens: prompt?.tokens ?? null,
      feeds: Object.fromEntries(Object.entries(feeds).map(([name, t]) => [name, t.data])),
      output: { name: imageOutputName(), dims: out.dims, data: out.data },
    };
    drawImage($('canvas'), out.data, out.dims);
    const warmMedianMs = median(warmRunsMs);
    const classRole = roles.find((r) => r.role === 'class');
    const result = {
      model: model.name,
      seed,
      classIndex: classRole ? Number($('class-select').value) : null,
      className: classRole ? (manifest.conditioning.class_names?.[Number($('class-select').value)] ?? null) : null,
      guidance: roles.some((r) => r.role === 'guidance') ? Number($('guidance').value) : null,
      prompt: prompt?.text ?? null,
      textEncoderMs: prompt?.ms ?? null,
      outputDims: out.dims,
      loadMs,
      firstRunMs,
      thisClickFirstMs: first.ms,
      warmMedianMs,
      warmRunsMs,
    };
    window.cdxGenerate = result;
    $('latency').textContent = [
      `session load ${fmtMs(loadMs)} · first run ${fmtMs(firstRunMs)} · warm median ${fmtMs(warmMedianMs)} (${warm} runs)`,
      `image ${out.dims.join('×')}${result.className ? ` · ${result.className}` : ''}${result.guidance !== null ? ` · w=${result.guidance}` : ''}`,
      ...(prompt ? [`prompt "${prompt.text}" → ${prompt.tokens.length} BPE token(s), input_ids [${prompt.inputIds.join(', ')}] · text encoder ${fmtMs(prompt.ms)}`] : []),
    ].join('\n');
    setStatus('Ready.');
  } catch (err) {
    showError(err);
  } finally {
    setBusy(false);
  }
}

async function onCheckGolden() {
  if (busy || !state.ready || !goldenData) return;
  setBusy(true);
  try {
    const { count, seeds } = goldenData;
    setStatus(`Checking ${count} golden seed(s)…`);
    const perSeed = [];
    const thumbs = $('golden-thumbs');
    thumbs.replaceChildren();
    let maxAbs = 0;
    for (let i = 0; i < count; i++) {
      const feeds = {};
      for (const input of model.inputs) {
        const all = goldenData.inputs[input.name];
        const n = all.length / count;
        feeds[input.name] = makeTensor(input, all.slice(i * n, (i + 1) * n));
      }
      const { results } = await timedRun(feeds);
      let seedMax = 0;
      for (const [name, all] of Object.entries(goldenData.outputs)) {
        const got = results[name];
        if (!got) throw new BundleError(`model has no output ${name} named in golden.outputs`);
        const n = all.length / count;
        const d = maxAbsDiff(got.data, all.subarray(i * n, (i + 1) * n));
        seedMax = Number.isNaN(d) || Number.isNaN(seedMax) ? NaN : Math.max(seedMax, d);
      }
      perSeed.push({ seed: seeds[i], maxAbs: seedMax });
      maxAbs = Number.isNaN(seedMax) || Number.isNaN(maxAbs) ? NaN : Math.max(maxAbs, seedMax);
      const out = results[imageOutputName()];
      const fig = document.createElement('figure');
      const canvas = document.createElement('canvas');
      drawImage(canvas, out.data, out.dims, 0, 96);
      const cap = document.createElement('figcaption');
      const classRole = roles.find((r) => r.role === 'class');
      const labels = classRole ? goldenData.inputs[classRole.input.name] : null;
      const label = labels ? labels[i * (labels.length / count)] : null;
      const className = label !== null ? (manifest.conditioning.class_names?.[Number(label)] ?? `class ${label}`) : null;
      cap.textContent = `seed ${seeds[i]}${className ? ` · ${className}` : ''}\nmax-abs ${seedMax.toExponential(2)}`;
      fig.append(canvas, cap);
      thumbs.append(fig);
    }
    const text = textPath ? await checkTextPath() : null;
    const pass = maxAbs <= GOLDEN_TOLERANCE && (!text || text.pass);
    window.cdxGolden = { maxAbs, count, model: model.name, seeds, perSeed, tolerance: GOLDEN_TOLERANCE, pass, textEncoder: text };
    const line = $('golden-result');
    line.className = `mono ${pass ? 'pass' : 'fail'}`;
    line.textContent = `${pass ? 'PASS' : 'FAIL'}: max-abs ${maxAbs.toExponential(3)} over ${count} seed(s) `
      + `(tolerance ${GOLDEN_TOLERANCE.toExponential(0)}) · model ${model.name}`
      + (text ? `\ntext encoder ${text.model}: max-abs ${text.maxAbs.toExponential(3)} over ${text.count} prompt(s); `
        + `tokenizer: ${text.promptsChecked - text.promptMismatches.length}/${text.promptsChecked} golden prompts and `
        + `${text.vectorsChecked - text.vectorMismatches.length}/${text.vectorsChecked} vectors.json texts give the bundle's input_ids` : '');
    setStatus('Ready.');
  } catch (err) {
    showError(err);
  } finally {
    setBusy(false);
  }
}

/** The text encoder on its golden input_ids (vs its golden outputs), and the JS tokenizer on its golden prompts and
 * the bundle's vectors.json (vs the input_ids the student's own Hugging Face tokenizer wrote). */
async function checkTextPath() {
  const { model: enc, session: encSession, tokenizer, outputName, golden, vectors } = textPath;
  const result = { model: enc.name, count: 0, maxAbs: 0, promptsChecked: 0, promptMismatches: [], vectorsChecked: 0, vectorMismatches: [] };
  if (golden) {
    const input = enc.inputs[0];
    const ids = golden.inputs[input.name];
    const per = ids.length / golden.count;
    const outAll = golden.outputs[outputName];
    const outPer = outAll.length / golden.count;
    for (let i = 0; i < golden.count; i++) {
      const slice = ids.slice(i * per, (i + 1) * per);
      const out = await encSession.run({ [input.name]: makeTensor(input, slice) });
      const d = maxAbsDiff(out[outputName].data, outAll.subarray(i * outPer, (i + 1) * outPer));
      result.maxAbs = Number.isNaN(d) ? NaN : Math.max(result.maxAbs, d);
      result.count++;
      const prompt = enc.golden?.prompts?.[i];
      if (typeof prompt === 'string') {
        result.promptsChecked++;
        const ours = tokenizer.encode(prompt);
        if (ours.some((v, k) => BigInt(v) !== BigInt(slice[k]))) result.promptMismatches.push(prompt);
      }
    }
  }
  for (const c of vectors ?? []) {
    result.vectorsChecked++;
    const ours = tokenizer.encode(c.text);
    if (JSON.stringify(ours) !== JSON.stringify(c.input_ids)) result.vectorMismatches.push(c.text);
  }
  result.pass = result.maxAbs <= GOLDEN_TOLERANCE && !result.promptMismatches.length && !result.vectorMismatches.length;
  return result;
}

/** The bundle's text encoder for `generator` (a text student) with its tokenizer, all sha256-checked; null when the
 * generator takes no text_embedding or the bundle has no runnable text encoder. */
async function loadTextPath(base, generator, verified) {
  const textInput = generator.inputs.find((i) => i.name === 'text_embedding');
  if (!textInput) return null;
  const encoders = manifest.models.filter((m) => m.role === 'text_encoder' && m.tokenizer && (m.format === 'onnx' || m.format === 'ort'));
  const enc = encoders.find((m) => m.format === 'onnx' && m.precision === 'fp32') ?? encoders[0];
  if (!enc) return null;
  const out = enc.outputs.find((o) => o.name === textInput.name) ?? enc.outputs[0];
  if (JSON.stringify(out.shape) !== JSON.stringify(textInput.shape)) {
    throw new BundleError(`${enc.name} output ${out.name} is [${out.shape}], ${generator.name} takes ${textInput.name} [${textInput.shape}]`);
  }
  if (enc.inputs.length !== 1 || !['int64', 'int32'].includes(enc.inputs[0].dtype)) {
    throw new BundleError(`${enc.name}: expected one integer input (input_ids), the manifest lists ${enc.inputs.map((i) => `${i.name} ${i.dtype}`).join(', ')}`);
  }
  const get = async (path) => {
    const buf = await fetchVerified(base, manifest, path);
    verified.push([path, buf.byteLength]);
    return buf;
  };
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const files = enc.tokenizer.files;
  const tokenizer = new ClipTokenizer(enc.tokenizer, decoder.decode(await get(files.vocab)), decoder.decode(await get(files.merges)));
  if (shapeSize(enc.inputs[0].shape, `input ${enc.inputs[0].name}`) !== enc.tokenizer.max_length) {
    throw new BundleError(`${enc.name}: input ${enc.inputs[0].name} [${enc.inputs[0].shape}] does not hold max_length ${enc.tokenizer.max_length} ids`);
  }
  const vectors = files.vectors ? JSON.parse(decoder.decode(await get(files.vectors))) : null;
  const bytes = await get(enc.file);
  const golden = await loadGolden(base, enc, verified);
  return { model: enc, bytes, tokenizer, outputName: out.name, textInput, golden, vectors, session: null };
}

/** Fetches and verifies the golden tensors of `m`; null when the model has none. */
async function loadGolden(base, m, verified) {
  const golden = m.golden;
  if (!golden || !golden.inputs || !golden.outputs) return null;
  const seeds = Array.isArray(golden.seeds) ? golden.seeds : null;
  const get = async (path) => {
    const buf = await fetchVerified(base, manifest, path);
    verified.push([path, buf.byteLength]);
    return buf;
  };
  const inputs = {};
  let count = seeds ? seeds.length : null;
  for (const input of m.inputs) {
    const path = golden.inputs[input.name];
    if (!path) throw new BundleError(`golden.inputs has no file for input ${input.name}`);
    const data = decodeTensor(await get(path), input.dtype, path);
    const per = shapeSize(input.shape.slice(1), `input ${input.name}`) * (input.shape[0] ?? 1);
    if (data.length % per) throw new BundleError(`${path}: ${data.length} values is not a multiple of one sample (${per})`);
    if (count === null) count = data.length / per;
    if (data.length !== count * per) throw new BundleError(`${path}: expected ${count} sample(s) of ${per} values, got ${data.length} values`);
    inputs[input.name] = data;
  }
  const outputs = {};
  for (const [name, path] of Object.entries(golden.outputs)) {
    const spec = m.outputs.find((o) => o.name === name);
    if (!spec) throw new BundleError(`golden.outputs names ${name}, which is not an output of ${m.name}`);
    const data = decodeTensor(await get(path), spec.dtype, path);
    const per = shapeSize(spec.shape, `output ${name}`);
    if (data.length !== count * per) throw new BundleError(`${path}: expected ${count} sample(s) of ${per} values, got ${data.length}`);
    outputs[name] = data;
  }
  return { inputs, outputs, count, seeds: seeds ?? Array.from({ length: count }, (_, i) => i) };
}

async function main() {
  $('generate').addEventListener('click', onGenerate);
  $('check-golden').addEventListener('click', onCheckGolden);

  const base = bundleUrl(params.get('bundle'), location.href);
  setStatus(`Reading ${base.href}manifest.json…`);
  manifest = await loadManifest(base);
  model = pickModel(manifest, params.get('model'));
  state.model = model.name;
  const conditioning = manifest.conditioning ?? { type: 'none' };

  const generators = runnableGenerators(manifest);
  if (generators.length > 1) {
    const select = $('model-select');
    for (const g of generators) {
      const opt = document.createElement('option');
      opt.value = g.name;
      opt.textContent = `${g.name} (${g.format}, ${g.precision})`;
      select.append(opt);
    }
    select.value = model.name;
    select.addEventListener('change', () => {
      params.set('model', select.value);
      location.search = params.toString();
    });
    $('model-row').hidden = false;
  }

  addInfo('bundle', base.href);
  addInfo('source', `${manifest.source?.name ?? '?'} (${manifest.source?.unet_class ?? '?'} + ${manifest.source?.vae_class ?? '?'})`);
  addInfo('model', `${model.name} · ${model.format} · ${model.precision} · ${model.steps ?? '?'} step(s)`);
  addInfo('inputs', model.inputs.map((i) => `${i.name} ${i.dtype}[${i.shape.join(',')}]`).join('  '));
  addInfo('outputs', model.outputs.map((o) => `${o.name} ${o.dtype}[${o.shape.join(',')}]`).join('  '));
  addInfo('conditioning', conditioning.type + (conditioning.guidance?.embedded ? ' + guidance w input' : ''));
  const bundleRng = manifest.rng?.name ?? null;
  addInfo('noise', bundleRng === RNG_NAME
    ? `${RNG_NAME}, stream = input index: seed S gives Python's noise for seed S`
    : `${RNG_NAME} (this bundle's manifest names ${bundleRng ?? 'no rng'}: its golden seeds may not match)`);
  if (model.parity) addInfo('parity (Python ORT)', `max-abs ${Number(model.parity.max_abs).toExponential(2)} vs eager PyTorch`);

  // Every file this page uses is fetched through fetchVerified: refused unless listed with a matching sha256.
  const verified = [];
  setStatus(`Fetching and verifying ${model.file}…`);
  const modelBytes = await fetchVerified(base, manifest, model.file);
  verified.push([model.file, modelBytes.byteLength]);
  const externalData = [];
  const modelDir = model.file.includes('/') ? model.file.slice(0, model.file.lastIndexOf('/') + 1) : '';
  for (const path of model.external_data ?? []) {
    const buf = await fetchVerified(base, manifest, path);
    verified.push([path, buf.byteLength]);
    const rel = path.startsWith(modelDir) ? path.slice(modelDir.length) : path;
    externalData.push({ path: rel, data: new Uint8Array(buf) });
  }
  setStatus('Fetching and verifying golden data…');
  goldenData = await loadGolden(base, model, verified);
  setStatus('Fetching and verifying the text encoder and tokenizer…');
  textPath = await loadTextPath(base, model, verified);
  roles = assignRoles(model, conditioning);
  const total = verified.reduce((a, [, n]) => a + n, 0);
  addInfo('verified', `${verified.length} file(s), ${fmtBytes(total)}, sha256 matches manifest`);

  setupControls(conditioning);

  const distDir = new URL('./node_modules/onnxruntime-web/dist/', import.meta.url).href;
  ort.env.wasm.wasmPaths = distDir;
  const threads = Number(params.get('threads'));
  if (Number.isInteger(threads) && threads > 0) ort.env.wasm.numThreads = threads;
  setStatus('Creating the ONNX Runtime session (WASM)…');
  const t0 = performance.now();
  session = await ort.InferenceSession.create(new Uint8Array(modelBytes), {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
    ...(externalData.length ? { externalData } : {}),
  });
  loadMs = performance.now() - t0;
  if (textPath) {
    const t1 = performance.now();
    textPath.session = await ort.InferenceSession.create(new Uint8Array(textPath.bytes), {
      executionProviders: ['wasm'], graphOptimizationLevel: 'all',
    });
    textPath.loadMs = performance.now() - t1;
    textPath.bytes = null;
    addInfo('text encoder', `${textPath.model.name} · ${textPath.model.format} · ${textPath.model.precision} · `
      + `tokenizer ${textPath.model.tokenizer.type} (${textPath.model.tokenizer.source_class ?? '?'}) · load ${fmtMs(textPath.loadMs)}`);
  }

  $('runtime-info').textContent = `onnxruntime-web ${ort.env.versions?.web ?? '?'} · WASM EP · threads `
    + `${ort.env.wasm.numThreads ?? 'auto'} · crossOriginIsolated=${self.crossOriginIsolated} · session load ${fmtMs(loadMs)}`;
  state.ready = true;
  setBusy(false);
  if (!goldenData) $('golden-result').textContent = 'This model has no golden data in the manifest.';
  setStatus('Ready.');
}

main().catch(showError);
