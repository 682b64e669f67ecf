// Grid cells on the device (docs/spec.md section 1), shared by every kernel.
//
// A cell is (index, d): index in [0, G-1] for ANY float input (NaN and +-inf included),
// so table reads never leave the table; d = (v - g_i) / (g_{i+1} - g_i) carries the
// linear extrapolation beyond the end nodes and propagates NaN.
#pragma once
#include <cuda_runtime.h>

namespace lmkan {

struct Cell {
  int index;
  float d;
};

// Laplace CDF. expf, not __expf: the cell choice near a border may differ from the
// reference by rounding either way (the functions are continuous), but we keep it tight.
// One expf of -|v| (the same value as expf(v) or expf(-v) on each side): where the lanes of a
// warp hold both signs, the two-sided form ran both exponentials.
__device__ __forceinline__ float laplace_cdf(float v) {
  const float half_tail = 0.5f * expf(-fabsf(v));
  return v <= 0.f ? half_tail : 1.f - half_tail;
}

// fmaxf/fminf return the non-NaN operand, so a NaN position lands in cell 0.
__device__ __forceinline__ int clamp_cell(float t, int num_grids) {
  return static_cast<int>(fminf(fmaxf(t, 0.f), static_cast<float>(num_grids - 1)));
}

// The CDF grid's cell index of v (docs/spec.md section 1): in [0, G-1] for any float.
__device__ __forceinline__ int cdf_index(float v, int num_grids) {
  return clamp_cell(floorf(num_grids * laplace_cdf(v)), num_grids);
}

// borders: [G+1] node positions (global or shared memory).
__device__ __forceinline__ Cell cdf_cell(float v, const float* borders, int num_grids) {
  Cell c;
  c.index = cdf_index(v, num_grids);
  const float lo = borders[c.index];
  c.d = (v - lo) / (borders[c.index + 1] - lo);
  return c;
}

// Uniform grid starting at lo with num_grids cells; scale = num_grids / (hi - lo), which a
// thread that looks up many values computes once (a float division is ~10 instructions).
__device__ __forceinline__ Cell uniform_cell(float v, float lo, float scale, int num_grids) {
  Cell c;
  const float s = (v - lo) * scale;
  c.index = clamp_cell(floorf(s), num_grids);
  c.d = s - static_cast<float>(c.index);
  return c;
}

}  // namespace lmkan
