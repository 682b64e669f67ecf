// LMKAN2DLayer backward: grad_x (dx) and grad_params (dP).
//
// dx kernel (forward-shaped): a block owns blockDim.x samples and up to kDxPairs input
// pairs; it loops over the output tiles, staging the packed table slice of its pairs for
// each tile in shared memory. A thread keeps its sample's cells and its dx sums for those
// pairs in registers and writes each dx once (no atomics).
//
// dP kernel (no shared-memory atomics): each thread owns one (output, pair) slot and a
// private column of a shared accumulator [(G+1)^2][slots] (cell-major, so a warp's 32
// slots always hit 32 different banks whatever the cells). The block walks its batch range
// in chunks: grad_y of its outputs and the cells/weights of its pairs are staged in shared
// memory, then every thread adds its 4 corner contributions with plain loads and stores.
// At the end the accumulator is flushed to global memory (plain stores when one block
// covers the whole batch, native float atomics (REDG) when the batch is split).
// Normal mode keeps a block's shared memory small enough for two blocks per SM; fast mode
// gives one block the device's whole opt-in shared memory (more slots per block, so cells
// and grad_y are staged fewer times) and larger sample chunks.
#include <algorithm>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "checks.h"
#include "lmkan2d_common.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

template <int TILE>
__global__ void __launch_bounds__(512)
dx_kernel(const float* __restrict__ x,        // x: (f, b) at f*xs_f + b*xs_b
          const float* __restrict__ packed,   // [n_tiles, P, cells, TILE]
          const float* __restrict__ borders,  // [G+1]
          const float* __restrict__ gy,       // grad_y: (o, b) at o*gs_f + b*gs_b
          float* __restrict__ dx,             // grad_x: same layout as x
          int64_t batch, int n_out, int n_pairs, int num_grids, int pairs_per_block,
          int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b) {
  extern __shared__ __align__(16) float smem[];
  constexpr int RS = dx_row(TILE);  // floats per cell row (padded)
  const int side = num_grids + 1;
  const int slice = side * side * RS;
  float* table = smem;  // [pairs_per_block][cells][RS]
  float* s_borders = smem + int64_t(pairs_per_block) * slice;
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = borders[i];
  __syncthreads();

  const int p0 = blockIdx.y * pairs_per_block;
  const int pc = min(pairs_per_block, n_pairs - p0);
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const bool active = b < batch;

  int base[kDxPairs];
  float d1[kDxPairs], d2[kDxPairs], h1[kDxPairs], h2[kDxPairs], s1[kDxPairs], s2[kDxPairs];
#pragma unroll
  for (int j = 0; j < kDxPairs; ++j) {
    base[j] = 0; d1[j] = d2[j] = 0.f; h1[j] = h2[j] = 1.f; s1[j] = s2[j] = 0.f;
    if (active && j < pc) {
      const int64_t f = 2 * int64_t(p0 + j);
      const Cell c1 = cdf_cell(x[f * xs_f + b * xs_b], s_borders, num_grids);
      const Cell c2 = cdf_cell(x[(f + 1) * xs_f + b * xs_b], s_borders, num_grids);
      base[j] = j * slice + (c1.index * side + c2.index) * RS;
      d1[j] = c1.d; d2[j] = c2.d;
      h1[j] = s_borders[c1.index + 1] - s_borders[c1.index];
      h2[j] = s_borders[c2.index + 1] - s_borders[c2.index];
    }
  }

  const int n_tiles = (n_out + TILE - 1) / TILE;
  for (int tile = 0; tile < n_tiles; ++tile) {
    __syncthreads();
    {
      const float4* src = reinterpret_cast<const float4*>(
          packed + (int64_t(tile) * n_pairs + p0) * side * side * TILE);
      const int n4 = pc * side * side * (TILE / 4);
      for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        const int row = i / (TILE / 4), k = i % (TILE / 4);
        reinterpret_cast<float4*>(table + row * RS)[k] = __ldg(src + i);
      }
    }
    __syncthreads();
    if (!active) continue;
    float g[TILE];
#pragma unroll
    for (int t = 0; t < TILE; ++t) {
      const int o = tile * TILE + t;
      g[t] = o < n_out ? gy[int64_t(o) * gs_f + b * gs_b] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kDxPairs; ++j) {
      if (j < pc) {
        const float4* q00 = reinterpret_cast<const float4*>(table + base[j]);
        const float4* q01 = reinterpret_cast<const float4*>(table + base[j] + RS);
        const float4* q10 = reinterpret_cast<const float4*>(table + base[j] + side * RS);
        const float4* q11 = reinterpret_cast<const float4*>(table + base[j] + (side + 1) * RS);
        float a1 = 0.f, a2 = 0.f;  // sum_o g * (P10-P00), g * (P11-P01) and similar
        float e1 = 0.f, e2 = 0.f;
#pragma unroll
        for (int k = 0; k < TILE / 4; ++k) {
          const float4 A = q00[k], B = q01[k], C = q10[k], D = q11[k];
          const float* gk = g + 4 * k;
          // dy/dx1 = (1-d2)(P10-P00) + d2 (P11-P01); dy/dx2 = (1-d1)(P01-P00) + d1 (P11-P10)
          a1 += gk[0] * (C.x - A.x) + gk[1] * (C.y - A.y) + gk[2] * (C.z - A.z) + gk[3] * (C.w - A.w);
          a2 += gk[0] * (D.x - B.x) + gk[1] * (D.y - B.y) + gk[2] * (D.z - B.z) + gk[3] * (D.w - B.w);
          e1 += gk[0] * (B.x - A.x) + gk[1] * (B.y - A.y) + gk[2] * (B.z - A.z) + gk[3] * (B.w - A.w);
          e2 += gk[0] * (D.x - C.x) + gk[1] * (D.y - C.y) + gk[2] * (D.z - C.z) + gk[3] * (D.w - C.w);
        }
        s1[j] += (1.f - d2[j]) * a1 + d2[j] * a2;
        s2[j] += (1.f - d1[j]) * e1 + d1[j] * e2;
      }
    }
  }
  if (active) {
#pragma unroll
    for (int j = 0; j < kDxPairs; ++j) {
      if (j < pc) {
        const int64_t f = 2 * int64_t(p0 + j);
        dx[f * xs_f + b * xs_b] = s1[j] / h1[j];
        dx[(f + 1) * xs_f + b * xs_b] = s2[j] / h2[j];
      }
    }
  }
}

template <int TILE>
__global__ void __launch_bounds__(1024)
dp_kernel(const float* __restrict__ x,        // x: (f, b) at f*xs_f + b*xs_b
          const float* __restrict__ borders,  // [G+1]
          const float* __restrict__ gy,       // grad_y: (o, b) at o*gs_f + b*gs_b
          float* __restrict__ dp,             // [G+1, G+1, N_out, P]
          int64_t batch, int n_out, int n_pairs, int num_grids, int chunk,
          int64_t per_split, bool batch_last, bool use_atomics,
          int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b) {
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1;
  const int cells = side * side;
  const int slots = blockDim.x;
  const int ppb = slots / TILE;  // pairs per block
  float* acc = smem;                                       // [cells][slots]
  float* gy_s = acc + int64_t(cells) * slots;              // [chunk][TILE]
  float4* info_s = reinterpret_cast<float4*>(gy_s + chunk * TILE);  // [chunk][ppb]: cell, d1, d2
  float* s_borders = reinterpret_cast<float*>(info_s + int64_t(chunk) * ppb);  // [side]

  const int n_tiles = (n_out + TILE - 1) / TILE;
  const int tile = blockIdx.x % n_tiles;
  const int p_first = (blockIdx.x / n_tiles) * ppb;
  const int slot = threadIdx.x;
  const int tl = slot % TILE, pl = slot / TILE;
  const int o = tile * TILE + tl, p = p_first + pl;

  for (int i = threadIdx.x; i < side; i += slots) s_borders[i] = borders[i];
  for (int c = 0; c < cells; ++c) acc[c * slots + slot] = 0.f;

  const int64_t b_begin = blockIdx.y * per_split;
  const int64_t b_end = min(batch, b_begin + per_split);
  for (int64_t b0 = b_begin; b0 < b_end; b0 += chunk) {
    const int cs = static_cast<int>(min(int64_t(chunk), b_end - b0));
    __syncthreads();  // previous chunk consumed (and borders written, first time)
    for (int i = threadIdx.x; i < TILE * cs; i += slots) {
      const int t = batch_last ? i / cs : i % TILE;
      const int s = batch_last ? i % cs : i / TILE;
      const int oo = tile * TILE + t;
      gy_s[s * TILE + t] = oo < n_out ? gy[int64_t(oo) * gs_f + (b0 + s) * gs_b] : 0.f;
    }
    for (int i = threadIdx.x; i < ppb * cs; i += slots) {
      const int q = batch_last ? i / cs : i % ppb;
      const int s = batch_last ? i % cs : i / ppb;
      const int pp = p_first + q;
      int index = 0;
      float a = 0.f, bb = 0.f;
      if (pp < n_pairs) {
        const int64_t f = 2 * int64_t(pp);
        const Cell c1 = cdf_cell(x[f * xs_f + (b0 + s) * xs_b], s_borders, num_grids);
        const Cell c2 = cdf_cell(x[(f + 1) * xs_f + (b0 + s) * xs_b], s_borders, num_grids);
        index = c1.index * side + c2.index;
        a = c1.d;
        bb = c2.d;
      }
      info_s[s * ppb + q] = make_float4(__int_as_float(index), a, bb, 0.f);
    }
    __syncthreads();
    for (int s = 0; s < cs; ++s) {
      const float g = gy_s[s * TILE + tl];
      const float4 v = info_s[s * ppb + pl];
      const float a = v.y, bb = v.z;
      float* r = acc + __float_as_int(v.x) * slots + slot;
      const float ga = g * a, gna = g - ga;  // g*d1, g*(1-d1)
      // The 4 corners are distinct addresses: load all, then store all.
      const float r00 = r[0], r01 = r[slots], r10 = r[side * slots], r11 = r[(side + 1) * slots];
      r[0] = r00 + (gna - gna * bb);
      r[slots] = r01 + gna * bb;
      r[side * slots] = r10 + (ga - ga * bb);
      r[(side + 1) * slots] = r11 + ga * bb;
    }
  }
  if (o < n_out && p < n_pairs) {
    for (int c = 0; c < cells; ++c) {
      const float v = acc[c * slots + slot];
      float* dst = dp + (int64_t(c) * n_out + o) * n_pairs + p;
      if (use_atomics) atomicAdd(dst, v);
      else *dst = v;
    }
  }
}

template <int TILE>
void launch_backward(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                     const at::Tensor& gy, at::Tensor& dx, at::Tensor& dp, int64_t batch,
                     int n_out, int n_pairs, int num_grids, int block, bool batch_last,
                     bool fast, const DeviceLimits& lim) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t in_dim = 2 * int64_t(n_pairs);
  const int64_t xs_f = batch_last ? batch : 1, xs_b = batch_last ? 1 : in_dim;
  const int64_t gs_f = batch_last ? batch : 1, gs_b = batch_last ? 1 : n_out;

  // ---- dx ---- (at most 512 threads: TILE grad_y values and kDxPairs cells per thread
  // need more than the 64 registers a 1024-thread block allows)
  {
    const int dx_block = std::min(block, 512);
    const at::Tensor packed = pack_table(params, TILE);
    const int blocks_per_sm = std::max(1, 2048 / dx_block);
    const int64_t budget = std::min<int64_t>(lim.smem_per_sm / blocks_per_sm - 1024, lim.smem_optin);
    int pc = 0;
    for (int c = 1; c <= std::min(kDxPairs, n_pairs); ++c)
      if (dx_smem_bytes(num_grids, TILE, c) <= budget) pc = c;
    if (pc == 0 && dx_smem_bytes(num_grids, TILE, 1) <= lim.smem_optin) pc = 1;
    TORCH_CHECK_VALUE(pc > 0, "lmkan2d_backward: num_grids=", num_grids, " with tile_size=", TILE,
                      " needs ", dx_smem_bytes(num_grids, TILE, 1),
                      " bytes of shared memory per block, the device allows ", lim.smem_optin);
    const int64_t smem = dx_smem_bytes(num_grids, TILE, pc);
    C10_CUDA_CHECK(cudaFuncSetAttribute(dx_kernel<TILE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    dim3 grid(static_cast<unsigned>((batch + dx_block - 1) / dx_block),
              static_cast<unsigned>((n_pairs + pc - 1) / pc));
    dx_kernel<TILE><<<grid, dx_block, smem, stream>>>(
        x.data_ptr<float>(), packed.data_ptr<float>(), borders.data_ptr<float>(),
        gy.data_ptr<float>(), dx.data_ptr<float>(), batch, n_out, n_pairs, num_grids, pc,
        xs_f, xs_b, gs_f, gs_b);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // ---- dP ----
  {
    const int64_t budget = fast ? lim.smem_optin
                                : std::min<int64_t>(lim.smem_per_sm / 2 - 1024, lim.smem_optin);
    const int chunk_pref = fast ? 256 : 64;
    const int want = static_cast<int>(std::min<int64_t>(block, (int64_t(TILE) * n_pairs + 31) / 32 * 32));
    int slots = 0, chunk = 0;
    for (int pass = 0; pass < 2 && slots == 0; ++pass) {
      const int64_t limit = pass == 0 ? budget : lim.smem_optin;
      for (int s = want; s >= 32 && slots == 0; s -= 32)
        for (int c = chunk_pref; c >= 32 && slots == 0; c /= 2)
          if (dp_smem_bytes(num_grids, TILE, s, c) <= limit) { slots = s; chunk = c; }
    }
    TORCH_CHECK_VALUE(slots > 0, "lmkan2d_backward: num_grids=", num_grids, " with tile_size=",
                      TILE, " needs ", dp_smem_bytes(num_grids, TILE, 32, 32),
                      " bytes of shared memory per block for grad_params, the device allows ",
                      lim.smem_optin);
    const int64_t smem = dp_smem_bytes(num_grids, TILE, slots, chunk);
    const int ppb = slots / TILE;
    const int64_t n_tiles = (n_out + TILE - 1) / TILE;
    const int64_t blocks_xy = n_tiles * ((n_pairs + ppb - 1) / ppb);
    const int64_t resident = std::max<int64_t>(1, lim.smem_per_sm / (smem + 1024));
    const int64_t target = 2 * int64_t(lim.num_sms) * std::min<int64_t>(resident, 2048 / slots);
    int64_t splits = std::max<int64_t>(1, (target + blocks_xy - 1) / blocks_xy);
    splits = std::min<int64_t>({splits, std::max<int64_t>(1, batch / (4 * chunk)), 65535});
    int64_t per_split = (batch + splits - 1) / splits;
    per_split = (per_split + chunk - 1) / chunk * chunk;
    splits = (batch + per_split - 1) / per_split;
    C10_CUDA_CHECK(cudaFuncSetAttribute(dp_kernel<TILE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    dim3 grid(static_cast<unsigned>(blocks_xy), static_cast<unsigned>(splits));
    dp_kernel<TILE><<<grid, slots, smem, stream>>>(
        x.data_ptr<float>(), borders.data_ptr<float>(), gy.data_ptr<float>(),
        dp.data_ptr<float>(), batch, n_out, n_pairs, num_grids, chunk, per_split, batch_last,
        splits > 1, xs_f, xs_b, gs_f, gs_b);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& gy_in, const at::Tensor& x_in,
                                                 const at::Tensor& params_in,
                                                 const at::Tensor& borders_in, bool batch_last,
                                                 int64_t tile_size, int64_t block_size,
                                                 bool fast_mode) {
  // grad_y: [N_out, B] (batch_last) or [B, N_out]; x: [N_in, B] or [B, N_in];
  // params: [G+1, G+1, N_out, N_in/2]; borders: [G+1]. Returns (grad_x like x, grad_params).
  check_common(x_in, params_in, borders_in, batch_last, tile_size, block_size, "lmkan2d_backward");
  check_cuda_float(gy_in, "grad_y");
  check_same_device(x_in, "x", gy_in, "grad_y");
  check_dim(gy_in, 2, "grad_y");
  const int64_t n_out = params_in.size(2);
  const int64_t batch = batch_last ? x_in.size(1) : x_in.size(0);
  const std::vector<int64_t> want = batch_last ? std::vector<int64_t>{n_out, batch}
                                               : std::vector<int64_t>{batch, n_out};
  TORCH_CHECK_VALUE(gy_in.sizes() == at::IntArrayRef(want), "lmkan2d_backward: grad_y must have shape ",
                    at::IntArrayRef(want), ", got ", gy_in.sizes());
  const at::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), params = params_in.contiguous(),
                   borders = borders_in.contiguous(), gy = gy_in.contiguous();
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int n_pairs = static_cast<int>(params.size(3));
  at::Tensor dx = at::empty_like(x);
  at::Tensor dp = at::zeros_like(params);
  if (batch == 0) return {dx, dp};
  const DeviceLimits lim = device_limits(x.device().index());
  const int tile = static_cast<int>(tile_size), block = static_cast<int>(block_size);
  const std::string mode = fast_mode ? "backward_fast" : "backward";
  const int limit = max_num_grids_for(tile, mode, x.device().index());
  TORCH_CHECK_VALUE(num_grids <= limit, "lmkan2d_backward: num_grids=", num_grids,
                    " does not fit in shared memory with tile_size=", tile, " (", mode,
                    "); the largest supported is ", limit);
  if (tile == 4) launch_backward<4>(x, params, borders, gy, dx, dp, batch, n_out, n_pairs, num_grids, block, batch_last, fast_mode, lim);
  else if (tile == 8) launch_backward<8>(x, params, borders, gy, dx, dp, batch, n_out, n_pairs, num_grids, block, batch_last, fast_mode, lim);
  else launch_backward<16>(x, params, borders, gy, dx, dp, batch, n_out, n_pairs, num_grids, block, batch_last, fast_mode, lim);
  return {dx, dp};
}

}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("lmkan2d_backward", &lmkan::lmkan2d::backward_cuda);
}
