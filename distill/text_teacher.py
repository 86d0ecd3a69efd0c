"""The embedded text-to-image teacher: a small latent diffusion model that cdx trains from scratch on captioned images.

The same two stages as the class teacher (distill/teacher.py, whose autoencoder, scheduler and latent encoding it
reuses): an RGB `AutoencoderKL`, then a cross-attention `UNet2DConditionModel` trained jointly with a small
`CLIPTextModel` (ε-prediction, SD's β schedule, 10 % caption dropout to the empty prompt for classifier-free guidance,
EMA over UNet + text encoder). The tokenizer is a byte-level `CLIPTokenizer` (vocab.json + merges.txt, the format of
cdx.tiny_models) whose BPE merges are learned from the training captions, and whose length fits the longest caption.
Saved as a stock `StableDiffusionPipeline` folder: diffusers loads it with no remote code.

The UNet stage checkpoints through distill/checkpoint.py (Accelerate state + safetensors EMA and generator), so a
killed run resumes from the last checkpoint with `--work-dir` set to the same folder (weights, optimizer, EMA and
generator exactly; the interrupted epoch's data order restarts from the saved generator).
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.training_utils import EMAModel

from cdx.distill.progress import TrainingProgress
from cdx.distill.teacher import CDX_CONFIG, AutoencoderRecipe, ddpm_batch, encode_latents, teacher_scheduler, train_vae
from cdx.machine import describe_machine

MIN_TEXT_LENGTH = 16  # optimum's dummy text inputs have sequence length 16


@dataclass
class TextTeacherRecipe(AutoencoderRecipe):
    """Sizes and schedule of the embedded text-to-image teacher (sized for < 1 h on one core of a quiet 2-core CPU)."""

    channels: int = 3
    vae_steps: int = 3000
    vae_batch: int = 32
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    bpe_merges: int = 1500
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers: int = 1
    unet_heads: int = 4  # diffusers' `attention_head_dim` of UNet2DConditionModel is the number of heads
    unet_steps: int = 10000
    unet_batch: int = 32
    unet_lr: float = 3e-4
    text_lr: float = 3e-4
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    checkpoint_every: int = 1000


# ---- tokenizer ------------------------------------------------------------------------------------------------
def _byte_level_base() -> tuple[dict[str, int], Any]:
    """CLIP's byte-level alphabet (256 symbols, each also as a word end) + the two special tokens, as in tiny_models."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    encoder = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for symbol in encoder.values():
        vocab[symbol] = len(vocab)
    for symbol in encoder.values():
        vocab[symbol + "</w>"] = len(vocab)
    return vocab, encoder


def _words(tokenizer: Any, text: str) -> list[str]:
    """The byte-encoded words CLIPTokenizer itself splits `text` into (its cleaning, lower-casing and regex)."""
    from transformers.models.clip.tokenization_clip import whitespace_clean

    clean = whitespace_clean(" ".join(tokenizer.nlp.tokenize(text))).lower()
    return ["".join(tokenizer.byte_encoder[b] for b in word.encode("utf-8")) for word in tokenizer.pat.findall(clean)]


def learn_bpe(captions: list[str], max_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Sennrich BPE over the captions' words (most frequent pair first, ties by the pair itself: deterministic),
    until `max_merges` or no pair occurs twice. Returns the vocabulary (specials last) and the merges in rank order."""
    from transformers import CLIPTokenizer

    vocab, _ = _byte_level_base()
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(Path(tmp), {**vocab, "<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}, [])
        base = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"))
    counts = Counter(word for caption in captions for word in _words(base, caption))
    words = {(*w[:-1], w[-1] + "</w>"): n for w, n in counts.items()}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        words = {_merge(symbols, best): n for symbols, n in words.items()}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _write_tokenizer_files(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), "utf-8")


def build_tokenizer(folder: Path, captions: list[str], max_merges: int) -> Any:
    """A `CLIPTokenizer` with merges learned from `captions`; `model_max_length` = longest caption + BOS/EOS (≥ 16)."""
    from transformers import CLIPTokenizer

    vocab, merges = learn_bpe(captions, max_merges)
    _write_tokenizer_files(folder, vocab, merges)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    longest = max(len(tokenizer(c).input_ids) for c in captions)
    tokenizer.model_max_length = max(MIN_TEXT_LENGTH, longest)
    return tokenizer


def tokenize(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Token ids exactly as StableDiffusionPipeline.encode_prompt makes them (max_length padding, truncation)."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


# ---- models ---------------------------------------------------------------------------------------------------
def build_text_encoder(recipe: TextTeacherRecipe, tokenizer: Any):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(recipe.seed + 3)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.text_dim, intermediate_size=4 * recipe.text_dim,
        num_hidden_layers=recipe.text_layers, num_attention_heads=recipe.text_heads,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=recipe.text_dim,
    ))


def build_text_unet(recipe: TextTeacherRecipe) -> UNet2DConditionModel:
    """SD-shaped UNet: cross-attention in every down/up block and the mid block, at the latent's resolutions."""
    torch.manual_seed(recipe.seed + 1)
    latent = recipe.image_size // 2 ** (len(recipe.vae_channels) - 1)
    levels = len(recipe.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent, in_channels=recipe.latent_channels, out_channels=recipe.latent_channels,
        block_out_channels=recipe.unet_channels, layers_per_block=recipe.unet_layers,
        down_block_types=("CrossAttnDownBlock2D",) * levels, up_block_types=("CrossAttnUpBlock2D",) * levels,
        cross_attention_dim=recipe.text_dim, attention_head_dim=recipe.unet_heads, norm_num_groups=16,
    )


# ---- training -------------------------------------------------------------------------------------------------
def _batches(n: int, batch: int, generator: torch.Generator):
    while True:
        for idx in torch.randperm(n, generator=generator).split(batch):
            if idx.numel() == batch:
                yield idx


def train_text_unet(latents: torch.Tensor, tokens: torch.Tensor, empty: torch.Tensor, tokenizer: Any,
                    recipe: TextTeacherRecipe, accelerator, work: Path | None = None, show: bool = True):
    """ε-prediction training of UNet + text encoder with caption dropout; checkpoints in `work/checkpoints`.
    Returns (unet, text_encoder) with the EMA weights."""
    from cdx.distill.checkpoint import ema_tensors, resume_ema_run, save_checkpoint

    unet, text_encoder = build_text_unet(recipe), build_text_encoder(recipe, tokenizer)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(params, decay=recipe.ema_decay)
    noise_scheduler = teacher_scheduler()
    optimizer = torch.optim.AdamW([{"params": list(unet.parameters()), "lr": recipe.unet_lr},
                                   {"params": list(text_encoder.parameters()), "lr": recipe.text_lr}], weight_decay=0.0)
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 200))
    unet, text_encoder, optimizer, lr = accelerator.prepare(unet, text_encoder, optimizer, lr)
    gen = torch.Generator().manual_seed(recipe.seed + 2)
    began = time.perf_counter()
    root = work / "checkpoints" if work else None
    start, state = resume_ema_run(accelerator, root, gen, ema, show)
    smooth, history, previous_seconds = state.get("smooth"), state.get("history", []), float(state.get("seconds", 0.0))
    ema.to(accelerator.device)
    batches = _batches(len(latents), recipe.unet_batch, gen)  # after a resume: a new epoch order from the saved generator
    with TrainingProgress("text-to-image unet", recipe.unet_steps, start=start, enabled=show) as bar:
        for step in range(start + 1, recipe.unet_steps + 1):
            noisy, ids, noise, t = ddpm_batch(latents, tokens, next(batches), recipe.caption_dropout, empty,
                                              noise_scheduler, gen, accelerator.device)
            states = text_encoder(ids)[0]
            loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=states).sample, noise)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            lr.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(params)
            smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
            if step % 10 == 0 or step == recipe.unet_steps:
                bar.update(step, loss=smooth)
            if step % 250 == 0:
                history.append([step, round(smooth, 5)])
            if root and step % recipe.checkpoint_every == 0 and step < recipe.unet_steps:
                save_checkpoint(accelerator, root, step, ema_tensors(ema), gen, {"smooth": smooth, "history": history,
                                "recipe": recipe.as_dict(), "seconds": previous_seconds + time.perf_counter() - began})
    unet, text_encoder = accelerator.unwrap_model(unet).eval(), accelerator.unwrap_model(text_encoder).eval()
    ema.copy_to(params)
    return unet.cpu(), text_encoder.cpu(), history, previous_seconds + time.perf_counter() - began


def save_text_pipeline(folder: Path, unet, vae, text_encoder, tokenizer, info: dict[str, Any]) -> None:
    """A stock StableDiffusionPipeline folder (no safety checker, no feature extractor) + cdx.json."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=teacher_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / CDX_CONFIG).write_text(json.dumps(info, indent=2) + "\n", "utf-8")


def train_text_teacher(out: Path, data: Any, recipe: TextTeacherRecipe, work: Path | None = None, show: bool = True,
                       example_prompts: list[str] | None = None, data_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tokenizer → autoencoder → UNet + text encoder; save the pipeline into `out` (an existing staging folder).
    `data` has `images` (N, 3, H, W) in [-1, 1] and `captions`. With `work`, the autoencoder and UNet checkpoints
    live there and a rerun resumes."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tok_dir:  # the pipeline's own tokenizer/ folder is written by save_pretrained
        tokenizer = build_tokenizer(Path(tok_dir), list(data.captions), recipe.bpe_merges)
    vae_dir = work / "vae" if work else None
    if vae_dir and (vae_dir / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).eval()
        vae_seconds = float(json.loads((work / "vae-seconds.json").read_text("utf-8")))
    else:
        vae = train_vae(data, recipe, accelerator, show)
        vae_seconds = time.perf_counter() - start
        if vae_dir:
            vae.save_pretrained(vae_dir, safe_serialization=True)
            (work / "vae-seconds.json").write_text(json.dumps(round(vae_seconds, 1)), "utf-8")
    latents = encode_latents(vae, data.images).cpu() * vae.config.scaling_factor
    tokens, empty = tokenize(tokenizer, list(data.captions)), tokenize(tokenizer, [""])[0]
    # a fresh Accelerator: its saved state must hold only UNet + text encoder (+ optimizer), not the autoencoder
    unet, text_encoder, history, unet_seconds = train_text_unet(latents, tokens, empty, tokenizer, recipe, Accelerator(),
                                                                work, show)
    total = vae_seconds + unet_seconds  # training time summed over resumed runs (checkpoints carry the elapsed time)
    info = {"kind": "teacher", "conditioning": "text", "recipe": recipe.as_dict(), "train_images": len(data.images),
            "text_length": int(tokenizer.model_max_length), "vocab_size": len(tokenizer),
            "train_seconds": {"autoencoder": round(vae_seconds, 1), "unet": round(unet_seconds, 1), "total": round(total, 1)},
            "loss_history": history, "machine": describe_machine(str(accelerator.device)),
            "class_names": list(example_prompts or []), **(data_info or {})}
    save_text_pipeline(out, unet, vae, text_encoder, tokenizer, info)
    return info


def run_text_teacher(out: Path, data: str, vae_steps: int | None = None, unet_steps: int | None = None,
                     limit: int | None = None, seed: int = 0, overwrite: bool = False, work: Path | None = None,
                     show: bool = True) -> dict[str, Any]:
    """`cdx teacher train --data emoji|FOLDER`: load the captions, train, write `out` atomically."""
    from cdx.atomic import atomic_directory, refuse_existing
    from cdx.distill.emoji import load_captioned, read_records, split_records

    recipe = TextTeacherRecipe(seed=seed)
    recipe.vae_steps = recipe.vae_steps if vae_steps is None else vae_steps
    recipe.unet_steps = recipe.unet_steps if unet_steps is None else unet_steps
    refuse_existing(out, overwrite)  # before an hour of training, not after
    dataset = load_captioned(data, recipe.image_size, limit)
    data_info: dict[str, Any] = {"data": data, "categories": dataset.class_names}
    prompts = list(dict.fromkeys(dataset.captions))[:8]
    if data == "emoji":
        from cdx.distill.emoji import EMOJI_PACKAGE, held_out_prompts

        records = read_records()
        held = held_out_prompts(records)
        data_info.update(source=EMOJI_PACKAGE, split="train", held_out_prompts=len(held),
                         held_out_images=len(split_records(records, "held_out")))
        prompts = [next(c for c, label in held if label == k) for k in sorted({label for _, label in held})]
    if work:
        work.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out, overwrite=overwrite) as staging:
        return train_text_teacher(staging, dataset, recipe, work, show, prompts, data_info)
