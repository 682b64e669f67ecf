// The 1D layer's tiled kernels (layout.h has the scheme): table packing, forward, grad_x.
#include <c10/cuda/CUDAException.h>

#include "common/cp_async.cuh"
#include "common/images.h"
#include "common/table_type.cuh"
#include "common/warp.cuh"
#include "lmkan1d/device.cuh"

namespace lmkan {
namespace lmkan1d {
namespace {

// ==========================================================================================
// Table packing (forward values or dx slopes)
// ==========================================================================================
// packed: [tiles][n_in_pad][rows][128] with packed[t][i][r][w] =
//   values (rows = G+1): params[r, 128t + w, i]
//   slopes (rows = G):   (params[r+1, o, i] - params[r, o, i]) / h_r,  o = 128t + w
// and zero for o >= N_out or i >= N_in. params: [G+1, N_out, N_in] of type In; borders: [G+1].
// Every parameter is rounded to the table type (Round) first, so that the slopes of dx
// are those of the table the forward reads; values are stored as Out (Round or float),
// slopes as float.
// One block per (row r, output tile t, 32 inputs): read [128 outputs][32 inputs] of params
// (consecutive threads: consecutive inputs, coalesced), transpose through shared memory
// (rows padded to 33 floats: conflict-free both ways), write [32 inputs][128 outputs] of
// packed (consecutive threads: consecutive outputs, coalesced).
template <typename In, typename Round, typename Out>
__global__ void lmkan1d_pack_kernel(const In* __restrict__ params,
                                    const float* __restrict__ borders,
                                    Out* __restrict__ packed, int n_in, int n_in_pad,
                                    int n_out, int num_grids, int rows, bool slopes,
                                    bool uniform) {
  __shared__ float block_tile[kTileOut][33];
  const int r = blockIdx.x, t = blockIdx.y, i0 = blockIdx.z * 32;
  const float inv_h = !slopes  ? 0.f
                      : uniform ? uniform_scale(borders, num_grids)
                                : 1.f / (borders[r + 1] - borders[r]);
  for (int e = threadIdx.x; e < kTileOut * 32; e += blockDim.x) {
    const int w = e / 32, i = i0 + e % 32;
    const int o = t * kTileOut + w;
    float v = 0.f;
    if (i < n_in && o < n_out) {
      const float c0 = to_float(from_float<Round>(
          to_float(params[(static_cast<int64_t>(r) * n_out + o) * n_in + i])));
      if (slopes) {
        const float c1 = to_float(from_float<Round>(
            to_float(params[(static_cast<int64_t>(r + 1) * n_out + o) * n_in + i])));
        v = (c1 - c0) * inv_h;
      } else {
        v = c0;
      }
    }
    block_tile[w][e % 32] = v;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kTileOut * 32; e += blockDim.x) {
    const int i = i0 + e / kTileOut, w = e % kTileOut;
    if (i < n_in_pad)
      packed[((static_cast<int64_t>(t) * n_in_pad + i) * rows + r) * kTileOut + w] =
          from_float<Out>(block_tile[w][e / kTileOut]);
  }
}

// ==========================================================================================
// Tiled kernels: shared pieces
// ==========================================================================================
// Shared memory of a tiled block: two table buffers, the warps' cells, the borders.
struct TileSmem {
  char* table;    // [2][stage_inputs][rows][128] table values (4 or 2 bytes each)
  float2* cells;  // this warp's [stage_inputs][16]: (offset of row k in a buffer in groups of
                  // 4 values, d), or with rows_only the offsets alone as int [stage_inputs][16]
  float* borders;  // [G+1]
  int stage_bytes;
};

__device__ __forceinline__ TileSmem carve_tile_smem(float* smem, const TileArgs& a, int warp,
                                                    int table_bytes) {
  TileSmem t;
  t.stage_bytes = a.stage_inputs * a.rows * kTileOut * table_bytes;  // a multiple of 256
  t.table = reinterpret_cast<char*>(smem);
  float2* all_cells = reinterpret_cast<float2*>(t.table + 2 * t.stage_bytes);
  t.cells = all_cells + warp * a.stage_inputs * kWarpSamples;
  t.borders = reinterpret_cast<float*>(all_cells + kTileWarps * a.stage_inputs * kWarpSamples);
  return t;
}

// Entry e of a stage's 16 x n (sample, input) cells: consecutive lanes take consecutive
// elements of x in memory (inputs for batch-first, samples for batch-last). inv_n: 1 / n
// (stage_reciprocal). e / n as floor((e + 1/2) inv_n) in float: the quotient lies at least
// 1/(2n) from an integer and its rounding error is below 2^-22 (e + 1/2) / n, so the floor is
// exact for e < 2^16, n <= 2^8; an int division by a runtime n took ~25 instructions (with
// the uniform cell's float division, a third of a stage's work per warp; ncu, run M3).
__device__ __forceinline__ float stage_reciprocal(int n) {
  return __frcp_rn(static_cast<float>(n));
}

__device__ __forceinline__ void stage_entry(int e, int n, float inv_n, bool batch_last, int& il,
                                            int& m) {
  static_assert(kMaxStageInputs * kWarpSamples <= (1 << 16) && kMaxStageInputs <= (1 << 8),
                "stage_entry's float quotient");
  if (batch_last) { m = e % kWarpSamples; il = e / kWarpSamples; }
  else {
    m = static_cast<int>((static_cast<float>(e) + 0.5f) * inv_n);
    il = e - m * n;
  }
}

// Prefetch the values of src (x, or the weights laid out like x) of this warp's samples for
// inputs [i0, i0 + n) (0 outside). Batch-last, sample s_warp + m of input i is at
// base + i * stride + m (plain tensors: s_warp and the batch; images: TileArgs).
__device__ __forceinline__ void load_stage_x(float (&xr)[kXPerLane], const TileArgs& a,
                                             const float* src, int64_t s_warp, int64_t base,
                                             int64_t stride, int i0, int n, int lane) {
  const float inv_n = stage_reciprocal(n);
#pragma unroll
  for (int j = 0; j < kXPerLane; ++j) {
    const int e = lane + 32 * j;
    float v = 0.f;
    if (e < n * kWarpSamples) {
      int il, m;
      stage_entry(e, n, inv_n, a.batch_last, il, m);
      const int i = i0 + il;
      const int64_t s = s_warp + m;
      if (i < a.n_in && s < a.batch)
        v = a.batch_last ? src[base + static_cast<int64_t>(i) * stride + m] : src[s * a.n_in + i];
    }
    xr[j] = v;
  }
}

// Cells of the prefetched x values into this warp's cell buffer. A far input (device.cuh)
// gets d = 0 there, so the forward's loop adds f_i alone, and add_far_terms adds the rest;
// returns whether any of the warp's inputs in this stage is far (the same on all lanes).
// kWeights (the slope forward): the cell holds (row, weight) instead, wr the weights.
template <bool kWeights>
__device__ __forceinline__ bool store_stage_cells(const TileSmem& t, const float (&xr)[kXPerLane],
                                                  const float (&wr)[kXPerLane],
                                                  const TileArgs& a, int n, int lane) {
  bool far = false;
  const float inv_n = stage_reciprocal(n);
  const float scale = a.uniform ? uniform_scale(t.borders, a.num_grids) : 0.f;
#pragma unroll
  for (int j = 0; j < kXPerLane; ++j) {
    const int e = lane + 32 * j;
    if (e < n * kWarpSamples) {
      int il, m;
      stage_entry(e, n, inv_n, a.batch_last, il, m);
      const Cell c = find_cell(xr[j], t.borders, a.num_grids, a.uniform, scale);
      const int row = (il * a.rows + c.index) * kRowChunks;
      if (a.rows_only) {
        reinterpret_cast<int*>(t.cells)[il * kWarpSamples + m] = row;
        continue;
      }
      if (kWeights) {
        t.cells[il * kWarpSamples + m] = make_float2(__int_as_float(row), wr[j]);
        continue;
      }
      const bool far_here = is_far(xr[j], c.d);
      far |= far_here;
      t.cells[il * kWarpSamples + m] = make_float2(__int_as_float(row), far_here ? 0.f : c.d);
    }
  }
  return __any_sync(0xffffffffu, far);
}

// cp.async the table slices of inputs [i0, i0 + n) of `tile` (contiguous in packed), in
// 16-byte pieces (a row is 512 or 256 bytes).
__device__ __forceinline__ void stage_table(char* buf, const TileArgs& a, int tile, int i0, int n,
                                            int table_bytes) {
  const float* src = reinterpret_cast<const float*>(
      static_cast<const char*>(a.packed) +
      (static_cast<int64_t>(tile) * a.n_in_pad + i0) * a.rows * kTileOut * table_bytes);
  float* dst = reinterpret_cast<float*>(buf);
  const int chunks = n * a.rows * kTileOut * table_bytes / 16;
  for (int e = threadIdx.x; e < chunks; e += kTileThreads) cp_async16(dst + 4 * e, src + 4 * e);
}

__device__ __forceinline__ float component(const float4& v, int c) {
  return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}

// The input pipeline of one tile: for every stage of this block's split (TileArgs,
// stages_per_split; all stages without splits), `consume(table, i0, n, far)` runs with the
// stage's table buffer (values of type T) and this warp's cells in t.cells, for inputs
// [i0, i0+n); far: whether any of them is a far input of this warp. Stage st+1 is copied
// (cp.async) and its x values loaded while stage st is consumed.
// kWeights: the weights (a.weights) are prefetched beside x and stored in the cells.
// x_base: x's offset of sample s_warp (plain tensors: s_warp); kImages: x holds images
// (TileArgs; the forward only, never with weights), features image_len apart.
template <typename T, bool kWeights = false, bool kImages = false, typename Consume>
__device__ __forceinline__ void run_stages(const TileSmem& t, const TileArgs& a, int tile,
                                           int64_t s_warp, int64_t x_base, int lane,
                                           Consume consume) {
  constexpr int kBytes = sizeof(T);
  const int per = a.stage_inputs;
  const int stages = (a.n_in_pad + per - 1) / per;
  const int first = static_cast<int>(blockIdx.z) * a.stages_per_split;  // < stages (host)
  const int count = min(stages - first, a.stages_per_split);
  const int i_first = first * per;
  float xr[kXPerLane], wr[kXPerLane];
  const int64_t base = x_base;
  const int64_t stride = kImages ? a.image_len : a.batch;
  load_stage_x(xr, a, a.x, s_warp, base, stride, i_first, min(per, a.n_in_pad - i_first), lane);
  if (kWeights)
    load_stage_x(wr, a, a.weights, s_warp, base, stride, i_first, min(per, a.n_in_pad - i_first),
                 lane);
  stage_table(t.table, a, tile, i_first, min(per, a.n_in_pad - i_first), kBytes);
  cp_async_commit();
  for (int k = 0; k < count; ++k) {  // stage first + k, in buffer k & 1
    const int i0 = i_first + k * per;
    const int n = min(per, a.n_in_pad - i0);
    // previous readers passed the trailing barrier
    const bool far = store_stage_cells<kWeights>(t, xr, wr, a, n, lane);
    if (k + 1 < count) {
      const int i1 = i0 + per;
      const int n1 = min(per, a.n_in_pad - i1);
      load_stage_x(xr, a, a.x, s_warp, base, stride, i1, n1, lane);
      if (kWeights) load_stage_x(wr, a, a.weights, s_warp, base, stride, i1, n1, lane);
      stage_table(t.table + ((k + 1) & 1) * t.stage_bytes, a, tile, i1, n1, kBytes);
    }
    cp_async_commit();  // possibly empty: keeps "all but the newest group" meaning "stage k landed"
    cp_async_wait<1>();
    __syncthreads();
    consume(reinterpret_cast<const T*>(t.table + (k & 1) * t.stage_bytes), i0, n, far);
    __syncthreads();  // buffer k & 1 and the cells are free for the next stages
  }
}

// ==========================================================================================
// Forward
// ==========================================================================================
// The rest of the far inputs' terms, f_i + ((d 2^-64)(f_{i+1} - f_i)) 2^64 less the f_i that
// the main loop added (device.cuh, kFarCells). Rare: a warp runs it for a stage only when one
// of its inputs there is far, and it reads x again rather than keeping d in shared memory.
template <typename T, bool kImages>
__device__ __forceinline__ void add_far_terms(float4 (&acc)[kWarpSamples], const T* table,
                                           const TileArgs& a, int64_t s_warp, int64_t x_base,
                                           int i0, int n, const float* borders_s, int lane) {
#pragma unroll 1
  for (int il = 0; il < n; ++il) {
    const int i = i0 + il;
    if (i >= a.n_in) break;
#pragma unroll
    for (int m = 0; m < kWarpSamples; ++m) {
      const int64_t s = s_warp + m;
      if (s >= a.batch) break;
      const float v =
          !a.batch_last ? a.x[s * a.n_in + i]
          : kImages ? a.x[x_base + static_cast<int64_t>(i) * a.image_len + m]
                    : a.x[static_cast<int64_t>(i) * a.batch + s];
      const Cell c = find_cell(v, borders_s, a.num_grids, a.uniform);
      if (!is_far(v, c.d)) continue;  // the same v on all lanes: no divergence
      const float d = far_scaled_d(v, borders_s, a.num_grids, a.uniform, c.index);
      const int row = (il * a.rows + c.index) * kRowChunks;
      const float4 lo = load_table4(table, row + lane);
      const float4 hi = load_table4(table, row + kRowChunks + lane);
      float4& r = acc[m];
      r.x += d * (hi.x - lo.x) * kFarUnscale;
      r.y += d * (hi.y - lo.y) * kFarUnscale;
      r.z += d * (hi.z - lo.z) * kFarUnscale;
      r.w += d * (hi.w - lo.w) * kFarUnscale;
    }
  }
}
// a.packed: values of type T (float, __half, __nv_bfloat16), rows = G+1, n_in_pad = N_in;
// y: [N_out, B] (batch_last) or [B, N_out]. Grid: (ceil(B / 256), ceil(N_out / 128), input
// splits), 512 threads. Shared memory: tile_smem_bytes.
// kSlopes (T = float): a.packed holds the slopes (rows = G) and the cells the weights
// a.weights[s, i]; y[s, o] = sum_i weights[s, i] slope[k, o, i], one row read per term.
// kImages: x and y hold images (TileArgs).
template <typename T, bool kSlopes = false, bool kImages = false>
__global__ void __launch_bounds__(kTileThreads, 1)
lmkan1d_forward_kernel(const TileArgs a, float* __restrict__ y) {
  extern __shared__ __align__(16) float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const TileSmem t = carve_tile_smem(smem, a, warp, sizeof(T));
  const int tile = blockIdx.y;
  const int64_t s_warp = static_cast<int64_t>(blockIdx.x) * kBlockSamples + warp * kWarpSamples;
  load_borders(t.borders, a.borders, a.num_grids + 1);
  __syncthreads();

  float4 acc[kWarpSamples];
#pragma unroll
  for (int m = 0; m < kWarpSamples; ++m) acc[m] = make_float4(0.f, 0.f, 0.f, 0.f);

  // x's offset of sample s_warp: one division per warp for images (common/images.h)
  const int64_t x_base = kImages ? SampleOffsets{1, a.image_len, a.image_stride_x}(s_warp) : s_warp;
  run_stages<T, kSlopes, kImages>(t, a, tile, s_warp, x_base, lane,
                                  [&](const T* table, int i0, int n, bool far) {
    // This lane's 4 values of row 0: a row's address is then one multiply-add of its offset
    // (row + lane took an add and a multiply-add per row pair)
    const T* const table_lane = table + 4 * lane;
#pragma unroll 1
    for (int il = 0; il < n; ++il) {
      // Two samples' cells per broadcast read: (row, d), or (row, weight) of a slope row.
      const float4* cells4 = reinterpret_cast<const float4*>(t.cells + il * kWarpSamples);
#pragma unroll
      for (int m2 = 0; m2 < kWarpSamples / 2; ++m2) {
        const float4 c = cells4[m2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = __float_as_int(h == 0 ? c.x : c.z);
          const float d = h == 0 ? c.y : c.w;
          float4& r = acc[2 * m2 + h];
          if constexpr (kSlopes) {  // one slope row, weight d
            const float4 s = load_table4(table_lane, row);
            r.x = fmaf(d, s.x, r.x);
            r.y = fmaf(d, s.y, r.y);
            r.z = fmaf(d, s.z, r.z);
            r.w = fmaf(d, s.w, r.w);
          } else {  // two value rows, weights (1 - d, d)
            const float4 lo = load_table4(table_lane, row);
            const float4 hi = load_table4(table_lane, row + kRowChunks);
            const float w0 = 1.f - d;
            r.x = fmaf(w0, lo.x, fmaf(d, hi.x, r.x));
            r.y = fmaf(w0, lo.y, fmaf(d, hi.y, r.y));
            r.z = fmaf(w0, lo.z, fmaf(d, hi.z, r.z));
            r.w = fmaf(w0, lo.w, fmaf(d, hi.w, r.w));
          }
        }
      }
    }
    if constexpr (!kSlopes) {
      if (far) add_far_terms<T, kImages>(acc, table, a, s_warp, x_base, i0, n, t.borders, lane);
    }
  });

  y += blockIdx.z * a.split_stride;  // this split's partial sums (0 without splits)
  const int o = tile * kTileOut + lane * 4;
  if constexpr (kImages) {
    // images (batch-last, L a multiple of kWarpSamples, so this warp's samples are L's
    // consecutive positions of one image): the float4 stores below, at the image's offsets
    if (s_warp >= a.batch) return;
    float* const at = y + SampleOffsets{1, a.image_len, a.image_stride_y}(s_warp);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (o + c >= a.n_out) continue;
      float* row = at + static_cast<int64_t>(o + c) * a.image_len;
#pragma unroll
      for (int q = 0; q < kWarpSamples / 4; ++q)
        *reinterpret_cast<float4*>(row + 4 * q) =
            make_float4(component(acc[4 * q], c), component(acc[4 * q + 1], c),
                        component(acc[4 * q + 2], c), component(acc[4 * q + 3], c));
    }
    return;
  }
  if (a.batch_last && (a.batch & 3) == 0 && s_warp + kWarpSamples <= a.batch) {
    // y rows [N_out, B]: the lane writes its kWarpSamples consecutive samples of each of its
    // outputs as float4s (16 stores of 16 bytes; scalar stores wrote 64 sectors of 4 bytes,
    // each lane its own row: they were most of a split launch's time, ncu on the H200)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (o + c >= a.n_out) continue;
      float* row = y + static_cast<int64_t>(o + c) * a.batch + s_warp;
#pragma unroll
      for (int q = 0; q < kWarpSamples / 4; ++q)
        *reinterpret_cast<float4*>(row + 4 * q) =
            make_float4(component(acc[4 * q], c), component(acc[4 * q + 1], c),
                        component(acc[4 * q + 2], c), component(acc[4 * q + 3], c));
    }
    return;
  }
  const bool vector_store = !a.batch_last && (a.n_out & 3) == 0 && o < a.n_out;
#pragma unroll
  for (int m = 0; m < kWarpSamples; ++m) {
    const int64_t s = s_warp + m;
    if (s >= a.batch) continue;
    if (vector_store) {
      *reinterpret_cast<float4*>(y + s * a.n_out + o) = acc[m];
      continue;
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (o + c >= a.n_out) continue;
      const int64_t off = a.batch_last ? static_cast<int64_t>(o + c) * a.batch + s : s * a.n_out + o + c;
      y[off] = component(acc[m], c);
    }
  }
}

// ==========================================================================================
// Backward, dx
// ==========================================================================================

__device__ __forceinline__ float dot4(const float4& a, const float4& b) {
  return fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, a.w * b.w)));
}

// a.packed: slopes, rows = G, n_in_pad = N_in rounded up to even (stages hold input pairs);
// grad_y: like y; grad_x: like x, fully written. Grid: (ceil(B / 256), 1, input splits), 512
// threads; a split's block writes its own inputs' entries (over every output tile).
__global__ void __launch_bounds__(kTileThreads, 1)
lmkan1d_backward_dx_kernel(const TileArgs a, const float* __restrict__ grad_y,
                           float* __restrict__ grad_x, int tiles) {
  extern __shared__ __align__(16) float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const TileSmem t = carve_tile_smem(smem, a, warp, sizeof(float));
  const int64_t s_warp = static_cast<int64_t>(blockIdx.x) * kBlockSamples + warp * kWarpSamples;
  load_borders(t.borders, a.borders, a.num_grids + 1);
  __syncthreads();

  // After the reduce, lane L holds the sum of sample L/2, input (L & 1) of the pair.
  const int64_t s_mine = s_warp + (lane >> 1);
  for (int tile = 0; tile < tiles; ++tile) {
    // grad_y of the warp's samples at this lane's 4 outputs, by output: gyc[c][q] holds
    // samples 4q .. 4q+3 of output o + c (so a float4 row load fills one register group;
    // by sample, the loads needed temporaries that spilled into the pair loop)
    float4 gyc[4][kWarpSamples / 4];
    const int o = tile * kTileOut + lane * 4;
    // Whole warps of batch-last samples read grad_y rows [N_out, B] as float4s, the lane's
    // kWarpSamples consecutive samples of each of its outputs (16 loads; the scalar loads
    // read 64 sectors for 4 bytes each, each lane its own row, as the forward's scalar
    // stores did). grad_y may be a view at any offset: 16-byte alignment checked.
    if (a.batch_last && (a.batch & 3) == 0 && s_warp + kWarpSamples <= a.batch &&
        (reinterpret_cast<uintptr_t>(grad_y) & 15) == 0) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float4* row =
            reinterpret_cast<const float4*>(grad_y + static_cast<int64_t>(o + c) * a.batch + s_warp);
#pragma unroll
        for (int q = 0; q < kWarpSamples / 4; ++q)
          gyc[c][q] = o + c < a.n_out ? __ldg(row + q) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    } else {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
#pragma unroll
        for (int q = 0; q < kWarpSamples / 4; ++q) {
          float g[4];
#pragma unroll
          for (int h = 0; h < 4; ++h) {
            const int64_t s = s_warp + 4 * q + h;
            g[h] = 0.f;
            if (s < a.batch && o + c < a.n_out)
              g[h] = a.batch_last ? grad_y[static_cast<int64_t>(o + c) * a.batch + s]
                                  : grad_y[s * a.n_out + o + c];
          }
          gyc[c][q] = make_float4(g[0], g[1], g[2], g[3]);
        }
      }
    }
    // sample m's 4 outputs (registers chosen at compile time)
    const auto gy = [&](int m) {
      return make_float4(component(gyc[0][m / 4], m % 4), component(gyc[1][m / 4], m % 4),
                         component(gyc[2][m / 4], m % 4), component(gyc[3][m / 4], m % 4));
    };

    run_stages<float>(t, a, tile, s_warp, s_warp, lane,
                      [&](const float* table, int i0, int n, bool) {
      const float4* table4 = reinterpret_cast<const float4*>(table);
#pragma unroll 1
      for (int il = 0; il < n; il += 2) {
        // This lane's entry of the pair's 32 sums; its previous value (earlier output
        // tiles) is loaded first so that the load overlaps the dot products.
        const int i = i0 + il + (lane & 1);
        const bool mine = s_mine < a.batch && i < a.n_in;
        const int64_t off = a.batch_last ? static_cast<int64_t>(i) * a.batch + s_mine
                                         : s_mine * a.n_in + i;
        const float prev = (mine && tile > 0) ? grad_x[off] : 0.f;
        // Row offsets of four samples per broadcast read (rows_only cells).
        const int4* rows_a = reinterpret_cast<const int4*>(t.cells) + il * (kWarpSamples / 4);
        const int4* rows_b = rows_a + kWarpSamples / 4;
        float part[32];  // [sample m][input of the pair]: index 2m + (0 or 1)
#pragma unroll
        for (int q = 0; q < kWarpSamples / 4; ++q) {
          const int4 ra = rows_a[q], rb = rows_b[q];
          const int row_a[4] = {ra.x, ra.y, ra.z, ra.w};
          const int row_b[4] = {rb.x, rb.y, rb.z, rb.w};
#pragma unroll
          for (int h = 0; h < 4; ++h) {
            const int m = 4 * q + h;
            part[2 * m + 0] = dot4(gy(m), table4[row_a[h] + lane]);
            part[2 * m + 1] = dot4(gy(m), table4[row_b[h] + lane]);
          }
        }
        transpose_reduce<32>(part, lane);  // lane L: the sum over the lanes of part[L]
        const float sum = part[0];
        // Tile 0 writes, later tiles add: the same thread owns this entry in every tile.
        if (mine) grad_x[off] = tile == 0 ? sum : prev + sum;
      }
    });
  }
}

}  // namespace

void launch_pack(dim3 grid, cudaStream_t stream, const void* params, const float* borders,
                 void* packed, int n_in, int n_in_pad, int n_out, int num_grids, int rows,
                 bool slopes, bool uniform, c10::ScalarType params_dtype,
                 c10::ScalarType table_dtype, c10::ScalarType packed_dtype) {
  TORCH_CHECK(packed_dtype == c10::kFloat || (packed_dtype == table_dtype && !slopes),
              "lmkan1d pack: slopes are packed as float32, values as float32 or the table dtype");
  switch_table_type(params_dtype, [&](auto in_tag) {
    using In = decltype(in_tag);
    switch_table_type(table_dtype, [&](auto round_tag) {
      using Round = decltype(round_tag);
      const auto launch = [&](auto out_tag) {
        using Out = decltype(out_tag);
        lmkan1d_pack_kernel<In, Round, Out><<<grid, 256, 0, stream>>>(
            static_cast<const In*>(params), borders, static_cast<Out*>(packed), n_in, n_in_pad,
            n_out, num_grids, rows, slopes, uniform);
      };
      if (packed_dtype == c10::kFloat) {
        launch(float{});
      } else {
        launch(Round{});
      }
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_forward(const TileArgs& a, float* y, dim3 grid, size_t smem, cudaStream_t stream,
                    c10::ScalarType table_dtype, bool images) {
  switch_table_type(table_dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto kernel = images ? lmkan1d_forward_kernel<T, false, true> : lmkan1d_forward_kernel<T>;
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<grid, kTileThreads, smem, stream>>>(a, y);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_slope_forward(const TileArgs& a, float* y, dim3 grid, size_t smem,
                          cudaStream_t stream) {
  allow_dynamic_smem(reinterpret_cast<const void*>(lmkan1d_forward_kernel<float, true>), smem);
  lmkan1d_forward_kernel<float, true><<<grid, kTileThreads, smem, stream>>>(a, y);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_dx(const TileArgs& a, const float* grad_y, float* grad_x, int tiles, dim3 grid,
               size_t smem, cudaStream_t stream) {
  allow_dynamic_smem(reinterpret_cast<const void*>(lmkan1d_backward_dx_kernel), smem);
  lmkan1d_backward_dx_kernel<<<grid, kTileThreads, smem, stream>>>(a, grad_y, grad_x, tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan1d
}  // namespace lmkan
