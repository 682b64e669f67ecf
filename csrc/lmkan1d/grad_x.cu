// The 1D layer's grad_x kernel (layout.h has the scheme): the forward's pipeline on the slopes
// and a transpose-reduce over each 8-lane group's outputs.
#include <c10/cuda/CUDAException.h>

#include "common/warp.cuh"
#include "lmkan1d/tiles.cuh"

namespace lmkan {
namespace lmkan1d {
namespace {

// ==========================================================================================
// Backward, dx
// ==========================================================================================

// The pair loop's lane roles: four groups of kGroupLanes lanes, group g = lane / 8 takes the
// warp's samples 4g .. 4g+3, lane r = lane % 8 of it the float4 chunks r, r+8, r+16, r+24 of
// a table row (outputs 4r + 32j .. 4r + 32j + 3, j < 4). One 16-byte load instruction reads,
// per group, 128 contiguous bytes of one row: a wavefront each, no bank conflicts. A (sample,
// input) sum is then spread over a group's 8 lanes, not the warp's 32: the transpose-reduce
// is 7 shuffles per input pair instead of 31, and the row offsets one int4 per group.
constexpr int kGroupLanes = 8;
constexpr int kGroupSamples = kWarpSamples * kGroupLanes / 32;  // 4
constexpr int kLaneChunks = kRowChunks / kGroupLanes;            // 4
static_assert(kGroupSamples == 4 && kLaneChunks == 4, "one int4 of row offsets per group");

// This lane's grad_y of one output tile: gy[h][j][c] = grad_y of sample s_group + h, output
// o_lane + 32 j + c (0 outside the batch or the outputs). 16-byte loads where the layout
// allows (batch-first: 4 outputs of a sample; batch-last: 4 samples of an output), scalar
// loads otherwise; grad_y may be a view at any offset, so its alignment is checked.
__device__ __forceinline__ void load_grad_y(float (&gy)[kGroupSamples][kLaneChunks][4],
                                            const TileArgs& a, const float* __restrict__ grad_y,
                                            int64_t s_group, int o_lane) {
  const bool aligned = (reinterpret_cast<uintptr_t>(grad_y) & 15) == 0;
  if (a.batch_last && aligned && (a.batch & 3) == 0 && s_group + kGroupSamples <= a.batch) {
#pragma unroll
    for (int j = 0; j < kLaneChunks; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int o = o_lane + 32 * j + c;
        const float4 v = o < a.n_out
            ? __ldg(reinterpret_cast<const float4*>(grad_y + static_cast<int64_t>(o) * a.batch +
                                                    s_group))
            : make_float4(0.f, 0.f, 0.f, 0.f);
        gy[0][j][c] = v.x; gy[1][j][c] = v.y; gy[2][j][c] = v.z; gy[3][j][c] = v.w;
      }
    return;
  }
  if (!a.batch_last && aligned && (a.n_out & 3) == 0) {
#pragma unroll
    for (int h = 0; h < kGroupSamples; ++h)
#pragma unroll
      for (int j = 0; j < kLaneChunks; ++j) {
        const int o = o_lane + 32 * j;  // o < n_out: o + 3 < n_out (n_out a multiple of 4)
        const float4 v = s_group + h < a.batch && o < a.n_out
            ? __ldg(reinterpret_cast<const float4*>(grad_y + (s_group + h) * a.n_out + o))
            : make_float4(0.f, 0.f, 0.f, 0.f);
        gy[h][j][0] = v.x; gy[h][j][1] = v.y; gy[h][j][2] = v.z; gy[h][j][3] = v.w;
      }
    return;
  }
#pragma unroll
  for (int h = 0; h < kGroupSamples; ++h)
#pragma unroll
    for (int j = 0; j < kLaneChunks; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t s = s_group + h;
        const int o = o_lane + 32 * j + c;
        gy[h][j][c] = 0.f;
        if (s < a.batch && o < a.n_out)
          gy[h][j][c] = a.batch_last ? grad_y[static_cast<int64_t>(o) * a.batch + s]
                                     : grad_y[s * a.n_out + o];
      }
}

// a.packed: slopes, rows = G, n_in_pad = N_in rounded up to even (stages hold input pairs);
// grad_y: like y; grad_x: like x, fully written. Grid: (ceil(B / 256), 1, input splits), 512
// threads; a split's block writes its own inputs' entries (over every output tile).
__global__ void __launch_bounds__(kTileThreads, 1)
lmkan1d_backward_dx_kernel(const TileArgs a, const float* __restrict__ grad_y,
                           float* __restrict__ grad_x, int tiles) {
  extern __shared__ __align__(16) float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = lane / kGroupLanes, r = lane % kGroupLanes;
  const TileSmem t = carve_tile_smem(smem, a, warp, sizeof(float));
  const int64_t s_warp = static_cast<int64_t>(blockIdx.x) * kBlockSamples + warp * kWarpSamples;
  load_borders(t.borders, a.borders, a.num_grids + 1);
  __syncthreads();

  // After the reduce, lane L holds the sum of sample L/2, input (L & 1) of the pair (the
  // group's lane r: its sample r/2, input r & 1).
  const int64_t s_mine = s_warp + (lane >> 1);
  for (int tile = 0; tile < tiles; ++tile) {
    float gy[kGroupSamples][kLaneChunks][4];
    load_grad_y(gy, a, grad_y, s_warp + group * kGroupSamples, tile * kTileOut + 4 * r);

    run_stages<float>(t, a, tile, s_warp, s_warp, lane,
                      [&](const float* table, int i0, int n, bool) {
      // this lane's chunks of a row start at table4 + row + r (+ 8 j)
      const float4* table4 = reinterpret_cast<const float4*>(table) + r;
      const int4* group_rows = reinterpret_cast<const int4*>(t.cells) + group;
#pragma unroll 1
      for (int il = 0; il < n; il += 2) {
        // This lane's entry of the pair's 32 sums; its previous value (earlier output
        // tiles) is loaded first so that the load overlaps the dot products.
        const int i = i0 + il + (lane & 1);
        const bool mine = s_mine < a.batch && i < a.n_in;
        const int64_t off = a.batch_last ? static_cast<int64_t>(i) * a.batch + s_mine
                                         : s_mine * a.n_in + i;
        const float prev = (mine && tile > 0) ? grad_x[off] : 0.f;
        // Row offsets of the group's 4 samples, inputs il and il + 1 (rows_only cells:
        // int [input][16], one int4 per group).
        const int4 ra = group_rows[il * (kWarpSamples / 4)];
        const int4 rb = group_rows[(il + 1) * (kWarpSamples / 4)];
        const int rows[2][kGroupSamples] = {{ra.x, ra.y, ra.z, ra.w}, {rb.x, rb.y, rb.z, rb.w}};
        float part[2 * kGroupSamples];  // [sample h][input of the pair]: index 2h + (0 or 1)
#pragma unroll
        for (int h = 0; h < kGroupSamples; ++h)
#pragma unroll
          for (int p = 0; p < 2; ++p) {
            const float4* row = table4 + rows[p][h];
            float acc = 0.f;
#pragma unroll
            for (int j = 0; j < kLaneChunks; ++j) {
              const float4 v = row[kGroupLanes * j];
              acc = fmaf(gy[h][j][0], v.x, fmaf(gy[h][j][1], v.y,
                    fmaf(gy[h][j][2], v.z, fmaf(gy[h][j][3], v.w, acc))));
            }
            part[2 * h + p] = acc;
          }
        // lane L: the sum over its group's lanes of part[L % 8]
        transpose_reduce<2 * kGroupSamples, kGroupLanes>(part, lane);
        const float sum = part[0];
        // Tile 0 writes, later tiles add: the same thread owns this entry in every tile.
        if (mine) grad_x[off] = tile == 0 ? sum : prev + sum;
      }
    }, tile);  // tile: the calls before this one (the stages' barrier phases)
  }
}

}  // namespace

void launch_dx(const TileArgs& a, const float* grad_y, float* grad_x, int tiles, dim3 grid,
               size_t smem, cudaStream_t stream) {
  allow_dynamic_smem(reinterpret_cast<const void*>(lmkan1d_backward_dx_kernel), smem);
  lmkan1d_backward_dx_kernel<<<grid, kTileThreads, smem, stream>>>(a, grad_y, grad_x, tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan1d
}  // namespace lmkan
