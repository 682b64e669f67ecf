// lmkan2d_max_num_grids: the largest num_grids each mode serves from shared memory on a
// device, from the same footprint functions (layout.h) that the launches use.
#include <string>

#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "lmkan2d/layout.h"

namespace lmkan {
namespace lmkan2d {

int max_num_grids_for(int tile, const std::string& mode, int device_index) {
  const DeviceLimits lim = device_limits(device_index);
  int best = 0;
  for (int g = 3; g < 4096; ++g) {
    bool fits;
    if (mode == "forward") {
      // one table slice in shared memory (the sample-lanes kernel's ring of one buffer);
      // larger num_grids run the output-lanes kernel with the table read from L1/L2
      // (lmkan2d_forward never refuses a num_grids)
      fits = sample_lanes_smem_bytes(g, 8 * tile, 1) <= lim.smem_optin;
    } else if (mode == "backward" || mode == "backward_fast") {
      // the non-deterministic backward (both modes) sorts by cell with a shared-memory
      // histogram; the table and its gradient go through L2 at every num_grids
      fits = runs_bucket_smem_bytes(g) <= lim.smem_optin;
    } else {
      // deterministic backward (either mode): the dx kernel's table slice (one warp) and the dP kernel's
      // accumulator (one warp, smallest chunk) both in shared memory; past this G the
      // backward reads the table / accumulates dP through global memory instead.
      fits = dx_smem_bytes(g, tile, 1, true) <= lim.smem_optin &&
             dp_smem_bytes(g, tile, 1, kDpMinChunk, true) <= lim.smem_optin;
    }
    if (!fits) break;
    best = g;
  }
  return best;
}

int64_t max_num_grids_op(int64_t tile_size, c10::string_view mode, int64_t device_index) {
  TORCH_CHECK_VALUE(tile_size == 4 || tile_size == 8 || tile_size == 16,
                    "lmkan2d_max_num_grids: tile_size must be 4, 8 or 16, got ", tile_size);
  const std::string m(mode.data(), mode.size());
  TORCH_CHECK_VALUE(m == "forward" || m == "backward" || m == "backward_fast" ||
                        m == "backward_deterministic",
                    "lmkan2d_max_num_grids: mode must be 'forward', 'backward', 'backward_fast' "
                    "or 'backward_deterministic', got '", m, "'");
  int count = 0;
  C10_CUDA_CHECK(cudaGetDeviceCount(&count));
  TORCH_CHECK_VALUE(device_index >= 0 && device_index < count,
                    "lmkan2d_max_num_grids: device_index must be in [0, ", count, "), got ",
                    device_index);
  return max_num_grids_for(static_cast<int>(tile_size), m, static_cast<int>(device_index));
}

}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CompositeExplicitAutograd, m) {
  m.impl("lmkan2d_max_num_grids", &lmkan::lmkan2d::max_num_grids_op);
}
