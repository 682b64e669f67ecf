// Device helpers shared by the LMKAN2DLayer kernels: the warp transpose-reduce, a sample's
// pair cell (and its second-derivative weights) and the read-modify-write of a cell's 4
// corners (K-wide row loads and stores: common/vector_access.cuh).
#pragma once
#include <cstdint>

#include "common/grid.cuh"
#include "common/vector_access.cuh"
#include "common/warp.cuh"
#include "lmkan2d/layout.h"

namespace lmkan {
namespace lmkan2d {

// (transpose_reduce, the warp scan: common/warp.cuh)

// A finite input more than kFarCells cells past the end nodes ("far", docs/spec.md,
// "Robustness"): no float32 form of its bilinear terms is NaN-free (inf - inf where the
// value is finite, or 0 * inf). Every kernel gives such an input d = 0 (pair_cell, the
// forwards' cell code); the forwards then add the difference to the pair's value in float64
// after their loop (far_correction), and after the backward kernels far_fixup.cu replaces
// the pair's grad_x and corrects grad_params in float64. NaN and +-inf inputs are not far
// (they keep their d, as in the reference).
constexpr float kFarCells = 1048576.f;  // 2^20

__device__ __forceinline__ bool is_far(float v, float d) {
  return !(fabsf(d) <= kFarCells) && fabsf(v) < INFINITY;
}

// d of v in cell i, in float64 (borders: [G+1], global or shared memory).
__device__ __forceinline__ double exact_d(float v, const float* borders, int i) {
  const double lo = borders[i];
  return (double(v) - lo) / (double(borders[i + 1]) - lo);
}

// What the float64 value of one output of a pair differs by from what the kernel's loop added
// for it, u = the loop's 4 float32 weights: f = c00 + D1 (c10 - c00) + D2 (c01 - c00)
// + D1 D2 (c11 - c10 - c01 + c00) (differences of float32 values are exact in float64),
// rounded once to float32 (+-inf where it overflows).
__device__ __forceinline__ float far_correction(float c00, float c01, float c10, float c11,
                                               double D1, double D2, float u00, float u01,
                                               float u10, float u11) {
  const double a = c00, b = c01, c = c10, d = c11;
  const double exact = a + D1 * (c - a) + D2 * (b - a) + D1 * D2 * ((d - c) - (b - a));
  const double added = double(u00) * a + double(u01) * b + double(u10) * c + double(u11) * d;
  return static_cast<float>(exact - added);
}

// Cell of sample b for pair p as (index into the (G+1)^2 cells, d1, d2, 0), and 1/h1, 1/h2;
// a far input's d is 0 (above), and *far (where asked) tells whether either input is far.
// pair_cell_of_values: the same from the pair's two inputs, already loaded (bucket_kernel
// loads a few samples' inputs before it computes any cell).
__device__ __forceinline__ float4 pair_cell_of_values(float v1, float v2, const float* s_borders,
                                                      int num_grids, float2* inv_h,
                                                      bool* far = nullptr) {
  Cell c1 = cdf_cell(v1, s_borders, num_grids);
  Cell c2 = cdf_cell(v2, s_borders, num_grids);
  const bool far1 = is_far(v1, c1.d), far2 = is_far(v2, c2.d);
  if (far1) c1.d = 0.f;  // corrected by far_fixup.cu (the forwards: after their loop)
  if (far2) c2.d = 0.f;
  if (far != nullptr) *far = far1 || far2;
  if (inv_h != nullptr) {
    *inv_h = make_float2(1.f / (s_borders[c1.index + 1] - s_borders[c1.index]),
                         1.f / (s_borders[c2.index + 1] - s_borders[c2.index]));
  }
  return make_float4(__int_as_float(c1.index * (num_grids + 1) + c2.index), c1.d, c2.d, 0.f);
}

__device__ __forceinline__ float4 pair_cell(const float* __restrict__ x, int64_t b, int p,
                                            const float* s_borders, int num_grids,
                                            int64_t xs_f, int64_t xs_b, float2* inv_h,
                                            bool* far = nullptr) {
  const int64_t f = 2 * int64_t(p);
  const float v1 = x[f * xs_f + b * xs_b], v2 = x[(f + 1) * xs_f + b * xs_b];
  return pair_cell_of_values(v1, v2, s_borders, num_grids, inv_h, far);
}

// The second-derivative variant of pair_cell (the ops lmkan2d_slope_*): the corner weights
// of w . grad f, the directional derivative of the cell's bilinear function along the
// sample's weights (w1, w2) at (d1, d2), as (index, w01, w10, w11); w00 = -(w01 + w10 + w11)
// (the 4 weights sum to 0). With a = w1 / h1, c = w2 / h2:
//   w00 = -a (1 - d2) - c (1 - d1), w01 = -a d2 + c (1 - d1),
//   w10 = a (1 - d2) - c d1,        w11 = a d2 + c d1.
__device__ __forceinline__ float4 slope_weights(float d1, float d2, float a, float c) {
  return make_float4(0.f, c * (1.f - d1) - a * d2, a * (1.f - d2) - c * d1, a * d2 + c * d1);
}

__device__ __forceinline__ float4 slope_pair_cell(const float* __restrict__ x,
                                                  const float* __restrict__ w, int64_t b, int p,
                                                  const float* s_borders, int num_grids,
                                                  int64_t xs_f, int64_t xs_b) {
  const int64_t f1 = 2 * int64_t(p) * xs_f + b * xs_b, f2 = f1 + xs_f;
  const Cell c1 = cdf_cell(x[f1], s_borders, num_grids);
  const Cell c2 = cdf_cell(x[f2], s_borders, num_grids);
  const float a = w[f1] / (s_borders[c1.index + 1] - s_borders[c1.index]);
  const float c = w[f2] / (s_borders[c2.index + 1] - s_borders[c2.index]);
  float4 r = slope_weights(c1.d, c2.d, a, c);
  r.x = __int_as_float(c1.index * (num_grids + 1) + c2.index);
  return r;
}

// Component i (compile-time after unrolling) of a float4.
__device__ __forceinline__ float& component(float4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Corner j = 2a + b of a cell, (i1+a, i2+b), relative to the cell's row in a [cells][W]
// array: distinct rows for the 4 corners.
__device__ __forceinline__ int corner_offset(int j, int side, int width) {
  return ((j >> 1) * side + (j & 1)) * width;
}

// The 4 corners of a cell at q (a lane's K columns).
template <int K>
__device__ __forceinline__ void load_corners(const float* q, int side, float (&r)[4][K]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) load_k<K>(q + corner_offset(j, side, 32 * K), r[j]);
}

template <int K>
__device__ __forceinline__ void store_corners(float* q, int side, const float (&r)[4][K]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) store_k<K>(q + corner_offset(j, side, 32 * K), r[j]);
}

// r += g * the bilinear weights of (d1, d2) at the 4 corners.
template <int K>
__device__ __forceinline__ void add_sample(float (&r)[4][K], const float (&g)[K], float d1,
                                           float d2) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float g1 = g[k] * d1, g0 = g[k] - g1;  // g * d1, g * (1 - d1)
    r[0][k] += g0 - g0 * d2;
    r[1][k] += g0 * d2;
    r[2][k] += g1 - g1 * d2;
    r[3][k] += g1 * d2;
  }
}

// r += g * the corner weights of a cell info: (index, d1, d2, -) from pair_cell, or with
// kSlopes (index, w01, w10, w11) from slope_pair_cell.
template <int K, bool kSlopes>
__device__ __forceinline__ void add_info(float (&r)[4][K], const float (&g)[K], float4 c) {
  if constexpr (kSlopes) {
    const float w00 = -(c.y + c.z + c.w);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      r[0][k] = fmaf(g[k], w00, r[0][k]);
      r[1][k] = fmaf(g[k], c.y, r[1][k]);
      r[2][k] = fmaf(g[k], c.z, r[2][k]);
      r[3][k] = fmaf(g[k], c.w, r[3][k]);
    }
  } else {
    add_sample<K>(r, g, c.y, c.z);
  }
}

template <int K, bool kSlopes>
__device__ __forceinline__ void update_cell_info(float* q, int side, const float (&g)[K],
                                                 float4 c) {
  float r[4][K];
  load_corners<K>(q, side, r);
  add_info<K, kSlopes>(r, g, c);
  store_corners<K>(q, side, r);
}

// Read-modify-write of one sample's 4 corners (all loads, then all stores).
template <int K>
__device__ __forceinline__ void update_cell(float* q, int side, const float (&g)[K], float d1,
                                            float d2) {
  float r[4][K];
  load_corners<K>(q, side, r);
  add_sample<K>(r, g, d1, d2);
  store_corners<K>(q, side, r);
}

}  // namespace lmkan2d
}  // namespace lmkan
