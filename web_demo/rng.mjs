// cdx-normal-v1: the seeded standard-normal generator shared by Python (cdx/rng.py, whose docstring is the spec),
// the native runners, the iOS app and this page. A seed here gives exactly the noise Python gives for that seed —
// the same float32 bits as `cdx.rng.normal(seed, shape, stream)` and as the bundle's golden inputs, which `cdx
// convert` draws with stream = the input's index in the manifest's input list.
//
//   mix32(x)  = lowbias32: x ^= x >>> 16; x *= 0x7FEB352D; x ^= x >>> 15; x *= 0x846CA68B; x ^= x >>> 16   (mod 2^32)
//   key       = mix32(mix32(seed) ^ (stream * 0x9E3779B9 + 0x632BE5AB))                                      (mod 2^32)
//   element i:  a = mix32(key ^ mix32(2i)), b = mix32(key ^ mix32(2i + 1))
//               u1 = (a + 1) / 2^32 in (0, 1], u2 = b / 2^32 in [0, 1)
//               z  = float32(sqrt(-2 ln u1) * cos(2π u2))   (float64 math, rounded to float32 once at the end)
//
// 32-bit products use Math.imul (the low 32 bits of the exact product), `>>> 0` keeps values unsigned; the float
// part is float64 Math.sqrt/log/cos and one Math.fround. `sqrt` is correctly rounded; V8's log/cos (fdlibm) may
// differ from the C library's by 1 ulp in float64, which changes a float32 result with probability about 2^-29.
// Checked against tests/data/rng_vectors.json by web_demo/test/rng.mjs, and against the bundle's golden noise in
// the browser by web_demo/test/run.mjs.

export const NAME = 'cdx-normal-v1';
const TWO_POW_32 = 4294967296;

/** lowbias32: a 32-bit integer bijection (uint32 in, uint32 out). */
export function mix32(x) {
  x >>>= 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

/** The per-(seed, stream) key. Seeds and streams are taken modulo 2^32 like Python's `& 0xFFFFFFFF`. */
export function streamKey(seed, stream = 0) {
  const salt = (Math.imul(toUint32(stream), 0x9e3779b9) + 0x632be5ab) >>> 0;
  return mix32(mix32(toUint32(seed)) ^ salt);
}

/** The two uint32 draws (a, b) behind element `i` (0 <= i < 2^31) of the stream with `key`. */
export function uniformsAt(key, i) {
  return [mix32(key ^ mix32(2 * i)), mix32(key ^ mix32(2 * i + 1))];
}

/** A Float32Array of `count` standard normals: cdx-normal-v1 with `seed` and `stream` (row-major over any shape). */
export function normal(seed, count, stream = 0) {
  if (!Number.isInteger(count) || count < 0 || count >= 2 ** 31) {
    throw new RangeError(`${NAME}: at most 2^31 - 1 elements per tensor, got ${count}`);
  }
  const key = streamKey(seed, stream);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const a = mix32(key ^ mix32(2 * i));
    const b = mix32(key ^ mix32(2 * i + 1));
    const u1 = (a + 1) / TWO_POW_32;
    const u2 = b / TWO_POW_32;
    out[i] = Math.fround(Math.sqrt(-2.0 * Math.log(u1)) * Math.cos(2.0 * Math.PI * u2));
  }
  return out;
}

/** `seed` and `stream` as the generator sees them. */
export class SeededRandom {
  constructor(seed, stream = 0) {
    this.seed = toUint32(seed);
    this.stream = toUint32(stream);
  }

  /** The first `count` normals of this (seed, stream): the same values every call (counter-based, no state). */
  randn(count) {
    return normal(this.seed, count, this.stream);
  }
}

function toUint32(value) {
  const n = typeof value === 'bigint' ? Number(BigInt.asUintN(32, value)) : Number(value);
  if (!Number.isInteger(n)) throw new RangeError(`${NAME}: seed/stream must be an integer, got ${value}`);
  return n >>> 0;
}
