// cdx_rng_selftest VECTORS.json: checks the C++ cdx-normal-v1 (cdx_rng.hpp) bit-for-bit against the test vectors.
// Needs no inference runtime, so it also runs where neither ONNX Runtime nor ExecuTorch is available.
#include <iostream>

#include "bench_common.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: cdx_rng_selftest tests/data/rng_vectors.json\n";
    return 2;
  }
  return cdx::rng_selftest("cdx_rng_selftest", argv[1]);
}
