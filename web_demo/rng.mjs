// Seeded Gaussian random numbers for the demo's "Generate" button.
//
// This is NOT torch's RNG: torch.Generator(cpu).manual_seed(seed).randn(...) (what the manifest's golden data used)
// is a Mersenne Twister with torch's own normal transform, and it is not reproduced here. A given seed therefore
// gives a different (but equally valid) standard-normal latent in the browser than in Python. The golden check does
// not depend on this file: it feeds the bundle's own golden inputs.
//
// Generator: xoshiro128** (Blackman & Vigna) seeded through splitmix32, normals by Box–Muller. 32-bit integer
// arithmetic only (Math.imul), so the stream is identical in every JS engine.

function splitmix32(state) {
  let s = state >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** A seeded stream of uniform [0, 1) numbers and standard normals. `stream` separates independent uses of one seed. */
export class SeededRandom {
  constructor(seed, stream = 0) {
    const mix = splitmix32((Number(seed) >>> 0) ^ Math.imul((stream >>> 0) + 1, 0x632be5ab));
    this.s = new Uint32Array([mix(), mix(), mix(), mix()]);
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
    this.spare = null;
  }

  nextUint32() {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 32 random bits. */
  uniform() {
    return this.nextUint32() / 4294967296;
  }

  /** One standard normal sample (Box–Muller; the second value of each pair is kept for the next call). */
  normal() {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const u1 = 1 - this.uniform(); // (0, 1]: log never sees 0
    const u2 = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    this.spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  }

  /** A Float32Array of `count` standard normals. */
  randn(count) {
    const out = new Float32Array(count);
    for (let i = 0; i < count; i++) out[i] = this.normal();
    return out;
  }
}

function rotl(x, k) {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
