// grad_x of the deterministic 2D backward over several output tiles: dx_kernel (the scheme
// is in backward.cpp's comment), tiles added in a fixed order by the entry's owner thread.
#include <algorithm>

#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/static_switch.h"
#include "lmkan2d/device.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

// Threads of a dx block: block_size_backward, capped so that the 16 x K grad_y registers
// per lane fit without spilling (K = 4 needs ~160 registers: at most 256 threads).
constexpr int dx_max_block(int tile) { return tile == 16 ? 256 : 512; }

// Deterministic grad_x over several output tiles (see the file comment). kSlopes: the x part
// of d<w, grad_x>/dx (the op lmkan2d_slope_grad_x): per pair the mixed second derivative
// sum_o g d2f/dx1dx2 = sum_o g (c00 - c01 - c10 + c11) / (h1 h2) (d2f/dx1^2 = d2f/dx2^2 = 0
// inside a cell), times the weight of the pair's other input.
template <int TILE, bool TABLE_IN_SMEM, bool kSlopes = false>
__global__ void __launch_bounds__(dx_max_block(TILE), 2)  // 2 blocks per SM: staging overlaps
dx_kernel(const float* __restrict__ x,        // x: (f, b) at f*xs_f + b*xs_b
          const float* __restrict__ w,        // kSlopes: the weights, x's layout
          const float* __restrict__ packed,   // [n_tiles, P, cells, W]
          const float* __restrict__ borders,  // [G+1]
          const float* __restrict__ gy,       // grad_y: (o, b) at o*gs_f + b*gs_b
          float* __restrict__ dx,             // grad_x: same layout as x
          int64_t batch, int n_out, int n_pairs, int num_grids, int64_t xs_f, int64_t xs_b,
          int64_t gs_f, int64_t gs_b) {
  constexpr int K = TILE / 4, W = bwd_width(TILE);
  constexpr int S = 16;                                  // samples per transpose-reduce round
  constexpr int SW = dx_samples_per_warp(TILE), ROUNDS = SW / S;
  static_assert(2 * S == 32 && SW % S == 0, "a transpose-reduce round finishes 2 sums per sample");
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1;
  const int64_t slice = int64_t(side) * side * W;  // floats of one (tile, pair) table slice
  const int samples = (blockDim.x / 32) * SW;      // per block
  float* table = smem;                             // [cells][W] (TABLE_IN_SMEM only)
  float4* info = reinterpret_cast<float4*>(smem + (TABLE_IN_SMEM ? slice : 0));  // [samples]
  float2* inv_h = reinterpret_cast<float2*>(info + samples);                     // [samples]
  float* s_borders = reinterpret_cast<float*>(inv_h + samples);                  // [side]
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = borders[i];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t b_block = blockIdx.x * int64_t(samples);
  const int64_t b_warp = b_block + warp * SW;
  // The lane that finishes sum `lane` of a transpose-reduce round: sample lane % S of the
  // round, input 2p or 2p+1 (the same for every output tile).
  const int my_sample = lane % S, my_input = lane / S;

  // The block walks every output tile in order and each dx is summed over the tiles by the
  // one thread that owns it (no atomics: deterministic).
  const int n_tiles = (n_out + W - 1) / W;
  for (int tile_index = 0; tile_index < n_tiles; ++tile_index) {
    const bool first_tile = tile_index == 0;
    const float* tile_table = packed + int64_t(tile_index) * n_pairs * slice;

    // grad_y of the warp's SW samples for the lane's K outputs, kept for every pair.
    float g[SW][K];
#pragma unroll
    for (int s = 0; s < SW; ++s) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int o = tile_index * W + lane * K + k;
        const int64_t b = b_warp + s;
        g[s][k] = (o < n_out && b < batch) ? gy[int64_t(o) * gs_f + b * gs_b] : 0.f;
      }
    }
    for (int p = 0; p < n_pairs; ++p) {
      __syncthreads();  // the previous pair's slice and cells are consumed (borders written)
      if constexpr (TABLE_IN_SMEM) {
        const float4* src = reinterpret_cast<const float4*>(tile_table + p * slice);
        float4* dst = reinterpret_cast<float4*>(table);
        // unrolled so that several L2 loads per thread are in flight (the copy is exposed
        // when the slice allows only one block per SM)
#pragma unroll 4
        for (int i = threadIdx.x; i < slice / 4; i += blockDim.x) dst[i] = __ldg(src + i);
      }
      for (int i = threadIdx.x; i < samples; i += blockDim.x) {
        const int64_t b = b_block + i;
        float2 h = make_float2(0.f, 0.f);
        info[i] = b < batch ? pair_cell(x, b, p, s_borders, num_grids, xs_f, xs_b, &h)
                            : make_float4(0.f, 0.f, 0.f, 0.f);
        inv_h[i] = h;
      }
      __syncthreads();
      const float* tab = (TABLE_IN_SMEM ? table : tile_table + p * slice) + lane * K;
#pragma unroll
      for (int round = 0; round < ROUNDS; ++round) {
        const int first = round * S;  // the round's first sample within the warp's SW
        float part[2 * S];  // [s]: sum_o g dy/dx1 of sample s; [S + s]: dy/dx2
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const float4 c = info[warp * SW + first + s];
          const float* q = tab + __float_as_int(c.x) * W;
          float r[4][K];  // corners (i1,i2), (i1,i2+1), (i1+1,i2), (i1+1,i2+1)
          load_corners<K>(q, side, r);
          float gA = 0.f, gB = 0.f, gC = 0.f, gD = 0.f;
#pragma unroll
          for (int k = 0; k < K; ++k) {
            const float gk = g[first + s][k];
            gA += gk * r[0][k]; gB += gk * r[1][k]; gC += gk * r[2][k]; gD += gk * r[3][k];
          }
          const float d1 = c.y, d2 = c.z;
          if constexpr (kSlopes) {
            part[s] = part[S + s] = (gD - gC) - (gB - gA);
          } else {
            part[s] = (1.f - d2) * (gC - gA) + d2 * (gD - gB);
            part[S + s] = (1.f - d1) * (gB - gA) + d1 * (gD - gC);
          }
        }
        transpose_reduce(part, lane);
        const int64_t my_b = b_warp + first + my_sample;
        if (my_b < batch) {
          const float2 h = inv_h[warp * SW + first + my_sample];
          const int64_t off = (2 * int64_t(p) + my_input) * xs_f + my_b * xs_b;
          float v;
          if constexpr (kSlopes) {  // d/dx1 gets w2's share and d/dx2 w1's
            const int64_t other = (2 * int64_t(p) + 1 - my_input) * xs_f + my_b * xs_b;
            v = part[0] * (h.x * h.y) * w[other];
          } else {
            v = part[0] * (my_input == 0 ? h.x : h.y);
          }
          if (first_tile) dx[off] = v;
          else dx[off] += v;  // this thread wrote it for the previous tile
        }
      }
    }
  }
}

// weights (kSlopes only): like x.
template <int TILE, bool kSlopes = false>
at::Tensor launch_dx(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                     const at::Tensor& gy, int64_t batch, int n_out, int n_pairs, int num_grids,
                     int block, const DeviceLimits& lim,
                     int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b,
                     at::ScalarType table_dtype, const at::Tensor& weights = at::Tensor()) {
  constexpr int W = bwd_width(TILE);
  // block_size_backward threads (capped), fewer where that lets the table slice fit in
  // shared memory; past that, the table is read from global memory.
  int warps = std::min(block, dx_max_block(TILE)) / 32;
  while (warps > 1 && dx_smem_bytes(num_grids, TILE, warps, true) > lim.smem_optin) --warps;
  const bool in_smem = dx_smem_bytes(num_grids, TILE, warps, true) <= lim.smem_optin;
  if (!in_smem) warps = std::min(block, dx_max_block(TILE)) / 32;
  const int threads = warps * 32;
  const int64_t smem = dx_smem_bytes(num_grids, TILE, warps, in_smem);
  const at::Tensor packed = pack_table(params, W, table_dtype);  // float32, rounded values
  at::Tensor dx = at::empty_like(x);  // every entry written by its owner, first tile first
  const auto kernel = in_smem ? dx_kernel<TILE, true, kSlopes> : dx_kernel<TILE, false, kSlopes>;
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  const int64_t samples = int64_t(warps) * dx_samples_per_warp(TILE);
  const dim3 grid(static_cast<unsigned>((batch + samples - 1) / samples));
  kernel<<<grid, threads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), kSlopes ? weights.data_ptr<float>() : nullptr, packed.data_ptr<float>(), borders.data_ptr<float>(),
      gy.data_ptr<float>(), dx.data_ptr<float>(), batch, n_out, n_pairs, num_grids, xs_f, xs_b,
      gs_f, gs_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

}  // namespace

at::Tensor dx_by_sample_tiles(const at::Tensor& x, const at::Tensor& params,
                              const at::Tensor& borders, const at::Tensor& gy, int tile,
                              int64_t batch, int n_out, int n_pairs, int num_grids, int block,
                              const DeviceLimits& lim, int64_t xs_f, int64_t xs_b, int64_t gs_f,
                              int64_t gs_b, at::ScalarType table_dtype) {
  return switch_value<4, 8, 16>(tile, [&](auto tile_c) {
    constexpr int kTile = decltype(tile_c)::value;
    return launch_dx<kTile>(x, params, borders, gy, batch, n_out, n_pairs, num_grids, block, lim,
                            xs_f, xs_b, gs_f, gs_b, table_dtype);
  });
}

at::Tensor slope_dx_by_sample_tiles(const at::Tensor& x, const at::Tensor& weights,
                                    const at::Tensor& params, const at::Tensor& borders,
                                    const at::Tensor& gy, int64_t batch, int n_out, int n_pairs,
                                    int num_grids, bool batch_last, const DeviceLimits& lim,
                                    at::ScalarType table_dtype) {
  const int64_t xs_f = batch_last ? batch : 1, xs_b = batch_last ? 1 : 2 * int64_t(n_pairs);
  const int64_t gs_f = batch_last ? batch : 1, gs_b = batch_last ? 1 : n_out;
  return switch_value<kSlopeNarrowTile, kSlopeTile>(slope_tile(n_out), [&](auto tile_c) {
    return launch_dx<decltype(tile_c)::value, true>(x, params, borders, gy, batch, n_out,
                                                    n_pairs, num_grids, kSlopeBlock, lim, xs_f,
                                                    xs_b, gs_f, gs_b, table_dtype, weights);
  });
}

}  // namespace lmkan2d
}  // namespace lmkan
