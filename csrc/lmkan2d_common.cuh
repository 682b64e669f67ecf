// Shared pieces of the LMKAN2DLayer CUDA kernels (SPEC.md section 2).
//
// Table layout used by the kernels: the parameters [G+1, G+1, N_out, N_in/2] are first
// repacked into a tiled table Pt of shape [n_tiles, N_in/2, (G+1)^2, TILE] (outputs of a
// tile contiguous, zero-padded past N_out). The slice of one (tile, pair) is then one
// contiguous run of (G+1)^2 * TILE floats, so staging it in shared memory is a plain
// vectorised copy, and the 4 corners of a cell are TILE/4 float4 reads each.
//
// Layouts of x / y / grad_y / grad_x are described by strides: element (feature f, sample b)
// sits at f * stride_feature + b * stride_batch (batch_last: stride_batch = 1).
#pragma once
#include <cstdint>
#include <string>
#include <cuda_runtime.h>
#include <ATen/core/Tensor.h>

#include "grid.cuh"

namespace lmkan {
namespace lmkan2d {

// Per-device limits, read once per device.
struct DeviceLimits {
  int smem_optin;      // largest dynamic shared memory per block (bytes)
  int smem_per_sm;     // shared memory per SM (bytes)
  int num_sms;
};
DeviceLimits device_limits(int device_index);

// Repack params [G+1, G+1, N_out, P] into Pt [n_tiles, P, (G+1)^2, tile] (zero padding).
at::Tensor pack_table(const at::Tensor& params, int tile);

// Shared-memory footprints (bytes) of each kernel configuration; the host code and
// lmkan2d_max_num_grids use the same functions, so the limit and the launch agree.
// dx kernel: pairs_per_stage table slices [cells][dx_row(tile)] plus the borders. Rows are
// padded to tile + 4 floats (tile 8, 16) so that rows of random cells start in different
// 16-byte bank groups.
constexpr int dx_row(int tile) { return tile == 4 ? 4 : tile + 4; }
inline int64_t dx_smem_bytes(int num_grids, int tile, int pairs_per_stage) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  return cells * dx_row(tile) * pairs_per_stage * 4 + int64_t(num_grids + 1) * 4 + 16;
}
// Forward kernel: each lane of a warp owns K consecutive outputs, so an output tile is
// W = 32K outputs; tile_size 4, 8, 16 selects K = 1, 2, 4.
constexpr int forward_lanes_outputs(int tile) { return tile / 4; }
// Samples per lane: 64 accumulators per thread for blocks of up to 256 threads (<= 128
// registers, two blocks per SM), 32 for 512- and 1024-thread blocks (<= 64 registers).
constexpr int samples_per_lane(int k, int block) { return (block > 256 ? 32 : 64) / k; }
// Shared memory: two mbarriers (16 bytes), nbuf table slices [cells][W], the cells of two
// pairs [2][samples] as float4, the borders.
inline int64_t forward_smem_bytes(int num_grids, int w, int nbuf, int samples_per_block) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  return 16 + cells * w * 4 * nbuf + int64_t(samples_per_block) * 2 * 16 +
         int64_t(num_grids + 1) * 4 + 16;
}

// dP kernel: an accumulator [(G+1)^2][slots] plus a chunk of staged samples:
// grad_y [chunk][tile] and per (sample, pair) a float4 (cell index, d1, d2, 0).
inline int64_t dp_smem_bytes(int num_grids, int tile, int slots, int chunk) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  const int64_t pairs = slots / tile;
  return cells * slots * 4 + int64_t(chunk) * tile * 4 + pairs * chunk * 16 +
         int64_t(num_grids + 1) * 4 + 16;
}

constexpr int kDxPairs = 4;  // input pairs whose dx a dx-thread keeps in registers

int max_num_grids_for(int tile, const std::string& mode, int device_index);

// Host checks shared by the forward and backward ops (ValueError on bad arguments).
void check_common(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                  bool batch_last, int64_t tile_size, int64_t block_size, const char* op);

}  // namespace lmkan2d
}  // namespace lmkan
