"""The tiny-decoder benchmark's latents: `--first-seed` picks another (held-out) set of the artifacts' own seeds."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory):
    from cdx.distill.generator import build_generator
    from cdx.distill.loading import load_latent_pipeline
    from cdx.tiny_models import build_tiny_class_pipeline

    parts = load_latent_pipeline(build_tiny_class_pipeline(tmp_path_factory.mktemp("models") / "student"))
    return build_generator(parts)[0], parts.num_classes


def test_first_seed_selects_those_seeds_across_batches(generator) -> None:
    from cdx.benchmarks.tiny_decoder import student_latents

    gen, classes = generator
    every = student_latents(gen, 7, classes, batch=3)
    later = student_latents(gen, 4, classes, batch=3, first_seed=3)
    assert later.shape == (4, *every.shape[1:])
    assert torch.equal(later, every[3:7])
    assert not torch.equal(later, every[:4])



def test_first_seed_beyond_the_generator_s_seed_range_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """cdx-normal-v1 takes seeds mod 2^32: a set running past it would wrap onto seeds 0.., not be held out."""
    from cdx.benchmarks.tiny_decoder import main

    for bad in ("-1", str(2**32 - 1)):
        with pytest.raises(SystemExit) as exit_info:
            main(["--first-seed", bad, "--n", "2"])
        assert exit_info.value.code == 2
        assert f"--first-seed {bad}: must be in 0..{2**32 - 2} with --n 2" in capsys.readouterr().err
