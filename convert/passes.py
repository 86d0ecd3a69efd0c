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
    """GroupNorm written with ops XNNPACK delegates, laid out so its channels-last graph needs no big transposes.

    4-D inputs (conv feature maps): per-channel spatial means (`mean` over dims (2, 3), which XNNPACK runs on NHWC
    data as is), averaged over each group on the tiny (n, c, 1, 1) statistics and broadcast back by a multiply; then
    the same two-pass centred variance. Reshaping the full (n, c, h, w) tensor to (n, groups, c/groups, h·w) instead —
    the first version of this pass — made XNNPACK transpose every GroupNorm's input and output out of NHWC (ETDump of
    the SD-small generator: 718 transposes). Other ranks (diffusers attention's (n, c, tokens) GroupNorm) keep the
    4-D grouped reshape: XNNPACK delegates `mean` only on 4-D tensors reduced over the two inner dims.
    """

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.num_groups = norm.num_groups
        self.eps = norm.eps
        self.weight = norm.weight if norm.affine else None
        self.bias = norm.bias if norm.affine else None
        self.register_buffer("spread", torch.ones(1, 1, norm.num_channels // norm.num_groups, 1), persistent=False)

    def _group_mean(self, stat: torch.Tensor) -> torch.Tensor:
        """(n, c, 1, 1) per-channel statistic -> its group's mean, for every channel of the group."""
        n, c = stat.shape[:2]
        grouped = stat.reshape(n, self.num_groups, c // self.num_groups, 1).mean(dim=(2, 3), keepdim=True)
        return (grouped * self.spread).reshape(n, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        affine_shape = (1, c) + (1,) * (x.dim() - 2)
        if x.dim() == 4:
            centered = x - self._group_mean(x.mean(dim=(2, 3), keepdim=True))
            scale = torch.rsqrt(self._group_mean((centered * centered).mean(dim=(2, 3), keepdim=True)) + self.eps)
            if self.weight is None:
                return centered * scale
            return centered * (scale * self.weight.reshape(affine_shape)) + self.bias.reshape(affine_shape)
        grouped = x.reshape(x.shape[0], self.num_groups, c // self.num_groups, -1)
        centered = grouped - grouped.mean(dim=(2, 3), keepdim=True)
        var = (centered * centered).mean(dim=(2, 3), keepdim=True)
        y = (centered * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.weight is None:
            return y
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


# Nearest 2x then a 3x3 conv (padding 1), seen from the input grid: output row 2m + a reads input rows
# {m - 1, m} (a = 0) or {m, m + 1} (a = 1), the 3 kernel rows folding onto 2 as below (same for columns).
_PHASE_TAPS = {0: ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), 1: ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))}


def subpixel_kernels(weight: torch.Tensor) -> list[torch.Tensor]:
    """The four (out, in, 2, 2) phase kernels of nearest-2x + conv3x3, in phase order (0,0), (0,1), (1,0), (1,1)."""
    kernels = []
    for a in (0, 1):
        for b in (0, 1):
            rows = torch.tensor(_PHASE_TAPS[a], dtype=weight.dtype)
            cols = torch.tensor(_PHASE_TAPS[b], dtype=weight.dtype)
            kernels.append(torch.einsum("ad,be,oide->oiab", rows, cols, weight))
    return kernels


class SubPixelUpsample2D(nn.Module):
    """diffusers' Upsample2D (nearest 2x, then conv3x3) as four 2x2 convs on the input grid + a pixel shuffle.

    Same numbers (each phase kernel sums the 3x3 taps that read the same input pixel), 16·(h+1)(w+1)/(h·w) instead of
    36 multiply-adds per input pixel and channel pair (each phase's padded conv computes one border row/column that
    is sliced off), no upsampled tensor, and only ops XNNPACK delegates (conv, slice, cat,
    reshape, permute). Measured on the SD-small generator (ETDump): the previous rewrite, nearest 2x as a depthwise
    transposed conv, ran in XNNPACK's grouped deconvolution at one channel per group and took 36% of the whole run.
    """

    def __init__(self, upsample: nn.Module):
        super().__init__()
        conv: nn.Conv2d = upsample.conv
        self.phases = nn.ParameterList(nn.Parameter(k, requires_grad=False) for k in subpixel_kernels(conv.weight.data))
        self.bias = conv.bias
        self._original = (upsample,)  # a tuple: kept for odd output sizes, not a submodule (no duplicate weights)

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None, *args, **kwargs) -> torch.Tensor:
        n, _, h, w = hidden_states.shape
        if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
            return self._original[0](hidden_states, output_size, *args, **kwargs)
        # phase (a, b) reads input rows a-1 … a+h-1 (and columns alike): the (h+1)×(w+1) output of its 2x2 conv with
        # padding 1, from row a / column b. No separate pad op: XNNPACK's int8 StaticConstantPad refused the
        # emoji student's (`xnn_status_invalid_parameter` at load), while conv padding is part of the conv.
        phases = [F.conv2d(hidden_states, self.phases[2 * a + b], self.bias, padding=1)[:, :, a : a + h, b : b + w]
                  for a in (0, 1) for b in (0, 1)]
        out = torch.cat(phases, dim=1)  # (n, [a, b, c], h, w)
        c = out.shape[1] // 4
        return out.reshape(n, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c, 2 * h, 2 * w)


def is_compact(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is exactly its storage: contiguous, offset 0, no bytes beyond it. Serializers that write a
    tensor's whole storage from its start (XNNPACK's constant serializer does) need this."""
    return (tensor.is_contiguous() and tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())


def row_block(tensor: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of `tensor` sharing its memory but *compact* (a storage slice, not a view with an offset), so
    a serializer that reads the storage from its start gets these rows; a non-compact tensor gives a plain view."""
    if not is_compact(tensor):
        return tensor[start:stop]
    row_bytes = tensor[0].numel() * tensor.element_size() if tensor.dim() > 1 else tensor.element_size()
    storage = tensor.untyped_storage()[start * row_bytes:stop * row_bytes]  # shares the memory, keeps it alive
    return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(storage, 0, (stop - start, *tensor.shape[1:]))


class SplitGEGLU(nn.Module):
    """diffusers' GEGLU (one Linear to 2·d, then `chunk(2, -1)`, value · gelu(gate)) as two Linears of d each.

    The chunk exports as `split_with_sizes_copy`, which XNNPACK does not take: it stays on a portable kernel and
    cuts the delegate graph in two around every transformer feed-forward. Two Linears on the weight halves compute
    the same numbers (row blocks of one matmul) with delegated ops only.
    """

    def __init__(self, geglu: nn.Module):
        super().__init__()
        proj: nn.Linear = geglu.proj
        half = proj.out_features // 2
        bias = proj.bias is not None
        self.value = nn.Linear(proj.in_features, half, bias=bias, device="meta")
        self.gate = nn.Linear(proj.in_features, half, bias=bias, device="meta")
        # the original parameter's memory (no copy: an SD-1.5 UNet holds ~300 M GEGLU weights)
        self.value.weight = nn.Parameter(row_block(proj.weight.data, 0, half), requires_grad=False)
        self.gate.weight = nn.Parameter(row_block(proj.weight.data, half, 2 * half), requires_grad=False)
        if bias:
            self.value.bias = nn.Parameter(row_block(proj.bias.data, 0, half), requires_grad=False)
            self.gate.bias = nn.Parameter(row_block(proj.bias.data, half, 2 * half), requires_grad=False)
        self.approximate = "none"

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.value(hidden_states) * F.gelu(self.gate(hidden_states), approximate=self.approximate)


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


def split_geglu(root: nn.Module) -> int:
    """Every diffusers `GEGLU` feed-forward projection -> `SplitGEGLU` (two Linears, no chunk)."""
    return _replace_modules(root, lambda m: type(m).__name__ == "GEGLU" and isinstance(getattr(m, "proj", None), nn.Linear)
                            and m.proj.out_features % 2 == 0, SplitGEGLU)


_SCALE_ATTRIBUTES = ("output_scale_factor", "rescale_output_factor")


def float_scale_factors(root: nn.Module) -> int:
    """diffusers' integer output scales (ResnetBlock2D `output_scale_factor`, Attention `rescale_output_factor`,
    1 in SD's mid blocks) -> the same value as a float: `x / 1` made the edge dialect cast an int64 constant to float
    (`_to_dim_order_copy`, a dtype conversion XNNPACK does not take) before every such division."""
    count = 0
    for module in root.modules():
        for attribute in _SCALE_ATTRIBUTES:
            value = getattr(module, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(module, attribute, float(value))
                count += 1
    return count


def _is_plain_upsample(module: nn.Module) -> bool:
    """diffusers Upsample2D doing nearest 2x then a conv, with nothing else (no norm, no transposed conv)."""
    return (type(module).__name__ == "Upsample2D" and getattr(module, "interpolate", False)
            and getattr(module, "use_conv", False) and not getattr(module, "use_conv_transpose", True)
            and getattr(module, "norm", None) is None and getattr(module, "name", "conv") == "conv"
            and isinstance(getattr(module, "conv", None), nn.Conv2d))


def _is_upsample_then_conv3x3(module: nn.Module) -> bool:
    conv = getattr(module, "conv", None)
    return (_is_plain_upsample(module) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def delegate_friendly_upsample(root: nn.Module) -> int:
    """Every plain diffusers Upsample2D (nearest 2x + conv3x3) -> `SubPixelUpsample2D` (four 2x2 convs + shuffle)."""
    return _replace_modules(root, _is_upsample_then_conv3x3, SubPixelUpsample2D)


@dataclass(frozen=True)
class GraphPass:
    """A named rewrite and the op it removes from the exported graph (what its test looks for)."""

    name: str
    apply: Callable[[nn.Module], int]
    removes: str
    doc: str
    stage: str = "export"  # where the removed op shows: the torch.export graph, or only the edge dialect ("edge")


PASSES: dict[str, GraphPass] = {p.name: p for p in (
    GraphPass("plain_attention", plain_attention, "aten.scaled_dot_product_attention", plain_attention.__doc__ or ""),
    GraphPass("decompose_group_norm", decompose_group_norm, "aten.group_norm", decompose_group_norm.__doc__ or ""),
    GraphPass("decompose_layer_norm", decompose_layer_norm, "aten.layer_norm", decompose_layer_norm.__doc__ or ""),
    GraphPass("delegate_friendly_upsample", delegate_friendly_upsample, "aten.upsample_nearest2d",
              delegate_friendly_upsample.__doc__ or ""),
    GraphPass("split_geglu", split_geglu, "aten.chunk", split_geglu.__doc__ or ""),
    GraphPass("float_scale_factors", float_scale_factors, "dim_order_ops._to_dim_order_copy",
              float_scale_factors.__doc__ or "", stage="edge"),
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
    """Deep-copy `module` and apply the passes in order; the original float reference is untouched.

    The copy shares the weight tensors: passes re-wire modules and never write weights, and an SD-1.5 UNet is 3.4 GB
    that need not exist twice while it is exported (issue 13, conversion memory)."""
    chosen = resolve_passes(names)
    shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
    rewritten = copy.deepcopy(module, memo=shared)
    counts = {name: PASSES[name].apply(rewritten) for name in chosen}
    return rewritten.eval(), counts
