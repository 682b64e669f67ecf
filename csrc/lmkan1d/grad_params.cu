// The 1D layer's parameter-gradient (dC) kernels (layout.h has the scheme): a shared-memory
// accumulator for any G, the cell-grouped kernel for G <= 31, and the fixed-order sum of the
// deterministic per-slice workspaces.
#include <c10/cuda/CUDAException.h>

#include "common/warp.cuh"
#include "lmkan1d/device.cuh"

namespace lmkan {
namespace lmkan1d {
namespace {

// ==========================================================================================
// Backward, dC
// ==========================================================================================
// One sample's update of this lane's columns of two inputs' accumulators: (row offset, d)
// of each input's cell, g = dy[s, o]. All four loads come before any store, so the two
// read-modify-write chains overlap their shared-memory latency. The node weights are
// (1 - d, d); with kSlopes d holds c = w / h_k and they are (-c, c) (second derivatives:
// the parameters' part of d grad_x, for upstream weights w).
template <bool kSlopes>
__device__ __forceinline__ void accumulate_two_inputs(float* acc_a, float* acc_b, float row_a,
                                                      float d_a, float row_b, float d_b, float g) {
  float* pa = acc_a + __float_as_int(row_a);
  float* pb = acc_b + __float_as_int(row_b);
  const float lo_a = pa[0], hi_a = pa[32], lo_b = pb[0], hi_b = pb[32];
  pa[0] = fmaf(g, kSlopes ? -d_a : 1.f - d_a, lo_a);
  pa[32] = fmaf(g, d_a, hi_a);
  pb[0] = fmaf(g, kSlopes ? -d_b : 1.f - d_b, lo_b);
  pb[32] = fmaf(g, d_b, hi_b);
}

// 1 / h_k: the width of cell k.
__device__ __forceinline__ float inverse_width(const float* borders_s, int num_grids, bool uniform,
                                               int k) {
  return uniform ? num_grids / (borders_s[num_grids] - borders_s[0])
                 : 1.f / (borders_s[k + 1] - borders_s[k]);
}

// out: accumulate ? grad_params [G+1, N_out, N_in], zero on entry, atomically added to
//                 : a workspace [slices][G+1][N_out][N_in] (slice z = blockIdx.z), stored.
// Grid: (ceil(N_out / 32), ceil(N_in / 16), slices); block b.z handles samples
// [z * slice_len, (z+1) * slice_len).
// kSlopes: weights (like x) given; the node weights are (-w/h_k, w/h_k) (accumulate_two_inputs).
template <bool kSlopes = false>
__global__ void __launch_bounds__(kDcThreads)
lmkan1d_backward_dc_kernel(const float* __restrict__ grad_y, const float* __restrict__ x,
                           const float* __restrict__ borders, float* __restrict__ out,
                           int64_t batch, int n_in, int n_out, int num_grids, bool uniform,
                           bool batch_last, int64_t slice_len, bool accumulate,
                           const float* __restrict__ weights = nullptr) {
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
        if (kSlopes) {
          const float w = batch_last ? weights[static_cast<int64_t>(i) * batch + s]
                                     : weights[s * n_in + i];
          d = w * inverse_width(borders_s, num_grids, uniform, k);
        } else {
          d = gradient_d(v, c.d);
        }
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
      accumulate_two_inputs<kSlopes>(acc_a, acc_b, ca.x, ca.y, cb.x, cb.y, g0);
      accumulate_two_inputs<kSlopes>(acc_a, acc_b, ca.z, ca.w, cb.z, cb.w, g1);
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

// ==========================================================================================
// Backward, dC grouped by cell (G <= 31): the scheme is in layout.h beside its constants.
// ==========================================================================================
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
      d = gradient_d(v, c.d);
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
  const int inclusive = warp_inclusive_scan(count, lane);
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

}  // namespace

void launch_shared_dc(dim3 grid, size_t smem, cudaStream_t stream, const float* grad_y,
                      const float* x, const float* borders, float* out, int64_t batch, int n_in,
                      int n_out, int num_grids, bool uniform, bool batch_last, int64_t slice_len,
                      bool accumulate, const float* weights) {
  if (weights == nullptr) {
    allow_dynamic_smem(reinterpret_cast<const void*>(lmkan1d_backward_dc_kernel<false>), smem);
    lmkan1d_backward_dc_kernel<false><<<grid, kDcThreads, smem, stream>>>(
        grad_y, x, borders, out, batch, n_in, n_out, num_grids, uniform, batch_last, slice_len,
        accumulate);
  } else {
    allow_dynamic_smem(reinterpret_cast<const void*>(lmkan1d_backward_dc_kernel<true>), smem);
    lmkan1d_backward_dc_kernel<true><<<grid, kDcThreads, smem, stream>>>(
        grad_y, x, borders, out, batch, n_in, n_out, num_grids, uniform, batch_last, slice_len,
        accumulate, weights);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int grouped_dc_blocks_per_sm(size_t smem) {
  const void* kernel = reinterpret_cast<const void*>(lmkan1d_backward_dc_grouped_kernel);
  allow_dynamic_smem(kernel, smem);
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kGcThreads, smem));
  return per_sm;
}

void launch_grouped_dc(const GroupedArgs& a, dim3 grid, size_t smem, cudaStream_t stream) {
  lmkan1d_backward_dc_grouped_kernel<<<grid, kGcThreads, smem, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_sum_slices(const float* ws, float* out, int64_t plane, int slices,
                       cudaStream_t stream) {
  const int threads = 256;
  lmkan1d_sum_slices_kernel<<<static_cast<unsigned>((plane + threads - 1) / threads), threads, 0,
                              stream>>>(ws, out, plane, slices);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan1d
}  // namespace lmkan
