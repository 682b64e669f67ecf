// grad_x of LMKAN2DLayer layers with few outputs (at most kSampleThreadsMaxOutputs), and the
// mixed-term variant of the second derivatives (lmkan2d_slope_grad_x).
//
// The other grad_x kernels spread a tile of 32 or more outputs over a warp's lanes; a layer
// of one output (an energy head, 256 -> 1) leaves 31 of 32 lanes idle there, and each
// (sample, pair) costs a warp's worth of instructions (H200, force step of
// benchmarks/bench_forces.py: 0.68 ms for grad_x alone, 0.62 ms for the mixed term, at
// B = 65536 and 128 pairs). Here a thread takes one (sample, pair) at a time with the outputs
// in its registers: cells, 4 corner reads of `kOutputs` values, the sums over the outputs,
// two stores. Every grad_x entry is written once by one thread: deterministic, no atomics.
//
// A block owns kSampleThreadsBlock samples and a group of 2^lg consecutive pairs, whose table
// slices [pairs][cells][kOutputs] (pack_table(params, kOutputs): float32 holding the values
// rounded to the table dtype, outputs past n_out zero) are staged in shared memory once.
// Batch-last: thread t keeps sample t and walks the pairs (x rows read coalesced across the
// warp). Batch-first: consecutive threads take consecutive pairs of one sample (a sample's
// features are contiguous), so the pair index is i & (2^lg - 1).
//
// Corner reads land on random banks (each thread its own cell): about 3-4 wavefronts per
// scalar read of a warp, against 1 for the lanes-over-outputs kernels; the work per (sample,
// pair) is what this kernel saves.
#include <algorithm>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/device_limits.h"
#include "common/static_switch.h"
#include "lmkan2d/device.cuh"
#include "lmkan2d/footprints.h"
#include "lmkan2d/layout.h"
#include "lmkan2d/plan.h"

namespace lmkan {
namespace lmkan2d {
namespace {

// Table bytes a block stages, at most (unless one pair alone needs more): 8 blocks of 256
// threads per SM on the H100/H200 (227 KB) leave ~28 KB each.
constexpr int64_t kSampleThreadsSmemBudget = 24 * 1024;

struct SampleThreadsArgs {
  const float* x;        // (f, b) at f * xs_f + b * xs_b
  const float* w;        // kSlopes: the weights, x's layout; else nullptr
  const float* packed;   // [P, cells, kOutputs], float32
  const float* borders;  // [G+1]
  const float* gy;       // (o, b) at o * gs_f + b * gs_b
  float* dx;             // x's layout
  int64_t batch, xs_f, xs_b, gs_f, gs_b;
  int n_out, n_pairs, num_grids;
  int log2_pairs;        // pairs per block = 2^log2_pairs
  bool batch_last;
};

// grad_y of sample b for the kOutputs outputs (0 past n_out).
template <int kOutputs>
__device__ __forceinline__ void load_grad_y(const SampleThreadsArgs& a, int64_t b,
                                            float (&g)[kOutputs]) {
#pragma unroll
  for (int o = 0; o < kOutputs; ++o)
    g[o] = o < a.n_out ? __ldg(a.gy + int64_t(o) * a.gs_f + b * a.gs_b) : 0.f;
}

// sum_o g[o] * row[o] over one corner's kOutputs values (shared memory).
template <int kOutputs>
__device__ __forceinline__ float dot_row(const float* row, const float (&g)[kOutputs]) {
  float v[kOutputs];
  if constexpr (kOutputs == 8) {
    float lo[4], hi[4];
    load_k<4>(row, lo);
    load_k<4>(row + 4, hi);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      v[k] = lo[k];
      v[4 + k] = hi[k];
    }
  } else {
    load_k<kOutputs>(row, v);
  }
  float s = 0.f;
#pragma unroll
  for (int o = 0; o < kOutputs; ++o) s = fmaf(g[o], v[o], s);
  return s;
}

// grad_x of pair p (block-local pl) at sample b: both entries written.
template <int kOutputs, bool kSlopes>
__device__ __forceinline__ void pair_dx(const SampleThreadsArgs& a, const float* table,
                                        const float* s_borders, int p, int pl, int64_t b,
                                        const float (&g)[kOutputs]) {
  const int side = a.num_grids + 1;
  const int64_t f1 = 2 * int64_t(p) * a.xs_f + b * a.xs_b, f2 = f1 + a.xs_f;
  const float v1 = __ldg(a.x + f1), v2 = __ldg(a.x + f2);
  Cell c1 = cdf_cell(v1, s_borders, a.num_grids);
  Cell c2 = cdf_cell(v2, s_borders, a.num_grids);
  if (is_far(v1, c1.d)) c1.d = 0.f;  // as pair_cell: corrected by far_fixup.cu
  if (is_far(v2, c2.d)) c2.d = 0.f;
  const float ih1 = 1.f / (s_borders[c1.index + 1] - s_borders[c1.index]);
  const float ih2 = 1.f / (s_borders[c2.index + 1] - s_borders[c2.index]);
  const float* q = table + (int64_t(pl) * side * side + c1.index * side + c2.index) * kOutputs;
  // sum_o g * corner (i1 + a, i2 + b) for corners 00, 01, 10, 11
  const float gA = dot_row<kOutputs>(q, g);
  const float gB = dot_row<kOutputs>(q + kOutputs, g);
  const float gC = dot_row<kOutputs>(q + side * kOutputs, g);
  const float gD = dot_row<kOutputs>(q + (side + 1) * kOutputs, g);
  if constexpr (kSlopes) {  // sum_o g d2f/dx1dx2, times the other input's weight
    const float m = ((gD - gC) - (gB - gA)) * (ih1 * ih2);
    const float w1 = __ldg(a.w + f1), w2 = __ldg(a.w + f2);
    a.dx[f1] = m * w2;
    a.dx[f2] = m * w1;
  } else {
    a.dx[f1] = ((1.f - c2.d) * (gC - gA) + c2.d * (gD - gB)) * ih1;
    a.dx[f2] = ((1.f - c1.d) * (gB - gA) + c1.d * (gD - gC)) * ih2;
  }
}

template <int kOutputs, bool kSlopes>
__global__ void __launch_bounds__(kSampleThreadsBlock)
    dx_sample_threads_kernel(const SampleThreadsArgs a) {
  extern __shared__ __align__(16) float smem[];
  const int side = a.num_grids + 1;
  const int cells = side * side;
  const int lg = a.log2_pairs, pairs = 1 << lg;
  const int p0 = blockIdx.y * pairs;
  const int np = min(pairs, a.n_pairs - p0);
  float* table = smem;                                          // [pairs][cells][kOutputs]
  float* s_borders = smem + int64_t(pairs) * cells * kOutputs;  // [side]
  // the group's slices are one contiguous run of the packed table
  const float* src = a.packed + int64_t(p0) * cells * kOutputs;
  const int count = np * cells * kOutputs;
  if (kOutputs % 4 == 0) {  // 16-byte aligned runs (cells * kOutputs floats per pair)
    const float4* src4 = reinterpret_cast<const float4*>(src);
    float4* dst4 = reinterpret_cast<float4*>(table);
#pragma unroll 4
    for (int i = threadIdx.x; i < count / 4; i += blockDim.x) dst4[i] = __ldg(src4 + i);
  } else {
#pragma unroll 4
    for (int i = threadIdx.x; i < count; i += blockDim.x) table[i] = __ldg(src + i);
  }
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = a.borders[i];
  __syncthreads();  // the only barrier: threads that run out of work below may return

  const int64_t b_block = int64_t(blockIdx.x) * kSampleThreadsBlock;
  if (a.batch_last) {  // thread t: sample t, every pair of the group
    const int64_t b = b_block + threadIdx.x;
    if (b >= a.batch) return;
    float g[kOutputs];
    load_grad_y<kOutputs>(a, b, g);
#pragma unroll 2
    for (int pl = 0; pl < np; ++pl) pair_dx<kOutputs, kSlopes>(a, table, s_borders, p0 + pl, pl, b, g);
  } else {  // consecutive threads: consecutive pairs of a sample
    const int items = kSampleThreadsBlock << lg;
    for (int i = threadIdx.x; i < items; i += kSampleThreadsBlock) {
      const int pl = i & (pairs - 1);
      const int64_t b = b_block + (i >> lg);
      if (pl >= np || b >= a.batch) continue;
      float g[kOutputs];
      load_grad_y<kOutputs>(a, b, g);
      pair_dx<kOutputs, kSlopes>(a, table, s_borders, p0 + pl, pl, b, g);
    }
  }
}

}  // namespace

at::Tensor dx_by_sample_threads(const at::Tensor& x, const at::Tensor& params,
                                const at::Tensor& borders, const at::Tensor& gy,
                                const at::Tensor& weights, bool batch_last,
                                const DeviceLimits& lim, at::ScalarType table_dtype) {
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int64_t n_out = params.size(2);
  const int n_pairs = static_cast<int>(params.size(3));
  const int64_t batch = batch_last ? x.size(1) : x.size(0);
  TORCH_CHECK(sample_threads_serve(num_grids, n_out, lim),
              "dx_by_sample_threads: not served (internal error)");
  at::Tensor dx = at::empty_like(x);  // every entry written once
  if (batch == 0 || n_pairs == 0) return dx;
  const int width = sample_threads_width(n_out);
  // pairs per block: a power of two, as many as the budget holds (at least one), no more
  // than the layer has; fewer where the grid would leave SMs idle (small batches)
  const int64_t sample_blocks = (batch + kSampleThreadsBlock - 1) / kSampleThreadsBlock;
  int lg = 0;
  while ((1 << lg) < n_pairs &&
         sample_threads_smem_bytes(num_grids, width, 2 << lg) <= kSampleThreadsSmemBudget)
    ++lg;
  const auto pair_blocks = [&](int l) { return (n_pairs + (1 << l) - 1) >> l; };
  while (lg > 0 && sample_blocks * pair_blocks(lg) < 2 * int64_t(lim.num_sms)) --lg;
  TORCH_CHECK(sample_blocks < (int64_t(1) << 31) && pair_blocks(lg) <= 65535,
              "lmkan2d grad_x: batch ", batch, " with ", n_pairs, " pairs is too large a grid");
  const int64_t smem = sample_threads_smem_bytes(num_grids, width, 1 << lg);
  const at::Tensor packed = pack_table(params, width, table_dtype);  // float32, rounded values
  SampleThreadsArgs a{};
  a.x = x.data_ptr<float>();
  a.w = weights.defined() ? weights.data_ptr<float>() : nullptr;
  a.packed = packed.data_ptr<float>();
  a.borders = borders.data_ptr<float>();
  a.gy = gy.data_ptr<float>();
  a.dx = dx.data_ptr<float>();
  a.batch = batch;
  a.xs_f = batch_last ? batch : 1;
  a.xs_b = batch_last ? 1 : 2 * int64_t(n_pairs);
  a.gs_f = batch_last ? batch : 1;
  a.gs_b = batch_last ? 1 : n_out;
  a.n_out = static_cast<int>(n_out);
  a.n_pairs = n_pairs;
  a.num_grids = num_grids;
  a.log2_pairs = lg;
  a.batch_last = batch_last;
  const dim3 grid(static_cast<unsigned>(sample_blocks), static_cast<unsigned>(pair_blocks(lg)));
  switch_value<1, 2, 4, 8>(width, [&](auto width_c) {
    constexpr int kOutputs = decltype(width_c)::value;
    const auto kernel = weights.defined() ? dx_sample_threads_kernel<kOutputs, true>
                                          : dx_sample_threads_kernel<kOutputs, false>;
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<grid, kSampleThreadsBlock, smem, c10::cuda::getCurrentCUDAStream()>>>(a);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

}  // namespace lmkan2d
}  // namespace lmkan
