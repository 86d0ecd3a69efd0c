"""cdx-normal-v1: the seeded normal generator all sides share, checked against tests/data/rng_vectors.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cdx import rng

VECTORS = json.loads((Path(__file__).parent / "data" / "rng_vectors.json").read_text())


def test_mix32_matches_the_vectors() -> None:
    for x, expected in VECTORS["mix32"]:
        assert int(rng.mix32(x)) == expected


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"seed{c['seed']}-stream{c['stream']}")
def test_normals_match_the_vectors_bit_for_bit(case: dict) -> None:
    assert rng.stream_key(case["seed"], case["stream"]) == case["key"]
    a, b = rng.uniforms(case["seed"], case["stream"], len(case["a"]))
    assert [int(x) for x in a] == case["a"] and [int(x) for x in b] == case["b"]
    z = rng.normal(case["seed"], (len(case["float32_bits"]),), case["stream"])
    assert [int(x) for x in z.view(np.uint32)] == case["float32_bits"]


def test_draws_are_standard_normal_and_streams_independent() -> None:
    z = rng.normal(7, (200_000,))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1.0) < 0.01
    other = rng.normal(7, (200_000,), stream=1)
    assert abs(float(np.corrcoef(z, other)[0, 1])) < 0.01
    assert np.array_equal(rng.normal(7, (2, 3)), z[:6].reshape(2, 3))  # shape is row-major over one stream


def test_generator_inputs_come_from_the_manifest_rule(tmp_path: Path) -> None:
    """Golden noise written by convert is exactly cdx-normal-v1(seed, stream 0) — what an app regenerates."""
    from cdx.convert.export import ConvertOptions, convert
    from cdx.golden_io import read_golden, unstack
    from cdx.manifest import load_manifest
    from cdx.tiny_models import build_tiny_unet2d

    model = build_tiny_unet2d(tmp_path / "tiny")
    out = tmp_path / "onnx"
    convert(model, out, ConvertOptions(target="onnx", seeds=(5, 9)))
    manifest = load_manifest(out)
    assert manifest["rng"]["name"] == rng.NAME
    entry = manifest["models"][0]
    inputs, _ = read_golden(out, entry)
    for seed, batch in zip((5, 9), unstack(inputs), strict=True):
        shape = next(s["shape"] for s in entry["inputs"] if s["name"] == "noise")
        assert np.array_equal(batch["noise"], rng.normal(seed, shape, 0))
