"""CLIP's byte-level BPE written from the manifest's `tokenizer` section and its files alone (no transformers).

The reference the JS/Kotlin/Swift tokenizers are written against: if this reproduces `vectors.json` (made by the
student's own Hugging Face tokenizer), the manifest's rules are complete. Steps: normalize (NFC, whitespace runs →
one space, lowercase) → words = matches of `split_pattern` → each word's UTF-8 bytes through GPT-2's
bytes_to_unicode → `end_of_word_suffix` on the last symbol → merge the lowest-ranked adjacent pair until none is in
merges.txt → ids from vocab.json → [bos] + ids[: max_length - 2] + [eos], padded with pad_token_id.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

import regex

from cdx.errors import InputError


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def normalize(text: str, steps: list[str]) -> str:
    """The manifest's `normalize` steps, in order."""
    for step in steps:
        if step == "nfc":
            text = unicodedata.normalize("NFC", text)
        elif step == "collapse_whitespace":
            text = regex.sub(r"\s+", " ", text)
        elif step == "lowercase":
            text = text.lower()
        else:
            raise InputError(f"tokenizer: unknown normalize step {step!r}")
    return text


class ClipTokenizer:
    """prompt → input_ids, from a manifest `tokenizer` section and the folder its files are in."""

    def __init__(self, folder: str | Path, section: dict[str, Any]):
        folder = Path(folder)
        files = section["files"]
        try:
            self.vocab: dict[str, int] = json.loads((folder / files["vocab"]).read_text("utf-8"))
            lines = (folder / files["merges"]).read_text("utf-8").splitlines()
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{folder}: cannot read the tokenizer files ({exc})") from None
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        self.ranks = {tuple(line.split()): rank for rank, line in enumerate(lines) if len(line.split()) == 2}
        self.section = section
        self.pattern = regex.compile(section["split_pattern"])
        self.suffix = section["end_of_word_suffix"]

    def bpe(self, word: str) -> list[str]:
        """One word's symbols after every merge (lowest rank first)."""
        symbols = [*word[:-1], word[-1] + self.suffix]
        while len(symbols) > 1:
            pairs = [(self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(itertools.pairwise(symbols))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            first, second = symbols[i], symbols[i + 1]
            merged, j = [], 0
            while j < len(symbols):  # merge every occurrence of this pair, left to right
                if j < len(symbols) - 1 and symbols[j] == first and symbols[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            symbols = merged
        return symbols

    def word_ids(self, text: str) -> list[int]:
        table = bytes_to_unicode()
        unk = self.section.get("unk_token_id")
        ids: list[int] = []
        for word in self.pattern.findall(normalize(text, self.section["normalize"])):
            for symbol in self.bpe("".join(table[b] for b in word.encode("utf-8"))):
                if symbol in self.vocab:
                    ids.append(self.vocab[symbol])
                elif unk is not None:
                    ids.append(int(unk))
        return ids

    def __call__(self, text: str) -> list[int]:
        """input_ids of `text`, laid out by the manifest's template (always max_length long)."""
        length = int(self.section["max_length"])
        ids = [self.section["bos_token_id"], *self.word_ids(text)[: length - 2], self.section["eos_token_id"]]
        return ids + [self.section["pad_token_id"]] * (length - len(ids))
