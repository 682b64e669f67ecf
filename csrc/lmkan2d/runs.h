// The sorted backward's runs kernels: their common arguments, runs_kernel's launch shape and
// the two launchers (the tensor-core kernel's footprint is in footprints.h, the choice between
// the two kernels in plan.h, plan_runs). backward_sorted.cpp holds the host code (transpose,
// pack, cell sort, chunk loop: backward_by_runs); backward_runs.cu holds runs_kernel (float32
// FMAs, any grad_y); backward_runs_mma.cu holds runs_mma_kernel (tensor cores, a bfloat16
// grad_y with a bfloat16 table: mixed-precision training).
#pragma once
#include <cstdint>

#include <c10/core/ScalarType.h>
#include <cuda_runtime.h>

#include "common/images.h"
#include "lmkan2d/footprints.h"

namespace lmkan {
namespace lmkan2d {

struct RunsArgs {
  const int4* entries;   // [P][entries_stride] sorted (sample, cell, d1, d2) of the chunk
  const float* packed;   // table [n_tiles, P, cells, W]
  const void* gyt;       // grad_y rows [B][ld], ld = n_tiles * W (zero-padded), of the
                         // kernel's row type R (float32, or grad_y's 16-bit dtype)
  const float* borders;  // [G+1]
  float* ws;             // dP [n_tiles, P, cells, W], zeroed before the first chunk
  float* dx;             // grad_x: (f, b) at f * xs_f + b * xs_b (images: the kernels'
                         // dx_images(b) for b * xs_b)
  int64_t b0, entries_stride, ld, xs_f, xs_b;
  int len, seg_len, segments, n_pairs, n_tiles, num_grids;
  int ld32;              // ld as int: a chunk's rows take chunk * ld < 2^31 floats
};

// runs_kernel's launch shape.
constexpr int kRunMinSegment = 32;   // shortest segment (small batches: more warps)
constexpr int kRunMaxThreads = 512;  // <= 128 registers per thread
// runs_kernel with T output tiles per walk: its largest block, and the warps resident per
// SM. T = 1: 108 registers at K = 4 (sm_90), 16 warps. T = 2 holds twice the accumulators
// and table differences: 163 registers under a cap of 168 (a cap of 128 spilled 64 bytes,
// some inside the batch loop; sm_90 ptxas), so 12 warps, in blocks of a divisor of 12 warps
// (a block of 8 would leave 8 resident).
constexpr int runs_max_threads(int tiles_per_walk) {
  return tiles_per_walk == 2 ? 384 : kRunMaxThreads;
}
constexpr int runs_warps_per_sm(int tiles_per_walk) { return tiles_per_walk == 2 ? 12 : 16; }
constexpr int kRunPrefetch = 4;  // grad_y rows per batch; one batch is loaded ahead
// Shared memory per warp: its segment's entries (int4), padded by one batch of entries whose
// row offset is 0 (the prefetch past the segment's end reads them: no bounds checks), and
// its grad_x sums [segment][2]. 16 warps take 99,328 bytes (+ 4 (G+1) of borders), within
// the 99 KB opt-in of sm_86 / sm_89 / sm_120 wherever the cell histogram fits.
constexpr int kRunEntrySlots = kRunSegment + kRunPrefetch;
constexpr int64_t runs_smem_per_warp() {
  return int64_t(kRunEntrySlots) * 16 + int64_t(kRunSegment) * 8;
}

// One chunk's runs_kernel launch: `items` = pairs x segments, a warp each, in blocks of `warps`
// warps with `smem` bytes of shared memory; k outputs a lane (tile / 4), two output tiles per
// walk where two_tiles (k == 4 only), grad_y rows of dtype `rows`.
void launch_runs(const RunsArgs& a, const SampleOffsets& dx_images, bool images,
                 at::ScalarType rows, int k, bool two_tiles, int warps, int64_t smem,
                 int64_t items, cudaStream_t stream);
// One chunk's runs_mma_kernel launch: `items` = pairs x segments, a warp each.
void launch_runs_mma(const RunsArgs& a, const SampleOffsets& dx_images, bool images,
                     int64_t items, cudaStream_t stream);

}  // namespace lmkan2d
}  // namespace lmkan
