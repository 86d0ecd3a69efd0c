"""The consistency target network θ⁻ ← μ·θ⁻ + (1 − μ)·θ, updated by diffusers' `EMAModel`, and the optional slow
EMA that is exported instead of it (`--export-ema-decay`).

Consistency distillation wants a *constant* rate μ (LCM: 0.95) from the first step, not EMAModel's default warm-up
((1 + n) / (10 + n), and 0 at the first update): `min_decay = decay` and `update_after_step = -1` give exactly μ.
The EMA's shadow parameters are the target network's own tensors, so the update is the target update and no
second copy of the weights is held (at SD-1.5 size that copy would be 3.4 GB).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from diffusers.training_utils import EMAModel


def trainable_names(module: torch.nn.Module) -> list[str]:
    """Names of the parameters the optimizer updates (all of a full student, the adapters of a LoRA one)."""
    return [name for name, p in module.named_parameters() if p.requires_grad]


class _NamedEMA:
    """A diffusers `EMAModel` over named parameters: its shadows by name for a checkpoint, its counters, and load."""

    names: list[str]
    ema: EMAModel

    def _shadows(self) -> list[torch.Tensor]:
        return list(self.ema.shadow_params)

    @torch.no_grad()
    def step(self, student_params: Iterable[torch.nn.Parameter]) -> None:
        self.ema.step(list(student_params))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The shadow parameters by name (safetensors-ready)."""
        return {n: p.detach().contiguous().cpu() for n, p in zip(self.names, self._shadows(), strict=True)}

    def scalars(self) -> dict[str, Any]:
        state = self.ema.state_dict()
        return {k: v for k, v in state.items() if k != "shadow_params"}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
        """Copy saved shadow parameters in place (an aliased target stays aliased) and restore the counters."""
        if set(tensors) != set(self.names):
            missing = sorted(set(self.names) - set(tensors))[:3]
            raise KeyError(f"EMA state does not match the network (missing e.g. {missing})")
        for name, shadow in zip(self.names, self._shadows(), strict=True):
            shadow.copy_(tensors[name].to(shadow.device, shadow.dtype))
        self.ema.load_state_dict({**scalars, "shadow_params": None})  # None: the shadows stay the tensors above


class TargetEMA(_NamedEMA):
    """Constant-rate EMA of the student's trainable parameters, written in place into the target network."""

    def __init__(self, target: torch.nn.Module, names: list[str], decay: float):
        by_name = dict(target.named_parameters())
        self.names = list(names)
        self.params = [by_name[n] for n in self.names]
        self.ema = EMAModel(self.params, decay=decay, min_decay=decay, update_after_step=-1, foreach=True)
        self.ema.shadow_params = [p.data for p in self.params]  # alias: the EMA state *is* the target's weights

    def _shadows(self) -> list[torch.Tensor]:
        return self.params

    @property
    def updates(self) -> int:
        return int(self.ema.optimization_step)


class ExportEMA(_NamedEMA):
    """A slow EMA of the student's trainable parameters, kept as a separate copy, that becomes the saved student
    (`--export-ema-decay`): diffusers' `EMAModel` with its default warm-up, decay min(μ, (1 + n) / (10 + n)) at its
    n-th update, so the first updates do not hold the starting weights. The consistency target (TargetEMA) stays
    what CD trains against; this copy only averages out the optimizer's step-to-step noise in what is exported.
    Costs one more float32 copy of the trainable weights (3.4 GB for an SD-1.5 UNet, a few MB for a LoRA)."""

    def __init__(self, student_params: list[torch.nn.Parameter], names: list[str], decay: float):
        self.names = list(names)
        self.ema = EMAModel(student_params, decay=decay, min_decay=0.0, update_after_step=0, use_ema_warmup=False,
                            foreach=True)

    @torch.no_grad()
    def weights_into(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` (a copy of the target network) with the averaged weights in its trainable parameters."""
        by_name = dict(module.named_parameters())
        for name, shadow in zip(self.names, self._shadows(), strict=True):
            by_name[name].copy_(shadow.to(by_name[name].device, by_name[name].dtype))
        return module
