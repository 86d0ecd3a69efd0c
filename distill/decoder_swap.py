"""A distilled tiny decoder (`cdx distill-decoder`, or any diffusers `AutoencoderTiny` such as TAESD) in place of a
pipeline's VAE decoder: load and check the folder, swap it into the loaded parts, measure its drift.

Latent convention (diffusers'): a pipeline decodes with `vae.decode(latents / vae.config.scaling_factor +
vae.config.shift_factor)`. cdx's tiny decoders follow TAESD: `scaling_factor` 1.0 and `shift_factor` 0.0, so the
decoder takes the diffusion model's (scaled) latents directly — unit-variance values that suit the decoder's
`tanh(x / 3) · 3` input clamp — and returns images in [-1, 1] like the teacher's. A tiny decoder with other factors
(taesd3, taef1) is decoded with its own factors, as diffusers pipelines do. So swapping `parts.vae` is the whole
change: the generator and the decoder graph read the factors from the VAE they hold.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderTiny

from cdx.distill.loading import LatentPipelineParts, vae_scale_factor
from cdx.errors import InputError

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def decoder_weights_sha256(folder: str | Path) -> str:
    """sha256 of the decoder folder's weights file (what the manifest records and the eager runner checks)."""
    from cdx.atomic import sha256_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(f"--decoder {folder}: missing {WEIGHTS_FILE}")
    return sha256_file(path)


def vae_decoder_sha256(vae: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of what decodes a latent (`post_quant_conv`, `decoder`): the
    identity of the decoder a tiny decoder imitates, whatever folder or file it was loaded from."""
    import hashlib

    digest = hashlib.sha256()
    for prefix in ("post_quant_conv", "decoder"):
        module = getattr(vae, prefix, None)
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            value = tensor.detach().cpu().contiguous()
            digest.update(f"{prefix}.{name}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim and bf16 tensors too
    return digest.hexdigest()


def decoder_source_record(folder: str | Path, vae: torch.nn.Module) -> dict[str, Any]:
    """Was the tiny decoder at `folder` distilled from `vae`'s decoder? Its `cdx.json` (written by `cdx distill-decoder`)
    records the teacher decoder's fingerprint (`vae_decoder_sha256`); a different one means it imitates another decoder (say, the
    VAE before a fine-tune) and its images drift from the student's. {} when the folder has no such record (TAESD,
    older folders)."""
    from cdx.distill.loading import read_cdx_info

    recorded = read_cdx_info(Path(folder)).get("teacher_decoder_sha256")
    if not recorded:
        return {}
    current = vae_decoder_sha256(vae)
    return {"distilled_from_decoder_sha256": recorded, "student_decoder_sha256": current,
            "matches_student_decoder": recorded == current}


def decoder_mismatch_warning(folder: str | Path, record: dict[str, Any], student: str | Path) -> str | None:
    """One line for `cdx convert` when the manifest's decoder record says it imitates another decoder; else None."""
    if record.get("matches_student_decoder") is not False:
        return None
    return (f"warning: --decoder {folder} was distilled from another VAE decoder (its cdx.json: teacher_decoder_sha256 "
            f"{record['distilled_from_decoder_sha256'][:12]}…, the student's: {record['student_decoder_sha256'][:12]}…): "
            f"its images drift from the student's; re-run `cdx distill-decoder --model {student}`")


def check_decoder_folder(folder: str | Path) -> None:
    """What can be said of a `--decoder` folder before any model loads: it exists and holds an AutoencoderTiny."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise InputError(f"--decoder {folder}: no such folder")
    if not config_path.is_file():
        raise InputError(f"--decoder {folder}: not a diffusers model folder (missing config.json)")
    try:
        cls = json.loads(config_path.read_text("utf-8")).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{config_path}: cannot read JSON ({exc})") from None
    if cls != "AutoencoderTiny":
        raise InputError(f"--decoder {folder}: {config_path.name} names class {cls!r}, expected 'AutoencoderTiny' "
                         "(a folder written by `cdx distill-decoder`, or TAESD)")
    if not (folder / WEIGHTS_FILE).is_file():
        raise InputError(f"--decoder {folder}: missing {WEIGHTS_FILE}")


def load_tiny_decoder(folder: str | Path) -> AutoencoderTiny:
    """An `AutoencoderTiny` folder (safetensors only), or one line naming what is wrong with it."""
    from cdx.distill.loading import _from_pretrained

    check_decoder_folder(folder)
    return _from_pretrained(AutoencoderTiny, Path(folder))


def check_decoder_fits(decoder: torch.nn.Module, parts: LatentPipelineParts, where: str) -> None:
    """The decoder must take the student's latents (channels) and give the teacher's image (channels, scale)."""
    config, full = decoder.config, parts.vae.config
    if int(config.latent_channels) != parts.latent_channels:
        raise InputError(f"{where}: decoder takes {config.latent_channels} latent channels, the student "
                         f"({parts.path}) makes {parts.latent_channels}")
    if int(config.out_channels) != int(full.out_channels):
        raise InputError(f"{where}: decoder writes {config.out_channels} image channels, the student's VAE "
                         f"{full.out_channels}")
    if vae_scale_factor(decoder) != parts.vae_scale_factor:
        raise InputError(f"{where}: decoder upsamples {vae_scale_factor(decoder)}×, the student's VAE "
                         f"{parts.vae_scale_factor}× (give the tiny decoder as many blocks as the VAE has levels)")


def with_decoder(parts: LatentPipelineParts, folder: str | Path) -> tuple[LatentPipelineParts, dict[str, Any]]:
    """`parts` with the tiny decoder at `folder` as its VAE for every step count, and the manifest's record of it
    (class, path, sha256)."""
    decoder = load_tiny_decoder(folder)
    check_decoder_fits(decoder, parts, f"--decoder {folder}")
    source = decoder_source_record(folder, parts.vae)
    record = {
        "class": type(decoder).__name__,
        "path": str(Path(folder).resolve()),
        "sha256": decoder_weights_sha256(folder),
        "num_parameters": sum(p.numel() for p in decoder.decoder.parameters()),
        "latent_scaling_factor": float(decoder.config.scaling_factor),
        "latent_shift_factor": float(getattr(decoder.config, "shift_factor", 0.0) or 0.0),
        "replaces": {"class": type(parts.vae).__name__,
                     "num_parameters": sum(p.numel() for p in parts.vae.decoder.parameters())},
        **source,
    }
    # The chosen decoder draws every sampler's images (a student's multi-step decoder included).
    return dataclasses.replace(parts, vae=decoder.eval(), multistep_vae=None), record


def image_drift(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM and max |Δ| of images in [0, 1] (NCHW) against the full decoder's (cdx.metrics)."""
    from cdx.metrics import max_abs_diff, psnr, ssim

    return {"psnr_db": psnr(reference, test), "ssim": ssim(reference, test), "max_abs": max_abs_diff(reference, test)}


@torch.inference_mode()
def generator_drift(full_parts: LatentPipelineParts, generator: torch.nn.Module, schedule: dict[str, Any],
                    batches: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Drift of a generator built with a tiny decoder vs the same generator with the full decoder, on the same inputs
    (golden seeds): what swapping the decoder costs, recorded in the manifest beside the parity of each artifact."""
    from cdx.distill.generator import OneStepGenerator

    full_schedule = {**schedule, "latent_scaling_factor": full_parts.latent_scaling_factor,
                     "latent_shift_factor": full_parts.latent_shift_factor}
    full = OneStepGenerator(full_parts, full_schedule).eval()
    names = [s.name for s in generator.input_specs()]
    reference, test = [], []
    for batch in batches:
        args = [torch.from_numpy(batch[name]) for name in names]
        reference.append(full(*args).numpy())
        test.append(generator(*args).numpy())
    return {**image_drift(np.concatenate(reference), np.concatenate(test)), "seeds": len(batches),
            "measured_on": "the eager generator's images, same inputs, full vs tiny decoder"}
