// The 1D layer's forward kernel (layout.h has the scheme): the tiled lookup on the staged
// node values (or, for second derivatives, the slopes), far inputs, batch-last images.
#include <c10/cuda/CUDAException.h>

#include "common/images.h"
#include "common/table_type.cuh"
#include "lmkan1d/tiles.cuh"

namespace lmkan {
namespace lmkan1d {
namespace {

// ==========================================================================================
// Forward
// ==========================================================================================
// The rest of the far inputs' terms, f_i + ((d 2^-64)(f_{i+1} - f_i)) 2^64 less the f_i that
// the main loop added (device.cuh, kFarCells). Rare: a warp runs it for a stage only when one
// of its inputs there is far, and it reads x again rather than keeping d in shared memory.
template <typename T, bool kImages>
__device__ __forceinline__ void add_far_terms(float4 (&acc)[kWarpSamples], const T* table,
                                           const TileArgs& a, int64_t s_warp, int64_t x_base,
                                           int i0, int n, const float* borders_s, int lane) {
#pragma unroll 1
  for (int il = 0; il < n; ++il) {
    const int i = i0 + il;
    if (i >= a.n_in) break;
#pragma unroll
    for (int m = 0; m < kWarpSamples; ++m) {
      const int64_t s = s_warp + m;
      if (s >= a.batch) break;
      const float v =
          !a.batch_last ? a.x[s * a.n_in + i]
          : kImages ? a.x[x_base + static_cast<int64_t>(i) * a.image_len + m]
                    : a.x[static_cast<int64_t>(i) * a.batch + s];
      const Cell c = find_cell(v, borders_s, a.num_grids, a.uniform);
      if (!is_far(v, c.d)) continue;  // the same v on all lanes: no divergence
      const float d = far_scaled_d(v, borders_s, a.num_grids, a.uniform, c.index);
      const int row = (il * a.rows + c.index) * kRowChunks;
      const float4 lo = load_table4(table, row + lane);
      const float4 hi = load_table4(table, row + kRowChunks + lane);
      float4& r = acc[m];
      r.x += d * (hi.x - lo.x) * kFarUnscale;
      r.y += d * (hi.y - lo.y) * kFarUnscale;
      r.z += d * (hi.z - lo.z) * kFarUnscale;
      r.w += d * (hi.w - lo.w) * kFarUnscale;
    }
  }
}
// a.packed: values of type T (float, __half, __nv_bfloat16), rows = G+1, n_in_pad = N_in;
// y: [N_out, B] (batch_last) or [B, N_out]. Grid: (ceil(B / 256), ceil(N_out / 128), input
// splits), 512 threads. Shared memory: tile_smem_bytes.
// kSlopes (T = float): a.packed holds the slopes (rows = G) and the cells the weights
// a.weights[s, i]; y[s, o] = sum_i weights[s, i] slope[k, o, i], one row read per term.
// kImages: x and y hold images (TileArgs).
template <typename T, bool kSlopes = false, bool kImages = false>
__global__ void __launch_bounds__(kTileThreads, 1)
lmkan1d_forward_kernel(const TileArgs a, float* __restrict__ y) {
  extern __shared__ __align__(16) float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const TileSmem t = carve_tile_smem(smem, a, warp, sizeof(T));
  const int tile = blockIdx.y;
  const int64_t s_warp = static_cast<int64_t>(blockIdx.x) * kBlockSamples + warp * kWarpSamples;
  load_borders(t.borders, a.borders, a.num_grids + 1);
  __syncthreads();

  float4 acc[kWarpSamples];
#pragma unroll
  for (int m = 0; m < kWarpSamples; ++m) acc[m] = make_float4(0.f, 0.f, 0.f, 0.f);

  // x's offset of sample s_warp: one division per warp for images (common/images.h)
  const int64_t x_base = kImages ? SampleOffsets{1, a.image_len, a.image_stride_x}(s_warp) : s_warp;
  run_stages<T, kSlopes, kImages>(t, a, tile, s_warp, x_base, lane,
                                  [&](const T* table, int i0, int n, bool far) {
    // This lane's 4 values of row 0: a row's address is then one multiply-add of its offset
    // (row + lane took an add and a multiply-add per row pair)
    const T* const table_lane = table + 4 * lane;
#pragma unroll 1
    for (int il = 0; il < n; ++il) {
      // Two samples' cells per broadcast read: (row, d), or (row, weight) of a slope row.
      const float4* cells4 = reinterpret_cast<const float4*>(t.cells + il * kWarpSamples);
#pragma unroll
      for (int m2 = 0; m2 < kWarpSamples / 2; ++m2) {
        const float4 c = cells4[m2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = __float_as_int(h == 0 ? c.x : c.z);
          const float d = h == 0 ? c.y : c.w;
          float4& r = acc[2 * m2 + h];
          if constexpr (kSlopes) {  // one slope row, weight d
            const float4 s = load_table4(table_lane, row);
            r.x = fmaf(d, s.x, r.x);
            r.y = fmaf(d, s.y, r.y);
            r.z = fmaf(d, s.z, r.z);
            r.w = fmaf(d, s.w, r.w);
          } else {  // two value rows, weights (1 - d, d)
            const float4 lo = load_table4(table_lane, row);
            const float4 hi = load_table4(table_lane, row + kRowChunks);
            const float w0 = 1.f - d;
            r.x = fmaf(w0, lo.x, fmaf(d, hi.x, r.x));
            r.y = fmaf(w0, lo.y, fmaf(d, hi.y, r.y));
            r.z = fmaf(w0, lo.z, fmaf(d, hi.z, r.z));
            r.w = fmaf(w0, lo.w, fmaf(d, hi.w, r.w));
          }
        }
      }
    }
    if constexpr (!kSlopes) {
      if (far) add_far_terms<T, kImages>(acc, table, a, s_warp, x_base, i0, n, t.borders, lane);
    }
  });

  y += blockIdx.z * a.split_stride;  // this split's partial sums (0 without splits)
  const int o = tile * kTileOut + lane * 4;
  if constexpr (kImages) {
    // images (batch-last, L a multiple of kWarpSamples, so this warp's samples are L's
    // consecutive positions of one image): the float4 stores below, at the image's offsets
    if (s_warp >= a.batch) return;
    float* const at = y + SampleOffsets{1, a.image_len, a.image_stride_y}(s_warp);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (o + c >= a.n_out) continue;
      float* row = at + static_cast<int64_t>(o + c) * a.image_len;
#pragma unroll
      for (int q = 0; q < kWarpSamples / 4; ++q)
        *reinterpret_cast<float4*>(row + 4 * q) =
            make_float4(component(acc[4 * q], c), component(acc[4 * q + 1], c),
                        component(acc[4 * q + 2], c), component(acc[4 * q + 3], c));
    }
    return;
  }
  if (a.batch_last && (a.batch & 3) == 0 && s_warp + kWarpSamples <= a.batch) {
    // y rows [N_out, B]: the lane writes its kWarpSamples consecutive samples of each of its
    // outputs as float4s (16 stores of 16 bytes; scalar stores wrote 64 sectors of 4 bytes,
    // each lane its own row: they were most of a split launch's time, ncu on the H200)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (o + c >= a.n_out) continue;
      float* row = y + static_cast<int64_t>(o + c) * a.batch + s_warp;
#pragma unroll
      for (int q = 0; q < kWarpSamples / 4; ++q)
        *reinterpret_cast<float4*>(row + 4 * q) =
            make_float4(component(acc[4 * q], c), component(acc[4 * q + 1], c),
                        component(acc[4 * q + 2], c), component(acc[4 * q + 3], c));
    }
    return;
  }
  const bool vector_store = !a.batch_last && (a.n_out & 3) == 0 && o < a.n_out;
#pragma unroll
  for (int m = 0; m < kWarpSamples; ++m) {
    const int64_t s = s_warp + m;
    if (s >= a.batch) continue;
    if (vector_store) {
      *reinterpret_cast<float4*>(y + s * a.n_out + o) = acc[m];
      continue;
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (o + c >= a.n_out) continue;
      const int64_t off = a.batch_last ? static_cast<int64_t>(o + c) * a.batch + s : s * a.n_out + o + c;
      y[off] = component(acc[m], c);
    }
  }
}

}  // namespace

void launch_forward(const TileArgs& a, float* y, dim3 grid, size_t smem, cudaStream_t stream,
                    c10::ScalarType table_dtype, bool images) {
  switch_table_type(table_dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto kernel = images ? lmkan1d_forward_kernel<T, false, true> : lmkan1d_forward_kernel<T>;
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<grid, kTileThreads, smem, stream>>>(a, y);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_slope_forward(const TileArgs& a, float* y, dim3 grid, size_t smem,
                          cudaStream_t stream) {
  allow_dynamic_smem(reinterpret_cast<const void*>(lmkan1d_forward_kernel<float, true>), smem);
  lmkan1d_forward_kernel<float, true><<<grid, kTileThreads, smem, stream>>>(a, y);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan1d
}  // namespace lmkan
