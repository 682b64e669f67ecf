// LMKAN1DLayer / KANLayer kernels: what the kernels (pack.cu, forward.cu, grad_x.cu with the
// pipeline of tiles.cuh, grad_params*.cu) and the host code (ops.cpp) share: launch shapes,
// argument structs, shared-memory sizes, the launchers.
//
// CUDA kernels of the 1D linear-spline layer (docs/spec.md section 4):
//   y[o] = sum_i (1 - d) C[k, o, i] + d C[k+1, o, i],   (k, d) = cell of x[i].
//
// Forward and dx share one pipeline ("tiled" kernels, tiles.cuh): a warp keeps 16 samples in
// registers over one 128-output tile; in the forward its 32 lanes own 32 x 4 CONSECUTIVE
// outputs (a float4 each), so every table read of a warp is one 512-byte row, 4
// conflict-free wavefronts, and a sample's cell is a warp-uniform broadcast (dx: below). The
// table is packed once per call (pack kernel) as [tile][input][row][128], so the slice of a
// stage of inputs is one contiguous block copied into shared memory, double buffered (sm_90
// and newer: one bulk copy completing an mbarrier per buffer; below: cp.async, tiles.cuh).
//   forward: rows are the node values C[k]; y tile accumulated in registers, written once.
//     With a 16-bit table (float16/bfloat16) a lane's 4 values are one 8-byte read (a warp
//     reads a 256-byte row, 2 wavefronts) widened to float32; cells, weights and sums stay
//     float32.
//   dx: rows are the slopes (C[k+1] - C[k]) / h_k; grad_y in registers, the warp as four
//     groups of 8 lanes (grad_x.cu): a group takes 4 of the warp's 16 samples, a lane 16 of
//     the tile's outputs (4 float4 chunks, 8 apart, so a group's load is 128 contiguous bytes
//     of one row); per (sample, input) a lane's partial dot product over its 16 outputs,
//     summed over the group's 8 lanes by a transpose-reduce (7 shuffles per input pair). The
//     block loops over all output tiles itself, so grad_x is written by one thread per entry:
//     no atomics, deterministic.
// dC, G <= 31 (grouped): a warp owns one input and 128 outputs (a float4 per lane) for
//   G <= 16 on devices of 170 KB and more, else 64 outputs (a float2); per chunk of 128 or 256
//   samples it counting-sorts them by cell and walks the cells in order, summing a run of one
//   cell in registers into node sums that stay in registers for the whole slice. Per (sample,
//   input) it reads shared memory twice (sorted entry, dy row), writes nothing.
// dC, larger G: a warp owns two inputs and 32 outputs (lanes); for a chunk of samples it reads
//   each sample's cells (broadcast) and dy[s, o] and updates its own columns of a shared-memory
//   accumulator (thread-exclusive: no shared atomics). The two inputs are independent
//   read-modify-write chains, interleaved to hide the shared-memory latency.
// Both split the batch into slices; each block flushes once: global atomicAdd, or
#pragma once

#include <cstddef>
#include <cstdint>

#include <c10/core/ScalarType.h>
#include <cuda_runtime.h>

namespace lmkan {
namespace lmkan1d {

// ---- tiled kernels (forward, dx) ------------------------------------------------------------
constexpr int kTileThreads = 512;
constexpr int kTileWarps = kTileThreads / 32;
constexpr int kTileOut = 128;                 // outputs per tile: 32 lanes x float4
constexpr int kRowChunks = kTileOut / 4;      // float4s per table row
constexpr int kWarpSamples = 16;              // samples per warp, in registers
constexpr int kBlockSamples = kTileWarps * kWarpSamples;  // 256
constexpr int kMaxStageInputs = 8;
constexpr int kXPerLane = kMaxStageInputs * kWarpSamples / 32;  // x values a lane prefetches
constexpr size_t kStageBudget = 64 * 1024;    // bytes of one table buffer, when rows allow

// ---- dC configuration --------------------------------------------------------------------
constexpr int kDcThreads = 256;
constexpr int kDcWarps = kDcThreads / 32;
constexpr int kDcInputs = 2 * kDcWarps;  // two inputs per warp
constexpr int kDcChunk = 64;             // samples per staged chunk

struct TileArgs {
  const float* x;        // [N_in, B] (batch_last) or [B, N_in]
  const void* packed;    // [tiles][n_in_pad][rows][128]: float, or the forward's 16-bit table
  const float* borders;  // [G+1]
  const float* weights = nullptr;  // like x: the slope forward's per-input weights
  int64_t batch;
  int n_in, n_in_pad, n_out, num_grids, rows, stage_inputs;
  bool uniform, batch_last;
  bool rows_only;  // cells hold only the row offset (int [input][16]; dx), else float2 (row, d)
  // Small batches (input splits, ops.cpp split_stages): block z runs the pipeline's stages
  // [z * stages_per_split, (z + 1) * stages_per_split); the forwards write its partial sums
  // at y + z * split_stride (a [splits, y] workspace that sum_splits adds in order), dx its
  // own inputs' entries. The defaults make one split of every stage.
  int stages_per_split = 1 << 30;
  int64_t split_stride = 0;
  // Images (lmkan1d_forward of x [N, N_in, L] into y [N, N_out, L], batch_last;
  // common/images.h): batch = N L <= kMaxImageSamples, image_len = L, a multiple of
  // kWarpSamples so that a warp's samples lie in one image, whose x and y start
  // image_stride_x / _y apart (a warp's first sample's offsets: SampleOffsets). A plain
  // tensor is one image (image_len = batch; tile_args).
  int64_t image_len = 0;
  int64_t image_stride_x = 0, image_stride_y = 0;
};


// Shared memory of a tiled block: two table buffers (table_bytes per value: 4, or 2 for the
// forward's 16-bit tables), the warps' cells, the borders.
// The two table buffers' barriers (tiles.cuh), 16 bytes keeping the cells 16-byte aligned.
constexpr size_t kTileBarrierBytes = 16;

inline size_t tile_smem_bytes(int rows, int stage_inputs, int num_grids, int table_bytes = 4) {
  return size_t(table_bytes) * 2 * stage_inputs * rows * kTileOut + kTileBarrierBytes +
         sizeof(float2) * kTileWarps * stage_inputs * kWarpSamples + sizeof(float) * (num_grids + 1);
}

// Inputs per stage: as many as kStageBudget holds (at least `min_inputs`, a multiple of it),
// fewer where the two stages would not fit the device's shared memory `smem_limit` (99 KB on
// consumer GPUs: there the stage, not kStageBudget, bounds it, so the num_grids limit is
// set by one stage of min_inputs inputs, not by kStageBudget's 8).
inline int tile_stage_inputs(int rows, int min_inputs, int num_grids, size_t smem_limit,
                             int table_bytes = 4) {
  int n = static_cast<int>(kStageBudget / (size_t(table_bytes) * rows * kTileOut));
  n = n / min_inputs * min_inputs;
  n = n < min_inputs ? min_inputs : (n > kMaxStageInputs ? kMaxStageInputs : n);
  while (n > min_inputs && tile_smem_bytes(rows, n, num_grids, table_bytes) > smem_limit)
    n -= min_inputs;
  return n;
}

// Shared memory of the forward / dx kernels on a device allowing `smem_limit` per block.
inline size_t fwd_smem_bytes(int num_grids, size_t smem_limit, int table_bytes = 4) {
  const int rows = num_grids + 1;
  return tile_smem_bytes(rows, tile_stage_inputs(rows, 1, num_grids, smem_limit, table_bytes),
                         num_grids, table_bytes);
}

inline size_t dx_smem_bytes(int num_grids, size_t smem_limit) {
  return tile_smem_bytes(num_grids, tile_stage_inputs(num_grids, 2, num_grids, smem_limit), num_grids);
}

// Shared memory of the dC kernel with a shared-memory accumulator (larger G).
inline size_t dc_smem_bytes(int num_grids) {
  return sizeof(float) * (kDcInputs * (num_grids + 1) * 32 + kDcChunk * 32) +
         sizeof(float2) * kDcInputs * kDcChunk + sizeof(float) * (num_grids + 2);
}

// A warp owns one input and the block's outputs (2 or 4 per lane). Per chunk of samples it
// sorts its input's samples by cell (counting sort, peer lanes from five ballots, so the order
// depends only on the data) and walks the cells in order: a run of samples in cell k sums g and
// g d in registers, then adds g - g d to the node sum acc[k] and g d to acc[k+1]; the node sums
// stay in registers for the whole slice. Shared memory is read once per (sample, input) for
// the sorted entry (a broadcast, two entries per 16-byte read) and once for the dy row (a
// float2 or float4 per lane); nothing is written per sample. The node sums need static
// register indices, hence the fully unrolled cell loop and the cell limit (G <= 31; larger G
// use the shared-accumulator kernel, grad_params.cu). The chunks are double-buffered: cp.async
// copies the next chunk's dy rows and raw x while the warps sort and walk the current one, so a
// block waits on global memory once per slice, not once per chunk.
//
// A launch shape (GroupedConfig): `warps` inputs per block (a warp each), up to `max_cells`
// cells, `lane_out` outputs per lane (32 lane_out per block), `chunk` samples per
// double-buffered chunk, each cell's run padded to a multiple of `group` entries that read a
// row of zeros (a walk without a remainder loop: at ~8 samples per cell the remainder and its
// setup were ~40% of the walk's instructions). Per walked entry a warp issues the entry's share
// of one 16-byte load, an address add, one dy load, 2 lane_out FP and the loop's share, and per
// chunk it sorts its input once: 4 outputs a lane serve twice the outputs with that work, where
// the node sums fit (4 x 17 nodes, 68 registers, at G <= 16). The host takes the first shape
// whose cells and shared memory fit (kGroupedConfigs). Longer chunks give longer runs per cell
// (fewer pads, fewer per-cell overheads), more inputs per block fewer dy copies. The node sums
// and the walk take 128 registers a thread, so an SM holds 16 warps: one block of 16 or, by
// shared memory, one or two of 8 (4 outputs a lane with all 32 nodes took 210 registers, so 8
// warps an SM, and lost: docs/decisions.md, "1D layer").
struct GroupedConfig {
  int warps, max_cells, lane_out, chunk, group;
  constexpr int block_out() const { return 32 * lane_out; }
  // dy row stride in floats: 16-byte aligned rows (16-byte copies), and for batch-last's
  // transposed copies consecutive samples start 4 banks apart (4-way, not 32-way conflicts).
  constexpr int dy_stride() const { return block_out() + 4; }
  // A warp's sorted entries: the chunk plus at most group - 1 pads for each cell, rounded up
  // to 2 (16-byte aligned arrays: the walk reads two entries per float4).
  constexpr int sorted_slots() const { return (chunk + max_cells * (group - 1) + 1) / 2 * 2; }
};
constexpr GroupedConfig kGroupedConfigs[] = {
    {16, 16, 4, 128, 2},  // G <= 16: 170 KB
    {16, 31, 2, 256, 4},  // 216 KB
    {16, 31, 2, 128, 4},  // 115 KB (A100)
    {8, 31, 2, 128, 4},   // 92 KB (consumer GPUs)
};
constexpr int kGroupedShapes = sizeof(kGroupedConfigs) / sizeof(kGroupedConfigs[0]);
constexpr int kGcMaxCells = 31;  // G + 1 <= 32: cells are lanes of the sort's counters

// Shared memory of a grouped block (grad_params_grouped.cu, GroupedSmem): two dy buffers
// [chunk][dy_stride] and the zero row, two raw-x buffers of chunk x (warps + 1) floats (the
// batch-first layout's padded rows), the warps' sorted entries (float2) and counts (32 ints),
// the borders.
inline size_t grouped_smem_bytes(GroupedConfig c, int num_grids) {
  return sizeof(float) * (2 * c.chunk * (c.dy_stride() + c.warps + 1) + c.dy_stride()) +
         sizeof(float2) * c.warps * c.sorted_slots() + sizeof(int) * c.warps * 32 +
         sizeof(float) * (num_grids + 1);
}

struct GroupedArgs {
  const float* grad_y;  // like y: [N_out, B] (batch_last) or [B, N_out]
  const float* x;       // [N_in, B] or [B, N_in]
  const float* borders;  // [G+1]
  float* out;  // accumulate ? grad_params (zeroed) : workspace [slices][G+1][N_out][N_in]
  int64_t batch, slice_len;
  int n_in, n_out, num_grids;
  bool uniform, batch_last, accumulate;
  bool vector_dy;  // batch-first grad_y rows can be read as float4 (N_out % 4 == 0, aligned)
};

// Launchers (pack.cu, forward.cu, grad_x.cu, grad_params*.cu): each sets its kernel's dynamic
// shared-memory limit where it uses any, launches on `stream` and checks the launch.
// launch_pack: params of dtype params_dtype (float32/float16/bfloat16), each value rounded to
// table_dtype first; values stored as packed_dtype (table_dtype or float32), slopes as float32.
void launch_pack(dim3 grid, cudaStream_t stream, const void* params, const float* borders,
                 void* packed, int n_in, int n_in_pad, int n_out, int num_grids, int rows,
                 bool slopes, bool uniform, c10::ScalarType params_dtype,
                 c10::ScalarType table_dtype, c10::ScalarType packed_dtype);
// launch_forward: a.packed holds values of table_dtype; images: x and y hold images (TileArgs).
void launch_forward(const TileArgs& a, float* y, dim3 grid, size_t smem, cudaStream_t stream,
                    c10::ScalarType table_dtype, bool images = false);
// launch_slope_forward: y[s, o] = sum_i weights[s, i] * slope[k(s, i), o, i] with a.packed the
// float32 slopes (rows G) and a.weights set (second derivatives: d grad_x / d P, transposed).
void launch_slope_forward(const TileArgs& a, float* y, dim3 grid, size_t smem,
                          cudaStream_t stream);
void launch_dx(const TileArgs& a, const float* grad_y, float* grad_x, int tiles, dim3 grid,
               size_t smem, cudaStream_t stream);
// weights (like x) non-null: the second-derivative variant, node weights (-w/h_k, w/h_k).
void launch_shared_dc(dim3 grid, size_t smem, cudaStream_t stream, const float* grad_y,
                      const float* x, const float* borders, float* out, int64_t batch, int n_in,
                      int n_out, int num_grids, bool uniform, bool batch_last, int64_t slice_len,
                      bool accumulate, const float* weights = nullptr);
// Resident blocks per SM of the grouped dC kernel of launch shape kGroupedConfigs[shape] with
// `smem` bytes (sets its limit first).
int grouped_dc_blocks_per_sm(int shape, size_t smem);
void launch_grouped_dc(const GroupedArgs& a, int shape, dim3 grid, size_t smem,
                       cudaStream_t stream);
void launch_sum_slices(const float* ws, float* out, int64_t plane, int slices, cudaStream_t stream);

}  // namespace lmkan1d
}  // namespace lmkan
