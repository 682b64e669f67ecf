// Smoothness regularisers of the lookup tables (SPEC.md sections 3 and 4), value and
// gradient, without host synchronisation and without atomics.
//
//   hessian2d(params [S, S, N_out, N_in/2], borders [S]) -> R (0-dim)
//   hessian2d_backward(grad_r (0-dim, on the device), params, borders) -> dR/dparams * grad_r
//   second_diff1d(params [S, N_out, N_in], borders [S]) -> R (0-dim)
//   second_diff1d_backward(grad_r, params, borders) -> dR/dparams * grad_r
// with S = G + 1 nodes per axis.
//
// Layout: the last two dims of params flatten to M functions m = (o, p), contiguous, so
// every stencil neighbour of element (a, b, m) lies M elements away along b, S*M along a.
// One thread owns one function m and a chunk of at most W columns b (the chunks partition
// the columns, so every value and every gradient entry is computed by exactly one thread);
// a warp's loads and stores are 32 consecutive m: fully coalesced. The 2D kernels slide a
// window of three parameter rows (and, in the gradient, three gradient rows) down the a
// axis in registers, so each parameter is read once from DRAM (the chunk halos, two
// columns, are re-read from L2 by the neighbouring chunk's block, which runs at the same
// time: the chunk is the fastest-varying block index).
//
// The value is reduced deterministically in two stages: each block writes its partial sum
// (double) to a buffer, and one small kernel adds the partials in a fixed order and writes
// R. The gradient kernels read dL/dR from device memory. Per-node coefficients are computed
// from `borders` in double by every block into shared memory.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>

#include "checks.h"

namespace lmkan {
namespace {

constexpr int kThreads = 128;        // threads per block of the main kernels (functions m)
constexpr int kFinishThreads = 256;  // threads of the final reduction kernel
constexpr int kMaxNodes = 4000;      // S <= kMaxNodes: 3 * S floats + 256 B of shared memory < 48 KiB

// Column-chunk widths (registers hold 3 rows of W + 2 or W + 4 values). For the usual
// num_grids (up to ~30) these give two chunks per function in 2D.
constexpr int kW2dValue = 16;  // inner columns per thread, 2D value
constexpr int kW2dGrad = 14;   // gradient columns per thread, 2D gradient
constexpr int kW1d = 16;       // rows per thread, 1D value and gradient
// 2D gradient: at most 128 registers, so 4 blocks (16 warps) fit on an SM and the
// 256x256, G=26 case (2 chunks x 256 blocks) runs in one wave on 132 SMs.
constexpr int kGradBlocksPerSM = 4;

// Per-node coefficients of the second differences, for the inner nodes k = 1..S-2:
//   f''(k) = kp[k] * (P[k+1] - P[k]) - km[k] * (P[k] - P[k-1]),
//   kp = 2 / (hs * hp), km = 2 / (hs * hm), ihs = 1 / hs, hs = hm + hp,
// as SPEC.md writes 2/(hm+hp) * ((P[k+1]-P[k])/hp - (P[k]-P[k-1])/hm). Computed in double
// from the float32 borders, rounded once. Entries 0 and S-1 are zero (no second difference
// at the end nodes). coef: shared memory [3 * S] = km[S], kp[S], ihs[S].
__device__ void fill_coefficients(const float* __restrict__ borders, int S, float* coef) {
  for (int k = threadIdx.x; k < S; k += blockDim.x) {
    float km = 0.f, kp = 0.f, ihs = 0.f;
    if (k >= 1 && k <= S - 2) {
      const double hm = static_cast<double>(borders[k]) - static_cast<double>(borders[k - 1]);
      const double hp = static_cast<double>(borders[k + 1]) - static_cast<double>(borders[k]);
      const double hs = hm + hp;
      km = static_cast<float>(2.0 / (hs * hm));
      kp = static_cast<float>(2.0 / (hs * hp));
      ihs = static_cast<float>(1.0 / hs);
    }
    coef[k] = km;
    coef[S + k] = kp;
    coef[2 * S + k] = ihs;
  }
}

// Sum of v over the block, valid in thread 0. red: shared [32]. Fixed order: deterministic.
__device__ double block_sum(double v, double* red) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  const int num_warps = (blockDim.x + 31) >> 5;
  if (warp == 0) {
    v = lane < num_warps ? red[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Loads n <= N values of one row, columns col0 .. col0+n-1, from a column-strided table;
// columns outside [0, S) and slots >= n read as 0.
// row: pointer to column 0 of the row at function m; M: column stride.
template <int N>
__device__ __forceinline__ void load_row(float (&dst)[N], const float* __restrict__ row, int col0,
                                         int n, int S, int64_t M) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const int col = col0 + j;
    dst[j] = (j < n && col >= 0 && col < S) ? __ldg(row + static_cast<int64_t>(col) * M) : 0.f;
  }
}

// Loads N values of one row, columns clamp(col0 + j, 0, S-1): no masks, every address in
// range; the values of clamped slots are read but never used by the caller.
// row: pointer to column 0 of the row at function m; M: column stride.
template <int N>
__device__ __forceinline__ void load_row_clamped(float (&dst)[N], const float* __restrict__ row,
                                                 int col0, int S, int64_t M) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const int col = min(max(col0 + j, 0), S - 1);
    dst[j] = __ldg(row + static_cast<int64_t>(col) * M);
  }
}

// R partial sums, 2D. One block: kThreads functions x one chunk of inner columns.
// params: [S, S, M]; borders: [S]; partials: [gridDim.x] (double).
// Block b covers chunk (b % num_chunks) of functions (b / num_chunks) * kThreads + tid.
template <int W>
__global__ void __launch_bounds__(kThreads) hessian2d_value_kernel(
    const float* __restrict__ params, const float* __restrict__ borders,
    double* __restrict__ partials, int S, int64_t M, int num_chunks, int chunk_width) {
  extern __shared__ float coef[];  // [3 * S]
  __shared__ double red[32];
  fill_coefficients(borders, S, coef);
  __syncthreads();
  const float* km = coef;
  const float* kp = coef + S;
  const float* ihs = coef + 2 * S;

  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int64_t m = static_cast<int64_t>(blockIdx.x / num_chunks) * kThreads + threadIdx.x;
  const int b0 = 1 + chunk * chunk_width;      // first inner column of the chunk
  const int nb = min(chunk_width, S - 1 - b0);  // inner columns b0 .. b0+nb-1 (<= S-2)

  double total = 0.0;
  if (m < M) {
    const int64_t row_stride = static_cast<int64_t>(S) * M;
    const float* row0 = params + m;
    // Window of parameter rows a-1, a, a+1 over columns b0-1 .. b0+nb (index j <-> b0-1+j).
    float pm[W + 2], p0[W + 2], pp[W + 2];
    load_row(pm, row0, b0 - 1, nb + 2, S, M);
    load_row(p0, row0 + row_stride, b0 - 1, nb + 2, S, M);
    for (int a = 1; a <= S - 2; ++a) {
      load_row(pp, row0 + (a + 1) * row_stride, b0 - 1, nb + 2, S, M);
      const float rkm = km[a], rkp = kp[a], rihs = ihs[a];
      float acc = 0.f;  // this row's terms (at most W): float; rows add up in double
#pragma unroll
      for (int j = 1; j <= W; ++j) {
        if (j <= nb) {
          const int b = b0 - 1 + j;
          const float fxx = rkp * (pp[j] - p0[j]) - rkm * (p0[j] - pm[j]);
          const float fyy = kp[b] * (p0[j + 1] - p0[j]) - km[b] * (p0[j] - p0[j - 1]);
          const float fxy = ((pp[j + 1] - pp[j - 1]) - (pm[j + 1] - pm[j - 1])) * (rihs * ihs[b]);
          acc = fmaf(fxx, fxx, acc);
          acc = fmaf(fyy, fyy, acc);
          acc = fmaf(2.f * fxy, fxy, acc);
        }
      }
      total += static_cast<double>(acc);
#pragma unroll
      for (int j = 0; j < W + 2; ++j) {
        pm[j] = p0[j];
        p0[j] = pp[j];
      }
    }
  }
  total = block_sum(total, red);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// dR/dP * grad_r, 2D. One block: kThreads functions x one chunk of gradient columns
// (all S columns are partitioned). grad_r: [1]; params, grad: [S, S, M]; borders: [S].
// f at inner node (a, b) adds to the gradient at (a+-1, b+-1); the thread computes f for
// its columns b0-1 .. b0+nb (parameter columns b0-2 .. b0+nb+1) and keeps only the
// contributions to its own columns, accumulating three gradient rows a-1, a, a+1.
template <int W>
__global__ void __launch_bounds__(kThreads, kGradBlocksPerSM) hessian2d_grad_kernel(
    const float* __restrict__ grad_r, const float* __restrict__ params,
    const float* __restrict__ borders, float* __restrict__ grad, int S, int64_t M,
    int num_chunks, int chunk_width) {
  extern __shared__ float coef[];  // [3 * S]
  fill_coefficients(borders, S, coef);
  __syncthreads();
  const float* km = coef;
  const float* kp = coef + S;
  const float* ihs = coef + 2 * S;

  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int64_t m = static_cast<int64_t>(blockIdx.x / num_chunks) * kThreads + threadIdx.x;
  if (m >= M) return;  // no block-wide synchronisation below
  const int b0 = chunk * chunk_width;      // first gradient column of the chunk
  const int nb = min(chunk_width, S - b0);  // columns b0 .. b0+nb-1
  // d/dP of grad_r * mean_(a,b) (fxx^2 + 2 fxy^2 + fyy^2): f^2 -> scale * f * df/dP.
  const float inner = static_cast<float>(S - 2);
  const float scale = __ldg(grad_r) * (2.f / (inner * inner));

  const int64_t row_stride = static_cast<int64_t>(S) * M;
  const float* row0 = params + m;
  float* grow0 = grad + m;
  // Parameter rows a-1, a, a+1 over columns b0-2 .. b0+nb+1 (index j <-> b0-2+j);
  // gradient rows a-1, a, a+1 over columns b0 .. b0+nb-1 (index j <-> b0+j).
  float pm[W + 4], p0[W + 4], pp[W + 4];
  float gm[W], g0[W], gp[W];
  load_row_clamped(pm, row0, b0 - 2, S, M);
  load_row_clamped(p0, row0 + row_stride, b0 - 2, S, M);
#pragma unroll
  for (int j = 0; j < W; ++j) gm[j] = g0[j] = 0.f;

  for (int a = 1; a <= S - 2; ++a) {
    load_row_clamped(pp, row0 + (a + 1) * row_stride, b0 - 2, S, M);
    const float rkm = km[a], rkp = kp[a], rihs = ihs[a];
#pragma unroll
    for (int j = 0; j < W; ++j) gp[j] = 0.f;
    // f at column b = b0-1+i (i = 0 .. nb+1), centre parameter index i+1.
#pragma unroll
    for (int i = 0; i <= W + 1; ++i) {
      const int b = b0 - 1 + i;
      // f beyond the chunk (i > nb + 1) only reaches unstored accumulators: no test.
      if (b >= 1 && b <= S - 2) {
        const int c = i + 1;
        const float ckm = km[b], ckp = kp[b], cxy = rihs * ihs[b];
        const float fxx = rkp * (pp[c] - p0[c]) - rkm * (p0[c] - pm[c]);
        const float fyy = ckp * (p0[c + 1] - p0[c]) - ckm * (p0[c] - p0[c - 1]);
        const float dxy = (pp[c + 1] - pp[c - 1]) - (pm[c + 1] - pm[c - 1]);
        const float ex = scale * fxx;
        const float ey = scale * fyy;
        const float exy = (2.f * scale) * dxy * (cxy * cxy);
        // Column b is gradient index i-1; b-1 is i-2; b+1 is i.
        if (i - 1 >= 0 && i - 1 < W) {
          gm[i - 1] = fmaf(ex, rkm, gm[i - 1]);
          g0[i - 1] -= fmaf(ex, rkm + rkp, ey * (ckm + ckp));
          gp[i - 1] = fmaf(ex, rkp, gp[i - 1]);
        }
        if (i - 2 >= 0 && i - 2 < W) {
          g0[i - 2] = fmaf(ey, ckm, g0[i - 2]);
          gm[i - 2] += exy;
          gp[i - 2] -= exy;
        }
        if (i < W) {
          g0[i] = fmaf(ey, ckp, g0[i]);
          gm[i] -= exy;
          gp[i] += exy;
        }
      }
    }
    // Row a-1 has all its contributions (from f rows a-2, a-1, a).
    float* grow = grow0 + (a - 1) * row_stride;
#pragma unroll
    for (int j = 0; j < W; ++j)
      if (j < nb) grow[static_cast<int64_t>(b0 + j) * M] = gm[j];
#pragma unroll
    for (int j = 0; j < W + 4; ++j) {
      pm[j] = p0[j];
      p0[j] = pp[j];
    }
#pragma unroll
    for (int j = 0; j < W; ++j) {
      gm[j] = g0[j];
      g0[j] = gp[j];
    }
  }
  // Rows S-2 and S-1.
#pragma unroll
  for (int j = 0; j < W; ++j) {
    if (j < nb) {
      grow0[(S - 2) * row_stride + static_cast<int64_t>(b0 + j) * M] = gm[j];
      grow0[(S - 1) * row_stride + static_cast<int64_t>(b0 + j) * M] = g0[j];
    }
  }
}

// R partial sums, 1D. One block: kThreads functions x one chunk of inner rows.
// params: [S, M]; borders: [S]; partials: [gridDim.x] (double).
template <int W>
__global__ void __launch_bounds__(kThreads) second_diff1d_value_kernel(
    const float* __restrict__ params, const float* __restrict__ borders,
    double* __restrict__ partials, int S, int64_t M, int num_chunks, int chunk_width) {
  extern __shared__ float coef[];  // [3 * S]
  __shared__ double red[32];
  fill_coefficients(borders, S, coef);
  __syncthreads();
  const float* km = coef;
  const float* kp = coef + S;

  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int64_t m = static_cast<int64_t>(blockIdx.x / num_chunks) * kThreads + threadIdx.x;
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
  const double total = block_sum(static_cast<double>(acc), red);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
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

// out[0] = scale * sum(partials), summed in a fixed order. partials: [n]; out: 0-dim.
__global__ void __launch_bounds__(kFinishThreads) finish_sum_kernel(
    const double* __restrict__ partials, int64_t n, double scale, float* __restrict__ out) {
  __shared__ double red[32];
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += partials[i];
  v = block_sum(v, red);
  if (threadIdx.x == 0) out[0] = static_cast<float>(v * scale);
}

// ---------------------------------------------------------------------------------------
// Host side.

struct Chunks {
  int count;  // chunks per function
  int width;  // columns (rows in 1D) per chunk, the last one may have fewer
};

// Splits n columns into as few chunks of at most max_width as possible, of near-equal width.
Chunks split(int n, int max_width) {
  Chunks c;
  c.count = (n + max_width - 1) / max_width;
  c.width = (n + c.count - 1) / c.count;
  return c;
}

// Checks shared by the four ops; returns S (nodes per axis) and sets M (functions).
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

int64_t num_blocks(int64_t M, int num_chunks) {
  const int64_t blocks = (M + kThreads - 1) / kThreads * num_chunks;
  TORCH_CHECK_VALUE(blocks <= 0x7fffffff, "params has too many functions (N_out * N_in = ", M,
                    ") for one launch");
  return blocks;
}

size_t coef_bytes(int S) { return static_cast<size_t>(3 * S) * sizeof(float); }

// Launches the value kernel `kernel` on chunks of n columns, then the final reduction.
template <typename Kernel>
at::Tensor reduce_value(Kernel kernel, const at::Tensor& params, const at::Tensor& borders, int S,
                        int64_t M, Chunks chunks, double scale) {
  at::Tensor out = at::empty({}, params.options());  // 0-dim R
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = M == 0 ? 0 : num_blocks(M, chunks.count);
  // partials: [blocks] double (at least one element so the final kernel writes R = 0).
  at::Tensor partials = at::empty({std::max<int64_t>(blocks, 1)}, params.options().dtype(at::kDouble));
  if (blocks > 0) {
    kernel<<<static_cast<unsigned>(blocks), kThreads, coef_bytes(S), stream>>>(
        params.data_ptr<float>(), borders.data_ptr<float>(), partials.data_ptr<double>(), S, M,
        chunks.count, chunks.width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  finish_sum_kernel<<<1, kFinishThreads, 0, stream>>>(partials.data_ptr<double>(), blocks, scale,
                                                      out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Launches the gradient kernel `kernel` and returns dR/dparams * grad_r.
template <typename Kernel>
at::Tensor launch_grad(Kernel kernel, const at::Tensor& grad_r, const at::Tensor& params,
                       const at::Tensor& borders, int S, int64_t M, Chunks chunks) {
  at::Tensor grad = at::empty_like(params, at::MemoryFormat::Contiguous);  // params' shape
  if (M == 0) return grad;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = num_blocks(M, chunks.count);
  kernel<<<static_cast<unsigned>(blocks), kThreads, coef_bytes(S), stream>>>(
      grad_r.data_ptr<float>(), params.data_ptr<float>(), borders.data_ptr<float>(),
      grad.data_ptr<float>(), S, M, chunks.count, chunks.width);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

constexpr const char* kShape2d = "[G+1, G+1, N_out, N_in/2]";
constexpr const char* kShape1d = "[G+1, N_out, N_in]";

// params: [S, S, N_out, N_in/2]; borders: [S]. Returns R, 0-dim float32.
at::Tensor hessian2d_cuda(const at::Tensor& params_in, const at::Tensor& borders_in) {
  int64_t M = 0;
  const int S = check_table(params_in, borders_in, 4, kShape2d, &M);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const at::Tensor params = params_in.contiguous();
  const at::Tensor borders = borders_in.contiguous();
  const double inner = static_cast<double>(S - 2);
  return reduce_value(hessian2d_value_kernel<kW2dValue>, params, borders, S, M,
                      split(S - 2, kW2dValue), 1.0 / (inner * inner));
}

// grad_r: 0-dim; params: [S, S, N_out, N_in/2]; borders: [S]. Returns [S, S, N_out, N_in/2].
at::Tensor hessian2d_backward_cuda(const at::Tensor& grad_r_in, const at::Tensor& params_in,
                                   const at::Tensor& borders_in) {
  int64_t M = 0;
  const int S = check_table(params_in, borders_in, 4, kShape2d, &M);
  check_grad_r(grad_r_in, params_in);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const at::Tensor grad_r = grad_r_in.contiguous();
  const at::Tensor params = params_in.contiguous();
  const at::Tensor borders = borders_in.contiguous();
  return launch_grad(hessian2d_grad_kernel<kW2dGrad>, grad_r, params, borders, S, M,
                     split(S, kW2dGrad));
}

// params: [S, N_out, N_in]; borders: [S]. Returns R, 0-dim float32.
at::Tensor second_diff1d_cuda(const at::Tensor& params_in, const at::Tensor& borders_in) {
  int64_t M = 0;
  const int S = check_table(params_in, borders_in, 3, kShape1d, &M);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const at::Tensor params = params_in.contiguous();
  const at::Tensor borders = borders_in.contiguous();
  return reduce_value(second_diff1d_value_kernel<kW1d>, params, borders, S, M,
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
  return launch_grad(second_diff1d_grad_kernel<kW1d>, grad_r, params, borders, S, M,
                     split(S, kW1d));
}

}  // namespace
}  // namespace lmkan

// ---------------------------------------------------------------------------------------
// Autograd, in C++: the regulariser is called once per layer per training step, and its
// kernels take ~0.1 ms, so a Python autograd wrapper (~0.2 ms of host time per
// forward+backward) would cost more than the GPU work. Both directions go through the
// dispatcher (the forward below autograd), so torch.compile and opcheck trace the
// registered fake implementations (lmKAN/ops.py) as they would any op.

namespace lmkan {
namespace {

using RegulariserOp = at::Tensor(const at::Tensor&, const at::Tensor&);
using RegulariserBackwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);

c10::TypedOperatorHandle<RegulariserOp> find_value_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<RegulariserOp>();
}

c10::TypedOperatorHandle<RegulariserBackwardOp> find_backward_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<RegulariserBackwardOp>();
}

// R = op(params, borders), differentiable in params (borders are a fixed grid). The op
// handles are looked up once (function-local statics: the schemas exist by then, being
// declared in this library).
template <const char* kValueName, const char* kBackwardName>
struct RegulariserFunction : public torch::autograd::Function<RegulariserFunction<kValueName, kBackwardName>> {
  // params: [S, S, N_out, N_in/2] or [S, N_out, N_in]; borders: [S]. Returns R, 0-dim.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& params,
                            const at::Tensor& borders) {
    static const auto value_op = find_value_op(kValueName);
    ctx->save_for_backward({params, borders});
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return value_op.call(params, borders);
  }

  // grad_outputs: {dL/dR} (0-dim, materialised by autograd when unused). Returns
  // {dL/dparams, none for borders}.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    static const auto backward_op = find_backward_op(kBackwardName);
    const auto saved = ctx->get_saved_variables();
    return {backward_op.call(grad_outputs[0], saved[0], saved[1]), at::Tensor()};
  }
};

constexpr char kHessian2dName[] = "lmkan::hessian2d";
constexpr char kHessian2dBackwardName[] = "lmkan::hessian2d_backward";
constexpr char kSecondDiff1dName[] = "lmkan::second_diff1d";
constexpr char kSecondDiff1dBackwardName[] = "lmkan::second_diff1d_backward";

at::Tensor hessian2d_autograd(const at::Tensor& params, const at::Tensor& borders) {
  return RegulariserFunction<kHessian2dName, kHessian2dBackwardName>::apply(params, borders);
}

at::Tensor second_diff1d_autograd(const at::Tensor& params, const at::Tensor& borders) {
  return RegulariserFunction<kSecondDiff1dName, kSecondDiff1dBackwardName>::apply(params, borders);
}

}  // namespace
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("hessian2d", &lmkan::hessian2d_cuda);
  m.impl("hessian2d_backward", &lmkan::hessian2d_backward_cuda);
  m.impl("second_diff1d", &lmkan::second_diff1d_cuda);
  m.impl("second_diff1d_backward", &lmkan::second_diff1d_backward_cuda);
}

// Autograd for every backend: a CPU or meta tensor reaches the same Function, and the
// dispatcher then finds (or reports missing) that backend's kernel.
TORCH_LIBRARY_IMPL(lmkan, Autograd, m) {
  m.impl("hessian2d", &lmkan::hessian2d_autograd);
  m.impl("second_diff1d", &lmkan::second_diff1d_autograd);
}
