// The 2D layer's kernel plans (plan.h): which kernels serve a call, from the footprints of
// footprints.h and the device's limits. Host-only and free of ATen, so that the choice can
// be read (and tested) without a GPU.
#include "lmkan2d/plan.h"

#include <algorithm>
#include <cstring>

#include "common/env_knobs.h"
#include "lmkan2d/footprints.h"

namespace lmkan {
namespace lmkan2d {
namespace {

int64_t output_tiles(int64_t n_out, int tile) { return (n_out + 8 * tile - 1) / (8 * tile); }

// The sorted backward (backward_runs.cu) serves a call when its cell histogram fits in
// shared memory, a chunk of samples holds a whole segment for every pair, a chunk's grad_y
// rows take int32 offsets, and grad_y needs no large zero-padded copy (a narrow output).
bool runs_serve(const CallShape& s, int tile, const DeviceLimits& lim) {
  if (runs_bucket_smem_bytes(s.num_grids) > lim.smem_optin) return false;
  if (!runs_pairs_fit(s.n_in / 2)) return false;
  const int64_t ld = output_tiles(s.n_out, tile) * 8 * tile;
  if (ld > kRunMaxRowFloats) return false;
  return ld == s.n_out || s.batch * ld * 4 <= kRunMaxPaddedBytes;
}

// dx_by_output_rows stages the table slice in shared memory when one buffer of it fits
// beside the cells of a block's samples (output_lanes.cu, plan_launch).
bool output_rows_table_fits(int num_grids, int tile, int block, const DeviceLimits& lim) {
  const int k = forward_lanes_outputs(tile);
  const int samples = (std::min(block, 512) / 32) * dx_samples_per_lane(k);
  const int64_t bytes = forward_smem_bytes(num_grids, 8 * tile, 1, samples);
  return bytes <= lim.smem_optin && bytes + kReservedSmemPerBlock <= lim.smem_per_sm;
}

// Batch-first forwards whose x and y together take at most this many bytes read and write
// them through strides; larger ones transpose. The kernels' strided batch-first access cost
// +5% (G=8) to +21% (G=26) at B = 2^18 (R4) where the two transposes cost ~3-4%; at small
// sizes the transposes' two launches and allocations (~9 and ~6 us of host time each under
// the profiler on the H200's host, round S1) outweigh that (the small training step is
// host-bound).
constexpr int64_t kStridedBatchFirstMaxBytes = int64_t(1) << 20;

}  // namespace

ForwardPlan plan_forward(const CallShape& shape, int tile, const DeviceLimits& lim) {
  // Lanes own samples wherever one table slice fits in shared memory (R34: G=16 74.0 ms
  // against 110.1 for the output-lanes scheme, G=26 5.0 against 9.9). Past that, the
  // output-lanes kernel reads the table through L1/L2 with whole-row (coalesced) reads,
  // where per-lane rows cost 5x (G=26 tile 16: 51.6 against 11.0 ms).
  const bool transposes =
      !shape.batch_last && shape.batch * (shape.n_in + shape.n_out) * 4 > kStridedBatchFirstMaxBytes;
  // Layers of at most 8 outputs: a thread per sample with its outputs in registers (the
  // kernels below give a tile of 32 or more outputs to a thread or a warp)
  if (sample_threads_serve(shape.num_grids, shape.n_out, lim, 1))
    return {ForwardKernel::kSampleThreads, true, transposes};
  if (sample_lanes_smem_bytes(shape.num_grids, 8 * tile, 1, shape.table_bytes) <= lim.smem_optin)
    return {ForwardKernel::kSampleLanes, true, transposes};
  return {ForwardKernel::kOutputLanes, false, transposes};
}

BackwardPlan plan_backward(const CallShape& shape, int tile, int block,
                           bool deterministic, const DeviceLimits& lim, bool grad_params) {
  const bool few_outputs = sample_threads_serve(shape.num_grids, shape.n_out, lim, 1);
  // few outputs, not deterministic: grad_x and grad_params in one pass by a thread per
  // (sample, pair) (shared-memory float atomics), where the table and the accumulator fit
  if (!deterministic && grad_params &&
      sample_threads_serve(shape.num_grids, shape.n_out, lim, 2))
    return {GradXKernel::kSampleThreads, GradParamsKernel::kSampleThreads, true};
  // grad_x alone: the runs kernel (which computes both) only where neither the few-outputs
  // kernel serves nor the output-rows kernel holds its table in shared memory
  if (!deterministic && runs_serve(shape, tile, lim) &&
      (grad_params || (!few_outputs && !output_rows_table_fits(shape.num_grids, tile, block, lim))))
    return {GradXKernel::kRuns, GradParamsKernel::kRuns, true};
  BackwardPlan plan{};
  const int g = shape.num_grids;
  // grad_x: a thread per (sample, pair) for layers of few outputs; else the forward's scheme
  // (atomics over tiles, so deterministic only with one tile), else dx_kernel, which adds the
  // tiles in a fixed order (table in shared memory with as few as one warp per block).
  if (few_outputs) {
    plan.grad_x = GradXKernel::kSampleThreads;
    plan.full_speed = true;
  } else if (!deterministic || output_tiles(shape.n_out, tile) == 1) {
    plan.grad_x = GradXKernel::kOutputRows;
    plan.full_speed = output_rows_table_fits(g, tile, block, lim);
  } else {
    plan.grad_x = GradXKernel::kSampleTiles;
    plan.full_speed = dx_smem_bytes(g, tile, 1, true) <= lim.smem_optin;
  }
  // grad_params: cell-sorted chunks where its accumulator fits (one warp at the least);
  // else per-warp accumulators, in shared memory where one fits beside the smallest chunk.
  if (!grad_params) {
    plan.grad_params = GradParamsKernel::kNone;
  } else if (dp_sorted_smem_bytes(g, 8 * tile, 1) <= lim.smem_optin) {
    plan.grad_params = GradParamsKernel::kSortedChunks;
  } else {
    plan.grad_params = GradParamsKernel::kWarpAccumulators;
    plan.full_speed = plan.full_speed && dp_smem_bytes(g, tile, 1, kDpMinChunk, true) <= lim.smem_optin;
  }
  return plan;
}

bool sample_threads_serve(int num_grids, int64_t n_out, const DeviceLimits& lim, int slices) {
  return n_out <= kSampleThreadsMaxOutputs &&
         sample_threads_smem_bytes(num_grids, sample_threads_width(n_out), 1, slices) <=
             lim.smem_optin;
}

int max_num_grids_for(int tile, const char* mode, const DeviceLimits& lim, int table_bytes,
                      int64_t n_out) {
  const bool forward = std::strcmp(mode, "forward") == 0;
  const bool deterministic = std::strcmp(mode, "backward_deterministic") == 0;
  // Layers of at most kSampleThreadsMaxOutputs outputs are planned at their own count (the
  // few-outputs kernels serve them, sample_threads_*.cu); wider ones, and n_out = 0, at two
  // output tiles (the multi-tile kernels: the tightest limits of the wide layers).
  const int64_t probe_outputs =
      n_out >= 1 && n_out <= kSampleThreadsMaxOutputs ? n_out : 2 * 8 * int64_t(tile);
  int best = 0;
  for (int g = 3; g < 4096; ++g) {
    // one sample: no padded copy of grad_y
    CallShape shape{g, probe_outputs, 1, 2};
    shape.table_bytes = table_bytes;  // the forward's staged table (the backward's is float32)
    const bool full_speed = forward ? plan_forward(shape, tile, lim).full_speed
                                    : plan_backward(shape, tile, 32, deterministic, lim).full_speed;
    if (!full_speed) break;
    best = g;
  }
  return best;
}

RunsKernel plan_runs(bool bf16_rows_and_table, int tile, int num_grids, int64_t chunk_samples,
                     const DeviceLimits& lim) {
  const bool serves = bf16_rows_and_table && bwd_width(tile) % kRunsMmaWalk == 0 &&
                      runs_mma_smem_bytes(num_grids) <= lim.smem_optin;
  if (!serves) return RunsKernel::kFma;
  const int64_t knob = env_int("LMKAN_RUNS_MMA", 0, 1, -1, "(0: FMAs, 1: tensor cores)");
  if (knob >= 0) return knob == 1 ? RunsKernel::kTensorCores : RunsKernel::kFma;
  // Measured on the H100 (docs/decisions.md, "Tensor-core runs"): the tensor cores win at
  // tile 8 (runs_kernel's K = 2 walk is slow) and at tile 16 from ~160 samples per cell.
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  const int64_t floor = tile == 8 ? kRunsMmaMinSamplesPerCellTile8 : kRunsMmaMinSamplesPerCell;
  return chunk_samples >= floor * cells ? RunsKernel::kTensorCores : RunsKernel::kFma;
}

}  // namespace lmkan2d
}  // namespace lmkan
