// Global loads, cp.async copies and float reductions with an L2 eviction priority (PTX
// `createpolicy` and `.L2::cache_hint`). The priority only orders what L2 evicts first when it
// is full: a kernel that streams a large array beside a small one it re-reads can mark the
// stream evict_first (and the re-read one evict_last) so that the stream does not evict it.
// Used by the sorted backward's two runs kernels (backward_runs.cu, backward_runs_mma.cu),
// whose grad_y rows are re-read by every pair while the table and the dP workspace stream
// through L2.
//
// The priorities apply from sm_90 on, where they were measured (H100) and run on a GPU. Below
// sm_90 (the PTX exists from sm_80) the helpers are plain accesses (`__ldg`, `atomicAdd`,
// `cp.async`), the code those kernels ran before, until the Ampere build of the hinted path
// has run on a GPU and been timed.
#pragma once
#include <cstdint>

#include "common/cp_async.cuh"
#include "common/vector_access.cuh"

namespace lmkan {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define LMKAN_L2_HINTS 0
#else
#define LMKAN_L2_HINTS 1
#endif

// L2 policies for all the lines an access touches (fraction 1.0); 0 where unused (< sm_90).
__device__ __forceinline__ uint64_t l2_policy_evict_first() {
  uint64_t p = 0;
#if LMKAN_L2_HINTS
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
#endif
  return p;
}
__device__ __forceinline__ uint64_t l2_policy_evict_last() {
  uint64_t p = 0;
#if LMKAN_L2_HINTS
  asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
#endif
  return p;
}

// The loads are plain asm (not volatile): they read data that no thread writes during the
// kernel, so the compiler may schedule them as it does __ldg.

// Read-only (non-coherent) loads of K = 1, 2 or 4 floats (p aligned to 4K bytes) under `policy`.
template <int K>
__device__ __forceinline__ void load_k_hinted(const float* p, float (&v)[K], uint64_t policy) {
#if LMKAN_L2_HINTS
  if constexpr (K == 4) {
    asm("ld.global.nc.L2::cache_hint.v4.f32 {%0, %1, %2, %3}, [%4], %5;"
        : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3])
        : "l"(p), "l"(policy));
  } else if constexpr (K == 2) {
    asm("ld.global.nc.L2::cache_hint.v2.f32 {%0, %1}, [%2], %3;"
        : "=f"(v[0]), "=f"(v[1])
        : "l"(p), "l"(policy));
  } else {
    asm("ld.global.nc.L2::cache_hint.f32 %0, [%1], %2;" : "=f"(v[0]) : "l"(p), "l"(policy));
  }
#else
  load_k<K, true>(p, v);  // plain read-only loads
#endif
}

// 32-bit words of packed 16-bit values: 2 words (8 bytes), 1 word, or one 16-bit value
// (zero-extended) under `policy`.
__device__ __forceinline__ uint2 load_u32x2_hinted(const void* p, uint64_t policy) {
#if LMKAN_L2_HINTS
  uint2 v;
  asm("ld.global.nc.L2::cache_hint.v2.u32 {%0, %1}, [%2], %3;"
      : "=r"(v.x), "=r"(v.y)
      : "l"(p), "l"(policy));
  return v;
#else
  return __ldg(static_cast<const uint2*>(p));
#endif
}
__device__ __forceinline__ unsigned load_u32_hinted(const void* p, uint64_t policy) {
#if LMKAN_L2_HINTS
  unsigned v;
  asm("ld.global.nc.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(v) : "l"(p), "l"(policy));
  return v;
#else
  return __ldg(static_cast<const unsigned*>(p));
#endif
}
__device__ __forceinline__ unsigned load_u16_hinted(const void* p, uint64_t policy) {
#if LMKAN_L2_HINTS
  unsigned short v;
  asm("ld.global.nc.L2::cache_hint.u16 %0, [%1], %2;" : "=h"(v) : "l"(p), "l"(policy));
  return v;
#else
  return __ldg(static_cast<const unsigned short*>(p));
#endif
}

// cp.async of 16 bytes (L2 only, as cp_async16_at: dst a 32-bit shared-window address) under
// `policy`; below sm_90 the plain copy.
__device__ __forceinline__ void cp_async16_hinted(unsigned dst, const void* src, uint64_t policy) {
#if LMKAN_L2_HINTS
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n"
               ::"r"(dst), "l"(src), "l"(policy));
#else
  (void)policy;
  cp_async16_at(dst, src);
#endif
}

// dst[0, K) += v (relaxed, gpu scope, no return value) under `policy`: one vector reduction
// (RED.E.ADD.F32x4 / x2; vector float reductions exist from sm_90 on); below sm_90 K scalar
// atomics without a priority.
template <int K>
__device__ __forceinline__ void red_k_hinted(float* dst, const float (&v)[K], uint64_t policy) {
#if LMKAN_L2_HINTS
  if constexpr (K == 4) {
    asm volatile("red.global.add.L2::cache_hint.v4.f32 [%0], {%1, %2, %3, %4}, %5;"
                 :: "l"(dst), "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]), "l"(policy)
                 : "memory");
  } else if constexpr (K == 2) {
    asm volatile("red.global.add.L2::cache_hint.v2.f32 [%0], {%1, %2}, %3;"
                 :: "l"(dst), "f"(v[0]), "f"(v[1]), "l"(policy) : "memory");
  } else {
    asm volatile("red.global.add.L2::cache_hint.f32 [%0], %1, %2;"
                 :: "l"(dst), "f"(v[0]), "l"(policy) : "memory");
  }
#else
#pragma unroll
  for (int k = 0; k < K; ++k) atomicAdd(dst + k, v[k]);
#endif
}

#undef LMKAN_L2_HINTS

}  // namespace lmkan
