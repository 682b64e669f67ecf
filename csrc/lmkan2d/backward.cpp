// LMKAN2DLayer backward: grad_x (dx) and grad_params (dP).
//
// What runs (backward_cuda runs what plan_backward, plan.h, chooses). Images [N, N_in, L] (a
// 1x1 convolution's, common/images.h) are read and written in place by the sorted backward
// (backward_by_runs and far_fixup); every other plan runs on batch-last copies.
// - Layers of at most 8 outputs, not deterministic: dp_by_sample_threads
//   (sample_threads_backward.cu), grad_x and dP in one pass, a thread per (sample, pair).
// - Not deterministic (both modes): backward_by_runs (backward_sorted.cpp), grad_x and dP in one
//   pass over cell-sorted chunks of the batch, except past its cell histogram's num_grids or
//   for a narrow output whose padded grad_y copy would be large; those run the
//   kernels below, with float atomics where they are faster.
// - Deterministic, or past the sorted backward (run_separate_kernels):
//   - dx: for layers of at most 8 outputs a thread per (sample, pair)
//     (sample_threads_backward.cu); else the forward kernel's scheme (dx_by_output_rows,
//     output_lanes.cu); dx_kernel (grad_x.cu) only where deterministic mode has several
//     output tiles to add in a fixed order.
//   - dP (grad_params.cu): dp_sorted_kernel (cell-sorted chunks) when its accumulator fits in shared
//     memory; dp_kernel otherwise (per-warp accumulator, in shared memory or, past that, in
//     a global workspace).
//
// Lane layout (all kernels): the 32 lanes of a warp take W = 8 * TILE CONSECUTIVE outputs
// of one output tile, K = TILE / 4 adjacent outputs per lane, and all lanes work on the same
// (sample, pair) at a time. With the table packed as [n_tiles, P, cells, W], a corner of a
// cell is one contiguous W-float row, so each corner access of a warp is K conflict-free
// 128-byte wavefronts, and the sample's cell (index, d1, d2) is a warp-uniform broadcast.
//
// dx_kernel: a block walks every output tile for warps x SW samples (SW = 16, 32 at tile 4);
// per tile a lane keeps grad_y of its warp's SW samples x K outputs in registers. It loops
// over the input pairs, staging each pair's table slice [cells][W] and the cells of its
// samples in shared memory. Per pair a lane forms its partial dy/dx1, dy/dx2 over its K
// outputs for 16 samples at a time (32 values), one transpose-reduce over the warp leaves
// lane l with the full sum of value l, and the thread that owns a dx entry adds each tile's
// sum to it (no atomics, no workspace).
//
// dp_kernel (no shared-memory atomics): a warp owns one (output tile, pair) and a private
// accumulator [cells][W] in which each lane owns its K columns, so the read-modify-write of
// the 4 corners needs no atomics and has no races. A block (warps = consecutive pairs of one
// output tile) walks a batch range in chunks: grad_y [chunk][W] is staged once per block,
// each warp stages its pair's cells. The accumulator is flushed once, in the packed layout
// [split, n_tiles, P, cells, W]: float atomics (REDG) into one zeroed copy when the batch is
// split over blocks, plain stores when it is not or when deterministic (one copy per split,
// summed in fixed order afterwards), then unpacked to [G+1, G+1, N_out, P].
//
// No num_grids ceiling: when the table slice (dx) or the accumulator (dP) does not fit in
// shared memory, the same kernels read the table from global memory (L1/L2) and accumulate
// in a private region of a global workspace (plain loads and stores, one warp per region).
#include <algorithm>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/env_knobs.h"
#include "common/image_rows.h"
#include "common/images.h"
#include "lmkan2d/layout.h"
#include "lmkan2d/plan.h"

namespace lmkan {
namespace lmkan2d {
namespace {

// The sorted backward's chunk of grad_y rows (footprints.h), or LMKAN_RUN_CHUNK_MB in both
// modes where set (read once per process: a knob for measurements, tools/ and benchmarks/).
int64_t run_chunk_bytes(bool fast_mode) {
  static const int64_t override_mb = env_int("LMKAN_RUN_CHUNK_MB", 1, 4096, 0, "number of MiB");
  if (override_mb > 0) return override_mb << 20;
  return fast_mode ? kRunChunkBytesFast : kRunChunkBytesNormal;
}

// The separate grad_x and grad_params kernels, as the plan chose them.
std::tuple<at::Tensor, at::Tensor> run_separate_kernels(
    const BackwardPlan& plan, int tile, const at::Tensor& x, const at::Tensor& params,
    const at::Tensor& borders, const at::Tensor& gy, int64_t batch, int n_out, int n_pairs,
    int num_grids, int block, bool batch_last, bool fast, bool deterministic,
    const DeviceLimits& lim, at::ScalarType table) {
  const int64_t in_dim = 2 * int64_t(n_pairs);
  const int64_t xs_f = batch_last ? batch : 1, xs_b = batch_last ? 1 : in_dim;
  const int64_t gs_f = batch_last ? batch : 1, gs_b = batch_last ? 1 : n_out;
  at::Tensor dx;
  switch (plan.grad_x) {
    case GradXKernel::kOutputRows:
      dx = dx_by_output_rows(x, params, borders, gy, batch_last, tile, block, deterministic, table);
      break;
    case GradXKernel::kSampleThreads:
      dx = dx_by_sample_threads(x, params, borders, gy, at::Tensor(), batch_last, lim, table);
      break;
    default:
      dx = dx_by_sample_tiles(x, params, borders, gy, tile, batch, n_out, n_pairs, num_grids,
                              block, lim, xs_f, xs_b, gs_f, gs_b, table);
  }
  if (plan.grad_params == GradParamsKernel::kNone) return {dx, at::Tensor()};
  const at::Tensor dp =
      plan.grad_params == GradParamsKernel::kSortedChunks
          ? dp_by_sorted_chunks(x, borders, gy, tile, batch, n_out, n_pairs, num_grids, block,
                                fast, batch_last, lim, xs_f, xs_b)
          : dp_by_warp_accumulators(x, borders, gy, tile, batch, n_out, n_pairs, num_grids,
                                    block, fast, batch_last, deterministic, lim, xs_f, xs_b,
                                    gs_f, gs_b);
  return {dx, dp};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& gy_in, const at::Tensor& x_in,
                                                 const at::Tensor& params_in,
                                                 const at::Tensor& borders_in, bool batch_last,
                                                 int64_t tile_size, int64_t block_size,
                                                 bool fast_mode, bool deterministic,
                                                 std::optional<at::ScalarType> table_dtype,
                                                 bool want_grad_params) {
  // grad_y: [N_out, B] (batch_last) or [B, N_out]; x: [N_in, B] or [B, N_in]; or images
  // x [N, N_in, L], grad_y [N, N_out, L] (batch_last, common/images.h);
  // params: [G+1, G+1, N_out, N_in/2]; borders: [G+1]. Returns (grad_x like x, grad_params).
  check_common(x_in, params_in, borders_in, batch_last, tile_size, block_size, "lmkan2d_backward",
               /*images=*/true);
  const at::ScalarType table = resolve_table_dtype(table_dtype, params_in, "lmkan2d_backward");
  const int64_t n_out = params_in.size(2);
  const bool images = x_in.dim() == 3;
  const int64_t batch =
      images ? x_in.size(0) * x_in.size(2) : batch_last ? x_in.size(1) : x_in.size(0);
  check_grad_y(gy_in, x_in, n_out, batch, batch_last, "lmkan2d_backward", /*sixteen_bit=*/true);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), params = params_in.contiguous(),
                   borders = borders_in.contiguous();
  // grad_params=False: an empty second output, and no grad_params kernel runs
  const auto no_grad_params = [&] { return at::empty({0}, params.options()); };
  if (batch == 0)
    return {at::zeros_like(x), want_grad_params ? at::zeros_like(params) : no_grad_params()};
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int n_pairs = static_cast<int>(params.size(3));
  const DeviceLimits lim = device_limits(x.device().index());
  const int block = static_cast<int>(block_size);
  const int n = static_cast<int>(n_out);
  const BackwardPlan plan =
      plan_backward({num_grids, n_out, batch, 2 * int64_t(n_pairs), batch_last},
                    static_cast<int>(tile_size), block, deterministic, lim, want_grad_params);
  // images that the chosen kernels cannot read in place (the branch below)
  const bool images_via_copies =
      images && (plan.grad_x != GradXKernel::kRuns || batch > kMaxImageSamples);
  // A 16-bit grad_y (a 16-bit y's gradient, as under autocast) keeps its dtype where the
  // sorted backward reads it (as rows: half the bytes of its L2 traffic); every other kernel
  // reads a float32 copy. Its values are exact in float32 either way.
  const bool sorted_rows = plan.grad_params != GradParamsKernel::kSampleThreads &&
                           plan.grad_x == GradXKernel::kRuns && !images_via_copies;
  const at::Tensor gy = gy_in.scalar_type() == at::kFloat || sorted_rows
                            ? gy_in.contiguous()
                            : gy_in.to(at::kFloat).contiguous();
  if (images_via_copies) {
    // Only the sorted backward reads images in place (backward_runs.cu, far_fixup.cu; its
    // grad_y is transposed into rows as a plain one is); the other kernels index samples with
    // one stride and run on batch-last copies [N_in, N L], grad_x copied back into images.
    auto [dx, dp] = backward_cuda(images_as_rows(gy), images_as_rows(x), params, borders, true,
                                  tile_size, block_size, fast_mode, deterministic, table_dtype,
                                  want_grad_params);
    return {rows_as_images(dx, x.size(0), x.size(2)), dp};
  }
  // cell-sorted chunks in both modes; fast mode takes 3x longer chunks (longer runs per
  // cell, a 3x larger sorted buffer)
  at::Tensor far_flags;  // the cell sort's (backward_by_runs)
  auto [dx, dp] =
      plan.grad_params == GradParamsKernel::kSampleThreads
          ? dp_by_sample_threads(x, params, borders, gy, at::Tensor(), batch_last, lim, table)
      : plan.grad_x == GradXKernel::kRuns
          ? backward_by_runs(x, params, borders, gy, batch_last, static_cast<int>(tile_size),
                             block, run_chunk_bytes(fast_mode), table, &far_flags)
          : run_separate_kernels(plan, static_cast<int>(tile_size), x, params, borders, gy,
                                 batch, n, n_pairs, num_grids, block, batch_last, fast_mode,
                                 deterministic, lim, table);
  if (!want_grad_params) dp = at::Tensor();  // the runs kernel's, computed with grad_x
  // far inputs, which the kernels took at d = 0 (device.cuh): their pairs in float64
  far_fixup(x, params, table, borders, gy, dx, dp, batch_last, far_flags);
  if (!want_grad_params) return {dx, no_grad_params()};
  // dP is accumulated in float32; 16-bit parameters get theirs rounded once, here
  if (params.scalar_type() != at::kFloat) dp = dp.to(params.scalar_type());
  return {dx, dp};
}

}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("lmkan2d_backward", &lmkan::lmkan2d::backward_cuda);
}
