// Reading a cdx ONNX bundle over HTTP: manifest.json, sha256-checked file fetches, model choice, raw tensors.
// No DOM and no onnxruntime here, so the same code runs in the page and under Node (>= 18, for tests).

/** A problem with the bundle itself (missing, malformed, tampered): shown to the user, never retried. */
export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = 'BundleError';
  }
}

/** The bundle folder as an absolute URL ending in '/', from a `?bundle=` value relative to the page. */
export function bundleUrl(param, pageUrl) {
  const raw = (param ?? '').trim() || 'bundle/';
  const url = new URL(raw, pageUrl);
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  url.search = '';
  url.hash = '';
  return url;
}

/** Refuses manifest paths that could leave the bundle folder (absolute, '..', backslashes, URLs). */
export function checkRelpath(path) {
  if (typeof path !== 'string' || path.length === 0) throw new BundleError(`bad path in manifest: ${JSON.stringify(path)}`);
  if (path.startsWith('/') || path.includes('\\') || /^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(path)) {
    throw new BundleError(`manifest path is not relative to the bundle: ${path}`);
  }
  for (const part of path.split('/')) {
    if (part === '..' || part === '.' || part === '') throw new BundleError(`manifest path escapes or is not normalised: ${path}`);
  }
  return path;
}

async function fetchOk(url, fetchImpl, what) {
  let response;
  try {
    response = await fetchImpl(url, { cache: 'no-store' });
  } catch (err) {
    throw new BundleError(`cannot fetch ${what} (${url}): ${err.message}`);
  }
  if (!response.ok) throw new BundleError(`cannot fetch ${what} (${url}): HTTP ${response.status}`);
  return response;
}

/** Fetches and sanity-checks manifest.json (only the fields this page relies on). */
export async function loadManifest(base, fetchImpl = fetch) {
  const response = await fetchOk(new URL('manifest.json', base), fetchImpl, 'manifest.json');
  let manifest;
  try {
    manifest = await response.json();
  } catch (err) {
    throw new BundleError(`manifest.json is not JSON: ${err.message}`);
  }
  if (!manifest || typeof manifest !== 'object') throw new BundleError('manifest.json is not an object');
  if (typeof manifest.manifest_version !== 'string' || !manifest.manifest_version.startsWith('1.')) {
    throw new BundleError(`unsupported manifest_version ${JSON.stringify(manifest.manifest_version)} (this page reads 1.x)`);
  }
  if (!Array.isArray(manifest.models) || manifest.models.length === 0) throw new BundleError('manifest.json has no models[]');
  if (!Array.isArray(manifest.files)) throw new BundleError('manifest.json has no files[]');
  for (const entry of manifest.files) checkRelpath(entry.path);
  return manifest;
}

/** Lower-case hex sha256 of bytes, with WebCrypto (needs a secure context: https or localhost). */
export async function sha256Hex(buffer) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new BundleError('WebCrypto (crypto.subtle) is unavailable: open the page over http://127.0.0.1 or https');
  const digest = await subtle.digest('SHA-256', buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Fetches one bundle file and refuses it unless its size and sha256 match the manifest's files[] entry. */
export async function fetchVerified(base, manifest, path, fetchImpl = fetch) {
  checkRelpath(path);
  const entry = manifest.files.find((f) => f.path === path);
  if (!entry) throw new BundleError(`${path} is not listed in manifest files[]: refusing to load it`);
  const response = await fetchOk(new URL(path, base), fetchImpl, path);
  const buffer = await response.arrayBuffer();
  if (typeof entry.size_bytes === 'number' && buffer.byteLength !== entry.size_bytes) {
    throw new BundleError(`size mismatch for ${path}: manifest says ${entry.size_bytes} bytes, got ${buffer.byteLength}; refusing this bundle`);
  }
  const actual = await sha256Hex(buffer);
  if (actual !== String(entry.sha256).toLowerCase()) {
    throw new BundleError(`sha256 mismatch for ${path}: manifest ${entry.sha256}, fetched ${actual}; refusing this bundle`);
  }
  return buffer;
}

/** The browser-runnable generators: role "generator", format onnx or ort. */
export function runnableGenerators(manifest) {
  return manifest.models.filter((m) => m.role === 'generator' && (m.format === 'onnx' || m.format === 'ort'));
}

/** The model named `name`, else the first fp32 ONNX generator. */
export function pickModel(manifest, name) {
  const runnable = runnableGenerators(manifest);
  if (name) {
    const model = manifest.models.find((m) => m.name === name);
    if (!model) throw new BundleError(`no model named ${name} in this bundle (have: ${manifest.models.map((m) => m.name).join(', ')})`);
    if (!runnable.includes(model)) throw new BundleError(`model ${name} is ${model.role}/${model.format}: this page runs onnx/ort generators only`);
    return model;
  }
  const model = runnable.find((m) => m.format === 'onnx' && m.precision === 'fp32');
  if (!model) throw new BundleError('this bundle has no fp32 ONNX generator (pass ?model=NAME to pick another)');
  return model;
}

/** Static element count of a manifest shape; refuses symbolic or non-positive dimensions. */
export function shapeSize(shape, what = 'tensor') {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new BundleError(`${what} has a non-static shape ${JSON.stringify(shape)}: this page needs static shapes`);
  }
  return shape.reduce((a, b) => a * b, 1);
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A raw little-endian golden file as a typed array of the manifest dtype. */
export function decodeTensor(buffer, dtype, what = 'tensor') {
  if (!LITTLE_ENDIAN) throw new BundleError('big-endian host: golden files are little-endian raw tensors');
  if (dtype === 'float32') {
    if (buffer.byteLength % 4) throw new BundleError(`${what}: ${buffer.byteLength} bytes is not a whole number of float32`);
    return new Float32Array(buffer);
  }
  if (dtype === 'int64') {
    if (buffer.byteLength % 8) throw new BundleError(`${what}: ${buffer.byteLength} bytes is not a whole number of int64`);
    return new BigInt64Array(buffer);
  }
  throw new BundleError(`${what}: dtype ${dtype} is not supported by this page (float32, int64)`);
}

/** Max |a - b| over two equal-length float arrays; NaN anywhere gives NaN. */
export function maxAbsDiff(a, b) {
  if (a.length !== b.length) throw new BundleError(`length mismatch: ${a.length} vs ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) worst = d; // also propagates NaN
    if (Number.isNaN(worst)) return NaN;
  }
  return worst;
}

/** Median of a non-empty list of numbers. */
export function median(values) {
  const s = [...values].sort((x, y) => x - y);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}
