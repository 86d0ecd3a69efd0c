"""`--mode components`: a step graph and a decoder graph that, looped with the manifest's constants, give the generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdx.convert.export import ConvertOptions, convert
from cdx.convert.golden import eager_outputs, read_golden, seeded_batches, unstack
from cdx.distill.generator import build_generator
from cdx.distill.loading import load_latent_pipeline
from cdx.distill.loops import run_components
from cdx.manifest import load_manifest
from cdx.runtimes import load_runner


@pytest.fixture(scope="module")
def components(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "components"
    convert(tiny_sd, out, ConvertOptions(target="onnx", mode="components", steps=2, quants=("none", "int8-static"),
                                         seeds=(0, 1)))
    return out


def test_manifest_lists_step_and_decoder_graphs_with_the_sampler_constants(components: Path) -> None:
    data = load_manifest(components)
    roles = [(m["role"], m["precision"]) for m in data["models"]]
    assert roles == [("unet_step", "fp32"), ("unet_step", "int8-static"), ("vae_decoder", "fp32"), ("vae_decoder", "int8-static")]
    step = data["models"][0]
    assert [i["name"] for i in step["inputs"]] == ["latents", "timestep", "alpha_cumprod", "c_skip", "c_out",
                                                    "text_embedding", "guidance_scale"]
    assert "vae_decoder" not in step["contains"] and data["models"][2]["contains"] == ["vae_decoder"]
    assert len(data["schedule"]["steps"]) == 2
    assert all(m["parity"]["passed"] for m in data["models"])


def test_looping_the_onnx_components_with_manifest_constants_reproduces_the_generator(components: Path) -> None:
    data = load_manifest(components)
    step = load_runner(components, "unet_step_16x16", runtime="onnxruntime")
    decoder = load_runner(components, "vae_decoder_16x16", runtime="onnxruntime")
    generator, _ = build_generator(load_latent_pipeline(data["source"]["path"]), num_steps=2)
    batches = seeded_batches(generator, [5, 6], None)
    expected = eager_outputs(generator, batches)
    for batch, reference in zip(batches, expected, strict=True):
        image = run_components(step, decoder, data["schedule"]["steps"], batch)
        assert np.abs(image - reference["image"]).max() <= 1e-4


def test_component_golden_data_is_the_first_step_and_the_decoded_latents(components: Path) -> None:
    step = load_runner(components, "unet_step_16x16")
    inputs, outputs = read_golden(components, step.model)
    first = load_manifest(components)["schedule"]["steps"][0]
    assert inputs["timestep"].ravel().tolist() == [first["timestep"]] * 2
    for i, sample in enumerate(unstack(inputs)):
        assert np.abs(step.run(sample)["denoised"] - outputs["denoised"][i : i + 1]).max() <= 1e-4
    eager = load_runner(components, "vae_decoder_16x16", runtime="torch")
    dec_inputs, dec_outputs = read_golden(components, eager.model)
    assert np.abs(eager.run(unstack(dec_inputs)[0])["image"] - dec_outputs["image"][:1]).max() <= 1e-6
