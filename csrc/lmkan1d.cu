// CUDA kernels of the 1D linear-spline layer (SPEC.md section 4):
//   y[o] = sum_i (1 - d) C[k, o, i] + d C[k+1, o, i],   (k, d) = cell of x[i].
//
// Forward: a block owns 32 outputs x 512 samples; per stage of 4 inputs it stages the
//   table slice C[0..G, o-tile, i-stage] and the stage's cells in shared memory; every
//   thread keeps 4 outputs x 16 samples in registers (no atomics, each y written once).
//   A quarter-warp reads one 128-byte table row per LDS.128: conflict-free.
// dx: lanes own 32 inputs, warps own samples; a table of slopes
//   D[k, o, i] = (C[k+1, o, i] - C[k, o, i]) / h_k (built by a small prep kernel) is staged
//   per tile of 8 outputs; dx needs one table read per (sample, output, input).
// dC: a warp owns one input and 32 outputs (lanes); for a chunk of samples it reads each
//   sample's cell (broadcast) and dy[s, o] and updates its own columns of a shared-memory
//   accumulator (thread-exclusive: no shared atomics); one global atomicAdd per
//   (node, output, input) per block at the end.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include "checks.h"
#include "grid.cuh"

namespace lmkan {
namespace {

constexpr int kThreads = 256;

// ---- forward configuration --------------------------------------------------------------
constexpr int kFwdOut = 32;          // outputs per block (8 lanes x float4)
constexpr int kFwdSamplesPerThread = 16;
constexpr int kFwdSamples = kFwdSamplesPerThread * 32;  // 512 samples per block
constexpr int kFwdInputs = 8;        // inputs per shared-memory stage

// ---- dx configuration --------------------------------------------------------------------
constexpr int kDxOut = 8;            // outputs per stage
constexpr int kDxThreads = 512;
constexpr int kDxWarps = kDxThreads / 32;
constexpr int kDxSamplesPerThread = 16;
constexpr int kDxSamples = kDxSamplesPerThread * kDxWarps;  // 256

// ---- dC configuration --------------------------------------------------------------------
constexpr int kDcInputs = kThreads / 32;  // one input per warp
constexpr int kDcChunk = 64;              // samples per staged chunk

struct GridParams {
  const float* borders;  // [G+1]
  int num_grids;
  bool uniform;
};

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
// Forward
// ==========================================================================================
// x: [N_in, B] (batch_last) or [B, N_in]; params: [G+1, N_out, N_in]; borders: [G+1];
// y: [N_out, B] (batch_last) or [B, N_out].
// Grid: (ceil(B / 512), ceil(N_out / 32)). Dynamic shared memory: see fwd_smem_bytes.
__global__ void __launch_bounds__(kThreads, 2)
lmkan1d_forward_kernel(const float* __restrict__ x, const float* __restrict__ params,
                       const float* __restrict__ borders, float* __restrict__ y,
                       int64_t batch, int n_in, int n_out, int num_grids, bool uniform,
                       bool batch_last) {
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1;
  float* table_s = smem;                                   // [kFwdInputs][G+1][32]
  float2* cell_s = reinterpret_cast<float2*>(table_s + kFwdInputs * side * kFwdOut);  // [kFwdInputs][512]
  float* borders_s = reinterpret_cast<float*>(cell_s + kFwdInputs * kFwdSamples);      // [G+1]

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int quad = lane & 7;   // outputs 4*quad .. 4*quad+3 of the tile
  const int group = lane >> 3; // sample group inside the warp
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kFwdSamples;
  const int o0 = blockIdx.y * kFwdOut;

  load_borders(borders_s, borders, side);

  float acc[kFwdSamplesPerThread][4];
#pragma unroll
  for (int m = 0; m < kFwdSamplesPerThread; ++m)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[m][c] = 0.f;

  for (int i0 = 0; i0 < n_in; i0 += kFwdInputs) {
    __syncthreads();  // previous stage fully consumed (and borders_s visible)
    // Stage the table: table_s[il][k][o] = params[k, o0 + o, i0 + il] (zero outside).
    const int table_elems = kFwdInputs * side * kFwdOut;
    for (int e = tid; e < table_elems; e += kThreads) {
      const int il = e % kFwdInputs;
      const int o = (e / kFwdInputs) % kFwdOut;
      const int k = e / (kFwdInputs * kFwdOut);
      const int i = i0 + il, oo = o0 + o;
      float v = 0.f;
      if (i < n_in && oo < n_out) v = params[(static_cast<int64_t>(k) * n_out + oo) * n_in + i];
      table_s[(il * side + k) * kFwdOut + o] = v;
    }
    // Stage the cells: (float offset of row k of input il in table_s, d).
    for (int e = tid; e < kFwdInputs * kFwdSamples; e += kThreads) {
      int il, sl;
      if (batch_last) { sl = e % kFwdSamples; il = e / kFwdSamples; }
      else            { il = e % kFwdInputs;  sl = e / kFwdInputs; }
      const int i = i0 + il;
      const int64_t s = s0 + sl;
      int k = 0;
      float d = 0.f;
      if (i < n_in && s < batch) {
        const float v = batch_last ? x[static_cast<int64_t>(i) * batch + s]
                                   : x[s * n_in + i];
        const Cell c = find_cell(v, borders_s, num_grids, uniform);
        k = c.index;
        d = c.d;
      }
      cell_s[il * kFwdSamples + sl] = make_float2(__int_as_float((il * side + k) * kFwdOut), d);
    }
    __syncthreads();

    const float4* table4 = reinterpret_cast<const float4*>(table_s);
#pragma unroll 1
    for (int il = 0; il < kFwdInputs; ++il) {
#pragma unroll
      for (int m = 0; m < kFwdSamplesPerThread; ++m) {
        const float2 c = cell_s[il * kFwdSamples + m * 32 + warp * 4 + group];
        const int row = __float_as_int(c.x) >> 2;  // float4 index of row k
        const float4 t0 = table4[row + quad];
        const float4 t1 = table4[row + (kFwdOut / 4) + quad];
        const float w1 = c.y, w0 = 1.f - c.y;
        acc[m][0] = fmaf(w0, t0.x, fmaf(w1, t1.x, acc[m][0]));
        acc[m][1] = fmaf(w0, t0.y, fmaf(w1, t1.y, acc[m][1]));
        acc[m][2] = fmaf(w0, t0.z, fmaf(w1, t1.z, acc[m][2]));
        acc[m][3] = fmaf(w0, t0.w, fmaf(w1, t1.w, acc[m][3]));
      }
    }
  }

#pragma unroll
  for (int m = 0; m < kFwdSamplesPerThread; ++m) {
    const int64_t s = s0 + m * 32 + warp * 4 + group;
    if (s >= batch) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int o = o0 + quad * 4 + c;
      if (o < n_out) {
        if (batch_last) y[static_cast<int64_t>(o) * batch + s] = acc[m][c];
        else            y[s * n_out + o] = acc[m][c];
      }
    }
  }
}

size_t fwd_smem_bytes(int num_grids) {
  const int side = num_grids + 1;
  return sizeof(float) * (kFwdInputs * side * kFwdOut) + sizeof(float2) * kFwdInputs * kFwdSamples +
         sizeof(float) * (side + 3);
}

// ==========================================================================================
// Backward, dx
// ==========================================================================================
// Prep: slopes[t][o][k][l] = (params[k+1, o, 32t+l] - params[k, o, 32t+l]) / h_k, zero for
// inputs past N_in and outputs past N_out. slopes: [ceil(N_in/32), roundup(N_out, 8), G, 32]; params: [G+1, N_out, N_in].
__global__ void lmkan1d_slopes_kernel(const float* __restrict__ params,
                                      const float* __restrict__ borders,
                                      float* __restrict__ slopes, int n_in, int n_out,
                                      int n_out_pad, int num_grids, bool uniform, int64_t total) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int l = static_cast<int>(e % 32);
  const int k = static_cast<int>((e / 32) % num_grids);
  const int64_t rest = e / (32 * num_grids);
  const int o = static_cast<int>(rest % n_out_pad);
  const int t = static_cast<int>(rest / n_out_pad);
  const int i = t * 32 + l;
  float v = 0.f;
  if (i < n_in && o < n_out) {
    const float inv_h = uniform ? num_grids / (borders[num_grids] - borders[0])
                                : 1.f / (borders[k + 1] - borders[k]);
    const float c0 = params[(static_cast<int64_t>(k) * n_out + o) * n_in + i];
    const float c1 = params[(static_cast<int64_t>(k + 1) * n_out + o) * n_in + i];
    v = (c1 - c0) * inv_h;
  }
  slopes[e] = v;
}

// grad_y: like y; x: like the forward's x; slopes: as above; grad_x: like x.
// Grid: (ceil(B / 256), ceil(N_in / 32)).
__global__ void __launch_bounds__(kDxThreads, 1)
lmkan1d_backward_dx_kernel(const float* __restrict__ grad_y, const float* __restrict__ x,
                           const float* __restrict__ slopes, const float* __restrict__ borders,
                           float* __restrict__ grad_x, int64_t batch, int n_in, int n_out,
                           int num_grids, bool uniform, bool batch_last) {
  extern __shared__ __align__(16) float smem[];
  float* slope_s = smem;                          // [kDxOut][G][32]
  float* dy_s = slope_s + kDxOut * num_grids * 32;  // [256][kDxOut]
  float* borders_s = dy_s + kDxSamples * kDxOut;    // [G+1]
  // The output stride of slope_s, re-read from shared memory every tile so that the
  // compiler does not hoist 8 x 16 addresses out of the tile loop (that spills).
  __shared__ int stride_s;
  if (threadIdx.x == 0) stride_s = num_grids * 32;

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kDxSamples;
  const int tile = blockIdx.y;
  const int i = tile * 32 + lane;

  load_borders(borders_s, borders, num_grids + 1);
  __syncthreads();

  // This thread's samples s0 + warp + 16m for input i: row offsets k*32 + lane.
  int koff[kDxSamplesPerThread];
  float acc[kDxSamplesPerThread];
#pragma unroll
  for (int m = 0; m < kDxSamplesPerThread; ++m) {
    const int64_t s = s0 + warp + kDxWarps * m;
    int k = 0;
    if (i < n_in && s < batch) {
      const float v = batch_last ? x[static_cast<int64_t>(i) * batch + s] : x[s * n_in + i];
      k = find_cell(v, borders_s, num_grids, uniform).index;
    }
    koff[m] = k * 32 + lane;
    acc[m] = 0.f;
  }

  const float4* slopes4 = reinterpret_cast<const float4*>(
      slopes + static_cast<int64_t>(tile) * ((n_out + kDxOut - 1) / kDxOut * kDxOut) * num_grids * 32);
  for (int o0 = 0; o0 < n_out; o0 += kDxOut) {
    __syncthreads();
    // Slopes of outputs o0 .. o0+7 (zero past N_out): one contiguous block of 8 * G * 32 floats.
    const int n4 = kDxOut * num_grids * 8;
    float4* slope4_s = reinterpret_cast<float4*>(slope_s);
    for (int e = tid; e < n4; e += kDxThreads)
      slope4_s[e] = slopes4[static_cast<int64_t>(o0) * num_grids * 8 + e];
    for (int e = tid; e < kDxSamples * kDxOut; e += kDxThreads) {
      int sl, o;
      if (batch_last) { sl = e % kDxSamples; o = e / kDxSamples; }
      else            { o = e % kDxOut;      sl = e / kDxOut; }
      const int64_t s = s0 + sl;
      float g = 0.f;
      if (s < batch && o0 + o < n_out)
        g = batch_last ? grad_y[static_cast<int64_t>(o0 + o) * batch + s]
                       : grad_y[s * n_out + o0 + o];
      dy_s[sl * kDxOut + o] = g;
    }
    __syncthreads();

    const int stride_o = stride_s;
#pragma unroll
    for (int m = 0; m < kDxSamplesPerThread; ++m) {
      const float4* g4 = reinterpret_cast<const float4*>(dy_s + (warp + kDxWarps * m) * kDxOut);
      const float4 ga = g4[0], gb = g4[1];
      const float* base = slope_s + koff[m];
      float a = acc[m];
      a = fmaf(ga.x, base[0 * stride_o], a);
      a = fmaf(ga.y, base[1 * stride_o], a);
      a = fmaf(ga.z, base[2 * stride_o], a);
      a = fmaf(ga.w, base[3 * stride_o], a);
      a = fmaf(gb.x, base[4 * stride_o], a);
      a = fmaf(gb.y, base[5 * stride_o], a);
      a = fmaf(gb.z, base[6 * stride_o], a);
      a = fmaf(gb.w, base[7 * stride_o], a);
      acc[m] = a;
    }
  }

  if (i >= n_in) return;
#pragma unroll
  for (int m = 0; m < kDxSamplesPerThread; ++m) {
    const int64_t s = s0 + warp + kDxWarps * m;
    if (s < batch) {
      if (batch_last) grad_x[static_cast<int64_t>(i) * batch + s] = acc[m];
      else            grad_x[s * n_in + i] = acc[m];
    }
  }
}

size_t dx_smem_bytes(int num_grids) {
  return sizeof(float) * (kDxOut * num_grids * 32 + kDxSamples * kDxOut + num_grids + 1);
}

// ==========================================================================================
// Backward, dC
// ==========================================================================================
// grad_params: [G+1, N_out, N_in], zero on entry (atomically accumulated).
// Grid: (ceil(N_out / 32), ceil(N_in / 8), slices); block b.z handles samples
// [z * slice_len, (z+1) * slice_len).
__global__ void __launch_bounds__(kThreads)
lmkan1d_backward_dc_kernel(const float* __restrict__ grad_y, const float* __restrict__ x,
                           const float* __restrict__ borders, float* __restrict__ grad_params,
                           int64_t batch, int n_in, int n_out, int num_grids, bool uniform,
                           bool batch_last, int64_t slice_len) {
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1;
  float* acc_s = smem;                              // [8 inputs][G+1][32 outputs]
  float* dy_s = acc_s + kDcInputs * side * 32;      // [kDcChunk][32]
  float2* cell_s = reinterpret_cast<float2*>(dy_s + kDcChunk * 32);  // [8][kDcChunk]
  float* borders_s = reinterpret_cast<float*>(cell_s + kDcInputs * kDcChunk);  // [G+1]

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int o0 = blockIdx.x * 32;
  const int i0 = blockIdx.y * kDcInputs;
  const int64_t begin = static_cast<int64_t>(blockIdx.z) * slice_len;
  const int64_t end = (begin + slice_len < batch) ? begin + slice_len : batch;

  load_borders(borders_s, borders, side);
  for (int e = tid; e < kDcInputs * side * 32; e += kThreads) acc_s[e] = 0.f;
  float* my_acc = acc_s + warp * side * 32 + lane;  // this thread's column: [k * 32]

  for (int64_t c0 = begin; c0 < end; c0 += kDcChunk) {
    __syncthreads();
    for (int e = tid; e < kDcChunk * 32; e += kThreads) {
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
    for (int e = tid; e < kDcChunk * kDcInputs; e += kThreads) {
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

    const int64_t rem = end - c0;
    const int n = rem < kDcChunk ? static_cast<int>(rem) : kDcChunk;
    const float2* my_cells = cell_s + warp * kDcChunk;
#pragma unroll 4
    for (int sl = 0; sl < n; ++sl) {
      const float2 c = my_cells[sl];
      const float g = dy_s[sl * 32 + lane];
      float* p = my_acc + __float_as_int(c.x);
      const float lo = p[0], hi = p[32];
      p[0] = fmaf(g, 1.f - c.y, lo);
      p[32] = fmaf(g, c.y, hi);
    }
  }
  __syncthreads();

  // Flush: consecutive threads take consecutive inputs of one (node, output) row.
  for (int e = tid; e < kDcInputs * side * 32; e += kThreads) {
    const int il = e % kDcInputs;
    const int o = (e / kDcInputs) % 32;
    const int k = e / (kDcInputs * 32);
    const int i = i0 + il, oo = o0 + o;
    if (i < n_in && oo < n_out)
      atomicAdd(grad_params + (static_cast<int64_t>(k) * n_out + oo) * n_in + i,
                acc_s[(il * side + k) * 32 + o]);
  }
}

size_t dc_smem_bytes(int num_grids) {
  return sizeof(float) * (kDcInputs * (num_grids + 1) * 32 + kDcChunk * 32) +
         sizeof(float2) * kDcInputs * kDcChunk + sizeof(float) * (num_grids + 2);
}

// ==========================================================================================
// Host side
// ==========================================================================================
int max_dynamic_smem(int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return value;
}

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

at::Tensor lmkan1d_forward_cuda(const at::Tensor& x_in, const at::Tensor& params_in,
                                const at::Tensor& borders_in, bool uniform_grid, bool batch_last) {
  const Shapes sh = check_args(x_in, params_in, borders_in, batch_last);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();            // [N_in, B] or [B, N_in]
  const at::Tensor params = params_in.contiguous();  // [G+1, N_out, N_in]
  const at::Tensor borders = borders_in.contiguous();  // [G+1]
  at::Tensor y = batch_last ? at::empty({sh.n_out, sh.batch}, x.options())
                            : at::empty({sh.batch, sh.n_out}, x.options());
  if (sh.batch == 0 || sh.n_out == 0) return y;
  const size_t smem = fwd_smem_bytes(sh.num_grids);
  check_smem(smem, x.get_device(), "forward", sh.num_grids);
  set_smem(reinterpret_cast<const void*>(lmkan1d_forward_kernel), smem);
  const int64_t blocks_b = (sh.batch + kFwdSamples - 1) / kFwdSamples;
  TORCH_CHECK_VALUE(blocks_b < (int64_t{1} << 31), "batch ", sh.batch, " is too large");
  const dim3 grid(static_cast<unsigned>(blocks_b), (sh.n_out + kFwdOut - 1) / kFwdOut);
  lmkan1d_forward_kernel<<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), params.data_ptr<float>(), borders.data_ptr<float>(), y.data_ptr<float>(),
      sh.batch, sh.n_in, sh.n_out, sh.num_grids, uniform_grid, batch_last);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::tuple<at::Tensor, at::Tensor> lmkan1d_backward_cuda(const at::Tensor& grad_y_in,
                                                         const at::Tensor& x_in,
                                                         const at::Tensor& params_in,
                                                         const at::Tensor& borders_in,
                                                         bool uniform_grid, bool batch_last) {
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
  at::Tensor grad_params = at::zeros_like(params);
  if (sh.batch == 0 || sh.n_in == 0) return {grad_x, grad_params};
  if (sh.n_out == 0) { grad_x.zero_(); return {grad_x, grad_params}; }
  const int device = x.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // dx: slope table, then the dx kernel.
  {
    const int tiles = (sh.n_in + 31) / 32;
    const int n_out_pad = (sh.n_out + kDxOut - 1) / kDxOut * kDxOut;
    at::Tensor slopes = at::empty({tiles, n_out_pad, sh.num_grids, 32}, x.options());
    const int64_t total = slopes.numel();
    const int threads = 256;
    lmkan1d_slopes_kernel<<<static_cast<unsigned>((total + threads - 1) / threads), threads, 0,
                            stream>>>(params.data_ptr<float>(), borders.data_ptr<float>(),
                                      slopes.data_ptr<float>(), sh.n_in, sh.n_out, n_out_pad,
                                      sh.num_grids, uniform_grid, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const size_t smem = dx_smem_bytes(sh.num_grids);
    check_smem(smem, device, "backward (dx)", sh.num_grids);
    set_smem(reinterpret_cast<const void*>(lmkan1d_backward_dx_kernel), smem);
    const dim3 grid(static_cast<unsigned>((sh.batch + kDxSamples - 1) / kDxSamples), tiles);
    lmkan1d_backward_dx_kernel<<<grid, kDxThreads, smem, stream>>>(
        grad_y.data_ptr<float>(), x.data_ptr<float>(), slopes.data_ptr<float>(),
        borders.data_ptr<float>(), grad_x.data_ptr<float>(), sh.batch, sh.n_in, sh.n_out,
        sh.num_grids, uniform_grid, batch_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // dC.
  {
    const size_t smem = dc_smem_bytes(sh.num_grids);
    check_smem(smem, device, "backward (dC)", sh.num_grids);
    set_smem(reinterpret_cast<const void*>(lmkan1d_backward_dc_kernel), smem);
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const int64_t tiles = static_cast<int64_t>((sh.n_out + 31) / 32) * ((sh.n_in + kDcInputs - 1) / kDcInputs);
    // Enough slices of the batch for ~8 blocks per SM; each slice at least 4 chunks.
    int64_t slices = std::max<int64_t>(1, (int64_t{8} * sms + tiles - 1) / tiles);
    slices = std::min<int64_t>(slices, std::max<int64_t>(1, sh.batch / (4 * kDcChunk)));
    slices = std::min<int64_t>(slices, 65535);
    const int64_t slice_len = (sh.batch + slices - 1) / slices;
    slices = (sh.batch + slice_len - 1) / slice_len;
    const dim3 grid((sh.n_out + 31) / 32, (sh.n_in + kDcInputs - 1) / kDcInputs,
                    static_cast<unsigned>(slices));
    lmkan1d_backward_dc_kernel<<<grid, kThreads, smem, stream>>>(
        grad_y.data_ptr<float>(), x.data_ptr<float>(), borders.data_ptr<float>(),
        grad_params.data_ptr<float>(), sh.batch, sh.n_in, sh.n_out, sh.num_grids, uniform_grid,
        batch_last, slice_len);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_x, grad_params};
}

}  // namespace

// Largest G whose forward, dx and dC kernels all fit the device's shared memory, so the
// layer can raise a clear error in Python before any launch.
int64_t lmkan1d_max_num_grids(int64_t device_index) {
  const size_t limit = static_cast<size_t>(max_dynamic_smem(static_cast<int>(device_index)));
  int g = 0;
  while (fwd_smem_bytes(g + 1) <= limit && dx_smem_bytes(g + 1) <= limit &&
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
