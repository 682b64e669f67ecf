// The 1D layer's parameter-gradient (dC) kernels (layout.h has the scheme): a shared-memory
// accumulator for any G and the fixed-order sum of the deterministic per-slice workspaces.
// The cell-grouped kernel for G <= 31 is in grad_params_grouped.cu.
#include <c10/cuda/CUDAException.h>

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
  return uniform ? uniform_scale(borders_s, num_grids) : 1.f / (borders_s[k + 1] - borders_s[k]);
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

void launch_sum_slices(const float* ws, float* out, int64_t plane, int slices,
                       cudaStream_t stream) {
  const int threads = 256;
  lmkan1d_sum_slices_kernel<<<static_cast<unsigned>((plane + threads - 1) / threads), threads, 0,
                              stream>>>(ws, out, plane, slices);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan1d
}  // namespace lmkan
