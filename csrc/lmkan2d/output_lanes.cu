// LMKAN2DLayer: the output-lanes kernel, which serves grad_x (dx_by_output_rows) and the
// forward for num_grids past the shared-memory limit (forward_by_output_lanes).
//
// Output-lanes scheme: a block owns an output tile of W = 32K outputs and a chunk of samples;
// it loops over the input pairs (of its split) with each pair's table slice staged in shared
// memory (or read through L1/L2), a warp takes one sample at a time with its lanes on
// consecutive outputs, accumulates in registers and writes every output once (deterministic,
// no atomics; small batches split the pairs over blocks and sum the partials in a fixed
// order). It serves the grad_x of the deterministic backward (dx_by_output_rows), and the
// forward for num_grids past the shared-memory limit, where its whole-row reads coalesce.
// The kernel and its lane layout: output_lanes_kernel.cuh; here its launch plans and calls.
#include <algorithm>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/static_switch.h"
#include "lmkan2d/device.cuh"
#include "lmkan2d/output_lanes_kernel.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

// The forward (DX = SLOPES = false) runs here only for num_grids whose table slice does not
// fit in shared memory (forward_cuda), so only its L1/L2 variant is instantiated.
template <int K, int M, bool DX = false, bool SLOPES = false>
void launch_forward_km(const ForwardArgs& a, dim3 grid, int block, int64_t smem) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto kernel = forward_kernel<K, M, false, DX, SLOPES>;
  if constexpr (DX || SLOPES) {
    if (a.nbuf > 0) kernel = forward_kernel<K, M, true, DX, SLOPES>;
  }
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  kernel<<<grid, block, smem, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Launch shape of forward_kernel: table buffers, shared memory, grid, pair splits.
struct LaunchPlan {
  int nbuf;
  int64_t smem, n_tiles, sample_blocks, splits;
  int pairs_per_split;
};

// regs: registers per thread of the variant. Table buffers: two (the copy of the next pair
// overlaps the compute) when they fit, else one, else none: the table is then read through
// L1/L2 (no num_grids ceiling, slower). Prefer as many resident blocks as the registers
// allow (up to the SM's thread limit), then two buffers over one: a second block hides a
// block's barrier and staging waits better than a second buffer does. Small batches split the pairs
// over blockIdx.z so the grid fills the device (max_splits = 1 forbids it).
LaunchPlan plan_launch(int num_grids, int w, int nb, int block, int regs, int64_t batch,
                       int n_out, int n_pairs, int64_t max_splits, const DeviceLimits& lim,
                       bool stage_table = true) {
  LaunchPlan plan{};
  const int reg_blocks =
      std::max(1, std::min(lim.max_threads_per_sm / block, 65536 / (regs * block)));
  for (int blocks = stage_table ? reg_blocks : 0; blocks >= 1 && plan.nbuf == 0; --blocks)
    for (int n = 2; n >= 1 && plan.nbuf == 0; --n) {
      const int64_t bytes = forward_smem_bytes(num_grids, w, n, nb);
      if (bytes <= lim.smem_optin &&
          blocks * (bytes + kReservedSmemPerBlock) <= lim.smem_per_sm)
        plan.nbuf = n;
    }
  plan.smem = forward_smem_bytes(num_grids, w, plan.nbuf, nb);
  TORCH_CHECK_VALUE(plan.smem <= lim.smem_optin, "lmkan2d: block_size=", block, " needs ",
                    plan.smem, " bytes of shared memory for its cells, the device allows ",
                    lim.smem_optin);
  plan.n_tiles = (n_out + w - 1) / w;
  plan.sample_blocks = (batch + nb - 1) / nb;
  const PairSplit split =
      split_pairs(plan.sample_blocks * plan.n_tiles, n_pairs, lim.num_sms, max_splits);
  plan.splits = split.splits;
  plan.pairs_per_split = split.pairs_per_split;
  TORCH_CHECK(plan.sample_blocks < (int64_t(1) << 31) && plan.n_tiles <= 65535,
              "lmkan2d: grid too large (batch ", batch, ", output_dim ", n_out, ")");
  return plan;
}

ForwardArgs make_args(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& borders,
                      float* out, int64_t batch, int n_out, int n_pairs, int num_grids,
                      const LaunchPlan& plan, bool batch_last) {
  ForwardArgs a{};
  a.x = x.data_ptr<float>();
  a.packed = packed.data_ptr<float>();
  a.borders = borders.data_ptr<float>();
  a.y = out;
  a.batch = batch;
  a.n_out = n_out;
  a.n_pairs = n_pairs;
  a.num_grids = num_grids;
  a.pairs_per_split = plan.pairs_per_split;
  a.nbuf = plan.nbuf;
  a.xs_f = batch_last ? batch : 1;
  a.xs_b = batch_last ? 1 : 2 * int64_t(n_pairs);
  a.ys_f = batch_last ? batch : 1;  // y and grad_y: [N_out, B] or [B, N_out]
  a.ys_b = batch_last ? 1 : n_out;
  a.ys_split = batch * int64_t(n_out);
  return a;
}

template <int K, bool SLOPES>
void launch_forward_k(const ForwardArgs& a, dim3 grid, int block, int64_t smem) {
  static_assert(kSlopeForwardBlock <= 256, "the slope forward's M is samples_per_lane(K, 256)");
  if constexpr (!SLOPES) {  // the slope forward runs at kSlopeForwardBlock (256) only
    if (block > 256) {
      launch_forward_km<K, samples_per_lane(K, 1024)>(a, grid, block, smem);
      return;
    }
  }
  launch_forward_km<K, samples_per_lane(K, 256), false, SLOPES>(a, grid, block, smem);
}

// The forward-shaped calls of forward_kernel, y in the layer output's layout: the layer's
// forward past the shared-memory limit (kSlopes false: the table through L1/L2), and the
// slope forward (weights like x; the table staged where it fits; tiles 4 and 8 only).
template <bool kSlopes>
at::Tensor forward_shaped(const at::Tensor& x, const at::Tensor& params,
                          const at::Tensor& borders, int tile, int block, bool batch_last,
                          at::ScalarType table_dtype, const float* weights) {
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int n_out = static_cast<int>(params.size(2));
  const int n_pairs = static_cast<int>(params.size(3));
  const int64_t batch = batch_last ? x.size(1) : x.size(0);
  const DeviceLimits lim = device_limits(x.device().index());
  at::Tensor y = batch_last ? at::empty({n_out, batch}, x.options())
                            : at::empty({batch, n_out}, x.options());
  if (batch == 0) return y;
  const int k = forward_lanes_outputs(tile), w = 32 * k;
  const int nb = (block / 32) * samples_per_lane(k, block);
  const int regs = samples_per_lane(k, block) * k > 32 ? 128 : 64;
  const LaunchPlan plan = plan_launch(num_grids, w, nb, block, regs, batch, n_out, n_pairs,
                                      n_pairs, lim, /*stage_table=*/kSlopes);
  const at::Tensor packed = pack_table(params, w, table_dtype);  // float32, rounded values
  // pair splits: partial sums to a workspace reduced in a fixed order (deterministic)
  at::Tensor out = plan.splits > 1 ? at::empty({plan.splits, y.size(0), y.size(1)}, y.options()) : y;
  ForwardArgs a = make_args(x, packed, borders, out.data_ptr<float>(), batch, n_out, n_pairs,
                            num_grids, plan, batch_last);
  a.w = weights;
  const int64_t smem = plan.smem;
  const dim3 grid(static_cast<unsigned>(plan.sample_blocks), static_cast<unsigned>(plan.n_tiles),
                  static_cast<unsigned>(plan.splits));
  const auto launch = [&](auto k_c) {
    launch_forward_k<decltype(k_c)::value, kSlopes>(a, grid, block, smem);
  };
  if constexpr (kSlopes) switch_value<1, 2>(k, launch);
  else switch_value<1, 2, 4>(k, launch);
  if (plan.splits > 1) sum_splits(out, y);
  return y;
}

}  // namespace

// x [N_in, B] and y [N_out, B] (batch_last), or [B, N_in] and [B, N_out].
at::Tensor forward_by_output_lanes(const at::Tensor& x, const at::Tensor& params,
                                   const at::Tensor& borders, int tile, int block,
                                   bool batch_last, at::ScalarType table_dtype) {
  return forward_shaped<false>(x, params, borders, tile, block, batch_last, table_dtype, nullptr);
}

at::Tensor dx_by_output_rows(const at::Tensor& x, const at::Tensor& params,
                             const at::Tensor& borders, const at::Tensor& gy, bool batch_last,
                             int tile, int block_size, bool deterministic,
                             at::ScalarType table_dtype) {
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int n_out = static_cast<int>(params.size(2));
  const int n_pairs = static_cast<int>(params.size(3));
  const int64_t batch = batch_last ? x.size(1) : x.size(0);
  const DeviceLimits lim = device_limits(x.device().index());
  const int k = forward_lanes_outputs(tile), w = 32 * k;
  const int block = std::min(block_size, 512);  // 128 registers per thread
  const int nb = (block / 32) * dx_samples_per_lane(k);
  // deterministic: one writer per grad_x entry (one output tile, no pair split)
  TORCH_INTERNAL_ASSERT(!deterministic || (n_out + w - 1) / w == 1,
                        "plan_backward chose dx_by_output_rows for a deterministic multi-tile call");
  const LaunchPlan plan = plan_launch(num_grids, w, nb, block, 128, batch, n_out, n_pairs,
                                      deterministic ? 1 : n_pairs, lim);
  const bool single_writer = plan.n_tiles == 1 && plan.splits == 1;
  at::Tensor dx = single_writer ? at::empty_like(x) : at::zeros_like(x);
  const at::Tensor packed = pack_table(params, w, table_dtype);  // float32, rounded values
  ForwardArgs a = make_args(x, packed, borders, dx.data_ptr<float>(), batch, n_out, n_pairs,
                            num_grids, plan, batch_last);
  a.gy = gy.data_ptr<float>();
  a.gs_f = a.ys_f;  // grad_y has y's layout; grad_x has x's
  a.gs_b = a.ys_b;
  a.ys_f = a.xs_f;
  a.ys_b = a.xs_b;
  a.ys_split = 0;
  a.dx_single_writer = single_writer;
  const dim3 grid(static_cast<unsigned>(plan.sample_blocks), static_cast<unsigned>(plan.n_tiles),
                  static_cast<unsigned>(plan.splits));
  switch_value<1, 2, 4>(k, [&](auto k_c) {
    constexpr int kK = decltype(k_c)::value;
    launch_forward_km<kK, dx_samples_per_lane(kK), true>(a, grid, block, plan.smem);
  });
  return dx;
}


at::Tensor slope_forward_by_output_lanes(const at::Tensor& x, const at::Tensor& weights,
                                         const at::Tensor& params, const at::Tensor& borders,
                                         bool batch_last, at::ScalarType table_dtype) {
  return forward_shaped<true>(x, params, borders, slope_tile(params.size(2)), kSlopeForwardBlock,
                              batch_last, table_dtype, weights.data_ptr<float>());
}

}  // namespace lmkan2d
}  // namespace lmkan
