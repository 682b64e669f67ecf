// LMKAN2DLayer forward, lanes own samples. x and y are read and written through strides, so
// small batch-first calls run without transposes (plan_forward decides; forward.cpp), and
// batch-last images [N, N_in, L] (common/images.h: an NCHW 1x1 convolution's input) are read
// and written in place, a thread forming its sample's offsets once.
//
// Scheme: a block owns an output tile of W = 8 * tile_size outputs and a chunk of samples and
// loops over the input pairs of its split, each pair's table slice [cells][W] staged in shared
// memory by bulk copies (TMA) into a ring of up to 4 buffers. A thread owns ONE sample and 32
// consecutive outputs of the tile (tile_size / 4 threads per sample), so the sample's cell,
// its 4 bilinear weights and its 32 accumulators all live in the thread's registers: per
// (sample, pair) the thread reads 4 corners x 8 float4 from shared memory and does 128 FMAs.
// No cell is broadcast through shared memory (the warp-per-sample scheme of dx_by_output_rows
// spends one wavefront per sample and pair on it: 9 per 64 outputs where the lookups need 8).
//
// Bank conflicts: lane l reads its 8 float4 chunks of a 32-float (128-byte) row in the order
// j XOR (l % 8), j = 0..7. A row starts on bank 0 (W and the sub-row offset are multiples of
// 32 floats), so at step j lanes l, l+8, l+16, l+24 fall on one bank quad and every other quad
// gets 4 lanes too: 4 wavefronts for the 512 bytes of the warp, the minimum, whatever the
// cells. Accumulator j of a lane therefore holds output chunk j XOR (l % 8); the swizzle is
// undone once, in registers (select chains), before the coalesced stores. (XOR rather than a
// rotation: on a 128-byte aligned row it is one LOP3 per address.)
//
// 16-bit tables (float16 or bfloat16, packed by pack_table in that dtype): a row is W * 2
// bytes and a lane's 32 outputs are 64 bytes, 4 chunks of 8 outputs (one 16-byte load, 4
// words of two outputs each, widened to float32 in registers: bfloat16 by a shift or a mask,
// float16 by a conversion); weights and sums stay float32. Lanes map to sample = lane / TS,
// sub = lane % TS, and read chunk j XOR f, f = (lane / 2) % 4. For TS >= 2 the rows are 128 or
// 256 bytes (128-byte aligned), so in each 8-lane phase of a 16-byte load the lanes of either
// sub parity share one 64-byte half of the bank window and take the 4 different chunks: 8
// bank quads, one wavefront. At TS = 1 (tile 4) rows are 64 bytes and a row falls in either
// half of the window with its cell: about two wavefronts per phase (correct, slower).
//
// Pipeline: thread 0 refills a buffer once every thread has released it (an "empty" mbarrier
// with one arrival per thread), and the copy completes on the buffer's "full" mbarrier, so
// warps drift up to nbuf - 1 pairs apart instead of meeting at a block barrier every pair
// (R35, G=16: 74.1 ms against 79.0 with a __syncthreads per pair). One arrival per warp after
// a __syncwarp ran as fast but compute-sanitizer racecheck reported the refill against the
// other lanes' reads; per-thread arrivals cost nothing measurable and leave no doubt.
// Below sm_90 (no bulk copies, cp_async.cuh) every thread copies its share of each refill with
// cp.async and arrives on the "full" barrier when its copies land; each thread then waits on
// the "empty" barrier itself before it refills, so warps drift at most `lead` pairs apart
// instead of nbuf - 1 (lead = nbuf - 2 where nbuf > 2: a refill waits for the release of pair
// p - 2, not p - 1, and has nbuf - 2 pairs of compute to land in).
#include <algorithm>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include "common/cp_async.cuh"
#include "common/image_rows.h"
#include "common/images.h"
#include "common/static_switch.h"
#include "common/table_type.cuh"
#include "lmkan2d/device.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

struct SampleLanesArgs {
  const float* x;        // (f, b) at f * xs_f + b * xs_b (images: f * xs_f + x_images(b))
  const void* packed;    // [n_tiles, P, cells, W], float32 or the 16-bit table type
  const float* borders;  // [G+1]
  float* y;              // (o, b) at o * ys_f + b * ys_b (images: o * ys_f + y_images(b);
                         // in split z: z * ys_split further)
  int64_t batch, ys_split, xs_f, xs_b, ys_f, ys_b;
  int n_out, n_pairs, num_grids;
  int pairs_per_split;   // pair range of blockIdx.z
  int nbuf;              // staged table buffers, 1 .. kSampleLanesMaxBuffers
};

// Images (common/images.h) are a template switch, their offsets separate kernel arguments:
// with a runtime test, or with the offsets inside SampleLanesArgs (which the kernel copies to
// its stack for add_far_pairs), the 64-register kernel's hot loop got 2-6 spill loads per
// pair in the plain instances too (sm_90 SASS), where it has none.
template <bool kImages>
__device__ __forceinline__ int64_t sample_offset(int64_t b, int64_t step, const SampleOffsets& o) {
  if constexpr (kImages) return o(b);
  else return b * step;
}

// The two values of a 32-bit word of a 16-bit table (the lower address in the low half),
// widened to float32 exactly.
__device__ __forceinline__ float2 widen(unsigned w, __nv_bfloat16) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}
__device__ __forceinline__ float2 widen(unsigned w, __half) {
  __half2 h;
  memcpy(&h, &w, 4);
  return __half22float2(h);
}

// acc.(x, y) += the bilinear sum of one word of the four corners (16-bit tables).
template <typename T>
__device__ __forceinline__ void fma_word(float& acc0, float& acc1, unsigned c00, unsigned c01,
                                         unsigned c10, unsigned c11, float w00, float w01,
                                         float w10, float w11) {
  const float2 a = widen(c00, T{}), b = widen(c01, T{}), c = widen(c10, T{}), d = widen(c11, T{});
  acc0 = fmaf(w00, a.x, fmaf(w01, b.x, fmaf(w10, c.x, fmaf(w11, d.x, acc0))));
  acc1 = fmaf(w00, a.y, fmaf(w01, b.y, fmaf(w10, c.y, fmaf(w11, d.y, acc1))));
}

// Cell of v from the node table s_grid[i] = (g_i, 1 / (g_{i+1} - g_i)): one 8-byte read.
__device__ __forceinline__ Cell grid_cell(float v, const float2* s_grid, int num_grids) {
  const int i = cdf_index(v, num_grids);
  const float2 g = s_grid[i];
  return Cell{i, (v - g.x) * g.y};
}

// Far inputs (device.cuh, kFarCells) of this thread's sample: the loop gave them d = 0; add
// each far pair's float64 value less what the loop added, for the thread's 32 outputs,
// reading the packed table from global memory (rare: only threads whose sample holds one).
// acc: as in the kernel (float32: acc[j] holds output chunk j ^ rot; 16-bit: acc[2j], acc[2j+1]
// the two halves of 8-output chunk j ^ rot), copied to local memory by the caller: not
// inlined, so the kernel's loop keeps its registers (inlined, every instantiation spilled
// 300-380 bytes at the 64-register bound, against 0-64 without it).
template <int TS, typename T>
__device__ __noinline__ void add_far_pairs(float4* acc, const SampleLanesArgs& a,
                                              const T* tile_table, const float2* s_grid,
                                              int p_begin, int np, int64_t b, int sub, int rot) {
  constexpr bool k16 = sizeof(T) == 2;
  constexpr int W = 32 * TS, kChunks = k16 ? 4 : 8, kPerChunk = k16 ? 8 : 4;
  const int side = a.num_grids + 1;
  const int64_t slice = int64_t(side) * side * W;
  const float* xp = a.x + 2 * int64_t(p_begin) * a.xs_f + b * a.xs_b;
  for (int p = 0; p < np; ++p, xp += 2 * a.xs_f) {
    const float v1 = __ldg(xp), v2 = __ldg(xp + a.xs_f);
    const Cell c1 = grid_cell(v1, s_grid, a.num_grids);
    const Cell c2 = grid_cell(v2, s_grid, a.num_grids);
    const bool f1 = is_far(v1, c1.d), f2 = is_far(v2, c2.d);
    if (!(f1 || f2)) continue;
    const float d1 = f1 ? 0.f : c1.d, d2 = f2 ? 0.f : c2.d;  // the loop's
    const float e1 = 1.f - d1, e2 = 1.f - d2;
    const float u00 = e1 * e2, u01 = e1 * d2, u10 = d1 * e2, u11 = d1 * d2;
    const double D1 = exact_d(v1, a.borders, c1.index), D2 = exact_d(v2, a.borders, c2.index);
    const T* q = tile_table + p * slice + int64_t(c1.index * side + c2.index) * W + sub * 32;
    const int64_t below = int64_t(side) * W;
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int chunk = j ^ rot;
#pragma unroll
      for (int e = 0; e < kPerChunk; ++e) {
        const int o = kPerChunk * chunk + e;
        const float corr = far_correction(to_float(q[o]), to_float(q[o + W]),
                                          to_float(q[o + below]), to_float(q[o + below + W]),
                                          D1, D2, u00, u01, u10, u11);
        component(acc[k16 ? 2 * j + e / 4 : j], e % 4) += corr;
      }
    }
  }
}

template <int TS, typename T, bool kImages>
__global__ void __launch_bounds__(1024, 1) sample_lanes_forward_kernel(
    const SampleLanesArgs a, const SampleOffsets x_images, const SampleOffsets y_images) {
  constexpr bool k16 = sizeof(T) == 2;
  constexpr int W = 32 * TS;    // outputs per tile = values per table row
  constexpr int SPW = 32 / TS;  // samples per warp
  extern __shared__ __align__(16) float smem[];
  const int side = a.num_grids + 1;
  const int slice = side * side * W;  // values of one (tile, pair) table slice
  const int nbuf = a.nbuf;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);  // [kSampleLanesMaxBuffers]
  uint64_t* empty = full + kSampleLanesMaxBuffers;      // [kSampleLanesMaxBuffers]
  float2* s_grid = reinterpret_cast<float2*>(empty + kSampleLanesMaxBuffers);  // [G]
  T* table = reinterpret_cast<T*>(smem + sample_lanes_table_offset(a.num_grids) / 4);  // [nbuf][slice]
  for (int i = threadIdx.x; i < a.num_grids; i += blockDim.x)
    s_grid[i] = make_float2(a.borders[i], 1.f / (a.borders[i + 1] - a.borders[i]));
  init_staging_ring(full, empty, nbuf);
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // which 32 outputs of the tile, the sample within the warp, the chunk order (bank note)
  const int sub = k16 ? lane % TS : lane / SPW;
  const int rot = k16 ? (lane >> 1) & 3 : lane % 8;
  const int64_t b = blockIdx.x * int64_t(blockDim.x / TS) + warp * SPW + (k16 ? lane / TS : lane % SPW);
  const bool valid = b < a.batch;
  const int tile_index = blockIdx.y;
  const int p_begin = blockIdx.z * a.pairs_per_split;
  const int np = min(a.n_pairs, p_begin + a.pairs_per_split) - p_begin;
  const T* tile_table =
      static_cast<const T*>(a.packed) + (int64_t(tile_index) * a.n_pairs + p_begin) * slice;
  // The refill of pair q is issued during pair q - lead (thread 0 alone with bulk copies).
  const bool producer = kBulkCopy ? threadIdx.x == 0 : true;
  const int lead = (kBulkCopy || nbuf <= 2) ? nbuf - 1 : nbuf - 2;

  // Copy pair q into buffer q % nbuf once every thread has released that buffer's previous
  // pair q - nbuf (its use number q / nbuf - 1 completed the empty barrier's phase). With
  // bulk copies thread 0 only: the divisions are off the other threads' path.
  auto refill = [&](int q) {
    const int buf = q % nbuf;
    if (q >= nbuf) mbarrier_wait(empty + buf, (q / nbuf - 1) & 1);
    stage_to_shared(reinterpret_cast<float*>(table + int64_t(buf) * slice),
                    reinterpret_cast<const float*>(tile_table + int64_t(q) * slice),
                    static_cast<unsigned>(slice) * unsigned(sizeof(T)), full + buf);
  };
  if (producer)
    for (int q = 0; q < min(lead, np); ++q) refill(q);

  // Cell sharing (16-bit tables, TS >= 2: a sample's outputs spread over TS neighbouring
  // lanes): a thread computes the cell of one input of the pair, input `own` (0 or 1), and
  // takes the other from the partner lane (lane ^ 1, the same sample) that holds the
  // sample's other input, one shuffle for d and one for the row. The cell (a Laplace CDF
  // with an expf, the node lookup, the far test) is ~28 instructions of the ~400 a thread
  // issues per pair at tile 8; sharing halves it and one of the two x loads: 1.3-3.4% off
  // the issue-bound 16-bit forward. Not for float32 tables: that kernel is bound by the
  // shared-memory pipe, which the shuffles also use, and sharing made it 1.1-2.9% slower at
  // tiles 8 and 16 (H100, docs/decisions.md, "bfloat16 pairs and cell sharing"). Without
  // sharing (TS = 1, float32) a thread computes both.
  constexpr bool kShare = k16 && TS >= 2;
  const int own = kShare ? sub & 1 : 0;
  constexpr int partner = 1;  // lane XOR partner (16-bit: sub = lane % TS)
  // The pair's feature(s) of this thread, advanced by two features per pair. Lanes past the
  // batch read the last sample (unpredicated loads) and store nothing.
  const float* xp = a.x + (2 * int64_t(p_begin) + own) * a.xs_f +
                    sample_offset<kImages>(valid ? b : a.batch - 1, a.xs_b, x_images);
  float x1 = 0.f, x2 = 0.f;
  if (np > 0) {
    x1 = __ldg(xp);
    if constexpr (!kShare) x2 = __ldg(xp + a.xs_f);
  }
  float4 acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  bool any_far = false;  // this thread's sample holds a far input (add_far_pairs)

  // Shared-memory byte address of this lane's first chunk in row 0 of buffer 0. A lane's 32
  // outputs start on a 128-byte (float32) or 64-byte (16-bit) boundary, so chunk (j XOR rot)
  // of a row at address r is r + rot*16 XOR j*16.
  constexpr unsigned kValueBytes = sizeof(T);
  const unsigned lane_base = smem_u32(table) + sub * 32u * kValueBytes + rot * 16u;
  const unsigned row_bytes = W * kValueBytes, below_bytes = side * W * kValueBytes,
                 slice_bytes = slice * kValueBytes;
  int buf = 0;
  unsigned phase = 0;
  for (int p = 0; p < np; ++p) {
    if (producer && p + lead < np) refill(p + lead);
    const float v1 = x1;
    [[maybe_unused]] const float v2 = x2;  // without sharing only
    xp += 2 * a.xs_f;
    if (p + 1 < np) {  // the next pair's x, in flight during this pair
      x1 = __ldg(xp);
      if constexpr (!kShare) x2 = __ldg(xp + a.xs_f);
    }
    float d1, d2;
    int row;
    if constexpr (kShare) {  // v1 is input `own` of the pair
      const Cell c = grid_cell(v1, s_grid, a.num_grids);
      const bool f = is_far(v1, c.d);
      any_far = any_far || f;
      const float d_own = f ? 0.f : c.d;  // far: after the loop
      const int row_own = own ? c.index : c.index * side;
      const float d_other = __shfl_xor_sync(0xffffffffu, d_own, partner);
      row = row_own + __shfl_xor_sync(0xffffffffu, row_own, partner);
      d1 = own ? d_other : d_own;
      d2 = own ? d_own : d_other;
    } else {
      const Cell c1 = grid_cell(v1, s_grid, a.num_grids);
      const Cell c2 = grid_cell(v2, s_grid, a.num_grids);
      const bool f1 = is_far(v1, c1.d), f2 = is_far(v2, c2.d);
      any_far = any_far || f1 || f2;
      d1 = f1 ? 0.f : c1.d;  // far: after the loop
      d2 = f2 ? 0.f : c2.d;
      row = c1.index * side + c2.index;
    }
    const float e1 = 1.f - d1, e2 = 1.f - d2;
    const float w00 = e1 * e2, w01 = e1 * d2, w10 = d1 * e2, w11 = d1 * d2;
    mbarrier_wait(full + buf, phase);
    // 16-byte chunk j of the lane's outputs in the four corner rows: float32 chunk j holds
    // outputs 4j..4j+3 (accumulator j); a 16-bit chunk j holds 8 (accumulators 2j, 2j + 1)
    constexpr int kChunks = k16 ? 4 : 8;
    const unsigned cell_row = lane_base + buf * slice_bytes + row * row_bytes;
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const unsigned r0 = cell_row ^ (j * 16u);
      const unsigned r1 = r0 + below_bytes;
      if constexpr (k16) {
        const uint4 c00 = lds128_u32(r0), c01 = lds128_u32(r0 + row_bytes);
        const uint4 c10 = lds128_u32(r1), c11 = lds128_u32(r1 + row_bytes);
        float4& lo = acc[2 * j];
        float4& hi = acc[2 * j + 1];
        fma_word<T>(lo.x, lo.y, c00.x, c01.x, c10.x, c11.x, w00, w01, w10, w11);
        fma_word<T>(lo.z, lo.w, c00.y, c01.y, c10.y, c11.y, w00, w01, w10, w11);
        fma_word<T>(hi.x, hi.y, c00.z, c01.z, c10.z, c11.z, w00, w01, w10, w11);
        fma_word<T>(hi.z, hi.w, c00.w, c01.w, c10.w, c11.w, w00, w01, w10, w11);
      } else {
        const float4 c00 = lds128(r0), c01 = lds128(r0 + row_bytes);
        const float4 c10 = lds128(r1), c11 = lds128(r1 + row_bytes);
        acc[j].x = fmaf(w00, c00.x, fmaf(w01, c01.x, fmaf(w10, c10.x, fmaf(w11, c11.x, acc[j].x))));
        acc[j].y = fmaf(w00, c00.y, fmaf(w01, c01.y, fmaf(w10, c10.y, fmaf(w11, c11.y, acc[j].y))));
        acc[j].z = fmaf(w00, c00.z, fmaf(w01, c01.z, fmaf(w10, c10.z, fmaf(w11, c11.z, acc[j].z))));
        acc[j].w = fmaf(w00, c00.w, fmaf(w01, c01.w, fmaf(w10, c10.w, fmaf(w11, c11.w, acc[j].w))));
      }
    }
    mbarrier_arrive(empty + buf);  // this thread is done with the buffer
    if (++buf == nbuf) {
      buf = 0;
      phase ^= 1u;
    }
  }

  // the sample holds a far input if either of its threads' inputs is far. Every lane runs the
  // shuffle: inside `any_far || shfl(...)` a lane whose own flag is set would skip it, and its
  // partner would read an undefined value and miss the fix-up.
  if constexpr (kShare) {
    const bool partner_far = __shfl_xor_sync(0xffffffffu, int(any_far), partner) != 0;
    any_far = any_far || partner_far;
  }
  if (any_far) {  // rare: a copy of the accumulators through local memory
    float4 spill[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) spill[j] = acc[j];
    if constexpr (kImages) {  // x at the sample's offset, as a plain tensor's sample 0
      SampleLanesArgs at_sample = a;
      at_sample.x += x_images(valid ? b : a.batch - 1);
      add_far_pairs<TS, T>(spill, at_sample, tile_table, s_grid, p_begin, np, 0, sub, rot);
    } else {
      add_far_pairs<TS, T>(spill, a, tile_table, s_grid, p_begin, np, valid ? b : a.batch - 1, sub,
                           rot);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = spill[j];
  }
  if (!valid) return;
  float* y = a.y + blockIdx.z * a.ys_split + sample_offset<kImages>(b, a.ys_b, y_images);
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    // the accumulator that holds outputs 4c .. 4c+3 (16-bit: half c % 2 of chunk c / 2)
    const int j = k16 ? ((((c >> 1) ^ rot) << 1) | (c & 1)) : c ^ rot;
    float4 v = acc[0];
#pragma unroll
    for (int t = 1; t < 8; ++t)
      if (j == t) v = acc[t];
    const int o = tile_index * W + sub * 32 + 4 * c;
    if (o < a.n_out) y[int64_t(o) * a.ys_f] = v.x;
    if (o + 1 < a.n_out) y[int64_t(o + 1) * a.ys_f] = v.y;
    if (o + 2 < a.n_out) y[int64_t(o + 2) * a.ys_f] = v.z;
    if (o + 3 < a.n_out) y[int64_t(o + 3) * a.ys_f] = v.w;
  }
}

template <int TS, typename T, bool kImages>
void launch_sample_lanes(const SampleLanesArgs& a, const SampleOffsets& x_images,
                         const SampleOffsets& y_images, dim3 grid, int block, int64_t smem) {
  const auto kernel = sample_lanes_forward_kernel<TS, T, kImages>;
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  kernel<<<grid, block, smem, c10::cuda::getCurrentCUDAStream()>>>(a, x_images, y_images);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// Buffers: as many resident blocks as the registers allow (64 per thread: 1024 threads per
// SM), then as many buffers (4 .. 2) as fit beside them; else one buffer and one block (the
// caller sends num_grids whose slice does not fit at all to the output-lanes kernel). Small
// batches split the pairs over blockIdx.z (partials summed in a fixed order) so the grid
// fills the device.
at::Tensor forward_by_sample_lanes(const at::Tensor& x, const at::Tensor& params,
                                   const at::Tensor& borders, int tile, int block,
                                   bool batch_last, at::ScalarType table_dtype) {
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  const int n_out = static_cast<int>(params.size(2));
  const int n_pairs = static_cast<int>(params.size(3));
  // images: x [N, N_in, L] (batch_last), y [N, N_out, L] (common/images.h)
  const bool images = x.dim() == 3;
  const int64_t image_len = images ? x.size(2) : 0;
  const int64_t batch = images ? x.size(0) * image_len : batch_last ? x.size(1) : x.size(0);
  const auto new_y = [&] {
    return images ? at::empty({x.size(0), n_out, image_len}, x.options())
           : batch_last ? at::empty({n_out, batch}, x.options())
                        : at::empty({batch, n_out}, x.options());
  };
  if (batch == 0) return new_y();
  const DeviceLimits lim = device_limits(x.device().index());
  const int ts = tile / 4, w = 8 * tile;
  const int value_bytes = table_dtype == at::kFloat ? 4 : 2;  // of the staged table
  const int64_t samples_per_block = block / ts;

  int nbuf = 0;
  const int reg_blocks = std::max(1, std::min(1024, lim.max_threads_per_sm) / block);
  for (int blocks = reg_blocks; blocks >= 1 && nbuf == 0; --blocks)
    for (int n = kSampleLanesMaxBuffers; n >= 2 && nbuf == 0; --n) {
      const int64_t bytes = sample_lanes_smem_bytes(num_grids, w, n, value_bytes);
      if (bytes <= lim.smem_optin &&
          blocks * (bytes + kReservedSmemPerBlock) <= lim.smem_per_sm)
        nbuf = n;
    }
  if (nbuf == 0) nbuf = 1;  // the caller checked that one buffer fits
  const int64_t smem = sample_lanes_smem_bytes(num_grids, w, nbuf, value_bytes);

  const int64_t n_tiles = (n_out + w - 1) / w;
  const int64_t sample_blocks = (batch + samples_per_block - 1) / samples_per_block;
  TORCH_CHECK(sample_blocks < (int64_t(1) << 31) && n_tiles <= 65535,
              "lmkan2d: grid too large (batch ", batch, ", output_dim ", n_out, ")");
  const int64_t blocks_xy = sample_blocks * n_tiles;
  const PairSplit split = split_pairs(blocks_xy, n_pairs, lim.num_sms, n_pairs);
  const int64_t splits = split.splits;
  const int pairs_per_split = split.pairs_per_split;

  const at::Tensor packed = pack_table(params, w, table_dtype, table_dtype);
  // Pair-split partials go to a workspace in the batch-last layout [splits, N_out, B] either
  // way: batch-first stores (a lane's outputs N_out floats apart from its neighbours') would
  // be scattered once per split; the final sum transposes them instead.
  at::Tensor out = splits > 1 ? at::empty({splits, n_out, batch}, x.options()) : new_y();
  const bool store_batch_last = batch_last || splits > 1;
  SampleLanesArgs a{};
  a.x = x.data_ptr<float>();
  a.packed = packed.data_ptr();
  a.borders = borders.data_ptr<float>();
  a.y = out.data_ptr<float>();
  a.batch = batch;
  a.ys_split = batch * int64_t(n_out);
  // x: [N_in, B], [B, N_in] or images [N, N_in, L]; y: [N_out, B], [B, N_out] or images
  // [N, N_out, L] (the split workspace: [splits, N_out, B])
  const bool store_images = images && splits == 1;
  a.xs_f = images ? image_len : batch_last ? batch : 1;
  a.xs_b = batch_last ? 1 : 2 * int64_t(n_pairs);
  a.ys_f = store_images ? image_len : store_batch_last ? batch : 1;
  a.ys_b = store_batch_last ? 1 : n_out;
  const SampleOffsets x_images =
      images ? image_offsets(2 * int64_t(n_pairs), image_len) : plain_offsets(a.xs_b, batch);
  const SampleOffsets y_images =
      store_images ? image_offsets(n_out, image_len) : plain_offsets(a.ys_b, batch);
  a.n_out = n_out;
  a.n_pairs = n_pairs;
  a.num_grids = num_grids;
  a.pairs_per_split = pairs_per_split;
  a.nbuf = nbuf;
  const dim3 grid(static_cast<unsigned>(sample_blocks), static_cast<unsigned>(n_tiles),
                  static_cast<unsigned>(splits));
  switch_value<1, 2, 4>(ts, [&](auto ts_c) {
    switch_table_type(table_dtype, [&](auto tag) {
      if (images)  // x, and y where not split, hold images (common/images.h)
        launch_sample_lanes<decltype(ts_c)::value, decltype(tag), true>(a, x_images, y_images,
                                                                         grid, block, smem);
      else
        launch_sample_lanes<decltype(ts_c)::value, decltype(tag), false>(a, x_images, y_images,
                                                                          grid, block, smem);
    });
  });
  if (splits == 1) return out;
  if (!batch_last) return sum_splits_transposed(out);
  at::Tensor y = at::empty({n_out, batch}, x.options());
  sum_splits(out, y);
  if (!images) return y;
  // small batches only (splits fill an under-used device): [N_out, N*L] -> [N, N_out, L]
  return rows_as_images(y, x.size(0), image_len);
}

}  // namespace lmkan2d
}  // namespace lmkan
