// The lmkan2d_forward op on CUDA: argument checks, the batch-first transposes where the plan
// asks for them, and the kernel plan_forward (plan.h) chooses: for layers of at most 8
// outputs a thread per sample (sample_threads_forward.cu); else the sample-lanes kernel
// (forward_sample_lanes.cu) wherever one table slice fits in shared memory, the output-lanes
// kernel (output_lanes.cu) past that. Images [N, N_in, L] (common/images.h) are read in place
// by the sample-lanes kernel; the other kernels get a batch-last copy.
#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/image_rows.h"
#include "common/images.h"
#include "lmkan2d/layout.h"
#include "lmkan2d/plan.h"

namespace lmkan {
namespace lmkan2d {

void check_common(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                  bool batch_last, int64_t tile_size, int64_t block_size, const char* op,
                  bool images) {
  check_layer_tensors(x, params, borders, 4, /*params_16bit=*/true, images);
  TORCH_CHECK_VALUE(x.dim() == 2 || batch_last, op, ": a 3-D x ([N, N_in, L] images) is "
                    "batch-last; got batch_last=False with x of shape ", x.sizes());
  TORCH_CHECK_VALUE(tile_size == 4 || tile_size == 8 || tile_size == 16, op,
                    ": tile_size must be 4, 8 or 16, got ", tile_size);
  TORCH_CHECK_VALUE(block_size >= 32 && block_size <= 1024 && block_size % 32 == 0, op,
                    ": block_size must be a multiple of 32 in [32, 1024], got ", block_size);
  const int64_t side = params.size(0);
  TORCH_CHECK_VALUE(side >= 4 && params.size(1) == side, op,
                    ": params must be [G+1, G+1, N_out, N_in/2] with G >= 3, got shape ",
                    params.sizes());
  TORCH_CHECK_VALUE(borders.size(0) == side, op, ": borders must have G+1=", side,
                    " entries, got ", borders.size(0));
  // Table offsets in the kernels are 32-bit: (G+1)^2 * W floats with W <= 128 stays below
  // 2^31 up to G+1 = 4095; the limit is the regularisers' (kMaxNodes, 4000 nodes).
  TORCH_CHECK_VALUE(side <= kMaxTableSide, op, ": num_grids must be at most ", kMaxTableSide - 1,
                    " (the kernels' table offsets are 32-bit), got ", side - 1);
  TORCH_CHECK_VALUE(params.size(3) >= 1, op, ": params must hold at least one input pair "
                    "(N_in/2 >= 1), got shape ", params.sizes());
  TORCH_CHECK_VALUE(params.size(2) <= INT32_MAX && params.size(3) <= INT32_MAX, op,
                    ": output_dim and input_dim/2 must be below 2^31, got params shape ",
                    params.sizes());
  const int64_t in_dim = x.dim() == 3 ? x.size(1) : batch_last ? x.size(0) : x.size(1);
  TORCH_CHECK_VALUE(in_dim == 2 * params.size(3), op, ": x has ", in_dim,
                    " input features but params expects input_dim=2*", params.size(3), "=",
                    2 * params.size(3), " (x shape ", x.sizes(), ", batch_last=", batch_last, ")");
  TORCH_CHECK_VALUE(params.size(2) >= 1, op, ": output_dim must be >= 1, got ", params.size(2));
}

at::Tensor forward_cuda(const at::Tensor& x_in, const at::Tensor& params_in,
                        const at::Tensor& borders_in, bool batch_last, int64_t tile_size,
                        int64_t block_size, std::optional<at::ScalarType> table_dtype) {
  // x: [N_in, B] (batch_last), [B, N_in] or images [N, N_in, L] (batch_last);
  // params: [G+1, G+1, N_out, N_in/2]; borders: [G+1].
  check_common(x_in, params_in, borders_in, batch_last, tile_size, block_size, "lmkan2d_forward",
               /*images=*/true);
  const at::ScalarType table = resolve_table_dtype(table_dtype, params_in, "lmkan2d_forward");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool images = x_in.dim() == 3;
  const int64_t batch =
      images ? x_in.size(0) * x_in.size(2) : batch_last ? x_in.size(1) : x_in.size(0);
  const CallShape shape{static_cast<int>(params_in.size(0)) - 1, params_in.size(2), batch,
                        2 * params_in.size(3), batch_last, table == at::kFloat ? 4 : 2};
  const ForwardPlan plan = plan_forward(shape, static_cast<int>(tile_size),
                                        device_limits(x_in.device().index()));
  if (plan.transposes) {  // batch-first only
    // Large batch-first calls run the batch-last kernel between two tiled transposes (x in,
    // y out): at the docs/performance.md shapes they cost ~3-4% of the forward, where the
    // kernel's strided batch-first access (scattered rows) cost +5% (G=8), +11% (G=16) and
    // +21% (G=26) in R4. Extra memory: one copy of x and of y. Small ones (plan.cpp) read
    // and write through the strides: two launches fewer.
    const at::Tensor y_bl =
        forward_cuda(transpose(x_in), params_in, borders_in, true, tile_size, block_size, table);
    return transpose(y_bl);
  }
  if (images && (plan.kernel != ForwardKernel::kSampleLanes || batch > kMaxImageSamples)) {
    // [N, N_in, L] -> a batch-last copy [N_in, N*L]; y [N_out, N*L] -> [N, N_out, L] (only
    // the sample-lanes kernel reads images, in 32-bit sample divisions: common/images.h)
    const at::Tensor y = forward_cuda(images_as_rows(x_in), params_in, borders_in, true,
                                      tile_size, block_size, table);
    return rows_as_images(y, x_in.size(0), x_in.size(2));
  }
  const at::Tensor x = x_in.contiguous(), params = params_in.contiguous(),
                   borders = borders_in.contiguous();
  const int tile = static_cast<int>(tile_size), block = static_cast<int>(block_size);
  switch (plan.kernel) {
    case ForwardKernel::kSampleLanes:
      return forward_by_sample_lanes(x, params, borders, tile, block, batch_last, table);
    case ForwardKernel::kOutputLanes:
      return forward_by_output_lanes(x, params, borders, tile, block, batch_last, table);
    case ForwardKernel::kSampleThreads:
      return forward_by_sample_threads(x, params, borders, batch_last,
                                       device_limits(x.device().index()), table);
  }
  TORCH_CHECK(false, "lmkan2d_forward: unknown kernel plan");
}

}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("lmkan2d_forward", &lmkan::lmkan2d::forward_cuda);
}
