// K-wide vector loads and stores of a lane's consecutive floats (K = 1, 2 or 4: one 4-, 8-
// or 16-byte access): the 2D layer's kernels, and the fallback of l2_hint.cuh's loads with
// an L2 eviction priority.
#pragma once

namespace lmkan {

// K consecutive floats of a lane into v, one vector access (K * lane floats into a W-float
// row: 16/8/4-byte aligned). kReadOnly: through the read-only data cache (__ldg; global
// memory that nothing writes while the kernel runs), else a plain load (shared memory too).
template <int K, bool kReadOnly = false>
__device__ __forceinline__ void load_k(const float* p, float (&v)[K]) {
  if constexpr (K == 4) {
    const float4 t = kReadOnly ? __ldg(reinterpret_cast<const float4*>(p))
                               : *reinterpret_cast<const float4*>(p);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
  } else if constexpr (K == 2) {
    const float2 t = kReadOnly ? __ldg(reinterpret_cast<const float2*>(p))
                               : *reinterpret_cast<const float2*>(p);
    v[0] = t.x; v[1] = t.y;
  } else {
    v[0] = kReadOnly ? __ldg(p) : p[0];
  }
}

template <int K>
__device__ __forceinline__ void store_k(float* p, const float (&v)[K]) {
  if constexpr (K == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else if constexpr (K == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else {
    p[0] = v[0];
  }
}

}  // namespace lmkan
