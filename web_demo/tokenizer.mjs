// CLIP's byte-level BPE tokenizer (prompt → input_ids), built only from a manifest `tokenizer` section and the two
// files it names (vocab.json, merges.txt). No DOM, no onnxruntime: runs in the page and under Node.
//
// The rules are those of transformers' CLIPTokenizerFast, which cdx uses for a student and the manifest describes
// (cdx/schemas/manifest.schema.json $defs.tokenizer; reference: cdx/clip_tokenizer.py):
//   1. normalize, in the manifest's order: "nfc" (String.normalize), "collapse_whitespace" (every run of Unicode
//      White_Space → one space), "lowercase" (each code point lowercased on its own, like Rust's char::to_lowercase:
//      no final-sigma context);
//   2. the special-token strings (the vocab entries of bos/eos/pad/unk) are matched in the normalized text,
//      leftmost-longest, and become their ids;
//   3. the rest is split into words by CLIP's pattern  's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//      (ordered alternatives at each position; whitespace between words is dropped). It is scanned by hand rather
//      than compiled, because JavaScript's \s also matches U+FEFF, which CLIP's does not;
//   4. each word's UTF-8 bytes → GPT-2's bytes_to_unicode characters, `end_of_word_suffix` on the last one, then the
//      lowest-ranked adjacent pair of merges.txt is merged (every occurrence, left to right) until none is ranked;
//   5. ids from vocab.json (unk_token_id when a symbol is missing), then [bos] + ids[: max_length - 2] + [eos],
//      padded with pad_token_id to max_length.
// Checked against tests/data/tokenizer_vectors.json by web_demo/test/tokenizer.mjs and against the bundle's own
// vectors.json in the browser test.

export const CLIP_SPLIT_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";
const CONTRACTIONS = ['s', 't', 're', 've', 'm', 'll', 'd'];
// Unicode White_Space (what \s matches in the Rust/Python regex engines of the reference tokenizers).
const WHITE_SPACE = new Set([0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
  0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000]);
const LETTER = /^\p{L}$/u;
const NUMBER = /^\p{N}$/u;
const MAX_MERGES = 1 << 20;

/** A tokenizer section or file the page cannot follow: shown to the user. */
export class TokenizerError extends Error {
  constructor(message) {
    super(message);
    this.name = 'TokenizerError';
  }
}

/** GPT-2's reversible byte → character table: printable Latin-1 bytes map to themselves, the rest to U+0100…. */
export function bytesToUnicode() {
  const table = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const keep = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCodePoint(keep ? b : 256 + extra++);
  }
  return table;
}
const BYTE_CHARS = bytesToUnicode();

/** merges.txt → Map("a b" → rank): rank = line order after an optional '#version' header; malformed lines keep
 * their rank slot but match nothing (as the reference reads them). */
export function parseMerges(text) {
  const lines = String(text).split(/\r?\n|\r/);
  if (lines.length && lines[0].startsWith('#version')) lines.shift();
  if (lines.length > MAX_MERGES) throw new TokenizerError(`merges.txt has ${lines.length} lines (more than ${MAX_MERGES})`);
  const ranks = new Map();
  lines.forEach((line, rank) => {
    const parts = line.trim().split(/[ \t]+/).filter(Boolean);
    if (parts.length === 2) ranks.set(`${parts[0]} ${parts[1]}`, rank);
  });
  return ranks;
}

/** Each normalize step of the manifest, in order. */
export function normalize(text, steps) {
  let out = String(text);
  for (const step of steps) {
    if (step === 'nfc') out = out.normalize('NFC');
    else if (step === 'collapse_whitespace') out = collapseWhitespace(out);
    else if (step === 'lowercase') out = Array.from(out, (ch) => ch.toLowerCase()).join('');
    else throw new TokenizerError(`tokenizer: unknown normalize step ${JSON.stringify(step)}`);
  }
  return out;
}

function collapseWhitespace(text) {
  let out = '';
  let inRun = false;
  for (const ch of text) {
    if (WHITE_SPACE.has(ch.codePointAt(0))) {
      if (!inRun) out += ' ';
      inRun = true;
    } else {
      out += ch;
      inRun = false;
    }
  }
  return out;
}

const isSpace = (ch) => WHITE_SPACE.has(ch.codePointAt(0));
const isLetter = (ch) => LETTER.test(ch);
const isNumber = (ch) => NUMBER.test(ch);

/** The words of `text` by CLIP's split pattern (an array of code-point strings). */
export function splitWords(text) {
  const chars = Array.from(text);
  const words = [];
  let i = 0;
  while (i < chars.length) {
    const ch = chars[i];
    if (ch === "'") {
      const tail = CONTRACTIONS.find((c) => Array.from(c).every((x, k) => chars[i + 1 + k] === x));
      if (tail) {
        words.push(`'${tail}`);
        i += 1 + tail.length;
        continue;
      }
    }
    let j = i;
    if (isLetter(ch)) {
      while (j < chars.length && isLetter(chars[j])) j++;
    } else if (isNumber(ch)) {
      j = i + 1;
    } else if (!isSpace(ch)) {
      while (j < chars.length && !isSpace(chars[j]) && !isLetter(chars[j]) && !isNumber(chars[j])) j++;
    } else {
      i++;
      continue;
    }
    words.push(chars.slice(i, j).join(''));
    i = j;
  }
  return words;
}

export class ClipTokenizer {
  /**
   * @param {object} section the manifest's `tokenizer` section
   * @param {string} vocabText vocab.json ({token: id})
   * @param {string} mergesText merges.txt
   */
  constructor(section, vocabText, mergesText) {
    if (!section || section.type !== 'clip_bpe') throw new TokenizerError(`tokenizer type ${section?.type} is not clip_bpe`);
    if (section.byte_level !== 'gpt2') throw new TokenizerError(`tokenizer byte_level ${section.byte_level} is not gpt2`);
    if (section.split_pattern !== CLIP_SPLIT_PATTERN) {
      throw new TokenizerError(`tokenizer split_pattern ${JSON.stringify(section.split_pattern)} is not CLIP's: this page implements only ${CLIP_SPLIT_PATTERN}`);
    }
    for (const key of ['max_length', 'bos_token_id', 'eos_token_id', 'pad_token_id']) {
      if (!Number.isInteger(section[key]) || section[key] < 0) throw new TokenizerError(`tokenizer ${key} is ${section[key]}, not a non-negative integer`);
    }
    if (section.max_length < 2) throw new TokenizerError(`tokenizer max_length ${section.max_length} < 2`);
    let vocab;
    try {
      vocab = JSON.parse(vocabText);
    } catch (err) {
      throw new TokenizerError(`vocab.json is not JSON: ${err.message}`);
    }
    if (!vocab || typeof vocab !== 'object' || Array.isArray(vocab)) throw new TokenizerError('vocab.json is not a {token: id} object');
    this.vocab = new Map(Object.entries(vocab));
    for (const [token, id] of this.vocab) {
      if (!Number.isInteger(id) || id < 0) throw new TokenizerError(`vocab.json: id of ${JSON.stringify(token)} is ${id}`);
    }
    this.ranks = parseMerges(mergesText);
    this.section = section;
    this.steps = section.normalize ?? [];
    this.suffix = section.end_of_word_suffix ?? '';
    this.unk = Number.isInteger(section.unk_token_id) ? section.unk_token_id : null;
    const byId = new Map([...this.vocab].map(([t, id]) => [id, t]));
    const specialIds = [section.bos_token_id, section.eos_token_id, section.pad_token_id, this.unk].filter((x) => x !== null);
    this.specials = [...new Set(specialIds.map((id) => byId.get(id)).filter((t) => typeof t === 'string' && t.length > 0))]
      .sort((a, b) => b.length - a.length);  // longest first: leftmost-longest matching
    this.cache = new Map();
  }

  /** One word's symbols after every merge (lowest rank first). */
  bpe(word) {
    const hit = this.cache.get(word);
    if (hit) return hit;
    const chars = Array.from(word);
    let symbols = [...chars.slice(0, -1), chars[chars.length - 1] + this.suffix];
    while (symbols.length > 1) {
      let best = Infinity;
      let first = null;
      let second = null;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = this.ranks.get(`${symbols[i]} ${symbols[i + 1]}`);
        if (rank !== undefined && rank < best) {
          best = rank;
          first = symbols[i];
          second = symbols[i + 1];
        }
      }
      if (first === null) break;
      const merged = [];
      for (let j = 0; j < symbols.length;) {
        if (j + 1 < symbols.length && symbols[j] === first && symbols[j + 1] === second) {
          merged.push(first + second);
          j += 2;
        } else {
          merged.push(symbols[j]);
          j += 1;
        }
      }
      symbols = merged;
    }
    if (this.cache.size < 10000) this.cache.set(word, symbols);
    return symbols;
  }

  /** The text's pieces: [{special: token}] or [{text}], specials matched leftmost-longest. */
  splitSpecials(text) {
    const pieces = [];
    let start = 0;
    let i = 0;
    while (i < text.length) {
      const hit = this.specials.find((s) => text.startsWith(s, i));
      if (hit) {
        if (i > start) pieces.push({ text: text.slice(start, i) });
        pieces.push({ special: hit });
        i += hit.length;
        start = i;
      } else {
        i++;
      }
    }
    if (start < text.length) pieces.push({ text: text.slice(start) });
    return pieces;
  }

  /** The BPE symbols of `text` (special tokens as themselves), before ids and the template. */
  tokenize(text) {
    const out = [];
    for (const piece of this.splitSpecials(normalize(text, this.steps))) {
      if (piece.special) {
        out.push(piece.special);
        continue;
      }
      for (const word of splitWords(piece.text)) {
        const bytes = new TextEncoder().encode(word);
        out.push(...this.bpe(Array.from(bytes, (b) => BYTE_CHARS[b]).join('')));
      }
    }
    return out;
  }

  /** input_ids of `text` as numbers: always max_length long. */
  encode(text) {
    const { max_length: length, bos_token_id: bos, eos_token_id: eos, pad_token_id: pad } = this.section;
    const ids = [];
    for (const symbol of this.tokenize(text)) {
      const id = this.vocab.get(symbol);
      if (id !== undefined) ids.push(id);
      else if (this.unk !== null) ids.push(this.unk);
    }
    const out = [bos, ...ids.slice(0, length - 2), eos];
    while (out.length < length) out.push(pad);
    return out;
  }
}
