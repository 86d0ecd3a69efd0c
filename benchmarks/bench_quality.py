"""Distribution drift per bench row: Inception KID (with its spread over subsets) against the float student's own
samples and against the real-data reference, and the classifier's FD / accuracy as a secondary column.

Every row is scored at the same n (the report states it, with the KID subset size), on samples drawn from the same
seeds, labels and initial latents. KID rather than FID is the headline because it is unbiased at the small n a bench
affords (FID at n = 64 ranked the one-step student above the teacher's 4-step DDIM; Inception FID at n = 1,000 put
it 47 points behind). Missing Inception weights or reference statistics cost their columns and one note, never the
run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cdx.errors import CdxError
from cdx.metrics import frechet_distance, kid, kid_subset_size

KID_SUBSETS = 100


def _classifier_applies(images: np.ndarray) -> bool:
    """cdx's Fashion-MNIST classifier reads 1×32×32 images."""
    return images.ndim == 4 and tuple(images.shape[1:]) == (1, 32, 32)


def _inception_applies(images: np.ndarray) -> bool:
    return images.ndim == 4 and images.shape[1] in (1, 3)


def _reference(n: int, inception_sha256: str | None, notes: list[str]) -> Any | None:
    """The shipped real-data features (first n test images), or None with a note saying why not."""
    try:
        from cdx.benchmarks.reference_stats import load_reference
    except ImportError:
        notes.append("no reference statistics in this build: distances to real data omitted")
        return None
    try:
        return load_reference("test", inception_sha256=inception_sha256).first(n)
    except CdxError as exc:
        notes.append(f"reference statistics unavailable ({exc}): distances to real data omitted")
        return None


def _inception(enabled: bool, notes: list[str]) -> Any | None:
    if not enabled:
        notes.append("Inception KID not requested (BenchOptions.inception is off): classifier FD only")
        return None
    from cdx.benchmarks.quality import InceptionFeatures

    try:
        return InceptionFeatures()
    except CdxError as exc:
        notes.append(f"Inception weights not installed, no KID: {exc}")
        return None


def add_quality(report: dict[str, Any], images: dict[int, np.ndarray], baseline: dict[int, int],
                labels: np.ndarray | None, inception: bool = True, inception_rows: set[int] | None = None,
                say: Callable[[str], None] = lambda _m: None) -> None:
    """Score rows `images` (result index → NCHW images in [0, 1]) into `row["quality"]`.

    `baseline[i]` is the result index of the float student whose samples row i is compared with; `inception_rows`
    limits the (slow, ≈ 0.2 s/image on 2 cores) Inception features to those rows (None: every row).
    """
    import torch

    rows = {i: out for i, out in images.items() if _inception_applies(out)}
    if not rows:
        return
    n = min(len(out) for out in rows.values())
    notes: list[str] = report.setdefault("notes", [])
    extractor = _inception(inception, notes)
    wanted = [i for i in rows if inception_rows is None or i in inception_rows]
    inception_features: dict[int, np.ndarray] = {}
    if extractor is not None:
        say(f"Inception features of {len(wanted)} rows × {n} images")
        inception_features = {i: extractor(torch.from_numpy(rows[i][:n])) for i in wanted}
    classifier_rows = [i for i in rows if _classifier_applies(rows[i])]
    classifier_features: dict[int, np.ndarray] = {}
    predicted: dict[int, np.ndarray] = {}
    if classifier_rows:
        from cdx.benchmarks.quality import classifier_features as features_of
        from cdx.benchmarks.quality import load_classifier

        classifier = load_classifier()
        for i in classifier_rows:
            classifier_features[i], predicted[i] = features_of(classifier, torch.from_numpy(rows[i][:n]))
    reference = _reference(n, getattr(extractor, "sha256", None), notes) if classifier_rows else None
    subset = kid_subset_size(n)
    for i in rows:
        quality: dict[str, Any] = {"samples": n}
        base = baseline.get(i)
        if i in classifier_features:
            if labels is not None:
                quality["accuracy"] = float((predicted[i] == labels[:n]).mean())
            if reference is not None:
                quality["fd_classifier"] = frechet_distance(classifier_features[i], reference.classifier)
            if base is not None and base != i and base in classifier_features:
                quality["fd_classifier_vs_student"] = frechet_distance(classifier_features[i], classifier_features[base])
        if i in inception_features:
            if base is not None and base != i and base in inception_features:
                quality["kid_vs_student"] = kid(inception_features[i], inception_features[base], KID_SUBSETS, subset)
            if reference is not None and reference.inception is not None:
                quality["kid_vs_reference"] = kid(inception_features[i], reference.inception, KID_SUBSETS, subset)
                quality["fid_vs_reference"] = frechet_distance(inception_features[i], reference.inception)
        report["results"][i]["quality"] = quality
    report["quality_settings"] = {
        "samples": n, "kid_subsets": KID_SUBSETS, "kid_subset_size": subset,
        "inception": None if extractor is None else getattr(extractor, "protocol", "Inception-v3 pool features (2048-d)"),
        "reference": None if reference is None else f"first {n} Fashion-MNIST test images (shipped features)",
        "classifier": "cdx Fashion-MNIST classifier (128-d)" if classifier_rows else None,
    }
