// lmkan2d_max_num_grids: the largest num_grids each mode serves from shared memory on a
// device, as the kernel plans (plan.h) that the launches follow decide it.
#include <string>

#include <optional>

#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "common/device_limits.h"
#include "lmkan2d/plan.h"

namespace lmkan {
namespace lmkan2d {

int64_t max_num_grids_op(int64_t tile_size, c10::string_view mode, int64_t device_index,
                         std::optional<c10::ScalarType> table_dtype,
                         std::optional<int64_t> output_dim) {
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
  const c10::ScalarType table = table_dtype.value_or(c10::kFloat);
  TORCH_CHECK_VALUE(table == c10::kFloat || table == c10::kHalf || table == c10::kBFloat16,
                    "lmkan2d_max_num_grids: table_dtype must be float32, float16 or bfloat16, got ",
                    table);
  TORCH_CHECK_VALUE(!output_dim || *output_dim >= 1,
                    "lmkan2d_max_num_grids: output_dim must be >= 1, got ", output_dim.value_or(0));
  return max_num_grids_for(static_cast<int>(tile_size), m.c_str(),
                           device_limits(static_cast<int>(device_index)),
                           table == c10::kFloat ? 4 : 2, output_dim.value_or(0));
}

}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CompositeExplicitAutograd, m) {
  m.impl("lmkan2d_max_num_grids", &lmkan::lmkan2d::max_num_grids_op);
}
