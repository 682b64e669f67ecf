// The input pipeline that the 1D layer's tiled kernels share (layout.h has the scheme): stage
// by stage, the table slices copied into shared memory (cp.async, double-buffered) and the
// warps' cells computed from x. Included by forward.cu and grad_x.cu; its functions sit in an
// anonymous namespace, so each of them compiles its own copy (as when they shared one file).
#pragma once
#include <cstdint>

#include "common/cp_async.cuh"
#include "common/images.h"
#include "lmkan1d/device.cuh"

namespace lmkan {
namespace lmkan1d {
namespace {

// ==========================================================================================
// Tiled kernels: shared pieces
// ==========================================================================================
// Shared memory of a tiled block: two table buffers, their barriers, the warps' cells, the
// borders.
struct TileSmem {
  char* table;    // [2][stage_inputs][rows][128] table values (4 or 2 bytes each), then the
                  // buffers' two barriers (sm_90: buffer b's bulk copy has landed;
                  // kTileBarrierBytes): tile_barrier
  float2* cells;  // this warp's [stage_inputs][16]: (offset of row k in a buffer in groups of
                  // 4 values, d), or with rows_only the offsets alone as int [stage_inputs][16]
  float* borders;  // [G+1]
  int stage_bytes;
};

__device__ __forceinline__ uint64_t* tile_barrier(const TileSmem& t, int b) {
  return reinterpret_cast<uint64_t*>(t.table + 2 * t.stage_bytes) + b;
}

// Thread 0 initialises the barriers: the kernel's __syncthreads after load_borders orders
// that before run_stages.
__device__ __forceinline__ TileSmem carve_tile_smem(float* smem, const TileArgs& a, int warp,
                                                    int table_bytes) {
  TileSmem t;
  t.stage_bytes = a.stage_inputs * a.rows * kTileOut * table_bytes;  // a multiple of 256
  t.table = reinterpret_cast<char*>(smem);
  float2* all_cells = reinterpret_cast<float2*>(t.table + 2 * t.stage_bytes + kTileBarrierBytes);
  t.cells = all_cells + warp * a.stage_inputs * kWarpSamples;
  t.borders = reinterpret_cast<float*>(all_cells + kTileWarps * a.stage_inputs * kWarpSamples);
  if (kBulkCopy && threadIdx.x == 0) {
    mbarrier_init(tile_barrier(t, 0), 1);
    mbarrier_init(tile_barrier(t, 1), 1);
  }
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

// Copy the table slices of inputs [i0, i0 + n) of `tile` (contiguous in packed; a multiple of
// 256 bytes) into buffer b. sm_90 and newer: thread 0 issues one bulk copy that completes
// the phase of buffer b's barrier (the tensor memory accelerator writes shared memory without
// the load/store instructions that the lookups are bound by); below: every thread cp.asyncs
// its 16-byte pieces (a commit group; run_stages waits on it, as measured on the Ampere
// path; common/cp_async.cuh's stage_to_shared would poll the barrier there instead).
__device__ __forceinline__ void stage_table(const TileSmem& t, int b, const TileArgs& a, int tile,
                                            int i0, int n, int table_bytes) {
  const float* src = reinterpret_cast<const float*>(
      static_cast<const char*>(a.packed) +
      (static_cast<int64_t>(tile) * a.n_in_pad + i0) * a.rows * kTileOut * table_bytes);
  float* dst = reinterpret_cast<float*>(t.table + b * t.stage_bytes);
  const int bytes = n * a.rows * kTileOut * table_bytes;
  stage_to_shared_committed<kTileThreads>(dst, src, static_cast<unsigned>(bytes),
                                          tile_barrier(t, b));
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
                                           Consume consume, int calls_before = 0) {
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
  stage_table(t, (calls_before * count) & 1, a, tile, i_first, min(per, a.n_in_pad - i_first),
              kBytes);
  if (!kBulkCopy) cp_async_commit();
  for (int k = 0; k < count; ++k) {  // stage first + k, in buffer k & 1
    const int i0 = i_first + k * per;
    const int n = min(per, a.n_in_pad - i0);
    // stage q = calls_before * count + k of this block (calls: dx's output tiles) is in buffer
    // q & 1, that buffer's use q / 2: its barrier's phase parity (q / 2) & 1
    const int q = calls_before * count + k, b = q & 1;
    // previous readers passed the trailing barrier
    const bool far = store_stage_cells<kWeights>(t, xr, wr, a, n, lane);
    if (k + 1 < count) {
      const int i1 = i0 + per;
      const int n1 = min(per, a.n_in_pad - i1);
      load_stage_x(xr, a, a.x, s_warp, base, stride, i1, n1, lane);
      if (kWeights) load_stage_x(wr, a, a.weights, s_warp, base, stride, i1, n1, lane);
      stage_table(t, b ^ 1, a, tile, i1, n1, kBytes);
    }
    if (kBulkCopy) {
      // the table of stage k has landed (its barrier's phase); this warp's cells, written
      // above, are read by this warp only
      mbarrier_wait(tile_barrier(t, b), static_cast<unsigned>(q >> 1) & 1u);
      __syncwarp();
    } else {
      cp_async_commit();  // possibly empty: "all but the newest group" is "stage k landed"
      cp_async_wait<1>();
      __syncthreads();
    }
    consume(reinterpret_cast<const T*>(t.table + b * t.stage_bytes), i0, n, far);
    __syncthreads();  // buffer k & 1 and the cells are free for the next stages
  }
}

}  // namespace
}  // namespace lmkan1d
}  // namespace lmkan
