// grad_params of the deterministic (or declined) 2D backward: dp_sorted_kernel (cell-sorted
// chunks, accumulator in shared memory) and dp_kernel (per-warp accumulators, in shared or
// global memory). The schemes are in backward.cpp's comment and beside the kernels.
#include <algorithm>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/static_switch.h"
#include "lmkan2d/device.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

// ---- dP by cell-sorted chunks ----------------------------------------------------------
//
// A block owns one (pair, output tile) and a batch range, with the accumulator [cells][W] of
// that slice in shared memory. The range is walked in chunks of C = warps * 32 * kSortSpl
// samples; each chunk is counting-sorted by cell (stable: ranks follow sample order, so the
// result is deterministic), then the warps walk the cells: for a cell, a lane keeps the 4
// corners of its K columns in registers over the whole run of samples in that cell and
// touches the accumulator once per run (a run is ~C / cells samples: 25 at G = 8), instead
// of a read-modify-write of 4 rows per sample. grad_y is read as rows of a batch-first copy
// [B][n_tiles * W] (zero-padded columns), so a warp's read of a sample's W outputs is one
// coalesced line, served from L2/L1.
// Cells are processed in 4 phases by the parity of (i1, i2): cells of one phase have
// disjoint corners, so the warps of a phase never touch the same accumulator row.
// (kSortSpl and dp_sorted_smem_bytes, the kernel's shared memory: footprints.h)

// Blocks of up to 16 warps at K = 4 (one block per SM: its accumulator rows are long), 8
// elsewhere (four blocks per SM at <= 64 registers); measured on the H100, G = 8.
constexpr int dp_sorted_max_warps(int k) { return k == 4 ? 16 : 8; }

// kSlopes: the parameters' part of d<w, grad_x>/dP (lmkan2d_slope_grad_params): the sorted
// entries carry the corner weights of w . grad f (slope_pair_cell) in place of (d1, d2).
template <int K, bool kSlopes = false>
__global__ void __launch_bounds__(32 * dp_sorted_max_warps(K), K == 4 ? 1 : 4)
dp_sorted_kernel(const float* __restrict__ x,       // x: (f, b) at f*xs_f + b*xs_b
                 const float* __restrict__ w,       // kSlopes: the weights, x's layout
                 const float* __restrict__ borders,  // [G+1]
                 const float* __restrict__ gyt,      // grad_y rows [B][ld], ld = n_tiles * W
                 float* __restrict__ ws,             // [splits, n_tiles, P, cells, W]
                 int64_t batch, int n_pairs, int n_tiles, int num_grids, int64_t per_split,
                 int64_t xs_f, int64_t xs_b) {
  constexpr int W = 32 * K;
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1, cells = side * side;
  const int warps = blockDim.x / 32, chunk = warps * 32 * kSortSpl;
  float* acc = smem;                                            // [cells][W]
  int* wcount = reinterpret_cast<int*>(acc + int64_t(cells) * W);  // [warps][cells]
  int* offs = wcount + warps * cells;                           // [cells + 1]
  float4* sorted = reinterpret_cast<float4*>(
      (reinterpret_cast<uintptr_t>(offs + cells + 1) + 15) & ~uintptr_t(15));  // [chunk]
  float* s_borders = reinterpret_cast<float*>(sorted + chunk);  // [side]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int p = blockIdx.x, tile_index = blockIdx.y;
  const int64_t ld = int64_t(n_tiles) * W;
  const int64_t b_begin = blockIdx.z * per_split;
  const int64_t b_end = min(batch, b_begin + per_split);

  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = borders[i];
  for (int i = threadIdx.x; i < cells * W / 4; i += blockDim.x)
    reinterpret_cast<float4*>(acc)[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  const float* gy_tile = gyt + tile_index * W + K * lane;

  for (int64_t b0 = b_begin; b0 < b_end; b0 += chunk) {
    for (int i = threadIdx.x; i < warps * cells; i += blockDim.x) wcount[i] = 0;
    __syncthreads();  // counts zeroed (borders written, previous chunk consumed)
    // 1. cells of the warp's samples (in sample order) and their rank among the warp's
    //    earlier samples of the same cell
    int key[kSortSpl], rank[kSortSpl];
    float d1[kSortSpl], d2[kSortSpl], d3[kSortSpl];  // (d1, d2, -) or the 3 slope weights
    int* my_count = wcount + warp * cells;
#pragma unroll
    for (int t = 0; t < kSortSpl; ++t) {
      const int s = (warp * kSortSpl + t) * 32 + lane;
      const int64_t b = b0 + s;
      key[t] = -1 - lane;  // unique and never counted for samples past the range
      d1[t] = d2[t] = d3[t] = 0.f;
      if (b < b_end) {
        const float4 c = kSlopes
                             ? slope_pair_cell(x, w, b, p, s_borders, num_grids, xs_f, xs_b)
                             : pair_cell(x, b, p, s_borders, num_grids, xs_f, xs_b, nullptr);
        key[t] = __float_as_int(c.x);
        d1[t] = c.y;
        d2[t] = c.z;
        d3[t] = c.w;
      }
      const unsigned peers = __match_any_sync(0xffffffffu, key[t]);
      const int before = key[t] >= 0 ? my_count[key[t]] : 0;
      __syncwarp();  // every peer has read the count before the leader adds to it
      if (key[t] >= 0 && lane == __ffs(peers) - 1) my_count[key[t]] = before + __popc(peers);
      __syncwarp();
      rank[t] = before + __popc(peers & ((1u << lane) - 1u));
    }
    __syncthreads();
    // 2. per cell: the warps' counts become their exclusive prefix (warp order = sample
    //    order); offs[c] = the cell's total, then an exclusive scan over the cells
    for (int c = threadIdx.x; c < cells; c += blockDim.x) {
      int run = 0;
      for (int w = 0; w < warps; ++w) {
        const int n = wcount[w * cells + c];
        wcount[w * cells + c] = run;
        run += n;
      }
      offs[c] = run;
    }
    __syncthreads();
    if (warp == 0) {
      int carry = 0;
      for (int base = 0; base < cells; base += 32) {
        const int c = base + lane;
        const int v = c < cells ? offs[c] : 0;
        const int incl = warp_inclusive_scan(v, lane);
        if (c < cells) offs[c] = carry + incl - v;
        carry += __shfl_sync(0xffffffffu, incl, 31);
      }
      if (lane == 0) offs[cells] = carry;
    }
    __syncthreads();
    // 3. scatter (chunk-relative sample index, d1, d2, -) or (index, slope weights) to the
    //    sorted position
#pragma unroll
    for (int t = 0; t < kSortSpl; ++t) {
      if (key[t] >= 0) {
        const int s = (warp * kSortSpl + t) * 32 + lane;
        const int pos = offs[key[t]] + wcount[warp * cells + key[t]] + rank[t];
        sorted[pos] = make_float4(__int_as_float(s), d1[t], d2[t], kSlopes ? d3[t] : 0.f);
      }
    }
    __syncthreads();
    // 4. walk the cells, in 4 phases of disjoint corners
    for (int phase = 0; phase < 4; ++phase) {
      const int a = phase >> 1, bpar = phase & 1;
      const int ni = (num_grids - a + 1) / 2, nj = (num_grids - bpar + 1) / 2;
      for (int idx = warp; idx < ni * nj; idx += warps) {
        const int c = (a + 2 * (idx / nj)) * side + bpar + 2 * (idx % nj);
        const int s0 = offs[c], s1 = offs[c + 1];
        if (s0 == s1) continue;
        float r[4][K];
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int k = 0; k < K; ++k) r[j][k] = 0.f;
#pragma unroll 4
        for (int s = s0; s < s1; ++s) {
          const float4 v = sorted[s];  // broadcast
          float g[K];
          load_k<K, true>(gy_tile + (b0 + __float_as_int(v.x)) * ld, g);
          add_info<K, kSlopes>(r, g, v);
        }
        float* q = acc + int64_t(c) * W + K * lane;
        float old[4][K];
        load_corners<K>(q, side, old);
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int k = 0; k < K; ++k) old[j][k] += r[j][k];
        store_corners<K>(q, side, old);
      }
      __syncthreads();  // the next phase's cells share corners with this one's
    }
  }
  // 5. the slice's accumulator -> its workspace copy (one writer per element)
  float4* dst = reinterpret_cast<float4*>(
      ws + ((blockIdx.z * int64_t(n_tiles) + tile_index) * n_pairs + p) * int64_t(cells) * W);
  for (int i = threadIdx.x; i < cells * W / 4; i += blockDim.x)
    dst[i] = reinterpret_cast<const float4*>(acc)[i];
}


// kSlopes: the parameters' part of d<w, grad_x>/dP (the op lmkan2d_slope_grad_params): the
// corner weights of w . grad f (slope_pair_cell) instead of the bilinear weights.
template <int TILE, bool ACC_IN_SMEM, bool kSlopes = false>
__global__ void __launch_bounds__(1024)
dp_kernel(const float* __restrict__ x,        // x: (f, b) at f*xs_f + b*xs_b
          const float* __restrict__ w,        // kSlopes: the weights, x's layout
          const float* __restrict__ borders,  // [G+1]
          const float* __restrict__ gy,       // grad_y: (o, b) at o*gs_f + b*gs_b
          float* ws,                          // [splits or 1, n_tiles, P, cells, W]
          int64_t batch, int n_out, int n_pairs, int num_grids, int chunk, int64_t per_split,
          bool batch_last, bool use_atomics, bool per_split_copies,
          int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b) {
  constexpr int K = TILE / 4, W = bwd_width(TILE);
  extern __shared__ __align__(16) float smem[];
  const int side = num_grids + 1;
  const int cells = side * side;
  const int warps = blockDim.x / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float* s_acc = smem;                                              // [warps][cells][W]
  float* gy_s = smem + (ACC_IN_SMEM ? int64_t(warps) * cells * W : 0);  // [chunk][W]
  float4* info = reinterpret_cast<float4*>(gy_s + int64_t(chunk) * W);  // [warps][chunk]
  float* s_borders = reinterpret_cast<float*>(info + int64_t(warps) * chunk);  // [side]
  float4* my_info = info + int64_t(warp) * chunk;

  const int n_tiles = (n_out + W - 1) / W;
  const int tile_index = blockIdx.x % n_tiles;
  const int p = (blockIdx.x / n_tiles) * warps + warp;
  const bool has_pair = p < n_pairs;
  const int64_t region = int64_t(cells) * W;  // floats of one (tile, pair) accumulator
  // This warp's (tile, pair) region of the split's copy of the workspace.
  const int copy = per_split_copies ? blockIdx.y : 0;
  float* ws_region =
      ws + ((int64_t(copy) * n_tiles + tile_index) * n_pairs + (has_pair ? p : 0)) * region;
  // Each lane owns columns lane*K .. lane*K+K-1 of its warp's accumulator.
  float* acc = (ACC_IN_SMEM ? s_acc + int64_t(warp) * region : ws_region) + lane * K;

  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = borders[i];
  if constexpr (ACC_IN_SMEM) {
    float zero[K];
#pragma unroll
    for (int k = 0; k < K; ++k) zero[k] = 0.f;
    for (int c = 0; c < cells; ++c) store_k<K>(acc + c * W, zero);
  }  // (the global-memory accumulator comes zeroed)

  const int64_t b_begin = blockIdx.y * per_split;
  const int64_t b_end = min(batch, b_begin + per_split);
  for (int64_t b0 = b_begin; b0 < b_end; b0 += chunk) {
    const int cs = static_cast<int>(min(int64_t(chunk), b_end - b0));
    __syncthreads();  // previous chunk consumed (borders written, first time)
    for (int i = threadIdx.x; i < W * cs; i += blockDim.x) {
      // batch-last: neighbouring threads read neighbouring samples of one output row.
      const int t = batch_last ? i / cs : i % W;
      const int s = batch_last ? i % cs : i / W;
      const int o = tile_index * W + t;
      gy_s[s * W + t] = o < n_out ? gy[int64_t(o) * gs_f + (b0 + s) * gs_b] : 0.f;
    }
    __syncthreads();  // borders visible before the cells below use them
    if (!has_pair) continue;
    for (int s = lane; s < cs; s += 32)
      my_info[s] = kSlopes ? slope_pair_cell(x, w, b0 + s, p, s_borders, num_grids, xs_f, xs_b)
                           : pair_cell(x, b0 + s, p, s_borders, num_grids, xs_f, xs_b, nullptr);
    __syncwarp();
    // Two samples at a time: their cells' corners are disjoint (the usual case), the same
    // cell (one read-modify-write), or overlapping (one after the other). Disjoint corners
    // let the 8 loads of both samples be in flight together, which matters when few warps
    // fit on an SM (large G).
    int s = 0;
    for (; s + 1 < cs; s += 2) {
      const float4 c0 = my_info[s], c1 = my_info[s + 1];
      const int i0 = __float_as_int(c0.x), i1 = __float_as_int(c1.x);
      float g0[K], g1[K];
      load_k<K>(gy_s + s * W + lane * K, g0);
      load_k<K>(gy_s + (s + 1) * W + lane * K, g1);
      const int gap = abs(i1 - i0);
      if (gap == 0) {
        float r[4][K];
        load_corners<K>(acc + i0 * W, side, r);
        add_info<K, kSlopes>(r, g0, c0);
        add_info<K, kSlopes>(r, g1, c1);
        store_corners<K>(acc + i0 * W, side, r);
      } else if (gap == 1 || gap == side - 1 || gap == side || gap == side + 1) {
        update_cell_info<K, kSlopes>(acc + i0 * W, side, g0, c0);
        update_cell_info<K, kSlopes>(acc + i1 * W, side, g1, c1);
      } else {
        float r0[4][K], r1[4][K];
        load_corners<K>(acc + i0 * W, side, r0);
        load_corners<K>(acc + i1 * W, side, r1);
        add_info<K, kSlopes>(r0, g0, c0);
        add_info<K, kSlopes>(r1, g1, c1);
        store_corners<K>(acc + i0 * W, side, r0);
        store_corners<K>(acc + i1 * W, side, r1);
      }
    }
    if (s < cs) {
      const float4 c = my_info[s];
      float g[K];
      load_k<K>(gy_s + s * W + lane * K, g);
      update_cell_info<K, kSlopes>(acc + __float_as_int(c.x) * W, side, g, c);
    }
    __syncwarp();  // my_info is rewritten by other lanes in the next chunk
  }
  if constexpr (ACC_IN_SMEM) {
    if (has_pair) {
      float* dst = ws_region + lane * K;
      for (int c = 0; c < cells; ++c) {
        float v[K];
        load_k<K>(acc + c * W, v);
        if (use_atomics) {
#pragma unroll
          for (int k = 0; k < K; ++k) atomicAdd(dst + c * W + k, v[k]);
        } else {
          store_k<K>(dst + c * W, v);
        }
      }
    }
  }
}


// Largest workspace (bytes) that the split of the batch may ask for when each split keeps
// its own copy of dP (deterministic, or the global-memory accumulator).
constexpr int64_t kDpWorkspaceBytes = int64_t(1) << 30;

// weights (kSlopes only): like x.
template <int TILE, bool kSlopes = false>
at::Tensor launch_dp(const at::Tensor& x, const at::Tensor& borders, const at::Tensor& gy,
                     int64_t batch, int n_out, int n_pairs, int num_grids, int block, bool fast,
                     bool batch_last, bool deterministic, const DeviceLimits& lim,
                     int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b,
                     const at::Tensor& weights = at::Tensor()) {
  constexpr int W = bwd_width(TILE);
  const int n_tiles = (n_out + W - 1) / W;
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  // Warps (one pair each) per block: at most block_size_backward / 32 and the pairs; in
  // shared memory as many accumulators as fit in half an SM (normal: 2 blocks per SM) or the
  // whole opt-in memory (fast); fast mode also stages larger chunks of samples.
  const int max_warps = std::min(block / 32, n_pairs);
  const int64_t budget = fast ? lim.smem_optin
                              : std::min<int64_t>(
                                    lim.smem_per_sm / 2 - kReservedSmemPerBlock, lim.smem_optin);
  // Fast mode with a shared accumulator and no more cells than the largest chunk also sorts
  // each chunk by cell (runs of one cell accumulate in registers).
  const int chunk_pref = fast ? kDpMaxChunk : 64;
  int warps = 0, chunk = 0;
  const bool in_smem = dp_smem_bytes(num_grids, TILE, 1, kDpMinChunk, true) <= lim.smem_optin;
  if (in_smem) {
    for (int pass = 0; pass < 2 && warps == 0; ++pass) {
      const int64_t limit = pass == 0 ? budget : lim.smem_optin;
      for (int w = max_warps; w >= 1 && warps == 0; --w)
        for (int c = chunk_pref; c >= kDpMinChunk && warps == 0; c /= 2)
          if (dp_smem_bytes(num_grids, TILE, w, c, true) <= limit) { warps = w; chunk = c; }
    }
  } else {
    warps = max_warps;
    chunk = chunk_pref;
  }
  const int64_t smem = dp_smem_bytes(num_grids, TILE, warps, chunk, in_smem);
  const int64_t blocks_xy = int64_t(n_tiles) * ((n_pairs + warps - 1) / warps);
  const int64_t resident = std::max<int64_t>(
      1, std::min<int64_t>(lim.smem_per_sm / (smem + kReservedSmemPerBlock),
                         lim.max_threads_per_sm / (32 * warps)));
  const int64_t target = 2 * int64_t(lim.num_sms) * resident;
  int64_t splits = std::max<int64_t>(1, (target + blocks_xy - 1) / blocks_xy);
  splits = std::min<int64_t>({splits, std::max<int64_t>(1, batch / (4 * chunk)), 65535});
  // Each split keeps its own copy: deterministic (summed in order below) or the global
  // accumulator (each warp's region private). Keep that workspace bounded.
  const bool per_split_copies = deterministic || !in_smem;
  const int64_t copy_bytes = int64_t(n_tiles) * n_pairs * cells * W * 4;
  if (per_split_copies)
    splits = std::max<int64_t>(1, std::min<int64_t>(splits, kDpWorkspaceBytes / copy_bytes));
  int64_t per_split = (batch + splits - 1) / splits;
  per_split = (per_split + chunk - 1) / chunk * chunk;
  splits = (batch + per_split - 1) / per_split;
  const bool atomics = !per_split_copies && splits > 1;
  const int64_t copies = per_split_copies ? splits : 1;
  // Written in full by stores when each region has one writer; zeroed for atomics and for
  // the global-memory accumulator.
  const auto options = x.options();
  at::Tensor ws = (atomics || !in_smem)
                      ? at::zeros({copies, n_tiles, n_pairs, cells, W}, options)
                      : at::empty({copies, n_tiles, n_pairs, cells, W}, options);
  const auto kernel = in_smem ? dp_kernel<TILE, true, kSlopes> : dp_kernel<TILE, false, kSlopes>;
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  dim3 grid(static_cast<unsigned>(blocks_xy), static_cast<unsigned>(splits));
  kernel<<<grid, warps * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), kSlopes ? weights.data_ptr<float>() : nullptr, borders.data_ptr<float>(), gy.data_ptr<float>(), ws.data_ptr<float>(),
      batch, n_out, n_pairs, num_grids, chunk, per_split, batch_last, atomics, per_split_copies,
      xs_f, xs_b, gs_f, gs_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return unpack_dp(ws, num_grids, n_out);
}

// Sorted-chunk dP (dp_sorted_kernel), where plan_backward found its accumulator fits in
// shared memory. Deterministic: each split writes its own copy, summed in a fixed order.
// weights (kSlopes only): like x.
template <int TILE, bool kSlopes = false>
at::Tensor launch_dp_sorted(const at::Tensor& x, const at::Tensor& borders, const at::Tensor& gy,
                            int64_t batch, int n_out, int n_pairs, int num_grids, int block,
                            bool fast, bool batch_last, const DeviceLimits& lim, int64_t xs_f,
                            int64_t xs_b, const at::Tensor& weights = at::Tensor()) {
  constexpr int K = TILE / 4, W = bwd_width(TILE);
  const int n_tiles = (n_out + W - 1) / W;
  const int64_t cells = int64_t(num_grids + 1) * (num_grids + 1);
  // Fast mode: the whole opt-in shared memory (more warps, longer chunks, longer runs per
  // cell). Normal mode: two blocks per SM, with fewer warps if needed, but never fewer than
  // 4; where even that does not fit in half an SM it runs the fast configuration (measured
  // on the H100, G = 26: 4-warp blocks, one per SM, took 189 ms against 71 ms).
  int warps = std::min(std::max(block / 32, 1), dp_sorted_max_warps(K));
  if (!fast) {
    const int64_t half_sm =
        std::min<int64_t>(lim.smem_per_sm / 2 - kReservedSmemPerBlock, lim.smem_optin);
    int w = warps;
    while (w > 4 && dp_sorted_smem_bytes(num_grids, W, w) > half_sm) --w;
    if (dp_sorted_smem_bytes(num_grids, W, w) <= half_sm) warps = w;
  }
  while (warps > 1 && dp_sorted_smem_bytes(num_grids, W, warps) > lim.smem_optin) --warps;
  TORCH_INTERNAL_ASSERT(dp_sorted_smem_bytes(num_grids, W, warps) <= lim.smem_optin,
                        "plan_backward chose dp_sorted_kernel where its accumulator does not fit");
  const int64_t smem = dp_sorted_smem_bytes(num_grids, W, warps);
  const int64_t chunk = int64_t(warps) * 32 * kSortSpl;
  // grad_y as rows [B][n_tiles * W] with zero padding past n_out (one launch at most)
  const int64_t ld = int64_t(n_tiles) * W;
  const at::Tensor gyt = batch_last ? transpose(gy, ld) : pad_columns(gy, ld);
  // split the batch until the grid fills the device (each split >= 2 chunks), within a
  // bounded workspace
  const int64_t blocks_xy = int64_t(n_tiles) * n_pairs;
  const int64_t resident = std::max<int64_t>(
      1, std::min<int64_t>(lim.smem_per_sm / (smem + kReservedSmemPerBlock),
                         lim.max_threads_per_sm / (32 * warps)));
  const int64_t target = 2 * int64_t(lim.num_sms) * resident;
  int64_t splits = std::max<int64_t>(1, (target + blocks_xy - 1) / blocks_xy);
  splits = std::min<int64_t>({splits, std::max<int64_t>(1, batch / (2 * chunk)), 65535});
  const int64_t copy_bytes = int64_t(n_tiles) * n_pairs * cells * W * 4;
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, kDpWorkspaceBytes / copy_bytes));
  int64_t per_split = (batch + splits - 1) / splits;
  per_split = (per_split + chunk - 1) / chunk * chunk;
  splits = (batch + per_split - 1) / per_split;
  at::Tensor ws = at::empty({splits, n_tiles, n_pairs, cells, W}, x.options());
  allow_dynamic_smem(reinterpret_cast<const void*>(dp_sorted_kernel<K, kSlopes>), smem);
  dim3 grid(static_cast<unsigned>(n_pairs), static_cast<unsigned>(n_tiles),
            static_cast<unsigned>(splits));
  dp_sorted_kernel<K, kSlopes><<<grid, warps * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), kSlopes ? weights.data_ptr<float>() : nullptr, borders.data_ptr<float>(), gyt.data_ptr<float>(), ws.data_ptr<float>(),
      batch, n_pairs, n_tiles, num_grids, per_split, xs_f, xs_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return unpack_dp(ws, num_grids, n_out);
}

}  // namespace

at::Tensor dp_by_sorted_chunks(const at::Tensor& x, const at::Tensor& borders,
                               const at::Tensor& gy, int tile, int64_t batch, int n_out,
                               int n_pairs, int num_grids, int block, bool fast, bool batch_last,
                               const DeviceLimits& lim, int64_t xs_f, int64_t xs_b) {
  return switch_value<4, 8, 16>(tile, [&](auto tile_c) {
    constexpr int kTile = decltype(tile_c)::value;
    return launch_dp_sorted<kTile>(x, borders, gy, batch, n_out, n_pairs, num_grids, block, fast,
                                   batch_last, lim, xs_f, xs_b);
  });
}

at::Tensor dp_by_warp_accumulators(const at::Tensor& x, const at::Tensor& borders,
                                   const at::Tensor& gy, int tile, int64_t batch, int n_out,
                                   int n_pairs, int num_grids, int block, bool fast,
                                   bool batch_last, bool deterministic, const DeviceLimits& lim,
                                   int64_t xs_f, int64_t xs_b, int64_t gs_f, int64_t gs_b) {
  return switch_value<4, 8, 16>(tile, [&](auto tile_c) {
    constexpr int kTile = decltype(tile_c)::value;
    return launch_dp<kTile>(x, borders, gy, batch, n_out, n_pairs, num_grids, block, fast,
                            batch_last, deterministic, lim, xs_f, xs_b, gs_f, gs_b);
  });
}

at::Tensor slope_dp_by_warp_accumulators(const at::Tensor& x, const at::Tensor& weights,
                                         const at::Tensor& borders, const at::Tensor& gy,
                                         int64_t batch, int n_out, int n_pairs, int num_grids,
                                         bool batch_last, bool deterministic,
                                         const DeviceLimits& lim) {
  const int64_t xs_f = batch_last ? batch : 1, xs_b = batch_last ? 1 : 2 * int64_t(n_pairs);
  const int64_t gs_f = batch_last ? batch : 1, gs_b = batch_last ? 1 : n_out;
  // cell-sorted chunks where the slice's accumulator fits in shared memory (as the layer's
  // deterministic backward chooses), per-warp accumulators past that; both deterministic
  return switch_value<kSlopeNarrowTile, kSlopeTile>(slope_tile(n_out), [&](auto tile_c) {
    constexpr int kTile = decltype(tile_c)::value;
    if (dp_sorted_smem_bytes(num_grids, bwd_width(kTile), 1) <= lim.smem_optin)
      return launch_dp_sorted<kTile, true>(x, borders, gy, batch, n_out, n_pairs, num_grids,
                                           kSlopeBlock, /*fast=*/false, batch_last, lim, xs_f,
                                           xs_b, weights);
    return launch_dp<kTile, true>(x, borders, gy, batch, n_out, n_pairs, num_grids,
                                  kSlopeBlock, /*fast=*/false, batch_last, deterministic, lim,
                                  xs_f, xs_b, gs_f, gs_b, weights);
  });
}

}  // namespace lmkan2d
}  // namespace lmkan
