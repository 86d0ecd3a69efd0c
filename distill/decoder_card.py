"""The model card of a tiny decoder folder: what it replaces, the exact command, time, machine and measured drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdx.atomic import atomic_write_text
from cdx.defaults import portable_path


def _drift_rows(drift: dict[str, Any]) -> list[str]:
    rows = ["| latents | n | PSNR vs teacher decoder | SSIM | max abs |", "|---|---:|---:|---:|---:|"]
    names = {"image_latents": "teacher VAE latents of training images", "student_samples": "one-step student samples"}
    for key, label in names.items():
        if key in drift:
            d = drift[key]
            rows.append(f"| {label} | {drift['n'][key]} | {d['psnr_db']:.2f} dB | {d['ssim']:.4f} | {d['max_abs']:.3f} |")
    return rows


def write_decoder_card(folder: Path, info: dict[str, Any], extra_md: str = "") -> Path:
    """Write `folder/README.md` from the run's record (`cdx.json`), plus an optional measured section."""
    size_mb = sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors")) / 1e6
    recipe = info["recipe"]
    name = info.get("folder") or portable_path(str(folder))
    lines = [
        "# Tiny decoder (AutoencoderTiny) distilled from the teacher's VAE decoder", "",
        f"- replaces: the `{info['teacher_vae_class']}` decoder of `{info['teacher']}` "
        f"({info['teacher_decoder_parameters']:,} parameters) with a TAESD-architecture decoder of "
        f"{info['decoder_parameters']:,} parameters (width {recipe['width']}, {recipe['depth']} blocks per level)",
        f"- weights: {size_mb:.2f} MB safetensors (encoder + decoder; generation uses the decoder only; the encoder is "
        + ("trained to the teacher's scaled latents)" if info.get("encoder_trained") else "NOT trained)"),
        "- latent convention: TAESD's — `scaling_factor` 1.0, `shift_factor` 0.0: it decodes the diffusion latents as "
        f"the student produces them (the teacher VAE decodes them divided by {info['teacher_latent_scaling_factor']:.6g}) "
        "to an image in [-1, 1], like the teacher's decoder",
        f"- training: {info['steps']} steps in {info['train_seconds']:.0f} s on {info['machine']}",
        f"- pixel loss ({recipe['pixel_loss']}): {info['pixel_loss_first']:.4g} (first 5 % of steps) → "
        f"{info['pixel_loss_last']:.4g} (last 5 %)",
        "", "## Measured drift vs the teacher's decoder (held-out latents, images in [0, 1])", "",
        *_drift_rows(info["drift"]), "",
    ]
    if extra_md:
        lines += [extra_md.strip(), ""]
    lines += [
        "## Reproduce", "", "```bash", info["command"], "```", "",
        "## Use", "", "```bash", f"cdx convert --decoder {name}   # the generator (or --mode components' decoder graph) "
        "with this decoder; the manifest records it and its drift", "```", "",
        "```python", "from diffusers import AutoencoderTiny",
        f'vae = AutoencoderTiny.from_pretrained("{name}")  # pipe.vae = vae in a diffusers pipeline of the same latents',
        "```", "",
        "## Recipe", "", "```json", json.dumps(recipe, indent=2), "```", "",
    ]
    path = Path(folder) / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path
