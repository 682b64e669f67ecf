// second_diff1d and second_diff1d_backward on CUDA: the 1D second-difference kernels.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "regularizers/device.cuh"

namespace lmkan {
namespace regularizers {
namespace {

// R, 1D (ValueOut: partial sums or, in a one-block launch, R itself). Block of work b:
// kThreads functions x one chunk of inner rows. params: [S, M]; borders: [S].
template <int W, bool kOneBlock>
__global__ void __launch_bounds__(kThreads) second_diff1d_value_kernel(
    const float* __restrict__ params, const float* __restrict__ borders, ValueOut o, int S,
    int64_t M, int num_chunks, int chunk_width) {
  extern __shared__ float coef[];  // [3 * S]
  __shared__ double red[32];
  fill_coefficients(borders, S, coef);
  __syncthreads();
  const float* km = coef;
  const float* kp = coef + S;

  const double total = sum_over_work<kOneBlock>(o, [&](unsigned b) {
    const int chunk = static_cast<int>(b % num_chunks);
    const int64_t m = static_cast<int64_t>(b / num_chunks) * kThreads + threadIdx.x;
    const int a0 = 1 + chunk * chunk_width;       // first inner row of the chunk
    const int na = min(chunk_width, S - 1 - a0);  // inner rows a0 .. a0+na-1
    float acc = 0.f;  // at most W terms
    if (m < M) {
      float p[W + 2];  // rows a0-1 .. a0+na
      load_row(p, params + m, a0 - 1, na + 2, S, M);
#pragma unroll
      for (int j = 1; j <= W; ++j) {
        if (j <= na) {
          const int a = a0 - 1 + j;
          const float f = kp[a] * (p[j + 1] - p[j]) - km[a] * (p[j] - p[j - 1]);
          acc = fmaf(f, f, acc);
        }
      }
    }
    return static_cast<double>(acc);
  });
  write_value<kOneBlock>(total, red, o);
}

// dR/dP * grad_r, 1D. One block: kThreads functions x one chunk of rows (all S rows
// partitioned). grad_r: [1]; params, grad: [S, M]; borders: [S].
template <int W>
__global__ void __launch_bounds__(kThreads) second_diff1d_grad_kernel(
    const float* __restrict__ grad_r, const float* __restrict__ params,
    const float* __restrict__ borders, float* __restrict__ grad, int S, int64_t M,
    int num_chunks, int chunk_width) {
  extern __shared__ float coef[];  // [3 * S]
  fill_coefficients(borders, S, coef);
  __syncthreads();
  const float* km = coef;
  const float* kp = coef + S;

  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int64_t m = static_cast<int64_t>(blockIdx.x / num_chunks) * kThreads + threadIdx.x;
  if (m >= M) return;
  const int a0 = chunk * chunk_width;      // first row of the chunk
  const int na = min(chunk_width, S - a0);  // rows a0 .. a0+na-1
  const float inner = static_cast<float>(S - 2);
  const float scale = __ldg(grad_r) * (2.f / inner);

  float p[W + 4];  // rows a0-2 .. a0+na+1 (index j <-> a0-2+j)
  float g[W];      // rows a0 .. a0+na-1
  load_row(p, params + m, a0 - 2, na + 4, S, M);
#pragma unroll
  for (int j = 0; j < W; ++j) g[j] = 0.f;
  // f at row a = a0-1+i (i = 0 .. na+1), centre index i+1; it adds to rows a-1, a, a+1,
  // gradient indices i-2, i-1, i.
#pragma unroll
  for (int i = 0; i <= W + 1; ++i) {
    const int a = a0 - 1 + i;
    if (i <= na + 1 && a >= 1 && a <= S - 2) {
      const int c = i + 1;
      const float rkm = km[a], rkp = kp[a];
      const float e = scale * (rkp * (p[c + 1] - p[c]) - rkm * (p[c] - p[c - 1]));
      if (i - 2 >= 0 && i - 2 < W) g[i - 2] = fmaf(e, rkm, g[i - 2]);
      if (i - 1 >= 0 && i - 1 < W) g[i - 1] -= e * (rkm + rkp);
      if (i < W) g[i] = fmaf(e, rkp, g[i]);
    }
  }
  float* out = grad + m;
#pragma unroll
  for (int j = 0; j < W; ++j)
    if (j < na) out[static_cast<int64_t>(a0 + j) * M] = g[j];
}

constexpr const char* kShape1d = "[G+1, N_out, N_in]";

// params: [S, N_out, N_in]; borders: [S]. Returns R, 0-dim float32.
at::Tensor second_diff1d_cuda(const at::Tensor& params_in, const at::Tensor& borders_in) {
  int64_t M = 0;
  const int S = check_table(params_in, borders_in, 3, kShape1d, &M);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const at::Tensor params = params_in.contiguous();
  const at::Tensor borders = borders_in.contiguous();
  return reduce_value({second_diff1d_value_kernel<kW1d, false>,
                       second_diff1d_value_kernel<kW1d, true>},
                      coef_bytes(S), params, borders, S, M,
                      split(S - 2, kW1d), 1.0 / static_cast<double>(S - 2));
}

// grad_r: 0-dim; params: [S, N_out, N_in]; borders: [S]. Returns [S, N_out, N_in].
at::Tensor second_diff1d_backward_cuda(const at::Tensor& grad_r_in, const at::Tensor& params_in,
                                       const at::Tensor& borders_in) {
  int64_t M = 0;
  const int S = check_table(params_in, borders_in, 3, kShape1d, &M);
  check_grad_r(grad_r_in, params_in);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const at::Tensor grad_r = grad_r_in.contiguous();
  const at::Tensor params = params_in.contiguous();
  const at::Tensor borders = borders_in.contiguous();
  const Chunks chunks = split(S, kW1d);
  return launch_grad(second_diff1d_grad_kernel<kW1d>, coef_bytes(S), grad_r, params, borders, S,
                     M, chunks);
}

}  // namespace
}  // namespace regularizers
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("second_diff1d", &lmkan::regularizers::second_diff1d_cuda);
  m.impl("second_diff1d_backward", &lmkan::regularizers::second_diff1d_backward_cuda);
}
