// The 1D layer's grad_x kernel (layout.h has the scheme): the forward's pipeline on the slopes
// and a transpose-reduce over each warp's outputs.
#include <c10/cuda/CUDAException.h>

#include "common/warp.cuh"
#include "lmkan1d/tiles.cuh"

namespace lmkan {
namespace lmkan1d {
namespace {

// ==========================================================================================
// Backward, dx
// ==========================================================================================

__device__ __forceinline__ float dot4(const float4& a, const float4& b) {
  return fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, a.w * b.w)));
}

// a.packed: slopes, rows = G, n_in_pad = N_in rounded up to even (stages hold input pairs);
// grad_y: like y; grad_x: like x, fully written. Grid: (ceil(B / 256), 1, input splits), 512
// threads; a split's block writes its own inputs' entries (over every output tile).
__global__ void __launch_bounds__(kTileThreads, 1)
lmkan1d_backward_dx_kernel(const TileArgs a, const float* __restrict__ grad_y,
                           float* __restrict__ grad_x, int tiles) {
  extern __shared__ __align__(16) float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const TileSmem t = carve_tile_smem(smem, a, warp, sizeof(float));
  const int64_t s_warp = static_cast<int64_t>(blockIdx.x) * kBlockSamples + warp * kWarpSamples;
  load_borders(t.borders, a.borders, a.num_grids + 1);
  __syncthreads();

  // After the reduce, lane L holds the sum of sample L/2, input (L & 1) of the pair.
  const int64_t s_mine = s_warp + (lane >> 1);
  for (int tile = 0; tile < tiles; ++tile) {
    // grad_y of the warp's samples at this lane's 4 outputs, by output: gyc[c][q] holds
    // samples 4q .. 4q+3 of output o + c (so a float4 row load fills one register group;
    // by sample, the loads needed temporaries that spilled into the pair loop)
    float4 gyc[4][kWarpSamples / 4];
    const int o = tile * kTileOut + lane * 4;
    // Whole warps of batch-last samples read grad_y rows [N_out, B] as float4s, the lane's
    // kWarpSamples consecutive samples of each of its outputs (16 loads; the scalar loads
    // read 64 sectors for 4 bytes each, each lane its own row, as the forward's scalar
    // stores did). grad_y may be a view at any offset: 16-byte alignment checked.
    if (a.batch_last && (a.batch & 3) == 0 && s_warp + kWarpSamples <= a.batch &&
        (reinterpret_cast<uintptr_t>(grad_y) & 15) == 0) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float4* row =
            reinterpret_cast<const float4*>(grad_y + static_cast<int64_t>(o + c) * a.batch + s_warp);
#pragma unroll
        for (int q = 0; q < kWarpSamples / 4; ++q)
          gyc[c][q] = o + c < a.n_out ? __ldg(row + q) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    } else {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
#pragma unroll
        for (int q = 0; q < kWarpSamples / 4; ++q) {
          float g[4];
#pragma unroll
          for (int h = 0; h < 4; ++h) {
            const int64_t s = s_warp + 4 * q + h;
            g[h] = 0.f;
            if (s < a.batch && o + c < a.n_out)
              g[h] = a.batch_last ? grad_y[static_cast<int64_t>(o + c) * a.batch + s]
                                  : grad_y[s * a.n_out + o + c];
          }
          gyc[c][q] = make_float4(g[0], g[1], g[2], g[3]);
        }
      }
    }
    // sample m's 4 outputs (registers chosen at compile time)
    const auto gy = [&](int m) {
      return make_float4(component(gyc[0][m / 4], m % 4), component(gyc[1][m / 4], m % 4),
                         component(gyc[2][m / 4], m % 4), component(gyc[3][m / 4], m % 4));
    };

    run_stages<float>(t, a, tile, s_warp, s_warp, lane,
                      [&](const float* table, int i0, int n, bool) {
      const float4* table4 = reinterpret_cast<const float4*>(table);
#pragma unroll 1
      for (int il = 0; il < n; il += 2) {
        // This lane's entry of the pair's 32 sums; its previous value (earlier output
        // tiles) is loaded first so that the load overlaps the dot products.
        const int i = i0 + il + (lane & 1);
        const bool mine = s_mine < a.batch && i < a.n_in;
        const int64_t off = a.batch_last ? static_cast<int64_t>(i) * a.batch + s_mine
                                         : s_mine * a.n_in + i;
        const float prev = (mine && tile > 0) ? grad_x[off] : 0.f;
        // Row offsets of four samples per broadcast read (rows_only cells).
        const int4* rows_a = reinterpret_cast<const int4*>(t.cells) + il * (kWarpSamples / 4);
        const int4* rows_b = rows_a + kWarpSamples / 4;
        float part[32];  // [sample m][input of the pair]: index 2m + (0 or 1)
#pragma unroll
        for (int q = 0; q < kWarpSamples / 4; ++q) {
          const int4 ra = rows_a[q], rb = rows_b[q];
          const int row_a[4] = {ra.x, ra.y, ra.z, ra.w};
          const int row_b[4] = {rb.x, rb.y, rb.z, rb.w};
#pragma unroll
          for (int h = 0; h < 4; ++h) {
            const int m = 4 * q + h;
            part[2 * m + 0] = dot4(gy(m), table4[row_a[h] + lane]);
            part[2 * m + 1] = dot4(gy(m), table4[row_b[h] + lane]);
          }
        }
        transpose_reduce<32>(part, lane);  // lane L: the sum over the lanes of part[L]
        const float sum = part[0];
        // Tile 0 writes, later tiles add: the same thread owns this entry in every tile.
        if (mine) grad_x[off] = tile == 0 ? sum : prev + sum;
      }
    });
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
