// LMKAN2DLayer backward when not deterministic (both modes; fast mode sorts longer chunks):
// grad_x and grad_params in one pass over cell-sorted samples.
//
// Why: the chunk-local cell sort of dp_sorted_kernel keeps a [cells][W] accumulator in shared
// memory, which at G = 26 (187 KB) leaves one block of 6 warps per SM (9% occupancy, R19),
// and grad_x was a second pass over the table. Here the accumulator lives in registers and
// runs are long because the sort covers a large chunk of the batch:
//
// 1. bucket_kernel (cell_sort.cu), one block per (pair, chunk): counting sort of the chunk's
//    samples by cell (shared-memory histogram, block-wide scan, scatter staged in shared
//    memory so that each cell's entries are stored to consecutive slots), written as entries
//    (sample, cell, d1, d2) [P][S]. Order within a cell is arbitrary (shared atomics): this
//    path is not deterministic (its dP is flushed with float atomics anyway).
// 2. runs_kernel: a warp takes one pair and one segment of <= kRunSegment consecutive sorted
//    entries (staged in shared memory) and walks it once per output tile (W = 32K outputs, K
//    per lane; or once per two tiles, T = 2 below), in batches of 4 samples; a batch within
//    the current cell (most of them: runs are tens of samples long) takes a path without a
//    branch per sample. A lane keeps the 4 corner gradients of its K outputs for the current
//    cell in registers and flushes them with vector float atomics (RED.128 at K = 4) when the
//    cell changes. Cells are sorted row-major, so moving to the next cell of the same grid
//    row carries the two shared corners over (2 flushes per cell, not 4). The lane also keeps
//    the cell's table differences E1, E2, F for grad_x. Per sample: one coalesced grad_y row
//    (loaded a batch of 4 samples ahead into the registers its own sample has just used: no
//    register copies between batches), 4K FMA for dP, 3K for dx, and a transpose-reduce of
//    the two dx sums over the warp streamed through the batches (about one shuffle per sum,
//    its levels fixed at compile time within a batch). The warp adds each tile's sums into
//    its own [segment][2] shared-memory slots and stores them once at the end: every (sample,
//    pair) lives in one segment, so grad_x needs neither atomics nor zeroing, and warps never
//    wait for each other.
//
// The chunk (S samples) is sized so that its grad_y rows take chunk_bytes (8 MB in normal
// mode, 24 MB in fast mode: they stay in L2, 94% hit rate in R24 at 32 MB). Per pair a
// chunk's grad_y rows are read once per sample, so the path moves B * P * N_out * 4 bytes
// from L2 (2 for a 16-bit grad_y, as under autocast: its rows stay 16-bit, twice the samples
// per chunk); the table and the dP atomics cost ~(table + 2 x dP) * B / S. What binds (ncu, H100,
// 2026-12-05, tile 16 fast): at G = 8 512->512 issue and latency (issue 63% busy, L2 67% of
// its peak); at G = 26 256->256 L2 (87% of peak, 58% hit rate: the table and the dP
// workspace, 95 MB each, evict the chunk's rows). So the table reads and the dP reductions
// carry L2's evict_first priority and the rows evict_last (l2_hint.cuh, sm_90 on): -4.5%
// at G = 26 float32 (H100, 8.78 -> 8.39 ms), G = 8 unchanged.
//
// For a bfloat16 grad_y with a bfloat16 table, plan_runs (plan.h) may choose the tensor-core
// kernel of backward_runs_mma.cu instead of runs_kernel, on the same sorted entries. The host
// code (chunks, sort, launches) is backward_sorted.cpp; this file holds runs_kernel and its
// launcher.
#include <type_traits>

#include <c10/cuda/CUDAException.h>

#include "common/cp_async.cuh"
#include "common/device_limits.h"
#include "common/images.h"
#include "common/l2_hint.cuh"
#include "common/static_switch.h"
#include "common/table_type.cuh"
#include "lmkan2d/device.cuh"
#include "lmkan2d/runs.h"
#include "lmkan2d/runs_segment.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {


// An opaque copy of p: the compiler cannot fold p's own terms into the addresses computed
// from it. runs_kernel's grad_y row address is then one IMAD.WIDE from the row's int32
// offset; otherwise each load re-added the lane and tile terms in 64 bits (5-6 instructions
// each, SASS of sm_90).
template <typename E>
__device__ __forceinline__ const E* opaque(const E* p) {
  asm("" : "+l"(p));
  return p;
}

// A lane's K values of one grad_y row as loaded, for rows of element type R: K floats, or
// for 16-bit rows (float16 / bfloat16: a 16-bit grad_y, as under autocast) the K values
// packed two to a 32-bit word. Packed rows take half the registers between the load (a
// batch ahead) and the sample's FMAs, and half the L2 bytes; row_value widens one value.
template <typename R, int K>
using RowWords = std::conditional_t<std::is_same_v<R, float>, float[K], unsigned[(K + 1) / 2]>;

template <typename R, int K>
__device__ __forceinline__ void load_row_words(const R* p, RowWords<R, K>& v, uint64_t policy) {
  if constexpr (std::is_same_v<R, float>) {
    load_k_hinted<K>(p, v, policy);
  } else if constexpr (K == 4) {  // 8 bytes
    const uint2 t = load_u32x2_hinted(p, policy);
    v[0] = t.x;
    v[1] = t.y;
  } else if constexpr (K == 2) {
    v[0] = load_u32_hinted(p, policy);
  } else {
    v[0] = load_u16_hinted(p, policy);
  }
}

// Value k (compile-time after unrolling) of a row's words as float32 (exact).
template <typename R, int K>
__device__ __forceinline__ float row_value(const RowWords<R, K>& v, int k) {
  if constexpr (std::is_same_v<R, float>) {
    return v[k];
  } else {
    return word_value<R>(v[k / 2], (k & 1) != 0);
  }
}

// kImages: grad_x is images (common/images.h), written at f * xs_f + dx_images(b); the
// offsets are a separate argument, used in the final stores only (the batch loop is the same
// code either way).
//
// T: output tiles walked at once (1 or 2). With T = 2 a lane owns K outputs in each of two
// adjacent tiles (the packed layouts are unchanged: tile t + 1 of the table and of dP is
// tile_stride floats on, of a grad_y row W floats on), so the per-sample work that does not
// grow with the outputs (the entry, the weights, the dx merges, the batch test) serves 2W
// outputs, and the segment is walked half as often. Its registers then hold no carried
// corners: a cell change to the right reloads the two left corners from L2 (a few per
// segment at G = 26, fewer at small G), where keeping them would cost 2TK registers.
//
// R: the element type of the grad_y rows (float, or __half / __nv_bfloat16 for a 16-bit
// grad_y: its values are exact in float32, so the sums are those of the float32 rows).
template <int K, int T, bool kImages, typename R>
__global__ void __launch_bounds__(runs_max_threads(T)) runs_kernel(const RunsArgs a,
                                                              const SampleOffsets dx_images) {
  constexpr int W = 32 * K, U = kRunPrefetch;
  static_assert(T == 1 || T == 2, "one or two output tiles per walk");
  constexpr bool kCarryCorners = T == 1;  // keep the right corners for a carry (above)
  extern __shared__ __align__(16) float runs_smem[];
  const int side = a.num_grids + 1, cells = side * side;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  int4* seg_entries = reinterpret_cast<int4*>(runs_smem) + warp * kRunEntrySlots;
  float* dxacc = runs_smem + int64_t(warps) * kRunEntrySlots * 4 + warp * 2 * kRunSegment;
  float* s_borders = dxacc + int64_t(warps - warp) * 2 * kRunSegment;  // [side]
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = a.borders[i];
  __syncthreads();  // the only block-wide barrier: warps are independent after it

  const int64_t item = int64_t(blockIdx.x) * warps + warp;
  if (item >= int64_t(a.n_pairs) * a.segments) return;
  const RunsSegment seg = runs_segment(a, item);
  const int p = seg.p, len = seg.len;
  load_segment_entries(a, seg, seg_entries, lane);  // .x: the row offset, the sample .x / ld32
  for (int i = len + lane; i < ((len + 15) & ~15) + U; i += 32) seg_entries[i] = make_int4(0, 0, 0, 0);
  __syncwarp();

  // L2 priorities (l2_hint.cuh): a cell's table rows and dP rows are touched a few times
  // per chunk and stream through L2 (95 MB each at G = 26, 256 -> 256), while every pair
  // re-reads the chunk's grad_y rows: the rows are kept, the cells evicted first
  const uint64_t pol_stream = l2_policy_evict_first();
  const uint64_t pol_rows = l2_policy_evict_last();

  // from an output tile of the packed table (and of dP) to the next one
  const int64_t tile_stride = int64_t(a.n_pairs) * cells * W;
  for (int tile_index = 0; tile_index < a.n_tiles; tile_index += T) {
    const int64_t slice = (int64_t(tile_index) * a.n_pairs + p) * cells * W + K * lane;
    const float* tab = a.packed + slice;
    float* wsp = a.ws + slice;
    const R* gy =
        opaque(static_cast<const R*>(a.gyt) + a.b0 * a.ld + tile_index * W + K * lane);

    // dP corner gradients of the current cell: [0] (i1,i2), [1] (i1,i2+1), [2] (i1+1,i2),
    // [3] (i1+1,i2+1); table corners (i1,i2+1), (i1+1,i2+1) kept for the carry to the
    // right; dx: dy/dd1 = E1 + d2 F, dy/dd2 = E2 + d1 F per output.
    // [j][k]: output k of this lane in tile tile_index + j
    float acc[4][T][K], t01[T][K], t11[T][K], e1[T][K], e2[T][K], f[T][K];
    float ih1 = 0.f, ih2 = 0.f;
    int cur = -1;
    // transpose-reduce of the dx sums, streamed: a round is 16 samples = 4 batches of U = 4.
    // Sample n of a round is merged over lane bit 1 (n bit 0), 2 (bit 1), 3 (bit 2), 4 (bit
    // 3); bits 0-1 are the sample's place in its batch (static), bits 2-3 the batch's place
    // in the round (warp-uniform). Afterwards lane l holds sum l: sample l / 2 of the round,
    // input 2p + l % 2.
    static_assert(U == 4, "the static merge levels assume batches of 4 samples");
    float quarter0 = 0.f, half0 = 0.f;  // pending: first quarter, first half of the round

    auto flush = [&](bool carry) {
#pragma unroll
      for (int j = 0; j < T; ++j) {
        float* w = wsp + j * tile_stride;
        red_k_hinted<K>(w + int64_t(cur) * W, acc[0][j], pol_stream);
        red_k_hinted<K>(w + int64_t(cur + side) * W, acc[2][j], pol_stream);
        if (!carry) {
          red_k_hinted<K>(w + int64_t(cur + 1) * W, acc[1][j], pol_stream);
          red_k_hinted<K>(w + int64_t(cur + side + 1) * W, acc[3][j], pol_stream);
        }
      }
    };
    // the lane's K values of table row `row` in each of the T tiles
    auto load_table_row = [&](int64_t row, float (&v)[T][K]) {
#pragma unroll
      for (int j = 0; j < T; ++j)
        load_k_hinted<K>(tab + j * tile_stride + row * W, v[j], pol_stream);
    };
    // the lane's K grad_y values in each of the T tiles of the row at offset `off`
    auto load_gy_row = [&](int off, RowWords<R, K> (&v)[T]) {
#pragma unroll
      for (int j = 0; j < T; ++j) load_row_words<R, K>(gy + off + j * W, v[j], pol_rows);
    };
    // The lane and the shared-window address of the warp's entries are loop-carried through
    // an empty asm in the batch loop, so they stay in registers there: otherwise the compiler
    // re-derives them in every batch from threadIdx.x and the CTA id (two S2R reads, whose
    // latency sat before the batch's first entry load; sm_90 SASS).
    int lane_r = lane;
    unsigned ents = smem_u32(seg_entries);  // entry i at ents + 16 i
    auto entry = [&](int i) {  // broadcast: (row offset, cell, d1, d2)
      const uint4 e = lds128_u32(ents + 16 * i);
      return make_int4(int(e.x), int(e.y), int(e.z), int(e.w));
    };
    // keep the half named by lane bit `bit`, send the other: (lo, hi) -> one partial
    auto merge = [&](float lo, float hi, int bit) {
      const bool up = lane_r & bit;
      return (up ? hi : lo) + __shfl_xor_sync(0xffffffffu, up ? lo : hi, bit);
    };

    // grad_y rows: g[u] holds sample t0 + u's row; once its FMAs are issued it takes the row
    // of sample t0 + U + u, one batch ahead. The loop runs to a whole round: samples past
    // len contribute zeros and are not stored (their entries, zeroed above, load row 0,
    // unused).
    const int rounds_end = (len + 15) & ~15;
    RowWords<R, K> g[U][T];
#pragma unroll
    for (int u = 0; u < U; ++u) load_gy_row(seg_entries[u].x, g[u]);
    // One sample of the current cell: its 4K dP FMAs and 3K dx FMAs, the corners in
    // registers; returns the sample's two dx sums (inputs 2p, 2p + 1).
    auto add_sample_of_cell = [&](const int4 e, const RowWords<R, K> (&gu)[T]) {
      const float d1 = __int_as_float(e.z), d2 = __int_as_float(e.w);
      const float a1 = 1.f - d1, a2 = 1.f - d2;
      const float w00 = a1 * a2, w01 = a1 * d2, w10 = d1 * a2, w11 = d1 * d2;
      float ge1 = 0.f, ge2 = 0.f, gf = 0.f;  // sum_k g E1, g E2, g F
#pragma unroll
      for (int j = 0; j < T; ++j) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const float gk = row_value<R, K>(gu[j], k);
          acc[0][j][k] += gk * w00;
          acc[1][j][k] += gk * w01;
          acc[2][j][k] += gk * w10;
          acc[3][j][k] += gk * w11;
          ge1 += gk * e1[j][k];
          ge2 += gk * e2[j][k];
          gf += gk * f[j][k];
        }
      }
      return make_float2((ge1 + d2 * gf) * ih1, (ge2 + d1 * gf) * ih2);
    };
    for (int t0 = 0; t0 < rounds_end; t0 += U) {
      asm volatile("" : "+r"(lane_r), "+r"(ents));
      float v[U];  // level-0 sums of the batch's samples (over lanes l, l ^ 1)
      if (t0 + U <= len && entry(t0 + U - 1).y == cur) {
        // The common batch: 4 samples of the segment, all in the current cell (entries are
        // sorted by cell: the batch's last key equal to cur means all four are). No branch
        // per sample, so the four samples' FMAs and row loads interleave; the general path
        // below fences each sample by a convergence barrier (BSSY/BSYNC). This relies on
        // bucket_kernel's counting sort (cells ascending within a segment), where the
        // per-sample path alone would be correct in any order. The loads are volatile asm
        // (lds128_u32), so entry t0 + 3 is read twice here and the prefetch reads whole
        // 16-byte entries for their .x: broadcasts, a few wavefronts per batch.
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const float2 s = add_sample_of_cell(entry(t0 + u), g[u]);
          load_gy_row(entry(t0 + U + u).x, g[u]);
          v[u] = merge(s.x, s.y, 1);
        }
      } else {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          float2 s = make_float2(0.f, 0.f);  // samples past len contribute zeros
          if (t0 + u < len) {
            const int4 e = entry(t0 + u);
            const int key = e.y;
            if (key != cur) {
              const bool carry = cur >= 0 && key == cur + 1;  // same grid row, next cell
              if (cur >= 0) flush(carry);
              float t00[T][K], t10[T][K];
              if (carry) {
#pragma unroll
                for (int j = 0; j < T; ++j)
#pragma unroll
                  for (int k = 0; k < K; ++k) {
                    acc[0][j][k] = acc[1][j][k]; acc[2][j][k] = acc[3][j][k];
                    acc[1][j][k] = 0.f; acc[3][j][k] = 0.f;
                    if constexpr (kCarryCorners) { t00[j][k] = t01[j][k]; t10[j][k] = t11[j][k]; }
                  }
                if constexpr (!kCarryCorners) {
                  load_table_row(key, t00);
                  load_table_row(key + side, t10);
                }
              } else {
#pragma unroll
                for (int c = 0; c < 4; ++c)
#pragma unroll
                  for (int j = 0; j < T; ++j)
#pragma unroll
                    for (int k = 0; k < K; ++k) acc[c][j][k] = 0.f;
                load_table_row(key, t00);
                load_table_row(key + side, t10);
              }
              load_table_row(key + 1, t01);
              load_table_row(key + side + 1, t11);
#pragma unroll
              for (int j = 0; j < T; ++j)
#pragma unroll
                for (int k = 0; k < K; ++k) {
                  e1[j][k] = t10[j][k] - t00[j][k];
                  e2[j][k] = t01[j][k] - t00[j][k];
                  f[j][k] = (t11[j][k] - t01[j][k]) - e1[j][k];
                }
              const int i1 = key / side, i2 = key - i1 * side;
              ih1 = 1.f / (s_borders[i1 + 1] - s_borders[i1]);
              ih2 = 1.f / (s_borders[i2 + 1] - s_borders[i2]);
              cur = key;
            }
            s = add_sample_of_cell(e, g[u]);
          }
          load_gy_row(entry(t0 + U + u).x, g[u]);
          v[u] = merge(s.x, s.y, 1);
        }
      }
      const float quarter = merge(merge(v[0], v[1], 2), merge(v[2], v[3], 2), 4);
      const int q = (t0 >> 2) & 3;  // the batch's quarter of the round
      if (!(q & 1)) {
        quarter0 = quarter;
      } else {
        const float half = merge(quarter0, quarter, 8);
        if (q == 1) {
          half0 = half;
        } else {
          const float sum = merge(half0, half, 16);
          const int i = 2 * (t0 - 12) + lane_r;  // this lane's (sample, input) slot
          if (i < 2 * len) dxacc[i] = tile_index == 0 ? sum : dxacc[i] + sum;
        }
      }
    }
    if (cur >= 0) flush(false);
    __syncwarp();  // dxacc of this tile visible to every lane
  }
  store_segment_dx<kImages>(a, dx_images, seg, seg_entries, dxacc, lane);
}

}  // namespace

void launch_runs(const RunsArgs& a, const SampleOffsets& dx_images, bool images,
                 at::ScalarType rows, int k, bool two_tiles, int warps, int64_t smem,
                 int64_t items, cudaStream_t stream) {
  using RunsFn = void (*)(RunsArgs, SampleOffsets);
  RunsFn runs = nullptr;
  switch_table_type(rows, [&](auto row_tag) {
    using R = decltype(row_tag);
    runs = switch_value<1, 2, 4>(k, [&](auto k_c) -> RunsFn {
      constexpr int K = decltype(k_c)::value;
      if constexpr (K == 4) {
        if (two_tiles) return images ? &runs_kernel<K, 2, true, R> : &runs_kernel<K, 2, false, R>;
      }
      return images ? &runs_kernel<K, 1, true, R> : &runs_kernel<K, 1, false, R>;
    });
  });
  allow_dynamic_smem(reinterpret_cast<const void*>(runs), smem);
  runs<<<static_cast<unsigned>((items + warps - 1) / warps), warps * 32, smem, stream>>>(
      a, dx_images);  // grad_x: x's layout
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan2d
}  // namespace lmkan
