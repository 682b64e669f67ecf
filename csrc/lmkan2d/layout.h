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
// This header declares the kernels' host entry points (the launchers), which forward.cpp and
// backward.cpp call as their plan (plan.h) says; launch shapes and shared-memory footprints
// are in footprints.h.
//
// Names: `tile` is a tile size (tile_size: 4, 8 or 16; W = 8 * tile outputs per output tile)
// in host code and in these functions; in kernels, `tile_index` says which output tile.
#pragma once
#include <cstdint>
#include <tuple>
#include <ATen/core/Tensor.h>

#include "common/device_limits.h"
#include "common/images.h"  // SampleOffsets
#include "common/sum_splits.h"  // the forwards' split sums
#include "lmkan2d/footprints.h"

namespace lmkan {
namespace lmkan2d {

// The packed table Pt [n_tiles, P, cells, width] of params (float32, float16 or bfloat16),
// its values rounded to `table_dtype` and stored as `packed_dtype` (float32, or table_dtype
// itself for the kernels that read 16-bit tables). With `zeros`, the same launch also makes
// *zeros a float32 tensor of zeros shaped as the packed table (ZeroLike::kPacked) or as
// params (kParams): the backward's dP accumulators, without a memset.
enum class ZeroLike { kNone, kPacked, kParams };
at::Tensor pack_table(const at::Tensor& params, int width, at::ScalarType table_dtype = at::kFloat,
                      at::ScalarType packed_dtype = at::kFloat, at::Tensor* zeros = nullptr,
                      ZeroLike zero_like = ZeroLike::kNone);
// [rows, cols] -> contiguous [cols, max(ld, rows)] through 32 x 32 shared-memory tiles, the
// rows past `rows` zero. Also images [N, rows, L] -> [N L, max(ld, rows)] (at most
// kMaxImageSamples samples, common/images.h). float32, float16 or bfloat16 (kept as is).
at::Tensor transpose(const at::Tensor& in, int64_t ld = 0);
// [rows, cols] -> contiguous [rows, ld], the columns past `cols` zero (`in` itself when
// ld <= cols). float32, float16 or bfloat16 (kept as is).
at::Tensor pad_columns(const at::Tensor& in, int64_t ld);
// [cols, rows] = the sum over the first dim of parts [splits, rows, cols], transposed (the
// same fixed order as sum_splits).
at::Tensor sum_splits_transposed(const at::Tensor& parts);
// dP workspace [copies, n_tiles, P, cells, W] (contiguous; 4-D: one copy) -> sum over copies
// (fixed order) -> [G+1, G+1, N_out, P].
at::Tensor unpack_dp(const at::Tensor& ws, int num_grids, int n_out);

// Every launcher takes params (float32, float16 or bfloat16) and `table_dtype`, the dtype the
// table's values are rounded to before any kernel reads them (pack_table): the sample-lanes
// forward reads a 16-bit table as such, the other kernels a float32 copy of the rounded
// values, so every kernel of a call sees the same table.
//
// ---- Forward (forward.cpp) ----
// y [N_out, B] from x [N_in, B] (batch_last), or [B, N_out] from [B, N_in] (x contiguous):
// lanes own samples, the table slices staged in shared memory (forward_sample_lanes.cu).
// Also y [N, N_out, L] from images x [N, N_in, L] (batch_last, common/images.h), in place.
at::Tensor forward_by_sample_lanes(const at::Tensor& x, const at::Tensor& params,
                                   const at::Tensor& borders, int tile, int block,
                                   bool batch_last, at::ScalarType table_dtype);
// The same from the output-lanes kernel, the table read through L1/L2 (output_lanes.cu).
at::Tensor forward_by_output_lanes(const at::Tensor& x, const at::Tensor& params,
                                   const at::Tensor& borders, int tile, int block,
                                   bool batch_last, at::ScalarType table_dtype);

// ---- Backward (backward.cpp) ----
// grad_x and grad_params in one pass over cell-sorted chunks (backward_sorted.cpp); gy float32,
// float16 or bfloat16 (its rows are read in its dtype). *far_flags: far_fixup's flags
// [ceil(B / kFarFlagChunk), P], written by the cell sort, which classifies every input.
std::tuple<at::Tensor, at::Tensor> backward_by_runs(const at::Tensor& x, const at::Tensor& params,
                                                    const at::Tensor& borders, const at::Tensor& gy,
                                                    bool batch_last, int tile, int block_size,
                                                    int64_t chunk_bytes, at::ScalarType table_dtype,
                                                    at::Tensor* far_flags);
// The sorted backward's cell sort (cell_sort.cu), one launch per chunk: block p sorts the
// chunk's samples [b0, b0 + len) of pair p by cell into entries[p][0, len) (int4: sample of
// the chunk, cell, d1, d2), and writes far_fixup's flags of those samples (far_flags
// [ceil(B / kFarFlagChunk), P]; b0 a multiple of kFarFlagChunk). plan_cell_sort chooses the
// kernel instance once per backward (images or not; the stage of 4,096 samples ordered in
// shared memory before it is stored where its shared memory fits, unless
// LMKAN_BUCKET_STAGED=0) and opts it into its shared memory.
struct CellSort {
  bool images = false, staged = false;
  int64_t smem_bytes = 0;
};
struct CellSortChunk {
  const float* x;         // (f, b) at f * xs_f + b * xs_b (images: f * xs_f + x_images(b))
  const float* borders;   // [G+1]
  int4* entries;          // [P][entries_stride]
  uint8_t* far_flags;
  int64_t b0, entries_stride, xs_f, xs_b;
  int len, n_pairs, num_grids;
  SampleOffsets x_images;
};
CellSort plan_cell_sort(int num_grids, bool images, const DeviceLimits& lim);
void launch_cell_sort(const CellSort& sort, const CellSortChunk& chunk, cudaStream_t stream);
// grad_x by the forward's output-lanes scheme (output_lanes.cu): the table staged in shared
// memory where it fits, float atomics over output tiles and pair splits unless
// `deterministic` (the plan then sends only single-tile layers here).
at::Tensor dx_by_output_rows(const at::Tensor& x, const at::Tensor& params,
                             const at::Tensor& borders, const at::Tensor& gy, bool batch_last,
                             int tile, int block_size, bool deterministic,
                             at::ScalarType table_dtype);
// grad_x by dx_kernel (grad_x.cu): output tiles added in a fixed order, no atomics.
at::Tensor dx_by_sample_tiles(const at::Tensor& x, const at::Tensor& params,
                              const at::Tensor& borders, const at::Tensor& gy, int tile,
                              int64_t batch, int n_out, int n_pairs, int num_grids, int block,
                              const DeviceLimits& lim, int64_t xs_f, int64_t xs_b, int64_t gs_f,
                              int64_t gs_b, at::ScalarType table_dtype);
// Layers that sample_threads_serve (plan.h), a thread per (sample, pair)
// (sample_threads_{forward,backward}.cu); x, gy, weights contiguous.
// forward_by_sample_threads: y, like forward_by_sample_lanes (deterministic).
// dx_by_sample_threads: grad_x, or with `weights` defined the mixed second-derivative term
// (as slope_dx_by_sample_tiles); deterministic. dp_by_sample_threads: (grad_x, grad_params
// float32 [G+1, G+1, N_out, P]) in one pass, or with `weights` defined (undefined, the slope
// dP); not deterministic.
at::Tensor forward_by_sample_threads(const at::Tensor& x, const at::Tensor& params,
                                     const at::Tensor& borders, bool batch_last,
                                     const DeviceLimits& lim, at::ScalarType table_dtype);
at::Tensor dx_by_sample_threads(const at::Tensor& x, const at::Tensor& params,
                                const at::Tensor& borders, const at::Tensor& gy,
                                const at::Tensor& weights, bool batch_last,
                                const DeviceLimits& lim, at::ScalarType table_dtype);
std::tuple<at::Tensor, at::Tensor> dp_by_sample_threads(
    const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
    const at::Tensor& gy, const at::Tensor& weights, bool batch_last, const DeviceLimits& lim,
    at::ScalarType table_dtype);
// grad_params by cell-sorted chunks (grad_params.cu); the plan sends it only num_grids whose
// accumulator fits in shared memory.
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

// ---- Second derivatives (second_derivatives.cpp): the pieces of d<w, grad_x>, w like x ----
// Not tuned: tile 8, or 4 for layers of at most 32 outputs (one 32-wide output tile instead
// of a mostly idle 64-wide one: half the table bytes per pair); blocks of 256 threads for the
// forward-shaped kernel, 512 for the others.
constexpr int kSlopeTile = 8, kSlopeNarrowTile = 4, kSlopeBlock = 512, kSlopeForwardBlock = 256;
constexpr int slope_tile(int64_t n_out) {
  return n_out <= bwd_width(kSlopeNarrowTile) ? kSlopeNarrowTile : kSlopeTile;
}
// d/d grad_y: y = sum_p w . grad f_p (output_lanes.cu, the forward kernel's slope mode).
at::Tensor slope_forward_by_output_lanes(const at::Tensor& x, const at::Tensor& weights,
                                         const at::Tensor& params, const at::Tensor& borders,
                                         bool batch_last, at::ScalarType table_dtype);
// d/dx: the mixed second derivative of each pair times the other input's weight (grad_x.cu,
// dx_kernel's slope mode; deterministic).
at::Tensor slope_dx_by_sample_tiles(const at::Tensor& x, const at::Tensor& weights,
                                    const at::Tensor& params, const at::Tensor& borders,
                                    const at::Tensor& gy, int64_t batch, int n_out, int n_pairs,
                                    int num_grids, bool batch_last, const DeviceLimits& lim,
                                    at::ScalarType table_dtype);
// d/dP: grad_y times the corner weights of w . grad f (grad_params.cu, dp_kernel's slope
// mode), float32 [G+1, G+1, N_out, P].
at::Tensor slope_dp_by_warp_accumulators(const at::Tensor& x, const at::Tensor& weights,
                                         const at::Tensor& borders, const at::Tensor& gy,
                                         int64_t batch, int n_out, int n_pairs, int num_grids,
                                         bool batch_last, bool deterministic,
                                         const DeviceLimits& lim);

// After the backward kernels (far_fixup.cu): grad_x of each (sample, pair) that holds a far
// input replaced by its float64 value, and grad_params (float32 [G+1, G+1, N_out, P], or
// undefined for grad_x alone) corrected to the float64 bilinear weights; params as the backward got them (rounded to
// table_dtype as the kernels read them). One block per pair; without far inputs it reads x
// once and writes nothing. gy: float32, float16 or bfloat16. flags: uint8 [ceil(B /
// kFarFlagChunk), P], byte (c, p) whether samples [c * kFarFlagChunk, (c + 1) *
// kFarFlagChunk) hold a far input of pair p (from the cell sort), or undefined: far_fixup
// finds them (a pass over x for batches of more than 4 flag chunks).
constexpr int kFarFlagChunk = 256;
void far_fixup(const at::Tensor& x, const at::Tensor& params, at::ScalarType table_dtype,
               const at::Tensor& borders, const at::Tensor& gy, at::Tensor& dx, at::Tensor& dp,
               bool batch_last, const at::Tensor& flags = at::Tensor());

// Host checks shared by the forward and backward ops (ValueError on bad arguments).
// images: x may also be [N, N_in, L] (lmkan2d_forward, lmkan2d_backward; common/images.h).
void check_common(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                  bool batch_last, int64_t tile_size, int64_t block_size, const char* op,
                  bool images = false);

}  // namespace lmkan2d
}  // namespace lmkan
