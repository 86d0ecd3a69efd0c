"""The emoji data (loader, captions, categories, held-out split), the text-to-image teacher's training path and the
committed emoji teacher/student (stock diffusers classes, generate from a prompt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdx.defaults import EMOJI_STUDENT_DIR, EMOJI_TEACHER_DIR
from cdx.distill import emoji
from cdx.errors import InputError

TEACHER, STUDENT = EMOJI_TEACHER_DIR, EMOJI_STUDENT_DIR


def _write_package(root: Path) -> Path:
    """A tiny emoji-datasource layout: emoji.json + img/google/64 RGBA PNGs (half transparent)."""
    images = root / "img" / "google" / "64"
    images.mkdir(parents=True)
    entries = []
    for number in range(24):
        category = emoji.CATEGORIES[number % 3]
        entry = {"name": f"THING {number}", "image": f"t{number}.png", "category": category}
        if number == 0:
            entry["skin_variations"] = {"1F3FD": {"image": "t0-1f3fd.png"}, "1F3FB-1F3FF": {"image": "t0-mix.png"}}
        entries.append(entry)
    entries.append({"name": "EMOJI MODIFIER FITZPATRICK TYPE-3", "image": "mod.png", "category": "Component"})
    for entry in entries:
        names = [entry["image"], *(v["image"] for v in entry.get("skin_variations", {}).values())]
        for name in names:
            rgba = np.zeros((64, 64, 4), np.uint8)
            rgba[:, 32:] = (200, 0, 0, 255)  # right half opaque red, left half fully transparent (black RGB)
            Image.fromarray(rgba, "RGBA").save(images / name)
    (root / "emoji.json").write_text(json.dumps(entries), "utf-8")
    return root


def test_loader_composites_on_white_with_captions_categories_and_a_disjoint_held_out_split(tmp_path):
    root = _write_package(tmp_path / "pkg")
    records = emoji.read_records(root)
    captions = [r.caption for r in records]
    assert len(records) == 24 + 2  # the Component entry is skipped, both skin-tone variants kept
    assert "thing 0, medium skin tone" in captions and "thing 0, light skin tone, dark skin tone" in captions
    assert {r.label for r in records} == {0, 1, 2}

    train = emoji.split_records(records, "train", per_category=2)
    held = emoji.split_records(records, "held_out", per_category=2)
    assert len(train) + len(held) == len(records)
    assert not {r.base for r in train} & {r.base for r in held}  # a held-out emoji's skin variants are held out too
    prompts = emoji.held_out_prompts(records, per_category=2)
    assert len(prompts) == 6 and sorted({c for _, c in prompts}) == [0, 1, 2]

    data = emoji.load_emoji(root, size=32, split="all")
    assert data.images.shape == (26, 3, 32, 32) and data.class_names == emoji.CATEGORIES
    left, right = data.images[:, :, :, :16], data.images[:, :, :, 16:]
    assert torch.all(left == 1.0)  # transparent → white, not the black RGB under alpha 0
    assert torch.allclose(right[0, :, 0, 0], torch.tensor([200 / 127.5 - 1, -1.0, -1.0]))

    folder = emoji.export_imagefolder(tmp_path / "folder", root, size=16, split="train")
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == len(emoji.split_records(records, "train")) and {"file_name", "text", "category"} <= set(rows[0])
    assert Image.open(folder / rows[0]["file_name"]).size == (16, 16)


def test_missing_cache_names_the_setup_command(tmp_path):
    with pytest.raises(InputError, match=r"CDX_SETUP_STEPS=emoji bash \.ci/setup\.sh"):
        emoji.read_records(tmp_path / "nothing")


@pytest.mark.requires("emoji")
def test_real_package_captions_categories_and_split():
    records = emoji.read_records()
    assert len(records) == 3781  # 1,911 entries − 5 Component + 1,875 skin-tone variants
    captions = {r.caption for r in records}
    assert {"red apple", "grinning face", "france flag", "waving hand sign, medium-dark skin tone"} <= captions
    assert {r.label for r in records} == set(range(len(emoji.CATEGORIES)))
    prompts = emoji.held_out_prompts(records)
    assert len(prompts) == emoji.HELD_OUT_PER_CATEGORY * len(emoji.CATEGORIES)
    apple = next(r for r in records if r.caption == "red apple")
    pixels = emoji.composite_on_white(apple.file, 32)
    assert pixels.shape == (32, 32, 3) and (pixels[0, 0] == 255).all()  # the corner is background: white


def test_learned_bpe_tokenizer_round_trips_and_fits_its_captions(tmp_path):
    from cdx.distill.text_teacher import build_tokenizer

    captions = ["red apple", "green apple", "apple pie", "grinning face", "grinning cat", "waving hand, dark skin tone"]
    tokenizer = build_tokenizer(tmp_path / "tok", captions, max_merges=50)
    assert (tmp_path / "tok" / "merges.txt").read_text().startswith("#version: 0.2\n")
    assert tokenizer.tokenize("apple") == ["apple</w>"]  # a frequent word is one token after the merges
    assert tokenizer.decode(tokenizer("waving hand, dark skin tone").input_ids, skip_special_tokens=True) == \
        "waving hand , dark skin tone"
    longest = max(len(tokenizer(c).input_ids) for c in captions)  # with BOS/EOS
    assert tokenizer.model_max_length == max(16, longest)  # fitted to the captions, at least optimum's 16


def test_text_teacher_trains_resumes_and_saves_a_stock_stable_diffusion_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from cdx.distill.text_teacher import TextTeacherRecipe, train_text_teacher

    data = emoji.load_emoji(_write_package(tmp_path / "pkg"), size=16, split="all")
    recipe = TextTeacherRecipe(image_size=16, vae_channels=(16, 16), vae_steps=2, vae_batch=4, text_dim=32,
                               bpe_merges=20, unet_channels=(16, 32), unet_heads=2, unet_steps=2, unet_batch=4,
                               checkpoint_every=1)
    work = tmp_path / "work"
    first = tmp_path / "first"
    first.mkdir()
    train_text_teacher(first, data, recipe, work, show=False, example_prompts=["thing 1"])
    assert [p.name for p in (work / "checkpoints").iterdir()] == ["checkpoint-0000001"]
    recipe.unet_steps = 3
    out = tmp_path / "teacher"
    out.mkdir()
    info = train_text_teacher(out, data, recipe, work, show=False, example_prompts=["thing 1"])
    assert info["recipe"]["unet_steps"] == 3 and info["class_names"] == ["thing 1"]
    assert not list(out.rglob("*.bin")) and not (out / "tokenizer-src").exists()
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    image = pipe("thing 1", num_inference_steps=2, height=16, width=16, output_type="np").images
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()


def test_committed_emoji_teacher_and_student_load_with_stock_classes_and_generate():
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

    teacher = StableDiffusionPipeline.from_pretrained(TEACHER)
    student = LatentConsistencyModelPipeline.from_pretrained(STUDENT)
    assert type(teacher.unet).__name__ == "UNet2DConditionModel" and student.unet.config.time_cond_proj_dim
    size = int(teacher.unet.config.sample_size) * teacher.vae_scale_factor
    a = teacher("red apple", num_inference_steps=4, guidance_scale=3.0, height=size, width=size, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
    b = student("red apple", num_inference_steps=1, guidance_scale=3.0, height=size, width=size, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
    assert a.shape == b.shape == (1, size, size, 3)
    assert np.isfinite(a).all() and np.isfinite(b).all() and a.std() > 0.02 and b.std() > 0.02
    for folder in (TEACHER, STUDENT):
        assert not [p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".ckpt", ".pkl", ".py")]
