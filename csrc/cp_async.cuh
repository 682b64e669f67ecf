// Asynchronous global -> shared copies (cp.async, sm_80+), shared by the translation units.
// A thread's copies land in commit groups; cp.async.wait_group N returns once at most the
// N most recent groups of THIS thread are still in flight, and makes the landed data visible
// to this thread only (other threads need a barrier as well).
#pragma once

#include <cstdint>
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

// ---- Bulk copies (TMA, cp.async.bulk) completing on mbarriers (sm_90) ----------------------

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// One thread: copy `bytes` (multiple of 16, 16-byte aligned ends) global -> shared; the
// barrier's phase completes when they have landed.
__device__ __forceinline__ void bulk_copy_to_shared(void* dst, const void* src, unsigned bytes,
                                                    uint64_t* bar) {
  // order earlier generic-proxy reads of the buffer (ordered before this thread by
  // __syncthreads or an mbarrier wait) before the async-proxy writes
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
               ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, unsigned phase) {
  unsigned done;
  do {
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 " selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(smem_u32(bar)), "r"(phase) : "memory");
  } while (!done);
}
// One arrival on `bar` (release: this thread's earlier shared-memory reads are ordered before
// a waiter's acquire, e.g. before the producer refills the buffer the barrier guards).
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

}  // namespace lmkan
