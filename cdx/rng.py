"""cdx-normal-v1: the seeded standard-normal generator every side implements (Python, C++, Kotlin, Swift, JavaScript).

A platform RNG (torch's Mersenne Twister, `java.util.Random`, `SystemRandomNumberGenerator`) cannot be reproduced
elsewhere, so a phone given the seed would draw a different latent than Python did. cdx-normal-v1 is counter-based
and uses only 32-bit integer arithmetic plus IEEE-754 float64 `sqrt`, `log`, `cos`:

    mix32(x)  = lowbias32:  x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16   (mod 2^32)
    key       = mix32(mix32(seed) ^ (stream * 0x9E3779B9 + 0x632BE5AB))                                  (mod 2^32)
    element i of the tensor (row-major), i < 2^31:
        a = mix32(key ^ mix32(2i)),  b = mix32(key ^ mix32(2i + 1))
        u1 = (a + 1) / 2^32  in (0, 1],   u2 = b / 2^32  in [0, 1)
        z  = float32( sqrt(-2.0 * ln(u1)) * cos((2.0 * π) * u2) )   (float64 throughout, π = 3.141592653589793;
                                                                        rounded to nearest float32 at the end)

`stream` is the input's position in the manifest's input list, so `noise` and `step_noise` of one seed differ.
`sqrt` is correctly rounded everywhere; `log`/`cos` may differ by 1 ulp in float64 between C libraries, which after
rounding to float32 changes an element with probability ≈ 2^-29. `tests/data/rng_vectors.json` holds test vectors
that the Python, C++, Kotlin, Swift and JavaScript implementations are all checked against.
"""

from __future__ import annotations

import math

import numpy as np

NAME = "cdx-normal-v1"
_MASK = np.uint64(0xFFFFFFFF)
SEED_COUNT = 2**32  # seeds are taken mod 2^32 (stream_key): seed s and s + 2^32 draw the same numbers


def mix32(x: np.ndarray | int) -> np.ndarray:
    """lowbias32 (Chris Wellons' hash prospector): a 32-bit integer bijection with strong avalanche."""
    v = np.asarray(x, dtype=np.uint64) & _MASK
    v ^= v >> np.uint64(16)
    v = (v * np.uint64(0x7FEB352D)) & _MASK
    v ^= v >> np.uint64(15)
    v = (v * np.uint64(0x846CA68B)) & _MASK
    v ^= v >> np.uint64(16)
    return v


def stream_key(seed: int, stream: int = 0) -> int:
    """The per-(seed, stream) key."""
    salt = (int(stream) * 0x9E3779B9 + 0x632BE5AB) & 0xFFFFFFFF
    return int(mix32(int(mix32(int(seed) & 0xFFFFFFFF)) ^ salt))


def uniforms(seed: int, stream: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): the two uint32 draws behind each of `count` normals."""
    if count >= 2**31:
        raise ValueError(f"{NAME}: at most 2^31 - 1 elements per tensor, got {count}")
    key = np.uint64(stream_key(seed, stream))
    index = np.arange(count, dtype=np.uint64) * np.uint64(2)
    return mix32(key ^ mix32(index)), mix32(key ^ mix32(index + np.uint64(1)))


def normal(seed: int, shape: tuple[int, ...] | list[int], stream: int = 0) -> np.ndarray:
    """A float32 tensor of `shape` drawn from cdx-normal-v1 with `seed` and `stream`."""
    count = math.prod(shape)
    a, b = uniforms(seed, stream, count)
    u1 = (a.astype(np.float64) + 1.0) * 2.0**-32
    u2 = b.astype(np.float64) * 2.0**-32
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
    return z.astype(np.float32).reshape(tuple(shape))


def describe() -> dict[str, str]:
    """The manifest's `rng` section."""
    return {"name": NAME, "spec": "cdx/rng.py (module docstring); test vectors: tests/data/rng_vectors.json",
            "streams": "the input's index in the model's input list"}
