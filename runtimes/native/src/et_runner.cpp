// cdx_et_runner: runs a bundle's .pte models (XNNPACK-delegated) with the ExecuTorch C++ Module API.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/runtime.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>

#include "bench_common.hpp"
#include "et_threadpool.hpp"

#ifndef CDX_EXECUTORCH_VERSION
#define CDX_EXECUTORCH_VERSION "unknown"
#endif

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

ScalarType et_type(const std::string& dtype) {
  static const std::map<std::string, ScalarType> types = {
      {"float32", ScalarType::Float}, {"float64", ScalarType::Double}, {"float16", ScalarType::Half},
      {"int64", ScalarType::Long},    {"int32", ScalarType::Int},      {"int8", ScalarType::Char},
      {"uint8", ScalarType::Byte},    {"bool", ScalarType::Bool}};
  const auto it = types.find(dtype);
  if (it == types.end()) throw std::runtime_error("no ExecuTorch scalar type for dtype " + dtype);
  return it->second;
}

// ExecuTorch logs through its PAL; by default the runner keeps stderr to its own one-line messages and folds the
// first runtime error message into the error it reports. CDX_ET_LOG=1 prints every ExecuTorch log line.
std::string g_first_error;
bool g_log_all = false;

void log_message(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
                 const char* message, size_t length) {
  std::string text(message, length);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (g_log_all) {
    std::fprintf(stderr, "executorch %c %s:%zu] %s\n", static_cast<char>(level), filename, line, text.c_str());
  }
  if ((level == kError || level == kFatal) && g_first_error.empty()) g_first_error = text;
}

std::string describe(Error e) {
  char code[16];
  std::snprintf(code, sizeof code, "0x%x", static_cast<unsigned>(e));
  std::string out = std::string(executorch::runtime::to_string(e)) + " (error " + code + ")";
  if (!g_first_error.empty()) out += ": " + g_first_error;
  g_first_error.clear();
  return out;
}

class EtSession : public cdx::Session {
 public:
  EtSession(const cdx::ModelSpec& spec, int threads) : spec_(spec) {
    auto* pool = executorch::extension::threadpool::get_threadpool();
    if (pool == nullptr || !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads))) {
      throw std::runtime_error("ExecuTorch threadpool: cannot set " + std::to_string(threads) + " threads");
    }
    module_ = std::make_unique<Module>(spec.path, Module::LoadMode::Mmap);
    Error err = module_->load();
    if (err != Error::Ok) throw std::runtime_error(spec.path + ": ExecuTorch could not load the program: " + describe(err));
    err = module_->load_method("forward");
    if (err != Error::Ok) {
      throw std::runtime_error(spec.path + ": ExecuTorch could not load method 'forward' of model " + spec.name + ": " +
                               describe(err) + " (a missing operator or an unregistered delegate shows up here)");
    }
  }

  std::vector<cdx::Tensor> run(const std::vector<cdx::Tensor>& inputs) override {
    std::vector<executorch::extension::TensorPtr> tensors;
    std::vector<EValue> values;
    for (const auto& t : inputs) {
      std::vector<executorch::aten::SizesType> sizes(t.shape.begin(), t.shape.end());
      tensors.push_back(executorch::extension::from_blob(const_cast<uint8_t*>(t.data.data()), sizes, et_type(t.dtype)));
      values.emplace_back(*tensors.back());
    }
    g_first_error.clear();
    auto result = module_->forward(values);
    if (!result.ok()) throw std::runtime_error("model " + spec_.name + ": ExecuTorch forward failed: " + describe(result.error()));
    const auto& outs = result.get();
    if (outs.size() != spec_.outputs.size()) {
      throw std::runtime_error("model " + spec_.name + ": forward returned " + std::to_string(outs.size()) +
                               " values, manifest lists " + std::to_string(spec_.outputs.size()) + " outputs");
    }
    std::vector<cdx::Tensor> out;
    for (size_t j = 0; j < outs.size(); ++j) {
      if (!outs[j].isTensor()) throw std::runtime_error("model " + spec_.name + ": output " + std::to_string(j) + " is not a tensor");
      const auto& tensor = outs[j].toTensor();
      cdx::Tensor t{spec_.outputs[j].name, spec_.outputs[j].dtype, {}, {}};
      if (tensor.scalar_type() != et_type(t.dtype)) {
        throw std::runtime_error("model " + spec_.name + " output " + t.name + ": ExecuTorch scalar type " +
                                 std::to_string(static_cast<int>(tensor.scalar_type())) + " is not the manifest's " + t.dtype);
      }
      for (auto d : tensor.sizes()) t.shape.push_back(d);
      const auto* p = static_cast<const uint8_t*>(tensor.const_data_ptr());
      t.data.assign(p, p + tensor.nbytes());
      out.push_back(std::move(t));
    }
    return out;
  }

 private:
  cdx::ModelSpec spec_;
  std::unique_ptr<Module> module_;
};

}  // namespace

int main(int argc, char** argv) {
  const char* log_env = std::getenv("CDX_ET_LOG");
  g_log_all = log_env != nullptr && std::string(log_env) != "0";
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(log_message, __FILE__));
  executorch::runtime::runtime_init();
  cdx::Backend backend;
  backend.program = "cdx_et_runner";
  backend.runtime = "executorch";
  backend.backend = "xnnpack";
  backend.formats = {"pte"};
  backend.runtime_version = CDX_EXECUTORCH_VERSION;
  backend.backend_for = [](const std::string& delegate) { return delegate.empty() ? std::string("xnnpack") : delegate; };
  backend.open = [](const cdx::ModelSpec& spec, int threads) -> std::unique_ptr<cdx::Session> {
    return std::make_unique<EtSession>(spec, threads);
  };
  return cdx::run_main(argc, argv, backend);
}
