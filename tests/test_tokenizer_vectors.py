"""The shared CLIP tokenizer vectors (tests/data/tokenizer_vectors.json) are what transformers does today.

The JS (tests/test_web_demo.py), Kotlin (tests/test_android_demo.py) and Swift (tests/test_ios_demo.py) tokenizers are
checked against this file; here it is regenerated from transformers' CLIPTokenizerFast / CLIPTokenizer and must be
byte-identical, so neither a hand edit nor a tokenizer change can go unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path

from cdx import tokenizer_vectors

VECTORS = Path(__file__).parent / "data" / "tokenizer_vectors.json"


def test_vectors_file_is_what_transformers_produces() -> None:
    assert VECTORS.read_text("utf-8") == tokenizer_vectors.render(tokenizer_vectors.build_vectors()), (
        f"stale: regenerate with {tokenizer_vectors.COMMAND}")


def test_vectors_cover_every_rule() -> None:
    """Merges that fire, truncation, padding, bos/eos, specials in the text, and the fast/slow divergences recorded;
    each set's `tokenizer` is a valid manifest tokenizer section."""
    import jsonschema

    schema = json.loads((Path(__file__).parents[1] / "cdx" / "schemas" / "manifest.schema.json").read_text())
    doc = json.loads(VECTORS.read_text("utf-8"))
    for s in doc["sets"]:
        jsonschema.validate(s["tokenizer"], {"$defs": schema["$defs"], "$ref": "#/$defs/tokenizer"})
    sets = {s["name"]: s for s in doc["sets"]}
    assert set(sets) == {"byte_level", "merges", "emoji_teacher"}
    for s in sets.values():
        sec, length = s["tokenizer"], s["tokenizer"]["max_length"]
        assert sec["normalize"] == ["nfc", "collapse_whitespace", "lowercase"] and sec["end_of_word_suffix"] == "</w>"
        for case in s["cases"]:
            ids = case["input_ids"]
            assert len(ids) == length and ids[0] == sec["bos_token_id"] and sec["eos_token_id"] in ids[1:]
        assert any(len(c["tokens"]) > length - 2 for c in s["cases"])  # truncated
        assert any(c["input_ids"][-1] == sec["pad_token_id"] and len(c["tokens"]) < length - 3 for c in s["cases"])
        assert any("<|endoftext|>" in c["tokens"] for c in s["cases"])
        assert any("slow_input_ids" in c for c in s["cases"])
    merged = [t for c in sets["merges"]["cases"] for t in c["tokens"] if len(t.replace("</w>", "")) > 1]
    assert {"apple</w>", "red</w>", "face</w>", "'s</w>", "redd", "appl"} <= set(merged)
