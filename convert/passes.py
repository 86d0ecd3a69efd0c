"""Graph rewrites for mobile delegates, applied to a deep copy of the generator before `torch.export`.

Each pass is a named, listable, individually switchable function `module -> number of rewrites`. They
replace ops that the XNNPACK partitioner leaves on slow portable kernels (STACK.md: GroupNorm, LayerNorm,
nearest upsample and the attention-mask logic of SDPA) by the same math written with ops it delegates.
Every pass keeps numerics within float rounding (tests check <= 1e-5 against the original module).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cdx.errors import InputError


class DecomposedGroupNorm(nn.Module):
    """GroupNorm as reshape to 4-D (n, groups, c/groups, -1) -> mean over dims (2, 3) -> rsqrt -> affine.

    XNNPACK delegates `mean` only on 4-D tensors reduced over the two inner dims; a 3-D reshape is not delegated.
    """

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.num_groups = norm.num_groups
        self.eps = norm.eps
        self.weight = norm.weight if norm.affine else None
        self.bias = norm.bias if norm.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        grouped = x.reshape(n, self.num_groups, c // self.num_groups, -1)
        mean = grouped.mean(dim=(2, 3), keepdim=True)
        centered = grouped - mean
        var = (centered * centered).mean(dim=(2, 3), keepdim=True)
        y = (centered * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.weight is None:
            return y
        affine_shape = (1, c) + (1,) * (x.dim() - 2)
        return y * self.weight.reshape(affine_shape) + self.bias.reshape(affine_shape)


class DecomposedLayerNorm(nn.Module):
    """LayerNorm over the last dim, written as a 4-D mean over dims (2, 3) so XNNPACK delegates it."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        flat = x.reshape(-1, 1, 1, c)
        mean = flat.mean(dim=(2, 3), keepdim=True)
        centered = flat - mean
        var = (centered * centered).mean(dim=(2, 3), keepdim=True)
        y = (centered * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def nearest_upsample_2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Nearest 2x upsampling as a depthwise transposed conv with a 2x2 kernel of ones (exact; XNNPACK delegates it)."""
    return F.conv_transpose2d(x, kernel.to(x.dtype), stride=2, groups=x.shape[1])


class DelegateFriendlyUpsample2D(nn.Module):
    """diffusers' Upsample2D (nearest 2x + conv) with the interpolation written as `nearest_upsample_2x`."""

    def __init__(self, upsample: nn.Module):
        super().__init__()
        self.inner = upsample
        self.register_buffer("kernel", torch.ones(upsample.channels, 1, 2, 2), persistent=False)

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None, *args, **kwargs) -> torch.Tensor:
        h, w = hidden_states.shape[2:]
        if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
            return self.inner(hidden_states, output_size, *args, **kwargs)
        return self.inner.conv(nearest_upsample_2x(hidden_states, self.kernel))


def _replace_modules(root: nn.Module, match: Callable[[nn.Module], bool], build: Callable[[nn.Module], nn.Module]) -> int:
    """Swap every submodule for which `match` holds by `build(submodule)`; returns the count."""
    targets = [name for name, module in root.named_modules() if name and match(module)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, build(getattr(parent, child)))
    return len(targets)


def plain_attention(root: nn.Module) -> int:
    """diffusers' AttnProcessor (explicit matmul/softmax) instead of SDPA: no attention-mask logic in the graph."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    count = 0
    for module in root.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
            count += 1
    return count


def decompose_group_norm(root: nn.Module) -> int:
    """Every `nn.GroupNorm` -> `DecomposedGroupNorm` (same math, delegated ops)."""
    return _replace_modules(root, lambda m: type(m) is nn.GroupNorm, DecomposedGroupNorm)


def decompose_layer_norm(root: nn.Module) -> int:
    """Every last-dim `nn.LayerNorm` -> `DecomposedLayerNorm`."""
    return _replace_modules(root, lambda m: type(m) is nn.LayerNorm and len(m.normalized_shape) == 1, DecomposedLayerNorm)


def _is_plain_upsample(module: nn.Module) -> bool:
    """diffusers Upsample2D doing nearest 2x then a conv, with nothing else (no norm, no transposed conv)."""
    return (type(module).__name__ == "Upsample2D" and getattr(module, "interpolate", False)
            and getattr(module, "use_conv", False) and not getattr(module, "use_conv_transpose", True)
            and getattr(module, "norm", None) is None and getattr(module, "name", "conv") == "conv"
            and isinstance(getattr(module, "conv", None), nn.Conv2d))


def delegate_friendly_upsample(root: nn.Module) -> int:
    """Every plain diffusers Upsample2D -> `DelegateFriendlyUpsample2D` (nearest 2x as a transposed conv)."""
    return _replace_modules(root, _is_plain_upsample, DelegateFriendlyUpsample2D)


@dataclass(frozen=True)
class GraphPass:
    """A named rewrite and the op it removes from the exported graph (what its test looks for)."""

    name: str
    apply: Callable[[nn.Module], int]
    removes: str
    doc: str


PASSES: dict[str, GraphPass] = {p.name: p for p in (
    GraphPass("plain_attention", plain_attention, "aten.scaled_dot_product_attention", plain_attention.__doc__ or ""),
    GraphPass("decompose_group_norm", decompose_group_norm, "aten.group_norm", decompose_group_norm.__doc__ or ""),
    GraphPass("decompose_layer_norm", decompose_layer_norm, "aten.layer_norm", decompose_layer_norm.__doc__ or ""),
    GraphPass("delegate_friendly_upsample", delegate_friendly_upsample, "aten.upsample_nearest2d",
              delegate_friendly_upsample.__doc__ or ""),
)}
DEFAULT_PASSES: tuple[str, ...] = tuple(PASSES)


def resolve_passes(names: Iterable[str] | None) -> tuple[str, ...]:
    """Validate pass names (None = all defaults)."""
    chosen = DEFAULT_PASSES if names is None else tuple(names)
    unknown = [n for n in chosen if n not in PASSES]
    if unknown:
        raise InputError(f"unknown graph pass(es) {', '.join(unknown)}; valid: {', '.join(PASSES)}")
    return chosen


def apply_passes(module: nn.Module, names: Iterable[str] | None = None) -> tuple[nn.Module, dict[str, int]]:
    """Deep-copy `module` and apply the passes in order; the original float reference is untouched."""
    chosen = resolve_passes(names)
    rewritten = copy.deepcopy(module)
    counts = {name: PASSES[name].apply(rewritten) for name in chosen}
    return rewritten.eval(), counts
