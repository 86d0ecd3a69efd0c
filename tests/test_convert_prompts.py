"""Prompts through convert: a text student is calibrated, golden-tested and gated on prompts encoded by its own text
encoder (not N(0, 1) stand-ins), its text encoder is exported as a graph of its own with the tokenizer a device needs,
and the manifest, the reference tokenizer and the bundle carry all of it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cdx.errors import InputError
from cdx.golden_io import manifest_inputs, read_golden
from cdx.manifest import load_manifest

PROMPTS = ["a red apple", "Grinning   face with big eyes", "flag: France"]


def _clip_direct(student: Path, prompts: list[str]) -> np.ndarray:
    """CLIPTextModel and CLIPTokenizer loaded and run directly with transformers (no cdx code)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(student / "tokenizer")
    model = CLIPTextModel.from_pretrained(student / "text_encoder").eval()
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids)[0].numpy()


@pytest.fixture(scope="module")
def text_export(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """tiny SD → ONNX fp32 + int8-dynamic with a --prompts file and the text encoder graph; the calibration data
    convert handed its exporter is recorded on the way (the real exporter still runs)."""
    from cdx.convert import export as export_module
    from cdx.convert.export import ConvertOptions, convert

    root = tmp_path_factory.mktemp("prompts")
    prompts_file = root / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS[:2]) + "\n\n" + PROMPTS[2] + "\n", "utf-8")
    seen: dict[str, list] = {}
    original = export_module._export_one

    def recording(target, graph, staging, stem, quant, options, context):
        seen.setdefault(graph.role, context["calibration"])
        return original(target, graph, staging, stem, quant, options, context)

    export_module._export_one = recording
    try:
        out = root / "onnx"
        convert(tiny_sd, out, ConvertOptions(target="onnx", quants=("none", "int8-dynamic"), seeds=(0, 1, 2, 3),
                                             calibration_samples=4, prompts=str(prompts_file), text_encoder=True,
                                             exporter="torchscript"))  # the quicker exporter: this is about inputs
    finally:
        export_module._export_one = original
    return SimpleNamespace(out=out, calibration=seen, prompts_file=prompts_file, student=tiny_sd)


def test_calibration_inputs_are_the_text_encoder_outputs_of_the_prompts(text_export: SimpleNamespace) -> None:
    direct = _clip_direct(text_export.student, PROMPTS)
    generator_calibration = text_export.calibration["generator"]
    assert len(generator_calibration) == 4
    for j, sample in enumerate(generator_calibration):
        text_embedding = sample[1].numpy()  # inputs: noise, text_embedding, guidance_scale
        assert text_embedding.shape == (1, *direct.shape[1:])
        assert np.abs(text_embedding[0] - direct[j % len(PROMPTS)]).max() <= 1e-5


def test_golden_data_and_the_conditioning_check_use_two_real_prompts(text_export: SimpleNamespace) -> None:
    data = load_manifest(text_export.out)
    record = data["conditioning"]["prompts"]
    from cdx.atomic import sha256_file

    assert record["texts"] == PROMPTS and record["source"] == "file"
    assert record["file"] == str(text_export.prompts_file) and record["sha256"] == sha256_file(text_export.prompts_file)
    generator = next(m for m in data["models"] if m["role"] == "generator")
    inputs, _ = read_golden(text_export.out, generator)
    direct = _clip_direct(text_export.student, PROMPTS)
    assert generator["golden"]["prompts"] == [PROMPTS[i % 3] for i in range(4)]
    for i in range(4):
        assert np.abs(inputs["text_embedding"][i] - direct[i % 3]).max() <= 1e-5
    # the manifest's rule (+ the folder's prompt files) rebuilds the golden inputs bit for bit
    for i, batch in enumerate(manifest_inputs(generator, data, generator["golden"]["seeds"], text_export.out)):
        for name, value in batch.items():
            assert np.array_equal(value, inputs[name][i : i + 1]), name
    with pytest.raises(InputError, match="encoded prompts"):
        manifest_inputs(generator, data, [0])
    quantized = next(m for m in data["models"] if m["precision"] == "int8-dynamic")
    assert quantized["parity"]["conditioning_sensitivity"]["aligned_ratio"] >= 0.5


def test_contrast_is_the_next_prompt(text_export: SimpleNamespace) -> None:
    from cdx.golden_io import contrast_batches, prompt_tensors

    data = load_manifest(text_export.out)
    generator = next(m for m in data["models"] if m["role"] == "generator")
    batches = manifest_inputs(generator, data, [0, 1, 2], text_export.out)
    _, embeddings = prompt_tensors(text_export.out, data)
    other = contrast_batches([s["name"] for s in generator["inputs"]], batches, None, embeddings)
    for i, batch in enumerate(other):
        assert np.array_equal(batch["text_embedding"][0], embeddings[(i + 1) % 3])
        assert np.array_equal(batch["noise"], batches[i]["noise"])


def test_text_encoder_graph_is_exported_gated_and_listed_with_its_tokenizer(text_export: SimpleNamespace) -> None:
    from cdx.runtimes import load_runner

    data = load_manifest(text_export.out)
    encoder = next(m for m in data["models"] if m["role"] == "text_encoder")
    assert encoder["name"] == "text_encoder" and encoder["contains"] == ["text_encoder"]
    assert [(s["name"], s["dtype"], s["shape"]) for s in encoder["inputs"]] == [("input_ids", "int64", [1, 16])]
    assert [(s["name"], s["shape"]) for s in encoder["outputs"]] == [("text_embedding", [1, 16, 32])]
    assert encoder["parity"]["checked"] == "numeric" and encoder["parity"]["passed"]
    assert encoder["parity"]["runtime"] == "onnxruntime" and encoder["parity"]["max_abs"] <= 1e-4
    listed = {f["path"] for f in data["files"]}
    assert set(encoder["tokenizer"]["files"].values()) <= listed
    # the ONNX text encoder on the prompts' ids is the CLIPTextModel run directly
    ids, _ = read_golden(text_export.out, encoder)
    runner = load_runner(text_export.out, "text_encoder")
    direct = _clip_direct(text_export.student, PROMPTS)
    for i in range(3):
        ours = runner.run({"input_ids": ids["input_ids"][i : i + 1]})["text_embedding"]
        assert np.abs(ours[0] - direct[i]).max() <= 1e-4


def test_reference_tokenizer_from_the_manifest_matches_hugging_face(text_export: SimpleNamespace) -> None:
    from cdx.clip_tokenizer import ClipTokenizer
    from cdx.distill.text_encoder_graph import read_vectors

    data = load_manifest(text_export.out)
    encoder = next(m for m in data["models"] if m["role"] == "text_encoder")
    section = encoder["tokenizer"]
    tokenizer = ClipTokenizer(text_export.out, section)
    vectors = read_vectors(text_export.out, section)
    assert len(vectors) >= 10 and any(len(v["text"]) > 100 for v in vectors)
    for vector in vectors:
        assert tokenizer(vector["text"]) == vector["input_ids"], vector["text"]
    ids, _ = read_golden(text_export.out, encoder)
    assert [tokenizer(p) for p in PROMPTS] == ids["input_ids"].tolist()


def test_reference_tokenizer_applies_bpe_merges_like_hugging_face(tmp_path: Path) -> None:
    """The tiny vocabulary has no merges; this one does (ranks, repeated pairs, contractions, </w>)."""
    from transformers import AutoTokenizer, CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    from cdx.clip_tokenizer import ClipTokenizer
    from cdx.distill.text_encoder_graph import VECTOR_TEXTS, read_vectors, tokenizer_section

    merges = ["r e", "re d</w>", "a p", "ap p", "l e</w>", "app le</w>", "c a", "ca t</w>", "' s</w>", "e e", "ee e</w>"]
    vocab: dict[str, int] = {}
    for sym in bytes_to_unicode().values():
        vocab[sym] = len(vocab)
    for sym in bytes_to_unicode().values():
        vocab[sym + "</w>"] = len(vocab)
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), "utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=24).save_pretrained(
        tmp_path / "tok")
    texts = [*VECTOR_TEXTS, "the cat's red apple", "eeeee apple apples", "CAT CAT cat"]
    for hf in (CLIPTokenizer.from_pretrained(tmp_path / "tok"), AutoTokenizer.from_pretrained(tmp_path / "tok")):
        parts = SimpleNamespace(tokenizer=hf, text_sequence_length=24, path="merges-test")
        section = tokenizer_section(parts, tmp_path / type(hf).__name__)  # type: ignore[arg-type]
        ours = ClipTokenizer(tmp_path / type(hf).__name__, section)
        assert any(vocab["apple</w>"] in v["input_ids"] for v in read_vectors(tmp_path / type(hf).__name__, section))
        expected = hf(texts, padding="max_length", max_length=24, truncation=True).input_ids
        assert [ours(t) for t in texts] == expected, type(hf).__name__


def test_prompts_file_and_default_prompt_set(tmp_path: Path, tiny_unet2d: Path) -> None:
    from cdx.convert.export import ConvertOptions, convert
    from cdx.convert.golden import BUILTIN_PROMPTS, prompt_set

    cases = {"missing.txt": None, "one.txt": "only one prompt\n\n", "empty.txt": "", "latin1.txt": b"caf\xe9\nx\n",
             "binary.txt": b"a\x00b\nc\n"}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content, "utf-8")
        with pytest.raises(InputError) as err:
            ConvertOptions(prompts=str(path)).validate()
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"--prompts {path}"), message
    good = tmp_path / "good.txt"
    good.write_text("a\nb\n", "utf-8")
    with pytest.raises(InputError, match="not text-conditioned"):
        convert(tiny_unet2d, tmp_path / "out", ConvertOptions(prompts=str(good)))
    assert not (tmp_path / "out").exists()
    assert prompt_set(["a cat", "a dog", "a cat"]).texts == ("a cat", "a dog")  # the student's cdx.json captions
    assert prompt_set(["a cat"]).source == "builtin" and prompt_set([]).texts == BUILTIN_PROMPTS


def test_bundle_carries_the_text_encoder_tokenizer_and_prompts(text_export: SimpleNamespace, tmp_path: Path) -> None:
    from cdx.bundle import make_bundle, open_bundle
    from cdx.clip_tokenizer import ClipTokenizer

    data = load_manifest(text_export.out)
    generator = next(m for m in data["models"] if m["role"] == "generator")
    out = make_bundle(text_export.out, tmp_path / "bundle", models=[generator["name"]], as_zip=True)
    with open_bundle(out) as (folder, manifest):
        assert [m["role"] for m in manifest["models"]] == ["generator", "text_encoder"]
        section = manifest["models"][1]["tokenizer"]
        for rel in (*section["files"].values(), manifest["conditioning"]["prompts"]["text_embedding"]):
            assert (folder / rel).is_file()
        assert ClipTokenizer(folder, section)(PROMPTS[0]) == manifest_inputs(manifest["models"][1], manifest, [0],
                                                                             folder)[0]["input_ids"][0].tolist()


def test_executorch_and_coreml_text_encoder_graphs_pass_the_gate(tiny_sd: Path, tmp_path: Path) -> None:
    """The same graph through the other two targets: ExecuTorch (XNNPACK, run here) and Core ML (spec-checked off
    macOS), each gated on the prompts' token ids."""
    from cdx.convert.coreml import export_coreml
    from cdx.convert.executorch import export_executorch
    from cdx.convert.parity import parity_gate
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.text_encoder_graph import TextEncoderGraph, tokenize

    parts = load_latent_pipeline(tiny_sd)
    ids = tokenize(parts, PROMPTS)
    graph = TextEncoderGraph(parts, example_ids=ids).eval()
    inputs = [{"input_ids": ids[i : i + 1]} for i in range(len(PROMPTS))]
    direct = _clip_direct(tiny_sd, PROMPTS)
    reference = [{"text_embedding": direct[i : i + 1]} for i in range(len(PROMPTS))]
    specs = {"inputs": [s.as_dict() for s in graph.input_specs()], "outputs": [s.as_dict() for s in graph.output_specs()]}
    # no graph rewrites for ExecuTorch here: they halve lowering time's share of this test, and each has its own test
    for target, artifact in (("executorch", export_executorch(graph, tmp_path / "text_encoder.pte", "none", passes=())),
                             ("coreml", export_coreml(graph, tmp_path / "text_encoder.mlpackage", "fp32"))):
        entry = {"name": f"text_encoder_{target}", "role": "text_encoder", "target": target, "format": artifact.format,
                 "precision": artifact.precision, "file": artifact.file, "export": artifact.export, **specs}
        record = parity_gate(tmp_path, {}, entry, inputs, reference)
        assert record["passed"], record
        if target == "executorch":
            assert record["checked"] == "numeric" and record["max_abs"] <= 1e-4
        else:
            assert record["checked"] in ("spec", "numeric") and record.get("io_matches_manifest", True)


def test_bench_image_grid_is_labelled_with_the_prompts(text_export: SimpleNamespace, tmp_path: Path) -> None:
    from cdx.benchmarks.bench import GRID_SAMPLES, grid_columns
    from cdx.benchmarks.plots import image_grid

    columns = grid_columns(load_manifest(text_export.out))
    assert columns == [PROMPTS[i % 3] for i in range(GRID_SAMPLES)]
    images = np.random.default_rng(0).random((GRID_SAMPLES, 3, 8, 8)).astype(np.float32)
    path = image_grid({"student (eager)": images, "latents": images[:, :1, None]}, tmp_path / "grid.png", columns)
    assert path is not None and path.stat().st_size > 0
