// cdx-normal-v1: the seeded standard-normal generator shared by every cdx runtime (spec: cdx/rng.py docstring).
//
// Counter-based: 32-bit integer hashing plus IEEE-754 float64 sqrt/log/cos, rounded to float32 at the end, so a
// phone given a seed draws the same latent Python did. Header-only, no dependencies; test vectors:
// tests/data/rng_vectors.json (checked bit-for-bit by `cdx_rng_selftest` / `--rng-selftest`).
//
// Build without -ffast-math. -ffp-contract=off is set by CMakeLists.txt: nothing here has a multiply-add to fuse,
// but it keeps the arithmetic as written on compilers that contract by default (GCC on aarch64).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace cdx::rng {

inline constexpr const char* kName = "cdx-normal-v1";

// lowbias32 (Chris Wellons' hash prospector): a 32-bit bijection; all arithmetic mod 2^32.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// The per-(seed, stream) key. `seed` is taken mod 2^32 like the Python reference (`int(seed) & 0xFFFFFFFF`).
inline uint32_t stream_key(uint64_t seed, uint32_t stream) {
  const uint32_t salt = stream * 0x9E3779B9u + 0x632BE5ABu;
  return mix32(mix32(static_cast<uint32_t>(seed & 0xFFFFFFFFu)) ^ salt);
}

// The two uint32 draws behind element `i` (i < 2^31).
inline void uniforms_at(uint32_t key, uint32_t i, uint32_t* a, uint32_t* b) {
  const uint32_t index = i * 2u;  // < 2^32 because i < 2^31
  *a = mix32(key ^ mix32(index));
  *b = mix32(key ^ mix32(index + 1u));
}

inline float normal_from(uint32_t a, uint32_t b) {
  constexpr double kPi = 3.141592653589793;
  constexpr double kTwoPow32Inv = 1.0 / 4294967296.0;  // 2^-32, exact
  const double u1 = (static_cast<double>(a) + 1.0) * kTwoPow32Inv;  // (0, 1]
  const double u2 = static_cast<double>(b) * kTwoPow32Inv;          // [0, 1)
  const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos((2.0 * kPi) * u2);
  return static_cast<float>(z);
}

// Fill `out[0..count)` (row-major) from cdx-normal-v1 with `seed` and `stream`.
inline void normal(uint64_t seed, uint32_t stream, float* out, size_t count) {
  if (count >= (size_t{1} << 31)) {
    throw std::invalid_argument(std::string(kName) + ": at most 2^31 - 1 elements per tensor, got " +
                                std::to_string(count));
  }
  const uint32_t key = stream_key(seed, stream);
  for (size_t i = 0; i < count; ++i) {
    uint32_t a = 0, b = 0;
    uniforms_at(key, static_cast<uint32_t>(i), &a, &b);
    out[i] = normal_from(a, b);
  }
}

inline std::vector<float> normal(uint64_t seed, uint32_t stream, size_t count) {
  std::vector<float> out(count);
  normal(seed, stream, out.data(), count);
  return out;
}

inline uint32_t float_bits(float f) {
  uint32_t bits = 0;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

}  // namespace cdx::rng
