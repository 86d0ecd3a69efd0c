"""The autoencoder's ceiling: Inception FID of real train images after only an encode → decode round trip.

    python -m cdx.benchmarks.vae_round_trip [--teacher DIR] [--n 1000]

Same protocol and reference as `cdx evaluate` (its "real train images" floor row, decoded from the posterior mean):
if a teacher's samples score close to this, the autoencoder, not the UNet, is what limits it.
"""

from __future__ import annotations

import argparse
import json

import torch


def round_trip_scores(teacher: str, n: int = 1000) -> dict:
    """Scores of decode(encode(x)) for the first n Fashion-MNIST train images, plus the pixel RMSE ([-1, 1] units)."""
    from cdx.benchmarks.distill_eval import load_references, row_features, score
    from cdx.benchmarks.quality import InceptionFeatures, load_classifier
    from cdx.distill.data import load_fashion_mnist
    from cdx.distill.loading import load_latent_pipeline

    inception = InceptionFeatures()
    real, _ = load_references(n, inception)
    vae = load_latent_pipeline(teacher).vae
    data = load_fashion_mnist(split="train", limit=n)
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(data.images[i:i + 250]).latent_dist.mean).sample.clamp(-1, 1)
                           for i in range(0, n, 250)])
    scores = score(row_features((recon + 1) / 2, load_classifier(), inception), data.labels.numpy(), real)
    rmse = float(((recon - data.images) ** 2).mean().sqrt())  # the same round trip, not decoded twice
    return {"teacher": teacher, "n": n, "rmse": rmse, **scores}


def main(argv: list[str] | None = None) -> None:
    from cdx.defaults import default_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args(argv)
    result = round_trip_scores(args.teacher or default_teacher(), args.n)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
