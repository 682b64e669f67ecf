// Asynchronous global -> shared copies (cp.async, sm_80+), bulk copies and mbarriers (sm_90),
// and shared-memory loads at 32-bit addresses, shared by the translation units.
// A thread's copies land in commit groups; cp.async.wait_group N returns once at most the
// N most recent groups of THIS thread are still in flight, and makes the landed data visible
// to this thread only (other threads need a barrier as well).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace lmkan {

// 16 bytes, L2 only (.cg): streaming data that the block reads once from shared memory.
// cp_async16_at takes the destination as a 32-bit shared-window address (smem_u32 below), the
// form swizzled addresses are computed in (l2_hint.cuh's cp_async16_hinted falls back to it).
__device__ __forceinline__ void cp_async16_at(unsigned dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async16(float* dst_s, const float* src) {
  cp_async16_at(static_cast<unsigned>(__cvta_generic_to_shared(dst_s)), src);
}

// 4 bytes (.ca: the only cache mode that allows copies under 16 bytes).
__device__ __forceinline__ void cp_async4(float* dst_s, const float* src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_s));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}

// The same copies, zero-filling the destination instead where `copy` is false (the source
// size operand is 0: nothing is read from `src`, which must still be a valid address).
__device__ __forceinline__ void cp_async16_or_zero(float* dst_s, const float* src, bool copy) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_s));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(copy ? 16 : 0));
}
__device__ __forceinline__ void cp_async4_or_zero(float* dst_s, const float* src, bool copy) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_s));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(copy ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// At most kPending of this thread's most recent groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  // "memory": no load of the copied data may be moved above the wait.
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ---- Staging a contiguous run into shared memory, completing on an mbarrier --------------
//
// sm_90 and newer: ONE thread issues a bulk copy (TMA, cp.async.bulk) and announces its byte
// count on the barrier (mbarrier.arrive.expect_tx); the barrier's phase completes when the
// bytes have landed. Below sm_90 neither instruction exists; there EVERY thread of the block
// copies its share with 16-byte cp.async and then arrives on the barrier through
// cp.async.mbarrier.arrive.noinc, which counts as the thread's arrival once its copies have
// landed: the same ring of buffers and barriers, the same waits, only the copy is spread over
// the block (and the barrier is initialised with one arrival per thread instead of one).
// kBulkCopy is the compile-time switch; the host code never depends on it: both paths use the
// same shared-memory layout and launch shape.
// Below sm_90 an mbarrier wait polls (mbarrier.test_wait; try_wait, which suspends the warp
// in hardware, exists from sm_90 only), and every failed poll is one more shared-memory access
// on the pipe the kernels' table lookups are bound by. A waiting warp therefore sleeps
// LMKAN_WAIT_BACKOFF_NS between polls (A7, docs/rounds/NOTES.md: the Ampere path's G=16 forward
// 87.4 ms polling, 85.8 at 20 ns, 84.9 at 100 ns, 84.3 at 400 ns, on the H200). A compile-time
// knob (NVCC_APPEND_FLAGS=-DLMKAN_WAIT_BACKOFF_NS=N) for measuring other GPUs; 0 polls.
#ifndef LMKAN_WAIT_BACKOFF_NS
#define LMKAN_WAIT_BACKOFF_NS 400
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr bool kBulkCopy = false;
#else
constexpr bool kBulkCopy = true;
#endif

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Shared-memory loads at 32-bit shared-window addresses (smem_u32), for the 2D sample-lanes
// forward and the 1D grouped dC: a lane's address formed as `lane base + offset` is one add,
// where from C++ pointers the compiler re-associated it into two instructions. volatile:
// never moved above the barrier or mbarrier wait that makes a buffer valid. (The 1D dx
// kernel's loads this way: 353 instead of 390 instructions per pair loop, but 1.227 against
// 1.195 ms, run N3, H200: not used there, docs/decisions.md.)
__device__ __forceinline__ float4 lds128(unsigned addr) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(addr));
  return v;
}
// 16 bytes as four words (8 values of a 16-bit table).
__device__ __forceinline__ uint4 lds128_u32(unsigned addr) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}
__device__ __forceinline__ float2 lds64(unsigned addr) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(addr));
  return v;
}
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // visible to the TMA unit
#endif
}
// Arrivals that complete a staging barrier's phase: the one thread of a bulk copy, or every
// thread of the block below sm_90.
__device__ __forceinline__ unsigned staging_arrivals() { return kBulkCopy ? 1u : blockDim.x; }

// A ring of nbuf staged buffers, by thread 0: buffer i's "full" barrier completes when its
// copy has landed (staging_arrivals), its "empty" barrier when every thread of the block has
// released it. The caller synchronises the block before the barriers are used.
__device__ __forceinline__ void init_staging_ring(uint64_t* full, uint64_t* empty, int nbuf) {
  if (threadIdx.x != 0) return;
  for (int i = 0; i < nbuf; ++i) {
    mbarrier_init(full + i, staging_arrivals());
    mbarrier_init(empty + i, blockDim.x);
  }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
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
#endif

// This thread's share of a block-wide copy of `bytes` (multiple of 16, 16-byte aligned ends):
// 16-byte chunks threadIdx.x, threadIdx.x + blockDim.x, ... (consecutive lanes on consecutive
// chunks: coalesced reads, conflict-free writes). kThreads: the block's size where it is a
// compile-time constant (a constant stride), 0 for blockDim.x. Two loops on purpose: the
// signed one is the 1D tiled kernels' measured Ampere code; one unsigned loop with either
// stride changes their sm_80-89 SASS (dx +8 instructions), a change to measure on a GPU.
template <int kThreads = 0>
__device__ __forceinline__ void block_copy_share(float* dst, const float* src, unsigned bytes) {
  if constexpr (kThreads > 0) {
    for (int e = threadIdx.x; e < static_cast<int>(bytes) / 16; e += kThreads)
      cp_async16(dst + 4 * e, src + 4 * e);
  } else {
    for (unsigned i = threadIdx.x; i < bytes / 16u; i += blockDim.x)
      cp_async16(dst + 4 * i, src + 4 * i);
  }
}

// Stage `bytes` from global `src` into shared `dst`, completing `bar`'s phase. Called by the
// one producer thread where kBulkCopy, by every thread of the block otherwise.
__device__ __forceinline__ void stage_to_shared(float* dst, const float* src, unsigned bytes,
                                                uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  bulk_copy_to_shared(dst, src, bytes, bar);
#else
  block_copy_share(dst, src, bytes);
  // one arrival on bar once this thread's copies above (and earlier ones) have landed
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar))
               : "memory");
#endif
}

// The same staging where the block, not the barrier, waits below sm_90: called by every thread
// of a block of kThreads; on sm_90 thread 0 issues the bulk copy that completes `bar`, below
// sm_90 every thread copies its share into its next commit group, which the caller commits
// and waits on (cp_async_wait, then a block barrier) instead of polling `bar`. For pipelines
// whose Ampere path was measured with commit groups (the 1D tiled kernels).
template <int kThreads>
__device__ __forceinline__ void stage_to_shared_committed(float* dst, const float* src,
                                                          unsigned bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x == 0) bulk_copy_to_shared(dst, src, bytes, bar);
#else
  (void)bar;
  block_copy_share<kThreads>(dst, src, bytes);
#endif
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, unsigned phase) {
  unsigned done;
  do {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 " selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(smem_u32(bar)), "r"(phase) : "memory");
#else
    asm volatile("{\n .reg .pred p;\n mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 " selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(smem_u32(bar)), "r"(phase) : "memory");
#if LMKAN_WAIT_BACKOFF_NS > 0
    if (!done) __nanosleep(LMKAN_WAIT_BACKOFF_NS);
#endif
#endif
  } while (!done);
}
// One arrival on `bar` (release: this thread's earlier shared-memory reads are ordered before
// a waiter's acquire, e.g. before the producer refills the buffer the barrier guards).
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

}  // namespace lmkan
