"""Shared CLIP tokenizer test vectors: what the JS, Kotlin and Swift tokenizers of the apps are checked against.

    python -m cdx.tokenizer_vectors [--out tests/data/tokenizer_vectors.json] [--check]

Three vocabularies: cdx.tiny_models' byte-level one (every byte with and without `</w>`, no merges), the same plus a
few BPE merges built here (merge order, a merge across the end-of-word suffix, repeated merges), and the embedded
emoji teacher's tokenizer (cdx/assets/emoji_teacher/tokenizer: 1,500 merges learned from its captions) — the one a
phone will run. Regenerate when that tokenizer changes (the Python test says so).
Each case's `input_ids` come from transformers' `CLIPTokenizerFast` — the tokenizer cdx loads for a student
(AutoTokenizer) and whose rules the manifest's `tokenizer` section describes (NFC, whitespace runs → one space,
per-character lowercase, CLIP's split pattern, special-token strings matched after normalisation). `slow_input_ids`
are the slow `CLIPTokenizer`'s (without ftfy: BERT's BasicTokenizer cleanup — control characters dropped, spaces
around CJK ideographs, whole-string lowercase, IGNORECASE contractions), recorded where the two differ: the
devices follow the manifest, i.e. `input_ids`. Texts cover case, whitespace cleanup, punctuation, digits, apostrophes,
non-ASCII and emoji bytes, truncation, padding and bos/eos; emoji are from Unicode ≤ 13 so that every platform's
character database (Python 3.11: Unicode 14, JDK 17: 13) classifies them alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

NAME = "cdx-clip-bpe-v1"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tokenizer_vectors.json"
COMMAND = "python -m cdx.tokenizer_vectors"

# The manifest's names for CLIPTokenizerFast's normalizers (cdx/schemas/manifest.schema.json $defs.tokenizer.normalize).
_NORMALIZERS = {"NFC": "nfc", "Replace": "collapse_whitespace", "Lowercase": "lowercase"}

TEXTS = [
    "",
    "a red apple",
    "A RED Apple",
    "  grinning\tface \n\n with   BIG eyes  ",
    "hello, world! (really?) ... #1 -- ok.",
    "3.14 and 2024 apples",
    "it's they're we've i'm you'll he'd don't",
    "IT'S THE CAT'S TOY, ISN'T IT?",
    "''s 'x rock'n'roll",
    "café naïve ÉCOLE crème brûlée",
    "e\u0301 combined vs \u00e9",
    "\U0001F34E red apple",
    "\U0001F44D\U0001F3FD thumbs up: medium skin tone",
    "\U0001F469\u200d\U0001F4BB technologist",
    "\u2764\ufe0f red heart",
    "flag: \U0001F1EB\U0001F1F7",
    "smiling face with heart-eyes \U0001F60D\U0001F60D",
    "\u4f60\u597d world",
    "\u03a3\u039f\u03a6\u0399\u0391\u03a3 \u0130stanbul stra\u00dfe",
    "x\u00b2 \u00bd \u0663 \u2167",
    "tab\u00a0nbsp\u3000ideographic\u2028line",
    "zero\u200bwidth ctrl\u0007bell",
    "$100 & 50% off!!! <3 :-)",
    "'\u017f 'S",
    "<|endoftext|> after eos, <|STARTOFTEXT|> upper",
    "a very long prompt with many many words that will never fit into the sequence",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
    "apple apples appleapple pineapple",
    "red redder reddest a red face's face",
    "the face of a red apple, a face!",
]

# (first, second): the merges of the second vocabulary, in rank order. Results are added to its vocab.
MERGES = [
    ("a", "p"), ("ap", "p"), ("l", "e</w>"), ("app", "le</w>"), ("r", "e"), ("re", "d</w>"), ("f", "a"),
    ("c", "e</w>"), ("fa", "ce</w>"), ("t", "h"), ("th", "e</w>"), ("app", "l"), ("e", "s</w>"), ("'", "s</w>"),
    ("d", "d"), ("re", "dd"),
]


EMOJI_TEXTS = [
    "grinning face", "red apple", "flag: France", "thumbs up: medium skin tone", "woman technologist",
    "smiling face with heart-eyes", "cat face", "a cup of hot coffee", "person in lotus position: dark skin tone",
    "keycap: 7",
]


def _emoji_teacher_vocab(folder: Path) -> None:
    from cdx.defaults import EMOJI_TEACHER_DIR

    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((EMOJI_TEACHER_DIR / "tokenizer" / name).read_bytes())


def _emoji_max_length() -> int:
    from cdx.defaults import EMOJI_TEACHER_DIR

    config = json.loads((EMOJI_TEACHER_DIR / "tokenizer" / "tokenizer_config.json").read_text("utf-8"))
    return int(config["model_max_length"])


def _byte_level_vocab(folder: Path) -> None:
    from cdx.tiny_models import _write_tiny_clip_tokenizer

    _write_tiny_clip_tokenizer(folder)


def _merged_vocab(folder: Path) -> None:
    """The byte-level vocabulary plus MERGES (their results get ids after the specials, as a trained vocab would)."""
    _byte_level_vocab(folder)
    vocab = json.loads((folder / "vocab.json").read_text("utf-8"))
    for first, second in MERGES:
        vocab.setdefault(first + second, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in MERGES)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", "utf-8")


def _section(fast: Any, max_length: int) -> dict[str, Any]:
    """The manifest's `tokenizer` rules, read from the fast tokenizer's own description (not re-typed)."""
    data = json.loads(fast.backend_tokenizer.to_str())
    normalize = [_NORMALIZERS[n["type"]] for n in data["normalizer"]["normalizers"]]
    split = next(p for p in data["pre_tokenizer"]["pretokenizers"] if p["type"] == "Split")
    return {
        "type": "clip_bpe", "max_length": max_length,
        "files": {"vocab": "vocab.json", "merges": "merges.txt", "vectors": "vectors.json"},  # = vocab_json, merges_txt
        "bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id,
        "pad_token_id": fast.pad_token_id, "unk_token_id": fast.unk_token_id,
        "normalize": normalize, "split_pattern": split["pattern"]["Regex"], "byte_level": "gpt2",
        "end_of_word_suffix": data["model"]["end_of_word_suffix"],
    }


def _tokenizer_set(name: str, build: Any, max_length: int, texts: list[str] = TEXTS) -> dict[str, Any]:
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder)
        vocab_file, merges_file = str(folder / "vocab.json"), str(folder / "merges.txt")
        slow = CLIPTokenizer(vocab_file, merges_file, model_max_length=max_length)
        if slow.fix_text is not None:  # ftfy changes the slow rules; the vectors record the ftfy-less ones
            raise RuntimeError("ftfy is installed: uninstall it to generate the tokenizer vectors")
        fast = CLIPTokenizerFast(vocab_file=vocab_file, merges_file=merges_file, model_max_length=max_length)
        vocab_text, merges_text = (folder / "vocab.json").read_text("utf-8"), (folder / "merges.txt").read_text("utf-8")
    cases = []
    for text in texts:
        kwargs = {"padding": "max_length", "max_length": max_length, "truncation": True}
        ids, slow_ids = fast(text, **kwargs)["input_ids"], slow(text, **kwargs)["input_ids"]
        words = fast.tokenize(text)  # BPE symbols, special tokens included, before truncation
        case = {"text": text, "tokens": words, "input_ids": ids}
        if slow_ids != ids:
            case["slow_input_ids"] = slow_ids
        cases.append(case)
    return {"name": name, "vocab_json": vocab_text, "merges_txt": merges_text, "tokenizer": _section(fast, max_length),
            "cases": cases}


def build_vectors() -> dict[str, Any]:
    """The whole vectors document (deterministic: same transformers/tokenizers → same bytes)."""
    import tokenizers
    import transformers

    return {
        "name": NAME,
        "generator": COMMAND,
        "made_with": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                      "input_ids": "CLIPTokenizerFast", "slow_input_ids": "CLIPTokenizer (no ftfy), only where it differs"},
        "template": "[bos_token_id] + word ids[: max_length - 2] + [eos_token_id], then pad_token_id up to max_length",
        "sets": [
            _tokenizer_set("byte_level", _byte_level_vocab, 16),
            _tokenizer_set("merges", _merged_vocab, 12),
            _tokenizer_set("emoji_teacher", _emoji_teacher_vocab, _emoji_max_length(), EMOJI_TEXTS + TEXTS),
        ],
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 when --out differs from a fresh generation")
    args = parser.parse_args(argv)
    text = render(build_vectors())
    if args.check:
        same = args.out.is_file() and args.out.read_text("utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'STALE (regenerate with ' + COMMAND + ')'}")
        return 0 if same else 1
    from cdx.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
