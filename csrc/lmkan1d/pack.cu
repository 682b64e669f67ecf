// The 1D layer's table packing (layout.h has the scheme): node values for the forward, slopes
// for grad_x.
#include <c10/cuda/CUDAException.h>

#include "common/table_type.cuh"
#include "lmkan1d/device.cuh"

namespace lmkan {
namespace lmkan1d {
namespace {

// ==========================================================================================
// Table packing (forward values or dx slopes)
// ==========================================================================================
// packed: [tiles][n_in_pad][rows][128] with packed[t][i][r][w] =
//   values (rows = G+1): params[r, 128t + w, i]
//   slopes (rows = G):   (params[r+1, o, i] - params[r, o, i]) / h_r,  o = 128t + w
// and zero for o >= N_out or i >= N_in. params: [G+1, N_out, N_in] of type In; borders: [G+1].
// Every parameter is rounded to the table type (Round) first, so that the slopes of dx
// are those of the table the forward reads; values are stored as Out (Round or float),
// slopes as float.
// One block per (row r, output tile t, 32 inputs): read [128 outputs][32 inputs] of params
// (consecutive threads: consecutive inputs, coalesced), transpose through shared memory
// (rows padded to 33 floats: conflict-free both ways), write [32 inputs][128 outputs] of
// packed (consecutive threads: consecutive outputs, coalesced).
template <typename In, typename Round, typename Out>
__global__ void lmkan1d_pack_kernel(const In* __restrict__ params,
                                    const float* __restrict__ borders,
                                    Out* __restrict__ packed, int n_in, int n_in_pad,
                                    int n_out, int num_grids, int rows, bool slopes,
                                    bool uniform) {
  __shared__ float block_tile[kTileOut][33];
  const int r = blockIdx.x, t = blockIdx.y, i0 = blockIdx.z * 32;
  const float inv_h = !slopes  ? 0.f
                      : uniform ? uniform_scale(borders, num_grids)
                                : 1.f / (borders[r + 1] - borders[r]);
  for (int e = threadIdx.x; e < kTileOut * 32; e += blockDim.x) {
    const int w = e / 32, i = i0 + e % 32;
    const int o = t * kTileOut + w;
    float v = 0.f;
    if (i < n_in && o < n_out) {
      const float c0 = to_float(from_float<Round>(
          to_float(params[(static_cast<int64_t>(r) * n_out + o) * n_in + i])));
      if (slopes) {
        const float c1 = to_float(from_float<Round>(
            to_float(params[(static_cast<int64_t>(r + 1) * n_out + o) * n_in + i])));
        v = (c1 - c0) * inv_h;
      } else {
        v = c0;
      }
    }
    block_tile[w][e % 32] = v;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kTileOut * 32; e += blockDim.x) {
    const int i = i0 + e / kTileOut, w = e % kTileOut;
    if (i < n_in_pad)
      packed[((static_cast<int64_t>(t) * n_in_pad + i) * rows + r) * kTileOut + w] =
          from_float<Out>(block_tile[w][e / kTileOut]);
  }
}

}  // namespace

void launch_pack(dim3 grid, cudaStream_t stream, const void* params, const float* borders,
                 void* packed, int n_in, int n_in_pad, int n_out, int num_grids, int rows,
                 bool slopes, bool uniform, c10::ScalarType params_dtype,
                 c10::ScalarType table_dtype, c10::ScalarType packed_dtype) {
  TORCH_CHECK(packed_dtype == c10::kFloat || (packed_dtype == table_dtype && !slopes),
              "lmkan1d pack: slopes are packed as float32, values as float32 or the table dtype");
  switch_table_type(params_dtype, [&](auto in_tag) {
    using In = decltype(in_tag);
    switch_table_type(table_dtype, [&](auto round_tag) {
      using Round = decltype(round_tag);
      const auto launch = [&](auto out_tag) {
        using Out = decltype(out_tag);
        lmkan1d_pack_kernel<In, Round, Out><<<grid, 256, 0, stream>>>(
            static_cast<const In*>(params), borders, static_cast<Out*>(packed), n_in, n_in_pad,
            n_out, num_grids, rows, slopes, uniform);
      };
      if (packed_dtype == c10::kFloat) {
        launch(float{});
      } else {
        launch(Round{});
      }
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan1d
}  // namespace lmkan
