"""Each graph rewrite removes the op it names from the exported graph and keeps the numerics (<= 1e-5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cdx.convert.passes import DEFAULT_PASSES, PASSES, apply_passes
from cdx.errors import InputError


def _ops(module: nn.Module, args: tuple[torch.Tensor, ...]) -> set[str]:
    program = torch.export.export(module, args, strict=False)
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


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


CASES = {
    "decompose_group_norm": _group_norm_block,
    "plain_attention": _attention,
    "decompose_layer_norm": _layer_norm,
    "delegate_friendly_upsample": _upsample,
}


def test_every_registered_pass_has_a_case_here() -> None:
    assert set(CASES) == set(PASSES) == set(DEFAULT_PASSES)


@pytest.mark.parametrize("name", list(CASES))
def test_pass_removes_its_op_and_keeps_numerics(name: str) -> None:
    module, args = CASES[name]()
    removed = PASSES[name].removes
    assert any(op.startswith(removed) for op in _ops(module, args)), f"{removed} should be in the original graph"
    rewritten, counts = apply_passes(module, [name])
    assert counts[name] >= 1
    assert not any(op.startswith(removed) for op in _ops(rewritten, args))
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
