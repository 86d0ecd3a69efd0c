"""`cdx teacher continue-unet`: more UNet steps on the frozen VAE's latents, resumable, the VAE untouched."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import run_cli
from PIL import Image
from safetensors.torch import load_file, save_file

from cdx.distill.data import ImageDataset
from cdx.distill.teacher import TeacherRecipe, train_teacher
from cdx.distill.unet_continue import continue_teacher_unet
from cdx.errors import InputError

SIZE = 16


def _image_folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of seeded grayscale blobs as PNG class subfolders (what `--data` takes besides Fashion-MNIST)."""
    g = torch.Generator().manual_seed(5)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            coarse = torch.rand(1, 1, 4, 4, generator=g)
            pixels = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear")[0, 0]
            Image.fromarray((pixels.numpy() * 255).astype(np.uint8), "L").save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> tuple[Path, Path]:
    """A class-conditional teacher that `train_teacher` wrote (2 classes, 16 px), and its training images."""
    root = tmp_path_factory.mktemp("continue")
    data = _image_folder(root / "data")
    from cdx.distill.data import load_dataset

    dataset = load_dataset(data, "train", SIZE)
    recipe = TeacherRecipe(image_size=SIZE, vae_channels=(16, 16), vae_steps=2, vae_batch=4, unet_channels=(16, 32),
                           unet_steps=2, unet_batch=4)
    teacher = root / "teacher"
    teacher.mkdir()
    train_teacher(teacher, ImageDataset(dataset.images, dataset.labels, dataset.class_names), recipe, show=False)
    return teacher, data


def _weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(folder / part / "diffusion_pytorch_model.safetensors")


def test_continue_changes_only_the_unet_and_records_the_run(tiny_teacher, tmp_path):
    teacher, data = tiny_teacher
    record = continue_teacher_unet(teacher, tmp_path / "out", 3, tmp_path / "work", data, lr=1e-3, show=False)
    out = tmp_path / "out"
    before, after = _weights(teacher, "unet"), _weights(out, "unet")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    vae_before, vae_after = _weights(teacher, "vae"), _weights(out, "vae")
    assert all(torch.equal(vae_before[k], vae_after[k]) for k in vae_before)  # same latent space for every student
    info = json.loads((out / "cdx.json").read_text())
    assert info["unet_continue"] == record and record["steps"] == 3 and record["lr"] == 1e-3
    assert info["recipe"] == json.loads((teacher / "cdx.json").read_text())["recipe"]  # the base run's recipe kept


class _Killed(Exception):
    pass


def _dies_at_step(step: int):
    """`ddpm_batch` that raises _Killed when asked for batch `step` (a kill in the middle of a run)."""
    from cdx.distill import teacher as teacher_module

    real, calls = teacher_module.ddpm_batch, []

    def batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise _Killed
        return real(*args, **kwargs)

    return batch


def test_a_killed_run_resumes_to_the_same_weights_as_an_unbroken_one(tiny_teacher, tmp_path, monkeypatch):
    """12 images at batch 4: a checkpoint at step 3 ends an epoch, so the resumed run draws exactly the batches,
    noise and timesteps of the unbroken one and must end bit-identical (optimizer, lr schedule, EMA restored)."""
    from cdx.distill import teacher as teacher_module

    teacher, data = tiny_teacher
    continue_teacher_unet(teacher, tmp_path / "whole", 6, tmp_path / "w1", data, checkpoint_every=3, show=False)
    real = teacher_module.ddpm_batch
    monkeypatch.setattr(teacher_module, "ddpm_batch", _dies_at_step(5))
    with pytest.raises(_Killed):
        continue_teacher_unet(teacher, tmp_path / "resumed", 6, tmp_path / "w2", data, checkpoint_every=3, show=False)
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(teacher_module, "ddpm_batch", real)
    state_file = tmp_path / "w2" / "checkpoints" / "checkpoint-0000003" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["seconds"] > 0
    state_file.write_text(json.dumps({**state, "seconds": 1000.0}))  # the time before the kill counts in the record
    record = continue_teacher_unet(teacher, tmp_path / "resumed", 6, tmp_path / "w2", data, checkpoint_every=3,
                                   show=False)
    assert 1000.0 < record["seconds"] < 1000.0 + 600
    whole, resumed = _weights(tmp_path / "whole", "unet"), _weights(tmp_path / "resumed", "unet")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # and a resume that skipped the restored state would differ: the run from scratch with 3 steps is not the same
    continue_teacher_unet(teacher, tmp_path / "three", 3, tmp_path / "w3", data, show=False)
    three = _weights(tmp_path / "three", "unet")
    assert any(not torch.equal(whole[k], three[k]) for k in whole)


def test_a_work_dir_from_another_run_is_refused_by_name(tiny_teacher, tmp_path, monkeypatch):
    teacher, data = tiny_teacher
    with pytest.raises(_Killed):
        _run_and_kill(teacher, data, tmp_path / "work", monkeypatch)
    with pytest.raises(InputError, match="newest checkpoint is at step 2, past --steps 1"):
        continue_teacher_unet(teacher, tmp_path / "out", 1, tmp_path / "work", data, lr=1e-3, show=False)
    with pytest.raises(InputError, match=re.escape("unet_lr=0.001, this run has unet_lr=0.002")):
        continue_teacher_unet(teacher, tmp_path / "out", 4, tmp_path / "work", data, lr=2e-3, show=False)
    other = tmp_path / "other_teacher"
    shutil.copytree(teacher, other)
    unet = _weights(other, "unet")
    first = sorted(unet)[0]
    unet[first] = unet[first] + 1.0
    save_file(unet, other / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(InputError, match="another teacher's UNet"):
        continue_teacher_unet(other, tmp_path / "out", 4, tmp_path / "work", data, lr=1e-3, show=False)
    assert not (tmp_path / "out").exists()


def _run_and_kill(teacher: Path, data: Path, work: Path, monkeypatch) -> None:
    """A 4-step run at lr 1e-3 killed after its step-2 checkpoint."""
    from cdx.distill import teacher as teacher_module

    with monkeypatch.context() as patch:
        patch.setattr(teacher_module, "ddpm_batch", _dies_at_step(3))
        continue_teacher_unet(teacher, work.parent / "never", 4, work, data, lr=1e-3, checkpoint_every=2, show=False)


def test_cli_refuses_a_folder_without_a_teacher_recipe_in_one_line(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "student"
    (folder / "unet").mkdir(parents=True)
    (folder / "vae").mkdir()
    (folder / "cdx.json").write_text(json.dumps({"kind": "student"}))
    code, line = run_cli(monkeypatch, capsys, "teacher", "continue-unet", "--teacher", folder, "--out", tmp_path / "out",
                         "--work-dir", tmp_path / "work")
    assert code != 0 and "not a class-conditional teacher" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
