// CUDA kernels of the 1D linear-spline layer (docs/spec.md section 4):
//   y[o] = sum_i (1 - d) C[k, o, i] + d C[k+1, o, i],   (k, d) = cell of x[i].
//
// Forward and dx share one shape ("tiled" kernels): the 32 lanes of a warp own 32 x 4
// CONSECUTIVE outputs (a float4 each) of one 128-output tile, so every table read of a warp
// is one 512-byte row, 4 conflict-free wavefronts, and a sample's cell is a warp-uniform
// broadcast. The table is packed once per call (pack kernel) as [tile][input][row][128], so
// the slice of a stage of inputs is one contiguous block that cp.async copies into shared
// memory (double buffered). A warp keeps 16 samples in registers.
//   forward: rows are the node values C[k]; y tile accumulated in registers, written once.
//   dx: rows are the slopes (C[k+1] - C[k]) / h_k; grad_y of the warp's 16 samples in
//     registers; per (sample, input) a lane's partial dot product over its 4 outputs, summed
//     over the 32 lanes by a transpose-reduce (31 shuffles per 32 sums). The block loops over
//     all output tiles itself, so grad_x is written by one thread per entry: no atomics,
//     deterministic.
// dC, G <= 31 (grouped): a warp owns one input and 64 outputs (a float2 per lane); per chunk
//   of 256 samples it counting-sorts them by cell and walks the cells in order, summing a run
//   of one cell in registers into node sums that stay in registers for the whole batch slice.
//   Per (sample, input) it reads shared memory twice (sorted entry, dy row), writes nothing.
// dC, larger G: a warp owns two inputs and 32 outputs (lanes); for a chunk of samples it reads
//   each sample's cells (broadcast) and dy[s, o] and updates its own columns of a shared-memory
//   accumulator (thread-exclusive: no shared atomics). The two inputs are independent
//   read-modify-write chains, interleaved to hide the shared-memory latency.
// Both split the batch into slices; each block flushes once: global atomicAdd, or
// (deterministic) a store into a per-slice workspace that a second kernel sums in a fixed order.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"
#include "cp_async.cuh"
#include "device_limits.h"
#include "grid.cuh"

namespace lmkan {
namespace {

// ---- tiled kernels (forward, dx) ------------------------------------------------------------
constexpr int kTileThreads = 512;
constexpr int kTileWarps = kTileThreads / 32;
constexpr int kTileOut = 128;                 // outputs per tile: 32 lanes x float4
constexpr int kRowChunks = kTileOut / 4;      // float4s per table row
constexpr int kWarpSamples = 16;              // samples per warp, in registers
constexpr int kBlockSamples = kTileWarps * kWarpSamples;  // 256
constexpr int kMaxStageInputs = 8;
constexpr int kXPerLane = kMaxStageInputs * kWarpSamples / 32;  // x values a lane prefetches
constexpr size_t kStageBudget = 64 * 1024;    // bytes of one table buffer, when rows allow

// ---- dC configuration --------------------------------------------------------------------
constexpr int kDcThreads = 256;
constexpr int kDcWarps = kDcThreads / 32;
constexpr int kDcInputs = 2 * kDcWarps;  // two inputs per warp
constexpr int kDcChunk = 64;             // samples per staged chunk

// Cell of v with the node table in shared memory (borders_s: [G+1]).
__device__ __forceinline__ Cell find_cell(float v, const float* borders_s, int num_grids,
                                          bool uniform) {
  return uniform ? uniform_cell(v, borders_s[0], borders_s[num_grids], num_grids)
                 : cdf_cell(v, borders_s, num_grids);
}

__device__ __forceinline__ void load_borders(float* borders_s, const float* borders, int n) {
  for (int j = threadIdx.x; j < n; j += blockDim.x) borders_s[j] = borders[j];
}

// ==========================================================================================
// Table packing (forward values or dx slopes)
// ==========================================================================================
// packed: [tiles][n_in_pad][rows][128] with packed[t][i][r][w] =
//   values (rows = G+1): params[r, 128t + w, i]
//   slopes (rows = G):   (params[r+1, o, i] - params[r, o, i]) / h_r,  o = 128t + w
// and zero for o >= N_out or i >= N_in. params: [G+1, N_out, N_in]; borders: [G+1].
// One block per (row r, output tile t, 32 inputs): read [128 outputs][32 inputs] of params
// (consecutive threads: consecutive inputs, coalesced), transpose through shared memory
// (rows padded to 33 floats: conflict-free both ways), write [32 inputs][128 outputs] of
// packed (consecutive threads: consecutive outputs, coalesced).
__global__ void lmkan1d_pack_kernel(const float* __restrict__ params,
                                    const float* __restrict__ borders,
                                    float* __restrict__ packed, int n_in, int n_in_pad,
                                    int n_out, int num_grids, int rows, bool slopes,
                                    bool uniform) {
  __shared__ float block_tile[kTileOut][33];
  const int r = blockIdx.x, t = blockIdx.y, i0 = blockIdx.z * 32;
  const float inv_h = !slopes  ? 0.f
                      : uniform ? num_grids / (borders[num_grids] - borders[0])
                                : 1.f / (borders[r + 1] - borders[r]);
  for (int e = threadIdx.x; e < kTileOut * 32; e += blockDim.x) {
    const int w = e / 32, i = i0 + e % 32;
    const int o = t * kTileOut + w;
    float v = 0.f;
    if (i < n_in && o < n_out) {
      const float c0 = params[(static_cast<int64_t>(r) * n_out + o) * n_in + i];
      v = slopes ? (params[(static_cast<int64_t>(r + 1) * n_out + o) * n_in + i] - c0) * inv_h : c0;
    }
    block_tile[w][e % 32] = v;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kTileOut * 32; e += blockDim.x) {
    const int i = i0 + e / kTileOut, w = e % kTileOut;
    if (i < n_in_pad)
      packed[((static_cast<int64_t>(t) * n_in_pad + i) * rows + r) * kTileOut + w] =
          block_tile[w][e / kTileOut];
  }
}

// ==========================================================================================
// Tiled kernels: shared pieces
// ==========================================================================================
struct TileArgs {
  const float* x;        // [N_in, B] (batch_last) or [B, N_in]
  const float* packed;   // [tiles][n_in_pad][rows][128]
  const float* borders;  // [G+1]
  int64_t batch;
  int n_in, n_in_pad, n_out, num_grids, rows, stage_inputs;
  bool uniform, batch_last;
  bool rows_only;  // cells hold only the row offset (int [input][16]; dx), else float2 (row, d)
};

// Shared memory of a tiled block: two table buffers, the warps' cells, the borders.
struct TileSmem {
  float* table;   // [2][stage_inputs][rows][128]
  float2* cells;  // this warp's [stage_inputs][16]: (float4 offset of row k in a buffer, d),
                  // or with rows_only the offsets alone as int [stage_inputs][16]
  float* borders;  // [G+1]
  int stage_floats;
};

__device__ __forceinline__ TileSmem carve_tile_smem(float* smem, const TileArgs& a, int warp) {
  TileSmem t;
  t.stage_floats = a.stage_inputs * a.rows * kTileOut;
  t.table = smem;
  float2* all_cells = reinterpret_cast<float2*>(smem + 2 * t.stage_floats);
  t.cells = all_cells + warp * a.stage_inputs * kWarpSamples;
  t.borders = reinterpret_cast<float*>(all_cells + kTileWarps * a.stage_inputs * kWarpSamples);
  return t;
}

size_t tile_smem_bytes(int rows, int stage_inputs, int num_grids) {
  return sizeof(float) * 2 * stage_inputs * rows * kTileOut +
         sizeof(float2) * kTileWarps * stage_inputs * kWarpSamples + sizeof(float) * (num_grids + 1);
}

// Inputs per stage: as many as kStageBudget holds (at least `min_inputs`, a multiple of it),
// fewer where the two stages would not fit the device's shared memory `smem_limit` (99 KB on
// consumer GPUs: there the stage, not kStageBudget, bounds it, so the num_grids limit is
// set by one stage of min_inputs inputs, not by kStageBudget's 8).
int tile_stage_inputs(int rows, int min_inputs, int num_grids, size_t smem_limit) {
  int n = static_cast<int>(kStageBudget / (sizeof(float) * rows * kTileOut));
  n = n / min_inputs * min_inputs;
  n = n < min_inputs ? min_inputs : (n > kMaxStageInputs ? kMaxStageInputs : n);
  while (n > min_inputs && tile_smem_bytes(rows, n, num_grids) > smem_limit) n -= min_inputs;
  return n;
}

// Entry e of a stage's 16 x n (sample, input) cells: consecutive lanes take consecutive
// elements of x in memory (inputs for batch-first, samples for batch-last).
__device__ __forceinline__ void stage_entry(int e, int n, bool batch_last, int& il, int& m) {
  if (batch_last) { m = e % kWarpSamples; il = e / kWarpSamples; }
  else            { il = e % n;           m = e / n; }
}

// Prefetch the x values of this warp's samples for inputs [i0, i0 + n) (0 outside x).
__device__ __forceinline__ void load_stage_x(float (&xr)[kXPerLane], const TileArgs& a,
                                             int64_t s_warp, int i0, int n, int lane) {
#pragma unroll
  for (int j = 0; j < kXPerLane; ++j) {
    const int e = lane + 32 * j;
    float v = 0.f;
    if (e < n * kWarpSamples) {
      int il, m;
      stage_entry(e, n, a.batch_last, il, m);
      const int i = i0 + il;
      const int64_t s = s_warp + m;
      if (i < a.n_in && s < a.batch)
        v = a.batch_last ? a.x[static_cast<int64_t>(i) * a.batch + s] : a.x[s * a.n_in + i];
    }
    xr[j] = v;
  }
}

// Cells of the prefetched x values into this warp's cell buffer.
__device__ __forceinline__ void store_stage_cells(const TileSmem& t, const float (&xr)[kXPerLane],
                                                  const TileArgs& a, int n, int lane) {
#pragma unroll
  for (int j = 0; j < kXPerLane; ++j) {
    const int e = lane + 32 * j;
    if (e < n * kWarpSamples) {
      int il, m;
      stage_entry(e, n, a.batch_last, il, m);
      const Cell c = find_cell(xr[j], t.borders, a.num_grids, a.uniform);
      const int row = (il * a.rows + c.index) * kRowChunks;
      if (a.rows_only) reinterpret_cast<int*>(t.cells)[il * kWarpSamples + m] = row;
      else             t.cells[il * kWarpSamples + m] = make_float2(__int_as_float(row), c.d);
    }
  }
}

// cp.async the table slices of inputs [i0, i0 + n) of `tile` (contiguous in packed).
__device__ __forceinline__ void stage_table(float* buf, const TileArgs& a, int tile, int i0, int n) {
  const float* src = a.packed + (static_cast<int64_t>(tile) * a.n_in_pad + i0) * a.rows * kTileOut;
  const int chunks = n * a.rows * kRowChunks;
  for (int e = threadIdx.x; e < chunks; e += kTileThreads) cp_async16(buf + 4 * e, src + 4 * e);
}

__device__ __forceinline__ float component(const float4& v, int c) {
  return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}

// The input pipeline of one tile: for every stage, `consume(table4, i0, n)` runs with the
// stage's table buffer (float4 view) and this warp's cells in t.cells, for inputs [i0, i0+n). Stage st+1 is
// copied (cp.async) and its x values loaded while stage st is consumed.
template <typename Consume>
__device__ __forceinline__ void run_stages(const TileSmem& t, const TileArgs& a, int tile,
                                           int64_t s_warp, int lane, Consume consume) {
  const int per = a.stage_inputs;
  const int stages = (a.n_in_pad + per - 1) / per;
  float xr[kXPerLane];
  load_stage_x(xr, a, s_warp, 0, min(per, a.n_in_pad), lane);
  stage_table(t.table, a, tile, 0, min(per, a.n_in_pad));
  cp_async_commit();
  for (int st = 0; st < stages; ++st) {
    const int i0 = st * per;
    const int n = min(per, a.n_in_pad - i0);
    store_stage_cells(t, xr, a, n, lane);  // previous readers passed the trailing barrier
    if (st + 1 < stages) {
      const int i1 = i0 + per;
      const int n1 = min(per, a.n_in_pad - i1);
      load_stage_x(xr, a, s_warp, i1, n1, lane);
      stage_table(t.table + ((st + 1) & 1) * t.stage_floats, a, tile, i1, n1);
    }
    cp_async_commit();  // possibly empty: keeps "all but the newest group" meaning "stage st landed"
    cp_async_wait<1>();
    __syncthreads();
    consume(reinterpret_cast<const float4*>(t.table + (st & 1) * t.stage_floats), i0, n);
    __syncthreads();  // buffer st & 1 and the cells are free for the next stages
  }
}

// ==========================================================================================
// Forward
// ==========================================================================================
// a.packed: values, rows = G+1, n_in_pad = N_in; y: [N_out, B] (batch_last) or [B, N_out].
// Grid: (ceil(B / 256), ceil(N_out / 128)), 512 threads. Shared memory: tile_smem_bytes.
__global__ void __launch_bounds__(kTileThreads, 1)
lmkan1d_forward_kernel(const TileArgs a, float* __restrict__ y) {
  extern __shared__ __align__(16) float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const TileSmem t = carve_tile_smem(smem, a, warp);
  const int tile = blockIdx.y;
  const int64_t s_warp = static_cast<int64_t>(blockIdx.x) * kBlockSamples + warp * kWarpSamples;
  load_borders(t.borders, a.borders, a.num_grids + 1);
  __syncthreads();

  float4 acc[kWarpSamples];
#pragma unroll
  for (int m = 0; m < kWarpSamples; ++m) acc[m] = make_float4(0.f, 0.f, 0.f, 0.f);

  run_stages(t, a, tile, s_warp, lane, [&](const float4* table4, int, int n) {
#pragma unroll 1
    for (int il = 0; il < n; ++il) {
      // Two samples' cells per broadcast read.
      const float4* cells4 = reinterpret_cast<const float4*>(t.cells + il * kWarpSamples);
#pragma unroll
      for (int m2 = 0; m2 < kWarpSamples / 2; ++m2) {
        const float4 c = cells4[m2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = __float_as_int(h == 0 ? c.x : c.z);
          const float d = h == 0 ? c.y : c.w;
          const float4 lo = table4[row + lane];
          const float4 hi = table4[row + kRowChunks + lane];
          const float w0 = 1.f - d;
          float4& r = acc[2 * m2 + h];
          r.x = fmaf(w0, lo.x, fmaf(d, hi.x, r.x));
          r.y = fmaf(w0, lo.y, fmaf(d, hi.y, r.y));
          r.z = fmaf(w0, lo.z, fmaf(d, hi.z, r.z));
          r.w = fmaf(w0, lo.w, fmaf(d, hi.w, r.w));
        }
      }
    }
  });

  const int o = tile * kTileOut + lane * 4;
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
// v[0..N) of every lane -> v[0..N/2): lanes with bit N/2 set keep the upper half, the others
// the lower half, each adding the partner's copy of the half it keeps.
template <int N>
__device__ __forceinline__ void fold_half(float (&v)[32], int lane) {
  constexpr int H = N / 2;
  const bool upper = (lane & H) != 0;
#pragma unroll
  for (int j = 0; j < H; ++j) {
    const float send = upper ? v[j] : v[j + H];
    const float keep = upper ? v[j + H] : v[j];
    v[j] = keep + __shfl_xor_sync(0xffffffffu, send, H);
  }
}

// Transpose-reduce: returns, in lane L, the sum over the 32 lanes of their v[L].
__device__ __forceinline__ float reduce_scatter_32(float (&v)[32], int lane) {
  fold_half<32>(v, lane);
  fold_half<16>(v, lane);
  fold_half<8>(v, lane);
  fold_half<4>(v, lane);
  fold_half<2>(v, lane);
  return v[0];
}

__device__ __forceinline__ float dot4(const float4& a, const float4& b) {
  return fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, a.w * b.w)));
}

// a.packed: slopes, rows = G, n_in_pad = N_in rounded up to even (stages hold input pairs);
// grad_y: like y; grad_x: like x, fully written. Grid: ceil(B / 256), 512 threads.
__global__ void __launch_bounds__(kTileThreads, 1)
lmkan1d_backward_dx_kernel(const TileArgs a, const float* __restrict__ grad_y,
                           float* __restrict__ grad_x, int tiles) {
  extern __shared__ __align__(16) float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const TileSmem t = carve_tile_smem(smem, a, warp);
  const int64_t s_warp = static_cast<int64_t>(blockIdx.x) * kBlockSamples + warp * kWarpSamples;
  load_borders(t.borders, a.borders, a.num_grids + 1);
  __syncthreads();

  // After the reduce, lane L holds the sum of sample L/2, input (L & 1) of the pair.
  const int64_t s_mine = s_warp + (lane >> 1);
  for (int tile = 0; tile < tiles; ++tile) {
    float4 gy[kWarpSamples];  // grad_y of the warp's samples at this lane's 4 outputs
    const int o = tile * kTileOut + lane * 4;
#pragma unroll
    for (int m = 0; m < kWarpSamples; ++m) {
      const int64_t s = s_warp + m;
      float g[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        g[c] = 0.f;
        if (s < a.batch && o + c < a.n_out)
          g[c] = a.batch_last ? grad_y[static_cast<int64_t>(o + c) * a.batch + s]
                              : grad_y[s * a.n_out + o + c];
      }
      gy[m] = make_float4(g[0], g[1], g[2], g[3]);
    }

    run_stages(t, a, tile, s_warp, lane, [&](const float4* table4, int i0, int n) {
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
            part[2 * m + 0] = dot4(gy[m], table4[row_a[h] + lane]);
            part[2 * m + 1] = dot4(gy[m], table4[row_b[h] + lane]);
          }
        }
        const float sum = reduce_scatter_32(part, lane);
        // Tile 0 writes, later tiles add: the same thread owns this entry in every tile.
        if (mine) grad_x[off] = tile == 0 ? sum : prev + sum;
      }
    });
  }
}

// Shared memory of the forward / dx kernels on a device allowing `smem_limit` per block.
size_t fwd_smem_bytes(int num_grids, size_t smem_limit) {
  const int rows = num_grids + 1;
  return tile_smem_bytes(rows, tile_stage_inputs(rows, 1, num_grids, smem_limit), num_grids);
}

size_t dx_smem_bytes(int num_grids, size_t smem_limit) {
  return tile_smem_bytes(num_grids, tile_stage_inputs(num_grids, 2, num_grids, smem_limit), num_grids);
}

// ==========================================================================================
// Backward, dC
// ==========================================================================================
// One sample's update of this lane's columns of two inputs' accumulators: (row offset, d)
// of each input's cell, g = dy[s, o]. All four loads come before any store, so the two
// read-modify-write chains overlap their shared-memory latency.
__device__ __forceinline__ void accumulate_two_inputs(float* acc_a, float* acc_b, float row_a,
                                                      float d_a, float row_b, float d_b, float g) {
  float* pa = acc_a + __float_as_int(row_a);
  float* pb = acc_b + __float_as_int(row_b);
  const float lo_a = pa[0], hi_a = pa[32], lo_b = pb[0], hi_b = pb[32];
  pa[0] = fmaf(g, 1.f - d_a, lo_a);
  pa[32] = fmaf(g, d_a, hi_a);
  pb[0] = fmaf(g, 1.f - d_b, lo_b);
  pb[32] = fmaf(g, d_b, hi_b);
}

// out: accumulate ? grad_params [G+1, N_out, N_in], zero on entry, atomically added to
//                 : a workspace [slices][G+1][N_out][N_in] (slice z = blockIdx.z), stored.
// Grid: (ceil(N_out / 32), ceil(N_in / 16), slices); block b.z handles samples
// [z * slice_len, (z+1) * slice_len).
__global__ void __launch_bounds__(kDcThreads)
lmkan1d_backward_dc_kernel(const float* __restrict__ grad_y, const float* __restrict__ x,
                           const float* __restrict__ borders, float* __restrict__ out,
                           int64_t batch, int n_in, int n_out, int num_grids, bool uniform,
                           bool batch_last, int64_t slice_len, bool accumulate) {
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1;
  float* acc_s = smem;                              // [16 inputs][G+1][32 outputs]
  float* dy_s = acc_s + kDcInputs * side * 32;      // [kDcChunk][32]
  float2* cell_s = reinterpret_cast<float2*>(dy_s + kDcChunk * 32);  // [16][kDcChunk]
  float* borders_s = reinterpret_cast<float*>(cell_s + kDcInputs * kDcChunk);  // [G+1]

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int o0 = blockIdx.x * 32;
  const int i0 = blockIdx.y * kDcInputs;
  const int64_t begin = static_cast<int64_t>(blockIdx.z) * slice_len;
  const int64_t end = (begin + slice_len < batch) ? begin + slice_len : batch;

  load_borders(borders_s, borders, side);
  for (int e = tid; e < kDcInputs * side * 32; e += kDcThreads) acc_s[e] = 0.f;
  // This thread's columns ([k * 32]) of the warp's two inputs 2 warp and 2 warp + 1.
  float* acc_a = acc_s + (2 * warp) * side * 32 + lane;
  float* acc_b = acc_a + side * 32;

  for (int64_t c0 = begin; c0 < end; c0 += kDcChunk) {
    __syncthreads();
    for (int e = tid; e < kDcChunk * 32; e += kDcThreads) {
      int sl, o;
      if (batch_last) { sl = e % kDcChunk; o = e / kDcChunk; }
      else            { o = e % 32;        sl = e / 32; }
      const int64_t s = c0 + sl;
      float g = 0.f;
      if (s < end && o0 + o < n_out)
        g = batch_last ? grad_y[static_cast<int64_t>(o0 + o) * batch + s]
                       : grad_y[s * n_out + o0 + o];
      dy_s[sl * 32 + o] = g;
    }
    for (int e = tid; e < kDcChunk * kDcInputs; e += kDcThreads) {
      int sl, il;
      if (batch_last) { sl = e % kDcChunk; il = e / kDcChunk; }
      else            { il = e % kDcInputs; sl = e / kDcInputs; }
      const int64_t s = c0 + sl;
      const int i = i0 + il;
      int k = 0;
      float d = 0.f;
      if (s < end && i < n_in) {
        const float v = batch_last ? x[static_cast<int64_t>(i) * batch + s] : x[s * n_in + i];
        const Cell c = find_cell(v, borders_s, num_grids, uniform);
        k = c.index;
        d = c.d;
      }
      cell_s[il * kDcChunk + sl] = make_float2(__int_as_float(k * 32), d);
    }
    __syncthreads();

    // Samples in pairs: one broadcast read gives two samples' cells of an input. Past the
    // slice end dy is 0 and the cell (0, 0), so the padding sample of an odd tail adds 0.
    const int64_t rem = end - c0;
    const int pairs = rem < kDcChunk ? static_cast<int>(rem + 1) / 2 : kDcChunk / 2;
    const float4* cells_a = reinterpret_cast<const float4*>(cell_s + (2 * warp) * kDcChunk);
    const float4* cells_b = cells_a + kDcChunk / 2;
    // The next pair's cells are loaded before this pair's stores (program order lets the
    // compiler issue them early: the accumulator stores might alias them otherwise).
    float4 ca = cells_a[0], cb = cells_b[0];
#pragma unroll 2
    for (int p = 0; p < pairs; ++p) {
      const int next = p + 1 < pairs ? p + 1 : p;
      const float4 na = cells_a[next], nb = cells_b[next];
      const float g0 = dy_s[(2 * p) * 32 + lane], g1 = dy_s[(2 * p + 1) * 32 + lane];
      accumulate_two_inputs(acc_a, acc_b, ca.x, ca.y, cb.x, cb.y, g0);
      accumulate_two_inputs(acc_a, acc_b, ca.z, ca.w, cb.z, cb.w, g1);
      ca = na;
      cb = nb;
    }
  }
  __syncthreads();

  // Flush: consecutive threads take consecutive inputs of one (node, output) row.
  const int64_t plane = static_cast<int64_t>(side) * n_out * n_in;
  float* dst = accumulate ? out : out + blockIdx.z * plane;
  for (int e = tid; e < kDcInputs * side * 32; e += kDcThreads) {
    const int il = e % kDcInputs;
    const int o = (e / kDcInputs) % 32;
    const int k = e / (kDcInputs * 32);
    const int i = i0 + il, oo = o0 + o;
    if (i < n_in && oo < n_out) {
      const int64_t off = (static_cast<int64_t>(k) * n_out + oo) * n_in + i;
      const float v = acc_s[(il * side + k) * 32 + o];
      if (accumulate) atomicAdd(dst + off, v);
      else            dst[off] = v;
    }
  }
}

size_t dc_smem_bytes(int num_grids) {
  return sizeof(float) * (kDcInputs * (num_grids + 1) * 32 + kDcChunk * 32) +
         sizeof(float2) * kDcInputs * kDcChunk + sizeof(float) * (num_grids + 2);
}

// ==========================================================================================
// Backward, dC grouped by cell (G <= 31)
// ==========================================================================================
// A warp owns one input and 64 outputs (a float2 per lane). Per chunk of 256 samples it sorts
// its input's samples by cell (counting sort, ranks from __match_any_sync, so the order
// depends only on the data) and walks the cells in order: a run of samples in cell k sums
// g (1 - d) and g d in registers, then adds them to the node sums acc[k] and acc[k+1], which
// stay in registers for the whole slice. Shared memory is read once per (sample, input) for
// the sorted entry (a broadcast) and once for the dy row (2 wavefronts); nothing is written
// per sample. The node sums need G+1 <= 32 registers pairs with static indices, hence the
// fully unrolled cell loop and the G <= 31 limit (larger G use the kernel above).
constexpr int kGcThreads = 256;
constexpr int kGcWarps = kGcThreads / 32;  // = inputs per block
constexpr int kGcOut = 64;                 // outputs per block: 32 lanes x float2
constexpr int kGcChunk = 256;              // samples per chunk
constexpr int kGcPerLane = kGcChunk / 32;  // samples a lane sorts
constexpr int kGcMaxCells = 31;            // node sums in registers: G + 1 <= 32
// dy row stride in floats: 16-byte aligned rows (float4 stores), and for batch-last's
// transposed stores consecutive samples start 4 banks apart (4-way, not 32-way conflicts).
constexpr int kGcDyStride = kGcOut + 4;

struct GroupedSmem {
  float* dy;       // [kGcChunk][kGcDyStride]; at the end the flush buffer [8][G+1][64]
  float2* cells;   // [8 inputs][kGcChunk]: (cell index as int bits, d), cell G = no sample
  float2* sorted;  // [8 inputs][kGcChunk]: (float2 offset of the dy row, d), ordered by cell
  int* bins;       // [8 inputs][32]: start of each cell's run in `sorted`; bins[G] = samples
  float* borders;  // [G+1]
};

__device__ __forceinline__ GroupedSmem carve_grouped_smem(float* smem) {
  GroupedSmem g;
  g.dy = smem;
  g.cells = reinterpret_cast<float2*>(smem + kGcChunk * kGcDyStride);
  g.sorted = g.cells + kGcWarps * kGcChunk;
  g.bins = reinterpret_cast<int*>(g.sorted + kGcWarps * kGcChunk);
  g.borders = reinterpret_cast<float*>(g.bins + kGcWarps * 32);
  return g;
}

static_assert(kGcWarps * (kGcMaxCells + 1) * kGcOut <= kGcChunk * kGcDyStride,
              "the dy buffer must hold the flush buffer");

size_t grouped_smem_bytes(int num_grids) {
  return sizeof(float) * kGcChunk * kGcDyStride + 2 * sizeof(float2) * kGcWarps * kGcChunk +
         sizeof(int) * kGcWarps * 32 + sizeof(float) * (num_grids + 1);
}

struct GroupedArgs {
  const float* grad_y;  // like y: [N_out, B] (batch_last) or [B, N_out]
  const float* x;       // [N_in, B] or [B, N_in]
  const float* borders;  // [G+1]
  float* out;  // accumulate ? grad_params (zeroed) : workspace [slices][G+1][N_out][N_in]
  int64_t batch, slice_len;
  int n_in, n_out, num_grids;
  bool uniform, batch_last, accumulate;
  bool vector_dy;  // batch-first grad_y rows can be read as float4 (N_out % 4 == 0, aligned)
};

// dy of samples [c0, c0 + valid) and this block's 64 outputs into s.dy (0 outside).
__device__ __forceinline__ void stage_grouped_dy(const GroupedSmem& s, const GroupedArgs& a,
                                                 int64_t c0, int valid, int o0) {
  if (a.vector_dy) {
    for (int e = threadIdx.x; e < kGcChunk * kGcOut / 4; e += kGcThreads) {
      const int q = e % (kGcOut / 4), sl = e / (kGcOut / 4);
      float4 g = make_float4(0.f, 0.f, 0.f, 0.f);
      if (sl < valid && o0 + 4 * q < a.n_out)
        g = *reinterpret_cast<const float4*>(a.grad_y + (c0 + sl) * a.n_out + o0 + 4 * q);
      *reinterpret_cast<float4*>(s.dy + sl * kGcDyStride + 4 * q) = g;
    }
    return;
  }
  for (int e = threadIdx.x; e < kGcChunk * kGcOut; e += kGcThreads) {
    int sl, o;
    if (a.batch_last) { sl = e % kGcChunk; o = e / kGcChunk; }
    else              { o = e % kGcOut;    sl = e / kGcOut; }
    const int64_t smp = c0 + sl;
    float g = 0.f;
    if (sl < valid && o0 + o < a.n_out)
      g = a.batch_last ? a.grad_y[static_cast<int64_t>(o0 + o) * a.batch + smp]
                       : a.grad_y[smp * a.n_out + o0 + o];
    s.dy[sl * kGcDyStride + o] = g;
  }
}

// (cell, d) of samples [c0, c0 + valid) for this block's 8 inputs; cell G marks no sample.
__device__ __forceinline__ void stage_grouped_cells(const GroupedSmem& s, const GroupedArgs& a,
                                                    int64_t c0, int valid, int i0) {
  for (int e = threadIdx.x; e < kGcChunk * kGcWarps; e += kGcThreads) {
    int sl, il;
    if (a.batch_last) { sl = e % kGcChunk; il = e / kGcChunk; }
    else              { il = e % kGcWarps; sl = e / kGcWarps; }
    const int64_t smp = c0 + sl;
    const int i = i0 + il;
    int k = a.num_grids;
    float d = 0.f;
    if (sl < valid && i < a.n_in) {
      const float v = a.batch_last ? a.x[static_cast<int64_t>(i) * a.batch + smp]
                                   : a.x[smp * a.n_in + i];
      const Cell c = find_cell(v, s.borders, a.num_grids, a.uniform);
      k = c.index;
      d = c.d;
    }
    s.cells[il * kGcChunk + sl] = make_float2(__int_as_float(k), d);
  }
}

// Counting sort of one input's chunk by cell, by one warp: sorted[] gets (dy row offset, d)
// in cell order, samples of one cell in sample order; bins[k] the start of cell k's run.
__device__ __forceinline__ void sort_chunk_by_cell(const float2* cells, float2* sorted, int* bins,
                                                   int lane) {
  bins[lane] = 0;
  __syncwarp();
  const unsigned lower_lanes = (1u << lane) - 1u;
  // Only the ranks stay in registers (the node sums of the caller hold 64): cells and d are
  // read again from shared memory for the scatter.
  int rank[kGcPerLane];
#pragma unroll
  for (int r = 0; r < kGcPerLane; ++r) {
    const int cell = __float_as_int(cells[lane + 32 * r].x);
    const unsigned peers = __match_any_sync(0xffffffffu, cell);
    const int before = bins[cell];
    rank[r] = before + __popc(peers & lower_lanes);
    __syncwarp();  // every lane has read its count before the lowest peer raises it
    if ((peers & lower_lanes) == 0) bins[cell] = before + __popc(peers);
    __syncwarp();
  }
  // Exclusive scan of the 32 counts: bins[k] = start of cell k.
  const int count = bins[lane];
  int inclusive = count;
#pragma unroll
  for (int step = 1; step < 32; step *= 2) {
    const int t = __shfl_up_sync(0xffffffffu, inclusive, step);
    if (lane >= step) inclusive += t;
  }
  bins[lane] = inclusive - count;
  __syncwarp();
#pragma unroll
  for (int r = 0; r < kGcPerLane; ++r) {
    const float2 c = cells[lane + 32 * r];
    const int row = (lane + 32 * r) * (kGcDyStride / 2);  // float2 offset of the dy row
    sorted[bins[__float_as_int(c.x)] + rank[r]] = make_float2(__int_as_float(row), c.y);
  }
  __syncwarp();
}

// Adds one sorted chunk of this warp's input into the node sums (lane: outputs 2 lane, +1).
__device__ __forceinline__ void walk_cells(float2 (&acc)[kGcMaxCells + 1], const float2* sorted,
                                           const int* bins, const float2* dy_lane, int num_grids) {
#pragma unroll
  for (int k = 0; k < kGcMaxCells; ++k) {
    if (k >= num_grids) break;
    const int begin = bins[k], end = bins[k + 1];
    float2 lo = make_float2(0.f, 0.f), hi = make_float2(0.f, 0.f);
#pragma unroll 4
    for (int j = begin; j < end; ++j) {
      const float2 e = sorted[j];
      const float2 g = dy_lane[__float_as_int(e.x)];
      const float w0 = 1.f - e.y;
      lo.x = fmaf(g.x, w0, lo.x);
      lo.y = fmaf(g.y, w0, lo.y);
      hi.x = fmaf(g.x, e.y, hi.x);
      hi.y = fmaf(g.y, e.y, hi.y);
    }
    acc[k].x += lo.x;
    acc[k].y += lo.y;
    acc[k + 1].x += hi.x;
    acc[k + 1].y += hi.y;
  }
}

// Grid: (ceil(N_out / 64), ceil(N_in / 8), slices); block z handles samples
// [z * slice_len, (z+1) * slice_len). 256 threads, grouped_smem_bytes(G).
__global__ void __launch_bounds__(kGcThreads, 2)
lmkan1d_backward_dc_grouped_kernel(const GroupedArgs a) {
  extern __shared__ __align__(16) float smem[];
  const GroupedSmem s = carve_grouped_smem(smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int o0 = blockIdx.x * kGcOut;
  const int i0 = blockIdx.y * kGcWarps;
  const int64_t begin = static_cast<int64_t>(blockIdx.z) * a.slice_len;
  const int64_t end = (begin + a.slice_len < a.batch) ? begin + a.slice_len : a.batch;
  const int side = a.num_grids + 1;
  const bool warp_has_input = i0 + warp < a.n_in;
  load_borders(s.borders, a.borders, side);

  float2 acc[kGcMaxCells + 1];
#pragma unroll
  for (int k = 0; k <= kGcMaxCells; ++k) acc[k] = make_float2(0.f, 0.f);
  const float2* cells = s.cells + warp * kGcChunk;
  float2* sorted = s.sorted + warp * kGcChunk;
  int* bins = s.bins + warp * 32;
  const float2* dy_lane = reinterpret_cast<const float2*>(s.dy) + lane;

  for (int64_t c0 = begin; c0 < end; c0 += kGcChunk) {
    const int valid = static_cast<int>(end - c0 < kGcChunk ? end - c0 : kGcChunk);
    __syncthreads();  // the previous chunk's readers are done (and the borders are loaded)
    stage_grouped_dy(s, a, c0, valid, o0);
    stage_grouped_cells(s, a, c0, valid, i0);
    __syncthreads();
    if (warp_has_input) {
      sort_chunk_by_cell(cells, sorted, bins, lane);
      walk_cells(acc, sorted, bins, dy_lane, a.num_grids);
    }
  }
  __syncthreads();  // s.dy becomes the flush buffer [8][G+1][64]

#pragma unroll
  for (int k = 0; k <= kGcMaxCells; ++k) {
    if (k > a.num_grids) break;
    reinterpret_cast<float2*>(s.dy + (warp * side + k) * kGcOut)[lane] = acc[k];
  }
  __syncthreads();
  // Consecutive threads take consecutive inputs of one (node, output) row.
  const int64_t plane = static_cast<int64_t>(side) * a.n_out * a.n_in;
  float* dst = a.accumulate ? a.out : a.out + blockIdx.z * plane;
  for (int e = threadIdx.x; e < kGcWarps * side * kGcOut; e += kGcThreads) {
    const int il = e % kGcWarps;
    const int o = (e / kGcWarps) % kGcOut;
    const int k = e / (kGcWarps * kGcOut);
    const int i = i0 + il, oo = o0 + o;
    if (i < a.n_in && oo < a.n_out) {
      const int64_t off = (static_cast<int64_t>(k) * a.n_out + oo) * a.n_in + i;
      const float v = s.dy[(il * side + k) * kGcOut + o];
      if (a.accumulate) atomicAdd(dst + off, v);
      else              dst[off] = v;
    }
  }
}

// out[e] = sum over z = 0, 1, ... of ws[z][e], in that order (deterministic dC).
__global__ void lmkan1d_sum_slices_kernel(const float* __restrict__ ws, float* __restrict__ out,
                                          int64_t plane, int slices) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= plane) return;
  float v = ws[e];
  for (int z = 1; z < slices; ++z) v += ws[z * plane + e];
  out[e] = v;
}

// ==========================================================================================
// Host side
// ==========================================================================================
// The shared memory a block may use (device_limits.h: LMKAN_SMEM_BUDGET_KB applies).
int max_dynamic_smem(int device) { return device_limits(device).smem_optin; }

void set_smem(const void* kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

struct Shapes {
  int64_t batch;
  int n_in, n_out, num_grids;
};

Shapes check_args(const at::Tensor& x, const at::Tensor& params, const at::Tensor& borders,
                  bool batch_last) {
  check_layer_tensors(x, params, borders, 3);
  Shapes sh;
  sh.num_grids = static_cast<int>(params.size(0)) - 1;
  TORCH_CHECK_VALUE(sh.num_grids >= 1, "params must have at least 2 node rows (G+1), got shape ",
                    params.sizes());
  TORCH_CHECK_VALUE(borders.size(0) == params.size(0), "borders must have G+1 = ",
                    params.size(0), " entries (params.size(0)), got ", borders.size(0));
  sh.n_out = static_cast<int>(params.size(1));
  sh.n_in = static_cast<int>(params.size(2));
  const int64_t x_in = batch_last ? x.size(0) : x.size(1);
  TORCH_CHECK_VALUE(x_in == sh.n_in, "x must have ", sh.n_in, " input features (params.size(2)) along dim ",
                    batch_last ? 0 : 1, ", got shape ", x.sizes());
  sh.batch = batch_last ? x.size(1) : x.size(0);
  return sh;
}

void check_smem(size_t need, int device, const char* which, int num_grids) {
  const int limit = max_dynamic_smem(device);
  TORCH_CHECK_VALUE(need <= static_cast<size_t>(limit), "lmkan1d ", which, ": num_grids=",
                    num_grids, " needs ", need, " bytes of shared memory per block, the device allows ",
                    limit, "; use a smaller num_grids");
}

int output_tiles(int n_out) { return (n_out + kTileOut - 1) / kTileOut; }

// The packed table of the tiled kernels: node values (rows G+1) or slopes (rows G).
at::Tensor pack_table(const at::Tensor& params, const at::Tensor& borders, const Shapes& sh,
                      int n_in_pad, bool slopes, bool uniform_grid, cudaStream_t stream) {
  const int rows = slopes ? sh.num_grids : sh.num_grids + 1;
  at::Tensor packed = at::empty({output_tiles(sh.n_out), n_in_pad, rows, kTileOut}, params.options());
  if (packed.numel() == 0) return packed;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(output_tiles(sh.n_out)),
                  static_cast<unsigned>((n_in_pad + 31) / 32));
  lmkan1d_pack_kernel<<<grid, 256, 0, stream>>>(
      params.data_ptr<float>(), borders.data_ptr<float>(), packed.data_ptr<float>(), sh.n_in,
      n_in_pad, sh.n_out, sh.num_grids, rows, slopes, uniform_grid);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return packed;
}

TileArgs tile_args(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& borders,
                   const Shapes& sh, int n_in_pad, int rows, int min_stage_inputs,
                   bool rows_only, bool uniform_grid, bool batch_last) {
  TileArgs a;
  a.x = x.data_ptr<float>();
  a.packed = packed.data_ptr<float>();
  a.borders = borders.data_ptr<float>();
  a.batch = sh.batch;
  a.n_in = sh.n_in;
  a.n_in_pad = n_in_pad;
  a.n_out = sh.n_out;
  a.num_grids = sh.num_grids;
  a.rows = rows;
  a.stage_inputs = tile_stage_inputs(rows, min_stage_inputs, sh.num_grids,
                                     static_cast<size_t>(max_dynamic_smem(x.get_device())));
  a.uniform = uniform_grid;
  a.batch_last = batch_last;
  a.rows_only = rows_only;
  return a;
}

unsigned sample_blocks(int64_t batch) {
  const int64_t blocks = (batch + kBlockSamples - 1) / kBlockSamples;
  TORCH_CHECK_VALUE(blocks < (int64_t{1} << 31), "batch ", batch, " is too large");
  return static_cast<unsigned>(blocks);
}

// `deterministic` is accepted for the autograd registration (saved for the backward); the
// forward kernel has no atomics and is deterministic either way.
at::Tensor lmkan1d_forward_cuda(const at::Tensor& x_in, const at::Tensor& params_in,
                                const at::Tensor& borders_in, bool uniform_grid, bool batch_last,
                                bool deterministic) {
  (void)deterministic;
  const Shapes sh = check_args(x_in, params_in, borders_in, batch_last);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();            // [N_in, B] or [B, N_in]
  const at::Tensor params = params_in.contiguous();  // [G+1, N_out, N_in]
  const at::Tensor borders = borders_in.contiguous();  // [G+1]
  at::Tensor y = batch_last ? at::empty({sh.n_out, sh.batch}, x.options())
                            : at::empty({sh.batch, sh.n_out}, x.options());
  if (sh.batch == 0 || sh.n_out == 0) return y;
  if (sh.n_in == 0) return y.zero_();
  const size_t smem = fwd_smem_bytes(sh.num_grids, max_dynamic_smem(x.get_device()));
  check_smem(smem, x.get_device(), "forward", sh.num_grids);
  const unsigned blocks = sample_blocks(sh.batch);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor packed = pack_table(params, borders, sh, sh.n_in, false, uniform_grid, stream);
  const TileArgs a = tile_args(x, packed, borders, sh, sh.n_in, sh.num_grids + 1, 1, false,
                               uniform_grid, batch_last);
  set_smem(reinterpret_cast<const void*>(lmkan1d_forward_kernel), smem);
  const dim3 grid(blocks, output_tiles(sh.n_out));
  lmkan1d_forward_kernel<<<grid, kTileThreads, smem, stream>>>(a, y.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

void launch_dx(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& params,
               const at::Tensor& borders, const Shapes& sh, bool uniform_grid, bool batch_last,
               at::Tensor& grad_x, cudaStream_t stream) {
  const size_t smem = dx_smem_bytes(sh.num_grids, max_dynamic_smem(x.get_device()));
  check_smem(smem, x.get_device(), "backward (dx)", sh.num_grids);
  const unsigned blocks = sample_blocks(sh.batch);
  const int n_in_pad = (sh.n_in + 1) / 2 * 2;  // stages hold pairs of inputs
  const at::Tensor slopes = pack_table(params, borders, sh, n_in_pad, true, uniform_grid, stream);
  const TileArgs a = tile_args(x, slopes, borders, sh, n_in_pad, sh.num_grids, 2, true,
                               uniform_grid, batch_last);
  set_smem(reinterpret_cast<const void*>(lmkan1d_backward_dx_kernel), smem);
  lmkan1d_backward_dx_kernel<<<blocks, kTileThreads, smem, stream>>>(
      a, grad_y.data_ptr<float>(), grad_x.data_ptr<float>(), output_tiles(sh.n_out));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

// Slices of the batch for the grouped dC: the fewest (each at least 4 chunks, at most 64)
// whose blocks fill the resident slots of every wave, the last included, to at least 85%
// (blocks do equal work, so a part-empty wave is lost time); else the best filling count.
int64_t grouped_dc_slices(const Shapes& sh, int64_t tiles, int64_t slots) {
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(64, sh.batch / (4 * kGcChunk)));
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
    const int threads = 256;
    lmkan1d_sum_slices_kernel<<<static_cast<unsigned>((plane + threads - 1) / threads), threads, 0,
                                stream>>>(workspace.data_ptr<float>(), grad_params.data_ptr<float>(),
                                          plane, static_cast<int>(slices));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

int device_sms(int device) { return device_limits(device).num_sms; }

// dC for G <= kGcMaxCells: cell-grouped kernel.
void launch_dc_grouped(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& borders,
                       const Shapes& sh, bool uniform_grid, bool batch_last, bool deterministic,
                       at::Tensor& grad_params, cudaStream_t stream) {
  const int device = x.get_device();
  const size_t smem = grouped_smem_bytes(sh.num_grids);
  check_smem(smem, device, "backward (dC)", sh.num_grids);
  const void* kernel = reinterpret_cast<const void*>(lmkan1d_backward_dc_grouped_kernel);
  set_smem(kernel, smem);
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kGcThreads, smem));
  const int64_t tiles = static_cast<int64_t>((sh.n_out + kGcOut - 1) / kGcOut) *
                        ((sh.n_in + kGcWarps - 1) / kGcWarps);
  const int64_t slots = static_cast<int64_t>(std::max(per_sm, 1)) * device_sms(device);
  int64_t slices = grouped_dc_slices(sh, tiles, slots);
  const int64_t slice_len = (sh.batch + slices - 1) / slices;
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
  const dim3 grid((sh.n_out + kGcOut - 1) / kGcOut, (sh.n_in + kGcWarps - 1) / kGcWarps,
                  static_cast<unsigned>(slices));
  run_dc_slices(slices, deterministic, grad_params, stream, [&](float* out, bool accumulate) {
    a.out = out;
    a.accumulate = accumulate;
    lmkan1d_backward_dc_grouped_kernel<<<grid, kGcThreads, smem, stream>>>(a);
  });
}

// dC for larger G: shared-memory accumulator kernel.
void launch_dc_shared(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& borders,
                      const Shapes& sh, bool uniform_grid, bool batch_last, bool deterministic,
                      at::Tensor& grad_params, cudaStream_t stream) {
  const int device = x.get_device();
  const size_t smem = dc_smem_bytes(sh.num_grids);
  check_smem(smem, device, "backward (dC)", sh.num_grids);
  set_smem(reinterpret_cast<const void*>(lmkan1d_backward_dc_kernel), smem);
  const int64_t slices = dc_slices(sh, device_sms(device));
  const int64_t slice_len = (sh.batch + slices - 1) / slices;
  const dim3 grid((sh.n_out + 31) / 32, (sh.n_in + kDcInputs - 1) / kDcInputs,
                  static_cast<unsigned>(slices));
  run_dc_slices(slices, deterministic, grad_params, stream, [&](float* out, bool accumulate) {
    lmkan1d_backward_dc_kernel<<<grid, kDcThreads, smem, stream>>>(
        grad_y.data_ptr<float>(), x.data_ptr<float>(), borders.data_ptr<float>(), out, sh.batch,
        sh.n_in, sh.n_out, sh.num_grids, uniform_grid, batch_last, slice_len, accumulate);
  });
}

void launch_dc(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& borders,
               const Shapes& sh, bool uniform_grid, bool batch_last, bool deterministic,
               at::Tensor& grad_params, cudaStream_t stream) {
  // The grouped kernel needs G <= 31, ~100 KB of shared memory (devices with less take the
  // other kernel, whose limit is what lmkan1d_max_num_grids reports) and N_in / 8 blocks
  // along grid y (<= 65535; the other kernel takes N_in / 16).
  const bool grouped =
      sh.num_grids <= kGcMaxCells && (sh.n_in + kGcWarps - 1) / kGcWarps <= 65535 &&
      grouped_smem_bytes(sh.num_grids) <= static_cast<size_t>(max_dynamic_smem(x.get_device()));
  if (grouped)
    launch_dc_grouped(grad_y, x, borders, sh, uniform_grid, batch_last, deterministic, grad_params, stream);
  else
    launch_dc_shared(grad_y, x, borders, sh, uniform_grid, batch_last, deterministic, grad_params, stream);
}

std::tuple<at::Tensor, at::Tensor> lmkan1d_backward_cuda(const at::Tensor& grad_y_in,
                                                         const at::Tensor& x_in,
                                                         const at::Tensor& params_in,
                                                         const at::Tensor& borders_in,
                                                         bool uniform_grid, bool batch_last,
                                                         bool deterministic) {
  const Shapes sh = check_args(x_in, params_in, borders_in, batch_last);
  check_cuda_float(grad_y_in, "grad_y");
  check_same_device(x_in, "x", grad_y_in, "grad_y");
  check_dim(grad_y_in, 2, "grad_y");
  const int64_t gy_out = batch_last ? grad_y_in.size(0) : grad_y_in.size(1);
  const int64_t gy_batch = batch_last ? grad_y_in.size(1) : grad_y_in.size(0);
  TORCH_CHECK_VALUE(gy_out == sh.n_out && gy_batch == sh.batch, "grad_y must have shape ",
                    batch_last ? "[N_out, B] = [" : "[B, N_out] = [",
                    batch_last ? sh.n_out : sh.batch, ", ", batch_last ? sh.batch : sh.n_out,
                    "], got ", grad_y_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad_y = grad_y_in.contiguous();  // like y
  const at::Tensor x = x_in.contiguous();            // [N_in, B] or [B, N_in]
  const at::Tensor params = params_in.contiguous();  // [G+1, N_out, N_in]
  const at::Tensor borders = borders_in.contiguous();  // [G+1]
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_params = at::empty_like(params);
  if (sh.batch == 0 || sh.n_in == 0 || sh.n_out == 0) {
    grad_x.zero_();
    grad_params.zero_();
    return {grad_x, grad_params};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch_dx(grad_y, x, params, borders, sh, uniform_grid, batch_last, grad_x, stream);
  launch_dc(grad_y, x, borders, sh, uniform_grid, batch_last, deterministic, grad_params, stream);
  return {grad_x, grad_params};
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
}

}  // namespace lmkan
