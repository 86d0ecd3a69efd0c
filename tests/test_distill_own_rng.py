"""built_on_own_rng: optional parts of a run are built without moving the run's global RNG."""

from __future__ import annotations

import torch
from torch import nn

from cdx.distill.own_rng import built_on_own_rng


def test_building_leaves_the_global_rng_where_it_was():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    built_on_own_rng(nn.Linear, 8, 8, seed=5)
    built_on_own_rng(nn.Linear, 8, 8)  # no seed: draws from the current state, thrown away
    assert torch.equal(torch.rand(4), expected)


def test_the_seed_fixes_the_weights_whatever_the_global_state():
    torch.manual_seed(0)
    first = built_on_own_rng(nn.Linear, 8, 8, seed=5)
    torch.manual_seed(1)
    second = built_on_own_rng(nn.Linear, 8, 8, seed=5)
    other = built_on_own_rng(nn.Linear, 8, 8, seed=6)
    assert torch.equal(first.weight, second.weight)
    assert not torch.equal(first.weight, other.weight)


def test_arguments_reach_the_factory():
    layer = built_on_own_rng(nn.Conv2d, 3, 5, seed=0, kernel_size=3, bias=False)
    assert layer.weight.shape == (5, 3, 3, 3) and layer.bias is None
