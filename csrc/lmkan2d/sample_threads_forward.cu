// LMKAN2DLayer forward for layers of few outputs: forward_sample_threads_kernel, a thread per
// sample (sample_threads.cuh has the scheme), and its launcher.
#include "lmkan2d/sample_threads.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

template <int kOutputs>
__global__ void __launch_bounds__(kSampleThreadsBlock)
    forward_sample_threads_kernel(const SampleThreadsArgs a) {
  extern __shared__ __align__(16) float smem[];
  const int side = a.num_grids + 1;
  const int slice = side * side * kOutputs;
  float* table = smem;                                  // [group][cells][kOutputs]
  float* s_borders = smem + int64_t(a.group) * slice;  // [side]
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = a.borders[i];
  const int p_begin = blockIdx.z * a.pairs_per_split;
  const int p_end = min(a.n_pairs, p_begin + a.pairs_per_split);
  const int64_t b = int64_t(blockIdx.x) * kSampleThreadsBlock + threadIdx.x;
  const bool valid = b < a.batch;
  float acc[kOutputs];
#pragma unroll
  for (int o = 0; o < kOutputs; ++o) acc[o] = 0.f;
  for (int g0 = p_begin; g0 < p_end; g0 += a.group) {
    const int np = min(a.group, p_end - g0);
    __syncthreads();  // the previous group's slices are consumed
    stage<kOutputs>(table, a.packed + int64_t(g0) * slice, np * slice);
    __syncthreads();
    if (!valid) continue;
#pragma unroll 2
    for (int pl = 0; pl < np; ++pl) {
      bool far;
      const float4 info = pair_cell(a.x, b, g0 + pl, s_borders, a.num_grids, a.xs_f, a.xs_b,
                                    nullptr, &far);
      const int cell = __float_as_int(info.x);
      const float* q = table + pl * slice + cell * kOutputs;
      const float d1 = info.y, d2 = info.z, e1 = 1.f - d1, e2 = 1.f - d2;
      const float u00 = e1 * e2, u01 = e1 * d2, u10 = d1 * e2, u11 = d1 * d2;
      float c[4][kOutputs];
#pragma unroll
      for (int j = 0; j < 4; ++j) load_row<kOutputs>(q + corner_offset(j, side, kOutputs), c[j]);
#pragma unroll
      for (int o = 0; o < kOutputs; ++o)
        acc[o] = fmaf(u00, c[0][o], fmaf(u01, c[1][o], fmaf(u10, c[2][o], fmaf(u11, c[3][o], acc[o]))));
      if (far) {  // d taken as 0 above: the pair's float64 value less what was added
        const int64_t f1 = pair_offset(a, g0 + pl, b);
        const int i1 = cell / side, i2 = cell - i1 * side;
        const double D1 = exact_d(__ldg(a.x + f1), s_borders, i1);
        const double D2 = exact_d(__ldg(a.x + f1 + a.xs_f), s_borders, i2);
#pragma unroll
        for (int o = 0; o < kOutputs; ++o)
          acc[o] += far_correction(c[0][o], c[1][o], c[2][o], c[3][o], D1, D2, u00, u01, u10, u11);
      }
    }
  }
  if (!valid) return;
  float* y = a.y + blockIdx.z * a.ys_split + b * a.ys_b;
#pragma unroll
  for (int o = 0; o < kOutputs; ++o)
    if (o < a.n_out) y[int64_t(o) * a.ys_f] = acc[o];
}

}  // namespace

at::Tensor forward_by_sample_threads(const at::Tensor& x, const at::Tensor& params,
                                     const at::Tensor& borders, bool batch_last,
                                     const DeviceLimits& lim, at::ScalarType table_dtype) {
  const SampleThreadsShape shape =
      sample_threads_shape(x, params, batch_last, lim, 1, "forward_by_sample_threads");
  const auto [num_grids, n_out, n_pairs, batch] = shape;
  const auto new_y = [&] {
    return batch_last ? at::empty({n_out, batch}, x.options()) : at::empty({batch, n_out}, x.options());
  };
  if (batch == 0) return new_y();
  const int width = sample_threads_width(n_out);
  // pairs staged at a time: as many as the budget holds, at least one
  const int64_t per_pair = sample_threads_smem_bytes(num_grids, width, 1, 1) -
                           sample_threads_smem_bytes(num_grids, width, 0, 1);
  const int group = static_cast<int>(std::clamp<int64_t>(
      (kSampleThreadsSmemBudget - sample_threads_smem_bytes(num_grids, width, 0, 1)) / per_pair,
      1, n_pairs));
  const int64_t smem = sample_threads_smem_bytes(num_grids, width, group, 1);
  const int64_t sample_blocks = (batch + kSampleThreadsBlock - 1) / kSampleThreadsBlock;
  TORCH_CHECK(sample_blocks < (int64_t(1) << 31), "lmkan2d: batch ", batch, " is too large a grid");
  // small batches split the pairs over blockIdx.z (partials summed in a fixed order)
  const PairSplit split = split_pairs(sample_blocks, n_pairs, lim.num_sms, n_pairs);
  // partials go to [splits, N_out, B] (batch-last), summed and, batch-first, transposed after
  at::Tensor out = split.splits > 1 ? at::empty({split.splits, n_out, batch}, x.options()) : new_y();
  const bool store_batch_last = batch_last || split.splits > 1;
  const at::Tensor packed = pack_table(params, width, table_dtype);  // float32, rounded values
  SampleThreadsArgs a = make_args(x, borders, at::Tensor(), at::Tensor(), shape, batch_last);
  a.packed = packed.data_ptr<float>();
  a.y = out.data_ptr<float>();
  a.ys_f = store_batch_last ? batch : 1;
  a.ys_b = store_batch_last ? 1 : n_out;
  a.ys_split = batch * n_out;
  a.pairs_per_split = split.pairs_per_split;
  a.group = group;
  const dim3 grid(static_cast<unsigned>(sample_blocks), 1, static_cast<unsigned>(split.splits));
  switch_value<1, 2, 4, 8>(width, [&](auto width_c) {
    const auto kernel = forward_sample_threads_kernel<decltype(width_c)::value>;
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<grid, kSampleThreadsBlock, smem, c10::cuda::getCurrentCUDAStream()>>>(a);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (split.splits == 1) return out;
  if (!batch_last) return sum_splits_transposed(out);
  at::Tensor y = new_y();
  sum_splits(out, y);
  return y;
}

}  // namespace lmkan2d
}  // namespace lmkan
