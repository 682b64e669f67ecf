// The sorted backward's runs kernels: their common arguments and the tensor-core kernel's
// launcher (its footprint is in footprints.h, the choice between the two kernels in plan.h,
// plan_runs). backward_runs.cu holds the host code (transpose, pack, cell sort, chunk loop)
// and runs_kernel (float32 FMAs, any grad_y); backward_runs_mma.cu holds runs_mma_kernel
// (tensor cores, a bfloat16 grad_y with a bfloat16 table: mixed-precision training).
#pragma once
#include <cstdint>

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

// One chunk's runs_mma_kernel launch: `items` = pairs x segments, a warp each.
void launch_runs_mma(const RunsArgs& a, const SampleOffsets& dx_images, bool images,
                     int64_t items, cudaStream_t stream);

}  // namespace lmkan2d
}  // namespace lmkan
