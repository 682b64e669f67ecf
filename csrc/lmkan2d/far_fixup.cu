// After the 2D backward kernels (backward.cpp): the (sample, pair)s that hold a far input (device.cuh,
// kFarCells), which every kernel took at d = 0, get their float64 values. grad_x of such a
// pair is replaced by sum_o grad_y df/dx in float64; grad_params gets, per output and corner,
// grad_y (w_exact - w_used) (the float64 bilinear weights less the ones the kernels used).
//
// Two kernels:
// 1. far_flags_kernel: one block per chunk of kChunk samples reads the chunk's x (every
//    feature) in memory order, 16-byte loads where x allows, and writes one byte per pair:
//    whether the chunk holds a far input of that pair (every byte written: no memset).
//    Batch-last batches of fewer chunks than the GPU has SMs twice over also split the rows
//    over blockIdx.y (groups of an even number of rows: each block owns its pairs' bytes);
//    with one block per chunk, B = 1024 at 128 features ran 4 blocks of 8 dependent rounds of
//    loads each (10 us of a 0.165 ms small fwd+bwd on the H200).
// 2. far_fixup_kernel: one block per pair (it owns that pair's grad_params entries and grad_x
//    rows: no atomics, deterministic). It reads the pair's flags, kChunk chunks at a time,
//    and only in flagged chunks finds the far samples in sample order (ballots and a scan
//    over the warps) and handles them one after the other with its threads over the outputs.
// The sorted backward (backward_runs.cu) passes the flags its cell sort (cell_sort.cu) wrote
// while it classified every input, so it runs no phase 1 at any batch (0.25 ms of one read
// of x at G=8 512->512 B=2^18 on the H200).
// Batches of at most kInlineChunks chunks skip phase 1: the fixup block classifies its pair's
// samples itself (all its loads in flight at once, one barrier per chunk), which saves the
// flags launch and allocation of every small backward (host-bound training steps, issue 16).
// Measured on the H200 before this form of phase 1 (docs/decisions.md, issue 18): a single
// per-pair kernel that classified every sample itself walked B / 256 chunks one after the
// other (+1.4 ms on a 13.9 ms backward at G=26 256->256 B=2^18); a phase 1 of one block per
// (pair, chunk), one 4-byte load per thread and input, read x at ~0.75 TB/s there and took
// 39 us a call on batch-first B=65536 x 256 (one 8-byte read per 32-byte sector).
#include <algorithm>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/device_limits.h"
#include "common/grid.cuh"
#include "common/images.h"
#include "common/warp.cuh"
#include "common/static_switch.h"
#include "common/table_type.cuh"
#include "lmkan2d/device.cuh"
#include "lmkan2d/layout.h"
#include "lmkan2d/plan.h"

namespace lmkan {
namespace lmkan2d {
namespace {

constexpr int kFixupThreads = 256;
constexpr int kChunk = kFixupThreads;  // samples per far flag: phase 2 takes a chunk per pass
static_assert(kChunk == kFarFlagChunk, "layout.h: the flags' chunk");
constexpr int kInlineChunks = 4;       // batches of at most this many chunks: no phase 1

enum class GradYType : int { kFloat, kHalf, kBFloat16 };

struct FarFixupArgs {
  const float* x;        // (f, b) at f * xs_f + x_at(b)
  const void* params;    // [G+1, G+1, N_out, P] of type P (kernel template), rounded to R
  const float* borders;  // [G+1]
  const void* gy;        // (o, b) at o * gs_f + gy_at(b), of type gy_type
  GradYType gy_type;     // a 16-bit grad_y, as under autocast, or float32
  float* dx;             // x's layout
  float* dp;             // float32 [G+1, G+1, N_out, P], or nullptr (grad_x alone)
  const uint8_t* flags;  // [n_chunks, P]: chunk c holds a far input of pair p (phase 1), or
                         // nullptr: n_chunks <= kInlineChunks, the fixup kernel classifies
  int64_t batch, n_chunks, xs_f, gs_f;
  // samples' offsets (common/images.h): b * xs_b of a plain tensor (the layout's sample
  // step), or those of images [N, N_in, L] / [N, N_out, L] (a 1x1 convolution's backward)
  SampleOffsets x_at, gy_at;
  int n_out, n_pairs, num_grids;
};

// grad_y at `at` (its dtype is a runtime choice: far samples are rare, so a branch here
// costs nothing, where a template parameter would triple the fixup kernel's instances).
__device__ __forceinline__ float grad_y_value(const FarFixupArgs& a, int64_t at) {
  if (a.gy_type == GradYType::kFloat) return static_cast<const float*>(a.gy)[at];
  if (a.gy_type == GradYType::kHalf) return to_float(static_cast<const __half*>(a.gy)[at]);
  return to_float(static_cast<const __nv_bfloat16*>(a.gy)[at]);
}

// Whether v is far. Only a value outside [borders[0], borders[G]] can be (inside the grid d
// is in [0, 1]); NaN fails both compares and is not far, as in is_far.
__device__ __forceinline__ bool far_value(float v, float lo, float hi, const float* borders,
                                          int num_grids) {
  return (v < lo || v > hi) && is_far(v, cdf_cell(v, borders, num_grids).d);
}

// Whether a component of v is outside [lo, hi] (the cheap test before far_value).
__device__ __forceinline__ bool outside(float4 v, float lo, float hi) {
  return v.x < lo || v.x > hi || v.y < lo || v.y > hi || v.z < lo || v.z > hi || v.w < lo ||
         v.w > hi;
}

// Sets the bit of feature f's pair (f / 2) in the block's pair bits.
__device__ __forceinline__ void mark_pair(unsigned* s_bits, int64_t f) {
  atomicOr(&s_bits[f / 64], 1u << ((f / 2) % 32));
}

// Phase 1: flags[c * P + p] = whether samples [c * kChunk, (c + 1) * kChunk) hold a far input
// of pair p. One block per chunk c; the pairs' bits gather in shared memory (atomicOr: far
// inputs are rare, so are the atomics). Batch-last x (f, b) is at f * xs_f + x_at(b) (images:
// common/images.h). kVec: 16-byte loads (x 16-byte aligned, and batch-last B % 4 == 0, or
// L % 4 == 0 for images, so that every row segment is, and 4 samples from a multiple of 4
// lie in one image).
template <bool kVec>
__global__ void __launch_bounds__(kChunk)
    far_flags_kernel(const float* __restrict__ x, const float* __restrict__ borders,
                     int num_grids, int64_t batch, int n_in, bool batch_last, int group_rows,
                     int64_t xs_f, const SampleOffsets x_at, uint8_t* __restrict__ flags) {
  extern __shared__ unsigned s_bits[];  // one bit per pair
  const int n_pairs = n_in / 2, words = (n_pairs + 31) / 32;
  // batch-last: this block's rows [row_begin, row_end) (group_rows even); batch-first: all
  const int row_begin = blockIdx.y * group_rows, row_end = min(n_in, row_begin + group_rows);
  for (int i = threadIdx.x; i < words; i += blockDim.x) s_bits[i] = 0u;
  __syncthreads();
  const float lo = borders[0], hi = borders[num_grids];
  const int64_t b0 = int64_t(blockIdx.x) * kChunk;
  const int valid = static_cast<int>(batch - b0 < kChunk ? batch - b0 : kChunk);
  // kVec: kLoads 16-byte loads in flight per thread before any compare
  constexpr int kLoads = 4;
  const float4 inside = make_float4(lo, lo, lo, lo);
  if (batch_last) {  // rows f: valid samples from x + f * xs_f + x_at(b0)
    if (kVec) {      // 64 threads per row (valid % 4 == 0), 4 rows per pass
      const int s = 4 * (threadIdx.x % 64);
      for (int f0 = row_begin + threadIdx.x / 64; f0 < row_end; f0 += kLoads * (kChunk / 64)) {
        float4 v[kLoads];
#pragma unroll
        for (int u = 0; u < kLoads; ++u) {
          const int f = f0 + u * (kChunk / 64);
          v[u] = s < valid && f < row_end
                     ? __ldg(reinterpret_cast<const float4*>(x + f * xs_f + x_at(b0 + s)))
                     : inside;
        }
#pragma unroll
        for (int u = 0; u < kLoads; ++u) {
          if (!outside(v[u], lo, hi)) continue;
          const int f = f0 + u * (kChunk / 64);
          if (far_value(v[u].x, lo, hi, borders, num_grids) ||
              far_value(v[u].y, lo, hi, borders, num_grids) ||
              far_value(v[u].z, lo, hi, borders, num_grids) ||
              far_value(v[u].w, lo, hi, borders, num_grids))
            mark_pair(s_bits, f);
        }
      }
    } else if (static_cast<int>(threadIdx.x) < valid) {
      const float* xb = x + x_at(b0 + threadIdx.x);
#pragma unroll 4
      for (int f = row_begin; f < row_end; ++f)
        if (far_value(__ldg(xb + f * xs_f), lo, hi, borders, num_grids)) mark_pair(s_bits, f);
    }
  } else {  // the chunk is valid * N_in consecutive floats; element e is feature e % N_in
    const float* base = x + b0 * n_in;
    const int count = valid * n_in;
    int done = 0;
    if (kVec) {
      const int n4 = count / 4;
      for (int e0 = threadIdx.x; e0 < n4; e0 += kLoads * kChunk) {
        float4 v[kLoads];
#pragma unroll
        for (int u = 0; u < kLoads; ++u) {
          const int e4 = e0 + u * kChunk;
          v[u] = e4 < n4 ? __ldg(reinterpret_cast<const float4*>(base) + e4) : inside;
        }
#pragma unroll
        for (int u = 0; u < kLoads; ++u) {
          if (!outside(v[u], lo, hi)) continue;
          const int e = 4 * (e0 + u * kChunk);
          if (far_value(v[u].x, lo, hi, borders, num_grids)) mark_pair(s_bits, e % n_in);
          if (far_value(v[u].y, lo, hi, borders, num_grids)) mark_pair(s_bits, (e + 1) % n_in);
          if (far_value(v[u].z, lo, hi, borders, num_grids)) mark_pair(s_bits, (e + 2) % n_in);
          if (far_value(v[u].w, lo, hi, borders, num_grids)) mark_pair(s_bits, (e + 3) % n_in);
        }
      }
      done = 4 * n4;
    }
    for (int e = done + threadIdx.x; e < count; e += kChunk)
      if (far_value(__ldg(base + e), lo, hi, borders, num_grids)) mark_pair(s_bits, e % n_in);
  }
  __syncthreads();
  for (int p = row_begin / 2 + threadIdx.x; p < (row_end + 1) / 2; p += blockDim.x)
    flags[int64_t(blockIdx.x) * n_pairs + p] = (s_bits[p / 32] >> (p % 32)) & 1u;
}

// The positions (threadIdx.x) of this block's threads with keep set, in order, into s_list;
// returns their count. Every thread of the block calls it (two barriers).
__device__ int compact_in_order(bool keep, int* s_list, int* s_warp_count) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const unsigned ballot = __ballot_sync(0xffffffffu, keep);
  if (lane == 0) s_warp_count[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, total = 0;
  for (int w = 0; w < warps; ++w) {
    before += w < warp ? s_warp_count[w] : 0;
    total += s_warp_count[w];
  }
  if (keep) s_list[before + __popc(ballot & ((1u << lane) - 1u))] = threadIdx.x;
  __syncthreads();
  return total;
}

// A parameter of type P rounded to the table type R, as the backward kernels read it.
template <typename P, typename R>
__device__ __forceinline__ float table_value(const FarFixupArgs& a, int64_t at) {
  return to_float(from_float<R>(to_float(static_cast<const P*>(a.params)[at])));
}

// Shared memory of the fixup kernel's block.
struct FixupShared {
  float borders[kMaxTableSide];
  int chunks[kFixupThreads];  // flagged chunks of this pass (offsets), in order
  int list[kFixupThreads];    // the chunk's far samples (offsets), in order
  int warp_count[kFixupThreads / 32];
  double sum[2][kFixupThreads / 32];
};

// Pair p's far samples in [b0, b0 + kChunk), one after the other (every thread of the block).
template <typename P, typename R>
__device__ void fix_chunk(const FarFixupArgs& a, int p, int64_t b0, FixupShared& sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int side = a.num_grids + 1;
  const float* s_borders = sh.borders;
  const int64_t f1 = 2 * int64_t(p) * a.xs_f, f2 = f1 + a.xs_f;
  // 1. the chunk's far samples, in sample order
  const int64_t b = b0 + threadIdx.x;
  bool far = false;
  if (b < a.batch) {
    const int64_t at = a.x_at(b);
    const float v1 = a.x[f1 + at], v2 = a.x[f2 + at];
    far = is_far(v1, cdf_cell(v1, s_borders, a.num_grids).d) ||
          is_far(v2, cdf_cell(v2, s_borders, a.num_grids).d);
  }
  const int total = compact_in_order(far, sh.list, sh.warp_count);

  // 2. each far sample: every thread its outputs
  for (int i = 0; i < total; ++i) {
    const int64_t bf = b0 + sh.list[i];
    const int64_t x_at = a.x_at(bf), gy_at = a.gy_at(bf);
    const float v1 = a.x[f1 + x_at], v2 = a.x[f2 + x_at];
    const Cell c1 = cdf_cell(v1, s_borders, a.num_grids);
    const Cell c2 = cdf_cell(v2, s_borders, a.num_grids);
    const bool far1 = is_far(v1, c1.d), far2 = is_far(v2, c2.d);
    const float d1 = far1 ? 0.f : c1.d, d2 = far2 ? 0.f : c2.d;  // what the kernels used
    const float e1 = 1.f - d1, e2 = 1.f - d2;
    const float used[4] = {e1 * e2, e1 * d2, d1 * e2, d1 * d2};
    const double D1 = exact_d(v1, s_borders, c1.index), D2 = exact_d(v2, s_borders, c2.index);
    const double exact[4] = {(1.0 - D1) * (1.0 - D2), (1.0 - D1) * D2, D1 * (1.0 - D2), D1 * D2};
    // corner j = 2a + b of the cell: (i1 + a, i2 + b)
    int64_t corner[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      corner[j] = (int64_t(c1.index + (j >> 1)) * side + c2.index + (j & 1)) * a.n_out;
    double s1 = 0.0, s2 = 0.0;  // sum_o g dF/dd1, sum_o g dF/dd2
    for (int o = threadIdx.x; o < a.n_out; o += blockDim.x) {
      const double g = grad_y_value(a, int64_t(o) * a.gs_f + gy_at);
      double c[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t at = (corner[j] + o) * a.n_pairs + p;
        c[j] = table_value<P, R>(a, at);
        if (a.dp != nullptr) a.dp[at] += static_cast<float>(g * exact[j] - g * double(used[j]));
      }
      // dF/dd1 = (c10 - c00) + D2 M, dF/dd2 = (c01 - c00) + D1 M (NaN-free in float64)
      const double m = (c[3] - c[2]) - (c[1] - c[0]);
      s1 += g * ((c[2] - c[0]) + D2 * m);
      s2 += g * ((c[1] - c[0]) + D1 * m);
    }
    // block sums of s1, s2 in a fixed order
    s1 = warp_sum_to_lane0(s1);
    s2 = warp_sum_to_lane0(s2);
    if (lane == 0) {
      sh.sum[0][warp] = s1;
      sh.sum[1][warp] = s2;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double t1 = 0.0, t2 = 0.0;
      for (int w = 0; w < warps; ++w) {
        t1 += sh.sum[0][w];
        t2 += sh.sum[1][w];
      }
      const double h1 = double(s_borders[c1.index + 1]) - s_borders[c1.index];
      const double h2 = double(s_borders[c2.index + 1]) - s_borders[c2.index];
      a.dx[f1 + x_at] = static_cast<float>(t1 / h1);  // grad_x: x's layout
      a.dx[f2 + x_at] = static_cast<float>(t2 / h2);
    }
    __syncthreads();  // sh.sum reused by the next far sample
  }
}

// Without phase 1 (a.flags == nullptr, at most kInlineChunks chunks): bit c of the result is
// whether chunk c holds a far input of pair p. Every thread loads its sample of each chunk
// first (the loads in flight together), then one barrier per chunk gathers the answers.
__device__ unsigned far_chunks_of_pair(const FarFixupArgs& a, int p, const float* s_borders) {
  const int64_t f1 = 2 * int64_t(p) * a.xs_f, f2 = f1 + a.xs_f;
  float v1[kInlineChunks], v2[kInlineChunks];
#pragma unroll
  for (int c = 0; c < kInlineChunks; ++c) {
    const int64_t b = int64_t(c) * kChunk + threadIdx.x;
    const bool in = b < a.batch;
    const int64_t at = in ? a.x_at(b) : 0;
    v1[c] = in ? a.x[f1 + at] : s_borders[0];  // a border: not far
    v2[c] = in ? a.x[f2 + at] : s_borders[0];
  }
  const float lo = s_borders[0], hi = s_borders[a.num_grids];
  unsigned bits = 0u;
#pragma unroll
  for (int c = 0; c < kInlineChunks; ++c) {
    const bool far = far_value(v1[c], lo, hi, s_borders, a.num_grids) ||
                     far_value(v2[c], lo, hi, s_borders, a.num_grids);
    if (__syncthreads_or(far)) bits |= 1u << c;
  }
  return bits;
}

template <typename P, typename R>
__global__ void __launch_bounds__(kFixupThreads) far_fixup_kernel(const FarFixupArgs a) {
  __shared__ FixupShared sh;
  const int p = blockIdx.x;
  for (int i = threadIdx.x; i < a.num_grids + 1; i += blockDim.x) sh.borders[i] = a.borders[i];
  __syncthreads();
  const unsigned inline_flags = a.flags == nullptr ? far_chunks_of_pair(a, p, sh.borders) : 0u;
  for (int64_t c0 = 0; c0 < a.n_chunks; c0 += kFixupThreads) {
    // this pass's flagged chunks, in order, then each of them
    const int64_t c = c0 + threadIdx.x;
    const bool flagged = c < a.n_chunks && (a.flags == nullptr ? ((inline_flags >> c) & 1u) != 0
                                                               : a.flags[c * a.n_pairs + p] != 0);
    const int n_flagged = compact_in_order(flagged, sh.chunks, sh.warp_count);
    for (int k = 0; k < n_flagged; ++k) {
      fix_chunk<P, R>(a, p, (c0 + sh.chunks[k]) * kChunk, sh);
      __syncthreads();  // sh.list and sh.warp_count reused by the next chunk
    }
    __syncthreads();  // sh.chunks reused by the next pass
  }
}

// Phase 1: the flags [n_chunks, P] of a (far_flags_kernel).
at::Tensor launch_far_flags(const FarFixupArgs& a, bool batch_last, int device,
                            cudaStream_t stream) {
  const at::Tensor flags =
      at::empty({a.n_chunks, a.n_pairs}, at::TensorOptions().device(at::kCUDA, device).dtype(at::kByte));
  // x and dx are contiguous here (backward.cpp); a chunk's element count is an int
  const int n_in = 2 * a.n_pairs;
  TORCH_CHECK(int64_t(n_in) * kChunk <= INT32_MAX, "lmkan2d_backward: at most ",
              INT32_MAX / kChunk, " input features (far-input pass), got ", n_in);
  const bool images = a.x_at.len < a.batch;  // several images (plain: len = batch)
  const bool vec = reinterpret_cast<uintptr_t>(a.x) % 16 == 0 &&
                   (!batch_last || (images ? a.x_at.len % 4 == 0 : a.batch % 4 == 0));
  const int64_t bits_bytes = 4 * int64_t((a.n_pairs + 31) / 32);
  const auto flags_kernel = vec ? far_flags_kernel<true> : far_flags_kernel<false>;
  allow_dynamic_smem(reinterpret_cast<const void*>(flags_kernel), bits_bytes);
  // batch-last with few chunks: row groups over blockIdx.y, at least 16 rows each (one
  // round of the vector loop: 4 rows a pass, 4 loads in flight), an even count
  int groups = 1;
  if (batch_last) {
    const int64_t want = (2 * int64_t(device_limits(device).num_sms) + a.n_chunks - 1) / a.n_chunks;
    groups = static_cast<int>(std::clamp<int64_t>(want, 1, std::min(65535, std::max(1, n_in / 16))));
  }
  int group_rows = (n_in + groups - 1) / groups;
  group_rows += group_rows % 2;
  groups = (n_in + group_rows - 1) / group_rows;
  flags_kernel<<<dim3(static_cast<unsigned>(a.n_chunks), static_cast<unsigned>(groups)), kChunk,
                 bits_bytes, stream>>>(a.x, a.borders, a.num_grids, a.batch, n_in, batch_last,
                                       group_rows, a.xs_f, a.x_at, flags.data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return flags;
}

}  // namespace

void far_fixup(const at::Tensor& x, const at::Tensor& params, at::ScalarType table_dtype,
               const at::Tensor& borders, const at::Tensor& gy, at::Tensor& dx, at::Tensor& dp,
               bool batch_last, const at::Tensor& given_flags) {
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int n_out = static_cast<int>(params.size(2));
  const int n_pairs = static_cast<int>(params.size(3));
  // images [N, N_in, L] (batch_last), grad_y [N, N_out, L], grad_x like x (common/images.h;
  // backward.cpp keeps N L within kMaxImageSamples)
  const bool images = x.dim() == 3;
  const int64_t image_len = images ? x.size(2) : 0;
  const int64_t batch = images ? x.size(0) * image_len : batch_last ? x.size(1) : x.size(0);
  if (batch == 0 || n_pairs == 0) return;
  FarFixupArgs a{};
  a.x = x.data_ptr<float>();
  a.params = params.data_ptr();
  a.borders = borders.data_ptr<float>();
  a.gy = gy.data_ptr();
  a.gy_type = gy.scalar_type() == at::kFloat  ? GradYType::kFloat
              : gy.scalar_type() == at::kHalf ? GradYType::kHalf
                                              : GradYType::kBFloat16;
  a.dx = dx.data_ptr<float>();
  a.dp = dp.defined() ? dp.data_ptr<float>() : nullptr;
  a.batch = batch;
  a.n_chunks = (batch + kChunk - 1) / kChunk;
  if (images) {
    a.xs_f = a.gs_f = image_len;
    a.x_at = image_offsets(2 * int64_t(n_pairs), image_len);
    a.gy_at = image_offsets(n_out, image_len);
  } else {
    a.xs_f = batch_last ? batch : 1;
    a.gs_f = batch_last ? batch : 1;
    a.x_at = plain_offsets(batch_last ? 1 : 2 * int64_t(n_pairs), batch);
    a.gy_at = plain_offsets(batch_last ? 1 : n_out, batch);
  }
  a.n_out = n_out;
  a.n_pairs = n_pairs;
  a.num_grids = num_grids;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // flags from the cell sort where it ran; else small batches: no phase 1 (the fixup kernel
  // classifies, far_chunks_of_pair)
  const at::Tensor flags =
      given_flags.defined()         ? given_flags
      : a.n_chunks > kInlineChunks ? launch_far_flags(a, batch_last, x.device().index(), stream)
                                   : at::Tensor();
  a.flags = flags.defined() ? flags.data_ptr<uint8_t>() : nullptr;
  switch_table_type(params.scalar_type(), [&](auto p_tag) {
    switch_table_type(table_dtype, [&](auto r_tag) {
      far_fixup_kernel<decltype(p_tag), decltype(r_tag)><<<n_pairs, kFixupThreads, 0, stream>>>(a);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan2d
}  // namespace lmkan
