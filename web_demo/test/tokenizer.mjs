#!/usr/bin/env node
// web_demo/tokenizer.mjs against the shared CLIP tokenizer vectors (made by transformers; cdx/tokenizer_vectors.py):
//
//   node web_demo/test/tokenizer.mjs tests/data/tokenizer_vectors.json [BUNDLE_TOKENIZER_VECTORS...]
//
// For every vector set it builds the tokenizer from the set's own vocab.json / merges.txt text and manifest-style
// `tokenizer` section, and requires each case's BPE symbols and padded input_ids to be exactly transformers'. A
// bundle's vectors.json ([{text, input_ids}]) may be given too, as `MANIFEST_DIR` (its text_encoder's tokenizer is
// read from manifest.json). Prints one line per failure and exits non-zero on any.

import { promises as fs } from 'node:fs';
import path from 'node:path';

import { ClipTokenizer } from '../tokenizer.mjs';

function compare(where, got, want, failures) {
  if (JSON.stringify(got) !== JSON.stringify(want)) failures.push(`${where}: got ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
}

async function checkShared(file, failures) {
  const doc = JSON.parse(await fs.readFile(file, 'utf8'));
  let checked = 0;
  if (doc.name !== 'cdx-clip-bpe-v1') failures.push(`${file}: vectors are ${doc.name}, not cdx-clip-bpe-v1`);
  if (!doc.sets?.length) failures.push(`${file}: no vector sets`);
  for (const set of doc.sets ?? []) {
    const tok = new ClipTokenizer(set.tokenizer, set.vocab_json, set.merges_txt);
    for (const c of set.cases) {
      const where = `${set.name} ${JSON.stringify(c.text)}`;
      compare(`${where} tokens`, tok.tokenize(c.text), c.tokens, failures);
      compare(`${where} input_ids`, tok.encode(c.text), c.input_ids, failures);
      checked++;
    }
  }
  return checked;
}

async function checkBundle(dir, failures) {
  const manifest = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8'));
  const models = manifest.models.filter((m) => m.role === 'text_encoder' && m.tokenizer);
  if (!models.length) failures.push(`${dir}: no text_encoder model with a tokenizer section`);
  let checked = 0;
  for (const m of models) {
    const read = (rel) => fs.readFile(path.join(dir, rel), 'utf8');
    const tok = new ClipTokenizer(m.tokenizer, await read(m.tokenizer.files.vocab), await read(m.tokenizer.files.merges));
    for (const c of JSON.parse(await read(m.tokenizer.files.vectors))) {
      compare(`${dir} ${m.name} ${JSON.stringify(c.text)} input_ids`, tok.encode(c.text), c.input_ids, failures);
      checked++;
    }
  }
  return checked;
}

async function main() {
  const [file, ...bundles] = process.argv.slice(2);
  if (!file) {
    console.error('usage: node web_demo/test/tokenizer.mjs tests/data/tokenizer_vectors.json [BUNDLE_DIR...]');
    return 2;
  }
  const failures = [];
  let checked = await checkShared(file, failures);
  for (const dir of bundles) checked += await checkBundle(dir, failures);
  for (const f of failures) console.error(`FAIL: ${f}`);
  console.log(`cdx-clip-bpe-v1: ${checked} texts checked, ${failures.length} failure(s)`);
  return failures.length ? 1 : 0;
}

main().then((code) => process.exit(code), (err) => {
  console.error(err.stack ?? String(err));
  process.exit(1);
});
