// Helpers of the 1D kernels' files: a sample's cell with the node table in shared memory,
// and the launchers' shared-memory attribute.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "common/device_limits.h"
#include "common/grid.cuh"
#include "lmkan1d/layout.h"

namespace lmkan {
namespace lmkan1d {

// The uniform grid's num_grids / (hi - lo), 1 / (cell width) (borders_s: [G+1], in shared or
// global memory).
__device__ __forceinline__ float uniform_scale(const float* borders_s, int num_grids) {
  return num_grids / (borders_s[num_grids] - borders_s[0]);
}

// Cell of v with the node table in shared memory; scale: uniform_scale(borders_s, num_grids)
// on the uniform grid (unused otherwise), which a thread that looks up many values computes
// once.
__device__ __forceinline__ Cell find_cell(float v, const float* borders_s, int num_grids,
                                          bool uniform, float scale) {
  return uniform ? uniform_cell(v, borders_s[0], scale, num_grids)
                 : cdf_cell(v, borders_s, num_grids);
}

// The same for one value.
__device__ __forceinline__ Cell find_cell(float v, const float* borders_s, int num_grids,
                                          bool uniform) {
  return find_cell(v, borders_s, num_grids, uniform,
                   uniform ? uniform_scale(borders_s, num_grids) : 0.f);
}

// A finite input more than kFarCells cells past the end nodes ("far"): its d does not fit the
// weighted form (1 - d) f_i + d f_{i+1} (inf - inf = NaN), and on fine grids d itself
// overflows although f_i + (v - g_i) s_i is finite (identity at 3e38 on a G = 300 grid).
// The forward evaluates far inputs as f_i + ((d 2^-64)(f_{i+1} - f_i)) 2^64: powers of two
// scale exactly, so the result overflows to +-inf exactly where the extrapolation does.
constexpr float kFarCells = 1048576.f;  // 2^20
constexpr float kFarScale = 0x1p-64f;
constexpr float kFarUnscale = 0x1p64f;

__device__ __forceinline__ bool is_far(float v, float d) {
  // false for NaN and +-inf inputs: their d stays as it is (NaN or inf, as in the reference)
  return !(fabsf(d) <= kFarCells) && fabsf(v) < INFINITY;
}

// d 2^-64 of a far input v in cell `index`, computed without overflow.
__device__ __forceinline__ float far_scaled_d(float v, const float* borders_s, int num_grids,
                                              bool uniform, int index) {
  if (uniform) {
    return ((v - borders_s[0]) * kFarScale) * uniform_scale(borders_s, num_grids) -
           index * kFarScale;
  }
  const float lo = borders_s[index];
  return ((v - lo) * kFarScale) / (borders_s[index + 1] - lo);
}

// d for the gradient kernels' weights (1 - d, d): +-FLT_MAX where d overflows for a finite v,
// so that a zero upstream gradient gives 0, not 0 * inf = NaN.
__device__ __forceinline__ float gradient_d(float v, float d) {
  return fabsf(d) == INFINITY && fabsf(v) < INFINITY ? copysignf(3.402823466e38f, d) : d;
}

__device__ __forceinline__ void load_borders(float* borders_s, const float* borders, int n) {
  for (int j = threadIdx.x; j < n; j += blockDim.x) borders_s[j] = borders[j];
}

}  // namespace lmkan1d
}  // namespace lmkan
