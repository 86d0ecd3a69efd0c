"""Distribution-level quality metrics: the Fréchet distance and the shipped Fashion-MNIST classifier."""

from __future__ import annotations

import numpy as np
import pytest

from cdx.benchmarks.quality import classifier_features, frechet_distance, load_classifier


def test_frechet_distance_of_gaussians() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + 2.0
    assert frechet_distance(a, shifted) == pytest.approx(8 * 4.0, rel=1e-6)  # ‖Δμ‖², same covariance
    scaled = a * 2.0  # Σb = 4Σa → Tr(Σa + 4Σa - 2·2Σa) = Tr(Σa) ≈ 8
    assert frechet_distance(a, scaled) == pytest.approx(8.0, rel=0.05)


@pytest.mark.requires("fashion-mnist")  # the classifier is committed: its absence is a failure
def test_shipped_classifier_recognises_real_test_images() -> None:
    from cdx.distill.data import load_fashion_mnist

    test = load_fashion_mnist(split="test", limit=1000)
    _, preds = classifier_features(load_classifier(), (test.images + 1) / 2)
    assert float((preds == test.labels.numpy()).mean()) > 0.8  # full test set: 0.835 (python -m cdx.benchmarks.quality train)
