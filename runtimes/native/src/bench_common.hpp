// The runtime-independent half of the cdx native runners: bundle/manifest handling, integrity checks, golden
// comparison, timing statistics, cdx-normal-v1 inputs and the cdx-device-results/1 JSON. Each runner (ONNX Runtime,
// ExecuTorch) only supplies a Backend that opens a model file and runs it on named tensors.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace cdx {

// A dense, row-major tensor in host memory; `dtype` uses the manifest's numpy names ("float32", "int64", ...).
struct Tensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;

  size_t numel() const;
};

size_t dtype_size(const std::string& dtype);  // throws on an unsupported dtype
int64_t numel_of(const std::vector<int64_t>& shape);

// What a runner needs to know about one manifest model entry.
struct ModelSpec {
  std::string name;
  std::string format;     // onnx / ort / pte
  std::string precision;  // fp32 / int8 / ...
  std::string path;       // absolute path of the verified model file
  std::vector<Tensor> inputs;   // name, dtype, shape (data empty)
  std::vector<Tensor> outputs;  // name, dtype, shape (data empty)
};

// One loaded model. `run` gets the inputs in manifest order and returns the outputs in manifest order.
class Session {
 public:
  virtual ~Session() = default;
  virtual std::vector<Tensor> run(const std::vector<Tensor>& inputs) = 0;
};

struct Backend {
  std::string program;                // argv[0]-style name used in messages, e.g. "cdx_ort_runner"
  std::string runtime;                // "onnxruntime" / "executorch" (schema enum)
  std::string backend;                // "cpu" / "xnnpack"
  std::vector<std::string> formats;   // manifest formats this runner accepts
  std::string runtime_version;        // printed and recorded in app.version
  std::function<std::unique_ptr<Session>(const ModelSpec&, int threads)> open;
  // The backend name recorded for a model (e.g. from the manifest's export.delegate); defaults to `backend`.
  std::function<std::string(const std::string& manifest_delegate)> backend_for;
};

// Parse arguments, run every selected model, write the results; returns the process exit code.
// 0: ok; 1: usage, I/O, integrity or runtime error (one line on stderr); 3: golden gate failed.
int run_main(int argc, char** argv, const Backend& backend);

// `--rng-selftest FILE`: check cdx-normal-v1 against tests/data/rng_vectors.json bit-for-bit; returns exit code.
int rng_selftest(const std::string& program, const std::string& vectors_path);

// A one-line message: newlines and tabs in third-party error text become spaces.
std::string one_line(const std::string& text);

}  // namespace cdx
