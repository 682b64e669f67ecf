// The sorted 2D backward's cell sort (backward_runs.cu's step 1): per pair, one block
// counting-sorts a chunk of the batch by cell into entries (sample, cell, d1, d2), and writes
// far_fixup's flags of the chunk as it classifies the inputs. The entries' order within a
// cell is arbitrary (shared atomics): the sorted backward is not deterministic.
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>

#include "common/env_knobs.h"
#include "common/images.h"
#include "common/warp.cuh"
#include "lmkan2d/device.cuh"
#include "lmkan2d/layout.h"

namespace lmkan {
namespace lmkan2d {
namespace {

constexpr int kBucketThreads = 1024;

// Exclusive scan of count[0, n) in place by the whole block; returns the total.
__device__ int block_exclusive_scan(int* count, int n, int* warp_sums) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int per = (n + blockDim.x - 1) / blockDim.x;
  const int begin = min(n, static_cast<int>(threadIdx.x) * per), end = min(n, begin + per);
  int local = 0;
  for (int i = begin; i < end; ++i) local += count[i];
  const int incl = warp_inclusive_scan(local, lane);
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int v = lane < warps ? warp_sums[lane] : 0;
    const int w_incl = warp_inclusive_scan(v, lane);
    warp_sums[lane] = w_incl - v;  // exclusive prefix of the warp totals
    if (lane == 31) warp_sums[32] = w_incl;
  }
  __syncthreads();
  int run = warp_sums[warp] + incl - local;
  for (int i = begin; i < end; ++i) {
    const int c = count[i];
    count[i] = run;
    run += c;
  }
  const int total = warp_sums[32];
  __syncthreads();
  return total;
}

// Sample b's two inputs of pair p: x (f, b) at f * xs_f + b * xs_b, or for images
// (kImages, common/images.h) at f * xs_f + x_images(b), xs_f = L.
template <bool kImages>
__device__ __forceinline__ float2 sample_pair_values(const float* __restrict__ x, int64_t b, int p,
                                                     int64_t xs_f, int64_t xs_b,
                                                     const SampleOffsets& x_images) {
  const float* xb = kImages ? x + x_images(b) : x + b * xs_b;
  const int64_t f = 2 * int64_t(p);
  return make_float2(xb[f * xs_f], xb[(f + 1) * xs_f]);
}

// Samples per thread and step of bucket_kernel's two passes: their inputs are loaded before
// any cell is computed. One block per pair holds 32 warps of an SM (G = 26: 128 blocks per
// chunk); with one sample a step each warp waited out a load (two in the second pass,
// sequenced by the division's slow-path call) per sample, and the kernel took ~1.2 ms per
// step of both large cases of bench_2d, 7% of the G = 26 fwd+bwd (H200, 2026-12-05).
constexpr int kBucketUnroll = 4;

// Samples of one stage of the staged scatter (kStaged below): kBucketUnroll per thread.
constexpr int kStageSamples = kBucketUnroll * kBucketThreads;

// Sort the samples [b0, b0 + len) of pair blockIdx.x by cell into entries[p][0, len).
//
// First pass: the chunk's cell histogram (shared atomics), scanned into each cell's first
// slot (its cursor). Second pass, kStaged = false (direct scatter): each sample takes the
// next slot of its cell (a returned shared atomic) and stores its entry there: one 16-byte
// store to a random slot per sample. kStaged = true: per stage of kStageSamples samples,
// each sample takes a rank within its cell from the stage's histogram, the histogram is
// scanned, the entries are placed in shared memory in cell order, and consecutive threads
// store consecutive entries: a cell's run of the stage (~5.6 entries at G = 26, ~50 at
// G = 8) goes to consecutive slots, continuing where the previous stage's run of that cell
// ended, so the stores fill whole sectors. Shared memory: footprints.h,
// runs_bucket_smem_bytes.
//
// The second pass also writes far_fixup's flags (layout.h) of this pair's flag chunks
// [b0 / kFarFlagChunk, ceil((b0 + len) / kFarFlagChunk)): zeroed before the first barrier,
// set after it by each far sample (the same byte from any thread: no atomics); b0 is a
// multiple of kFarFlagChunk, so this block owns those bytes. far_flags [chunks][P].
template <bool kImages, bool kStaged>
__global__ void __launch_bounds__(kBucketThreads) bucket_kernel(
    const float* __restrict__ x, const float* __restrict__ borders, int4* __restrict__ entries,
    uint8_t* __restrict__ far_flags, int64_t b0, int len, int64_t entries_stride, int num_grids,
    int64_t xs_f, int64_t xs_b, const SampleOffsets x_images) {
  extern __shared__ __align__(16) int bucket_smem[];
  const int side = num_grids + 1, keys = side * side;
  // staged: the stage's entries in cell order first (16-byte aligned), [kStageSamples]
  int4* stage = reinterpret_cast<int4*>(bucket_smem);
  int* count = bucket_smem + (kStaged ? 4 * kStageSamples : 0);  // [keys]: counts, then cursors
  int* stage_start = count + keys;                  // staged: [keys] ranks, then first slots
  int* warp_sums = stage_start + (kStaged ? keys : 0);          // [33]
  float* s_borders = reinterpret_cast<float*>(warp_sums + 33);  // [side]
  const int p = blockIdx.x;
  for (int i = threadIdx.x; i < keys; i += blockDim.x) count[i] = 0;
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = borders[i];
  uint8_t* pair_flags = far_flags + (b0 / kFarFlagChunk) * gridDim.x + p;  // [chunk * P]
  for (int i = threadIdx.x; i < (len + kFarFlagChunk - 1) / kFarFlagChunk; i += blockDim.x)
    pair_flags[int64_t(i) * gridDim.x] = 0;
  __syncthreads();
  // sample s (of the chunk) holds a far input of this pair
  const auto flag_far = [&](int s) { pair_flags[int64_t(s / kFarFlagChunk) * gridDim.x] = 1; };
  // the inputs of this thread's samples s0 + u * blockDim.x, u < kBucketUnroll (0 past len)
  const auto load_step = [&](int s0, float2 (&v)[kBucketUnroll]) {
#pragma unroll
    for (int u = 0; u < kBucketUnroll; ++u) {
      const int s = s0 + u * static_cast<int>(blockDim.x);
      v[u] = s < len ? sample_pair_values<kImages>(x, b0 + s, p, xs_f, xs_b, x_images)
                     : make_float2(0.f, 0.f);
    }
  };
  const int step = kBucketUnroll * static_cast<int>(blockDim.x);
  for (int s0 = threadIdx.x; s0 < len; s0 += step) {
    float2 v[kBucketUnroll];
    load_step(s0, v);
#pragma unroll
    for (int u = 0; u < kBucketUnroll; ++u) {
      if (s0 + u * static_cast<int>(blockDim.x) >= len) break;
      const float4 c = pair_cell_of_values(v[u].x, v[u].y, s_borders, num_grids, nullptr);
      atomicAdd(&count[__float_as_int(c.x)], 1);
    }
  }
  __syncthreads();
  block_exclusive_scan(count, keys, warp_sums);
  // second pass: the cells again (cheaper than keeping them: registers)
  int4* out = entries + p * entries_stride;
  if constexpr (!kStaged) {
    // each sample takes the next free slot of its cell
    for (int s0 = threadIdx.x; s0 < len; s0 += step) {
      float2 v[kBucketUnroll];
      load_step(s0, v);
#pragma unroll
      for (int u = 0; u < kBucketUnroll; ++u) {
        const int s = s0 + u * static_cast<int>(blockDim.x);
        if (s >= len) break;
        bool far;
        const float4 c = pair_cell_of_values(v[u].x, v[u].y, s_borders, num_grids, nullptr, &far);
        if (far) flag_far(s);
        const int key = __float_as_int(c.x);
        const int pos = atomicAdd(&count[key], 1);
        // read once
        __stcs(out + pos, make_int4(s, key, __float_as_int(c.y), __float_as_int(c.z)));
      }
    }
  } else {
    // step == kStageSamples (blockDim.x == kBucketThreads, backward_by_runs)
    for (int t0 = 0; t0 < len; t0 += kStageSamples) {
      const int n = min(kStageSamples, len - t0);
      for (int i = threadIdx.x; i < keys; i += blockDim.x) stage_start[i] = 0;
      __syncthreads();
      float2 v[kBucketUnroll];
      load_step(t0 + static_cast<int>(threadIdx.x), v);
      int4 e[kBucketUnroll];
      int rank[kBucketUnroll];
#pragma unroll
      for (int u = 0; u < kBucketUnroll; ++u) {
        const int s = t0 + static_cast<int>(threadIdx.x) + u * static_cast<int>(blockDim.x);
        if (s < len) {
          bool far;
          const float4 c =
              pair_cell_of_values(v[u].x, v[u].y, s_borders, num_grids, nullptr, &far);
          if (far) flag_far(s);
          const int key = __float_as_int(c.x);
          rank[u] = atomicAdd(&stage_start[key], 1);
          e[u] = make_int4(s, key, __float_as_int(c.y), __float_as_int(c.z));
        }
      }
      __syncthreads();
      block_exclusive_scan(stage_start, keys, warp_sums);  // ends with a barrier
#pragma unroll
      for (int u = 0; u < kBucketUnroll; ++u) {
        const int s = t0 + static_cast<int>(threadIdx.x) + u * static_cast<int>(blockDim.x);
        if (s < len) stage[stage_start[e[u].y] + rank[u]] = e[u];
      }
      __syncthreads();
      // entry i of the stage is number i - stage_start[key] of its cell's run in this stage
#pragma unroll
      for (int u = 0; u < kBucketUnroll; ++u) {
        const int i = static_cast<int>(threadIdx.x) + u * static_cast<int>(blockDim.x);
        if (i < n) {
          const int4 entry = stage[i];
          __stcs(out + count[entry.y] + (i - stage_start[entry.y]), entry);  // read once
        }
      }
      __syncthreads();
      // the cursors past this stage's runs (cell key's run ends where key + 1's begins)
      for (int key = threadIdx.x; key < keys; key += blockDim.x)
        count[key] += (key + 1 < keys ? stage_start[key + 1] : n) - stage_start[key];
      __syncthreads();
    }
  }
}

// The staged scatter of the cell sort, unless LMKAN_BUCKET_STAGED=0 (read once per process:
// a knob to measure the direct scatter against it, tools/profile_2d.py).
bool bucket_staged_allowed() {
  static const bool allowed = env_int("LMKAN_BUCKET_STAGED", 0, 1, 1) != 0;
  return allowed;
}

template <bool kImages, bool kStaged>
void launch_instance(const CellSort& sort, const CellSortChunk& c, cudaStream_t stream) {
  bucket_kernel<kImages, kStaged><<<c.n_pairs, kBucketThreads, sort.smem_bytes, stream>>>(
      c.x, c.borders, c.entries, c.far_flags, c.b0, c.len, c.entries_stride, c.num_grids, c.xs_f,
      c.xs_b, c.x_images);
}

}  // namespace

CellSort plan_cell_sort(int num_grids, bool images, const DeviceLimits& lim) {
  static_assert(kStageSamples * 16 == kBucketStageBytes, "footprints.h: the stage's bytes");
  CellSort sort;
  sort.images = images;
  // the staged scatter where its shared memory fits (and LMKAN_BUCKET_STAGED is not 0)
  sort.staged = bucket_staged_allowed() &&
                runs_bucket_smem_bytes(num_grids, true) <= lim.smem_optin;
  sort.smem_bytes = runs_bucket_smem_bytes(num_grids, sort.staged);
  TORCH_INTERNAL_ASSERT(sort.smem_bytes <= lim.smem_optin,
                        "plan_backward chose the sorted backward past its cell histogram");
  const auto kernel =
      images ? (sort.staged ? bucket_kernel<true, true> : bucket_kernel<true, false>)
             : (sort.staged ? bucket_kernel<false, true> : bucket_kernel<false, false>);
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), sort.smem_bytes);
  return sort;
}

void launch_cell_sort(const CellSort& sort, const CellSortChunk& chunk, cudaStream_t stream) {
  if (sort.images) {
    sort.staged ? launch_instance<true, true>(sort, chunk, stream)
                : launch_instance<true, false>(sort, chunk, stream);
  } else {
    sort.staged ? launch_instance<false, true>(sort, chunk, stream)
                : launch_instance<false, false>(sort, chunk, stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan2d
}  // namespace lmkan
