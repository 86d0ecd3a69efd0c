"""Build a module on its own torch RNG state, so adding it to a run leaves every other draw of that run unchanged.

Optional parts of a training run (a critic, DMD's fake denoiser, the GAN head) are initialised here: a run with the
part and one without it then draw the same student initialisation, batches and noise, and differ only by the part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def built_on_own_rng(factory: Callable[..., T], *args: Any, seed: int | None = None, **kwargs: Any) -> T:
    """`factory(*args, **kwargs)` on a forked CPU RNG: seeded with `seed` (None: from the current state, whose draws
    are then thrown away); the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return factory(*args, **kwargs)
