// The two threadpool entry points cdx_et_runner needs. The executorch wheel ships libexecutorch_threadpool.so but
// not extension/threadpool/threadpool.h, so they are declared here exactly as in ExecuTorch's threadpool.h
// (namespace executorch::extension::threadpool). Only a pointer to ThreadPool is used, never its layout; the
// exported symbols are checked by the link (nm -DC libexecutorch_threadpool.so lists both).
#pragma once

#include <cstdint>

namespace executorch::extension::threadpool {

class ThreadPool {
 public:
  // Resize the global pool (the pool XNNPACK and the optimized kernels run on); false if it failed.
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};

ThreadPool* get_threadpool();

}  // namespace executorch::extension::threadpool
