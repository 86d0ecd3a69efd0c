"""The text encoder as its own exported graph (`text_encoder` role), and the tokenizer record a device needs.

A text student's generator takes `text_embedding` (the CLIP text encoder's last hidden state); so that a phone or a
browser can take a *prompt*, convert also exports the student's own text encoder and ships its tokenizer:

    prompt --tokenizer (manifest `tokenizer`, files in the bundle)--> input_ids int64 [1, max_length]
           --text_encoder graph--> text_embedding float32 [1, max_length, hidden]  (= the generator's input of that name)

Manifest format (additive; `cdx/schemas/manifest.schema.json` is the contract):
- `models[]` gets one entry with `role: "text_encoder"`, `contains: ["text_encoder"]`, input `input_ids`
  (int64 [1, L]; int32 in a Core ML spec, like class labels), output `text_embedding` (float32 [1, L, D]), golden data
  (one sample per prompt: `golden.seeds` = prompt indices, `golden.prompts` = the texts) and its own parity record.
- That entry's `tokenizer` section: `type: "clip_bpe"`; `files.vocab` (vocab.json, {token: id}), `files.merges`
  (merges.txt, rank = line order, a leading `#version` line is a header), `files.vectors` (vectors.json:
  [{"text", "input_ids"}] written by the student's own Hugging Face tokenizer: the cross-language test vectors);
  `max_length`, `bos_token_id`, `eos_token_id`, `pad_token_id`, `unk_token_id`; `normalize` (in order: NFC, collapse
  whitespace runs to one space, lowercase); `split_pattern` (regex; the words are its matches); `byte_level: "gpt2"`
  (UTF-8 bytes → GPT-2's bytes_to_unicode characters); `end_of_word_suffix` ("</w>" on a word's last symbol); then
  BPE by merge rank, and the `template`: [bos] + ids[: L - 2] + [eos], padded with pad_token_id to L.
  `cdx/clip_tokenizer.py` implements exactly this from the manifest and files alone (the reference for JS/Kotlin/Swift).
- `conditioning.prompts` records the prompt set (texts, source, the --prompts file and its sha256) and names two
  files, also the text encoder's golden data: `input_ids` (int64 [P, L]) and `text_embedding` (float32 [P, L, D]),
  raw little-endian. Rule: a graph's `text_embedding` for its i-th seed is row i % P (golden data, `manifest_inputs`);
  the conditioning-sensitivity contrast takes row (i + 1) % P; int8 calibration sample j takes row j % P. They are
  written for every text student; the text encoder graph itself comes with `cdx convert` (`--no-text-encoder` skips
  it; library callers pass `ConvertOptions(text_encoder=True)`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cdx.distill.generator import TensorSpec
from cdx.distill.loading import LatentPipelineParts
from cdx.errors import InputError, UnsupportedError

TOKENIZER_DIR = "tokenizer"
# CLIP's pre-tokenizer (openai/CLIP simple_tokenizer.py, HF CLIPTokenizerFast's Split), special tokens left out:
# text containing literal "<|startoftext|>" is an edge case no device prompt box needs.
CLIP_SPLIT_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
CLIP_NORMALIZE = ["nfc", "collapse_whitespace", "lowercase"]
TEMPLATE = "[bos_token_id] + word ids[: max_length - 2] + [eos_token_id], then pad_token_id up to max_length"
# Strings that exercise every rule (case, whitespace runs, contractions, digits, punctuation, non-ASCII, truncation).
VECTOR_TEXTS = [
    "", "a red apple", "  Grinning   FACE\twith\nbig eyes  ", "it's the cat's toy, isn't it?", "flag: France",
    "1234 apples & 56 pears!!", "café crème brûlée", "naïve résumé", "smiling face with heart-eyes 😍",
    "ÅNGSTRÖM über straße", "a very long prompt " * 12,
]


class TextEncoderGraph(nn.Module):
    """input_ids → the text encoder's last hidden state: the `text_embedding` every generator of this student takes."""

    role = "text_encoder"

    def __init__(self, parts: LatentPipelineParts, example_ids: np.ndarray | None = None):
        super().__init__()
        if parts.text_encoder is None or parts.tokenizer is None:
            raise UnsupportedError(f"{parts.path}: no text_encoder/ and tokenizer/ to export (a text student needs both)")
        self.text_encoder = parts.text_encoder
        # transformers' plain attention (matmul + softmax): its SDPA path slices the mask into `aten.alias`, which
        # coremltools cannot convert; same numerics (tested), and one graph serves every target.
        self.text_encoder.set_attn_implementation("eager")
        self.length = parts.text_sequence_length
        self.hidden = int(parts.text_encoder.config.hidden_size)
        self.vocab_size = int(parts.text_encoder.config.vocab_size)
        self._example = example_ids if example_ids is not None else tokenize(parts, ["an image"])
        # Constants instead of what transformers builds per call, so the graph is plain ops every target takes: the
        # causal mask (built with `expand` + mask logic that ExecuTorch leaves on portable kernels) and the position
        # ids (a full slice of its buffer becomes `aten.alias`, which coremltools cannot convert).
        upper = torch.ones(self.length, self.length, dtype=torch.bool).triu(1)
        mask = torch.zeros(self.length, self.length).masked_fill(upper, torch.finfo(torch.float32).min)
        self.register_buffer("causal_mask", mask[None, None].clone(), persistent=False)
        self.register_buffer("position_ids", torch.arange(self.length)[None].clone(), persistent=False)

    def contains(self) -> list[str]:
        return ["text_encoder"]

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("input_ids", (1, self.length), "int64", (0, self.vocab_size - 1),
                           "token ids from the manifest's tokenizer (bos, words, eos, padding)")]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("text_embedding", (1, self.length, self.hidden), "float32",
                           description="text encoder last hidden state (the generator's text_embedding input)")]

    def example_inputs(self, seed: int = 0, **_: Any) -> dict[str, torch.Tensor]:
        """The token ids of one real prompt (`seed` picks which of the example prompts)."""
        row = torch.from_numpy(self._example[seed % len(self._example)].copy())
        return {"input_ids": row[None]}  # unsqueeze, not numpy's [None]: its 0 stride is refused by ExecuTorch

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """CLIPTextTransformer's last hidden state (embeddings → causal encoder → final LayerNorm) with the constants
        above, and without the pooled output (an argmax gather no generator uses): equal to
        `text_encoder(input_ids)[0]` (tested)."""
        model = self.text_encoder.text_model
        hidden = model.embeddings(input_ids=input_ids, position_ids=self.position_ids)
        hidden = model.encoder(inputs_embeds=hidden, causal_attention_mask=self.causal_mask).last_hidden_state
        return model.final_layer_norm(hidden)


def tokenize(parts: LatentPipelineParts, prompts: list[str]) -> np.ndarray:
    """int64 [len(prompts), L]: exactly the ids distillation fed the text encoder (`conditioning._encode_prompts`)."""
    tokens = parts.tokenizer(prompts, padding="max_length", max_length=parts.text_sequence_length, truncation=True,
                             return_tensors="np")
    return tokens.input_ids.astype(np.int64)


@torch.inference_mode()
def encode(parts: LatentPipelineParts, prompts: list[str]) -> np.ndarray:
    """float32 [len(prompts), L, D]: the student's own text encoder on `prompts` (one prompt per call, batch 1,
    as the exported graph runs)."""
    graph = TextEncoderGraph(parts)
    ids = tokenize(parts, prompts)
    return np.concatenate([graph(torch.from_numpy(row[None])).numpy() for row in ids]).astype(np.float32)


def _special_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None)
    return None if value is None else int(value)


def tokenizer_section(parts: LatentPipelineParts, folder: Path) -> dict[str, Any]:
    """Write vocab.json, merges.txt and vectors.json under `folder/tokenizer/`; return the manifest's `tokenizer`.

    Only CLIP's byte-level BPE is described (every Stable Diffusion text encoder); other tokenizers are refused,
    never half-described."""
    tokenizer = parts.tokenizer
    name = type(tokenizer).__name__
    if not name.startswith("CLIPTokenizer"):
        raise UnsupportedError(f"{parts.path}: tokenizer {name} is not CLIP's byte-level BPE; only CLIPTokenizer(Fast) "
                               "can be described in the manifest for devices")
    out = folder / TOKENIZER_DIR
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_vocabulary(str(out))
    for file in ("vocab.json", "merges.txt"):
        if not (out / file).is_file():
            raise UnsupportedError(f"{parts.path}: {name}.save_vocabulary wrote no {file}")
    _check_rules(tokenizer, parts.path)
    ids = tokenize(parts, VECTOR_TEXTS)
    vectors = [{"text": text, "input_ids": [int(i) for i in row]} for text, row in zip(VECTOR_TEXTS, ids, strict=True)]
    (out / "vectors.json").write_text(json.dumps(vectors, ensure_ascii=False, indent=1) + "\n", "utf-8")
    return {
        "type": "clip_bpe",
        "files": {"vocab": f"{TOKENIZER_DIR}/vocab.json", "merges": f"{TOKENIZER_DIR}/merges.txt",
                  "vectors": f"{TOKENIZER_DIR}/vectors.json"},
        "max_length": parts.text_sequence_length,
        "bos_token_id": _special_id(tokenizer, "bos"),
        "eos_token_id": _special_id(tokenizer, "eos"),
        "pad_token_id": _special_id(tokenizer, "pad"),
        "unk_token_id": _special_id(tokenizer, "unk"),
        "normalize": list(CLIP_NORMALIZE),
        "split_pattern": CLIP_SPLIT_PATTERN,
        "byte_level": "gpt2",
        "end_of_word_suffix": "</w>",
        "template": TEMPLATE,
        "source_class": name,
    }


def _check_rules(tokenizer: Any, where: str) -> None:
    """A fast tokenizer carries its rules as data: refuse one whose normalizer/pre-tokenizer differ from CLIP's,
    so the manifest never describes rules the student's tokenizer does not follow."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # the slow CLIPTokenizer: its rules are CLIP's by construction (checked by the vectors test)
        return
    data = json.loads(backend.to_str())
    kinds = [n["type"] for n in (data.get("normalizer") or {}).get("normalizers", [])]
    pre = [p["type"] for p in (data.get("pre_tokenizer") or {}).get("pretokenizers", [])]
    suffix = (data.get("model") or {}).get("end_of_word_suffix")
    if kinds != ["NFC", "Replace", "Lowercase"] or pre != ["Split", "ByteLevel"] or suffix != "</w>":
        raise UnsupportedError(f"{where}: tokenizer rules differ from CLIP's (normalizer {kinds}, pre-tokenizer {pre}, "
                               f"end-of-word suffix {suffix!r}); cannot describe them for devices")


def read_vectors(folder: Path, section: dict[str, Any]) -> list[dict[str, Any]]:
    """The tokenizer test vectors a manifest names (for the tests and the app checks)."""
    path = folder / section["files"]["vectors"]
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read tokenizer vectors ({exc})") from None
