// A probe, not part of the package: the 2D forward with a 16-bit (bfloat16) table computed
// on tensor cores by a gather MMA (docs/performance.md, "Leads"), to measure before building
// it into lmKAN. Driven by tools/probe_gather_mma.py, which packs the table, checks y
// against a float64 reference and times it beside lmKAN's bfloat16 forward.
//
// Scheme. A block owns 64 outputs (one tile) and NW warps x SW samples (SW = 32, or 16: half
// the accumulators, so that twice the warps fit an SM's registers); it walks the pairs, each
// pair's slice staged into a ring of nbuf buffers as in the package's sample-lanes forward
// (one bulk copy per slice on sm_90, "full" and "empty" mbarriers). A lane computes the cell
// and the weights of its own sample (SW = 16: lanes 16-31 repeat lanes 0-15's); the warp
// then takes its samples in SW / 8 groups of 8, and
// for each group and each 16 outputs issues
//     D[16 outputs x 8 samples] += A[16 outputs x 16 k] * B[16 k x 8 samples]
// twice per half j of the group (mma.sync m16n8k16, bfloat16 in, float32 accumulate), where
// k = 4 s' + c runs over the 4 corners c of the samples s' = 0..3 of half j (samples 4j + s'
// of the group), A holds those corner rows of the table (one ldmatrix.x4.trans: a lane gives
// the address of one 16-byte row piece, 8 outputs of one corner of one sample) and B holds
// the bilinear weights block-diagonally (B[4 s' + c][n] = w_c of sample n when n = 4j + s').
// The weights are split in two bfloat16 terms, w = hi + lo (residual <= 2^-18 w), one MMA
// each.
//
// Bank conflicts. An 8x8 matrix of the ldmatrix reads 8 row pieces: the 4 corners of two
// samples s' = 2m, 2m + 1. The slice is kept twice, and in copy `copy` the 16-byte chunk j
// of row (i1, i2) sits at position j ^ f, f = ((i2 + 2 i1) & 3) | (copy << 2): a sample's 4
// corners take 4 different positions within one half of the 128-byte row (f & 3 differs
// between them), and sample 2m reads copy 0, sample 2m + 1 copy 1, whose positions are in the
// other half: 8 different bank quads, one wavefront, whatever the cells.
//
// Layouts: x float32 [2P][B] (batch-last), packed bfloat16 [n_tiles][P][2][cells][64]
// (swizzled as above), y float32 [O][B], O = 64 n_tiles. B must be a multiple of 32 NW.
// Cells: a uniform grid of G cells on [lo, lo + G / inv_h], clamped, d = u - i (the
// package's grid is non-uniform; its cell costs a few more instructions).
#include <algorithm>
#include <cuda_bf16.h>
#include <cstdint>

#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

#include "common/cp_async.cuh"  // csrc/: bulk copies (sm_90) or cp.async, mbarriers

namespace {
using lmkan::mbarrier_arrive;
using lmkan::init_staging_ring;
using lmkan::mbarrier_wait;
using lmkan::smem_u32;
using lmkan::stage_to_shared;

constexpr int kW = 64;  // outputs per tile = bfloat16 values per table row (128 bytes)

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned addr, unsigned (&a)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// (lo, hi) as two bfloat16 in one word, lo in the low half (the lower k of a B fragment)
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi, float& lo_r, float& hi_r) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  lo_r = __low2float(h);
  hi_r = __high2float(h);
  unsigned u;
  memcpy(&u, &h, 4);
  return u;
}

template <int NW, int SW>
__global__ void __launch_bounds__(NW * 32, 1) gather_mma_forward_kernel(
    const float* __restrict__ x, const __nv_bfloat16* __restrict__ packed, float* __restrict__ y,
    int batch, int n_pairs, int num_grids, float lo, float inv_h, int nbuf) {
  extern __shared__ __align__(1024) unsigned char smem[];
  const int side = num_grids + 1, cells = side * side;
  const unsigned copy_bytes = unsigned(cells) * kW * 2, slice_bytes = 2 * copy_bytes;
  // [nbuf][2 copies][cells][64] bfloat16 (rows 128-byte aligned), then the barriers
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + nbuf * slice_bytes);
  uint64_t* empty = full + nbuf;
  init_staging_ring(full, empty, nbuf);
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane >> 2, t = lane & 3;
  static_assert(SW == 16 || SW == 32, "samples per warp: 16 or 32");
  constexpr int kGroups = SW / 8;  // groups of 8 samples a warp
  const int64_t b = int64_t(blockIdx.x) * (NW * SW) + warp * SW + lane % SW;
  const int tile = blockIdx.y;
  const unsigned char* slices =
      reinterpret_cast<const unsigned char*>(packed) + int64_t(tile) * n_pairs * slice_bytes;
  const unsigned buf0 = smem_u32(smem);

  // the package's ring: pair q goes to buffer q % nbuf once every thread has released that
  // buffer's previous pair (sample_lanes_forward_kernel, forward_sample_lanes.cu)
  const bool producer = lmkan::kBulkCopy ? threadIdx.x == 0 : true;
  const int lead = (lmkan::kBulkCopy || nbuf <= 2) ? nbuf - 1 : nbuf - 2;
  auto refill = [&](int q) {
    const int buf = q % nbuf;
    if (q >= nbuf) mbarrier_wait(empty + buf, (q / nbuf - 1) & 1);
    stage_to_shared(reinterpret_cast<float*>(smem + buf * slice_bytes),
                    reinterpret_cast<const float*>(slices + int64_t(q) * slice_bytes), slice_bytes,
                    full + buf);
  };
  if (producer)
    for (int q = 0; q < min(lead, n_pairs); ++q) refill(q);

  float acc[kGroups][4][4];  // [group q][16 outputs ob][fragment]
#pragma unroll
  for (int q = 0; q < kGroups; ++q)
#pragma unroll
    for (int ob = 0; ob < 4; ++ob)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[q][ob][e] = 0.f;

  // this lane's ldmatrix row: matrix lane / 8 (bit 0: outputs 8-15, bit 1: k 8-15), row lane % 8
  const int k = ((lane >> 4) & 1) * 8 + (lane & 7);
  const int sp = k >> 2, corner = k & 3, half = (lane >> 3) & 1;
  const int copy = sp & 1;

  int buf = 0;
  unsigned phase = 0;
  for (int p = 0; p < n_pairs; ++p) {
    if (producer && p + lead < n_pairs) refill(p + lead);
    const float v1 = __ldg(x + int64_t(2 * p) * batch + b);
    const float v2 = __ldg(x + int64_t(2 * p + 1) * batch + b);
    const float u1 = (v1 - lo) * inv_h, u2 = (v2 - lo) * inv_h;
    const int i1 = min(max(__float2int_rd(u1), 0), num_grids - 1);
    const int i2 = min(max(__float2int_rd(u2), 0), num_grids - 1);
    const float d1 = u1 - float(i1), d2 = u2 - float(i2);
    const int cell = (i1 << 16) | i2;
    // this lane's corner row in either copy of buffer `buf`, as a byte address (128-aligned)
    const unsigned buf_copy = buf0 + buf * slice_bytes + copy * copy_bytes;
    mbarrier_wait(full + buf, phase);
#pragma unroll
    for (int q = 0; q < kGroups; ++q) {
      // B: this lane's two weights of sample 8q + g, corners c0, c0 + 1 (c0 = 2 (t & 1))
      const float sd1 = __shfl_sync(0xffffffffu, d1, 8 * q + g);
      const float sd2 = __shfl_sync(0xffffffffu, d2, 8 * q + g);
      const float a1 = (t & 1) ? sd1 : 1.f - sd1;
      const float wa = a1 * (1.f - sd2), wb = a1 * sd2;
      float ra, rb;
      const unsigned whi = pack_bf16(wa, wb, ra, rb);
      float unused_a, unused_b;
      const unsigned wlo = pack_bf16(wa - ra, wb - rb, unused_a, unused_b);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const bool in0 = g == 4 * j + (t >> 1), in1 = g == 4 * j + 2 + (t >> 1);
        const unsigned bh0 = in0 ? whi : 0u, bh1 = in1 ? whi : 0u;
        const unsigned bl0 = in0 ? wlo : 0u, bl1 = in1 ? wlo : 0u;
        // A: the corner row of this lane's k (sample 4j + sp of the group)
        const int c = __shfl_sync(0xffffffffu, cell, 8 * q + 4 * j + sp);
        const int ci1 = (c >> 16) + (corner >> 1), ci2 = (c & 0xffff) + (corner & 1);
        // chunk (2 ob + half) of the row sits at position (2 ob + half) ^ f
        const unsigned f = unsigned(((ci2 + 2 * ci1) & 3) | (copy << 2));
        const unsigned row = buf_copy + unsigned(ci1 * side + ci2) * (kW * 2);
        const unsigned first = (unsigned(half) ^ f) << 4;  // byte offset of chunk half ^ f
#pragma unroll
        for (int ob = 0; ob < 4; ++ob) {
          unsigned a[4];
          ldmatrix_x4_trans(row | (first ^ (unsigned(ob) << 5)), a);
          mma_bf16(acc[q][ob], a, bh0, bh1);
          mma_bf16(acc[q][ob], a, bl0, bl1);
        }
      }
    }
    mbarrier_arrive(empty + buf);  // this thread is done with the buffer
    if (++buf == nbuf) {
      buf = 0;
      phase ^= 1u;
    }
  }
  // D fragment: outputs ob*16 + g (+8), samples 8q + 2t, 8q + 2t + 1 of the warp
  const int64_t b_warp = int64_t(blockIdx.x) * (NW * SW) + warp * SW;
#pragma unroll
  for (int q = 0; q < kGroups; ++q)
#pragma unroll
    for (int ob = 0; ob < 4; ++ob) {
      const int64_t o = int64_t(tile) * kW + ob * 16 + g;
      const int64_t s = b_warp + 8 * q + 2 * t;
      *reinterpret_cast<float2*>(y + o * batch + s) = make_float2(acc[q][ob][0], acc[q][ob][1]);
      *reinterpret_cast<float2*>(y + (o + 8) * batch + s) = make_float2(acc[q][ob][2], acc[q][ob][3]);
    }
}

}  // namespace

// x float32 [2P][B] (CUDA, contiguous), packed bfloat16 [n_tiles][P][2][cells][64] -> y [64
// n_tiles][B]
torch::Tensor gather_mma_forward(torch::Tensor x, torch::Tensor packed, int64_t num_grids,
                                 double lo, double inv_h, int64_t warps, int64_t warp_samples) {
  TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat && x.is_contiguous() && x.dim() == 2,
              "x: a contiguous float32 CUDA tensor [2P, B]");
  TORCH_CHECK(packed.is_cuda() && packed.scalar_type() == torch::kBFloat16 && packed.is_contiguous() &&
                  packed.dim() == 5 && packed.size(2) == 2 && packed.size(4) == kW,
              "packed: a contiguous bfloat16 CUDA tensor [n_tiles, P, 2, cells, 64]");
  const int64_t batch = x.size(1), n_pairs = x.size(0) / 2, n_tiles = packed.size(0);
  const int64_t side = num_grids + 1;
  TORCH_CHECK(packed.size(1) == n_pairs && packed.size(3) == side * side, "packed: shape mismatch");
  TORCH_CHECK((warp_samples == 32 && (warps == 8 || warps == 16)) ||
                  (warp_samples == 16 && (warps == 16 || warps == 24 || warps == 32)),
              "warps and samples per warp: 8 or 16 warps of 32, or 16, 24 or 32 warps of 16; got ",
              warps, " of ", warp_samples);
  TORCH_CHECK(batch % (warp_samples * warps) == 0, "B must be a multiple of ",
              warp_samples * warps);
  auto y = torch::empty({n_tiles * kW, batch}, x.options());
  // as many ring buffers as 227 KB hold, 2 to 4 (the barriers take 16 bytes a buffer)
  const int64_t slice_bytes = 2 * side * side * kW * 2;
  const int64_t nbuf = std::min<int64_t>(4, (227 * 1024) / (slice_bytes + 16));
  TORCH_CHECK(nbuf >= 2, "num_grids ", num_grids, ": two slices of ", slice_bytes,
              " bytes exceed 227 KB");
  const int64_t smem = nbuf * (slice_bytes + 16);
  const dim3 grid(static_cast<unsigned>(batch / (warp_samples * warps)),
                  static_cast<unsigned>(n_tiles));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto kernel, int threads) {
    TORCH_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) ==
                    cudaSuccess, "the slices' ", smem, " bytes of shared memory are not available");
    kernel<<<grid, threads, smem, stream>>>(x.data_ptr<float>(),
                                            reinterpret_cast<const __nv_bfloat16*>(packed.data_ptr()),
                                            y.data_ptr<float>(), int(batch), int(n_pairs), int(num_grids),
                                            float(lo), float(inv_h), int(nbuf));
  };
  if (warp_samples == 32) {
    if (warps == 8) launch(gather_mma_forward_kernel<8, 32>, 256);
    else launch(gather_mma_forward_kernel<16, 32>, 512);
  } else if (warps == 16) {
    launch(gather_mma_forward_kernel<16, 16>, 512);
  } else if (warps == 24) {
    launch(gather_mma_forward_kernel<24, 16>, 768);
  } else {
    launch(gather_mma_forward_kernel<32, 16>, 1024);
  }
  TORCH_CHECK(cudaGetLastError() == cudaSuccess, "gather_mma_forward: launch failed");
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather_mma_forward", &gather_mma_forward, "gather-MMA 2D forward (probe)");
}
