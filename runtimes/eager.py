"""Eager PyTorch runner: rebuilds the float graph (generator, step, decoder, teacher step) from the manifest's source
model and schedule, with the same modules convert exports (`cdx.distill.generator` / `cdx.distill.graphs`).

It is the reference every other runtime is measured against, so it refuses a source whose weights
differ from the ones the artifact was exported from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx.distill.graphs import graph_for_role
from cdx.distill.loading import load_latent_pipeline
from cdx.errors import ChecksumError
from cdx.runtimes.base import Runner


class EagerRunner(Runner):
    """The float32 generator in eager PyTorch, built from `manifest.source.path`."""

    runtime = "torch"

    def __init__(self, folder: Path, manifest: dict[str, Any], model: dict[str, Any], threads: int | None = None):
        super().__init__(folder, manifest, model, threads)
        if threads:
            torch.set_num_threads(threads)
        source = manifest["source"]
        parts = load_latent_pipeline(source["path"])
        if parts.weights_sha256 != source["weights_sha256"]:
            raise ChecksumError(
                f"{source['path']}: weights differ from the ones this artifact was exported from "
                "(source weights_sha256 mismatch)"
            )
        if source.get("decoder"):  # exported with a tiny decoder (cdx convert --decoder): the same one, checked
            from cdx.distill.decoder_swap import decoder_weights_sha256, with_decoder

            folder = source["decoder"]["path"]
            if decoder_weights_sha256(folder) != source["decoder"]["sha256"]:
                raise ChecksumError(f"{folder}: decoder weights differ from the ones this artifact was exported with "
                                    "(source.decoder sha256 mismatch)")
            parts, _ = with_decoder(parts, folder)
        schedule = dict(manifest["schedule"])
        schedule["latent_shape"] = next((s["shape"] for s in model["inputs"] if s["name"] in ("noise", "latents")),
                                        schedule["latent_shape"])  # the text encoder has no latent input
        schedule["steps"] = schedule["steps"][: model.get("steps", len(schedule["steps"]))]
        self.module = graph_for_role(parts, schedule, model.get("role", "generator"))

    @torch.inference_mode()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        args = [torch.from_numpy(inputs[name]) for name in self.input_names]
        out = self.module(*args)
        return {self.output_names[0]: out.numpy()}
