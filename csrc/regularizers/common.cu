// The regularisers' host helpers: argument checks, the launches, the fixed-order final sum.
#include <algorithm>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/device_limits.h"
#include "regularizers/device.cuh"

namespace lmkan {
namespace regularizers {
namespace {

// out[0] = scale * sum(partials), summed in a fixed order. partials: [n]; out: 0-dim.
__global__ void __launch_bounds__(kFinishThreads) finish_sum_kernel(
    const double* __restrict__ partials, int64_t n, double scale, float* __restrict__ out) {
  __shared__ double red[32];
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += partials[i];
  v = block_sum(v, red);
  if (threadIdx.x == 0) out[0] = static_cast<float>(v * scale);
}

}  // namespace

int64_t num_blocks(int64_t M, int num_chunks) {
  const int64_t blocks = (M + kThreads - 1) / kThreads * num_chunks;
  TORCH_CHECK_VALUE(blocks <= 0x7fffffff, "params has too many functions (N_out * N_in = ", M,
                    ") for one launch");
  return blocks;
}

int check_table(const at::Tensor& params, const at::Tensor& borders, int64_t table_dims,
                const char* shape, int64_t* M) {
  check_cuda_float(params, "params");
  check_cuda_float(borders, "borders");
  check_same_device(params, "params", borders, "borders");
  TORCH_CHECK_VALUE(params.dim() == table_dims, "params must have shape ", shape, ", got shape ",
                    params.sizes());
  check_dim(borders, 1, "borders");
  const int64_t S = borders.size(0);
  TORCH_CHECK_VALUE(S >= 3 && S <= kMaxNodes, "borders must hold G+1 nodes with 3 <= G+1 <= ",
                    kMaxNodes, ", got ", S);
  for (int64_t d = 0; d < table_dims - 2; ++d) {
    TORCH_CHECK_VALUE(params.size(d) == S, "params must have shape ", shape,
                      " with G+1 = borders.size(0) = ", S, ", got shape ", params.sizes());
  }
  *M = params.size(table_dims - 2) * params.size(table_dims - 1);
  return static_cast<int>(S);
}

void check_grad_r(const at::Tensor& grad_r, const at::Tensor& params) {
  check_cuda_float(grad_r, "grad_r");
  check_same_device(grad_r, "grad_r", params, "params");
  TORCH_CHECK_VALUE(grad_r.numel() == 1, "grad_r must be a 0-dim tensor (one element), got shape ",
                    grad_r.sizes());
}

at::Tensor reduce_value_blocks(int64_t blocks, double scale, bool one_block_allowed,
                               const at::TensorOptions& options,
                               const std::function<void(const ValueOut&)>& launch) {
  at::Tensor out = at::empty({}, options);  // 0-dim R
  ValueOut value_out{nullptr, out.data_ptr<float>(), scale, blocks};
  if (one_block_allowed && blocks >= 1 && blocks <= kOneBlockMaxBlocks) {
    launch(value_out);
    return out;
  }
  // partials: [blocks] double (at least one element so the final kernel writes R = 0).
  at::Tensor partials = at::empty({std::max<int64_t>(blocks, 1)}, options.dtype(at::kDouble));
  value_out.partials = partials.data_ptr<double>();
  if (blocks > 0) launch(value_out);
  finish_sum_kernel<<<1, kFinishThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      partials.data_ptr<double>(), blocks, scale, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor reduce_value(ValueKernels kernels, size_t shared_bytes, const at::Tensor& params,
                        const at::Tensor& borders, int S, int64_t M, Chunks chunks, double scale) {
  const int64_t blocks = M == 0 ? 0 : num_blocks(M, chunks.count);
  return reduce_value_blocks(blocks, scale, true, params.options(), [&](const ValueOut& o) {
    const bool one_block = o.partials == nullptr;
    const ValueKernel kernel = one_block ? kernels.one_block : kernels.multi_block;
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), shared_bytes);
    kernel<<<one_block ? 1u : static_cast<unsigned>(blocks), kThreads, shared_bytes,
             c10::cuda::getCurrentCUDAStream()>>>(params.data_ptr<float>(),
                                                  borders.data_ptr<float>(), o, S, M,
                                                  chunks.count, chunks.width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor launch_grad(GradKernel kernel, size_t shared_bytes, const at::Tensor& grad_r,
                       const at::Tensor& params, const at::Tensor& borders, int S, int64_t M,
                       Chunks chunks) {
  const int num_chunks = chunks.count;
  at::Tensor grad = at::empty_like(params, at::MemoryFormat::Contiguous);  // params' shape
  if (M == 0) return grad;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = num_blocks(M, num_chunks);
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), shared_bytes);
  kernel<<<static_cast<unsigned>(blocks), kThreads, shared_bytes, stream>>>(
      grad_r.data_ptr<float>(), params.data_ptr<float>(), borders.data_ptr<float>(),
      grad.data_ptr<float>(), S, M, num_chunks, chunks.width);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

}  // namespace regularizers
}  // namespace lmkan
