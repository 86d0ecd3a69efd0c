// cdx_ort_runner: runs a bundle's .onnx / .ort models on ONNX Runtime's CPU execution provider (C/C++ API).
#include <onnxruntime_cxx_api.h>

#include <map>
#include <stdexcept>

#include "bench_common.hpp"

namespace {

ONNXTensorElementDataType ort_type(const std::string& dtype) {
  static const std::map<std::string, ONNXTensorElementDataType> types = {
      {"float32", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT}, {"float64", ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE},
      {"float16", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}, {"int64", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64},
      {"int32", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32},   {"int8", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8},
      {"uint8", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8},   {"bool", ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL}};
  const auto it = types.find(dtype);
  if (it == types.end()) throw std::runtime_error("no ONNX Runtime type for dtype " + dtype);
  return it->second;
}

Ort::Env& env() {
  static Ort::Env e(ORT_LOGGING_LEVEL_ERROR, "cdx_ort_runner");
  return e;
}

class OrtModelSession : public cdx::Session {
 public:
  OrtModelSession(const cdx::ModelSpec& spec, int threads) : spec_(spec) {
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(threads);
    options.SetInterOpNumThreads(1);
    options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    if (spec.format == "ort") options.AddConfigEntry("session.enable_saved_runtime_optimizations", "1");
    try {
      session_ = std::make_unique<Ort::Session>(env(), spec.path.c_str(), options);
    } catch (const Ort::Exception& e) {
      throw std::runtime_error(spec.path + ": ONNX Runtime could not load model " + spec.name + ": " + e.what());
    }
    for (const auto& t : spec.inputs) input_names_.push_back(t.name.c_str());
    for (const auto& t : spec.outputs) output_names_.push_back(t.name.c_str());
  }

  std::vector<cdx::Tensor> run(const std::vector<cdx::Tensor>& inputs) override {
    const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Ort::Value> values;
    for (const auto& t : inputs) {
      values.push_back(Ort::Value::CreateTensor(memory, const_cast<uint8_t*>(t.data.data()), t.data.size(),
                                                t.shape.data(), t.shape.size(), ort_type(t.dtype)));
    }
    std::vector<Ort::Value> outs;
    try {
      outs = session_->Run(Ort::RunOptions{nullptr}, input_names_.data(), values.data(), values.size(),
                           output_names_.data(), output_names_.size());
    } catch (const Ort::Exception& e) {
      throw std::runtime_error("model " + spec_.name + ": ONNX Runtime run failed: " + e.what());
    }
    std::vector<cdx::Tensor> result;
    for (size_t j = 0; j < outs.size(); ++j) {
      const auto info = outs[j].GetTensorTypeAndShapeInfo();
      cdx::Tensor t{spec_.outputs[j].name, spec_.outputs[j].dtype, info.GetShape(), {}};
      if (info.GetElementType() != ort_type(t.dtype)) {
        throw std::runtime_error("model " + spec_.name + " output " + t.name + ": ONNX Runtime element type " +
                                 std::to_string(info.GetElementType()) + " is not the manifest's " + t.dtype);
      }
      const size_t bytes = info.GetElementCount() * cdx::dtype_size(t.dtype);
      const auto* p = static_cast<const uint8_t*>(outs[j].GetTensorRawData());
      t.data.assign(p, p + bytes);
      result.push_back(std::move(t));
    }
    return result;
  }

 private:
  cdx::ModelSpec spec_;
  std::unique_ptr<Ort::Session> session_;
  std::vector<const char*> input_names_, output_names_;
};

}  // namespace

int main(int argc, char** argv) {
  cdx::Backend backend;
  backend.program = "cdx_ort_runner";
  backend.runtime = "onnxruntime";
  backend.backend = "cpu";
  backend.formats = {"onnx", "ort"};
  backend.runtime_version = OrtGetApiBase()->GetVersionString();
  backend.open = [](const cdx::ModelSpec& spec, int threads) -> std::unique_ptr<cdx::Session> {
    return std::make_unique<OrtModelSession>(spec, threads);
  };
  return cdx::run_main(argc, argv, backend);
}
