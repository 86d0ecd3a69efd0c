"""Each graph rewrite removes the op it names from the exported graph and keeps the numerics (<= 1e-5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cdx.convert.passes import DEFAULT_PASSES, PASSES, apply_passes
from cdx.errors import InputError


def _ops(module: nn.Module, args: tuple[torch.Tensor, ...], stage: str = "export") -> set[str]:
    program = torch.export.export(module, args, strict=False)
    if stage == "edge":
        from executorch.exir import to_edge

        program = to_edge(program).exported_program()
    return {str(n.target).removeprefix("<EdgeOpOverload: ").split(">")[0] for n in program.graph.nodes
            if n.op == "call_function"}


def _group_norm_block() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    norm = nn.GroupNorm(8, 32, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    return nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), norm, nn.SiLU()).eval(), (torch.randn(1, 4, 16, 16) * 3 + 1,)


def _attention() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=32, heads=4, dim_head=8, cross_attention_dim=16).eval(), \
        (torch.randn(1, 64, 32), torch.randn(1, 16, 16))


def _layer_norm() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    norm = nn.LayerNorm(32)
    nn.init.normal_(norm.weight)
    return nn.Sequential(nn.Linear(32, 32), norm).eval(), (torch.randn(1, 64, 32) * 2,)


def _upsample() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)
    return nn.Sequential(Upsample2D(16, use_conv=True)).eval(), (torch.randn(1, 16, 8, 8),)


def _geglu() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from diffusers.models.attention import FeedForward

    torch.manual_seed(0)
    return FeedForward(32, activation_fn="geglu").eval(), (torch.randn(1, 64, 32),)


def _mid_block_resnet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    return ResnetBlock2D(in_channels=16, temb_channels=None, groups=4, output_scale_factor=1).eval(), \
        (torch.randn(1, 16, 8, 8), None)


CASES = {
    "decompose_group_norm": _group_norm_block,
    "plain_attention": _attention,
    "decompose_layer_norm": _layer_norm,
    "delegate_friendly_upsample": _upsample,
    "split_geglu": _geglu,
    "float_scale_factors": _mid_block_resnet,
}


def test_every_registered_pass_has_a_case_here() -> None:
    assert set(CASES) == set(PASSES) == set(DEFAULT_PASSES)


@pytest.mark.parametrize("name", list(CASES))
def test_pass_removes_its_op_and_keeps_numerics(name: str) -> None:
    module, args = CASES[name]()
    removed, stage = PASSES[name].removes, PASSES[name].stage
    assert any(op.startswith(removed) for op in _ops(module, args, stage)), f"{removed} should be in the original graph"
    rewritten, counts = apply_passes(module, [name])
    assert counts[name] >= 1
    assert not any(op.startswith(removed) for op in _ops(rewritten, args, stage))
    with torch.no_grad():
        assert (rewritten(*args) - module(*args)).abs().max().item() <= 1e-5


def test_group_norm_pass_handles_3d_inputs_like_diffusers_attention() -> None:
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16, affine=True).eval()
    rewritten, _ = apply_passes(nn.Sequential(norm), ["decompose_group_norm"])
    x = torch.randn(1, 16, 50) * 5
    with torch.no_grad():
        assert (rewritten(x) - norm(x)).abs().max().item() <= 1e-5


def test_passes_work_on_a_copy_and_can_be_switched_off() -> None:
    module, _ = _group_norm_block()
    rewritten, counts = apply_passes(module, [])
    assert counts == {} and isinstance(rewritten[1], nn.GroupNorm)
    rewritten, _ = apply_passes(module, ["decompose_group_norm"])
    assert isinstance(module[1], nn.GroupNorm), "the float reference must stay untouched"
    assert not isinstance(rewritten[1], nn.GroupNorm)


def test_unknown_pass_lists_the_valid_ones() -> None:
    module, _ = _group_norm_block()
    with pytest.raises(InputError, match=r"unknown graph pass\(es\) fuse_everything; valid: plain_attention, "):
        apply_passes(module, ["fuse_everything"])


def test_group_norm_is_delegated_to_xnnpack_only_after_the_pass() -> None:
    """STACK.md: XNNPACK leaves native_group_norm on portable kernels; the 4-D rewrite gets it delegated."""
    from cdx.convert.executorch import delegation_summary, export_program, lower

    module, args = _group_norm_block()
    before = delegation_summary(lower(export_program(module, args)))
    assert any("group_norm" in op for op in before["portable_op_names"])
    rewritten, _ = apply_passes(module, ["decompose_group_norm"])
    after = delegation_summary(lower(export_program(rewritten, args)))
    assert not any("group_norm" in op for op in after["portable_op_names"])
    assert after["portable_ops"] == 0 and after["delegate_calls"] == 1


def test_geglu_split_leaves_no_portable_split_and_one_delegate_call() -> None:
    """The SD-1.5 .pte kept `split_with_sizes_copy` ×16 on portable kernels (one per GEGLU chunk), each cutting the
    XNNPACK graph; after the pass the feed-forward is one delegate call with nothing portable."""
    from cdx.convert.executorch import delegation_summary, export_program, lower

    module, args = _geglu()
    before = delegation_summary(lower(export_program(module, args)))
    assert any("split" in op for op in before["portable_op_names"])
    rewritten, _ = apply_passes(module, ["split_geglu"])
    after = delegation_summary(lower(export_program(rewritten, args)))
    assert after["portable_ops"] == 0 and after["delegate_calls"] == 1


def _run_pte(module: nn.Module, args: tuple[torch.Tensor, ...], share_constants: bool = True) -> torch.Tensor:
    from executorch.runtime import Runtime

    from cdx.convert.executorch import export_program, lower

    buffer = lower(export_program(module, args), share_constants=share_constants).to_executorch().buffer
    return Runtime.get().load_program(buffer).load_method("forward").execute(list(args))[0]


def test_geglu_halves_share_the_projection_memory_and_are_compact() -> None:
    """No copy of the ~300 M SD-1.5 GEGLU weights, and no offset view: XNNPACK serializes a constant's whole storage
    from its start, so an offset view would ship the value half's rows as the gate's (SD-small fp32 gate: 32.5 dB)."""
    from cdx.convert.passes import is_compact

    module, _ = _geglu()
    rewritten, _ = apply_passes(module, ["split_geglu"])
    weight, split = module.net[0].proj.weight, rewritten.net[0]
    start, row = weight.untyped_storage().data_ptr(), weight[0].numel() * weight.element_size()
    assert split.value.weight.untyped_storage().data_ptr() == start
    assert split.gate.weight.untyped_storage().data_ptr() == start + split.value.weight.shape[0] * row
    assert all(is_compact(p) for p in split.parameters())


def test_split_geglu_runs_in_executorch_like_eager() -> None:
    module, args = _geglu()
    rewritten, _ = apply_passes(module, ["split_geglu"])
    with torch.no_grad():
        expected = module(*args)
    assert (_run_pte(rewritten, args) - expected).abs().max().item() <= 1e-4


def test_an_offset_view_weight_lowers_correctly_with_shared_constants() -> None:
    """Constants that are views into a larger storage are not shared with XNNPACK's working copy (they reach it as
    compact clones); without that guard this layer's weight would be serialized from the storage's first row."""
    torch.manual_seed(0)
    storage = torch.randn(64, 32)
    layer = nn.Linear(32, 32).eval()
    layer.weight = nn.Parameter(storage[32:], requires_grad=False)  # offset view
    args = (torch.randn(1, 8, 32),)
    with torch.no_grad():
        expected = layer(*args)
    assert (_run_pte(layer, args) - expected).abs().max().item() <= 1e-4


def test_group_norm_on_feature_maps_reshapes_only_its_statistics() -> None:
    """On NHWC data XNNPACK must transpose around any reshape of the full feature map (ETDump of SD-small: 718
    transposes); the 4-D path reshapes only the (n, c, 1, 1) statistics."""
    module, args = _group_norm_block()
    rewritten, _ = apply_passes(module, ["decompose_group_norm"])
    program = torch.export.export(rewritten, args, strict=False)
    full = args[0].shape[-1] * args[0].shape[-2]
    reshaped = [n for n in program.graph.nodes if n.op == "call_function" and ("view" in str(n.target) or
                                                                          "reshape" in str(n.target))]
    assert reshaped, "the group statistics are reshaped"
    assert all(n.meta["val"].numel() < full for n in reshaped)


def test_subpixel_upsample_matches_at_odd_sizes_and_falls_back_for_other_output_sizes() -> None:
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)
    upsample = Upsample2D(8, use_conv=True, out_channels=12).eval()
    rewritten, counts = apply_passes(nn.ModuleList([upsample]), ["delegate_friendly_upsample"])
    assert counts["delegate_friendly_upsample"] == 1
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        assert (rewritten[0](x) - upsample(x)).abs().max().item() <= 1e-5
        assert (rewritten[0](x, output_size=(9, 13)) - upsample(x, output_size=(9, 13))).abs().max().item() <= 1e-5
    assert len(list(rewritten[0].parameters())) == 5, "four phase kernels and the bias, not the original conv too"


def test_subpixel_upsample_exports_without_a_pad_op() -> None:
    """XNNPACK's int8 StaticConstantPad refused the emoji student's upsample pad at load; the conv's own padding
    replaces it."""
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)
    rewritten, _ = apply_passes(nn.ModuleList([Upsample2D(8, use_conv=True, out_channels=8).eval()]),
                                ["delegate_friendly_upsample"])
    program = torch.export.export(rewritten[0], (torch.randn(1, 8, 6, 6),), strict=False)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert not [t for t in targets if "pad" in t], targets
    assert sum("convolution" in t or "conv2d" in t for t in targets) == 4
