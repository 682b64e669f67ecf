// Table packing and the tiled transpose of the 2D layer (layout.h has the packed layout).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "lmkan2d/layout.h"

namespace lmkan {
namespace lmkan2d {

// Pt [n_tiles, P, cells, W] from params [cells, N_out, P], through a shared-memory
// transpose: a block takes one cell, one output tile (W outputs) and up to 32 pairs. Reads:
// each warp reads rows o of 32 consecutive pairs (128 bytes); writes: for each pair, the W
// outputs of the cell are one contiguous run. (Before, one thread per packed element read
// params with a stride of P floats: 8 sectors per useful one, ~0.12 ms per step of the small
// G=26 128->128 case in R8.) The tile row is 33 floats: the transposed reads of the second
// phase fall into 32 different banks.
constexpr int kPackPairs = 32, kPackRows = 8;  // block: 32 x 8 threads
constexpr int kPackMaxWidth = 128;             // W = 8 * tile_size <= 128

__global__ void __launch_bounds__(kPackPairs * kPackRows) pack_table_kernel(
    const float* __restrict__ params, float* __restrict__ packed, int64_t cells, int n_out,
    int n_pairs, int width, int n_tiles, int pair_groups) {
  __shared__ float tile[kPackMaxWidth][kPackPairs + 1];
  int64_t b = blockIdx.x;
  const int group = static_cast<int>(b % pair_groups);
  b /= pair_groups;
  const int tile_index = static_cast<int>(b % n_tiles);
  const int64_t c = b / n_tiles;
  const int p0 = group * kPackPairs, o0 = tile_index * width;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int p = p0 + tx;
  for (int r = ty; r < width; r += kPackRows) {
    const int o = o0 + r;
    tile[r][tx] = (o < n_out && p < n_pairs) ? params[(c * n_out + o) * n_pairs + p] : 0.f;
  }
  __syncthreads();
  for (int q = ty; q < kPackPairs && p0 + q < n_pairs; q += kPackRows) {
    float* dst = packed + ((int64_t(tile_index) * n_pairs + p0 + q) * cells + c) * width;
    for (int t = tx; t < width; t += kPackPairs) dst[t] = tile[t][q];
  }
}

at::Tensor pack_table(const at::Tensor& params, int width) {
  // params: [G+1, G+1, N_out, P] contiguous float32 on the current device.
  TORCH_CHECK(width >= 1 && width <= kPackMaxWidth, "pack_table: width ", width, " > ", kPackMaxWidth);
  const int64_t side = params.size(0);
  const int64_t cells = side * side;
  const int n_out = static_cast<int>(params.size(2));
  const int n_pairs = static_cast<int>(params.size(3));
  const int n_tiles = (n_out + width - 1) / width;
  at::Tensor packed = at::empty({n_tiles, n_pairs, cells, width}, params.options());
  if (packed.numel() == 0) return packed;
  const int pair_groups = (n_pairs + kPackPairs - 1) / kPackPairs;
  const int64_t blocks = cells * n_tiles * pair_groups;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "pack_table: table too large (", blocks, " blocks)");
  pack_table_kernel<<<static_cast<unsigned>(blocks), dim3(kPackPairs, kPackRows), 0,
                      c10::cuda::getCurrentCUDAStream()>>>(
      params.data_ptr<float>(), packed.data_ptr<float>(), cells, n_out, n_pairs, width, n_tiles,
      pair_groups);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return packed;
}

// out[c][r] = in[r][c] for in: [rows, cols], out: [cols, rows], both contiguous. One block
// moves one 32 x 32 tile through shared memory so that the reads and the writes are both
// coalesced (ATen's copy of a transposed view reads or writes with a stride: ~8x slower at
// these shapes, measured in the version 7 round). The tile row is 33 floats, so the column
// reads of the second phase fall into 32 different banks. Tiles are numbered on one grid
// axis (int64 arithmetic), so neither side is limited to 65535 tiles.
constexpr int kTransposeTile = 32, kTransposeRows = 8;  // 32 x 8 threads, 4 elements each

__global__ void __launch_bounds__(kTransposeTile * kTransposeRows) transpose_kernel(
    const float* __restrict__ in, float* __restrict__ out, int64_t rows, int64_t cols,
    int64_t col_tiles) {
  __shared__ float tile[kTransposeTile][kTransposeTile + 1];
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) / col_tiles) * kTransposeTile;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) % col_tiles) * kTransposeTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
  for (int i = ty; i < kTransposeTile; i += kTransposeRows) {
    const int64_t r = r0 + i, c = c0 + tx;
    if (r < rows && c < cols) tile[i][tx] = in[r * cols + c];
  }
  __syncthreads();
#pragma unroll
  for (int i = ty; i < kTransposeTile; i += kTransposeRows) {
    const int64_t c = c0 + i, r = r0 + tx;
    if (c < cols && r < rows) out[c * rows + r] = tile[tx][i];
  }
}

// [rows, cols] -> contiguous [cols, rows] (float32, any strides in; on the current stream).
at::Tensor transpose(const at::Tensor& in_any) {
  const at::Tensor in = in_any.contiguous();
  const int64_t rows = in.size(0), cols = in.size(1);
  at::Tensor out = at::empty({cols, rows}, in.options());
  if (rows == 0 || cols == 0) return out;
  const int64_t col_tiles = (cols + kTransposeTile - 1) / kTransposeTile;
  const int64_t tiles = (rows + kTransposeTile - 1) / kTransposeTile * col_tiles;
  TORCH_CHECK(tiles < (int64_t(1) << 31), "lmkan2d: tensor too large to transpose (", rows, " x ",
              cols, ")");
  transpose_kernel<<<static_cast<unsigned>(tiles), dim3(kTransposeTile, kTransposeRows), 0,
                     c10::cuda::getCurrentCUDAStream()>>>(in.data_ptr<float>(), out.data_ptr<float>(),
                                                          rows, cols, col_tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace lmkan2d
}  // namespace lmkan
