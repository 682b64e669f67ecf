// The 1D layer's parameter gradient grouped by cell (num_grids <= 31; layout.h has the
// scheme beside its launch shapes, kGroupedConfigs): per block `warps` inputs (a warp each) x
// 32 lane_out outputs; per chunk of `chunk` samples a counting sort by cell and a walk over the
// cells whose node sums stay in registers. Chunks are double-buffered with cp.async (dy rows
// and raw x), so the copies of chunk c + 1 overlap the sort and walk of chunk c; one barrier
// per chunk.
#include <utility>

#include <c10/cuda/CUDAException.h>

#include "common/cp_async.cuh"
#include "common/warp.cuh"
#include "lmkan1d/device.cuh"

namespace lmkan {
namespace lmkan1d {
namespace {

// The constants of launch shape kGroupedConfigs[kShape].
template <int kShape>
struct Grouped {
  static constexpr GroupedConfig kC = kGroupedConfigs[kShape];
  static constexpr int kWarps = kC.warps, kChunk = kC.chunk;
  static constexpr int kOut = kC.block_out(), kLaneOut = kC.lane_out;
  static constexpr int kCells = kC.max_cells, kGroup = kC.group;
  static constexpr int kDyStride = kC.dy_stride(), kSlots = kC.sorted_slots();
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kPerLane = kChunk / 32;        // samples a lane sorts per chunk
  static constexpr int kDyBuffer = kChunk * kDyStride;  // floats of one dy buffer
  // Raw x of one chunk: batch-last [input][kChunk] (contiguous copies and reads); batch-first
  // [sample][kWarps + 1] (a sample's inputs are contiguous in x; the odd row stride makes a
  // warp's reads of one input down the samples conflict-free).
  static constexpr int kXRow = kWarps + 1;
  static constexpr int kXBuffer = kChunk * kXRow;
  static_assert(kLaneOut == 2 || kLaneOut == 4, "a float2 or float4 of dy per lane");
  static_assert(kCells <= kGcMaxCells, "cells (and cell G, the sort's mark of samples past the "
                "chunk) are lanes of the sort's 32 counters");
  static_assert(kGroup % 2 == 0 && kSlots % 2 == 0, "runs of whole float4 pairs of entries");
  static_assert(kThreads % kChunk == 0 && kThreads % kOut == 0, "copy loops: fixed columns");
  static_assert(kThreads % (kOut / 4) == 0 && kThreads % kWarps == 0 &&
                    kChunk % (kThreads / (kOut / 4)) == 0 && kChunk % (kThreads / kOut) == 0 &&
                    kChunk % (kThreads / kWarps) == 0 && kWarps % (kThreads / kChunk) == 0 &&
                    kOut % (kThreads / kChunk) == 0,
                "copy loops: every thread copies the same number of entries");
  // Inputs whose node sums ([side][kOut] floats each, side <= 32) the dy buffers hold at once
  // at the end.
  static constexpr int kFlushInputs = 2 * kDyBuffer / (32 * kOut) < kWarps
                                          ? 2 * kDyBuffer / (32 * kOut)
                                          : kWarps;
  static_assert(kFlushInputs >= 1 && kWarps % kFlushInputs == 0, "whole flush passes");
};

template <int kShape>
struct GroupedSmem {
  using P = Grouped<kShape>;
  // The walk reads entries two per float4: each warp's array starts 16-byte aligned (so do
  // the arrays before it: dy rows of kDyStride floats, the raw-x buffers).
  static_assert(P::kDyStride % 4 == 0 && (2 * P::kXBuffer) % 4 == 0,
                "16-byte aligned sorted entries");
  float* dy;       // [2][kChunk][kDyStride]; at the end the flush buffer (kFlushInputs)
  float* zero_row;  // [kDyStride] zeros, after the dy buffers: the pads' dy row
  float* xs;       // [2][P::kXBuffer]: the chunk's raw x (layout: P::kXRow)
  float2* sorted;  // [kWarps][kSlots]: (byte offset of the dy row from dy, d), by cell
  int* bins;       // [kWarps][32]: start of each cell's padded run in `sorted`
  float* borders;  // [G+1]

  __device__ explicit GroupedSmem(float* smem) {
    dy = smem;
    zero_row = dy + 2 * P::kDyBuffer;
    xs = zero_row + P::kDyStride;
    sorted = reinterpret_cast<float2*>(xs + 2 * P::kXBuffer);
    bins = reinterpret_cast<int*>(sorted + P::kWarps * P::kSlots);
    borders = reinterpret_cast<float*>(bins + P::kWarps * 32);
  }
};

// Issues (and commits) the copies of samples [c0, c0 + valid) into buffer `buf`: the dy rows
// of this block's outputs and the raw x of its inputs, zeros outside the batch and the layer.
// Each loop gives a thread a fixed column and steps its row (one pointer add per copy).
template <int kShape>
__device__ __forceinline__ void stage_chunk(const GroupedSmem<kShape>& s, const GroupedArgs& a,
                                            int64_t c0, int valid, int o0, int i0, int buf) {
  using P = Grouped<kShape>;
  const int t = threadIdx.x;
  float* dy = s.dy + buf * P::kDyBuffer;
  if (a.vector_dy) {  // batch-first rows as float4 (N_out % 4 == 0: a float4 is in or out)
    constexpr int kQuads = P::kOut / 4, kStep = P::kThreads / kQuads;
    const int q = t % kQuads, sl0 = t / kQuads;
    const bool out_ok = o0 + 4 * q < a.n_out;
    const float* src = a.grad_y + (c0 + sl0) * a.n_out + o0 + 4 * q;
#pragma unroll
    for (int r = 0; r < P::kChunk / kStep; ++r) {
      const int sl = sl0 + r * kStep;
      const bool ok = out_ok && sl < valid;
      cp_async16_or_zero(dy + sl * P::kDyStride + 4 * q, ok ? src : a.grad_y, ok);
      src += kStep * a.n_out;
    }
  } else if (a.batch_last) {  // grad_y [N_out, B]: consecutive threads, consecutive samples
    constexpr int kStep = P::kThreads / P::kChunk;
    const int sl = t % P::kChunk, o_first = t / P::kChunk;
    const float* src = a.grad_y + static_cast<int64_t>(o0 + o_first) * a.batch + c0 + sl;
#pragma unroll 8
    for (int r = 0; r < P::kOut / kStep; ++r) {
      const int o = o_first + r * kStep;
      const bool ok = sl < valid && o0 + o < a.n_out;
      cp_async4_or_zero(dy + sl * P::kDyStride + o, ok ? src : a.grad_y, ok);
      src += kStep * a.batch;
    }
  } else {  // batch-first rows that are not 16-byte aligned or not whole float4s
    constexpr int kStep = P::kThreads / P::kOut;
    const int o = t % P::kOut, sl0 = t / P::kOut;
    const bool out_ok = o0 + o < a.n_out;
    const float* src = a.grad_y + (c0 + sl0) * a.n_out + o0 + o;
#pragma unroll 8
    for (int r = 0; r < P::kChunk / kStep; ++r) {
      const int sl = sl0 + r * kStep;
      const bool ok = out_ok && sl < valid;
      cp_async4_or_zero(dy + sl * P::kDyStride + o, ok ? src : a.grad_y, ok);
      src += kStep * a.n_out;
    }
  }
  float* xs = s.xs + buf * P::kXBuffer;
  if (a.batch_last) {  // x [N_in, B]
    constexpr int kStep = P::kThreads / P::kChunk;
    const int sl = t % P::kChunk, il_first = t / P::kChunk;
    const float* src = a.x + static_cast<int64_t>(i0 + il_first) * a.batch + c0 + sl;
#pragma unroll
    for (int r = 0; r < P::kWarps / kStep; ++r) {
      const int il = il_first + r * kStep;
      const bool ok = sl < valid && i0 + il < a.n_in;
      cp_async4_or_zero(xs + il * P::kChunk + sl, ok ? src : a.x, ok);
      src += kStep * a.batch;
    }
  } else {  // x [B, N_in]: consecutive threads, consecutive inputs of a sample
    constexpr int kStep = P::kThreads / P::kWarps;
    const int il = t % P::kWarps, sl0 = t / P::kWarps;
    const bool in_ok = i0 + il < a.n_in;
    const float* src = a.x + (c0 + sl0) * a.n_in + i0 + il;
#pragma unroll
    for (int r = 0; r < P::kChunk / kStep; ++r) {
      const int sl = sl0 + r * kStep;
      const bool ok = in_ok && sl < valid;
      cp_async4_or_zero(xs + sl * P::kXRow + il, ok ? src : a.x, ok);
      src += kStep * a.n_in;
    }
  }
  cp_async_commit();
}

// Counting sort of this warp's input over one chunk, by one warp: sorted[] gets (byte offset of
// the sample's dy row, d) in cell order, the samples of a cell in sample order, each cell's run
// padded to a multiple of kGroup with (zero row, 0) entries, and bins[k] the start of cell k's
// run (bins[G]: the end of the last). x_warp: the input's raw x in the chunk buffer, sample sl
// at x_warp[sl * x_step]. Samples at or past `valid` take cell G (no slot, not walked).
template <int kPerLane, int kGroup, int kDyStride>
__device__ __forceinline__ void sort_chunk_by_cell(const float* x_warp, int x_step, int valid,
                                                   int dy_row0, int zero_row,
                                                   const float* borders_s, int num_grids,
                                                   bool uniform, float2* sorted, int* bins,
                                                   int lane) {
  bins[lane] = 0;
  __syncwarp();
  const unsigned lower_lanes = (1u << lane) - 1u;
  int cell[kPerLane], rank[kPerLane];
  float dd[kPerLane];
  const float scale = uniform ? uniform_scale(borders_s, num_grids) : 0.f;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int sl = lane + 32 * r;
    cell[r] = num_grids;
    dd[r] = 0.f;
    if (sl < valid) {
      const float v = x_warp[sl * x_step];
      const Cell c = find_cell(v, borders_s, num_grids, uniform, scale);
      cell[r] = c.index;
      dd[r] = gradient_d(v, c.d);
    }
  }
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const unsigned peers = warp_match_key32(cell[r]);  // cells < 32
    const int before = bins[cell[r]];
    rank[r] = before + __popc(peers & lower_lanes);
    __syncwarp();  // every lane has read its count before the lowest peer raises it
    if ((peers & lower_lanes) == 0) bins[cell[r]] = before + __popc(peers);
    __syncwarp();
  }
  // Exclusive scan of the 32 padded counts: bins[k] = start of cell k's run; lane k writes
  // its cell's pads after the cell's samples.
  const int count = bins[lane];
  const int padded = lane < num_grids ? (count + kGroup - 1) / kGroup * kGroup : 0;
  const int start = warp_inclusive_scan(padded, lane) - padded;
  bins[lane] = start;
#pragma unroll
  for (int p = 0; p < kGroup - 1; ++p)
    if (count + p < padded) sorted[start + count + p] = make_float2(__int_as_float(zero_row), 0.f);
  __syncwarp();
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    if (cell[r] < num_grids) {
      const int row = dy_row0 + (lane + 32 * r) * kDyStride * static_cast<int>(sizeof(float));
      sorted[bins[cell[r]] + rank[r]] = make_float2(__int_as_float(row), dd[r]);
    }
  }
  __syncwarp();
}

// A lane's kLaneOut floats of a dy row at a 32-bit shared address (one 8- or 16-byte load).
template <int kLaneOut>
__device__ __forceinline__ void load_lane_dy(unsigned addr, float (&g)[kLaneOut]) {
  if constexpr (kLaneOut == 4) {
    const float4 v = lds128(addr);
    g[0] = v.x; g[1] = v.y; g[2] = v.z; g[3] = v.w;
  } else {
    const float2 v = lds64(addr);
    g[0] = v.x; g[1] = v.y;
  }
}

// Adds one sorted chunk of this warp's input into the node sums (a lane's outputs kLaneOut
// lane .. + kLaneOut - 1). Per run of cell k: sg = sum of g, sgd = sum of g d; node k gets sg -
// sgd (the weight 1 - d), node k + 1 gets sgd. Runs are whole groups of kGroup entries (pads
// add zeros), read two entries per float4 (runs start at multiples of kGroup entries of
// 16-byte aligned arrays). dy_lane: the shared-memory address of this lane's floats in dy row
// 0.
template <int kCells, int kLaneOut, int kGroup>
__device__ __forceinline__ void walk_cells(float (&acc)[kCells + 1][kLaneOut],
                                           const float2* sorted, const int* bins,
                                           unsigned dy_lane, int num_grids) {
#pragma unroll
  for (int k = 0; k < kCells; ++k) {
    if (k >= num_grids) break;
    const float4* entry = reinterpret_cast<const float4*>(sorted + bins[k]);
    const float4* const run_end = reinterpret_cast<const float4*>(sorted + bins[k + 1]);
    float sg[kLaneOut] = {}, sgd[kLaneOut] = {};
#pragma unroll 1
    for (; entry != run_end; entry += kGroup / 2) {
      float4 pair[kGroup / 2];  // (row, d) of entries 2 p and 2 p + 1
      float g[kGroup][kLaneOut];
      float d[kGroup];
#pragma unroll
      for (int p = 0; p < kGroup / 2; ++p) {
        pair[p] = entry[p];
        d[2 * p] = pair[p].y;
        d[2 * p + 1] = pair[p].w;
      }
#pragma unroll
      for (int p = 0; p < kGroup / 2; ++p) {
        load_lane_dy(dy_lane + __float_as_uint(pair[p].x), g[2 * p]);
        load_lane_dy(dy_lane + __float_as_uint(pair[p].z), g[2 * p + 1]);
      }
#pragma unroll
      for (int q = 0; q < kGroup; ++q) {
#pragma unroll
        for (int c = 0; c < kLaneOut; ++c) {
          sg[c] += g[q][c];
          sgd[c] = fmaf(g[q][c], d[q], sgd[c]);
        }
      }
    }
#pragma unroll
    for (int c = 0; c < kLaneOut; ++c) {
      acc[k][c] += sg[c] - sgd[c];
      acc[k + 1][c] += sgd[c];
    }
  }
}

// Grid: (ceil(N_out / kOut), ceil(N_in / kWarps), slices); block z handles samples
// [z * slice_len, (z+1) * slice_len). kWarps x 32 threads, grouped_smem_bytes.
template <int kShape>
__global__ void __launch_bounds__(Grouped<kShape>::kThreads, 512 / Grouped<kShape>::kThreads)
lmkan1d_backward_dc_grouped_kernel(const GroupedArgs a) {
  using P = Grouped<kShape>;
  extern __shared__ __align__(16) float smem[];
  const GroupedSmem<kShape> s(smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int o0 = blockIdx.x * P::kOut;
  const int i0 = blockIdx.y * P::kWarps;
  const int64_t begin = static_cast<int64_t>(blockIdx.z) * a.slice_len;
  const int64_t end = (begin + a.slice_len < a.batch) ? begin + a.slice_len : a.batch;
  const int side = a.num_grids + 1;
  const bool warp_has_input = i0 + warp < a.n_in;
  load_borders(s.borders, a.borders, side);

  float acc[P::kCells + 1][P::kLaneOut];
#pragma unroll
  for (int k = 0; k <= P::kCells; ++k)
#pragma unroll
    for (int c = 0; c < P::kLaneOut; ++c) acc[k][c] = 0.f;
  float2* sorted = s.sorted + warp * P::kSlots;
  for (int j = threadIdx.x; j < P::kDyStride; j += P::kThreads) s.zero_row[j] = 0.f;
  int* bins = s.bins + warp * 32;
  const unsigned dy_lane =
      smem_u32(s.dy) + lane * P::kLaneOut * static_cast<unsigned>(sizeof(float));
  // This warp's input in a raw-x buffer: sample sl at [sl * x_step].
  const int x_first = a.batch_last ? warp * P::kChunk : warp;
  const int x_step = a.batch_last ? 1 : P::kXRow;

  const int64_t chunks = end > begin ? (end - begin + P::kChunk - 1) / P::kChunk : 0;
  auto valid_at = [&](int64_t c0) {
    return static_cast<int>(end - c0 < P::kChunk ? end - c0 : P::kChunk);
  };
  if (chunks > 0) stage_chunk(s, a, begin, valid_at(begin), o0, i0, 0);
  for (int64_t c = 0; c < chunks; ++c) {
    const int buf = static_cast<int>(c & 1);
    const int64_t c0 = begin + c * P::kChunk;
    cp_async_wait<0>();
    // Chunk c has landed for every thread (the borders and zero row are stored); every warp
    // is done with chunk c - 1, so its buffer takes chunk c + 1 while this one is sorted and
    // walked.
    __syncthreads();
    if (c + 1 < chunks)
      stage_chunk(s, a, c0 + P::kChunk, valid_at(c0 + P::kChunk), o0, i0, buf ^ 1);
    if (warp_has_input) {
      sort_chunk_by_cell<P::kPerLane, P::kGroup, P::kDyStride>(
          s.xs + buf * P::kXBuffer + x_first, x_step, valid_at(c0),
          buf * P::kDyBuffer * static_cast<int>(sizeof(float)),
          2 * P::kDyBuffer * static_cast<int>(sizeof(float)), s.borders, a.num_grids, a.uniform,
          sorted, bins, lane);
      walk_cells<P::kCells, P::kLaneOut, P::kGroup>(acc, sorted, bins, dy_lane, a.num_grids);
    }
  }
  // The dy buffers become the flush buffer [kFlushInputs][G+1][kOut]: kWarps / kFlushInputs
  // passes, each storing its warps' node sums; consecutive threads take consecutive inputs of
  // one (node, output) row.
  const int64_t plane = static_cast<int64_t>(side) * a.n_out * a.n_in;
  float* dst = a.accumulate ? a.out : a.out + blockIdx.z * plane;
  for (int w0 = 0; w0 < P::kWarps; w0 += P::kFlushInputs) {
    __syncthreads();  // the walks (first pass) or the previous pass's readers are done
    if (warp >= w0 && warp < w0 + P::kFlushInputs) {
      float* rows = s.dy + (warp - w0) * side * P::kOut + lane * P::kLaneOut;
#pragma unroll
      for (int k = 0; k <= P::kCells; ++k) {
        if (k > a.num_grids) break;
#pragma unroll
        for (int c = 0; c < P::kLaneOut; ++c) rows[k * P::kOut + c] = acc[k][c];
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < P::kFlushInputs * side * P::kOut; e += P::kThreads) {
      const int il = e % P::kFlushInputs;
      const int o = (e / P::kFlushInputs) % P::kOut;
      const int k = e / (P::kFlushInputs * P::kOut);
      const int i = i0 + w0 + il, oo = o0 + o;
      if (i < a.n_in && oo < a.n_out) {
        const int64_t off = (static_cast<int64_t>(k) * a.n_out + oo) * a.n_in + i;
        const float v = s.dy[(il * side + k) * P::kOut + o];
        if (a.accumulate) atomicAdd(dst + off, v);
        else              dst[off] = v;
      }
    }
  }
}

// The kernel of launch shape `shape` (an index of kGroupedConfigs), nullptr if none.
template <int... kShapes>
const void* kernel_of_shape(int shape, std::integer_sequence<int, kShapes...>) {
  const void* kernel = nullptr;
  ((shape == kShapes
        ? (kernel = reinterpret_cast<const void*>(lmkan1d_backward_dc_grouped_kernel<kShapes>))
        : nullptr),
   ...);
  return kernel;
}

const void* grouped_kernel(int shape) {
  const void* kernel =
      kernel_of_shape(shape, std::make_integer_sequence<int, kGroupedShapes>{});
  TORCH_CHECK(kernel != nullptr, "lmkan1d: no grouped dC launch shape ", shape, " (0 to ",
              kGroupedShapes - 1, ")");
  return kernel;
}

}  // namespace

int grouped_dc_blocks_per_sm(int shape, size_t smem) {
  const void* kernel = grouped_kernel(shape);
  allow_dynamic_smem(kernel, smem);
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, kGroupedConfigs[shape].warps * 32, smem));
  return per_sm;
}

void launch_grouped_dc(const GroupedArgs& a, int shape, dim3 grid, size_t smem,
                       cudaStream_t stream) {
  const void* kernel = grouped_kernel(shape);
  allow_dynamic_smem(kernel, smem);
  void* args[] = {const_cast<GroupedArgs*>(&a)};
  C10_CUDA_CHECK(cudaLaunchKernel(kernel, grid, dim3(kGroupedConfigs[shape].warps * 32), args,
                                  smem, stream));
}

}  // namespace lmkan1d
}  // namespace lmkan
