// Helpers of the 1D kernels' files: a sample's cell with the node table in shared memory,
// and the launchers' shared-memory attribute.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "common/device_limits.h"
#include "common/grid.cuh"
#include "lmkan1d/layout.h"

namespace lmkan {
namespace lmkan1d {

// Cell of v with the node table in shared memory (borders_s: [G+1]).
__device__ __forceinline__ Cell find_cell(float v, const float* borders_s, int num_grids,
                                          bool uniform) {
  return uniform ? uniform_cell(v, borders_s[0], borders_s[num_grids], num_grids)
                 : cdf_cell(v, borders_s, num_grids);
}

__device__ __forceinline__ void load_borders(float* borders_s, const float* borders, int n) {
  for (int j = threadIdx.x; j < n; j += blockDim.x) borders_s[j] = borders[j];
}

}  // namespace lmkan1d
}  // namespace lmkan
