"""Distillation data in the ecosystem's formats, on tiny random SD-shaped RGB text teachers (no network).

Formats: an imagefolder with metadata.jsonl (HF datasets), WebDataset tar shards (streamed), class subfolders.
The teacher's CFG and the student see the embeddings of each batch's own captions; caption dropout gives the empty
prompt at its rate; the latent cache is built once and read after; an unreadable image is one line, skipped and counted
(or fatal with --strict); batch k of rank r is a pure function of (seed, k, r).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdx.distill.batches import BatchStream, DataOptions
from cdx.distill.distiller import ConsistencyDistiller, DistillConfig, distill_student
from cdx.distill.image_io import UnreadableImage, decode_image
from cdx.distill.latent_cache import build_latent_cache, encode_latents, expected_index
from cdx.distill.loading import load_latent_pipeline
from cdx.distill.sources import ShardSource, example_prompts, open_source
from cdx.errors import InputError

COLORS = {"red": (220, 30, 30), "green": (30, 190, 60), "blue": (40, 50, 210), "yellow": (235, 215, 40),
          "purple": (150, 40, 170), "teal": (30, 170, 170)}


def _png(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    """A solid-colour RGB PNG with a white corner (so images are not constant)."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:] = color
    pixels[:6, :6] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _config(**overrides) -> DistillConfig:
    base = {"steps": 2, "batch_size": 4, "num_solver_steps": 10, "checkpoint_every": 100, "sample_every": 0, "seed": 0}
    return DistillConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """diffusers' --train_data_dir layout: images + metadata.jsonl with file_name and text."""
    root = tmp_path_factory.mktemp("imagefolder")
    rows = []
    for name, color in COLORS.items():
        (root / f"{name}.png").write_bytes(_png(color))
        rows.append({"file_name": f"{name}.png", "text": f"a {name} square"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return root


def _captions_by_file(root: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text("utf-8").splitlines()]
    return {str(root / r["file_name"]): r["text"] for r in rows}


def _write_shard(path: Path, samples: list[tuple[str, bytes, str]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, data, text in samples:
            for name, payload in ((f"{key}.png", data), (f"{key}.txt", text.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three WebDataset shards of four captioned RGB PNGs each."""
    root = tmp_path_factory.mktemp("shards")
    colors = list(COLORS.values())
    for s in range(3):
        _write_shard(root / f"shard-{s:03d}.tar",
                     [(f"s{s}-{i:02d}", _png(colors[(s + i) % len(colors)]), f"shard {s} picture {i}") for i in range(4)])
    return root


@pytest.fixture
def text_parts(tiny_sd: Path):
    return load_latent_pipeline(tiny_sd)


# ---- images --------------------------------------------------------------------------------------------------
def test_rgb_is_kept_through_decoding_and_the_vae(text_parts, tmp_path: Path) -> None:
    red = _png(COLORS["red"])
    grey = io.BytesIO()
    Image.open(io.BytesIO(red)).convert("L").convert("RGB").save(grey, format="PNG")
    x_red, x_grey = decode_image(red, "red", 64, 3), decode_image(grey.getvalue(), "grey", 64, 3)
    assert x_red.shape == (3, 64, 64)
    assert float(x_red[0, 30, 30] - x_red[1, 30, 30]) > 1.0  # red channel high, green low
    assert torch.equal(x_grey[0], x_grey[1])
    latents = encode_latents(text_parts, torch.stack([x_red, x_grey]))
    assert latents.shape == (2, 4, 16, 16)
    assert float((latents[0] - latents[1]).abs().max()) > 1e-2
    # class subfolders (the old path read them as grey ×3) come in RGB for an RGB VAE
    (tmp_path / "cls" / "reds").mkdir(parents=True)
    (tmp_path / "cls" / "reds" / "a.png").write_bytes(red)
    item = open_source(tmp_path / "cls", 64, 3).item(0)
    assert item.caption == "reds" and torch.equal(item.image, x_red)


def test_shorter_side_is_resized_and_the_center_is_cropped() -> None:
    pixels = np.zeros((40, 80, 3), np.uint8)  # 80 wide: the crop keeps columns 20..60 of the original
    pixels[:, :18] = COLORS["blue"]
    pixels[:, 18:62] = COLORS["green"]
    pixels[:, 62:] = COLORS["red"]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    x = decode_image(buffer.getvalue(), "strip", 32, 3)
    green = torch.tensor(COLORS["green"], dtype=torch.float32) / 127.5 - 1
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x.mean(dim=(1, 2)), green, atol=0.02, rtol=0)


def test_in_memory_images_are_encoded_once_when_the_run_draws_them_all(text_parts, tmp_path: Path) -> None:
    from cdx.distill.data import ImageDataset
    from cdx.distill.latent_cache import InMemoryLatents

    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    data = ImageDataset(images, torch.zeros(4, dtype=torch.int64), ["a thing"])
    once = ConsistencyDistiller(text_parts, data, _config(steps=1), tmp_path / "a")  # 1 × 4 draws ≥ 4 images
    per_batch = ConsistencyDistiller(text_parts, data, _config(steps=1, batch_size=2), tmp_path / "b")
    assert isinstance(once.batches.source, InMemoryLatents) and not isinstance(per_batch.batches.source, InMemoryLatents)
    x_once = once.sample_batch()["x0"]
    index = {n: i for i, n in enumerate(once.batches.batch(0)["names"])}
    direct = encode_latents(text_parts, images)
    for name, i in index.items():
        torch.testing.assert_close(x_once[i], direct[int(name[1:])], atol=1e-5, rtol=1e-4)
    assert per_batch.sample_batch()["x0"].shape == (2, 4, 16, 16)


# ---- captions -------------------------------------------------------------------------------------------------
def test_teacher_and_student_are_conditioned_on_the_batch_captions(text_parts, imagefolder: Path, tmp_path: Path) -> None:
    source = open_source(imagefolder, 64, 3, cache_dir=tmp_path / "hf")
    d = ConsistencyDistiller(text_parts, source, _config(), tmp_path / "work")
    b = d.sample_batch()
    truth = _captions_by_file(imagefolder)
    names = d.batches.batch(0)["names"]
    assert b["captions"] == [truth[n] for n in names]
    expected = d.cond.encode(b["captions"])
    null = d.cond.encode([""])
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}

    def recorder(key: str):
        def hook(_module, _args, kwargs):
            seen[key].append(kwargs["encoder_hidden_states"].detach().clone())
        return hook

    handles = [d.teacher.register_forward_pre_hook(recorder("teacher"), with_kwargs=True),
               d.accelerator.unwrap_model(d.student).register_forward_pre_hook(recorder("student"), with_kwargs=True)]
    try:
        d.train_step(b)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen["teacher"]) == 2 and len(seen["student"]) == 1  # DDIM step: conditional + unconditional branch
    torch.testing.assert_close(seen["teacher"][0].cpu(), expected.cpu())
    torch.testing.assert_close(seen["teacher"][1].cpu(), null.expand(4, -1, -1).cpu())
    torch.testing.assert_close(seen["student"][0].cpu(), expected.cpu())
    folder_name = d.cond.encode([imagefolder.name] * 4)  # what the old class-name path would have used
    assert float((expected - folder_name).abs().max()) > 1e-3
    assert d.grid_prompts == [truth[str(imagefolder / f"{n}.png")] for n in COLORS]


def test_caption_dropout_gives_the_empty_prompt_at_its_rate(text_parts, imagefolder: Path, tmp_path: Path) -> None:
    source = open_source(imagefolder, 64, 3, cache_dir=tmp_path / "hf")
    stream = BatchStream(source, batch_size=6, seed=1, caption_dropout=0.3)
    captions = [c for step in range(60) for c in stream.batch(step)["captions"]]
    rate = captions.count("") / len(captions)
    assert abs(rate - 0.3) < 0.08, rate  # 360 draws: 3.4 standard deviations
    assert BatchStream(source, batch_size=6, seed=1).batch(0)["captions"].count("") == 0
    d = ConsistencyDistiller(text_parts, source, _config(batch_size=6, caption_dropout=0.5, seed=2), tmp_path / "w")
    b = d.sample_batch()
    dropped = [i for i, c in enumerate(b["captions"]) if c == ""]
    assert 0 < len(dropped) < 6, b["captions"]
    null = d.cond.encode([""])[0]
    for i in range(6):
        same = torch.allclose(b["prompt_embeds"][i], null, atol=1e-5)
        assert same == (i in dropped)


# ---- formats ----------------------------------------------------------------------------------------------------
def test_webdataset_shards_stream_one_at_a_time(text_parts, shards: Path, tmp_path: Path) -> None:
    source = open_source(shards, 32, 3, shuffle_buffer=2)
    assert isinstance(source, ShardSource) and len(source.shards) == 3
    stream = BatchStream(source, batch_size=2, seed=0)
    first = stream.batch(0)
    assert len(source.opened) == 1  # one shard opened for the first batch, not all three
    assert first["images"].shape == (2, 3, 32, 32)
    shard = source.opened[0].stem.split("-")[1]
    assert all(c.startswith(f"shard {int(shard)} ") for c in first["captions"])
    epoch = [n for step in range(6) for n in stream.batch(step)["names"]]
    assert len(set(epoch)) == 12  # one epoch = every sample once
    resumed = BatchStream(open_source(shards, 32, 3, shuffle_buffer=2), batch_size=2, seed=0)
    later = stream.batch(7)
    assert resumed.batch(7)["names"] == later["names"]  # a fresh stream fast-forwards to the same batch
    assert torch.equal(resumed.batch(8)["images"], stream.batch(8)["images"])
    d = ConsistencyDistiller(text_parts, open_source(shards, 64, 3, shuffle_buffer=2), _config(batch_size=2),
                             tmp_path / "w")
    assert d.grid_prompts[:2] == ["shard 0 picture 0", "shard 0 picture 1"]
    b = d.sample_batch()
    assert all(c.startswith("shard ") for c in b["captions"]) and b["x0"].shape == (2, 4, 16, 16)
    assert np.isfinite(d.train_step(b))


def test_map_batches_are_a_function_of_seed_step_and_rank(imagefolder: Path, tmp_path: Path) -> None:
    source = open_source(imagefolder, 32, 3, cache_dir=tmp_path / "hf")
    ranks = [BatchStream(source, batch_size=3, seed=5, rank=r, world=2) for r in (0, 1)]
    epoch = [set(stream.batch(0)["names"]) for stream in ranks]
    assert not epoch[0] & epoch[1] and len(epoch[0] | epoch[1]) == 6  # disjoint shards of one epoch
    again = BatchStream(source, batch_size=3, seed=5, rank=1, world=2)
    assert again.batch(4)["names"] == ranks[1].batch(4)["names"]
    orders = {tuple(BatchStream(source, batch_size=3, seed=s, rank=1, world=2).batch(0)["names"]) for s in range(4)}
    assert len(orders) > 1  # the seed changes the order


def test_hub_datasets_are_used_only_when_named_with_hf(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        open_source("someorg/somedata", 32, 3)  # a missing folder, never a Hub lookup
    with pytest.raises(InputError, match="expected hf:org/name"):
        open_source("hf:nodataset", 32, 3)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.jsonl").write_text('{"text": "no file name"}\n', "utf-8")
    with pytest.raises(InputError, match=r"metadata\.jsonl:1: no 'file_name' field"):
        open_source(bad, 32, 3)


def test_distill_from_an_imagefolder_with_captions(tiny_sd: Path, imagefolder: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    result = distill_student(tiny_sd, out, _config(), data=str(imagefolder), show=False)
    assert result["steps"] == 2 and result["skipped"] == 0
    info = json.loads((out / "cdx.json").read_text("utf-8"))
    assert info["class_names"][:2] == ["a red square", "a green square"]  # sample-grid prompts: the captions
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


# ---- latent cache --------------------------------------------------------------------------------------------------
def test_latent_cache_is_written_once_and_reused(tiny_sd: Path, imagefolder: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    source = open_source(imagefolder, 64, 3, cache_dir=tmp_path / "hf")
    first = ConsistencyDistiller(load_latent_pipeline(tiny_sd), source, _config(), tmp_path / "a",
                                 DataOptions(cache_latents=cache))
    index = json.loads((cache / "index.json").read_text("utf-8"))
    assert index["count"] == 6 and index["resolution"] == 64 and len(index["vae_sha256"]) == 64
    b1 = first.sample_batch()
    images = torch.stack([source.item(i).image for i in range(6)])
    direct = encode_latents(first.parts, images)
    assert any(torch.allclose(b1["x0"][0], row, atol=1e-5) for row in direct)  # cached rows are the VAE's latents
    stamp = (cache / "index.json").stat().st_mtime_ns

    parts = load_latent_pipeline(tiny_sd)

    def no_encoder(*_args, **_kwargs):
        raise AssertionError("the VAE encoder ran although the latents are cached")

    monkeypatch.setattr(parts.vae, "encode", no_encoder)
    second = ConsistencyDistiller(parts, source, _config(), tmp_path / "b", DataOptions(cache_latents=cache))
    b2 = second.sample_batch()
    second.train_step(b2)
    assert torch.equal(b1["x0"], b2["x0"]) and b1["captions"] == b2["captions"]
    assert (cache / "index.json").stat().st_mtime_ns == stamp

    with pytest.raises(InputError, match="field 'resolution'"):
        build_latent_cache(cache, source, parts, expected_index(source, parts, 32))
    other = open_source(imagefolder, 64, 3, limit=5, cache_dir=tmp_path / "hf")
    with pytest.raises(InputError, match="field 'source'"):
        build_latent_cache(cache, other, parts, expected_index(other, parts, 64))


# ---- unreadable images -----------------------------------------------------------------------------------------------
def test_unreadable_image_is_one_line_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "cls" / "squares"
    root.mkdir(parents=True)
    for name in ("red", "green", "blue"):
        (root / f"{name}.png").write_bytes(_png(COLORS[name]))
    (root / "broken.png").write_bytes(b"this is not a png")
    source = open_source(tmp_path / "cls", 32, 3)
    lines: list[str] = []
    stream = BatchStream(source, batch_size=4, seed=0, report=lines.append)
    batches = [stream.batch(step) for step in range(3)]
    assert len(lines) == 1 and "broken.png" in lines[0] and "\n" not in lines[0]
    assert all(b["images"].shape[0] == 4 for b in batches)
    assert not any(n.endswith("broken.png") for b in batches for n in b["names"])
    assert stream.summary().startswith("skipped 1 unreadable image")
    with pytest.raises(UnreadableImage, match=r"broken\.png: unreadable image"):
        strict = BatchStream(source, batch_size=4, seed=0, strict=True)
        for step in range(3):
            strict.batch(step)


def _cdx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdx.cli", *args], capture_output=True, text=True, check=False)


def test_cli_distills_from_shards_with_a_latent_cache_and_strict_fails_in_one_line(tiny_sd: Path, shards: Path,
                                                                                  tmp_path: Path) -> None:
    common = ["--teacher", str(tiny_sd), "--steps", "1", "--batch-size", "2", "--num-solver-steps", "10",
              "--sample-every", "0"]
    proc = _cdx("distill", *common, "--data", str(shards / "shard-{000..002}.tar"), "--cache-latents",
                str(tmp_path / "cache"), "--caption-dropout", "0.1", "--out", str(tmp_path / "student"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "cache" / "index.json").read_text("utf-8"))["count"] == 12
    broken = tmp_path / "broken"
    broken.mkdir()
    _write_shard(broken / "shard-000.tar", [("ok", _png(COLORS["red"]), "red"), ("bad", b"\x89PNG broken", "bad")])
    proc = _cdx("distill", *common, "--data", str(broken), "--strict", "--out", str(tmp_path / "never"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "shard-000.tar:bad: unreadable image (not an image format" in errors[0], proc.stderr
    assert not (tmp_path / "never").exists()


def test_example_prompts_prefer_the_text_teachers_recorded_prompts_over_the_first_captions() -> None:
    from types import SimpleNamespace

    source = SimpleNamespace(class_names=["animal", "flag"], example_prompts=lambda: ["first caption", "second"])
    recorded = SimpleNamespace(conditioning="text_embedding", class_names=["balloon", "niger flag"])
    bare = SimpleNamespace(conditioning="text_embedding", class_names=[])
    classes = SimpleNamespace(conditioning="class_label", class_names=["T-shirt", "Bag"])
    assert example_prompts(recorded, source) == ["balloon", "niger flag"]
    assert example_prompts(bare, source) == ["first caption", "second"]
    assert example_prompts(classes, source) == ["animal", "flag"]
