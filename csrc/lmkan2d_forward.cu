// LMKAN2DLayer forward kernel, table packing, device limits and lmkan2d_max_num_grids.
//
// Forward scheme: a block owns TILE outputs and blockDim.x samples (one thread per sample).
// It loops over the input pairs in stages of `pairs_per_stage` pairs: the packed table
// slice of those pairs (pairs_per_stage x (G+1)^2 x TILE floats, contiguous) is copied into
// shared memory, then each thread finds its sample's cells and accumulates the TILE outputs
// in registers. Every output is written once (no atomics, deterministic).
#include <mutex>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "checks.h"
#include "lmkan2d_common.cuh"

namespace lmkan {
namespace lmkan2d {

DeviceLimits device_limits(int device_index) {
  static std::mutex mutex;
  static std::vector<DeviceLimits> cache;
  static std::vector<bool> known;
  std::lock_guard<std::mutex> lock(mutex);
  if (device_index >= static_cast<int>(cache.size())) {
    cache.resize(device_index + 1);
    known.resize(device_index + 1, false);
  }
  if (!known[device_index]) {
    DeviceLimits d{};
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                          device_index));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_sm,
                                          cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                                          device_index));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.num_sms, cudaDevAttrMultiProcessorCount,
                                          device_index));
    cache[device_index] = d;
    known[device_index] = true;
  }
  return cache[device_index];
}

// Pt [n_tiles, P, cells, tile] from params [cells, N_out, P]: one thread per Pt element.
__global__ void pack_table_kernel(const float* __restrict__ params, float* __restrict__ packed,
                                  int64_t cells, int n_out, int n_pairs, int tile,
                                  int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int t = static_cast<int>(idx % tile);
    int64_t rest = idx / tile;
    const int64_t c = rest % cells;
    rest /= cells;
    const int p = static_cast<int>(rest % n_pairs);
    const int tile_index = static_cast<int>(rest / n_pairs);
    const int o = tile_index * tile + t;
    packed[idx] = o < n_out ? params[(c * n_out + o) * n_pairs + p] : 0.f;
  }
}

at::Tensor pack_table(const at::Tensor& params, int tile) {
  // params: [G+1, G+1, N_out, P] contiguous float32 on the current device.
  const int64_t side = params.size(0);
  const int64_t cells = side * side;
  const int n_out = static_cast<int>(params.size(2));
  const int n_pairs = static_cast<int>(params.size(3));
  const int n_tiles = (n_out + tile - 1) / tile;
  at::Tensor packed = at::empty({n_tiles, n_pairs, cells, tile}, params.options());
  const int64_t total = packed.numel();
  if (total == 0) return packed;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65536);
  pack_table_kernel<<<static_cast<unsigned>(blocks), threads, 0,
                      c10::cuda::getCurrentCUDAStream()>>>(
      params.data_ptr<float>(), packed.data_ptr<float>(), cells, n_out, n_pairs, tile, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return packed;
}

namespace {

// Forward, lane layout: lane = (group g, output t) with t = lane % TILE; the 32/TILE groups
// of a warp take 32/TILE different samples at once, and each lane owns M = TILE samples
// (so a warp owns 32 samples and one output tile). A lane reads the 4 corners of its
// sample's cell for its own output: the TILE lanes of a group read TILE consecutive floats,
// and the groups read different copies of the tile, so a warp's 32 reads hit 32 banks.
// Cells (index, d1, d2) are computed once per (sample, pair) per block and staged.
template <int TILE>
__global__ void __launch_bounds__(1024)
forward_kernel(const float* __restrict__ x,       // x: (f, b) at f*xs_f + b*xs_b
               const float* __restrict__ packed,  // [n_tiles, P, cells, TILE]
               const float* __restrict__ borders, // [G+1]
               float* __restrict__ y,             // y: (o, b) at o*ys_f + b*ys_b
               int64_t batch, int n_out, int n_pairs, int num_grids, int pairs_per_stage,
               int copies, int64_t xs_f, int64_t xs_b, int64_t ys_f, int64_t ys_b) {
  constexpr int GROUPS = 32 / TILE;
  constexpr int M = TILE;  // samples per lane; GROUPS * M = 32 samples per warp
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1;
  const int cells = side * side;
  const int rs = TILE * copies;                       // floats per cell row
  const int nb = (blockDim.x / 32) * kForwardSamplesPerWarp;  // samples per block
  float* table = smem;                                // [pairs_per_stage][cells][rs]
  float4* info = reinterpret_cast<float4*>(table + int64_t(pairs_per_stage) * cells * rs);
  float* s_borders = reinterpret_cast<float*>(info + int64_t(pairs_per_stage) * nb);
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = borders[i];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int t = lane % TILE, g = lane / TILE;
  const int copy = g % copies;
  const int tile_index = blockIdx.y;
  const int64_t b0 = blockIdx.x * int64_t(nb);
  const float* tile_table = packed + int64_t(tile_index) * n_pairs * cells * TILE;

  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;

  for (int p0 = 0; p0 < n_pairs; p0 += pairs_per_stage) {
    const int pc = min(pairs_per_stage, n_pairs - p0);
    __syncthreads();  // previous stage fully read (and borders written)
    {
      const float4* src = reinterpret_cast<const float4*>(tile_table + int64_t(p0) * cells * TILE);
      const int per_row = TILE / 4;
      const int n4 = pc * cells * per_row;
      for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = __ldg(src + i);
        const int row = i / per_row, k = i % per_row;  // row = j * cells + cell
        float4* dst = reinterpret_cast<float4*>(table + int64_t(row) * rs) + k;
        for (int c = 0; c < copies; ++c) dst[c * per_row] = v;
      }
    }
    for (int i = threadIdx.x; i < pc * nb; i += blockDim.x) {
      // batch-last: neighbouring threads take neighbouring samples; batch-first:
      // neighbouring pairs of one sample (both read contiguous x).
      const int j = xs_b == 1 ? i / nb : i % pc, s = xs_b == 1 ? i % nb : i / pc;
      const int64_t b = b0 + s;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (b < batch) {
        const int64_t f = 2 * int64_t(p0 + j);
        const Cell c1 = cdf_cell(x[f * xs_f + b * xs_b], s_borders, num_grids);
        const Cell c2 = cdf_cell(x[(f + 1) * xs_f + b * xs_b], s_borders, num_grids);
        v = make_float4(__int_as_float(c1.index * side + c2.index), c1.d, c2.d, 0.f);
      }
      info[j * nb + s] = v;
    }
    __syncthreads();
    for (int j = 0; j < pc; ++j) {
      const float* tj = table + int64_t(j) * cells * rs + copy * TILE + t;
      const float4* ij = info + j * nb + warp * kForwardSamplesPerWarp + g;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4 v = ij[m * GROUPS];
        const float* q = tj + __float_as_int(v.x) * rs;
        const float d1 = v.y, d2 = v.z;
        const float a = q[0], bq = q[rs], cq = q[side * rs], dq = q[(side + 1) * rs];
        acc[m] += (1.f - d1) * ((1.f - d2) * a + d2 * bq) + d1 * ((1.f - d2) * cq + d2 * dq);
      }
    }
  }
  const int o = tile_index * TILE + t;
  if (o < n_out) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int64_t b = b0 + warp * kForwardSamplesPerWarp + m * GROUPS + g;
      if (b < batch) y[int64_t(o) * ys_f + b * ys_b] = acc[m];
    }
  }
}

template <int TILE>
void launch_forward(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& borders,
                    at::Tensor& y, int64_t batch, int n_out, int n_pairs, int num_grids,
                    int block, bool batch_last, const DeviceLimits& lim) {
  const int nb = (block / 32) * kForwardSamplesPerWarp;
  // Prefer all 32/TILE copies and a stage small enough that 2048/block blocks share an SM;
  // then the whole opt-in shared memory; then fewer copies (bank conflicts, still right).
  const int blocks_per_sm = std::max(1, 2048 / block);
  const int64_t shared_budget = std::min<int64_t>(lim.smem_per_sm / blocks_per_sm - 1024, lim.smem_optin);
  int pc = 0, copies = 0;
  for (int pass = 0; pass < 2 && pc == 0; ++pass) {
    const int64_t budget = pass == 0 ? shared_budget : lim.smem_optin;
    for (int c = 32 / TILE; c >= 1 && pc == 0; c /= 2) {
      for (int q = std::min(8, n_pairs); q >= 1 && pc == 0; --q)
        if (forward_smem_bytes(num_grids, TILE, q, c, nb) <= budget) { pc = q; copies = c; }
    }
  }
  TORCH_CHECK_VALUE(pc > 0, "lmkan2d_forward: num_grids=", num_grids, " with tile_size=", TILE,
                    " and block_size=", block, " needs ", forward_smem_bytes(num_grids, TILE, 1, 1, nb),
                    " bytes of shared memory per block, the device allows ", lim.smem_optin);
  const int64_t smem = forward_smem_bytes(num_grids, TILE, pc, copies, nb);
  C10_CUDA_CHECK(cudaFuncSetAttribute(forward_kernel<TILE>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const int64_t in_dim = 2 * int64_t(n_pairs);
  const int64_t xs_f = batch_last ? batch : 1, xs_b = batch_last ? 1 : in_dim;
  const int64_t ys_f = batch_last ? batch : 1, ys_b = batch_last ? 1 : n_out;
  dim3 grid(static_cast<unsigned>((batch + nb - 1) / nb),
            static_cast<unsigned>((n_out + TILE - 1) / TILE));
  forward_kernel<TILE><<<grid, block, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), packed.data_ptr<float>(), borders.data_ptr<float>(),
      y.data_ptr<float>(), batch, n_out, n_pairs, num_grids, pc, copies, xs_f, xs_b, ys_f, ys_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void check_common(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                  bool batch_last, int64_t tile_size, int64_t block_size, const char* op) {
  check_layer_tensors(x, params, borders, 4);
  TORCH_CHECK_VALUE(tile_size == 4 || tile_size == 8 || tile_size == 16, op,
                    ": tile_size must be 4, 8 or 16, got ", tile_size);
  TORCH_CHECK_VALUE(block_size >= 32 && block_size <= 1024 && block_size % 32 == 0, op,
                    ": block_size must be a multiple of 32 in [32, 1024], got ", block_size);
  const int64_t side = params.size(0);
  TORCH_CHECK_VALUE(side >= 4 && params.size(1) == side, op,
                    ": params must be [G+1, G+1, N_out, N_in/2] with G >= 3, got shape ",
                    params.sizes());
  TORCH_CHECK_VALUE(borders.size(0) == side, op, ": borders must have G+1=", side,
                    " entries, got ", borders.size(0));
  const int64_t in_dim = batch_last ? x.size(0) : x.size(1);
  TORCH_CHECK_VALUE(in_dim == 2 * params.size(3), op, ": x has ", in_dim,
                    " input features but params expects input_dim=2*", params.size(3), "=",
                    2 * params.size(3), " (x shape ", x.sizes(), ", batch_last=", batch_last, ")");
  TORCH_CHECK_VALUE(params.size(2) >= 1, op, ": output_dim must be >= 1, got ", params.size(2));
}

at::Tensor forward_cuda(const at::Tensor& x_in, const at::Tensor& params_in,
                        const at::Tensor& borders_in, bool batch_last, int64_t tile_size,
                        int64_t block_size, int64_t /*backward_tile_size*/,
                        int64_t /*backward_block_size*/, bool /*backward_fast_mode*/,
                        bool /*deterministic*/) {
  // x: [N_in, B] (batch_last) or [B, N_in]; params: [G+1, G+1, N_out, N_in/2]; borders: [G+1].
  check_common(x_in, params_in, borders_in, batch_last, tile_size, block_size, "lmkan2d_forward");
  const at::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), params = params_in.contiguous(),
                   borders = borders_in.contiguous();
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int n_out = static_cast<int>(params.size(2));
  const int n_pairs = static_cast<int>(params.size(3));
  const int64_t batch = batch_last ? x.size(1) : x.size(0);
  at::Tensor y = batch_last ? at::empty({n_out, batch}, x.options())
                            : at::empty({batch, n_out}, x.options());
  if (batch == 0) return y;
  const DeviceLimits lim = device_limits(x.device().index());
  const int tile = static_cast<int>(tile_size), block = static_cast<int>(block_size);
  const int limit = max_num_grids_for(tile, "forward", x.device().index());
  TORCH_CHECK_VALUE(num_grids <= limit, "lmkan2d_forward: num_grids=", num_grids,
                    " does not fit in shared memory with tile_size=", tile,
                    "; the largest supported is ", limit);
  const at::Tensor packed = pack_table(params, tile);
  if (tile == 4) launch_forward<4>(x, packed, borders, y, batch, n_out, n_pairs, num_grids, block, batch_last, lim);
  else if (tile == 8) launch_forward<8>(x, packed, borders, y, batch, n_out, n_pairs, num_grids, block, batch_last, lim);
  else launch_forward<16>(x, packed, borders, y, batch, n_out, n_pairs, num_grids, block, batch_last, lim);
  return y;
}

int max_num_grids_for(int tile, const std::string& mode, int device_index) {
  const DeviceLimits lim = device_limits(device_index);
  int best = 0;
  for (int g = 3; g < 4096; ++g) {
    bool fits;
    if (mode == "forward") {
      // one pair per stage, one copy of the tile, the largest block (1024 threads)
      fits = forward_smem_bytes(g, tile, 1, 1, 32 * kForwardSamplesPerWarp) <= lim.smem_optin;
    } else {
      // backward (either mode): the dx kernel's table slice (one warp) and the dP kernel's
      // accumulator (one warp, smallest chunk) both in shared memory; past this G the
      // backward reads the table / accumulates dP through global memory instead.
      fits = dx_smem_bytes(g, tile, 1, true) <= lim.smem_optin &&
             dp_smem_bytes(g, tile, 1, kDpMinChunk, true) <= lim.smem_optin;
    }
    if (!fits) break;
    best = g;
  }
  return best;
}

int64_t max_num_grids_op(int64_t tile_size, c10::string_view mode, int64_t device_index) {
  TORCH_CHECK_VALUE(tile_size == 4 || tile_size == 8 || tile_size == 16,
                    "lmkan2d_max_num_grids: tile_size must be 4, 8 or 16, got ", tile_size);
  const std::string m(mode.data(), mode.size());
  TORCH_CHECK_VALUE(m == "forward" || m == "backward" || m == "backward_fast",
                    "lmkan2d_max_num_grids: mode must be 'forward', 'backward' or "
                    "'backward_fast', got '", m, "'");
  int count = 0;
  C10_CUDA_CHECK(cudaGetDeviceCount(&count));
  TORCH_CHECK_VALUE(device_index >= 0 && device_index < count,
                    "lmkan2d_max_num_grids: device_index must be in [0, ", count, "), got ",
                    device_index);
  return max_num_grids_for(static_cast<int>(tile_size), m, static_cast<int>(device_index));
}

}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("lmkan2d_forward", &lmkan::lmkan2d::forward_cuda);
}

TORCH_LIBRARY_IMPL(lmkan, CompositeExplicitAutograd, m) {
  m.impl("lmkan2d_max_num_grids", &lmkan::lmkan2d::max_num_grids_op);
}
