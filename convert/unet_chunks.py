"""The consistency-step graph cut into N sequential chunks (`cdx convert --target coreml --chunks N`).

Why: iOS kills apps far below the size of an SD-1.5 UNet (apple/ml-stable-diffusion #22, #291); Apple ships the UNet
as two `.mlpackage`s (`--chunk-unet`) so each piece loads and runs within the budget. Apple cuts the converted MIL
program where the cumulative weight size reaches half. cdx cuts the PyTorch graph instead, at block boundaries
(embedding + conv_in, each down block, the mid block, each up block, the output head with the consistency scaling),
choosing the boundaries that balance the weight bytes of the chunks. Each chunk is an ordinary graph module, so it
exports through the same `export_coreml` and can be run eagerly: the chunks run in order reproduce the whole step.

The chain an app runs (Apple's `Unet` with several models does the same): chunk 0 takes the step graph's inputs;
chunk i+1 takes the step graph's inputs it needs plus **every output of chunk i** (same names, shapes, dtypes); the
last chunk outputs `denoised`. Skip connections a later chunk needs are carried through the chunks in between.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cdx.distill.consistency import guidance_scale_embedding
from cdx.distill.generator import TensorSpec
from cdx.distill.graphs import ConsistencyStepGraph
from cdx.distill.sampling import consistency_output
from cdx.errors import InputError, UnsupportedError

State = dict[str, torch.Tensor]


@dataclass
class Stage:
    """One block-level step of the UNet forward over a named state: reads some names, writes others."""

    name: str
    modules: list[nn.Module]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    run: Callable[[State], State]

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for m in self.modules for p in m.parameters())


def _check_supported(unet: nn.Module) -> None:
    if type(unet).__name__ != "UNet2DConditionModel":
        raise UnsupportedError("--chunks: cdx chunks UNet2DConditionModel (SD-shaped) students; "
                               f"this one is {type(unet).__name__}")
    config = unet.config
    for key, bad in (("center_input_sample", True), ("addition_embed_type", "any"), ("encoder_hid_dim_type", "any")):
        value = getattr(config, key, None)
        if (bad == "any" and value is not None) or (bad is True and value):
            raise UnsupportedError(f"--chunks: UNet config {key}={value!r} is not supported by the chunked step graph")


def unet_stages(step: ConsistencyStepGraph) -> list[Stage]:
    """The step graph's UNet forward as block-level stages (the same calls as diffusers' forward, in order)."""
    unet = step.unet
    _check_supported(unet)
    cond_names = tuple(s.name for s in step._conditioning_specs)
    text = ("text_embedding",) if "text_embedding" in cond_names else ()
    latent_hw = step.latent_shape[2:]
    factor = 2 ** unet.num_upsamplers
    forward_upsample_size = any(int(d) % factor for d in latent_hw)
    stages: list[Stage] = []

    def embed(state: State) -> State:
        latents = state["latents"]
        t_emb = unet.get_time_embed(sample=latents, timestep=state["timestep"])
        cond = None
        if step.guidance_dim:  # LCM feeds w - 1 (see generator.unet_forward)
            cond = guidance_scale_embedding(state["guidance_scale"] - 1.0, step.guidance_dim)
        emb = unet.time_embedding(t_emb, cond)
        class_emb = unet.get_class_embed(sample=latents, class_labels=state.get("class_label"))
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        hidden = unet.conv_in(latents)
        return {"emb": emb, "hidden": hidden, "skip_0": hidden}

    reads = ("latents", "timestep", *(n for n in cond_names if n != "text_embedding"))
    embed_modules = [m for m in (unet.time_proj, unet.time_embedding, unet.class_embedding, unet.time_embed_act, unet.conv_in)
                     if m is not None]
    stages.append(Stage("embed", embed_modules, reads, ("emb", "hidden", "skip_0"), embed))

    skips = 1
    for index, block in enumerate(unet.down_blocks):
        count = len(block.resnets) + (1 if block.downsamplers is not None else 0)
        names = tuple(f"skip_{skips + j}" for j in range(count))
        skips += count

        def down(state: State, block: nn.Module = block, names: tuple[str, ...] = names) -> State:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(hidden_states=state["hidden"], temb=state["emb"],
                                    encoder_hidden_states=state["text_embedding"])
            else:
                hidden, res = block(hidden_states=state["hidden"], temb=state["emb"])
            return {"hidden": hidden, **dict(zip(names, res, strict=True))}

        stages.append(Stage(f"down_{index}", [block], ("hidden", "emb", *text), ("hidden", *names), down))

    if unet.mid_block is not None:
        def mid(state: State) -> State:
            if getattr(unet.mid_block, "has_cross_attention", False):
                return {"hidden": unet.mid_block(state["hidden"], state["emb"], encoder_hidden_states=state["text_embedding"])}
            return {"hidden": unet.mid_block(state["hidden"], state["emb"])}

        stages.append(Stage("mid", [unet.mid_block], ("hidden", "emb", *text), ("hidden",), mid))

    remaining = [f"skip_{j}" for j in range(skips)]
    for index, block in enumerate(unet.up_blocks):
        used = tuple(remaining[-len(block.resnets):])
        remaining = remaining[: -len(block.resnets)]
        size_from = remaining[-1] if remaining and index < len(unet.up_blocks) - 1 and forward_upsample_size else None

        def up(state: State, block: nn.Module = block, used: tuple[str, ...] = used, size_from: str | None = size_from) -> State:
            kwargs: dict[str, Any] = {"upsample_size": state[size_from].shape[2:] if size_from else None}
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = state["text_embedding"]
            res = tuple(state[n] for n in used)
            return {"hidden": block(hidden_states=state["hidden"], temb=state["emb"], res_hidden_states_tuple=res, **kwargs)}

        extra = (size_from,) if size_from and size_from not in used else ()
        stages.append(Stage(f"up_{index}", [block], ("hidden", "emb", *used, *extra, *text), ("hidden",), up))

    def head(state: State) -> State:
        hidden = state["hidden"]
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        out = unet.conv_out(hidden)
        denoised = consistency_output(out, state["latents"], state["alpha_cumprod"], state["c_skip"], state["c_out"],
                                      step.prediction_type)
        return {"denoised": denoised}

    head_modules = [m for m in (unet.conv_norm_out, unet.conv_act, unet.conv_out) if m is not None]
    stages.append(Stage("head", head_modules, ("hidden", "latents", "alpha_cumprod", "c_skip", "c_out"), ("denoised",), head))
    return stages


def balanced_boundaries(weights: list[int], chunks: int) -> list[int]:
    """Stage indices where chunks 1..N-1 start, chosen so the chunks' weight bytes are as even as possible
    (minimise the largest chunk: what must fit in memory at once). Exact dynamic programme over the boundaries."""
    count = len(weights)
    if not 2 <= chunks <= count:
        raise InputError(f"--chunks {chunks}: must be between 2 and {count} (the UNet has {count} block-level stages)")
    prefix = np.concatenate([[0], np.cumsum(weights)])
    inf = float("inf")
    best = [[inf] * (count + 1) for _ in range(chunks + 1)]  # best[k][j]: largest chunk when stages[:j] form k chunks
    cut = [[0] * (count + 1) for _ in range(chunks + 1)]
    best[0][0] = 0
    for k in range(1, chunks + 1):
        for j in range(k, count - (chunks - k) + 1):
            for i in range(k - 1, j):
                cost = max(best[k - 1][i], float(prefix[j] - prefix[i]))
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    bounds, j = [], count
    for k in range(chunks, 0, -1):
        j = cut[k][j]
        bounds.append(j)
    return sorted(bounds)[1:]


class UNetChunkGraph(nn.Module):
    """Stages [start, end) of the step graph's UNet as one exportable graph (role `unet_chunk`)."""

    role = "unet_chunk"

    def __init__(self, step: ConsistencyStepGraph, stages: list[Stage], index: int, count: int,
                 inputs: list[TensorSpec], outputs: list[TensorSpec]):
        super().__init__()
        object.__setattr__(self, "step", step)  # not a submodule: a chunk owns only its own stages' weights
        object.__setattr__(self, "_earlier", [])  # the chunks before this one (for example_inputs)
        self.stages = stages
        self.index, self.count = index, count
        self._input_specs, self._output_specs = inputs, outputs
        self._inputs, self._outputs = [s.name for s in inputs], [s.name for s in outputs]
        self.blocks = nn.ModuleList([m for s in stages for m in s.modules])  # parameters counted once, per chunk

    def contains(self) -> list[str]:
        extra = ["consistency_scaling"] if self.index == self.count - 1 else []
        guided = ["guidance_embedding"] if self.index == 0 and self.step.guidance_dim else []
        return ["student_unet", *extra, *guided]

    def input_specs(self) -> list[TensorSpec]:
        return list(self._input_specs)

    def output_specs(self) -> list[TensorSpec]:
        return list(self._output_specs)

    def chunk_record(self, of: str) -> dict[str, Any]:
        """The manifest's `chunk` field: position in the chain and the stages inside."""
        return {"index": self.index, "count": self.count, "of": of, "stages": [s.name for s in self.stages]}

    def example_inputs(self, seed: int = 0, class_label: int = 0, guidance_scale: float | None = None,
                       **_: Any) -> dict[str, torch.Tensor]:
        """The step graph's seeded inputs carried through the earlier chunks (what this chunk really receives)."""
        state: State = dict(self.step.example_inputs(seed=seed, class_label=class_label, guidance_scale=guidance_scale))
        with torch.no_grad():
            for chunk in self._earlier:
                state.update(chunk.run_state(state))
        return {n: state[n] for n in self._inputs}

    def run_state(self, state: State) -> State:
        """Run the stages on a state dict; returns this chunk's outputs by name."""
        state = dict(state)
        for stage in self.stages:
            state.update(stage.run(state))
        return {n: state[n] for n in self._outputs}

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        out = self.run_state(dict(zip(self._inputs, args, strict=True)))
        # a carried tensor leaves as a new value (an output may not be the input itself in Core ML)
        values = tuple(out[n] * 1.0 if any(out[n] is a for a in args) else out[n] for n in self._outputs)
        return values[0] if len(values) == 1 else values


def _spec(name: str, value: torch.Tensor, description: str) -> TensorSpec:
    return TensorSpec(name, tuple(int(d) for d in value.shape), str(value.dtype).removeprefix("torch."),
                      description=description)


def _boundary_specs(step: ConsistencyStepGraph, groups: list[list[Stage]]) -> list[dict[str, TensorSpec]]:
    """Shape and dtype of every state name as it stands after each chunk (one eager pass on the example inputs):
    `hidden` changes shape from block to block, so a name's spec belongs to a chunk boundary."""
    current = {s.name: s for s in step.input_specs()}
    state: State = dict(step.example_inputs())
    after: list[dict[str, TensorSpec]] = []
    with torch.no_grad():
        for group in groups:
            for stage in group:
                written = stage.run(state)
                state.update(written)
                text = "consistency estimate of the clean latent" if "denoised" in written else f"UNet state after {stage.name}"
                current.update({name: _spec(name, value, text) for name, value in written.items()})
            after.append(dict(current))
    return after


def chunk_step_graph(step: ConsistencyStepGraph, chunks: int) -> list[UNetChunkGraph]:
    """Cut `step` into `chunks` graphs with balanced weight bytes, chained as the module docstring says."""
    stages = unet_stages(step)
    bounds = [0, *balanced_boundaries([s.weight_bytes() for s in stages], chunks), len(stages)]
    originals = [s.name for s in step.input_specs()]
    groups = [stages[a:b] for a, b in itertools.pairwise(bounds)]
    boundary = _boundary_specs(step, groups)
    step_specs = {s.name: s for s in step.input_specs()}
    # what each chunk must output: every state name read by a later chunk that is not an original input
    needed_after: list[set[str]] = []
    for i in range(len(groups)):
        later = {r for g in groups[i + 1:] for s in g for r in s.reads} - set(originals)
        needed_after.append(later)
    graphs: list[UNetChunkGraph] = []
    previous_outputs: list[str] = []
    for i, group in enumerate(groups):
        reads: list[str] = []
        written: set[str] = set()
        for stage in group:
            reads += [r for r in stage.reads if r not in written and r not in reads]
            written |= set(stage.writes)
        inputs = [n for n in originals if n in reads] + list(previous_outputs)
        missing = [r for r in reads if r not in inputs]
        if missing:  # cannot happen for a well-formed stage list; refuse rather than export a broken chain
            raise UnsupportedError(f"--chunks: chunk {i} needs {missing} that no earlier chunk produces")
        if i == len(groups) - 1:
            outputs = ["denoised"]
        else:
            outputs = sorted(needed_after[i], key=lambda n: (n != "hidden", n != "emb", _skip_index(n)))
        before = boundary[i - 1] if i else step_specs
        graph = UNetChunkGraph(step, group, i, len(groups), [before[n] for n in inputs],
                               [boundary[i][n] for n in outputs]).eval()
        graph._earlier.extend(graphs)
        graphs.append(graph)
        previous_outputs = outputs
    return graphs


def _skip_index(name: str) -> int:
    return int(name.split("_")[1]) if name.startswith("skip_") else -1


@torch.inference_mode()
def chunk_batches(chunks: list[UNetChunkGraph], step_batches: list[dict[str, np.ndarray]]) -> list[list[dict[str, np.ndarray]]]:
    """Each chunk's real inputs for each step-graph input dict (the eager chain), for golden data and calibration."""
    per_chunk: list[list[dict[str, np.ndarray]]] = [[] for _ in chunks]
    for batch in step_batches:
        state: State = {k: torch.from_numpy(v) for k, v in batch.items()}
        for i, chunk in enumerate(chunks):
            per_chunk[i].append({n: state[n].numpy().copy() for n in chunk._inputs})
            state.update(chunk.run_state(state))
    return per_chunk
