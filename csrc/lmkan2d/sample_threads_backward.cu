// LMKAN2DLayer backward for layers of few outputs (sample_threads.cuh has the scheme):
// dx_sample_threads_kernel (grad_x, or the mixed second-derivative term) and
// dp_sample_threads_kernel (grad_params with grad_x, or the slope dP), and their launchers.
#include "lmkan2d/sample_threads.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

// dp kernel, batch-last: consecutive samples of one pair a warp takes (8 floats: a sector)
constexpr int kDpSampleRunLog2 = 3;

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
  load_row<kOutputs>(row, v);
  float s = 0.f;
#pragma unroll
  for (int o = 0; o < kOutputs; ++o) s = fmaf(g[o], v[o], s);
  return s;
}

// grad_x of one (sample, pair) from its cell's 4 corner rows at q (both entries written).
// kSlopes: the mixed second derivative sum_o g d2f/dx1dx2 times the other input's weight.
template <int kOutputs, bool kSlopes>
__device__ __forceinline__ void write_dx(const SampleThreadsArgs& a, const float* q, int side,
                                         int64_t f1, float4 c, float2 inv_h,
                                         const float (&g)[kOutputs]) {
  const int64_t f2 = f1 + a.xs_f;
  // sum_o g * corner (i1 + a, i2 + b) for corners 00, 01, 10, 11
  const float gA = dot_row<kOutputs>(q, g);
  const float gB = dot_row<kOutputs>(q + kOutputs, g);
  const float gC = dot_row<kOutputs>(q + side * kOutputs, g);
  const float gD = dot_row<kOutputs>(q + (side + 1) * kOutputs, g);
  if constexpr (kSlopes) {
    const float m = ((gD - gC) - (gB - gA)) * (inv_h.x * inv_h.y);
    const float w1 = __ldg(a.w + f1), w2 = __ldg(a.w + f2);
    a.dx[f1] = m * w2;
    a.dx[f2] = m * w1;
  } else {
    const float d1 = c.y, d2 = c.z;
    a.dx[f1] = ((1.f - d2) * (gC - gA) + d2 * (gD - gB)) * inv_h.x;
    a.dx[f2] = ((1.f - d1) * (gB - gA) + d1 * (gD - gC)) * inv_h.y;
  }
}

// This block's group of pairs (blockIdx.y): 2^lg pairs from p0, np of them in the layer;
// a pair's slice is `slice` floats ([cells][kOutputs]).
struct PairGroup {
  int side, slice, lg, pairs, p0, np;
};
template <int kOutputs>
__device__ __forceinline__ PairGroup pair_group(const SampleThreadsArgs& a) {
  PairGroup g;
  g.side = a.num_grids + 1;
  g.slice = g.side * g.side * kOutputs;
  g.lg = a.log2_pairs;
  g.pairs = 1 << g.lg;
  g.p0 = blockIdx.y * g.pairs;
  g.np = min(g.pairs, a.n_pairs - g.p0);
  return g;
}

// Pairs per block, as log2: a power of two, as many as the budget holds (at least one) and
// no more than the layer has; fewer where sample_blocks x pair groups would leave SMs idle
// (small batches). slices: 1 (table or accumulator) or 2 (both).
int pairs_log2(int num_grids, int width, int slices, int n_pairs, int64_t sample_blocks,
               const DeviceLimits& lim) {
  int lg = 0;
  while ((1 << lg) < n_pairs &&
         sample_threads_smem_bytes(num_grids, width, 2 << lg, slices) <= kSampleThreadsSmemBudget)
    ++lg;
  while (lg > 0 && sample_blocks * ((n_pairs + (1 << lg) - 1) >> lg) < 2 * int64_t(lim.num_sms))
    --lg;
  return lg;
}

template <int kOutputs, bool kSlopes>
__global__ void __launch_bounds__(kSampleThreadsBlock)
    dx_sample_threads_kernel(const SampleThreadsArgs a) {
  extern __shared__ __align__(16) float smem[];
  const auto [side, slice, lg, pairs, p0, np] = pair_group<kOutputs>(a);
  float* table = smem;                              // [pairs][cells][kOutputs]
  float* s_borders = smem + int64_t(pairs) * slice;  // [side]
  stage<kOutputs>(table, a.packed + int64_t(p0) * slice, np * slice);
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = a.borders[i];
  __syncthreads();  // the only barrier: threads that run out of work below may return

  // grad_x of sample b at the group's pair pl, given b's grad_y row g
  const auto pair_dx = [&](int64_t b, int pl, const float (&g)[kOutputs]) {
    float2 inv_h;
    const float4 c = pair_cell(a.x, b, p0 + pl, s_borders, a.num_grids, a.xs_f, a.xs_b, &inv_h);
    write_dx<kOutputs, kSlopes>(a, table + pl * slice + __float_as_int(c.x) * kOutputs, side,
                                pair_offset(a, p0 + pl, b), c, inv_h, g);
  };
  const int64_t b_block = int64_t(blockIdx.x) * kSampleThreadsBlock;
  if (a.batch_last) {  // thread t: sample t, every pair of the group
    const int64_t b = b_block + threadIdx.x;
    if (b >= a.batch) return;
    float g[kOutputs];
    load_grad_y<kOutputs>(a, b, g);
#pragma unroll 2
    for (int pl = 0; pl < np; ++pl) pair_dx(b, pl, g);
  } else {  // consecutive threads: consecutive pairs of a sample
    const int items = kSampleThreadsBlock << lg;
    for (int i = threadIdx.x; i < items; i += kSampleThreadsBlock) {
      const int pl = i & (pairs - 1);
      const int64_t b = b_block + (i >> lg);
      if (pl >= np || b >= a.batch) continue;
      float g[kOutputs];
      load_grad_y<kOutputs>(a, b, g);
      pair_dx(b, pl, g);
    }
  }
}

// kSlopes = false: grad_params and grad_x of the backward; true: the slope dP (no table, no
// grad_x; the corner weights of w . grad f, slope_weights in device.cuh).
template <int kOutputs, bool kSlopes>
__global__ void __launch_bounds__(kSampleThreadsBlock)
    dp_sample_threads_kernel(const SampleThreadsArgs a) {
  extern __shared__ __align__(16) float smem[];
  const auto [side, slice, lg, pairs, p0, np] = pair_group<kOutputs>(a);
  float* acc = smem;                                                // [pairs][cells][kOutputs]
  float* table = acc + int64_t(pairs) * slice;                      // !kSlopes: the same shape
  float* s_borders = table + (kSlopes ? 0 : int64_t(pairs) * slice);  // [side]
  for (int i = threadIdx.x; i < np * slice; i += blockDim.x) acc[i] = 0.f;
  if constexpr (!kSlopes) stage<kOutputs>(table, a.packed + int64_t(p0) * slice, np * slice);
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = a.borders[i];
  __syncthreads();

  const int64_t b_begin = int64_t(blockIdx.x) * a.samples_per_block;
  const int64_t b_end = min(a.batch, b_begin + a.samples_per_block);
  // Item i -> (sample, pair). Batch-first: the pair varies fastest (a sample's features are
  // contiguous). Batch-last: runs of kDpSampleRun consecutive samples of one pair, then the
  // next pair: a warp reads each x row in whole 32-byte sectors (pair fastest read one
  // sector per thread: the 256 -> 1 head's backward took 0.355 ms batch-last against 0.230
  // batch-first, H200) and spreads its atomics over 32 / kDpSampleRun pairs' accumulators.
  const int run_lg = a.batch_last ? kDpSampleRunLog2 : 0;
  const int64_t runs = (b_end - b_begin + (1 << run_lg) - 1) >> run_lg;
  const int64_t items = (runs << lg) << run_lg;
  for (int64_t i = threadIdx.x; i < items; i += kSampleThreadsBlock) {
    const int pl = static_cast<int>((i >> run_lg) & (pairs - 1));
    const int64_t b = b_begin + (((i >> (run_lg + lg)) << run_lg) | (i & ((1 << run_lg) - 1)));
    if (pl >= np || b >= b_end) continue;
    float g[kOutputs];
    load_grad_y<kOutputs>(a, b, g);
    float wt[4];  // the corner weights, corners 00, 01, 10, 11
    int cell;
    if constexpr (kSlopes) {  // (index, w01, w10, w11), as the other slope dP kernels
      const float4 c = slope_pair_cell(a.x, a.w, b, p0 + pl, s_borders, a.num_grids, a.xs_f,
                                       a.xs_b);
      cell = __float_as_int(c.x);
      wt[0] = -(c.y + c.z + c.w);
      wt[1] = c.y;
      wt[2] = c.z;
      wt[3] = c.w;
    } else {
      float2 inv_h;
      const float4 c = pair_cell(a.x, b, p0 + pl, s_borders, a.num_grids, a.xs_f, a.xs_b, &inv_h);
      cell = __float_as_int(c.x);
      const float d1 = c.y, d2 = c.z, e1 = 1.f - d1;
      wt[0] = e1 - e1 * d2;
      wt[1] = e1 * d2;
      wt[2] = d1 - d1 * d2;
      wt[3] = d1 * d2;
      write_dx<kOutputs, false>(a, table + pl * slice + cell * kOutputs, side,
                                pair_offset(a, p0 + pl, b), c, inv_h, g);
    }
    float* q = acc + pl * slice + cell * kOutputs;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float* row = q + corner_offset(j, side, kOutputs);
#pragma unroll
      for (int o = 0; o < kOutputs; ++o)
        if (o < a.n_out) atomicAdd(row + o, g[o] * wt[j]);
    }
  }
  __syncthreads();
  // flush: acc [pl][cell][o] -> dP [cell][o][p0 + pl], pairs fastest across the threads (one
  // coalesced run of pairs per (cell, output)); cells no sample of the block reached are 0
  const int entries = slice << lg;
  for (int i = threadIdx.x; i < entries; i += blockDim.x) {
    const int pl = i & (pairs - 1), co = i >> lg;  // co = cell * kOutputs + o
    const int o = co % kOutputs;
    if (pl >= np || o >= a.n_out) continue;
    const float v = acc[pl * slice + co];
    if (v != 0.f)
      atomicAdd(a.dp + (int64_t(co / kOutputs) * a.n_out + o) * a.n_pairs + p0 + pl, v);
  }
}

}  // namespace

at::Tensor dx_by_sample_threads(const at::Tensor& x, const at::Tensor& params,
                                const at::Tensor& borders, const at::Tensor& gy,
                                const at::Tensor& weights, bool batch_last,
                                const DeviceLimits& lim, at::ScalarType table_dtype) {
  const SampleThreadsShape shape =
      sample_threads_shape(x, params, batch_last, lim, 1, "dx_by_sample_threads");
  const auto [num_grids, n_out, n_pairs, batch] = shape;
  at::Tensor dx = at::empty_like(x);  // every entry written once
  if (batch == 0 || n_pairs == 0) return dx;
  const int width = sample_threads_width(n_out);
  const int64_t sample_blocks = (batch + kSampleThreadsBlock - 1) / kSampleThreadsBlock;
  const int lg = pairs_log2(num_grids, width, 1, n_pairs, sample_blocks, lim);
  const int64_t pair_blocks = (n_pairs + (1 << lg) - 1) >> lg;
  TORCH_CHECK(sample_blocks < (int64_t(1) << 31) && pair_blocks <= 65535,
              "lmkan2d grad_x: batch ", batch, " with ", n_pairs, " pairs is too large a grid");
  const int64_t smem = sample_threads_smem_bytes(num_grids, width, 1 << lg, 1);
  const at::Tensor packed = pack_table(params, width, table_dtype);  // float32, rounded values
  SampleThreadsArgs a = make_args(x, borders, gy, weights, shape, batch_last);
  a.packed = packed.data_ptr<float>();
  a.dx = dx.data_ptr<float>();
  a.log2_pairs = lg;
  const dim3 grid(static_cast<unsigned>(sample_blocks), static_cast<unsigned>(pair_blocks));
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

std::tuple<at::Tensor, at::Tensor> dp_by_sample_threads(
    const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
    const at::Tensor& gy, const at::Tensor& weights, bool batch_last, const DeviceLimits& lim,
    at::ScalarType table_dtype) {
  const bool slopes = weights.defined();
  const int slices = slopes ? 1 : 2;
  const SampleThreadsShape shape =
      sample_threads_shape(x, params, batch_last, lim, slices, "dp_by_sample_threads");
  const auto [num_grids, n_out, n_pairs, batch] = shape;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int width = sample_threads_width(n_out);
  // dP (float32, params' shape), zeroed by the pack launch where there is one (no memset:
  // host cost, issue 16)
  at::Tensor dp;
  const at::Tensor packed = slopes ? at::Tensor()
                                   : pack_table(params, width, table_dtype, at::kFloat, &dp,
                                                ZeroLike::kParams);
  if (slopes) {
    dp = at::empty(params.sizes(), x.options());
    C10_CUDA_CHECK(cudaMemsetAsync(dp.data_ptr<float>(), 0, dp.numel() * sizeof(float), stream));
  }
  at::Tensor dx = slopes ? at::Tensor() : at::empty_like(x);  // every entry written once
  if (batch == 0 || n_pairs == 0) return {dx, dp};
  // samples per block: a range with enough blocks for ~4 per SM, at least 256 samples each
  const int64_t most_blocks = (batch + kSampleThreadsBlock - 1) / kSampleThreadsBlock;
  const int lg = pairs_log2(num_grids, width, slices, n_pairs, most_blocks, lim);
  const int64_t pair_blocks = (n_pairs + (1 << lg) - 1) >> lg;
  const int64_t want = (4 * int64_t(lim.num_sms) + pair_blocks - 1) / pair_blocks;
  const int64_t chunks = std::clamp<int64_t>(want, 1, most_blocks);
  const int64_t per_block = (batch + chunks - 1) / chunks;
  const int64_t sample_blocks = (batch + per_block - 1) / per_block;
  TORCH_CHECK(pair_blocks <= 65535, "lmkan2d grad_params: ", n_pairs, " pairs is too large a grid");
  const int64_t smem = sample_threads_smem_bytes(num_grids, width, 1 << lg, slices);
  SampleThreadsArgs a = make_args(x, borders, gy, weights, shape, batch_last);
  a.packed = slopes ? nullptr : packed.data_ptr<float>();
  a.dx = slopes ? nullptr : dx.data_ptr<float>();
  a.dp = dp.data_ptr<float>();
  a.samples_per_block = per_block;
  a.log2_pairs = lg;
  const dim3 grid(static_cast<unsigned>(sample_blocks), static_cast<unsigned>(pair_blocks));
  switch_value<1, 2, 4, 8>(width, [&](auto width_c) {
    constexpr int kOutputs = decltype(width_c)::value;
    const auto kernel = slopes ? dp_sample_threads_kernel<kOutputs, true>
                               : dp_sample_threads_kernel<kOutputs, false>;
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<grid, kSampleThreadsBlock, smem, stream>>>(a);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dx, dp};
}

}  // namespace lmkan2d
}  // namespace lmkan
