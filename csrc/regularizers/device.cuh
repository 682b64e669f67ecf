// Device helpers of both regularisers: second-difference coefficients, the block sum, row loads.
// The two non-inline functions are static: each translation unit keeps its own copy, as when
// they lived in one file's anonymous namespace (a header-defined external function would be
// defined twice at link time).
#pragma once
#include <cstdint>

#include "common/warp.cuh"
#include "regularizers/launch.h"

namespace lmkan {
namespace regularizers {

// Per-node coefficients of the second differences, for the inner nodes k = 1..S-2:
//   f''(k) = kp[k] * (P[k+1] - P[k]) - km[k] * (P[k] - P[k-1]),
//   kp = 2 / (hs * hp), km = 2 / (hs * hm), ihs = 1 / hs, hs = hm + hp,
// as docs/spec.md writes 2/(hm+hp) * ((P[k+1]-P[k])/hp - (P[k]-P[k-1])/hm). Computed in double
// from the float32 borders, rounded once. Entries 0 and S-1 are zero (no second difference
// at the end nodes). coef: shared memory [3 * S] = km[S], kp[S], ihs[S].
static __device__ void fill_coefficients(const float* __restrict__ borders, int S, float* coef) {
  for (int k = threadIdx.x; k < S; k += blockDim.x) {
    float km = 0.f, kp = 0.f, ihs = 0.f;
    if (k >= 1 && k <= S - 2) {
      const double hm = static_cast<double>(borders[k]) - static_cast<double>(borders[k - 1]);
      const double hp = static_cast<double>(borders[k + 1]) - static_cast<double>(borders[k]);
      const double hs = hm + hp;
      km = static_cast<float>(2.0 / (hs * hm));
      kp = static_cast<float>(2.0 / (hs * hp));
      ihs = static_cast<float>(1.0 / hs);
    }
    coef[k] = km;
    coef[S + k] = kp;
    coef[2 * S + k] = ihs;
  }
}

// Sum of v over the block, valid in thread 0. red: shared [32]. Fixed order: deterministic.
static __device__ double block_sum(double v, double* red) {
  v = warp_sum_to_lane0(v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  const int num_warps = (blockDim.x + 31) >> 5;
  if (warp == 0) {
    v = warp_sum_to_lane0(lane < num_warps ? red[lane] : 0.0);
  }
  return v;
}

// This thread's share of the value, summed over the blocks of work this block does
// (ValueOut in launch.h): its own in a multi-block launch (no loop, so that instance's code is
// the plain one-block-of-work kernel), all of them in turn in a one-block launch.
// work(b): this thread's sum over block of work b (unsigned, as blockIdx.x: the launchers
// check that the blocks fit an int, and 64-bit index divisions would cost a call).
template <bool kOneBlock, typename Work>
__device__ __forceinline__ double sum_over_work(const ValueOut& o, Work&& work) {
  if (!kOneBlock) return work(blockIdx.x);
  double total = 0.0;
#pragma unroll 1
  for (unsigned b = 0; b < static_cast<unsigned>(o.blocks); ++b) total += work(b);
  return total;
}

// Adds the block's per-thread sums and writes the partial sum (multi-block launch) or R (one
// block). Every thread of the block calls it.
template <bool kOneBlock>
__device__ __forceinline__ void write_value(double v, double* red, const ValueOut& o) {
  v = block_sum(v, red);
  if (threadIdx.x == 0) {
    if (kOneBlock) {
      o.out[0] = static_cast<float>(v * o.scale);
    } else {
      o.partials[blockIdx.x] = v;
    }
  }
}

// Loads n <= N values of one row, columns col0 .. col0+n-1, from a column-strided table;
// columns outside [0, S) and slots >= n read as 0.
// row: pointer to column 0 of the row at function m; M: column stride.
template <int N>
__device__ __forceinline__ void load_row(float (&dst)[N], const float* __restrict__ row, int col0,
                                         int n, int S, int64_t M) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const int col = col0 + j;
    dst[j] = (j < n && col >= 0 && col < S) ? __ldg(row + static_cast<int64_t>(col) * M) : 0.f;
  }
}

}  // namespace regularizers
}  // namespace lmkan
