// The per-device limits cache (device_limits.h).
#include "common/device_limits.h"

#include "common/env_knobs.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

namespace lmkan {
namespace {

DeviceLimits query(int device) {
  DeviceLimits d{};
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.num_sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.max_threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  return d;
}

// LMKAN_SMEM_BUDGET_KB in bytes, or -1 when unset or empty.
int64_t smem_budget_bytes() {
  const int64_t kb =
      env_int("LMKAN_SMEM_BUDGET_KB", 16, 1024, -1, "number of KiB", " (e.g. 99 or 163)");
  return kb < 0 ? -1 : kb * 1024;
}

}  // namespace

// Called on every launch: after a device's first query, a lock, a copy and one getenv.
DeviceLimits device_limits(int device_index) {
  static std::mutex mutex;
  static std::vector<DeviceLimits> cache;
  static std::vector<bool> known;
  DeviceLimits d;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (device_index < 0 || device_index >= static_cast<int>(known.size()) || !known[device_index]) {
      int count = 0;  // asked once per device, not per launch
      C10_CUDA_CHECK(cudaGetDeviceCount(&count));
      TORCH_CHECK_VALUE(device_index >= 0 && device_index < count, "device_index must be in [0, ",
                        count, "), got ", device_index);
      if (device_index >= static_cast<int>(cache.size())) {
        cache.resize(device_index + 1);
        known.resize(device_index + 1, false);
      }
      cache[device_index] = query(device_index);
      known[device_index] = true;
    }
    d = cache[device_index];
  }
  const int64_t budget = smem_budget_bytes();
  if (budget >= 0 && budget < d.smem_optin) {
    d.smem_optin = static_cast<int>(budget);
    d.smem_per_sm = static_cast<int>(std::min<int64_t>(d.smem_per_sm, budget + kReservedSmemPerBlock));
  }
  return d;
}

void allow_dynamic_smem(const void* kernel, int64_t bytes) {
  constexpr int64_t kDefaultDynamicSmem = 48 * 1024;
  if (bytes <= kDefaultDynamicSmem) return;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int64_t> allowed;  // (kernel, device) -> bytes
  std::lock_guard<std::mutex> lock(mutex);
  int64_t& current = allowed[{kernel, device}];
  if (bytes <= current) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  current = bytes;
}

}  // namespace lmkan
