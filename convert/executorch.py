"""ExecuTorch export: graph passes → torch.export → (PT2E int8) → to_edge_transform_and_lower(XNNPACK | Core ML) → .pte.

The stages are named functions so a test can stop after any of them; the delegation summary (how much of the
graph the delegate took, and which ops were left on portable kernels) is printed and stored with every export.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cdx.convert.artifact import Artifact
from cdx.convert.explain import explain
from cdx.convert.passes import apply_passes, is_compact, resolve_passes
from cdx.distill.generator import ExportableGraph
from cdx.errors import ConversionError

# --quant value -> (precision, delegate)
QUANTS: dict[str, tuple[str, str]] = {
    "none": ("fp32", "xnnpack"),
    "int8": ("int8", "xnnpack"),
    "coreml": ("fp16", "coreml"),  # Core ML-delegated .pte for iOS; cannot run on Linux
}
CALIBRATION_SAMPLES = 8
_NON_OPS = ("getitem", "executorch_call_delegate")


def export_program(module: nn.Module, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """`torch.export` with the model's own input order (manifest order)."""
    with torch.no_grad():
        return torch.export.export(module, args, strict=False)


# Default passes left out of int8 exports: with the per-channel-statistics GroupNorm, the embedded student's int8
# .pte loaded but failed at execute (`XNNExecutor: Propagating input shapes failed: xnn_status_invalid_parameter`);
# without it the same export passes its gate (A/B with --passes, 2026-12-02). fp32 exports keep it.
_NOT_FOR_INT8 = ("decompose_group_norm",)

# Module types whose ops stay float in int8 .pte files (see `_always_float`).
_FLOAT_MODULES = ("Timesteps", "DecomposedGroupNorm", "DecomposedLayerNorm", "SubPixelUpsample2D")


def _always_float(node: torch.fx.Node) -> bool:
    """Ops int8 must not touch, measured on the embedded student: sinusoidal timestep embeddings (diffusers
    `Timesteps`, sin/cos of t·freqs with t up to ~1000: 12 dB with them int8, 24 dB float), the generator's own glue
    math (consistency scaling, latent scaling, guidance embedding: elementwise, cheap in float), and the norm
    statistics of the decomposed GroupNorm/LayerNorm passes (mean/variance at 8 bits: 31 dB → 25 dB). The sub-pixel
    upsample's phase convs (functional convs on parameter kernels) stay float too: quantized, XNNPACK refuses to build
    them at load time (`xnn_status_invalid_parameter`)."""
    stack = list(node.meta.get("nn_module_stack", {}).values())
    if not stack:
        return node.op == "call_function"
    path, kind = stack[-1]
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))
    return path.removeprefix("L['self']") in ("", ".") or kind_name.endswith(_FLOAT_MODULES)


def quantize_int8(module: nn.Module, args: tuple[torch.Tensor, ...],
                  calibration: Iterable[tuple[torch.Tensor, ...]], keep_float: Iterable[str] = (),
                  exported: torch.fx.GraphModule | None = None) -> nn.Module:
    """PT2E static int8: XNNPACK quantizer, per-channel symmetric weights, activations calibrated on `calibration`;
    the submodules named in `keep_float` stay float."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_module_name_filter,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    skip = [get_module_name_filter(name) for name in keep_float]
    quantizer.set_filter_function(lambda node: not (_always_float(node) or any(f(node) for f in skip)))
    graph = copy.deepcopy(exported) if exported is not None else export_program(module, args).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(*batch)
    return convert_pt2e(prepared)


_WEIGHTED = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


def _graph_module_paths(exported: torch.fx.GraphModule) -> set[str]:
    """Module paths that own at least one node of the exported graph (modules the forward really calls)."""
    paths: set[str] = set()
    for node in exported.graph.nodes:
        for path, _ in node.meta.get("nn_module_stack", {}).values():
            paths.add(path.removeprefix("L['self']."))
    return paths


def block_candidates(module: nn.Module, exported: torch.fx.GraphModule) -> list[str]:
    """Blocks to try keeping float: each element of a ModuleList (a down/up/mid ResNet or attention block) and each
    Conv/Linear outside one. Block granularity keeps the search to ~20 PT2E runs instead of one per layer."""
    called = _graph_module_paths(exported)
    found: list[str] = []

    def visit(name: str, node: nn.Module) -> None:
        if name and not any(path == name or path.startswith(f"{name}.") for path in called):
            return
        in_list = name.rsplit(".", 1)[-1].isdigit()
        if isinstance(node, _WEIGHTED) or (in_list and any(isinstance(m, _WEIGHTED) for m in node.modules())):
            found.append(name)
            return
        for child, sub in node.named_children():
            visit(f"{name}.{child}" if name else child, sub)

    visit("", module)
    return found


# The search scores PT2E's simulated int8 in PyTorch on calibration inputs; the gate runs XNNPACK's int8 kernels on the
# golden inputs, which measured up to ~1.7 dB lower (embedded student re-distilled on a 5-point grid: 31.0 → 29.3 dB
# with the ONNX search's settings). Aiming 1 dB higher and allowing up to half the blocks float took it to 30.5 dB.
INT8_EXTRA_MARGIN_DB = 1.0
INT8_MAX_FLOAT_FRACTION = 0.5


def int8_with_mixed_precision(module: nn.Module, args: tuple[torch.Tensor, ...],
                              calibration: list[tuple[torch.Tensor, ...]], output_range: tuple[float, float] | None,
                              ) -> tuple[nn.Module, dict[str, Any]]:
    """`quantize_int8`, keeping the fewest Conv/Linear modules float that bring the calibration PSNR to the target."""
    from cdx.convert.mixed_precision import keep_float_search, search_target
    from cdx.metrics import psnr

    exported = export_program(module, args).module()
    with torch.no_grad():
        reference = torch.cat([module(*b) for b in calibration]).numpy()
    target, peak = search_target(output_range)
    target += INT8_EXTRA_MARGIN_DB
    peak = peak or float(np.ptp(reference)) or 1.0
    latest: dict[tuple[str, ...], nn.Module] = {}  # the last trial only: it is the kept set the search reports

    def score(kept: list[str]) -> float:
        quantized = quantize_int8(module, args, calibration, kept, exported)
        latest.clear()
        latest[tuple(kept)] = quantized
        with torch.no_grad():
            return psnr(reference, torch.cat([quantized(*b) for b in calibration]).numpy(), peak)

    candidates = block_candidates(module, exported)
    record = {**keep_float_search(score, candidates, target, INT8_MAX_FLOAT_FRACTION),
              "measured_on": f"{len(calibration)} calibration inputs"}
    chosen = tuple(record["kept_float"])
    quantized = latest[chosen] if chosen in latest else quantize_int8(module, args, calibration, list(chosen), exported)
    return quantized, record


def _partitioner(delegate: str) -> list[Any]:
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    specs = CoreMLBackend.generate_compile_specs(minimum_deployment_target=ct.target.iOS17,
                                                 compute_precision=ct.precision.FLOAT16)
    return [CoreMLPartitioner(compile_specs=specs)]


def _op_name(target: Any) -> str:
    return getattr(target, "__name__", str(target))


def delegation_summary(edge: Any) -> dict[str, Any]:
    """Delegate calls, ops inside delegates vs ops left on portable kernels, and the portable op names."""
    program = edge.exported_program()
    portable: Counter[str] = Counter()
    calls = 0
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if "executorch_call_delegate" in name:
            calls += 1
        elif not any(skip in name for skip in _NON_OPS):
            portable[name] += 1
    delegated = 0
    for _, lowered in program.graph_module.named_children():
        original = getattr(lowered, "original_module", None)
        if original is not None:
            delegated += sum(1 for n in original.graph.nodes if n.op == "call_function" and "getitem" not in _op_name(n.target))
    total = delegated + sum(portable.values())
    return {
        "delegate_calls": calls,
        "delegated_ops": delegated,
        "portable_ops": sum(portable.values()),
        "delegated_fraction": round(delegated / total, 4) if total else 0.0,
        "portable_op_names": dict(sorted(portable.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _copy_sharing_constants(cls: type, edge_program: torch.export.ExportedProgram,
                            compile_specs: list[Any]) -> torch.export.ExportedProgram:
    """A deep copy of a partition for the backend's `preprocess` that keeps the partition's constant tensors.

    ExecuTorch deep-copies every partition before `preprocess` (`BackendDetails.copy_exported_program_for_preprocess`,
    all partitions at once, executorch 1.5.1 `lower_all_submodules_to_backend`), which copies every weight: on SD-1.5
    a whole second copy of the 3.5 GB of weights held through the lowering. XNNPACK's preprocess and its passes never
    write a constant in place (they build new contiguous or channels-last tensors and replace entries of the copy's
    own dicts), so the copy can keep the originals; the graph and every container are still copied. Only compact
    tensors are shared: XNNPACK serializes a constant's whole storage from its start, so a view with an offset (or
    into a larger storage) must reach it as the compact clone `nn.Parameter.__deepcopy__` makes (the SD GEGLU halves
    are compact storage slices for this reason, `passes.row_block`). Tests: the `.pte` is byte-identical either way,
    the tensors `preprocess` receives are the partition's own, and they are unchanged after lowering."""
    memo = {id(t): t for t in (*edge_program.state_dict.values(), *edge_program.constants.values())
            if isinstance(t, torch.Tensor) and is_compact(t)}
    return copy.deepcopy(edge_program, memo)


@contextlib.contextmanager
def _xnnpack_copies_share_constants() -> Iterator[None]:
    """While lowering, XNNPACK's per-partition working copies share the partitions' weights (see above)."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    name = "copy_exported_program_for_preprocess"
    own = vars(XnnpackBackend).get(name)  # None: inherited from BackendDetails
    setattr(XnnpackBackend, name, classmethod(_copy_sharing_constants))
    try:
        yield
    finally:
        if own is None:
            delattr(XnnpackBackend, name)
        else:
            setattr(XnnpackBackend, name, own)


def lower(program: torch.export.ExportedProgram, delegate: str = "xnnpack", etrecord: bool = False,
          share_constants: bool = True) -> Any:
    """to_edge_transform_and_lower with the delegate's partitioner; returns the EdgeProgramManager. `etrecord` keeps
    the ETRecord (`.to_executorch().get_etrecord()`) that the devtools Inspector maps profiled events back with.
    `share_constants` keeps the partitions' weights shared with the backend's working copy (one weight copy less)."""
    from executorch.exir import to_edge_transform_and_lower

    sharing = (_xnnpack_copies_share_constants() if share_constants and delegate == "xnnpack"
               else contextlib.nullcontext())
    with sharing:
        return to_edge_transform_and_lower(program, partitioner=_partitioner(delegate), generate_etrecord=etrecord)


def format_summary(summary: dict[str, Any]) -> str:
    """One line for the console: delegate calls, delegated vs portable ops, the portable op names."""
    names = ", ".join(f"{k.removeprefix('aten.')}×{v}" for k, v in summary["portable_op_names"].items()) or "none"
    return (f"delegation: {summary['delegate_calls']} delegate call(s), {summary['delegated_ops']} ops delegated, "
            f"{summary['portable_ops']} portable ({names})")


# fp32 weight bytes from which the lowering runs in a child process (Linux): its native leftovers (XNNPACK's
# serialized weight copies, heap fragments) leave with the child instead of staying beside the parity gates
ISOLATE_FROM_BYTES = 256 * 2**20


def _weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters, counted as the ONNX exporter counts them for its external-data choice."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _isolate_by_default(generator: nn.Module) -> bool:
    return sys.platform.startswith("linux") and _weight_bytes(generator) >= ISOLATE_FROM_BYTES


def _lower_to_file(generator: ExportableGraph, path: Path, quant: str, names: tuple[str, ...],
                   calibration: list[tuple[torch.Tensor, ...]] | None) -> dict[str, Any]:
    """Passes → (int8) → torch.export → lowering → the .pte streamed to `path`; returns what the record needs."""
    _, delegate = QUANTS[quant]
    args = tuple(generator.example_inputs().values())
    module, counts = apply_passes(generator, names)
    quantization = None
    if quant == "int8":
        samples = calibration or [args]
        module, search = int8_with_mixed_precision(module, args, samples, generator.output_specs()[0].range)
        quantization = {"method": "PT2E static", "quantizer": "XNNPACKQuantizer",
                        "config": "get_symmetric_quantization_config(is_per_channel=True)",
                        "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor, calibrated",
                        "calibration_samples": len(samples),
                        "calibration": "seeded generator inputs (noise + conditioning)", "mixed_precision": search}
    edge = lower(export_program(module, args), delegate)
    summary = delegation_summary(edge)
    with path.open("wb") as handle:  # streamed: `.buffer` would join the whole program in memory once more
        edge.to_executorch().write_to_file(handle)
    return {"passes": counts, "delegation": summary, "quantization": quantization}


def _lower_in_child(work: Callable[[], dict[str, Any]], path: Path) -> dict[str, Any]:
    """Run `work()` (which writes `path`) in a forked child and return its JSON-able result. The child shares the
    parent's weights copy-on-write (read only, so never copied); whatever lowering leaves in native memory is given
    back to the OS when the child exits. A failure comes back as one line; a partial file is removed."""
    result_path = path.with_name(f".{path.name}.result.json")
    log_path = path.with_name(f".{path.name}.log")
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        code = 1
        try:
            with log_path.open("w") as log:  # fresh streams: a lock held by a parent thread at fork stays held
                sys.stdout = sys.stderr = log
                # GNU OpenMP cannot use the parent's thread pool after fork (the first parallel GEMM would wait on
                # threads that no longer exist); one thread never enters it
                torch.set_num_threads(1)
                try:
                    outcome = {"ok": work()}
                    code = 0
                except BaseException as exc:
                    outcome = {"error": explain(exc, "executorch")}
                result_path.write_text(json.dumps(outcome))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        outcome = json.loads(result_path.read_text()) if result_path.exists() else None
    finally:
        for leftover in (result_path, log_path):
            leftover.unlink(missing_ok=True)
    if outcome is None or "ok" not in outcome:
        path.unlink(missing_ok=True)
        if outcome is not None:
            raise ConversionError(outcome["error"])
        signal_number = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        cause = (f"killed by signal {signal_number}" + (" (out of memory?)" if signal_number == 9 else "")
                 if signal_number else f"exit status {os.WEXITSTATUS(status)}")
        raise ConversionError(f"executorch: the lowering process for {path.name} ended without a result: {cause}")
    return outcome["ok"]


def export_executorch(generator: ExportableGraph, path: Path, quant: str = "none", passes: Iterable[str] | None = None,
                      calibration: list[tuple[torch.Tensor, ...]] | None = None,
                      say: Any = None, isolate: bool | None = None) -> Artifact:
    """Write `path` (.pte) for `generator`; returns the artifact with its export record (passes, delegation, sizes).

    `isolate` lowers in a forked child process (default: on Linux for weights ≥ ISOLATE_FROM_BYTES), so what the
    lowering leaves in native memory never sits beside the parity gate (SD-1.5 at 128 px: that stage 15.4 → 7.7 GB)."""
    from importlib.metadata import version

    precision, delegate = QUANTS[quant]
    names = resolve_passes(passes)
    if quant == "int8" and passes is None:  # defaults only: an explicit --passes list is taken as given
        names = tuple(n for n in names if n not in _NOT_FOR_INT8)
    isolate = _isolate_by_default(generator) if isolate is None else isolate

    def work() -> dict[str, Any]:
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            return _lower_to_file(generator, path, quant, names, calibration)

    if say:
        say(f"lowering {path.stem} for {delegate}" + (" in a child process" if isolate else ""))
    if isolate:
        done = _lower_in_child(work, path)
    else:
        try:
            done = work()
        except Exception as exc:  # converters raise anything; the user gets one line
            raise ConversionError(explain(exc, "executorch")) from None
    counts, summary, quantization = done["passes"], done["delegation"], done["quantization"]
    if say:
        say(format_summary(summary))
    record = {
        "exporter": "torch.export → executorch.exir.to_edge_transform_and_lower",
        "delegate": delegate,
        "executorch": version("executorch"),
        "torch": torch.__version__,
        "passes": counts,
        "delegation": summary,
    }
    if delegate == "coreml":
        record["note"] = "Core ML-delegated .pte: the CoreMLBackend is not registered in the Linux runtime, so it cannot run here"
    return Artifact(file=path.name, format="pte", precision=precision, export=record, quantization=quantization,
                    numeric=delegate == "xnnpack")
