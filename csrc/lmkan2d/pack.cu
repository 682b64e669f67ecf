// Table packing and unpacking, the tiled transpose and the small copies of the 2D layer's
// host paths (layout.h has the packed layout).
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/images.h"
#include "common/table_type.cuh"
#include "lmkan2d/layout.h"

namespace lmkan {
namespace lmkan2d {

// The pack and unpack kernels move one block tile between the parameters' layout
// [cells, N_out, P] and the packed one Pt [n_tiles, P, cells, W] through shared memory: 32
// pairs x 128 rows, a row being one (cell, output) of an output tile (W outputs), so a tile
// holds 128 / W consecutive cells. In Pt those cells follow each other, so a pair's 128 rows
// are one contiguous run there (512 bytes in float32), and in params a row's 32 pairs are
// 128 contiguous bytes (float32). A thread moves 16 values, 4 vector loads in flight. (The
// kernel before took one cell and 32 x W values per block, a thread 4 scalar loads: 22 us
// of a 40 us forward call at G = 26 128 -> 128 B = 1024, 2.2 TB/s on the H200.)
constexpr int kTilePairs = 32, kTileRows = 128, kTileThreads = 256;
constexpr int kPackMaxWidth = kTileRows;  // W = 8 * tile_size <= 128 (1..8 for sample_threads)
constexpr int kRowsPerPass = kTileThreads / (kTilePairs / 4);  // params side: 8 lanes per row
constexpr int kPasses = kTileRows / kRowsPerPass;               // 4 rows per thread

// The block's (first cell, output tile, first pair): the pair group varies fastest, then the
// output tile, then the group of cells.
struct TileBlock {
  int64_t c0;      // first cell
  int rows;        // rows of the block: (cells of the block) * W
  int tile_index, p0;
};
struct TileShape {
  int64_t cells;
  int n_out, n_pairs, width_log2, n_tiles, pair_groups;
  bool vec_pairs;  // 4 pairs per vector access on the params side (P % 4 == 0, aligned)
  bool vec_rows;   // 4 rows per vector access on the packed side (W >= 4)
};
__device__ __forceinline__ TileBlock tile_block(const TileShape& s) {
  int64_t b = blockIdx.x;
  const int group = static_cast<int>(b % s.pair_groups);
  b /= s.pair_groups;
  const int tile_index = static_cast<int>(b % s.n_tiles);
  const int cells_per_tile = kTileRows >> s.width_log2;
  const int64_t c0 = (b / s.n_tiles) * cells_per_tile;
  const int64_t left = s.cells - c0;
  const int rows = static_cast<int>(left < cells_per_tile ? left : cells_per_tile) << s.width_log2;
  return {c0, rows, tile_index, group * kTilePairs};
}

// Shared-memory slot of (pair q, row r): pair-major, the 16-byte chunk r / 4 of a pair
// stored at chunk (r / 4) XOR ((q / 4) % 8). The params side (a warp: 4 rows x 8 lanes, a
// lane 4 consecutive pairs of one row, one scalar access per pair) then touches 32 banks:
// the 8 lanes' pairs q / 4 differ, so do their chunks mod 8, and the 4 rows fill a chunk.
// The packed side (a warp: one pair, lane l the chunk l, a 16-byte access; or rows l + 32 j
// one value at a time) reads each quarter-warp's 8 chunks from different bank groups.
__device__ __forceinline__ int tile_slot(int q, int r) {
  return q * kTileRows + (((r >> 2) ^ ((q >> 2) & 7)) << 2) + (r & 3);
}

// Four consecutive parameters p..p+3 of params row `row` (values past n_pairs: 0), as float.
template <typename In>
__device__ __forceinline__ void load_pairs4(const In* __restrict__ row, int p, int n_pairs,
                                            bool vec, float (&v)[4]) {
  if (vec) {  // p % 4 == 0 and the row aligned: one 16- (float) or 8-byte (16-bit) load
    if (p < n_pairs) {
      const float4 f = load_table4(row, p / 4);
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    } else {
      v[0] = v[1] = v[2] = v[3] = 0.f;
    }
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = p + k < n_pairs ? to_float(row[p + k]) : 0.f;
  }
}

// Four floats at `at` (the pairs p..p+3 of a row, or 4 rows of a pair), one vector store
// when `vec`, else those below `n`.
__device__ __forceinline__ void store4(float* __restrict__ at, const float (&v)[4], bool vec,
                                       int n) {
  if (vec) {
    store_table4(at, make_float4(v[0], v[1], v[2], v[3]));
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < n) at[k] = v[k];
  }
}

// Table values as the kernels see them: read in the parameters' dtype (In), rounded to the
// table dtype (Round; float: as given), stored in the packed copy's dtype (Out: the table
// dtype for the 16-bit kernels, or float32 holding the rounded values for the kernels that
// read float32 tables, so that every kernel of a call computes with the same table).

// zeros (optional, float32): set to zero in the same pass, at the index of every element
// the block reads (ZeroLike::kParams: a tensor shaped as params) or writes (kPacked: shaped
// as the packed table). The backward's dP accumulators need zeros; a memset would be one
// more host call per backward (host-bound small steps, issue 16).
template <typename In, typename Round, typename Out>
__global__ void __launch_bounds__(kTileThreads) pack_table_kernel(
    const In* __restrict__ params, Out* __restrict__ packed, float* __restrict__ zeros,
    ZeroLike zero_like, const TileShape s) {
  __shared__ __align__(16) float tile[kTilePairs * kTileRows];
  const TileBlock blk = tile_block(s);
  const int width = 1 << s.width_log2;
  // params side: thread t takes pairs p0 + 4 quad .. p0 + 4 quad + 3 (quad = t % 8) of the
  // rows t / 8 + 32 i
  const int quad = threadIdx.x % 8, p = blk.p0 + 4 * quad;
  float v[kPasses][4];
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = threadIdx.x / 8 + kRowsPerPass * i;
    const int o = blk.tile_index * width + (r & (width - 1));
    const int64_t at = ((blk.c0 + (r >> s.width_log2)) * s.n_out + o) * s.n_pairs + p;
    if (r < blk.rows && o < s.n_out) {
      load_pairs4(params + at - p, p, s.n_pairs, s.vec_pairs, v[i]);
      if (zero_like == ZeroLike::kParams && p < s.n_pairs) {
        const float z[4] = {0.f, 0.f, 0.f, 0.f};
        store4(zeros + at, z, s.vec_pairs, s.n_pairs - p);
      }
    } else {  // a padding output of the last tile (packed as 0), or past the last cell
      v[i][0] = v[i][1] = v[i][2] = v[i][3] = 0.f;
    }
  }
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = threadIdx.x / 8 + kRowsPerPass * i;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float x = v[i][k];
      if constexpr (!std::is_same_v<Round, float>) x = to_float(from_float<Round>(x));
      tile[tile_slot(4 * quad + k, r)] = x;
    }
  }
  __syncthreads();
  // packed side: warp `wq` takes pairs wq, wq + 8, ...; a pair's rows are contiguous in Pt
  const int wq = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int q = wq; q < kTilePairs && blk.p0 + q < s.n_pairs; q += kTileThreads / 32) {
    const int64_t base =
        ((int64_t(blk.tile_index) * s.n_pairs + blk.p0 + q) * s.cells + blk.c0) * width;
    if (s.vec_rows) {  // W % 4 == 0: rows 4 lane .. 4 lane + 3 are one aligned chunk
      const int r = 4 * lane;
      if (r < blk.rows) {
        store_table4(packed + base + r, *reinterpret_cast<const float4*>(&tile[tile_slot(q, r)]));
        if (zero_like == ZeroLike::kPacked)
          store_table4(zeros + base + r, make_float4(0.f, 0.f, 0.f, 0.f));
      }
    } else {
#pragma unroll
      for (int j = 0; j < kTileRows / 32; ++j) {
        const int r = lane + 32 * j;
        if (r >= blk.rows) break;
        packed[base + r] = from_float<Out>(tile[tile_slot(q, r)]);
        if (zero_like == ZeroLike::kPacked) zeros[base + r] = 0.f;
      }
    }
  }
}

namespace {

// The block tile's shape for params [G+1, G+1, N_out, P] (or dP) and a packed width.
TileShape tile_shape(int64_t cells, int n_out, int n_pairs, int width, bool vec_pairs) {
  TORCH_CHECK(width >= 1 && width <= kPackMaxWidth && (width & (width - 1)) == 0,
              "lmkan2d: a packed width is a power of two up to ", kPackMaxWidth, ", got ", width);
  int width_log2 = 0;
  while ((1 << width_log2) < width) ++width_log2;
  const int n_tiles = (n_out + width - 1) / width;
  const int pair_groups = (n_pairs + kTilePairs - 1) / kTilePairs;
  return {cells, n_out, n_pairs, width_log2, n_tiles, pair_groups, vec_pairs && n_pairs % 4 == 0,
          width % 4 == 0};
}

int64_t tile_blocks(const TileShape& s) {
  const int cells_per_tile = kTileRows >> s.width_log2;
  const int64_t cell_groups = (s.cells + cells_per_tile - 1) / cells_per_tile;
  const int64_t blocks = cell_groups * s.n_tiles * s.pair_groups;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "lmkan2d: table too large to pack (", blocks,
              " blocks)");
  return blocks;
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

at::Tensor pack_table(const at::Tensor& params, int width, at::ScalarType table_dtype,
                      at::ScalarType packed_dtype, at::Tensor* zeros, ZeroLike zero_like) {
  // params: [G+1, G+1, N_out, P] contiguous (float32, float16 or bfloat16) on the current device.
  TORCH_CHECK(packed_dtype == at::kFloat || packed_dtype == table_dtype,
              "pack_table: a packed table is float32 or the table dtype, got ", packed_dtype,
              " for table dtype ", table_dtype);
  const int64_t side = params.size(0);
  const int64_t cells = side * side;
  const int n_out = static_cast<int>(params.size(2));
  const int n_pairs = static_cast<int>(params.size(3));
  const int n_tiles = (n_out + width - 1) / width;
  at::Tensor packed = at::empty({n_tiles, n_pairs, cells, width}, params.options().dtype(packed_dtype));
  TORCH_CHECK((zeros == nullptr) == (zero_like == ZeroLike::kNone),
              "pack_table: a zeroed tensor comes with its layout");
  if (zeros != nullptr)
    *zeros = at::empty(zero_like == ZeroLike::kPacked ? packed.sizes() : params.sizes(),
                       params.options().dtype(at::kFloat));
  if (packed.numel() == 0) return packed;  // no pairs: zeros is empty too
  // 4-pair vector loads: 16 bytes (float32) or 8 (16-bit) from a row start
  const bool vec_pairs = aligned(params.data_ptr(), 4 * params.element_size());
  const TileShape shape = tile_shape(cells, n_out, n_pairs, width, vec_pairs);
  const int64_t blocks = tile_blocks(shape);
  switch_table_type(params.scalar_type(), [&](auto in_tag) {
    using In = decltype(in_tag);
    switch_table_type(table_dtype, [&](auto round_tag) {
      using Round = decltype(round_tag);
      const auto launch = [&](auto out_tag) {
        using Out = decltype(out_tag);
        pack_table_kernel<In, Round, Out><<<static_cast<unsigned>(blocks), kTileThreads, 0,
                                            c10::cuda::getCurrentCUDAStream()>>>(
            reinterpret_cast<const In*>(params.data_ptr()), reinterpret_cast<Out*>(packed.data_ptr()),
            zeros != nullptr ? zeros->data_ptr<float>() : nullptr, zero_like, shape);
      };
      if (packed_dtype == at::kFloat) {
        launch(float{});
      } else {
        launch(Round{});
      }
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return packed;
}

// out[c][r] = in[r][c] for in: [rows, cols], out: [cols, ld] with r < rows, and zero for
// rows <= r < ld (the padded rows the sorted backward reads); with `splits` > 1, in is
// [splits, rows, cols] and out the transposed sum over splits (the batch-first forward's
// pair-split partials, written batch-last by the kernel: coalesced stores). kImages: in holds
// images [N, rows, L] (common/images.h), whose N * L = cols samples are the columns (the
// sorted backward's grad_y of a 1x1 convolution, one copy as for a plain batch-last grad_y).
// One block moves one 32 x 32
// tile through shared memory so that the reads and the writes are both coalesced (ATen's
// copy of a transposed view reads or writes with a stride: ~8x slower at these shapes,
// measured in the version 7 round). The tile row is 33 floats, so the column reads of the
// second phase fall into 32 different banks. Tiles are numbered on one grid axis (int64
// arithmetic), so neither side is limited to 65535 tiles.
constexpr int kTransposeTile = 32, kTransposeRows = 8;  // 32 x 8 threads, 4 elements each

// E: float, or a 16-bit element moved as such (unsigned short: a 16-bit grad_y of the
// sorted backward; splits == 1 there).
template <typename E, bool kImages>
__global__ void __launch_bounds__(kTransposeTile * kTransposeRows) transpose_kernel(
    const E* __restrict__ in, E* __restrict__ out, int64_t rows, int64_t cols,
    int64_t ld, int64_t col_tiles, int64_t splits, const SampleOffsets images) {
  __shared__ E tile[kTransposeTile][kTransposeTile + 1];
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) / col_tiles) * kTransposeTile;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) % col_tiles) * kTransposeTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t split_stride = rows * cols;
#pragma unroll
  for (int i = ty; i < kTransposeTile; i += kTransposeRows) {
    const int64_t r = r0 + i, c = c0 + tx;
    E v = E(0);
    if (r < rows && c < cols) {
      if constexpr (kImages) {  // row r of sample c's image
        v = in[r * images.len + images(c)];
      } else {
        v = in[r * cols + c];
        if constexpr (std::is_same_v<E, float>) {
          for (int64_t s = 1; s < splits; ++s) v += in[s * split_stride + r * cols + c];
        }
      }
    }
    tile[i][tx] = v;
  }
  __syncthreads();
#pragma unroll
  for (int i = ty; i < kTransposeTile; i += kTransposeRows) {
    const int64_t c = c0 + i, r = r0 + tx;
    if (c < cols && r < ld) out[c * ld + r] = tile[tx][i];
  }
}

namespace {

// The element type the copies move a tensor's values as: float32 as float, a 16-bit dtype
// as its bits (no arithmetic on them).
template <typename Body>
void switch_copy_type(const at::Tensor& t, Body&& body) {
  if (t.scalar_type() == at::kFloat) return body(float{});
  TORCH_INTERNAL_ASSERT(t.element_size() == 2, "lmkan2d: a copy of ", t.scalar_type());
  return body(static_cast<unsigned short>(0));
}

// out [cols, ld] from in [splits, rows, cols] (contiguous), or from images in [N, rows, L]
// (cols = N L, one split): the sum over splits (in order), transposed, zero past `rows`.
// float32, or a 16-bit dtype with one split.
at::Tensor launch_transpose(const at::Tensor& in, int64_t splits, int64_t rows, int64_t cols,
                            int64_t ld, const SampleOffsets* images = nullptr) {
  ld = std::max(ld, rows);
  at::Tensor out = at::empty({cols, ld}, in.options());
  if (ld == 0 || cols == 0) return out;
  const int64_t col_tiles = (cols + kTransposeTile - 1) / kTransposeTile;
  const int64_t tiles = (ld + kTransposeTile - 1) / kTransposeTile * col_tiles;
  TORCH_CHECK(tiles < (int64_t(1) << 31), "lmkan2d: tensor too large to transpose (", rows, " x ",
              cols, ")");
  TORCH_INTERNAL_ASSERT(splits == 1 || in.scalar_type() == at::kFloat);
  switch_copy_type(in, [&](auto tag) {
    using E = decltype(tag);
    const auto kernel = images != nullptr ? transpose_kernel<E, true> : transpose_kernel<E, false>;
    kernel<<<static_cast<unsigned>(tiles), dim3(kTransposeTile, kTransposeRows), 0,
             c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<const E*>(in.data_ptr()), static_cast<E*>(out.data_ptr()), rows, cols, ld,
        col_tiles, splits, images != nullptr ? *images : SampleOffsets{});
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

at::Tensor transpose(const at::Tensor& in_any, int64_t ld) {
  const at::Tensor in = in_any.contiguous();
  if (in.dim() == 3) {  // images [N, rows, L]: the caller keeps N L within kMaxImageSamples
    const int64_t rows = in.size(1), len = in.size(2), cols = in.size(0) * len;
    TORCH_INTERNAL_ASSERT(cols <= kMaxImageSamples, "transpose: ", cols, " image samples");
    const SampleOffsets images = image_offsets(rows, len);
    return launch_transpose(in, 1, rows, cols, ld, &images);
  }
  return launch_transpose(in, 1, in.size(0), in.size(1), ld);
}

at::Tensor sum_splits_transposed(const at::Tensor& parts) {
  TORCH_INTERNAL_ASSERT(parts.is_contiguous() && parts.dim() == 3);
  return launch_transpose(parts, parts.size(0), parts.size(1), parts.size(2), 0);
}

// out[r][c] = c < cols ? in[r][c] : 0 for out [rows, ld]: one launch where constant_pad_nd
// takes a fill, a view and a copy (host cost of the small training step, issue 16).
template <typename E>
__global__ void pad_columns_kernel(const E* __restrict__ in, E* __restrict__ out,
                                   int64_t cols, int64_t ld, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / ld, c = i - r * ld;
    out[i] = c < cols ? in[r * cols + c] : E(0);
  }
}

at::Tensor pad_columns(const at::Tensor& in_any, int64_t ld) {
  const at::Tensor in = in_any.contiguous();
  const int64_t rows = in.size(0), cols = in.size(1);
  if (ld <= cols) return in;
  at::Tensor out = at::empty({rows, ld}, in.options());
  const int64_t n = rows * ld;
  if (n == 0) return out;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
  switch_copy_type(in, [&](auto tag) {
    using E = decltype(tag);
    pad_columns_kernel<E><<<blocks, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<const E*>(in.data_ptr()), static_cast<E*>(out.data_ptr()), cols, ld, n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// out [cells, N_out, P] = sum over copies s (in order) of ws[s] [n_tiles, P, cells, W]: the
// inverse of pack_table_kernel, through the same block tile (tile_slot): the packed side reads
// each pair's contiguous rows (the copies summed there), the params side writes 4 pairs of a
// row per lane.
__global__ void __launch_bounds__(kTileThreads) unpack_table_kernel(
    const float* __restrict__ ws, float* __restrict__ out, const TileShape s, int copies) {
  __shared__ __align__(16) float tile[kTilePairs * kTileRows];
  const TileBlock blk = tile_block(s);
  const int width = 1 << s.width_log2;
  const int64_t copy_stride = int64_t(s.n_tiles) * s.n_pairs * s.cells * width;
  const int wq = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int q = wq; q < kTilePairs && blk.p0 + q < s.n_pairs; q += kTileThreads / 32) {
    const float* src =
        ws + ((int64_t(blk.tile_index) * s.n_pairs + blk.p0 + q) * s.cells + blk.c0) * width;
    if (s.vec_rows) {  // rows 4 lane .. 4 lane + 3: one aligned chunk
      const int r = 4 * lane;
      if (r < blk.rows) {
        float4 v = *reinterpret_cast<const float4*>(src + r);
        for (int c = 1; c < copies; ++c) {
          const float4 u = *reinterpret_cast<const float4*>(src + c * copy_stride + r);
          v.x += u.x, v.y += u.y, v.z += u.z, v.w += u.w;
        }
        *reinterpret_cast<float4*>(&tile[tile_slot(q, r)]) = v;
      }
    } else {
#pragma unroll
      for (int j = 0; j < kTileRows / 32; ++j) {
        const int r = lane + 32 * j;
        if (r >= blk.rows) break;
        float v = src[r];
        for (int c = 1; c < copies; ++c) v += src[c * copy_stride + r];
        tile[tile_slot(q, r)] = v;
      }
    }
  }
  __syncthreads();
  const int quad = threadIdx.x % 8, p = blk.p0 + 4 * quad;
  if (p >= s.n_pairs) return;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = threadIdx.x / 8 + kRowsPerPass * i;
    const int o = blk.tile_index * width + (r & (width - 1));
    if (r >= blk.rows || o >= s.n_out) continue;
    float v[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = tile[tile_slot(4 * quad + k, r)];
    store4(out + ((blk.c0 + (r >> s.width_log2)) * s.n_out + o) * s.n_pairs + p, v, s.vec_pairs,
           s.n_pairs - p);
  }
}

at::Tensor unpack_dp(const at::Tensor& ws, int num_grids, int n_out) {
  TORCH_INTERNAL_ASSERT(ws.is_contiguous() && (ws.dim() == 4 || ws.dim() == 5));
  const int64_t side = num_grids + 1, cells = side * side;
  const int first = static_cast<int>(ws.dim()) - 4;  // a 4-D ws is one copy
  const int copies = first == 0 ? 1 : static_cast<int>(ws.size(0));
  const int n_pairs = static_cast<int>(ws.size(first + 1));
  const int width = static_cast<int>(ws.size(first + 3));
  at::Tensor out = at::empty({side, side, n_out, n_pairs}, ws.options());
  if (out.numel() == 0) return out;
  if (copies == 0) return out.zero_();
  TileShape shape = tile_shape(cells, n_out, n_pairs, width, /*vec_pairs=*/true);
  TORCH_INTERNAL_ASSERT(shape.n_tiles == ws.size(first), "unpack_dp: ", ws.size(first),
                        " output tiles of width ", width, " for ", n_out, " outputs");
  shape.vec_rows = shape.vec_rows && aligned(ws.data_ptr(), 16);  // out: a fresh allocation
  unpack_table_kernel<<<static_cast<unsigned>(tile_blocks(shape)), kTileThreads, 0,
                        c10::cuda::getCurrentCUDAStream()>>>(ws.data_ptr<float>(),
                                                             out.data_ptr<float>(), shape, copies);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace lmkan2d
}  // namespace lmkan
