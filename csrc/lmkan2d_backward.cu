// LMKAN2DLayer backward: grad_x (dx) and grad_params (dP).
//
// What runs (backward_cuda):
// - Not deterministic (both modes): backward_by_runs (lmkan2d_runs.cu), grad_x and dP in one
//   pass over cell-sorted chunks of the batch, unless it declines (num_grids past its cell
//   histogram, or a narrow output whose padded grad_y copy would be large); then the
//   kernels below, with float atomics where they are faster.
// - Deterministic, or declined (launch_backward):
//   - dx: the forward kernel's scheme (dx_by_output_rows, lmkan2d_forward.cu); dx_kernel
//     below only where deterministic mode has several output tiles to add in a fixed order.
//   - dP: dp_sorted_kernel (cell-sorted chunks, below) when its accumulator fits in shared
//     memory; dp_kernel otherwise (per-warp accumulator, in shared memory or, past that, in
//     a global workspace).
//
// Lane layout (all kernels): the 32 lanes of a warp take W = 8 * TILE CONSECUTIVE outputs
// of one output tile, K = TILE / 4 adjacent outputs per lane, and all lanes work on the same
// (sample, pair) at a time. With the table packed as [n_tiles, P, cells, W], a corner of a
// cell is one contiguous W-float row, so each corner access of a warp is K conflict-free
// 128-byte wavefronts, and the sample's cell (index, d1, d2) is a warp-uniform broadcast.
//
// dx_kernel: a block walks every output tile for warps x SW samples (SW = 16, 32 at tile 4);
// per tile a lane keeps grad_y of its warp's SW samples x K outputs in registers. It loops
// over the input pairs, staging each pair's table slice [cells][W] and the cells of its
// samples in shared memory. Per pair a lane forms its partial dy/dx1, dy/dx2 over its K
// outputs for 16 samples at a time (32 values), one transpose-reduce over the warp leaves
// lane l with the full sum of value l, and the thread that owns a dx entry adds each tile's
// sum to it (no atomics, no workspace).
//
// dp_kernel (no shared-memory atomics): a warp owns one (output tile, pair) and a private
// accumulator [cells][W] in which each lane owns its K columns, so the read-modify-write of
// the 4 corners needs no atomics and has no races. A block (warps = consecutive pairs of one
// output tile) walks a batch range in chunks: grad_y [chunk][W] is staged once per block,
// each warp stages its pair's cells. The accumulator is flushed once, in the packed layout
// [split, n_tiles, P, cells, W]: float atomics (REDG) into one zeroed copy when the batch is
// split over blocks, plain stores when it is not or when deterministic (one copy per split,
// summed in fixed order afterwards), then unpacked to [G+1, G+1, N_out, P].
//
// No num_grids ceiling: when the table slice (dx) or the accumulator (dP) does not fit in
// shared memory, the same kernels read the table from global memory (L1/L2) and accumulate
// in a private region of a global workspace (plain loads and stores, one warp per region).
#include <algorithm>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "checks.h"
#include "lmkan2d_common.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

// K consecutive floats (16/8/4-byte aligned: K * lane floats into a W-float row).
template <int K>
__device__ __forceinline__ void load_k(const float* p, float (&v)[K]) {
  if constexpr (K == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
  } else if constexpr (K == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    v[0] = t.x; v[1] = t.y;
  } else {
    v[0] = p[0];
  }
}

template <int K>
__device__ __forceinline__ void store_k(float* p, const float (&v)[K]) {
  if constexpr (K == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else if constexpr (K == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else {
    p[0] = v[0];
  }
}

// Corner j = 2a + b of a cell, (i1+a, i2+b), relative to the cell's row in a [cells][W]
// array: distinct rows for the 4 corners.
__device__ __forceinline__ int corner_offset(int j, int side, int width) {
  return ((j >> 1) * side + (j & 1)) * width;
}

// The 4 corners of a cell at q (a lane's K columns).
template <int K>
__device__ __forceinline__ void load_corners(const float* q, int side, float (&r)[4][K]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) load_k<K>(q + corner_offset(j, side, 32 * K), r[j]);
}

template <int K>
__device__ __forceinline__ void store_corners(float* q, int side, const float (&r)[4][K]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) store_k<K>(q + corner_offset(j, side, 32 * K), r[j]);
}

// r += g * the bilinear weights of (d1, d2) at the 4 corners.
template <int K>
__device__ __forceinline__ void add_sample(float (&r)[4][K], const float (&g)[K], float d1,
                                           float d2) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float g1 = g[k] * d1, g0 = g[k] - g1;  // g * d1, g * (1 - d1)
    r[0][k] += g0 - g0 * d2;
    r[1][k] += g0 * d2;
    r[2][k] += g1 - g1 * d2;
    r[3][k] += g1 * d2;
  }
}

// Read-modify-write of one sample's 4 corners (all loads, then all stores).
template <int K>
__device__ __forceinline__ void update_cell(float* q, int side, const float (&g)[K], float d1,
                                            float d2) {
  float r[4][K];
  load_corners<K>(q, side, r);
  add_sample<K>(r, g, d1, d2);
  store_corners<K>(q, side, r);
}

// ---- dP by cell-sorted chunks ----------------------------------------------------------
//
// A block owns one (pair, output tile) and a batch range, with the accumulator [cells][W] of
// that slice in shared memory. The range is walked in chunks of C = warps * 32 * kSortSpl
// samples; each chunk is counting-sorted by cell (stable: ranks follow sample order, so the
// result is deterministic), then the warps walk the cells: for a cell, a lane keeps the 4
// corners of its K columns in registers over the whole run of samples in that cell and
// touches the accumulator once per run (a run is ~C / cells samples: 25 at G = 8), instead
// of a read-modify-write of 4 rows per sample. grad_y is read as rows of a batch-first copy
// [B][n_tiles * W] (zero-padded columns), so a warp's read of a sample's W outputs is one
// coalesced line, served from L2/L1.
// Cells are processed in 4 phases by the parity of (i1, i2): cells of one phase have
// disjoint corners, so the warps of a phase never touch the same accumulator row.
constexpr int kSortSpl = 8;  // samples per lane per chunk in the sort

// Shared memory of the sorted dP kernel: accumulator [cells][W] floats, per-warp cell counts
// [warps][cells] and run offsets [cells + 1] (ints), the sorted chunk [C] (float4), borders.
inline int64_t dp_sorted_smem_bytes(int num_grids, int w, int warps) {
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  const int64_t chunk = int64_t(warps) * 32 * kSortSpl;
  return cells * w * 4 + int64_t(warps) * cells * 4 + (cells + 1) * 4 + chunk * 16 +
         int64_t(num_grids + 1) * 4 + 16;
}

// Blocks of up to 16 warps at K = 4 (one block per SM: its accumulator rows are long), 8
// elsewhere (four blocks per SM at <= 64 registers); measured on the H100, G = 8.
constexpr int dp_sorted_max_warps(int k) { return k == 4 ? 16 : 8; }

template <int K>
__global__ void __launch_bounds__(32 * dp_sorted_max_warps(K), K == 4 ? 1 : 4)
dp_sorted_kernel(const float* __restrict__ x,       // x: (f, b) at f*xs_f + b*xs_b
                 const float* __restrict__ borders,  // [G+1]
                 const float* __restrict__ gyt,      // grad_y rows [B][ld], ld = n_tiles * W
                 float* __restrict__ ws,             // [splits, n_tiles, P, cells, W]
                 int64_t batch, int n_pairs, int n_tiles, int num_grids, int64_t per_split,
                 int64_t xs_f, int64_t xs_b) {
  constexpr int W = 32 * K;
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1, cells = side * side;
  const int warps = blockDim.x / 32, chunk = warps * 32 * kSortSpl;
  float* acc = smem;                                            // [cells][W]
  int* wcount = reinterpret_cast<int*>(acc + int64_t(cells) * W);  // [warps][cells]
  int* offs = wcount + warps * cells;                           // [cells + 1]
  float4* sorted = reinterpret_cast<float4*>(
      (reinterpret_cast<uintptr_t>(offs + cells + 1) + 15) & ~uintptr_t(15));  // [chunk]
  float* s_borders = reinterpret_cast<float*>(sorted + chunk);  // [side]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int p = blockIdx.x, tile = blockIdx.y;
  const int64_t ld = int64_t(n_tiles) * W;
  const int64_t b_begin = blockIdx.z * per_split;
  const int64_t b_end = min(batch, b_begin + per_split);

  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = borders[i];
  for (int i = threadIdx.x; i < cells * W / 4; i += blockDim.x)
    reinterpret_cast<float4*>(acc)[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  const float* gy_tile = gyt + tile * W + K * lane;

  for (int64_t b0 = b_begin; b0 < b_end; b0 += chunk) {
    for (int i = threadIdx.x; i < warps * cells; i += blockDim.x) wcount[i] = 0;
    __syncthreads();  // counts zeroed (borders written, previous chunk consumed)
    // 1. cells of the warp's samples (in sample order) and their rank among the warp's
    //    earlier samples of the same cell
    int key[kSortSpl], rank[kSortSpl];
    float d1[kSortSpl], d2[kSortSpl];
    int* my_count = wcount + warp * cells;
#pragma unroll
    for (int t = 0; t < kSortSpl; ++t) {
      const int s = (warp * kSortSpl + t) * 32 + lane;
      const int64_t b = b0 + s;
      key[t] = -1 - lane;  // unique and never counted for samples past the range
      d1[t] = d2[t] = 0.f;
      if (b < b_end) {
        const float4 c = pair_cell(x, b, p, s_borders, num_grids, xs_f, xs_b, nullptr);
        key[t] = __float_as_int(c.x);
        d1[t] = c.y;
        d2[t] = c.z;
      }
      const unsigned peers = __match_any_sync(0xffffffffu, key[t]);
      const int before = key[t] >= 0 ? my_count[key[t]] : 0;
      __syncwarp();  // every peer has read the count before the leader adds to it
      if (key[t] >= 0 && lane == __ffs(peers) - 1) my_count[key[t]] = before + __popc(peers);
      __syncwarp();
      rank[t] = before + __popc(peers & ((1u << lane) - 1u));
    }
    __syncthreads();
    // 2. per cell: the warps' counts become their exclusive prefix (warp order = sample
    //    order); offs[c] = the cell's total, then an exclusive scan over the cells
    for (int c = threadIdx.x; c < cells; c += blockDim.x) {
      int run = 0;
      for (int w = 0; w < warps; ++w) {
        const int n = wcount[w * cells + c];
        wcount[w * cells + c] = run;
        run += n;
      }
      offs[c] = run;
    }
    __syncthreads();
    if (warp == 0) {
      int carry = 0;
      for (int base = 0; base < cells; base += 32) {
        const int c = base + lane;
        const int v = c < cells ? offs[c] : 0;
        int incl = v;
#pragma unroll
        for (int d = 1; d < 32; d *= 2) {
          const int t = __shfl_up_sync(0xffffffffu, incl, d);
          if (lane >= d) incl += t;
        }
        if (c < cells) offs[c] = carry + incl - v;
        carry += __shfl_sync(0xffffffffu, incl, 31);
      }
      if (lane == 0) offs[cells] = carry;
    }
    __syncthreads();
    // 3. scatter (chunk-relative sample index, d1, d2) to the sorted position
#pragma unroll
    for (int t = 0; t < kSortSpl; ++t) {
      if (key[t] >= 0) {
        const int s = (warp * kSortSpl + t) * 32 + lane;
        const int pos = offs[key[t]] + wcount[warp * cells + key[t]] + rank[t];
        sorted[pos] = make_float4(__int_as_float(s), d1[t], d2[t], 0.f);
      }
    }
    __syncthreads();
    // 4. walk the cells, in 4 phases of disjoint corners
    for (int phase = 0; phase < 4; ++phase) {
      const int a = phase >> 1, bpar = phase & 1;
      const int ni = (num_grids - a + 1) / 2, nj = (num_grids - bpar + 1) / 2;
      for (int idx = warp; idx < ni * nj; idx += warps) {
        const int c = (a + 2 * (idx / nj)) * side + bpar + 2 * (idx % nj);
        const int s0 = offs[c], s1 = offs[c + 1];
        if (s0 == s1) continue;
        float r[4][K];
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int k = 0; k < K; ++k) r[j][k] = 0.f;
#pragma unroll 4
        for (int s = s0; s < s1; ++s) {
          const float4 v = sorted[s];  // broadcast
          float g[K];
          load_row<K>(gy_tile + (b0 + __float_as_int(v.x)) * ld, g);
          add_sample<K>(r, g, v.y, v.z);
        }
        float* q = acc + int64_t(c) * W + K * lane;
        float old[4][K];
        load_corners<K>(q, side, old);
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int k = 0; k < K; ++k) old[j][k] += r[j][k];
        store_corners<K>(q, side, old);
      }
      __syncthreads();  // the next phase's cells share corners with this one's
    }
  }
  // 5. the slice's accumulator -> its workspace copy (one writer per element)
  float4* dst = reinterpret_cast<float4*>(
      ws + ((blockIdx.z * int64_t(n_tiles) + tile) * n_pairs + p) * int64_t(cells) * W);
  for (int i = threadIdx.x; i < cells * W / 4; i += blockDim.x)
    dst[i] = reinterpret_cast<const float4*>(acc)[i];
}

// Threads of a dx block: block_size_backward, capped so that the 16 x K grad_y registers
// per lane fit without spilling (K = 4 needs ~160 registers: at most 256 threads).
constexpr int dx_max_block(int tile) { return tile == 16 ? 256 : 512; }

// Deterministic grad_x over several output tiles (see the file comment).
template <int TILE, bool TABLE_IN_SMEM>
__global__ void __launch_bounds__(dx_max_block(TILE), 2)  // 2 blocks per SM: staging overlaps
dx_kernel(const float* __restrict__ x,        // x: (f, b) at f*xs_f + b*xs_b
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
          part[s] = (1.f - d2) * (gC - gA) + d2 * (gD - gB);
          part[S + s] = (1.f - d1) * (gB - gA) + d1 * (gD - gC);
        }
        transpose_reduce(part, lane);
        const int64_t my_b = b_warp + first + my_sample;
        if (my_b < batch) {
          const float2 h = inv_h[warp * SW + first + my_sample];
          const float v = part[0] * (my_input == 0 ? h.x : h.y);
          const int64_t off = (2 * int64_t(p) + my_input) * xs_f + my_b * xs_b;
          if (first_tile) dx[off] = v;
          else dx[off] += v;  // this thread wrote it for the previous tile
        }
      }
    }
  }
}

template <int TILE, bool ACC_IN_SMEM>
__global__ void __launch_bounds__(1024)
dp_kernel(const float* __restrict__ x,        // x: (f, b) at f*xs_f + b*xs_b
          const float* __restrict__ borders,  // [G+1]
          const float* __restrict__ gy,       // grad_y: (o, b) at o*gs_f + b*gs_b
          float* ws,                          // [splits or 1, n_tiles, P, cells, W]
          int64_t batch, int n_out, int n_pairs, int num_grids, int chunk, int64_t per_split,
          bool batch_last, bool use_atomics, bool per_split_copies,
          int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b) {
  constexpr int K = TILE / 4, W = bwd_width(TILE);
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1;
  const int cells = side * side;
  const int warps = blockDim.x / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float* s_acc = smem;                                              // [warps][cells][W]
  float* gy_s = smem + (ACC_IN_SMEM ? int64_t(warps) * cells * W : 0);  // [chunk][W]
  float4* info = reinterpret_cast<float4*>(gy_s + int64_t(chunk) * W);  // [warps][chunk]
  float* s_borders = reinterpret_cast<float*>(info + int64_t(warps) * chunk);  // [side]
  float4* my_info = info + int64_t(warp) * chunk;

  const int n_tiles = (n_out + W - 1) / W;
  const int tile_index = blockIdx.x % n_tiles;
  const int p = (blockIdx.x / n_tiles) * warps + warp;
  const bool has_pair = p < n_pairs;
  const int64_t region = int64_t(cells) * W;  // floats of one (tile, pair) accumulator
  // This warp's (tile, pair) region of the split's copy of the workspace.
  const int copy = per_split_copies ? blockIdx.y : 0;
  float* ws_region =
      ws + ((int64_t(copy) * n_tiles + tile_index) * n_pairs + (has_pair ? p : 0)) * region;
  // Each lane owns columns lane*K .. lane*K+K-1 of its warp's accumulator.
  float* acc = (ACC_IN_SMEM ? s_acc + int64_t(warp) * region : ws_region) + lane * K;

  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = borders[i];
  if constexpr (ACC_IN_SMEM) {
    float zero[K];
#pragma unroll
    for (int k = 0; k < K; ++k) zero[k] = 0.f;
    for (int c = 0; c < cells; ++c) store_k<K>(acc + c * W, zero);
  }  // (the global-memory accumulator comes zeroed)

  const int64_t b_begin = blockIdx.y * per_split;
  const int64_t b_end = min(batch, b_begin + per_split);
  for (int64_t b0 = b_begin; b0 < b_end; b0 += chunk) {
    const int cs = static_cast<int>(min(int64_t(chunk), b_end - b0));
    __syncthreads();  // previous chunk consumed (borders written, first time)
    for (int i = threadIdx.x; i < W * cs; i += blockDim.x) {
      // batch-last: neighbouring threads read neighbouring samples of one output row.
      const int t = batch_last ? i / cs : i % W;
      const int s = batch_last ? i % cs : i / W;
      const int o = tile_index * W + t;
      gy_s[s * W + t] = o < n_out ? gy[int64_t(o) * gs_f + (b0 + s) * gs_b] : 0.f;
    }
    __syncthreads();  // borders visible before the cells below use them
    if (!has_pair) continue;
    for (int s = lane; s < cs; s += 32)
      my_info[s] = pair_cell(x, b0 + s, p, s_borders, num_grids, xs_f, xs_b, nullptr);
    __syncwarp();
    // Two samples at a time: their cells' corners are disjoint (the usual case), the same
    // cell (one read-modify-write), or overlapping (one after the other). Disjoint corners
    // let the 8 loads of both samples be in flight together, which matters when few warps
    // fit on an SM (large G).
    int s = 0;
    for (; s + 1 < cs; s += 2) {
      const float4 c0 = my_info[s], c1 = my_info[s + 1];
      const int i0 = __float_as_int(c0.x), i1 = __float_as_int(c1.x);
      float g0[K], g1[K];
      load_k<K>(gy_s + s * W + lane * K, g0);
      load_k<K>(gy_s + (s + 1) * W + lane * K, g1);
      const int gap = abs(i1 - i0);
      if (gap == 0) {
        float r[4][K];
        load_corners<K>(acc + i0 * W, side, r);
        add_sample<K>(r, g0, c0.y, c0.z);
        add_sample<K>(r, g1, c1.y, c1.z);
        store_corners<K>(acc + i0 * W, side, r);
      } else if (gap == 1 || gap == side - 1 || gap == side || gap == side + 1) {
        update_cell<K>(acc + i0 * W, side, g0, c0.y, c0.z);
        update_cell<K>(acc + i1 * W, side, g1, c1.y, c1.z);
      } else {
        float r0[4][K], r1[4][K];
        load_corners<K>(acc + i0 * W, side, r0);
        load_corners<K>(acc + i1 * W, side, r1);
        add_sample<K>(r0, g0, c0.y, c0.z);
        add_sample<K>(r1, g1, c1.y, c1.z);
        store_corners<K>(acc + i0 * W, side, r0);
        store_corners<K>(acc + i1 * W, side, r1);
      }
    }
    if (s < cs) {
      const float4 c = my_info[s];
      float g[K];
      load_k<K>(gy_s + s * W + lane * K, g);
      update_cell<K>(acc + __float_as_int(c.x) * W, side, g, c.y, c.z);
    }
    __syncwarp();  // my_info is rewritten by other lanes in the next chunk
  }
  if constexpr (ACC_IN_SMEM) {
    if (has_pair) {
      float* dst = ws_region + lane * K;
      for (int c = 0; c < cells; ++c) {
        float v[K];
        load_k<K>(acc + c * W, v);
        if (use_atomics) {
#pragma unroll
          for (int k = 0; k < K; ++k) atomicAdd(dst + c * W + k, v[k]);
        } else {
          store_k<K>(dst + c * W, v);
        }
      }
    }
  }
}

template <int TILE>
at::Tensor launch_dx(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                     const at::Tensor& gy, int64_t batch, int n_out, int n_pairs, int num_grids,
                     int block, const DeviceLimits& lim,
                     int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b) {
  constexpr int W = bwd_width(TILE);
  // block_size_backward threads (capped), fewer where that lets the table slice fit in
  // shared memory; past that, the table is read from global memory.
  int warps = std::min(block, dx_max_block(TILE)) / 32;
  while (warps > 1 && dx_smem_bytes(num_grids, TILE, warps, true) > lim.smem_optin) --warps;
  const bool in_smem = dx_smem_bytes(num_grids, TILE, warps, true) <= lim.smem_optin;
  if (!in_smem) warps = std::min(block, dx_max_block(TILE)) / 32;
  const int threads = warps * 32;
  const int64_t smem = dx_smem_bytes(num_grids, TILE, warps, in_smem);
  const at::Tensor packed = pack_table(params, W);
  at::Tensor dx = at::empty_like(x);  // every entry written by its owner, first tile first
  const auto kernel = in_smem ? dx_kernel<TILE, true> : dx_kernel<TILE, false>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const int64_t samples = int64_t(warps) * dx_samples_per_warp(TILE);
  const dim3 grid(static_cast<unsigned>((batch + samples - 1) / samples));
  kernel<<<grid, threads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), packed.data_ptr<float>(), borders.data_ptr<float>(),
      gy.data_ptr<float>(), dx.data_ptr<float>(), batch, n_out, n_pairs, num_grids, xs_f, xs_b,
      gs_f, gs_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

// Largest workspace (bytes) that the split of the batch may ask for when each split keeps
// its own copy of dP (deterministic, or the global-memory accumulator).
constexpr int64_t kDpWorkspaceBytes = int64_t(1) << 30;

template <int TILE>
at::Tensor launch_dp(const at::Tensor& x, const at::Tensor& borders, const at::Tensor& gy,
                     int64_t batch, int n_out, int n_pairs, int num_grids, int block, bool fast,
                     bool batch_last, bool deterministic, const DeviceLimits& lim,
                     int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b) {
  constexpr int W = bwd_width(TILE);
  const int n_tiles = (n_out + W - 1) / W;
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  // Warps (one pair each) per block: at most block_size_backward / 32 and the pairs; in
  // shared memory as many accumulators as fit in half an SM (normal: 2 blocks per SM) or the
  // whole opt-in memory (fast); fast mode also stages larger chunks of samples.
  const int max_warps = std::min(block / 32, n_pairs);
  const int64_t budget = fast ? lim.smem_optin
                              : std::min<int64_t>(
                                    lim.smem_per_sm / 2 - kReservedSmemPerBlock, lim.smem_optin);
  // Fast mode with a shared accumulator and no more cells than the largest chunk also sorts
  // each chunk by cell (runs of one cell accumulate in registers).
  const int chunk_pref = fast ? kDpMaxChunk : 64;
  int warps = 0, chunk = 0;
  const bool in_smem = dp_smem_bytes(num_grids, TILE, 1, kDpMinChunk, true) <= lim.smem_optin;
  if (in_smem) {
    for (int pass = 0; pass < 2 && warps == 0; ++pass) {
      const int64_t limit = pass == 0 ? budget : lim.smem_optin;
      for (int w = max_warps; w >= 1 && warps == 0; --w)
        for (int c = chunk_pref; c >= kDpMinChunk && warps == 0; c /= 2)
          if (dp_smem_bytes(num_grids, TILE, w, c, true) <= limit) { warps = w; chunk = c; }
    }
  } else {
    warps = max_warps;
    chunk = chunk_pref;
  }
  const int64_t smem = dp_smem_bytes(num_grids, TILE, warps, chunk, in_smem);
  const int64_t blocks_xy = int64_t(n_tiles) * ((n_pairs + warps - 1) / warps);
  const int64_t resident = std::max<int64_t>(
      1, std::min<int64_t>(lim.smem_per_sm / (smem + kReservedSmemPerBlock),
                         lim.max_threads_per_sm / (32 * warps)));
  const int64_t target = 2 * int64_t(lim.num_sms) * resident;
  int64_t splits = std::max<int64_t>(1, (target + blocks_xy - 1) / blocks_xy);
  splits = std::min<int64_t>({splits, std::max<int64_t>(1, batch / (4 * chunk)), 65535});
  // Each split keeps its own copy: deterministic (summed in order below) or the global
  // accumulator (each warp's region private). Keep that workspace bounded.
  const bool per_split_copies = deterministic || !in_smem;
  const int64_t copy_bytes = int64_t(n_tiles) * n_pairs * cells * W * 4;
  if (per_split_copies)
    splits = std::max<int64_t>(1, std::min<int64_t>(splits, kDpWorkspaceBytes / copy_bytes));
  int64_t per_split = (batch + splits - 1) / splits;
  per_split = (per_split + chunk - 1) / chunk * chunk;
  splits = (batch + per_split - 1) / per_split;
  const bool atomics = !per_split_copies && splits > 1;
  const int64_t copies = per_split_copies ? splits : 1;
  // Written in full by stores when each region has one writer; zeroed for atomics and for
  // the global-memory accumulator.
  const auto options = x.options();
  at::Tensor ws = (atomics || !in_smem)
                      ? at::zeros({copies, n_tiles, n_pairs, cells, W}, options)
                      : at::empty({copies, n_tiles, n_pairs, cells, W}, options);
  const auto kernel = in_smem ? dp_kernel<TILE, true> : dp_kernel<TILE, false>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  dim3 grid(static_cast<unsigned>(blocks_xy), static_cast<unsigned>(splits));
  kernel<<<grid, warps * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), borders.data_ptr<float>(), gy.data_ptr<float>(), ws.data_ptr<float>(),
      batch, n_out, n_pairs, num_grids, chunk, per_split, batch_last, atomics, per_split_copies,
      xs_f, xs_b, gs_f, gs_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return unpack_dp(ws, num_grids, n_out);
}

// Sorted-chunk dP (dp_sorted_kernel) when its accumulator fits in shared memory; an
// undefined tensor otherwise (the caller then runs launch_dp). Deterministic either way:
// each split writes its own copy, summed in a fixed order.
template <int TILE>
at::Tensor launch_dp_sorted(const at::Tensor& x, const at::Tensor& borders, const at::Tensor& gy,
                            int64_t batch, int n_out, int n_pairs, int num_grids, int block,
                            bool fast, bool batch_last, const DeviceLimits& lim, int64_t xs_f,
                            int64_t xs_b) {
  constexpr int K = TILE / 4, W = bwd_width(TILE);
  const int n_tiles = (n_out + W - 1) / W;
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  // Fast mode: the whole opt-in shared memory (more warps, longer chunks, longer runs per
  // cell). Normal mode: two blocks per SM, with fewer warps if needed, but never fewer than
  // 4; where even that does not fit in half an SM it runs the fast configuration (measured
  // on the H100, G = 26: 4-warp blocks, one per SM, took 189 ms against 71 ms).
  int warps = std::min(std::max(block / 32, 1), dp_sorted_max_warps(K));
  if (!fast) {
    const int64_t half_sm =
        std::min<int64_t>(lim.smem_per_sm / 2 - kReservedSmemPerBlock, lim.smem_optin);
    int w = warps;
    while (w > 4 && dp_sorted_smem_bytes(num_grids, W, w) > half_sm) --w;
    if (dp_sorted_smem_bytes(num_grids, W, w) <= half_sm) warps = w;
  }
  while (warps > 1 && dp_sorted_smem_bytes(num_grids, W, warps) > lim.smem_optin) --warps;
  if (dp_sorted_smem_bytes(num_grids, W, warps) > lim.smem_optin) return at::Tensor();
  const int64_t smem = dp_sorted_smem_bytes(num_grids, W, warps);
  const int64_t chunk = int64_t(warps) * 32 * kSortSpl;
  // grad_y as rows [B][n_tiles * W] with zero padding past n_out
  at::Tensor gyt;
  if (!batch_last && int64_t(n_tiles) * W == n_out) {
    gyt = gy;
  } else {
    gyt = at::zeros({batch, int64_t(n_tiles) * W}, gy.options());
    gyt.narrow(1, 0, n_out).copy_(batch_last ? gy.t() : gy);
  }
  // split the batch until the grid fills the device (each split >= 2 chunks), within a
  // bounded workspace
  const int64_t blocks_xy = int64_t(n_tiles) * n_pairs;
  const int64_t resident = std::max<int64_t>(
      1, std::min<int64_t>(lim.smem_per_sm / (smem + kReservedSmemPerBlock),
                         lim.max_threads_per_sm / (32 * warps)));
  const int64_t target = 2 * int64_t(lim.num_sms) * resident;
  int64_t splits = std::max<int64_t>(1, (target + blocks_xy - 1) / blocks_xy);
  splits = std::min<int64_t>({splits, std::max<int64_t>(1, batch / (2 * chunk)), 65535});
  const int64_t copy_bytes = int64_t(n_tiles) * n_pairs * cells * W * 4;
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, kDpWorkspaceBytes / copy_bytes));
  int64_t per_split = (batch + splits - 1) / splits;
  per_split = (per_split + chunk - 1) / chunk * chunk;
  splits = (batch + per_split - 1) / per_split;
  at::Tensor ws = at::empty({splits, n_tiles, n_pairs, cells, W}, x.options());
  C10_CUDA_CHECK(cudaFuncSetAttribute(dp_sorted_kernel<K>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  dim3 grid(static_cast<unsigned>(n_pairs), static_cast<unsigned>(n_tiles),
            static_cast<unsigned>(splits));
  dp_sorted_kernel<K><<<grid, warps * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), borders.data_ptr<float>(), gyt.data_ptr<float>(), ws.data_ptr<float>(),
      batch, n_pairs, n_tiles, num_grids, per_split, xs_f, xs_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return unpack_dp(ws, num_grids, n_out);
}

template <int TILE>
std::tuple<at::Tensor, at::Tensor> launch_backward(
    const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
    const at::Tensor& gy, int64_t batch, int n_out, int n_pairs, int num_grids, int block,
    bool batch_last, bool fast, bool deterministic, const DeviceLimits& lim) {
  const int64_t in_dim = 2 * int64_t(n_pairs);
  const int64_t xs_f = batch_last ? batch : 1, xs_b = batch_last ? 1 : in_dim;
  const int64_t gs_f = batch_last ? batch : 1, gs_b = batch_last ? 1 : n_out;
  // grad_x by the forward kernel's scheme; dx_kernel (tiles added in a fixed order) where
  // that would need atomics in deterministic mode
  at::Tensor dx = dx_by_output_rows(x, params, borders, gy, batch_last, TILE, block, deterministic);
  if (!dx.defined())
    dx = launch_dx<TILE>(x, params, borders, gy, batch, n_out, n_pairs, num_grids, block, lim,
                         xs_f, xs_b, gs_f, gs_b);
  at::Tensor dp = launch_dp_sorted<TILE>(x, borders, gy, batch, n_out, n_pairs, num_grids, block,
                                         fast, batch_last, lim, xs_f, xs_b);
  if (!dp.defined())
    dp = launch_dp<TILE>(x, borders, gy, batch, n_out, n_pairs, num_grids, block, fast,
                         batch_last, deterministic, lim, xs_f, xs_b, gs_f, gs_b);
  return {dx, dp};
}

}  // namespace

// dP workspace [copies, n_tiles, P, cells, W] -> (sum over copies, fixed order) ->
// [G+1, G+1, N_out, P].
at::Tensor unpack_dp(const at::Tensor& ws, int num_grids, int n_out) {
  const at::Tensor packed = ws.size(0) > 1 ? ws.sum(0) : ws.select(0, 0);
  const int64_t side = num_grids + 1, n_tiles = ws.size(1), n_pairs = ws.size(2), w = ws.size(4);
  return packed.permute({2, 0, 3, 1})
      .reshape({side, side, n_tiles * w, n_pairs})
      .narrow(2, 0, n_out)
      .contiguous();
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& gy_in, const at::Tensor& x_in,
                                                 const at::Tensor& params_in,
                                                 const at::Tensor& borders_in, bool batch_last,
                                                 int64_t tile_size, int64_t block_size,
                                                 bool fast_mode, bool deterministic) {
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
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), params = params_in.contiguous(),
                   borders = borders_in.contiguous(), gy = gy_in.contiguous();
  if (batch == 0) return {at::empty_like(x), at::zeros_like(params)};
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int n_pairs = static_cast<int>(params.size(3));
  const DeviceLimits lim = device_limits(x.device().index());
  const int block = static_cast<int>(block_size);
  const int n = static_cast<int>(n_out);
  if (!deterministic) {
    // cell-sorted chunks in both modes; fast mode takes 4x longer chunks (longer runs per
    // cell, a 4x larger sorted buffer)
    auto runs = backward_by_runs(x, params, borders, gy, batch_last, static_cast<int>(tile_size),
                                 block, fast_mode ? kRunChunkBytesFast : kRunChunkBytesNormal);
    if (std::get<0>(runs).defined()) return runs;
  }
  if (tile_size == 4)
    return launch_backward<4>(x, params, borders, gy, batch, n, n_pairs, num_grids, block,
                              batch_last, fast_mode, deterministic, lim);
  if (tile_size == 8)
    return launch_backward<8>(x, params, borders, gy, batch, n, n_pairs, num_grids, block,
                              batch_last, fast_mode, deterministic, lim);
  return launch_backward<16>(x, params, borders, gy, batch, n, n_pairs, num_grids, block,
                             batch_last, fast_mode, deterministic, lim);
}

}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("lmkan2d_backward", &lmkan::lmkan2d::backward_cuda);
}
