// Table packing and unpacking, the tiled transpose and the small copies of the 2D layer's
// host paths (layout.h has the packed layout).
#include <algorithm>
#include <type_traits>

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/images.h"
#include "common/table_type.cuh"
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
constexpr int kPackLoads = 4;                  // rows a thread loads before it stores

// The (cell, output tile, group of 32 pairs) of this block of the pack and unpack kernels: the
// pair group varies fastest, then the tile, then the cell.
struct PackBlock {
  int64_t cell;
  int tile_index, p0, o0;  // first pair and first output of the block
};
__device__ __forceinline__ PackBlock pack_block(int pair_groups, int n_tiles, int width) {
  int64_t b = blockIdx.x;
  const int group = static_cast<int>(b % pair_groups);
  b /= pair_groups;
  const int tile_index = static_cast<int>(b % n_tiles);
  return {b / n_tiles, tile_index, group * kPackPairs, tile_index * width};
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
__global__ void __launch_bounds__(kPackPairs * kPackRows) pack_table_kernel(
    const In* __restrict__ params, Out* __restrict__ packed, float* __restrict__ zeros,
    ZeroLike zero_like, int64_t cells, int n_out, int n_pairs, int width, int n_tiles,
    int pair_groups) {
  __shared__ float tile[kPackMaxWidth][kPackPairs + 1];
  const PackBlock blk = pack_block(pair_groups, n_tiles, width);
  const int64_t c = blk.cell;
  const int tile_index = blk.tile_index, p0 = blk.p0, o0 = blk.o0;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int p = p0 + tx;
  // rows r0 + i * kPackRows, i < kPackLoads, loaded before any is stored: a block moves a
  // few KB, so each thread's loads in flight set the kernel's bandwidth (one at a time:
  // ~2.2 TB/s at G = 26 128 -> 128, 22 us of a 40 us forward call; H200)
  for (int r0 = ty; r0 < width; r0 += kPackLoads * kPackRows) {
    float v[kPackLoads];
#pragma unroll
    for (int i = 0; i < kPackLoads; ++i) {
      const int r = r0 + i * kPackRows, o = o0 + r;
      const bool in = r < width && o < n_out && p < n_pairs;
      const int64_t at = (c * n_out + o) * n_pairs + p;
      v[i] = in ? to_float(params[at]) : 0.f;
      if (in && zero_like == ZeroLike::kParams) zeros[at] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < kPackLoads; ++i) {
      const int r = r0 + i * kPackRows;
      if (r >= width) break;
      if constexpr (std::is_same_v<Round, float>) {
        tile[r][tx] = v[i];
      } else {
        tile[r][tx] = to_float(from_float<Round>(v[i]));
      }
    }
  }
  __syncthreads();
  for (int q = ty; q < kPackPairs && p0 + q < n_pairs; q += kPackRows) {
    const int64_t row = ((int64_t(tile_index) * n_pairs + p0 + q) * cells + c) * width;
    for (int t = tx; t < width; t += kPackPairs) {
      packed[row + t] = from_float<Out>(tile[t][q]);
      if (zero_like == ZeroLike::kPacked) zeros[row + t] = 0.f;
    }
  }
}

at::Tensor pack_table(const at::Tensor& params, int width, at::ScalarType table_dtype,
                      at::ScalarType packed_dtype, at::Tensor* zeros, ZeroLike zero_like) {
  // params: [G+1, G+1, N_out, P] contiguous (float32, float16 or bfloat16) on the current device.
  TORCH_CHECK(width >= 1 && width <= kPackMaxWidth, "pack_table: width ", width, " > ", kPackMaxWidth);
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
  const int pair_groups = (n_pairs + kPackPairs - 1) / kPackPairs;
  const int64_t blocks = cells * n_tiles * pair_groups;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "pack_table: table too large (", blocks, " blocks)");
  switch_table_type(params.scalar_type(), [&](auto in_tag) {
    using In = decltype(in_tag);
    switch_table_type(table_dtype, [&](auto round_tag) {
      using Round = decltype(round_tag);
      const auto launch = [&](auto out_tag) {
        using Out = decltype(out_tag);
        pack_table_kernel<In, Round, Out><<<static_cast<unsigned>(blocks),
                                            dim3(kPackPairs, kPackRows), 0,
                                            c10::cuda::getCurrentCUDAStream()>>>(
            reinterpret_cast<const In*>(params.data_ptr()), reinterpret_cast<Out*>(packed.data_ptr()),
            zeros != nullptr ? zeros->data_ptr<float>() : nullptr, zero_like, cells, n_out,
            n_pairs, width, n_tiles, pair_groups);
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
// inverse of pack_table_kernel, through the same shared-memory transpose. A block takes one
// cell, one output tile and up to 32 pairs: it reads each pair's W-float row (coalesced),
// then writes rows o of 32 consecutive pairs. tile[w][q]: the writes of the first phase go
// to addresses w * 33 + q, 32 different banks for the 32 lanes' w.
__global__ void __launch_bounds__(kPackPairs * kPackRows) unpack_table_kernel(
    const float* __restrict__ ws, float* __restrict__ out, int64_t cells, int n_out,
    int n_pairs, int width, int n_tiles, int pair_groups, int copies) {
  __shared__ float tile[kPackMaxWidth][kPackPairs + 1];
  const PackBlock blk = pack_block(pair_groups, n_tiles, width);
  const int64_t c = blk.cell;
  const int tile_index = blk.tile_index, p0 = blk.p0, o0 = blk.o0;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t copy_stride = int64_t(n_tiles) * n_pairs * cells * width;
  for (int q = ty; q < kPackPairs && p0 + q < n_pairs; q += kPackRows) {
    const float* src = ws + ((int64_t(tile_index) * n_pairs + p0 + q) * cells + c) * width;
    for (int t = tx; t < width; t += kPackPairs) {
      float v = src[t];
      for (int s = 1; s < copies; ++s) v += src[s * copy_stride + t];
      tile[t][q] = v;
    }
  }
  __syncthreads();
  const int p = p0 + tx;
  if (p >= n_pairs) return;
  for (int r = ty; r < width && o0 + r < n_out; r += kPackRows)
    out[(c * n_out + o0 + r) * n_pairs + p] = tile[r][tx];
}

at::Tensor unpack_dp(const at::Tensor& ws, int num_grids, int n_out) {
  TORCH_INTERNAL_ASSERT(ws.is_contiguous() && (ws.dim() == 4 || ws.dim() == 5));
  const int64_t side = num_grids + 1, cells = side * side;
  const int first = static_cast<int>(ws.dim()) - 4;  // a 4-D ws is one copy
  const int copies = first == 0 ? 1 : static_cast<int>(ws.size(0));
  const int n_tiles = static_cast<int>(ws.size(first)), n_pairs = static_cast<int>(ws.size(first + 1));
  const int width = static_cast<int>(ws.size(first + 3));
  TORCH_CHECK(width >= 1 && width <= kPackMaxWidth, "unpack_dp: width ", width, " > ", kPackMaxWidth);
  at::Tensor out = at::empty({side, side, n_out, n_pairs}, ws.options());
  if (out.numel() == 0) return out;
  if (copies == 0) return out.zero_();
  const int pair_groups = (n_pairs + kPackPairs - 1) / kPackPairs;
  const int64_t blocks = cells * n_tiles * pair_groups;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "unpack_dp: table too large (", blocks, " blocks)");
  unpack_table_kernel<<<static_cast<unsigned>(blocks), dim3(kPackPairs, kPackRows), 0,
                        c10::cuda::getCurrentCUDAStream()>>>(
      ws.data_ptr<float>(), out.data_ptr<float>(), cells, n_out, n_pairs, width, n_tiles,
      pair_groups, copies);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace lmkan2d
}  // namespace lmkan
