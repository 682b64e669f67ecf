// Warp-wide primitives shared by the kernels of every op family (one definition each).
// All lanes of the warp must take part (full mask).
#pragma once

namespace lmkan {

// Inclusive prefix sum of v over the lanes (lane l gets v of lanes 0..l): Hillis-Steele,
// 5 shuffles. An exclusive scan is the result minus v; the warp total is lane 31's result.
__device__ __forceinline__ int warp_inclusive_scan(int v, int lane) {
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int t = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += t;
  }
  return v;
}

// The lanes whose key equals this lane's, for keys in [0, 32): __match_any_sync's result
// from five ballots (one per key bit: the AND of each ballot or its complement). Five votes
// and their masks in place of one MATCH.ANY, which the 1D grouped dC's sort stalled on (ncu,
// run L2): that kernel 1.84 -> 1.68 ms on the H200 (run L4; docs/decisions.md, 1D layer).
__device__ __forceinline__ unsigned warp_match_key32(int key) {
  unsigned peers = 0xffffffffu;
#pragma unroll
  for (int b = 0; b < 5; ++b) {
    const bool set = (key >> b) & 1;
    const unsigned ones = __ballot_sync(0xffffffffu, set);
    peers &= set ? ones : ~ones;
  }
  return peers;
}

// Sum of v over the warp, valid in lane 0 (a fixed order: deterministic).
template <typename T>
__device__ __forceinline__ T warp_sum_to_lane0(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Transpose-reduce: N values per lane in (N = 2 .. 32, a power of two), N sums out over each
// aligned group of LANES lanes (N <= LANES <= 32, a power of two; 32: the whole warp):
// afterwards v[0] of lane l holds the sum over the lanes of l's group of v[l % N]. Recursive
// halving: at the step of width HALF a lane keeps the half of its values whose index bit
// HALF equals its own lane bit and sends the other half to lane ^ HALF (N - 1 shuffles in
// all), then lanes l and l ^ N, ... of the group add up (log2(LANES / N) shuffles).
template <int N, int HALF>
__device__ __forceinline__ void transpose_reduce_step(float (&v)[N], int lane) {
  const bool upper = (lane & HALF) != 0;
#pragma unroll
  for (int i = 0; i < HALF; ++i) {
    const float keep = upper ? v[i + HALF] : v[i];
    const float send = upper ? v[i] : v[i + HALF];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, HALF);
  }
  if constexpr (HALF > 1) transpose_reduce_step<N, HALF / 2>(v, lane);
}
template <int N, int LANES = 32>
__device__ __forceinline__ void transpose_reduce(float (&v)[N], int lane) {
  static_assert(N >= 2 && N <= LANES && LANES <= 32 && (N & (N - 1)) == 0 &&
                (LANES & (LANES - 1)) == 0, "transpose_reduce: N <= LANES <= 32, powers of two");
  transpose_reduce_step<N, N / 2>(v, lane);
#pragma unroll
  for (int width = N; width < LANES; width *= 2)
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], width);
}

}  // namespace lmkan
