#!/usr/bin/env node
// web_demo/rng.mjs against the shared cdx-normal-v1 test vectors, bit for bit:
//
//   node web_demo/test/rng.mjs tests/data/rng_vectors.json
//
// Checks mix32, the per-(seed, stream) key, the uint32 draws a/b and the float32 bits of every case; prints one line
// per failure and exits non-zero on any.

import { promises as fs } from 'node:fs';

import { NAME, SeededRandom, mix32, normal, streamKey, uniformsAt } from '../rng.mjs';

async function main() {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node web_demo/test/rng.mjs tests/data/rng_vectors.json');
    return 2;
  }
  const vectors = JSON.parse(await fs.readFile(file, 'utf8'));
  const failures = [];
  let checked = 0;
  if (vectors.name !== NAME) failures.push(`vectors are for ${vectors.name}, rng.mjs implements ${NAME}`);
  for (const [x, expected] of vectors.mix32) {
    checked++;
    if (mix32(x) !== expected) failures.push(`mix32(${x}) = ${mix32(x)}, expected ${expected}`);
  }
  if (!vectors.cases?.length) failures.push('no cases in the vectors file');
  for (const c of vectors.cases ?? []) {
    const where = `seed ${c.seed} stream ${c.stream}`;
    const key = streamKey(c.seed, c.stream);
    if (key !== c.key) failures.push(`${where}: key ${key}, expected ${c.key}`);
    c.a.forEach((a, i) => {
      const [ga, gb] = uniformsAt(key, i);
      if (ga !== a || gb !== c.b[i]) failures.push(`${where}: element ${i} draws (${ga}, ${gb}), expected (${a}, ${c.b[i]})`);
    });
    const z = normal(c.seed, c.float32_bits.length, c.stream);
    const bits = new Uint32Array(z.buffer);
    c.float32_bits.forEach((expected, i) => {
      checked++;
      if (bits[i] !== expected) failures.push(`${where}: element ${i} float32 bits ${bits[i]} (${z[i]}), expected ${expected} (${c.values?.[i]})`);
    });
    const again = new SeededRandom(c.seed, c.stream).randn(c.float32_bits.length);
    if (!again.every((v, i) => Object.is(v, z[i]))) failures.push(`${where}: SeededRandom.randn differs from normal()`);
  }
  for (const f of failures) console.error(`FAIL: ${f}`);
  console.log(`${NAME}: ${checked} values checked against ${file}, ${failures.length} failure(s)`);
  return failures.length ? 1 : 0;
}

main().then((code) => process.exit(code), (err) => {
  console.error(err.stack ?? String(err));
  process.exit(1);
});
