// sum_splits (csrc/common/sum_splits.h).
#include <algorithm>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/sum_splits.h"

namespace lmkan {
namespace {

// y[i] = sum over s of parts[s][i], s = 0, 1, ... in order.
__global__ void sum_splits_kernel(const float* __restrict__ parts, float* __restrict__ y,
                                  int64_t splits, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = parts[i];
    for (int64_t s = 1; s < splits; ++s) v += parts[s * n + i];
    y[i] = v;
  }
}

}  // namespace

void sum_splits(const at::Tensor& parts, at::Tensor& y) {
  const int64_t n = y.numel();
  TORCH_INTERNAL_ASSERT(parts.is_contiguous() && y.is_contiguous() && parts.numel() == parts.size(0) * n);
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
  sum_splits_kernel<<<blocks, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      parts.data_ptr<float>(), y.data_ptr<float>(), parts.size(0), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan
