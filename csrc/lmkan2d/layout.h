// Shared pieces of the LMKAN2DLayer CUDA kernels (docs/spec.md section 2).
//
// Table layout used by the kernels: the parameters [G+1, G+1, N_out, N_in/2] are first
// repacked into a tiled table Pt of shape [n_tiles, N_in/2, (G+1)^2, W] with W = 8 *
// tile_size outputs per tile (contiguous, zero-padded past N_out). The slice of one
// (tile, pair) is then one contiguous run of (G+1)^2 * W floats, so staging it in shared
// memory is one bulk copy, and a corner of a cell is one W-float row that the 32 lanes of a
// warp read together (tile_size / 4 floats each).
//
// Layouts of x / y / grad_y / grad_x are described by strides: element (feature f, sample b)
// sits at f * stride_feature + b * stride_batch (batch_last: stride_batch = 1).
//
// This header is what the kernels' files and the host code (forward.cpp, backward.cpp,
// max_num_grids.cpp) share: launch shapes, shared-memory footprints, the kernel entry points.
//
// Names: `tile` is a tile size (tile_size: 4, 8 or 16; W = 8 * tile outputs per output tile)
// in host code and in these functions; in kernels, `tile_index` says which output tile.
#pragma once
#include <cstdint>
#include <string>
#include <tuple>
#include <cuda_runtime.h>
#include <ATen/core/Tensor.h>

#include "common/device_limits.h"

namespace lmkan {
namespace lmkan2d {

at::Tensor pack_table(const at::Tensor& params, int width);
// [rows, cols] -> contiguous [cols, rows] through 32 x 32 shared-memory tiles.
at::Tensor transpose(const at::Tensor& in);
// dP workspace [copies, n_tiles, P, cells, W] -> sum over copies (fixed order) ->
// [G+1, G+1, N_out, P].
at::Tensor unpack_dp(const at::Tensor& ws, int num_grids, int n_out);

// Shared-memory footprints (bytes) of each kernel configuration; the host code and
// lmkan2d_max_num_grids use the same functions, so the limit and the launch agree.
// Forward kernel: each lane of a warp owns K consecutive outputs, so an output tile is
// W = 32K outputs; tile_size 4, 8, 16 selects K = 1, 2, 4.
constexpr int forward_lanes_outputs(int tile) { return tile / 4; }
// Samples per lane: 64 accumulators per thread for blocks of up to 256 threads (<= 128
// registers, two blocks per SM), 32 for 512- and 1024-thread blocks (<= 64 registers).
constexpr int samples_per_lane(int k, int block) { return (block > 256 ? 32 : 64) / k; }
// Samples per lane of the grad_x variant of the forward kernel (grad_y kept in 32 registers
// per lane; 8 at K = 4 so that a transpose-reduce round of 16 sums still fits).
constexpr int dx_samples_per_lane(int k) { return k == 4 ? 8 : 32 / k; }
// grad_x by the forward kernel's scheme (lanes own consecutive outputs, TMA-staged table,
// cells broadcast): float atomics over output tiles and pair splits. Returns an undefined
// tensor when `deterministic` and more than one output tile would write an entry.
at::Tensor dx_by_output_rows(const at::Tensor& x, const at::Tensor& params,
                             const at::Tensor& borders, const at::Tensor& gy, bool batch_last,
                             int tile, int block_size, bool deterministic);
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
inline int64_t sample_lanes_smem_bytes(int num_grids, int w, int nbuf) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  return sample_lanes_table_offset(num_grids) + int64_t(nbuf) * cells * w * 4;
}
// y [N_out, B] from x [N_in, B] (contiguous, batch-last) with that kernel.
at::Tensor forward_by_sample_lanes(const at::Tensor& x, const at::Tensor& params,
                                   const at::Tensor& borders, int tile, int block);

// ---- Backward (backward.cpp, grad_x.cu, grad_params.cu, backward_runs.cu) ----
// Non-deterministic backward over cell-sorted chunks (backward_runs.cu), both modes: (grad_x,
// grad_params), or undefined tensors when num_grids is too large for its histogram (or a
// narrow output would need a large padded copy of grad_y). chunk_bytes: grad_y rows per
// chunk; the sorted buffer is P x chunk x 16 bytes (R24 on the H100: 8 MB chunks took +23%
// at G=26 and +3% at G=8 against 32 MB).
constexpr int64_t kRunChunkBytesNormal = int64_t(8) << 20;
constexpr int64_t kRunChunkBytesFast = int64_t(32) << 20;
// Its shared memory bound: the cell histogram of the sort, (G+1)^2 counters (bytes).
inline int64_t runs_bucket_smem_bytes(int num_grids) {
  const int64_t side = num_grids + 1;
  return (side * side + 33 + side) * 4;
}
std::tuple<at::Tensor, at::Tensor> backward_by_runs(const at::Tensor& x, const at::Tensor& params,
                                                    const at::Tensor& borders, const at::Tensor& gy,
                                                    bool batch_last, int tile, int block_size,
                                                    int64_t chunk_bytes);
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


// ---- Kernel entry points of the deterministic (or declined) backward ----
// grad_x by dx_kernel (grad_x.cu): tiles added in a fixed order, no atomics.
at::Tensor dx_by_sample_tiles(const at::Tensor& x, const at::Tensor& params,
                              const at::Tensor& borders, const at::Tensor& gy, int tile,
                              int64_t batch, int n_out, int n_pairs, int num_grids, int block,
                              const DeviceLimits& lim, int64_t xs_f, int64_t xs_b, int64_t gs_f,
                              int64_t gs_b);
// grad_params by cell-sorted chunks (grad_params.cu) when its accumulator fits in shared
// memory; an undefined tensor otherwise.
at::Tensor dp_by_sorted_chunks(const at::Tensor& x, const at::Tensor& borders,
                               const at::Tensor& gy, int tile, int64_t batch, int n_out,
                               int n_pairs, int num_grids, int block, bool fast, bool batch_last,
                               const DeviceLimits& lim, int64_t xs_f, int64_t xs_b);
// grad_params by per-warp accumulators (grad_params.cu), in shared or global memory.
at::Tensor dp_by_warp_accumulators(const at::Tensor& x, const at::Tensor& borders,
                                   const at::Tensor& gy, int tile, int64_t batch, int n_out,
                                   int n_pairs, int num_grids, int block, bool fast,
                                   bool batch_last, bool deterministic, const DeviceLimits& lim,
                                   int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b);
// The forward for num_grids whose table slice does not fit in shared memory: the
// output-lanes kernel with the table read through L1/L2 (output_lanes.cu). x batch-last.
at::Tensor forward_by_output_lanes(const at::Tensor& x, const at::Tensor& params,
                                   const at::Tensor& borders, int tile, int block);

int max_num_grids_for(int tile, const std::string& mode, int device_index);

// Host checks shared by the forward and backward ops (ValueError on bad arguments).
void check_common(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                  bool batch_last, int64_t tile_size, int64_t block_size, const char* op);

}  // namespace lmkan2d
}  // namespace lmkan
