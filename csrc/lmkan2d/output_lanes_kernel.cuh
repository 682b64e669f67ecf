// LMKAN2DLayer: the output-lanes kernel (forward_kernel) and its arguments. Its host code,
// launch plans and the scheme's summary are in output_lanes.cu, the one file that includes
// this header: the kernel stays in an anonymous namespace, instantiated in that translation
// unit only.
#pragma once

#include <cstdint>

#include "common/cp_async.cuh"
#include "lmkan2d/device.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

// ---- Forward kernel ------------------------------------------------------------------------
//
// Lane layout: a lane owns K CONSECUTIVE OUTPUTS (o = tile*W + K*lane + k, W = 32K) and reads
// them as one K-wide vector (float, float2, float4), so the 32 lanes of a warp read one whole
// W-float table row: conflict-free whatever the cells (K wavefronts, the minimum), with
// compile-time row offsets and one load instruction per corner. A lane also owns M samples of
// its warp; the block's warps take different samples of the same output tile and share the
// staged table. Per (sample, pair) the warp reads the sample's cell (row offset, d1, d2) as one
// broadcast float4 from shared memory, computes the 4 bilinear weights once, then does 4 vector
// reads and 4K FMAs.
// The table slice [cells][W] of a pair (one contiguous run of the packed table) is staged by
// ONE bulk copy (TMA, cp.async.bulk; per-thread cp.async below sm_90, see cp_async.cuh)
// completing on an mbarrier, into a ring of `nbuf` buffers:
// with 2 buffers the copy of pair p+1 overlaps the compute of pair p, and no thread spends
// load/store instructions on staging (per-thread 16-byte copies were ~30% of the MIO
// instructions). Cells of pair p+1 are computed from x loads issued before the compute of
// pair p. TABLE_IN_SMEM = false reads the packed table through L1/L2 instead (for num_grids
// whose slice does not fit in shared memory).

struct ForwardArgs {
  const float* x;        // x: (f, b) at f*xs_f + b*xs_b
  const float* packed;   // [n_tiles, P, cells, W]
  const float* borders;  // [G+1]
  float* y;              // y (or the split workspace): (o, b) at o*ys_f + b*ys_b, split * ys_split
  int64_t batch;
  int n_out, n_pairs, num_grids;
  int pairs_per_split;   // pair range of blockIdx.z
  int nbuf;              // staged table buffers (1 or 2; ignored when the table is read from global)
  // dx mode only: grad_y (o, b) at o*gs_f + b*gs_b; y is then grad_x (layout of x), added
  // to with float atomics unless `dx_single_writer` (one output tile and one pair split)
  const float* gy;
  int64_t gs_f, gs_b;
  bool dx_single_writer;
  int64_t xs_f, xs_b, ys_f, ys_b, ys_split;
  // slope mode only (lmkan2d_slope_forward): the weights w, x's layout
  const float* w;
};

// Cell info of (sample s, pair p) for the block's samples, from two x values. kFar: a far
// input (device.cuh) gets d = 0 and sets *far where far is given (the forward, which adds
// its pair's float64 value after the loop, add_far_pairs; grad_x is replaced by
// far_fixup.cu).
template <bool kFar = false>
__device__ __forceinline__ float4 pair_info(float v1, float v2, const float* s_borders,
                                            int num_grids, int side, int row_floats,
                                            int* far = nullptr) {
  Cell c1 = cdf_cell(v1, s_borders, num_grids);
  Cell c2 = cdf_cell(v2, s_borders, num_grids);
  if constexpr (kFar) {
    const bool f1 = is_far(v1, c1.d), f2 = is_far(v2, c2.d);
    if ((f1 || f2) && far != nullptr) atomicOr(far, 1);
    if (f1) c1.d = 0.f;
    if (f2) c2.d = 0.f;
  }
  return make_float4(__int_as_float((c1.index * side + c2.index) * row_floats), c1.d, c2.d, 0.f);
}

// The forward's far inputs (pair_info<true>): for each of the warp's M samples, each pair
// that holds one gets its float64 value less what the loop added (d = 0 for the far input),
// for the lane's K outputs, from the packed table in global memory. Rare: only blocks that
// saw a far input run it. Not inlined, on a copy of the accumulators in local memory (as in
// forward_sample_lanes.cu): inlined, it made the kernel's loop spill (up to 264 bytes).
template <int K, int M>
__device__ __noinline__ void add_far_pairs(float (*acc)[K], const float* x, int64_t xs_f,
                                              int64_t xs_b, const float* borders,
                                              const float* s_borders, const float* tile_table,
                                              int num_grids, int p_begin, int np,
                                              int64_t b_warp, int64_t batch, int lane) {
  constexpr int W = 32 * K;
  const int side = num_grids + 1;
  const int64_t slice = int64_t(side) * side * W;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const int64_t b = b_warp + m;
    if (b >= batch) break;
    for (int p = 0; p < np; ++p) {
      const int64_t f = 2 * int64_t(p_begin + p);
      const float v1 = __ldg(x + f * xs_f + b * xs_b), v2 = __ldg(x + (f + 1) * xs_f + b * xs_b);
      const Cell c1 = cdf_cell(v1, s_borders, num_grids);
      const Cell c2 = cdf_cell(v2, s_borders, num_grids);
      const bool f1 = is_far(v1, c1.d), f2 = is_far(v2, c2.d);
      if (!(f1 || f2)) continue;  // warp-uniform: every lane reads the same sample
      const float d1 = f1 ? 0.f : c1.d, d2 = f2 ? 0.f : c2.d;  // the loop's
      const float e1 = 1.f - d1, e2 = 1.f - d2;
      const double D1 = exact_d(v1, borders, c1.index), D2 = exact_d(v2, borders, c2.index);
      const float* q = tile_table + p * slice + int64_t(c1.index * side + c2.index) * W + K * lane;
      const int64_t below = int64_t(side) * W;
#pragma unroll
      for (int k = 0; k < K; ++k)
        acc[m][k] += far_correction(__ldg(q + k), __ldg(q + k + W), __ldg(q + k + below),
                                    __ldg(q + k + below + W), D1, D2, e1 * e2, e1 * d2,
                                    d1 * e2, d1 * d2);
    }
  }
}

// The slope mode's cell info: (row offset, w01, w10, w11) of w . grad f (slope_weights).
__device__ __forceinline__ float4 slope_info(float v1, float v2, float w1, float w2,
                                             const float* s_borders, int num_grids, int side,
                                             int row_floats) {
  const Cell c1 = cdf_cell(v1, s_borders, num_grids);
  const Cell c2 = cdf_cell(v2, s_borders, num_grids);
  const float a = w1 / (s_borders[c1.index + 1] - s_borders[c1.index]);
  const float c = w2 / (s_borders[c2.index + 1] - s_borders[c2.index]);
  float4 r = slope_weights(c1.d, c2.d, a, c);
  r.x = __int_as_float((c1.index * side + c2.index) * row_floats);
  return r;
}

template <int K> struct Vec;
template <> struct Vec<1> { using T = float; };
template <> struct Vec<2> { using T = float2; };
template <> struct Vec<4> { using T = float4; };
__device__ __forceinline__ float elem(float v, int) { return v; }
__device__ __forceinline__ float elem(float2 v, int k) { return k == 0 ? v.x : v.y; }
__device__ __forceinline__ float elem(float4 v, int k) {
  return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// The 4 corners (c1, c2), (c1, c2+1), (c1+1, c2), (c1+1, c2+1) of a lane's K columns.
template <int K, bool TABLE_IN_SMEM>
__device__ __forceinline__ void load_corners(const float* q0, const float* q1,
                                             typename Vec<K>::T (&c)[4]) {
  using VecT = typename Vec<K>::T;
  constexpr int W = 32 * K;
  if constexpr (TABLE_IN_SMEM) {
    c[0] = *reinterpret_cast<const VecT*>(q0);
    c[1] = *reinterpret_cast<const VecT*>(q0 + W);
    c[2] = *reinterpret_cast<const VecT*>(q1);
    c[3] = *reinterpret_cast<const VecT*>(q1 + W);
  } else {
    c[0] = __ldg(reinterpret_cast<const VecT*>(q0));
    c[1] = __ldg(reinterpret_cast<const VecT*>(q0 + W));
    c[2] = __ldg(reinterpret_cast<const VecT*>(q1));
    c[3] = __ldg(reinterpret_cast<const VecT*>(q1 + W));
  }
}

// grad_x contributions of one pair for a warp's M samples (see forward_kernel, DX = true).
// g: grad_y [M][K] of the lane; tab: the pair's table slice at the lane's columns; inf: the
// warp's cells; b_warp: the warp's first sample.
template <int K, int M, bool TABLE_IN_SMEM>
__device__ __forceinline__ void dx_pair(const ForwardArgs& a, const float (&g)[M][K],
                                        const float* tab, const float4* inf, int below,
                                        const float* s_borders, int side, int lane,
                                        int64_t b_warp, int pair) {
  constexpr int W = 32 * K;
  constexpr int R = M >= 16 ? 16 : M;  // samples per round: 2R partial sums per lane
#pragma unroll
  for (int r0 = 0; r0 < M; r0 += R) {
    float part[2 * R];  // [r]: sum over the lane's outputs of g * dy/dd1; [R + r]: dy/dd2
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float4 v = inf[r0 + r];  // broadcast
      const float* q0 = tab + __float_as_int(v.x);
      typename Vec<K>::T c[4];
      load_corners<K, TABLE_IN_SMEM>(q0, q0 + below, c);
      float gA = 0.f, gB = 0.f, gC = 0.f, gD = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const float gk = g[r0 + r][k];
        gA = fmaf(gk, elem(c[0], k), gA);
        gB = fmaf(gk, elem(c[1], k), gB);
        gC = fmaf(gk, elem(c[2], k), gC);
        gD = fmaf(gk, elem(c[3], k), gD);
      }
      part[r] = (1.f - v.z) * (gC - gA) + v.z * (gD - gB);
      part[R + r] = (1.f - v.y) * (gB - gA) + v.y * (gD - gC);
    }
    transpose_reduce<2 * R>(part, lane);
    if (lane < 2 * R) {  // lane: sample r0 + lane % R, input 2*pair + lane / R
      const int r = lane % R, input = lane / R;
      const int64_t b = b_warp + r0 + r;
      if (b < a.batch) {
        const int cell = __float_as_int(inf[r0 + r].x) / W;  // c1 * side + c2
        const int c1 = cell / side;
        const int c = input == 0 ? c1 : cell - c1 * side;
        const float v = part[0] / (s_borders[c + 1] - s_borders[c]);  // dd/dx = 1/h
        float* dst = a.y + (2 * int64_t(pair) + input) * a.ys_f + b * a.ys_b;
        if (a.dx_single_writer) *dst = v;
        else atomicAdd(dst, v);
      }
    }
  }
}

// Forward (DX = false): 64 accumulators per thread (M*K = 64) for blocks of up to 256
// threads, two per SM (<= 128 registers); 32 (M*K = 32) for 512- or 1024-thread blocks.
// DX = true, the forward-shaped grad_x of the backward: the M x K registers hold grad_y of the
// lane's samples and outputs; per (sample, pair) a lane forms its partial dy/dx1 and dy/dx2
// over its K outputs, a transpose-reduce over rounds of 16 samples (8 at K = 4) finishes one
// sum per lane (about one shuffle per sum), scaled by 1/h and added to grad_x.
// SLOPES (forward only), the op lmkan2d_slope_forward: y = sum_p w . grad f_p, the same
// lookups with the corner weights of slope_info instead of the bilinear weights.
template <int K, int M, bool TABLE_IN_SMEM, bool DX = false, bool SLOPES = false>
__global__ void __launch_bounds__(DX ? 512 : (M * K > 32 ? 256 : 1024),
                                  DX ? 1 : (M * K > 32 ? 2 : 1))
forward_kernel(const ForwardArgs a) {
  using VecT = typename Vec<K>::T;
  constexpr int W = 32 * K;              // outputs per tile (floats per table row)
  constexpr int SPT = (M + 31) / 32;     // samples per thread in the cell computation
  extern __shared__ __align__(16) float smem[];
  const int side = a.num_grids + 1;
  const int cells = side * side;
  const int slice = cells * W;           // floats of one (tile, pair) table slice
  const int warps = blockDim.x / 32;
  const int nb = warps * M;              // samples per block
  const int nbuf = TABLE_IN_SMEM ? a.nbuf : 0;
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem);            // [2] one per buffer
  float* table = smem + 4;                                       // [nbuf][cells][W]
  float4* info = reinterpret_cast<float4*>(table + int64_t(nbuf) * slice);  // [2][nb]
  float* s_borders = reinterpret_cast<float*>(info + 2 * nb);
  // the forward's far-input flag (pair_info<true>), in the footprint's last 16 bytes
  int* s_far = reinterpret_cast<int*>(s_borders + side);
  constexpr bool kFar = !DX && !SLOPES;
  if (kFar && threadIdx.x == 0) *s_far = 0;
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = a.borders[i];
  if (TABLE_IN_SMEM && threadIdx.x == 0)
    for (int i = 0; i < nbuf; ++i) mbarrier_init(bars + i, staging_arrivals());

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int tile_index = blockIdx.y;
  const int64_t b0 = blockIdx.x * int64_t(nb);
  const int p_begin = blockIdx.z * a.pairs_per_split;
  const int p_end = min(a.n_pairs, p_begin + a.pairs_per_split);
  const int np = p_end - p_begin;
  const float* tile_table = a.packed + (int64_t(tile_index) * a.n_pairs + p_begin) * slice;

  // x values of this thread's samples for one pair (loaded a pair ahead).
  float xv1[SPT], xv2[SPT], wv1[SPT], wv2[SPT];  // (wv: slope mode)
  auto load_x = [&](int p) {
#pragma unroll
    for (int i = 0; i < SPT; ++i) {
      const int s = threadIdx.x + i * blockDim.x;
      const int64_t b = b0 + s;
      xv1[i] = xv2[i] = wv1[i] = wv2[i] = 0.f;
      if (s < nb && b < a.batch) {
        const int64_t f = 2 * int64_t(p_begin + p);
        xv1[i] = __ldg(a.x + f * a.xs_f + b * a.xs_b);
        xv2[i] = __ldg(a.x + (f + 1) * a.xs_f + b * a.xs_b);
        if constexpr (SLOPES) {
          wv1[i] = __ldg(a.w + f * a.xs_f + b * a.xs_b);
          wv2[i] = __ldg(a.w + (f + 1) * a.xs_f + b * a.xs_b);
        }
      }
    }
  };
  auto store_info = [&](int p) {
#pragma unroll
    for (int i = 0; i < SPT; ++i) {
      const int s = threadIdx.x + i * blockDim.x;
      if (s < nb)
        info[(p & 1) * nb + s] =
            SLOPES ? slope_info(xv1[i], xv2[i], wv1[i], wv2[i], s_borders, a.num_grids, side, W)
                   : pair_info<true>(xv1[i], xv2[i], s_borders, a.num_grids, side, W,
                                     kFar ? s_far : nullptr);
    }
  };
  // Start the copy of pair p into buffer p % nbuf: one thread (bulk copy), or every thread
  // its share below sm_90 (cp_async.cuh); either way the buffer's barrier completes a phase.
  auto stage = [&](int p) {
    if constexpr (TABLE_IN_SMEM) {
      if ((!kBulkCopy || threadIdx.x == 0) && p < np)
        stage_to_shared(table + int64_t(p % nbuf) * slice, tile_table + int64_t(p) * slice,
                        static_cast<unsigned>(slice) * 4u, bars + p % nbuf);
    }
  };
  auto wait_staged = [&](int p) {  // the k-th use of a buffer completes its phase k % 2
    if constexpr (TABLE_IN_SMEM) mbarrier_wait(bars + p % nbuf, (p / nbuf) & 1);
  };

  float acc[M][K];  // forward: the outputs; dx: grad_y, loaded once
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int k = 0; k < K; ++k) {
      acc[m][k] = 0.f;
      if constexpr (DX) {
        const int o = tile_index * W + K * lane + k;
        const int64_t b = b0 + warp * M + m;
        if (o < a.n_out && b < a.batch) acc[m][k] = __ldg(a.gy + int64_t(o) * a.gs_f + b * a.gs_b);
      }
    }

  __syncthreads();  // borders, barriers
  if (np > 0) { load_x(0); store_info(0); }
  if (nbuf == 2) stage(0);
  for (int p = 0; p < np; ++p) {
    if (nbuf == 2) {
      wait_staged(p);
      __syncthreads();  // pair p's cells visible; every warp is done with pair p-1's buffer
      stage(p + 1);
    } else {
      __syncthreads();  // pair p's cells visible; every warp is done with the buffer
      stage(p);
      wait_staged(p);
    }
    if (p + 1 < np) load_x(p + 1);

    const float* tab;
    if constexpr (TABLE_IN_SMEM) tab = table + int64_t(p % nbuf) * slice + K * lane;
    else tab = tile_table + int64_t(p) * slice + K * lane;
    const float4* inf = info + (p & 1) * nb + warp * M;
    const int below = side * W;  // floats from row (c1, c2) to row (c1 + 1, c2)
    if constexpr (DX) {
      dx_pair<K, M, TABLE_IN_SMEM>(a, acc, tab, inf, below, s_borders, side, lane,
                                   b0 + warp * M, p_begin + p);
    } else {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float4 v = inf[m];  // broadcast
      const float* q0 = tab + __float_as_int(v.x);
      const float* q1 = q0 + below;
      float w00, w01, w10, w11;
      if constexpr (SLOPES) {
        w01 = v.y; w10 = v.z; w11 = v.w; w00 = -(w01 + w10 + w11);
      } else {
        const float e1 = 1.f - v.y, e2 = 1.f - v.z;
        w00 = e1 * e2; w01 = e1 * v.z; w10 = v.y * e2; w11 = v.y * v.z;
      }
      VecT c00, c01, c10, c11;
      if constexpr (TABLE_IN_SMEM) {
        c00 = *reinterpret_cast<const VecT*>(q0);
        c01 = *reinterpret_cast<const VecT*>(q0 + W);
        c10 = *reinterpret_cast<const VecT*>(q1);
        c11 = *reinterpret_cast<const VecT*>(q1 + W);
      } else {
        c00 = __ldg(reinterpret_cast<const VecT*>(q0));
        c01 = __ldg(reinterpret_cast<const VecT*>(q0 + W));
        c10 = __ldg(reinterpret_cast<const VecT*>(q1));
        c11 = __ldg(reinterpret_cast<const VecT*>(q1 + W));
      }
#pragma unroll
      for (int k = 0; k < K; ++k)
        acc[m][k] = fmaf(w00, elem(c00, k), fmaf(w01, elem(c01, k),
                    fmaf(w10, elem(c10, k), fmaf(w11, elem(c11, k), acc[m][k]))));
    }
    }
    if (p + 1 < np) store_info(p + 1);  // read after the next barrier
  }

  if constexpr (DX) return;
  if constexpr (kFar) {
    __syncthreads();  // every pair_info of the block has run
    if (*s_far) {  // rare: through a copy of the accumulators in local memory
      float spill[M][K];
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int k = 0; k < K; ++k) spill[m][k] = acc[m][k];
      add_far_pairs<K, M>(spill, a.x, a.xs_f, a.xs_b, a.borders, s_borders, tile_table,
                          a.num_grids, p_begin, np, b0 + warp * M, a.batch, lane);
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int k = 0; k < K; ++k) acc[m][k] = spill[m][k];
    }
  }
  float* y = a.y + blockIdx.z * a.ys_split;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int o = tile_index * W + K * lane + k;
    if (o >= a.n_out) continue;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int64_t b = b0 + warp * M + m;
      if (b < a.batch) y[int64_t(o) * a.ys_f + b * a.ys_b] = acc[m][k];
    }
  }
}

}  // namespace
}  // namespace lmkan2d
}  // namespace lmkan
