"""`cdx student deepen`: a deeper student UNet that computes exactly what the old one did, and trains from there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from cdx.atomic import sha256_file
from cdx.distill.deepen import deepen_student_folder, deepen_unet
from cdx.errors import InputError
from cdx.tiny_models import TINY_EMBED_DIM, tiny_sd_unet


def _class_unet() -> UNet2DConditionModel:
    """The embedded student's shape (plain + self-attention blocks, class labels, guidance embedding), tiny."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2D",
                                layers_per_block=1, attention_head_dim=8, norm_num_groups=8, num_class_embeds=5,
                                cross_attention_dim=8, time_cond_proj_dim=16)
    with torch.no_grad():  # zero-initialised layers in a fresh UNet would hide a wrong weight mapping
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def _text_unet() -> UNet2DConditionModel:
    unet = tiny_sd_unet(seed=2)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def _inputs(unet: UNet2DConditionModel) -> dict:
    g = torch.Generator().manual_seed(0)
    n = 3
    kwargs = {"sample": torch.randn(n, 4, 8, 8, generator=g), "timestep": torch.tensor([999, 500, 20]),
              "timestep_cond": torch.randn(n, unet.config.time_cond_proj_dim, generator=g)}
    if unet.config.num_class_embeds:
        kwargs |= {"class_labels": torch.tensor([0, 3, 4]), "encoder_hidden_states": torch.zeros(n, 1, 8)}
    else:
        kwargs["encoder_hidden_states"] = torch.randn(n, 5, TINY_EMBED_DIM, generator=g)
    return kwargs


@pytest.mark.parametrize("make", [_class_unet, _text_unet], ids=["class-attention", "text-cross-attention"])
@pytest.mark.parametrize("layers", [2, 3])
def test_deepened_unet_computes_what_the_shallow_one_did(make, layers: int) -> None:
    unet = make()
    deeper = deepen_unet(unet, layers).eval()
    assert deeper.config.layers_per_block == layers
    assert sum(p.numel() for p in deeper.parameters()) > sum(p.numel() for p in unet.parameters())
    kwargs = _inputs(unet)
    with torch.no_grad():
        before, after = unet(**kwargs).sample, deeper(**kwargs).sample
    assert before.abs().mean() > 0.1
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_added_layers_learn_from_the_first_step() -> None:
    """Zero last convolutions still get gradients, so the new layers grow (they are not dead weight)."""
    deeper = deepen_unet(_class_unet(), 2)
    deeper(**_inputs(deeper)).sample.square().mean().backward()
    added = [deeper.down_blocks[0].resnets[1].conv2, deeper.down_blocks[1].attentions[1].to_out[0],
             deeper.up_blocks[0].resnets[1].conv2]
    assert all(float(layer.weight.detach().abs().sum()) == 0.0 for layer in added)
    assert all(float(layer.weight.grad.abs().sum()) > 0.0 for layer in added)


def test_deepening_to_no_more_layers_is_refused() -> None:
    with pytest.raises(InputError, match="already has 1 per block"):
        deepen_unet(_class_unet(), 1)


def test_deepened_student_folder_is_recorded_and_accepted_by_init_student(tiny_sd: Path, tmp_path: Path) -> None:
    from cdx.distill.distiller import student_from_folder
    from cdx.distill.loading import load_latent_pipeline

    before = {p: sha256_file(p) for p in sorted(tiny_sd.rglob("*")) if p.is_file()}
    out = tmp_path / "deep"
    record = deepen_student_folder(tiny_sd, out, 2)
    assert {p: sha256_file(p) for p in sorted(tiny_sd.rglob("*")) if p.is_file()} == before  # the source untouched
    assert record["layers_per_block"] == [1, 2] and record["parameters"][1] > record["parameters"][0]
    info = json.loads((out / "cdx.json").read_text())
    assert info["deepen"] == record
    teacher = load_latent_pipeline(tiny_sd).unet
    student = student_from_folder(out, teacher, guided=True)
    assert student.config.layers_per_block == 2
    with pytest.raises(InputError, match="exists"):
        deepen_student_folder(tiny_sd, out, 3)
    deepen_student_folder(out, tmp_path / "deeper", 3)
    assert len(json.loads((tmp_path / "deeper" / "cdx.json").read_text())["deepen_earlier"]) == 1


def test_missing_student_folder_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        deepen_student_folder(tmp_path / "nope", tmp_path / "out", 2)


def test_cli_deepens_the_embedded_student_and_refuses_bad_depth_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cdx.cli", "student", "deepen", *args], capture_output=True,
                              text=True, check=False)

    bad = cli("--out", str(tmp_path / "shallow"), "--layers-per-block", "1")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--layers-per-block 1" in bad.stderr + bad.stdout and not (tmp_path / "shallow").exists()
    good = cli("--out", str(tmp_path / "deep"), "--layers-per-block", "2")
    assert good.returncode == 0, good.stderr
    said = " ".join((good.stdout + good.stderr).split())  # the console may wrap the line
    assert "layers per block 1 → 2" in said and "(same outputs)" in said
    config = json.loads((tmp_path / "deep" / "unet" / "config.json").read_text())
    assert config["layers_per_block"] == 2
