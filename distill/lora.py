"""LCM-LoRA (Luo et al. 2023, "LCM-LoRA: a universal Stable-Diffusion acceleration module").

The student is the frozen teacher UNet plus a `peft` LoRA; only the adapters train, the target network is the EMA
of the adapters on the same frozen base. What ships is the LoRA alone, in diffusers' format
(`pytorch_lora_weights.safetensors`), so the user's own teacher pipeline loads it with `load_lora_weights(dir)` and
samples in 1–4 steps with `LCMScheduler`; `cdx convert --lora DIR` fuses it into the base before export.

Plain LoRA adds no new layers, so the guidance scale cannot become a student input (LCM's w-embedding needs the new
`time_cond_proj_dim` projection): the teacher's CFG scale inside the target is drawn from `--guidance-min/max`
(one fixed value when they are equal) and baked into the adapters, as diffusers' LCM-LoRA scripts do. A teacher
that already has `time_cond_proj_dim` keeps its w input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cdx.errors import InputError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_INFO = "cdx.json"
# The layers diffusers' train_lcm_distill_lora_sd_wds.py adapts: attention, feed-forward, resnet convolutions,
# down/up-samplers and the time-embedding projections.
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                  "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def add_lora(unet: torch.nn.Module, rank: int) -> torch.nn.Module:
    """Freeze `unet` and give it a rank-`rank` LoRA (B = 0, so it starts as the teacher); adapters stay float32."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    if not isinstance(unet, UNet2DConditionModel):
        raise InputError(f"--lora-rank needs a UNet2DConditionModel teacher (diffusers' LoRA loaders), "
                         f"not {type(unet).__name__}")
    present = {name.rsplit(".", 1)[-1] for name, _ in unet.named_modules()}
    targets = [t for t in TARGET_MODULES if t.rsplit(".", 1)[-1] in present]
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    return unet.train()


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters with peft's keys, as diffusers' LCM-LoRA script saves them (`save_lora_weights` adds the
    `unet.` prefix; `load_lora_weights` reads them as they are). The older `lora.down/up` naming of
    `convert_state_dict_to_diffusers` is NOT used: diffusers 0.39 reloads it without the attention adapters."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def save_lora(folder: Path, unet: torch.nn.Module, info: dict[str, Any]) -> Path:
    """`folder/pytorch_lora_weights.safetensors` (diffusers' LoRA format) + cdx.json (the recipe, parameterization)."""
    from diffusers import StableDiffusionPipeline

    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=lora_state_dict(unet), safe_serialization=True)
    (folder / LORA_INFO).write_text(json.dumps({"kind": "lora", **info}, indent=2) + "\n", "utf-8")
    return folder / LORA_WEIGHTS


def read_lora_info(folder: Path) -> dict[str, Any]:
    path = Path(folder) / LORA_INFO
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def fuse_lora(unet: torch.nn.Module, folder: str | Path) -> torch.nn.Module:
    """Load the LoRA at `folder` into `unet`, merge it into the base weights and drop the adapter layers, so export
    sees a plain UNet (the fused student)."""
    folder = Path(folder)
    if not (folder / LORA_WEIGHTS).is_file():
        raise InputError(f"{folder}: no {LORA_WEIGHTS} (expected a LoRA folder written by `cdx distill --lora-rank`)")
    if not hasattr(unet, "load_lora_adapter"):
        raise InputError(f"--lora needs a UNet2DConditionModel base, not {type(unet).__name__}")
    from diffusers import StableDiffusionPipeline

    try:  # the same two calls `pipeline.load_lora_weights(folder)` makes, onto the bare UNet
        state, alphas = StableDiffusionPipeline.lora_state_dict(folder, weight_name=LORA_WEIGHTS)
        if not any(k.startswith("unet.") for k in state):
            raise InputError(f"{folder / LORA_WEIGHTS}: no 'unet.' LoRA keys")
        StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet, adapter_name="cdx_lora")
    except (ValueError, RuntimeError, KeyError) as exc:
        raise InputError(f"{folder / LORA_WEIGHTS}: does not fit this base UNet ({str(exc).splitlines()[0][:200]})") from None
    unet.fuse_lora(lora_scale=1.0, adapter_names=["cdx_lora"])
    unet.unload_lora()
    return unet.eval()
