// The kernel plans of the 2D layer ops: for each op, the one place that decides which
// kernels serve a call and where they keep the table (shared memory or L1/L2).
//
// forward.cpp and backward.cpp run what plan_forward / plan_backward say; the kernels'
// launchers (forward_sample_lanes.cu, output_lanes.cu, backward_sorted.cpp, grad_x.cu,
// grad_params.cu) take the choice as given and only size the launch (buffers, warps, pair
// splits) for it. lmkan2d_max_num_grids (max_num_grids.cpp) asks the same functions which
// num_grids they serve at full speed, so the limit, the layer's warning past it and the
// launches cannot disagree. Host-only (no CUDA or ATen headers); docs/kernels.md explains
// each kernel and why it serves its cases.
#pragma once
#include <cstdint>

#include "common/device_limits.h"

namespace lmkan {
namespace lmkan2d {

// Largest G+1 the ops accept (csrc/lmkan2d/forward.cpp, check_common): table offsets are
// 32-bit in the kernels, and the regularisers take at most 4000 nodes.
constexpr int64_t kMaxTableSide = 4000;

// What a call is, as far as the choice of kernels goes.
struct CallShape {
  int num_grids;
  int64_t n_out;
  int64_t batch;
  int64_t n_in = 0;         // input features (2 per pair)
  bool batch_last = true;   // x [N_in, B]; false: [B, N_in]
  int table_bytes = 4;      // bytes per table value as the forward stages it (16-bit: 2)
};

enum class ForwardKernel {
  kSampleLanes,  // forward_sample_lanes.cu: lanes own samples; table slices in shared memory
  kOutputLanes,  // output_lanes.cu: lanes own outputs; table read through L1/L2
  kSampleThreads,  // sample_threads_forward.cu: a thread owns a sample, layers of at most 8 outputs
};

struct ForwardPlan {
  ForwardKernel kernel;
  bool full_speed;  // the table slice is staged in shared memory
  // batch-first only: run the batch-last kernel between two transposes (x in, y out) rather
  // than read x and write y through their batch-first strides
  bool transposes;
};

// tile: tile_size (4, 8 or 16).
ForwardPlan plan_forward(const CallShape& shape, int tile, const DeviceLimits& lim);

enum class GradXKernel {
  kRuns,         // backward_runs.cu: grad_x and grad_params in one pass over cell-sorted chunks
  kOutputRows,   // output_lanes.cu (the forward's scheme; atomics over tiles and pair splits)
  kSampleTiles,  // grad_x.cu: output tiles added in a fixed order (deterministic, > 1 tile)
  kSampleThreads,  // sample_threads_backward.cu: a thread per (sample, pair)
};

enum class GradParamsKernel {
  kRuns,              // with grad_x, above
  kSortedChunks,      // grad_params.cu, dp_sorted_kernel: accumulator in shared memory
  kWarpAccumulators,  // grad_params.cu, dp_kernel: per-warp accumulators, shared or global
  kSampleThreads,     // sample_threads_backward.cu, grad_x in one pass (not deterministic)
  kNone,              // not asked for (lmkan2d_backward's grad_params=False)
};

struct BackwardPlan {
  GradXKernel grad_x;
  GradParamsKernel grad_params;
  // grad_x's table and grad_params' accumulator in shared memory (kRuns reads the table
  // through L2 by design, and is full speed wherever it serves)
  bool full_speed;
};

// block: block_size_backward. backward_fast_mode does not change the choice (it changes the
// chosen kernels' launch sizes only), so it is not an argument. grad_params = false: grad_x
// alone, by the kernel the separate-kernels plan takes for it (the runs kernel computes both).
BackwardPlan plan_backward(const CallShape& shape, int tile, int block,
                           bool deterministic, const DeviceLimits& lim, bool grad_params = true);

// The runs kernel of the sorted backward (GradXKernel::kRuns): runs_kernel's FMAs, or the
// tensor cores (backward_runs_mma.cu) for a bfloat16 grad_y with a bfloat16 table (autocast,
// bfloat16 parameters), where their exact three-term products pay: at tile size 8, and at 16
// where a chunk holds at least kRunsMmaMinSamplesPerCell samples per cell (long runs: a group
// of 16 samples then seldom spans two cells). chunk_samples: the samples of one chunk (the
// batch's last chunk may be shorter: backward_by_runs asks per chunk). LMKAN_RUNS_MMA=0 / 1
// (a measurement knob, read at every call) forces the FMAs / the tensor cores wherever these
// serve.
enum class RunsKernel { kFma, kTensorCores };
constexpr int64_t kRunsMmaMinSamplesPerCell = 160;
constexpr int64_t kRunsMmaMinSamplesPerCellTile8 = 32;
RunsKernel plan_runs(bool bf16_rows_and_table, int tile, int num_grids, int64_t chunk_samples,
                     const DeviceLimits& lim);

// Whether sample_threads_*.cu serve a layer: at most kSampleThreadsMaxOutputs outputs and
// `slices` arrays of one pair's slice in shared memory (1: grad_x or the mixed term, table
// only; the slope dP, accumulator only; 2: the backward, both). Always at full speed.
bool sample_threads_serve(int num_grids, int64_t n_out, const DeviceLimits& lim, int slices);

// The largest num_grids served at full speed for a tile size and mode ("forward",
// "backward", "backward_fast", "backward_deterministic"), with the smallest block (the
// kernels' least shared memory): of a layer of n_out outputs where the few-outputs kernels
// serve it (1 <= n_out <= kSampleThreadsMaxOutputs), else (n_out = 0 too) of a layer of two
// output tiles.
int max_num_grids_for(int tile, const char* mode, const DeviceLimits& lim, int table_bytes = 4,
                      int64_t n_out = 0);

}  // namespace lmkan2d
}  // namespace lmkan
