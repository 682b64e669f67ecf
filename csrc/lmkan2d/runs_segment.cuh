// The per-warp work item that the sorted backward's two runs kernels share (backward_runs.cu,
// backward_runs_mma.cu): one pair and one segment of that pair's cell-sorted entries of the
// chunk, staged in shared memory, and the segment's grad_x sums stored at the end.
#pragma once
#include <cstdint>

#include "common/images.h"
#include "lmkan2d/runs.h"

namespace lmkan {
namespace lmkan2d {

struct RunsSegment {
  int p;      // the pair
  int begin;  // the segment's first entry in the pair's sorted chunk
  int len;    // its entries (<= a.seg_len)
};

// Work item `item` (= blockIdx.x * warps + warp) of a launch of a.n_pairs * a.segments items.
__device__ __forceinline__ RunsSegment runs_segment(const RunsArgs& a, int64_t item) {
  RunsSegment s;
  s.p = static_cast<int>(item / a.segments);
  s.begin = static_cast<int>(item % a.segments) * a.seg_len;
  s.len = min(a.len - s.begin, a.seg_len);
  return s;
}

// The segment's entries into seg_entries[0, len), .x turned from the sample's index in the
// chunk into its grad_y row offset (sample * ld32: int32, a host check); read once (evict
// first). The caller pads past len and synchronises the warp.
__device__ __forceinline__ void load_segment_entries(const RunsArgs& a, const RunsSegment& s,
                                                     int4* seg_entries, int lane) {
  const int4* ent = a.entries + s.p * a.entries_stride + s.begin;
  for (int i = lane; i < s.len; i += 32) {
    int4 e = __ldcs(ent + i);
    e.x *= a.ld32;
    seg_entries[i] = e;
  }
}

// grad_x of the segment from the warp's sums dxacc [len][2] (inputs 2p, 2p + 1), in x's
// layout (kImages: dx_images(b) for b * xs_b). Each (sample, pair) of the chunk lives in
// exactly one segment: plain stores.
template <bool kImages>
__device__ __forceinline__ void store_segment_dx(const RunsArgs& a,
                                                 const SampleOffsets& dx_images,
                                                 const RunsSegment& s, const int4* seg_entries,
                                                 const float* dxacc, int lane) {
  for (int i = lane; i < 2 * s.len; i += 32) {
    const int64_t b = a.b0 + seg_entries[i / 2].x / a.ld32;
    const int64_t at_sample = kImages ? dx_images(b) : b * a.xs_b;
    a.dx[(2 * int64_t(s.p) + (i & 1)) * a.xs_f + at_sample] = dxacc[i];
  }
}

}  // namespace lmkan2d
}  // namespace lmkan
