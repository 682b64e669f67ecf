// LMKAN2DLayer kernels for layers of few outputs (at most kSampleThreadsMaxOutputs): a thread
// per (sample, pair) at a time, the outputs in its registers.
//
// The other kernels spread a tile of 32 or more outputs over a warp's lanes; a layer of one
// output (an energy head, 256 -> 1) leaves 31 of 32 lanes idle there, and each (sample, pair)
// costs a warp's worth of instructions (H200, force step of benchmarks/bench_forces.py at
// B = 65536 and 128 pairs: grad_x alone 0.68 ms, the mixed term 0.62 ms, the cell-sorted
// backward 0.67 ms, the slope dP 0.50 ms). Here a thread computes the cells, reads
// `kOutputs` values at each of the 4 corners, and does its sums for its (sample, pair).
//
// forward_sample_threads_kernel: the forward. A thread owns one sample and sums its outputs
// over the pairs of its block's split, the pairs' slices staged group by group; pair splits
// (small batches) write partial sums that sum_splits adds in a fixed order: deterministic.
// dx_sample_threads_kernel: grad_x (or, with the weights, the mixed second-derivative term of
// lmkan2d_slope_grad_x). Every grad_x entry is written once by one thread: deterministic.
// dp_sample_threads_kernel: grad_params, with grad_x in the same pass (the backward when not
// deterministic), or the slope dP of lmkan2d_slope_grad_params. The block's parameter
// gradients gather in shared memory by float atomics (so not deterministic) and are added to
// dP, zeroed beforehand, by global float atomics once per block (in the parameters' layout
// [cells][N_out][P]: no unpacking pass).
//
// A block owns a group of 2^lg consecutive pairs and a range of samples. The group's table
// slices [pairs][cells][kOutputs] (pack_table(params, kOutputs): float32 holding the values
// rounded to the table dtype, outputs past n_out zero) and accumulators of the same shape are
// in shared memory. Batch-first, threads take (sample, pair) items with the pair varying
// fastest (i & (2^lg - 1)): a sample's features are contiguous, and accumulators of different
// pairs never collide. Batch-last, x rows are read coalesced across the warp instead:
// dx_sample_threads_kernel keeps a sample per thread and walks the pairs, and
// dp_sample_threads_kernel takes runs of 8 consecutive samples of a pair.
//
// Corner reads and atomics land on random banks (each thread its own cell): about 3-4
// wavefronts per scalar access of a warp, against 1 for the lanes-over-outputs kernels; the
// instructions per (sample, pair) are what these kernels save.
//
// This header holds what the forward (sample_threads_forward.cu) and the backward kernels
// (sample_threads_backward.cu) share; its functions sit in an anonymous namespace, so each
// file compiles its own copy.
#pragma once
#include <algorithm>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

// Shared-memory bytes a block's slices take, at most (unless one pair alone needs more):
// 8 blocks of 256 threads per SM on the H100/H200 (227 KB) leave ~28 KB each.
constexpr int64_t kSampleThreadsSmemBudget = 24 * 1024;
struct SampleThreadsArgs {
  // (forward: y (o, b) at o * ys_f + b * ys_b, split z at z * ys_split further; its split's
  // pairs [z * pairs_per_split, ...), staged `group` pairs at a time)
  float* y;
  int64_t ys_f, ys_b, ys_split;
  int pairs_per_split, group;
  const float* x;        // (f, b) at f * xs_f + b * xs_b
  const float* w;        // slope modes: the weights, x's layout; else nullptr
  const float* packed;   // [P, cells, kOutputs], float32 (not read by the slope dP)
  const float* borders;  // [G+1]
  const float* gy;       // (o, b) at o * gs_f + b * gs_b
  float* dx;             // x's layout (not written by the slope dP)
  float* dp;             // dp kernel: float32 [cells, N_out, P], zeroed
  int64_t batch, xs_f, xs_b, gs_f, gs_b;
  int64_t samples_per_block;  // dp kernel: the block's sample range
  int n_out, n_pairs, num_grids;
  int log2_pairs;        // pairs per block = 2^log2_pairs
  bool batch_last;
};

// One corner's kOutputs values (shared memory), in vector loads.
template <int kOutputs>
__device__ __forceinline__ void load_row(const float* row, float (&v)[kOutputs]) {
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
}

// Offset in x of input 2p of sample b (input 2p + 1 is xs_f further). The cells come from
// device.cuh: pair_cell (far inputs at d = 0, as every backward kernel) and, for the slope
// dP, slope_pair_cell.
__device__ __forceinline__ int64_t pair_offset(const SampleThreadsArgs& a, int p, int64_t b) {
  return 2 * int64_t(p) * a.xs_f + b * a.xs_b;
}

// Copies n floats (the group's slices, one contiguous run of the packed table) into shared
// memory; 16-byte copies where kOutputs keeps every run 16-byte aligned.
template <int kOutputs>
__device__ __forceinline__ void stage(float* dst, const float* src, int n) {
  if constexpr (kOutputs % 4 == 0) {
    const float4* src4 = reinterpret_cast<const float4*>(src);
    float4* dst4 = reinterpret_cast<float4*>(dst);
#pragma unroll 4
    for (int i = threadIdx.x; i < n / 4; i += blockDim.x) dst4[i] = __ldg(src4 + i);
  } else {
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = __ldg(src + i);
  }
}

// A call's sizes, read from x [2P, B] or [B, 2P] and params [G+1, G+1, N_out, P] by every
// launcher, which the plan sent here: a shape that sample_threads_serve refuses (for the
// launcher's shared-memory `slices`) is an internal error.
struct SampleThreadsShape {
  int num_grids;
  int64_t n_out;
  int n_pairs;
  int64_t batch;
};
SampleThreadsShape sample_threads_shape(const at::Tensor& x, const at::Tensor& params,
                                        bool batch_last, const DeviceLimits& lim, int slices,
                                        const char* launcher) {
  const SampleThreadsShape s{static_cast<int>(params.size(0)) - 1, params.size(2),
                             static_cast<int>(params.size(3)), batch_last ? x.size(1) : x.size(0)};
  TORCH_CHECK(sample_threads_serve(s.num_grids, s.n_out, lim, slices), launcher,
              ": not served (internal error)");
  return s;
}

// Arguments shared by the launchers (x, gy contiguous in the call's layout).
SampleThreadsArgs make_args(const at::Tensor& x, const at::Tensor& borders, const at::Tensor& gy,
                            const at::Tensor& weights, const SampleThreadsShape& shape,
                            bool batch_last) {
  const auto [num_grids, n_out, n_pairs, batch] = shape;
  SampleThreadsArgs a{};
  a.x = x.data_ptr<float>();
  a.w = weights.defined() ? weights.data_ptr<float>() : nullptr;
  a.borders = borders.data_ptr<float>();
  a.gy = gy.defined() ? gy.data_ptr<float>() : nullptr;
  a.batch = batch;
  a.xs_f = batch_last ? batch : 1;
  a.xs_b = batch_last ? 1 : 2 * int64_t(n_pairs);
  a.gs_f = batch_last ? batch : 1;
  a.gs_b = batch_last ? 1 : n_out;
  a.n_out = static_cast<int>(n_out);
  a.n_pairs = n_pairs;
  a.num_grids = num_grids;
  a.batch_last = batch_last;
  return a;
}

}  // namespace
}  // namespace lmkan2d
}  // namespace lmkan
