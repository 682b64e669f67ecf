// The 1D layer's ops on CUDA (host code): argument checks, launch planning (stage sizes,
// batch slices, which dC kernel), lmkan1d_forward, lmkan1d_backward, lmkan1d_max_num_grids.
// The kernels are in pack.cu, forward.cu, grad_x.cu and grad_params*.cu; layout.h has the
// scheme.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/device_limits.h"
#include "common/env_knobs.h"
#include "common/image_rows.h"
#include "common/images.h"
#include "common/sum_splits.h"
#include "lmkan1d/layout.h"

namespace lmkan {
namespace lmkan1d {
namespace {

// The shared memory a block may use (device_limits.h: LMKAN_SMEM_BUDGET_KB applies).
int max_dynamic_smem(int device) { return device_limits(device).smem_optin; }

struct Shapes {
  int64_t batch;
  int n_in, n_out, num_grids;
  int64_t images = 0, image_len = 0;  // x [images, N_in, image_len] (forward, backward)
};

// images: x may also be [N, N_in, L] (lmkan1d_forward, lmkan1d_backward; common/images.h).
Shapes check_args(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                  bool batch_last, bool images = false) {
  check_layer_tensors(x, params, borders, 3, /*params_16bit=*/true, images);
  TORCH_CHECK_VALUE(x.dim() == 2 || batch_last, "lmkan1d: a 3-D x ([N, N_in, L] images) "
                    "is batch-last; got batch_last=False with x of shape ", x.sizes());
  Shapes sh;
  sh.num_grids = static_cast<int>(params.size(0)) - 1;
  TORCH_CHECK_VALUE(sh.num_grids >= 1, "params must have at least 2 node rows (G+1), got shape ",
                    params.sizes());
  TORCH_CHECK_VALUE(borders.size(0) == params.size(0), "borders must have G+1 = ",
                    params.size(0), " entries (params.size(0)), got ", borders.size(0));
  TORCH_CHECK_VALUE(params.size(1) >= 1 && params.size(2) >= 1,
                    "params must hold at least one output and one input ([G+1, N_out, N_in]), "
                    "got shape ", params.sizes());
  TORCH_CHECK_VALUE(params.size(0) <= INT32_MAX && params.size(1) <= INT32_MAX &&
                        params.size(2) <= INT32_MAX,
                    "params dims must be below 2^31, got shape ", params.sizes());
  sh.n_out = static_cast<int>(params.size(1));
  sh.n_in = static_cast<int>(params.size(2));
  const int feature_dim = x.dim() == 3 ? 1 : batch_last ? 0 : 1;
  TORCH_CHECK_VALUE(x.size(feature_dim) == sh.n_in, "x must have ", sh.n_in,
                    " input features (params.size(2)) along dim ", feature_dim, ", got shape ",
                    x.sizes());
  if (x.dim() == 3) {
    sh.images = x.size(0);
    sh.image_len = x.size(2);
    sh.batch = sh.images * sh.image_len;
  } else {
    sh.batch = batch_last ? x.size(1) : x.size(0);
  }
  return sh;
}

void check_smem(size_t need, int device, const char* which, int num_grids) {
  const int limit = max_dynamic_smem(device);
  TORCH_CHECK_VALUE(need <= static_cast<size_t>(limit), "lmkan1d ", which, ": num_grids=",
                    num_grids, " needs ", need, " bytes of shared memory per block, the device allows ",
                    limit, "; use a smaller num_grids");
}

int output_tiles(int n_out) { return (n_out + kTileOut - 1) / kTileOut; }

// The packed table of the tiled kernels: node values (rows G+1, in the table dtype) or
// slopes (rows G, float32, from the values rounded to the table dtype).
at::Tensor pack_table(const at::Tensor& params, const at::Tensor& borders, const Shapes& sh,
                      int n_in_pad, bool slopes, bool uniform_grid, at::ScalarType table,
                      cudaStream_t stream) {
  const int rows = slopes ? sh.num_grids : sh.num_grids + 1;
  const at::ScalarType packed_dtype = slopes ? at::kFloat : table;
  at::Tensor packed = at::empty({output_tiles(sh.n_out), n_in_pad, rows, kTileOut},
                                params.options().dtype(packed_dtype));
  if (packed.numel() == 0) return packed;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(output_tiles(sh.n_out)),
                  static_cast<unsigned>((n_in_pad + 31) / 32));
  launch_pack(grid, stream, params.data_ptr(), borders.data_ptr<float>(), packed.data_ptr(),
              sh.n_in, n_in_pad, sh.n_out, sh.num_grids, rows, slopes, uniform_grid,
              params.scalar_type(), table, packed_dtype);
  return packed;
}

TileArgs tile_args(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& borders,
                   const Shapes& sh, int n_in_pad, int rows, int min_stage_inputs,
                   bool rows_only, bool uniform_grid, bool batch_last) {
  TileArgs a;
  a.x = x.data_ptr<float>();
  a.packed = packed.data_ptr();
  a.borders = borders.data_ptr<float>();
  a.batch = sh.batch;
  a.n_in = sh.n_in;
  a.n_in_pad = n_in_pad;
  a.n_out = sh.n_out;
  a.num_grids = sh.num_grids;
  a.rows = rows;
  a.stage_inputs = tile_stage_inputs(rows, min_stage_inputs, sh.num_grids,
                                     static_cast<size_t>(max_dynamic_smem(x.get_device())),
                                     static_cast<int>(packed.element_size()));
  a.uniform = uniform_grid;
  a.batch_last = batch_last;
  a.rows_only = rows_only;
  a.image_len = std::max<int64_t>(sh.batch, 1);  // one image (lmkan1d_forward sets images)
  return a;
}

unsigned sample_blocks(int64_t batch) {
  const int64_t blocks = (batch + kBlockSamples - 1) / kBlockSamples;
  TORCH_CHECK_VALUE(blocks < (int64_t{1} << 31), "batch ", batch, " is too large");
  return static_cast<unsigned>(blocks);
}

// Input splits for small batches. The tiled kernels' grid is (sample blocks, output tiles)
// for the forwards and (sample blocks) for dx, with one 512-thread block per SM, so a small
// batch leaves most SMs idle (LMKAN1DLayer(8, 128, 128) at B = 1024: 4 blocks on the
// H200's 132 SMs, each walking all 128 inputs; forward 211 us). There the input pipeline's
// stages are split over blockIdx.z, up to about one block per SM: sets a.stages_per_split
// and returns the number of splits (1: none), given `busy` blocks without splits.
int split_stages(TileArgs& a, int64_t busy, int device) {
  const int stages = (a.n_in_pad + a.stage_inputs - 1) / a.stage_inputs;
  const int64_t want = std::min<int64_t>(stages, device_limits(device).num_sms / busy);
  if (want <= 1) return 1;
  a.stages_per_split = static_cast<int>((stages + want - 1) / want);
  return (stages + a.stages_per_split - 1) / a.stages_per_split;  // none empty
}

// Where the forwards write, and their grid: split, each split writes its partial sums into a
// [splits, y] workspace, which sum_splits adds in a fixed order afterwards (deterministic).
struct ForwardTarget {
  dim3 grid;
  float* out;
  at::Tensor parts;  // defined where split: add into y after the launch
};

ForwardTarget forward_target(TileArgs& a, at::Tensor& y, unsigned blocks, int device) {
  const unsigned tiles = static_cast<unsigned>(output_tiles(a.n_out));
  const int splits = split_stages(a, int64_t(blocks) * tiles, device);
  if (splits == 1) return {dim3(blocks, tiles), y.data_ptr<float>(), at::Tensor()};
  a.split_stride = y.numel();
  std::vector<int64_t> shape{splits};
  shape.insert(shape.end(), y.sizes().begin(), y.sizes().end());
  at::Tensor parts = at::empty(shape, y.options());
  return {dim3(blocks, tiles, static_cast<unsigned>(splits)), parts.data_ptr<float>(), parts};
}

// The forward kernel has no atomics: deterministic whatever the layer's setting.
// table_dtype: the dtype the table is rounded to and read in (None: the parameters').
// Images x [N, N_in, L] give y [N, N_out, L] (common/images.h): read and written in place
// where L is a multiple of kWarpSamples (a warp's samples in one image), else through a
// batch-last copy [N_in, N L].
at::Tensor lmkan1d_forward_cuda(const at::Tensor& x_in, const at::Tensor& params_in,
                                const at::Tensor& borders_in, bool uniform_grid, bool batch_last,
                                std::optional<at::ScalarType> table_dtype) {
  const Shapes sh = check_args(x_in, params_in, borders_in, batch_last, /*images=*/true);
  const c10::cuda::CUDAGuard guard(x_in.device());
  if (x_in.dim() == 3 && (sh.image_len % kWarpSamples != 0 || sh.batch > kMaxImageSamples)) {
    const at::Tensor y = lmkan1d_forward_cuda(images_as_rows(x_in), params_in, borders_in,
                                              uniform_grid, true, table_dtype);
    return rows_as_images(y, sh.images, sh.image_len);
  }
  const at::ScalarType table = resolve_table_dtype(table_dtype, params_in, "lmkan1d_forward");
  const int table_bytes = table == at::kFloat ? 4 : 2;
  const at::Tensor x = x_in.contiguous();            // [N_in, B], [B, N_in] or [N, N_in, L]
  const at::Tensor params = params_in.contiguous();  // [G+1, N_out, N_in]
  const at::Tensor borders = borders_in.contiguous();  // [G+1]
  at::Tensor y = x.dim() == 3 ? at::empty({sh.images, int64_t(sh.n_out), sh.image_len}, x.options())
                 : batch_last ? at::empty({sh.n_out, sh.batch}, x.options())
                              : at::empty({sh.batch, sh.n_out}, x.options());
  if (sh.batch == 0 || sh.n_out == 0) return y;
  if (sh.n_in == 0) return y.zero_();
  const size_t smem = fwd_smem_bytes(sh.num_grids, max_dynamic_smem(x.get_device()), table_bytes);
  check_smem(smem, x.get_device(), "forward", sh.num_grids);
  const unsigned blocks = sample_blocks(sh.batch);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor packed =
      pack_table(params, borders, sh, sh.n_in, false, uniform_grid, table, stream);
  TileArgs a = tile_args(x, packed, borders, sh, sh.n_in, sh.num_grids + 1, 1, false,
                         uniform_grid, batch_last);
  if (x.dim() == 3) {
    a.image_len = sh.image_len;
    a.image_stride_x = int64_t(sh.n_in) * sh.image_len;
    a.image_stride_y = int64_t(sh.n_out) * sh.image_len;
  }
  // splits write [splits, y] partials with y's layout: images too
  const ForwardTarget target = forward_target(a, y, blocks, x.get_device());
  launch_forward(a, target.out, target.grid, smem, stream, table, x.dim() == 3);
  if (target.parts.defined()) sum_splits(target.parts, y);
  return y;
}

void run_dx(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& params,
            const at::Tensor& borders, const Shapes& sh, bool uniform_grid, bool batch_last,
            at::ScalarType table, at::Tensor& grad_x, cudaStream_t stream) {
  const size_t smem = dx_smem_bytes(sh.num_grids, max_dynamic_smem(x.get_device()));
  check_smem(smem, x.get_device(), "backward (dx)", sh.num_grids);
  const unsigned blocks = sample_blocks(sh.batch);
  const int n_in_pad = (sh.n_in + 1) / 2 * 2;  // stages hold pairs of inputs
  const at::Tensor slopes =
      pack_table(params, borders, sh, n_in_pad, true, uniform_grid, table, stream);
  TileArgs a = tile_args(x, slopes, borders, sh, n_in_pad, sh.num_grids, 2, true,
                         uniform_grid, batch_last);
  // input splits write disjoint inputs of grad_x: no partial sums
  const int splits = split_stages(a, blocks, x.get_device());
  launch_dx(a, grad_y.data_ptr<float>(), grad_x.data_ptr<float>(), output_tiles(sh.n_out),
            dim3(blocks, 1, static_cast<unsigned>(splits)), smem, stream);
}

// Slices of the batch for dC: enough blocks for ~8 per SM, each slice at least 4 chunks.
int64_t dc_slices(const Shapes& sh, int sms) {
  const int64_t tiles = static_cast<int64_t>((sh.n_out + 31) / 32) * ((sh.n_in + kDcInputs - 1) / kDcInputs);
  int64_t slices = std::max<int64_t>(1, (int64_t{8} * sms + tiles - 1) / tiles);
  slices = std::min<int64_t>(slices, std::max<int64_t>(1, sh.batch / (4 * kDcChunk)));
  slices = std::min<int64_t>(slices, 65535);
  const int64_t slice_len = (sh.batch + slices - 1) / slices;
  return (sh.batch + slice_len - 1) / slice_len;
}

// Slices of the batch for the grouped dC: the fewest (each at least one chunk, at most 64)
// whose blocks fill the resident slots of every wave, the last included, to at least 85%
// (blocks do equal work, so a part-empty wave is lost time); else the best filling count.
// (Slices of at least 4 chunks left LMKAN1DLayer(8, 128, 128) at B = 1024 one slice: 32
// blocks on 132 SMs, 61 us, the largest kernel of its training call; H200, run I.)
int64_t grouped_dc_slices(const Shapes& sh, int64_t chunk, int64_t tiles, int64_t slots) {
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(64, sh.batch / chunk));
  int64_t best = 1;
  double best_fill = 0.0;
  for (int64_t slices = 1; slices <= most; ++slices) {
    const int64_t blocks = tiles * slices;
    const double fill = static_cast<double>(blocks) / (((blocks + slots - 1) / slots) * slots);
    if (fill >= 0.85) return slices;
    if (fill > best_fill + 1e-9) { best_fill = fill; best = slices; }
  }
  return best;
}

// Runs the dC kernel (`slices` batch slices per tile) and reduces the slices: one slice
// stores straight into grad_params; several add atomically (any order) or, deterministic,
// store into a per-slice workspace that is summed in slice order. `launch(out, accumulate)`.
template <typename Launch>
void run_dc_slices(int64_t slices, bool deterministic, at::Tensor& grad_params,
                   cudaStream_t stream, Launch launch) {
  const bool accumulate = slices > 1 && !deterministic;
  const int64_t plane = grad_params.numel();
  at::Tensor workspace = (slices > 1 && deterministic)
                             ? at::empty({slices, plane}, grad_params.options())
                             : grad_params;
  if (accumulate) grad_params.zero_();
  launch(workspace.data_ptr<float>(), accumulate);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (slices > 1 && deterministic) {
    launch_sum_slices(workspace.data_ptr<float>(), grad_params.data_ptr<float>(), plane,
                      static_cast<int>(slices), stream);
  }
}

int device_sms(int device) { return device_limits(device).num_sms; }

bool grouped_shape_fits(const GroupedConfig& c, const Shapes& sh, int device) {
  return sh.num_grids <= c.max_cells &&
         grouped_smem_bytes(c, sh.num_grids) <= static_cast<size_t>(max_dynamic_smem(device)) &&
         (sh.n_in + c.warps - 1) / c.warps <= 65535;
}

// The grouped dC's launch shape on this device: the first of kGroupedConfigs whose cells and
// shared memory fit (layout.h), or -1: the grouped kernel needs G <= 31 and N_in / inputs
// blocks along grid y (<= 65535). LMKAN_1D_DC_SHAPE=N (read at every call, for tests and
// measurements) takes shape N instead, and raises where it does not fit.
int grouped_dc_shape(const Shapes& sh, int device) {
  const int forced = static_cast<int>(
      env_int("LMKAN_1D_DC_SHAPE", 0, kGroupedShapes - 1, -1, "launch shape index"));
  if (forced >= 0) {
    const GroupedConfig& c = kGroupedConfigs[forced];
    TORCH_CHECK_VALUE(grouped_shape_fits(c, sh, device), "LMKAN_1D_DC_SHAPE=", forced,
                      " (the grouped dC's shape of ", c.max_cells, " cells at most, ",
                      grouped_smem_bytes(c, sh.num_grids), " bytes of shared memory) does not "
                      "fit this call: num_grids ", sh.num_grids, ", ",
                      max_dynamic_smem(device), " bytes per block");
    return forced;
  }
  for (int shape = 0; shape < kGroupedShapes; ++shape)
    if (grouped_shape_fits(kGroupedConfigs[shape], sh, device)) return shape;
  return -1;
}

// dC for G <= kGcMaxCells: cell-grouped kernel of launch shape kGroupedConfigs[shape].
void launch_dc_grouped(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& borders,
                       const Shapes& sh, int shape, bool uniform_grid, bool batch_last,
                       bool deterministic, at::Tensor& grad_params, cudaStream_t stream) {
  const int device = x.get_device();
  const GroupedConfig& c = kGroupedConfigs[shape];
  const size_t smem = grouped_smem_bytes(c, sh.num_grids);
  // Resident blocks: the occupancy of the kernel, within the budgeted shared memory per SM
  const int per_sm = std::min(grouped_dc_blocks_per_sm(shape, smem),
                              device_limits(device).smem_per_sm /
                                  static_cast<int>(smem + kReservedSmemPerBlock));
  const int64_t tiles = static_cast<int64_t>((sh.n_out + c.block_out() - 1) / c.block_out()) *
                        ((sh.n_in + c.warps - 1) / c.warps);
  const int64_t slots = static_cast<int64_t>(std::max(per_sm, 1)) * device_sms(device);
  int64_t slices = grouped_dc_slices(sh, c.chunk, tiles, slots);
  // whole chunks per slice: only the last slice may end in a partial chunk
  const int64_t slice_len = ((sh.batch + slices - 1) / slices + c.chunk - 1) / c.chunk * c.chunk;
  slices = (sh.batch + slice_len - 1) / slice_len;
  GroupedArgs a;
  a.grad_y = grad_y.data_ptr<float>();
  a.x = x.data_ptr<float>();
  a.borders = borders.data_ptr<float>();
  a.batch = sh.batch;
  a.slice_len = slice_len;
  a.n_in = sh.n_in;
  a.n_out = sh.n_out;
  a.num_grids = sh.num_grids;
  a.uniform = uniform_grid;
  a.batch_last = batch_last;
  a.vector_dy = !batch_last && sh.n_out % 4 == 0 &&
                reinterpret_cast<uintptr_t>(a.grad_y) % 16 == 0;
  const dim3 grid((sh.n_out + c.block_out() - 1) / c.block_out(),
                  (sh.n_in + c.warps - 1) / c.warps, static_cast<unsigned>(slices));
  run_dc_slices(slices, deterministic, grad_params, stream, [&](float* out, bool accumulate) {
    a.out = out;
    a.accumulate = accumulate;
    launch_grouped_dc(a, shape, grid, smem, stream);
  });
}

// dC for larger G: shared-memory accumulator kernel. weights (like x, or undefined): the
// second-derivative variant (node weights -w/h_k and w/h_k instead of 1 - d and d).
void launch_dc_shared(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& borders,
                      const Shapes& sh, bool uniform_grid, bool batch_last, bool deterministic,
                      at::Tensor& grad_params, cudaStream_t stream,
                      const at::Tensor& weights = at::Tensor()) {
  const int device = x.get_device();
  const size_t smem = dc_smem_bytes(sh.num_grids);
  check_smem(smem, device, "backward (dC)", sh.num_grids);
  const int64_t slices = dc_slices(sh, device_sms(device));
  const int64_t slice_len = (sh.batch + slices - 1) / slices;
  const dim3 grid((sh.n_out + 31) / 32, (sh.n_in + kDcInputs - 1) / kDcInputs,
                  static_cast<unsigned>(slices));
  run_dc_slices(slices, deterministic, grad_params, stream, [&](float* out, bool accumulate) {
    launch_shared_dc(grid, smem, stream, grad_y.data_ptr<float>(), x.data_ptr<float>(),
                     borders.data_ptr<float>(), out, sh.batch, sh.n_in, sh.n_out, sh.num_grids,
                     uniform_grid, batch_last, slice_len, accumulate,
                     weights.defined() ? weights.data_ptr<float>() : nullptr);
  });
}

void launch_dc(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& borders,
               const Shapes& sh, bool uniform_grid, bool batch_last, bool deterministic,
               at::Tensor& grad_params, cudaStream_t stream) {
  // G > 31, or a device whose shared memory holds no grouped shape (under 92 KB per block),
  // takes the shared-accumulator kernel, whose limit is what lmkan1d_max_num_grids reports.
  const int shape = grouped_dc_shape(sh, x.get_device());
  if (shape >= 0)
    launch_dc_grouped(grad_y, x, borders, sh, shape, uniform_grid, batch_last, deterministic,
                      grad_params, stream);
  else
    launch_dc_shared(grad_y, x, borders, sh, uniform_grid, batch_last, deterministic, grad_params, stream);
}

// Second derivatives (the autograd of lmkan1d_backward, autograd.cpp): the transposed
// contraction of grad_x's slopes, y[s, o] = sum_i weights[s, i] * slope[k(s, i), o, i],
// slopes of the table rounded to table_dtype as the backward's.
at::Tensor lmkan1d_slope_forward_cuda(const at::Tensor& x_in, const at::Tensor& weights_in,
                                      const at::Tensor& params_in, const at::Tensor& borders_in,
                                      bool uniform_grid, bool batch_last,
                                      std::optional<at::ScalarType> table_dtype) {
  const Shapes sh = check_args(x_in, params_in, borders_in, batch_last);
  check_like_x(weights_in, x_in, "weights", "lmkan1d_slope_forward");
  const at::ScalarType table = resolve_table_dtype(table_dtype, params_in, "lmkan1d_slope_forward");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), weights = weights_in.contiguous();
  const at::Tensor params = params_in.contiguous(), borders = borders_in.contiguous();
  at::Tensor y = batch_last ? at::empty({sh.n_out, sh.batch}, x.options())
                            : at::empty({sh.batch, sh.n_out}, x.options());
  if (sh.batch == 0 || sh.n_out == 0) return y;
  if (sh.n_in == 0) return y.zero_();
  const int rows = sh.num_grids;  // slopes
  const size_t limit = static_cast<size_t>(max_dynamic_smem(x.get_device()));
  const size_t smem =
      tile_smem_bytes(rows, tile_stage_inputs(rows, 1, sh.num_grids, limit), sh.num_grids);
  check_smem(smem, x.get_device(), "slope forward", sh.num_grids);
  const unsigned blocks = sample_blocks(sh.batch);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor slopes = pack_table(params, borders, sh, sh.n_in, true, uniform_grid, table, stream);
  TileArgs a = tile_args(x, slopes, borders, sh, sh.n_in, rows, 1, false, uniform_grid, batch_last);
  a.weights = weights.data_ptr<float>();
  const ForwardTarget target = forward_target(a, y, blocks, x.get_device());
  launch_slope_forward(a, target.out, target.grid, smem, stream);
  if (target.parts.defined()) sum_splits(target.parts, y);
  return y;
}

// Second derivatives: the parameters' part of d(grad_x . weights), accumulated over samples:
// out[k+1, o, i] += grad_y[s, o] w / h_k and out[k, o, i] -= the same, w = weights[s, i];
// in the parameters' dtype (accumulated in float32).
at::Tensor lmkan1d_slope_grad_params_cuda(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                          const at::Tensor& weights_in, const at::Tensor& params_in,
                                          const at::Tensor& borders_in, bool uniform_grid,
                                          bool batch_last, bool deterministic) {
  const Shapes sh = check_args(x_in, params_in, borders_in, batch_last);
  check_grad_y(grad_y_in, x_in, sh.n_out, sh.batch, batch_last, "lmkan1d_slope_grad_params");
  check_like_x(weights_in, x_in, "weights", "lmkan1d_slope_grad_params");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous();
  const at::Tensor weights = weights_in.contiguous(), borders = borders_in.contiguous();
  at::Tensor grad_params = at::empty(params_in.sizes(), params_in.options().dtype(at::kFloat));
  if (sh.batch == 0 || sh.n_in == 0 || sh.n_out == 0) {
    grad_params.zero_();
    return grad_params.to(params_in.scalar_type());
  }
  launch_dc_shared(grad_y, x, borders, sh, uniform_grid, batch_last, deterministic, grad_params,
                   c10::cuda::getCurrentCUDAStream(), weights);
  return grad_params.to(params_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> lmkan1d_backward_cuda(const at::Tensor& grad_y_in,
                                                         const at::Tensor& x_in,
                                                         const at::Tensor& params_in,
                                                         const at::Tensor& borders_in,
                                                         bool uniform_grid, bool batch_last,
                                                         bool deterministic,
                                                         std::optional<at::ScalarType> table_dtype,
                                                         bool want_grad_params) {
  const Shapes sh = check_args(x_in, params_in, borders_in, batch_last, /*images=*/true);
  const at::ScalarType table = resolve_table_dtype(table_dtype, params_in, "lmkan1d_backward");
  check_grad_y(grad_y_in, x_in, sh.n_out, sh.batch, batch_last, "lmkan1d_backward");
  const c10::cuda::CUDAGuard guard(x_in.device());
  if (x_in.dim() == 3) {
    // images [N, N_in, L]: the backward kernels index samples with one stride, so they run
    // on batch-last copies of x and grad_y, and grad_x goes back into images (three copies:
    // a 1x1 convolution's training keeps its rows path, lmKAN/conv.py)
    auto [grad_x, grad_params] = lmkan1d_backward_cuda(
        images_as_rows(grad_y_in), images_as_rows(x_in), params_in, borders_in, uniform_grid,
        true, deterministic, table_dtype, want_grad_params);
    return {rows_as_images(grad_x, sh.images, sh.image_len), grad_params};
  }
  const at::Tensor grad_y = grad_y_in.contiguous();  // like y
  const at::Tensor x = x_in.contiguous();            // [N_in, B] or [B, N_in]
  const at::Tensor params = params_in.contiguous();  // [G+1, N_out, N_in]
  const at::Tensor borders = borders_in.contiguous();  // [G+1]
  at::Tensor grad_x = at::empty_like(x);
  // accumulated in float32; 16-bit parameters get it rounded once to their dtype; without
  // want_grad_params, empty (the schema's grad_params=False)
  at::Tensor grad_params = want_grad_params
                               ? at::empty(params.sizes(), params.options().dtype(at::kFloat))
                               : at::empty({0}, params.options().dtype(at::kFloat));
  if (sh.batch == 0 || sh.n_in == 0 || sh.n_out == 0) {
    grad_x.zero_();
    grad_params.zero_();
    return {grad_x, grad_params.to(params.scalar_type())};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  run_dx(grad_y, x, params, borders, sh, uniform_grid, batch_last, table, grad_x, stream);
  if (want_grad_params)
    launch_dc(grad_y, x, borders, sh, uniform_grid, batch_last, deterministic, grad_params,
              stream);
  return {grad_x, grad_params.to(params.scalar_type())};
}

}  // namespace

// Largest G whose forward, dx and dC kernels all fit the device's shared memory, so the
// layer can raise a clear error in Python before any launch.
int64_t lmkan1d_max_num_grids(int64_t device_index) {
  const size_t limit = static_cast<size_t>(max_dynamic_smem(static_cast<int>(device_index)));
  int g = 0;
  while (fwd_smem_bytes(g + 1, limit) <= limit && dx_smem_bytes(g + 1, limit) <= limit &&
         dc_smem_bytes(g + 1) <= limit) {
    ++g;
  }
  return g;
}

TORCH_LIBRARY_IMPL(lmkan, CompositeExplicitAutograd, m) {
  m.impl("lmkan1d_max_num_grids", &lmkan1d_max_num_grids);
}

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("lmkan1d_forward", &lmkan1d_forward_cuda);
  m.impl("lmkan1d_backward", &lmkan1d_backward_cuda);
  m.impl("lmkan1d_slope_forward", &lmkan1d_slope_forward_cuda);
  m.impl("lmkan1d_slope_grad_params", &lmkan1d_slope_grad_params_cuda);
}

}  // namespace lmkan1d
}  // namespace lmkan
