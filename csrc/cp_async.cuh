// Asynchronous global -> shared copies (cp.async, sm_80+), shared by the translation units.
// A thread's copies land in commit groups; cp.async.wait_group N returns once at most the
// N most recent groups of THIS thread are still in flight, and makes the landed data visible
// to this thread only (other threads need a barrier as well).
#pragma once

#include <cuda_runtime.h>

namespace lmkan {

// 16 bytes, L2 only (.cg): streaming data that the block reads once from shared memory.
__device__ __forceinline__ void cp_async16(float* dst_s, const float* src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_s));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}

// 4 bytes (.ca: the only cache mode that allows copies under 16 bytes).
__device__ __forceinline__ void cp_async4(float* dst_s, const float* src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_s));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// At most kPending of this thread's most recent groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  // "memory": no load of the copied data may be moved above the wait.
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace lmkan
