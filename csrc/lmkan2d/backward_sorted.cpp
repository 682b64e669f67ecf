// The sorted backward's host code (LMKAN2DLayer backward when not deterministic, both modes):
// grad_y as rows, the packed table and the zeroed dP workspace, then per chunk of the batch
// the cell sort (cell_sort.cu) and the runs kernel that plan_runs (plan.h) chooses, FMAs
// (backward_runs.cu, whose header has the scheme) or tensor cores (backward_runs_mma.cu).
//
// The chunk (S samples) is sized so that its grad_y rows take chunk_bytes (8 MB in normal
// mode, 24 MB in fast mode: footprints.h), so that they stay in L2 while every pair re-reads
// them.
#include <algorithm>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAStream.h>

#include "common/device_limits.h"
#include "common/images.h"
#include "lmkan2d/layout.h"
#include "lmkan2d/plan.h"
#include "lmkan2d/runs.h"

namespace lmkan {
namespace lmkan2d {

std::tuple<at::Tensor, at::Tensor> backward_by_runs(const at::Tensor& x, const at::Tensor& params,
                                                    const at::Tensor& borders, const at::Tensor& gy,
                                                    bool batch_last, int tile, int block_size,
                                                    int64_t chunk_bytes, at::ScalarType table_dtype,
                                                    at::Tensor* far_flags) {
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int side = num_grids + 1;
  const int n_out = static_cast<int>(params.size(2));
  const int n_pairs = static_cast<int>(params.size(3));
  // images [N, N_in, L] (batch_last; backward.cpp keeps N L within kMaxImageSamples): x and
  // grad_x read and written in place, grad_y transposed into the rows below as a plain
  // batch-last grad_y is
  const bool images = x.dim() == 3;
  const int64_t image_len = images ? x.size(2) : 0;
  const int64_t batch = images ? x.size(0) * image_len : batch_last ? x.size(1) : x.size(0);
  const DeviceLimits lim = device_limits(x.device().index());
  const CellSort sort = plan_cell_sort(num_grids, images, lim);
  const int k = forward_lanes_outputs(tile), w = 32 * k;
  const int n_tiles = (n_out + w - 1) / w;
  const int64_t ld = int64_t(n_tiles) * w;
  const int64_t in_dim = 2 * int64_t(n_pairs);

  // grad_y as rows [B][ld] in grad_y's dtype (float32, float16 or bfloat16), zero-padded past
  // n_out (one launch either way)
  const at::Tensor gyt = batch_last ? transpose(gy, ld) : pad_columns(gy, ld);  // images too
  const int64_t row_bytes = ld * gyt.element_size();
  // the table (float32, rounded values) and the dP workspace [n_tiles, P, cells, W] of the
  // same shape, zeroed by the same launch (no memset: host cost, issue 16)
  at::Tensor ws;
  const at::Tensor packed = pack_table(params, w, table_dtype, at::kFloat, &ws, ZeroLike::kPacked);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  // chunk: grad_y rows of ~chunk_bytes, a whole number of segments, bounded sorted buffer
  int64_t chunk = std::max<int64_t>(kRunSegment, chunk_bytes / row_bytes);
  chunk = std::min<int64_t>(chunk, int64_t(1) << 20);
  chunk = std::min<int64_t>(chunk, kRunMaxEntriesBytes / (int64_t(n_pairs) * 16));
  chunk = std::min<int64_t>(chunk, (batch + kRunSegment - 1) / kRunSegment * kRunSegment);
  chunk = chunk / kRunSegment * kRunSegment;
  TORCH_INTERNAL_ASSERT(chunk >= kRunSegment, "plan_backward chose the sorted backward for ",
                        n_pairs, " pairs, more than a chunk of its sorted entries holds");
  // runs_kernel addresses a chunk's grad_y rows by int32 offsets
  TORCH_INTERNAL_ASSERT(chunk * ld < (int64_t(1) << 31), "the sorted backward's chunk of ",
                        chunk, " grad_y rows of ", ld, " floats needs 64-bit offsets");
  // FMAs or tensor cores (plan.h), per chunk: all chunks but the last hold `chunk` samples,
  // and a short last chunk may take the FMAs where the full ones take the tensor cores
  const bool bf16_rows_and_table =
      gy.scalar_type() == at::kBFloat16 && table_dtype == at::kBFloat16;
  const auto tensor_cores = [&](int64_t len) {
    return plan_runs(bf16_rows_and_table, tile, num_grids, len, lim) == RunsKernel::kTensorCores;
  };
  at::Tensor entries = at::empty({n_pairs, chunk, 4}, x.options().dtype(at::kInt));
  // far_fixup's flags, every byte written by the sort (chunks start at multiples of its
  // flag chunk: whole segments)
  static_assert(kRunSegment % kFarFlagChunk == 0, "a chunk of the sort starts a flag chunk");
  *far_flags = at::empty({(batch + kFarFlagChunk - 1) / kFarFlagChunk, n_pairs},
                         x.options().dtype(at::kByte));

  // Two output tiles per walk where they pair up, at K = 4 (tile 16: its fixed per-sample
  // work is the largest share there; an odd last tile would need its own walk). Warps per
  // block: the block size's, capped by runs_max_threads (T = 2: a divisor of the 12 resident
  // warps) and by what the shared memory holds (fewer under a small LMKAN_SMEM_BUDGET_KB).
  const bool two_tiles = k == 4 && n_tiles % 2 == 0;
  const int64_t warps_fit = (lim.smem_optin - int64_t(side) * 4) / runs_smem_per_warp();
  TORCH_INTERNAL_ASSERT(warps_fit >= 1, "runs_kernel: one warp's ", runs_smem_per_warp(),
                        " bytes of shared memory exceed the device's ", lim.smem_optin);
  const int tiles_per_walk = two_tiles ? 2 : 1;
  int warps = static_cast<int>(std::clamp<int64_t>(
      std::min(block_size, runs_max_threads(tiles_per_walk)) / 32, 1, warps_fit));
  if (two_tiles) {  // whole blocks in the 12 warps that fit (T = 1: as asked)
    while (runs_warps_per_sm(2) % warps != 0) --warps;
  }
  const int64_t runs_smem = warps * runs_smem_per_warp() + int64_t(side) * 4;
  at::Tensor dx = at::empty_like(x);  // every entry written once

  const int64_t xs_f = images ? image_len : batch_last ? batch : 1;
  const int64_t xs_b = batch_last ? 1 : in_dim;
  const SampleOffsets x_images =
      images ? image_offsets(in_dim, image_len) : SampleOffsets{};
  RunsArgs a;
  a.entries = reinterpret_cast<const int4*>(entries.data_ptr<int>());
  a.packed = packed.data_ptr<float>();
  a.gyt = gyt.data_ptr();
  a.borders = borders.data_ptr<float>();
  a.ws = ws.data_ptr<float>();
  a.dx = dx.data_ptr<float>();
  a.entries_stride = chunk;
  a.ld = ld;
  a.ld32 = static_cast<int>(ld);
  a.xs_f = xs_f;
  a.xs_b = xs_b;
  a.n_pairs = n_pairs;
  a.n_tiles = n_tiles;
  a.num_grids = num_grids;
  CellSortChunk c;
  c.x = x.data_ptr<float>();
  c.borders = borders.data_ptr<float>();
  c.entries = reinterpret_cast<int4*>(entries.data_ptr<int>());
  c.far_flags = far_flags->data_ptr<uint8_t>();
  c.entries_stride = chunk;
  c.xs_f = xs_f;
  c.xs_b = xs_b;
  c.n_pairs = n_pairs;
  c.num_grids = num_grids;
  c.x_images = x_images;
  for (int64_t b0 = 0; b0 < batch; b0 += chunk) {
    const int len = static_cast<int>(std::min(chunk, batch - b0));
    c.b0 = b0;
    c.len = len;
    launch_cell_sort(sort, c, stream);
    a.b0 = b0;
    a.len = len;
    // segments of up to kRunSegment entries, shorter where that is needed for about two
    // resident waves of warps (small batches)
    const bool mma = tensor_cores(len);
    const int64_t want_items =
        int64_t(2) * lim.num_sms * (mma ? kRunsMmaWarpsPerSm : runs_warps_per_sm(tiles_per_walk));
    const int64_t seg = (int64_t(len) * n_pairs + want_items - 1) / want_items;
    a.seg_len = static_cast<int>(std::clamp<int64_t>((seg + 15) / 16 * 16, kRunMinSegment, kRunSegment));
    a.segments = (len + a.seg_len - 1) / a.seg_len;
    const int64_t items = int64_t(n_pairs) * a.segments;
    if (mma) {
      launch_runs_mma(a, x_images, images, items, stream);
    } else {
      launch_runs(a, x_images, images, gy.scalar_type(), k, two_tiles, warps, runs_smem, items,
                  stream);
    }
  }
  return {dx, unpack_dp(ws, num_grids, n_out)};
}

}  // namespace lmkan2d
}  // namespace lmkan
