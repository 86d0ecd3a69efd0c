"""Deepen a student UNet without changing what it computes (Net2Net-style identity layers).

A consistency student starts as a copy of its teacher's UNet, so it has exactly the teacher's capacity, while its
job (noise → sample in one step) is harder than the teacher's (one denoising step). `deepen_unet` rebuilds a diffusers
`UNet2DConditionModel` with more resnets (and attentions) per block and maps the old weights in so that the new
network computes the same function: each added down-block resnet has a zero last convolution (the residual branch
adds nothing), each added attention a zero output projection, and each added up-block resnet passes its hidden state
through its 1×1 shortcut unchanged and ignores the skip it is handed (the skip order of the deeper network puts a
copy of the old skip there). Training then grows the new layers from zero, as ControlNet's zero convolutions do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from cdx.errors import InputError

_BLOCK_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")


def _layers(unet: torch.nn.Module) -> int:
    layers = unet.config.layers_per_block
    if not isinstance(layers, int):
        raise InputError(f"layers_per_block {layers!r}: only a single int per UNet can be deepened")
    return layers


def _zero(module: torch.nn.Module) -> None:
    for p in module.parameters():
        torch.nn.init.zeros_(p)


def _zero_attention_output(attention: torch.nn.Module) -> None:
    """An added attention as the identity: its residual connection carries the input, the projection out adds 0."""
    if hasattr(attention, "to_out"):  # diffusers Attention (AttnDownBlock2D / AttnUpBlock2D)
        _zero(attention.to_out[0])
    elif hasattr(attention, "proj_out"):  # Transformer2DModel (CrossAttn*Block2D)
        _zero(attention.proj_out)
    else:
        raise InputError(f"{type(attention).__name__}: an attention layer cdx cannot start as the identity")


def _identity_up_resnet(resnet: torch.nn.Module) -> None:
    """An added up-block resnet as the identity on its hidden state: the input is cat(hidden, skip), the shortcut
    keeps the hidden channels, the residual branch adds 0."""
    _zero(resnet.conv2)
    shortcut = resnet.conv_shortcut
    if shortcut is None:
        raise InputError("an up-block resnet without a 1×1 shortcut: cdx cannot start it as the identity")
    out_channels = shortcut.weight.shape[0]
    with torch.no_grad():
        shortcut.weight.zero_()
        shortcut.weight[:, :out_channels, 0, 0] = torch.eye(out_channels)
        if shortcut.bias is not None:
            shortcut.bias.zero_()


def _new_key(key: str, added: int) -> str:
    """Where an old weight goes: down-block layers keep their index; up-block layer 0 stays and later ones move
    past the `added` identity layers inserted after it."""
    match = _BLOCK_LAYER.match(key)
    if not match or match.group(1) == "down_blocks":
        return key
    kind, block, layer_type, index, rest = match.groups()
    index = int(index)
    return f"{kind}.{block}.{layer_type}.{index + added if index > 0 else index}.{rest}"


def deepen_unet(unet: torch.nn.Module, layers_per_block: int, seed: int = 0) -> torch.nn.Module:
    """A copy of `unet` with `layers_per_block` resnets (and attentions) per down block (one more per up block),
    computing the same function as `unet` (up to float rounding); the added layers' other weights get diffusers'
    default initialisation from `seed`."""
    old_layers = _layers(unet)
    if layers_per_block <= old_layers:
        raise InputError(f"--layers-per-block {layers_per_block}: the UNet already has {old_layers} per block "
                         "(deepening needs more)")
    added = layers_per_block - old_layers
    torch.manual_seed(seed)
    deeper = type(unet).from_config({**dict(unet.config), "layers_per_block": layers_per_block})
    state = deeper.state_dict()
    for key, value in unet.state_dict().items():
        state[_new_key(key, added)] = value.clone()
    deeper.load_state_dict(state)
    for block in deeper.down_blocks:
        for index in range(old_layers, layers_per_block):
            _zero(block.resnets[index].conv2)
            if getattr(block, "attentions", None):
                _zero_attention_output(block.attentions[index])
    for block in deeper.up_blocks:
        for index in range(1, 1 + added):
            _identity_up_resnet(block.resnets[index])
            if getattr(block, "attentions", None):
                _zero_attention_output(block.attentions[index])
    return deeper.to(dtype=next(unet.parameters()).dtype)


def deepen_student_folder(student: str | Path, out: str | Path, layers_per_block: int, seed: int = 0,
                          overwrite: bool = False) -> dict[str, Any]:
    """`student` copied to `out` (atomically) with its UNet deepened to `layers_per_block` (same outputs; see
    `deepen_unet`) and the step recorded in cdx.json (`deepen`); returns that record."""
    from diffusers import UNet2DConditionModel

    from cdx.distill.loading import _from_pretrained
    from cdx.distill.stage_folder import copy_with_component

    student = Path(student)
    unet_dir = student / "unet"
    if not (unet_dir / "config.json").is_file():
        raise InputError(f"--student {student}: not found (need {unet_dir}/config.json)")
    unet = _from_pretrained(UNet2DConditionModel, unet_dir)  # safetensors only, checked; one line on failure
    deeper = deepen_unet(unet, layers_per_block, seed)
    record = {"from": str(student), "layers_per_block": [_layers(unet), layers_per_block], "seed": seed,
              "parameters": [sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in deeper.parameters())]}
    copy_with_component(student, Path(out), "unet", deeper, "deepen", record, overwrite)
    return record
