// Launch shapes and shared-memory footprints (bytes) of the 2D kernels: what the kernels,
// their launchers and the plans (plan.h) share, so that a plan's choice, the limit
// lmkan2d_max_num_grids reports and the launch agree. No ATen; __host__ __device__ only
// where a kernel reads the value too.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cuda_runtime.h>

namespace lmkan {
namespace lmkan2d {

// Forward kernel: each lane of a warp owns K consecutive outputs, so an output tile is
// W = 32K outputs; tile_size 4, 8, 16 selects K = 1, 2, 4.
constexpr int forward_lanes_outputs(int tile) { return tile / 4; }
// Samples per lane: 64 accumulators per thread for blocks of up to 256 threads (<= 128
// registers, two blocks per SM), 32 for 512- and 1024-thread blocks (<= 64 registers).
constexpr int samples_per_lane(int k, int block) { return (block > 256 ? 32 : 64) / k; }
// Samples per lane of the grad_x variant of the forward kernel (grad_y kept in 32 registers
// per lane; 8 at K = 4 so that a transpose-reduce round of 16 sums still fits).
constexpr int dx_samples_per_lane(int k) { return k == 4 ? 8 : 32 / k; }

// Shared memory: two mbarriers (16 bytes), nbuf table slices [cells][W], the cells of two
// pairs [2][samples] as float4, the borders.
inline int64_t forward_smem_bytes(int num_grids, int w, int nbuf, int samples_per_block) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  return 16 + cells * w * 4 * nbuf + int64_t(samples_per_block) * 2 * 16 +
         int64_t(num_grids + 1) * 4 + 16;
}

// The forward (forward_sample_lanes.cu): a thread owns one sample and 32 outputs of a tile
// of W = 8 * tile outputs; the table slices are staged in a ring of up to 4 buffers.
constexpr int kSampleLanesMaxBuffers = 4;
// Shared memory: full and empty mbarriers [2][4], the node table (g_i, 1/h_i) [G], padding
// to 128 bytes, then the nbuf table slices [cells][W].
__host__ __device__ inline int64_t sample_lanes_table_offset(int num_grids) {
  return (2 * kSampleLanesMaxBuffers * 8 + int64_t(num_grids) * 8 + 127) / 128 * 128;
}
// value_bytes: 4 for float32 tables, 2 for 16-bit ones.
inline int64_t sample_lanes_smem_bytes(int num_grids, int w, int nbuf, int value_bytes = 4) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  return sample_lanes_table_offset(num_grids) + int64_t(nbuf) * cells * w * value_bytes;
}

// Non-deterministic backward over cell-sorted chunks (backward_runs.cu), both modes.
// chunk_bytes: grad_y rows per chunk; the sorted buffer is P x chunk x 16 bytes (R24 on the
// H100: 8 MB chunks took +23% at G=26 and +3% at G=8 against 32 MB). Fast mode: 24 MB, where
// the rows share the 50 MB L2 of an H100 / H200 with the table and dP slices in flight
// (runs_kernel -0.3 to -0.4 ms at G=8 and G=26 against 32 MB, 16 and 48 MB slower;
// docs/decisions.md, "The sorted backward's later changes").
constexpr int64_t kRunChunkBytesNormal = int64_t(8) << 20;
constexpr int64_t kRunChunkBytesFast = int64_t(24) << 20;

// Sorted entries per warp, at most (a multiple of 16), and the bytes of one chunk's sorted
// entries (16 per pair and sample): a chunk holds at least one segment of samples, so the
// sort serves at most kRunMaxEntriesBytes / (16 * kRunSegment) = 65536 pairs.
constexpr int kRunSegment = 256;
constexpr int64_t kRunMaxEntriesBytes = int64_t(256) << 20;
inline bool runs_pairs_fit(int64_t n_pairs) { return n_pairs * 16 * kRunSegment <= kRunMaxEntriesBytes; }

// The tensor-core runs kernel (backward_runs_mma.cu): blocks of kRunsMmaWarps warps,
// kRunsMmaWarpsPerSm resident per SM (<= 128 registers); a warp walks kRunsMmaWalk outputs at
// a time, in groups of kRunsMmaGroup samples (one m16n8k16 row block). Shared memory per warp,
// in floats: its entries (int4, a group read ahead), its grad_x sums [segment][2], two buffers
// of a cell's 4 corner rows, the segment's distinct cells, two buffers of a group's bfloat16
// grad_y rows; then the block's borders.
constexpr int kRunsMmaWarps = 8;
constexpr int kRunsMmaWarpsPerSm = 16;
constexpr int kRunsMmaWalk = 64;
constexpr int kRunsMmaGroup = 16;
constexpr int64_t kRunsMmaWarpFloats = (kRunSegment + kRunsMmaGroup) * 4 + 2 * kRunSegment +
                                       2 * 4 * kRunsMmaWalk + kRunSegment +
                                       2 * kRunsMmaGroup * kRunsMmaWalk / 2;
constexpr int64_t runs_mma_smem_bytes(int num_grids) {
  return (kRunsMmaWarps * kRunsMmaWarpFloats + num_grids + 1) * 4;
}

// Its shared memory bound: the cell sort's (bucket_kernel, cell_sort.cu), bytes. Direct
// scatter: the cell histogram, (G+1)^2 counters, its scan's 33 warp sums and the G+1 borders.
// The staged scatter adds a stage's histogram ((G+1)^2) and its 4,096 entries of 16 bytes (64
// KB): on a GPU of 227 KB per block it serves up to G = 143 (99 KB: G = 65), the direct one
// past that.
constexpr int kBucketStageBytes = 4096 * 16;
inline int64_t runs_bucket_smem_bytes(int num_grids, bool staged = false) {
  const int64_t side = num_grids + 1;
  return ((staged ? 2 : 1) * side * side + 33 + side) * 4 + (staged ? kBucketStageBytes : 0);
}
// A padded copy of a narrow grad_y (n_out well below one tile) would cost more memory than
// that backward saves: past this size such layers run the other backward kernels.
constexpr int64_t kRunMaxPaddedBytes = int64_t(1) << 30;
// runs_kernel addresses a chunk's grad_y rows by int32 offsets; a chunk holds at most
// max(kRunSegment rows, 8 M floats), so rows of up to this many floats (8 M outputs) qualify.
constexpr int64_t kRunMaxRowFloats = ((int64_t(1) << 31) - 1) / kRunSegment;

// A warp of either backward kernel covers W = 8 * tile consecutive outputs of one table row
// (tile_size_backward / 4 outputs per lane), reading the table packed as
// pack_table(params, W) = [n_tiles, P, cells, W]: a corner read of a warp is one 128-byte
// row segment per 32 outputs, conflict-free whatever the cell.
constexpr int bwd_width(int tile) { return 8 * tile; }
// Samples whose grad_y a dx warp keeps in registers (16 per transpose-reduce round; two
// rounds at tile 4, where K = 1 leaves the registers for it): more samples per block means
// fewer copies of the table slice from L2.
constexpr int dx_samples_per_warp(int tile) { return tile == 4 ? 32 : 16; }

// dx kernel: the table slice of one (output tile, pair) [cells][W] (unless read from global
// memory), the staged cells (float4) and 1/h (float2) of the block's samples, the borders.
inline int64_t dx_smem_bytes(int num_grids, int tile, int warps, bool table_in_smem) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  const int64_t samples = int64_t(warps) * dx_samples_per_warp(tile);
  return (table_in_smem ? cells * bwd_width(tile) * 4 : 0) + samples * (16 + 8) +
         int64_t(num_grids + 1) * 4 + 16;
}

// dP kernel (dp_kernel): one accumulator [cells][W] per warp (unless kept in global memory),
// grad_y of a chunk of samples [chunk][W], the cells of each warp's pair [warps][chunk]
// (float4), borders.
inline int64_t dp_smem_bytes(int num_grids, int tile, int warps, int chunk, bool acc_in_smem) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  const int64_t width = bwd_width(tile);
  return (acc_in_smem ? int64_t(warps) * cells * width * 4 : 0) + int64_t(chunk) * width * 4 +
         int64_t(warps) * chunk * 16 + int64_t(num_grids + 1) * 4 + 16;
}
constexpr int kDpMinChunk = 32;   // samples staged per dP chunk, smallest configuration
constexpr int kDpMaxChunk = 128;  // largest chunk (fast mode)

// Sorted-chunk dP (grad_params.cu, dp_sorted_kernel): kSortSpl samples per lane per chunk in
// the sort. Shared memory: accumulator [cells][W] floats, per-warp cell counts
// [warps][cells] and run offsets [cells + 1] (ints), the sorted chunk [C] (float4), borders.
constexpr int kSortSpl = 8;
inline int64_t dp_sorted_smem_bytes(int num_grids, int w, int warps) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  const int64_t chunk = int64_t(warps) * 32 * kSortSpl;
  return cells * w * 4 + int64_t(warps) * cells * 4 + (cells + 1) * 4 + chunk * 16 +
         int64_t(num_grids + 1) * 4 + 16;
}

// Kernels of layers with few outputs (sample_threads.cuh): a thread per (sample, pair) at a
// time, the outputs in its registers; the table slices of a group of pairs, or their
// gradient accumulators, or both, [pairs][cells][kOutputs] each, in shared memory. Outputs of
// a layer they serve, at most: past that, the lanes-over-outputs kernels fill their warps.
constexpr int kSampleThreadsMaxOutputs = 8;
constexpr int kSampleThreadsBlock = 256;  // threads, and samples per block
// kOutputs: the table row width for n_out outputs (1, 2, 4 or 8; rows zero-padded).
constexpr int sample_threads_width(int64_t n_out) {
  return n_out <= 1 ? 1 : n_out <= 2 ? 2 : n_out <= 4 ? 4 : 8;
}
// Shared memory: `slices` arrays (table, accumulator) of `pairs` pairs' slices, then the
// borders (16-byte aligned).
inline int64_t sample_threads_smem_bytes(int num_grids, int width, int pairs, int slices) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  return int64_t(slices) * pairs * cells * width * 4 + (int64_t(num_grids + 1) * 4 + 15) / 16 * 16;
}

// Pair splits of the forward-shaped kernels (forward_sample_lanes.cu, output_lanes.cu): a
// grid of blocks_xy blocks with fewer than about two per SM (small batches) splits the pairs
// over blockIdx.z, at least 4 pairs and at most max_splits splits; the callers add the
// partial sums in a fixed order.
struct PairSplit {
  int64_t splits;
  int pairs_per_split;
};
inline PairSplit split_pairs(int64_t blocks_xy, int n_pairs, int num_sms, int64_t max_splits) {
  int64_t splits = std::max<int64_t>(1, (2 * int64_t(num_sms) + blocks_xy - 1) / blocks_xy);
  splits = std::min<int64_t>({splits, std::max(1, n_pairs / 4), max_splits});
  const int pairs_per_split = static_cast<int>((n_pairs + splits - 1) / splits);
  return {(n_pairs + pairs_per_split - 1) / pairs_per_split, pairs_per_split};
}

}  // namespace lmkan2d
}  // namespace lmkan
