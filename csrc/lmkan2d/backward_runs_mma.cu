// The sorted backward's runs on tensor cores, for a bfloat16 grad_y with a bfloat16 table
// (training under torch.autocast(dtype=torch.bfloat16), or bfloat16 parameters).
// plan_runs (plan.h) chooses it over runs_kernel where it is faster (measured on the H100:
// docs/decisions.md, "Tensor-core runs for a bfloat16 grad_y"): long runs of a cell, and tile
// size 8.
//
// Same input as runs_kernel (backward_runs.cu): a warp takes one pair and one segment of
// cell-sorted entries (sample, cell, d1, d2) of a chunk. Inside a cell both sums of the
// backward are products of small matrices, over a group of 16 samples and 64 outputs:
//   dP[c][o]  += sum_s w_c(s) gy[s][o]            (4 corners x 16 samples x 64 outputs)
//   G_q[s]     = sum_o gy[s][o] Q_q[o]            (16 samples x 64 outputs x {E1, E2, F})
// with E1 = T10 - T00, E2 = T01 - T00, F = T11 - T01 - E1 the cell's table differences, and
// dx1 = (G_E1 + d2 G_F) / h1, dx2 = (G_E2 + d1 G_F) / h2 (runs_kernel's formulas). They run as
// mma.sync.m16n8k16 (bfloat16 in, float32 accumulate): 16 MMAs per group and walk where
// runs_kernel issues 16 x 64 x 7 FMAs.
//
// Exactness: grad_y's and the table's values are bfloat16 already. Weights and differences
// are float32: each is split into three bfloat16 terms, hi + mid + lo (truncations, the
// subtractions exact), whose sum is the float32 value. Products of bfloat16 values are exact
// in float32, so only the float32 sums round, as in runs_kernel (in another order). A float16
// grad_y is not served: its terms would underflow.
//
// Fragments (PTX ISA, mma.m16n8k16 with .bf16): lane l is in group g = l / 4, place q = l % 4.
// - grad_y: each group's 16 rows x 64 outputs are copied (cp.async, one group ahead) into a
//   2 KB shared buffer, 16-byte chunk c of row r at chunk c ^ (r % 8), so that an ldmatrix's
//   8 rows at one chunk fall in 8 bank quads. Per k-tile j (outputs 16j .. 16j + 15) one
//   address set reads the 4 blocks (samples 0-7 / 8-15 x outputs 16j .. / 16j + 8 ..): as
//   they are (ldmatrix.x4) they are the dx A fragment, transposed (.trans) the dP B fragments.
// - dx: D[16 samples][8 columns] += A[16 samples][16 outputs] x B[16 outputs][8 columns]
//   (column n held by group n: the cell's quantities), two MMAs per k-tile: columns (E1 hi,
//   E1 mid, E2 hi, E2 mid, F hi, F mid, 0, 0) and (E1 lo, 0, E2 lo, 0, F lo, 0, 0, 0), so
//   that place q of a row holds E1 (q = 0), E2 (1) or F (2) in its four accumulators.
// - dP: D[16 rows][8 outputs] += A[16 rows][16 samples] x B[16 samples][8 outputs]: rows 0-3
//   the 4 corners' hi weights, 4-7 mid, 8-11 lo, 12-15 zero. Per 64 outputs a lane keeps 8 x
//   4 float32 accumulators for the current cell; a cell change adds hi + mid + lo (one
//   shuffle) and flushes them with float2 reductions from the 16 lanes of groups 0-3.
// - A group of 16 entries within the current cell (most of them: runs are tens to hundreds of
//   samples long) takes one pass. A group that spans cells takes one pass per cell, with the
//   weights and the transposed grad_y of the other cells' samples (and of the pads past the
//   segment) set to zero, and writes the dx of that cell's samples only.
// - The cells' corner rows are copied ahead into shared memory (cp.async), in the order the
//   segment visits them.
#include <cuda_bf16.h>

#include <c10/cuda/CUDAException.h>

#include "common/cp_async.cuh"
#include "common/device_limits.h"
#include "common/l2_hint.cuh"
#include "lmkan2d/footprints.h"
#include "lmkan2d/runs.h"
#include "lmkan2d/runs_segment.cuh"

namespace lmkan {
namespace lmkan2d {
namespace {

constexpr int kGroup = kRunsMmaGroup;    // samples per MMA group
constexpr int kPadCell = 0x7fffffff;     // the cell of the entries past a segment
constexpr int kEntrySlots = kRunSegment + kGroup;  // + the group read ahead
constexpr int kCellFloats = 4 * kRunsMmaWalk;        // a cell's 4 corner rows of one walk
// Shared memory per warp, in floats: its entries (int4), its grad_x sums [segment][2], two
// buffers of cell rows (the cell in use and the next one, copied ahead by cp.async) and the
// segment's distinct cells in order.
constexpr int kEntryFloats = kEntrySlots * 4, kDxFloats = 2 * kRunSegment;
// grad_y rows of one group, bfloat16: [16 rows][8 chunks of 16 bytes] = 2 KB; two buffers
constexpr int kGroupRowFloats = kGroup * kRunsMmaWalk / 2;
constexpr int kWarpFloats =
    kEntryFloats + kDxFloats + 2 * kCellFloats + kRunSegment + 2 * kGroupRowFloats;
static_assert(kWarpFloats == kRunsMmaWarpFloats, "footprints.h counts this layout");

// Two float32 values that are bfloat16 values already (low 16 bits zero), as one word (lo in
// bits 0-15): one byte permute.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  return __byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632);
}
// v = hi + mid + lo exactly, each a bfloat16 value: hi is v truncated to bfloat16 (its top 8
// significant bits), mid the next 8 bits, lo the last 8; both subtractions are exact. Two
// masks and two adds (integer and float ALU, fixed latency: no conversion instructions).
struct Terms {
  float hi, mid, lo;
};
__device__ __forceinline__ Terms split3(float v) {
  Terms t;
  t.hi = __uint_as_float(__float_as_uint(v) & 0xffff0000u);
  const float r = v - t.hi;
  t.mid = __uint_as_float(__float_as_uint(r) & 0xffff0000u);
  t.lo = r - t.mid;
  return t;
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
// Four 8x8 matrices of 16-bit values from shared memory, lanes 8m .. 8m + 7 giving the row
// addresses of matrix m; plain (thread 4r + c holds row r, columns 2c, 2c + 1) or transposed.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

template <bool kImages>
__global__ void __launch_bounds__(kRunsMmaWarps * 32, kRunsMmaWarpsPerSm / kRunsMmaWarps)
    runs_mma_kernel(const RunsArgs a, const SampleOffsets dx_images) {
  extern __shared__ __align__(16) float runs_smem[];
  const int side = a.num_grids + 1, cells = side * side;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int g = lane / 4, q = lane % 4;  // fragment coordinates
  // per-warp arrays, each array of all warps together (16-byte aligned: whole float4s)
  int4* seg_entries = reinterpret_cast<int4*>(runs_smem) + warp * kEntrySlots;
  float* dxacc = runs_smem + warps * kEntryFloats + warp * kDxFloats;
  float* cell_rows = runs_smem + warps * (kEntryFloats + kDxFloats) + warp * 2 * kCellFloats;
  int* runs =
      reinterpret_cast<int*>(runs_smem + warps * (kEntryFloats + kDxFloats + 2 * kCellFloats)) +
      warp * kRunSegment;
  float* row_ring = runs_smem + warps * (kEntryFloats + kDxFloats + 2 * kCellFloats + kRunSegment) +
                   warp * 2 * kGroupRowFloats;
  float* s_borders = runs_smem + warps * kWarpFloats;  // [side]
  for (int i = threadIdx.x; i < side; i += blockDim.x) s_borders[i] = a.borders[i];
  __syncthreads();  // the only block-wide barrier: warps are independent after it

  const int64_t item = int64_t(blockIdx.x) * warps + warp;
  if (item >= int64_t(a.n_pairs) * a.segments) return;
  const RunsSegment seg = runs_segment(a, item);
  const int p = seg.p, len = seg.len;
  const int groups_end = (len + kGroup - 1) / kGroup * kGroup;
  load_segment_entries(a, seg, seg_entries, lane);  // .x: the sample's row offset in the chunk
  // pads: row 0 (read, never used), a cell no group matches
  for (int i = len + lane; i < groups_end + kGroup; i += 32)
    seg_entries[i] = make_int4(0, kPadCell, 0, 0);
  for (int i = lane; i < 2 * groups_end; i += 32) dxacc[i] = 0.f;
  __syncwarp();
  // the segment's distinct cells in order: every walk visits them in this order
  int n_runs = 0;
  for (int base = 0; base < len; base += 32) {
    const int i = base + lane;
    const bool start = i < len && (i == 0 || seg_entries[i].y != seg_entries[i - 1].y);
    const unsigned starts = __ballot_sync(0xffffffffu, start);
    if (start) runs[n_runs + __popc(starts & ((1u << lane) - 1u))] = seg_entries[i].y;
    n_runs += __popc(starts);
  }
  __syncwarp();

  // L2 priorities (l2_hint.cuh), as in runs_kernel: every pair re-reads the chunk's grad_y
  // rows, while a cell's table rows and dP rows stream through L2 (42 MB each at G = 8,
  // 512 -> 512): the rows are kept, the cells evicted first
  const uint64_t pol_stream = l2_policy_evict_first();
  const uint64_t pol_rows = l2_policy_evict_last();

  const int width = static_cast<int>(a.ld / a.n_tiles);  // W of the packed layouts
  const int walks_per_tile = width / kRunsMmaWalk;
  const int walks = a.n_tiles * walks_per_tile;
  // walk wk's 64 outputs of row 0 of the packed table (and of dP)
  const auto walk_slice = [&](int wk) {
    const int tile = wk / walks_per_tile;
    return (int64_t(tile) * a.n_pairs + p) * cells * width +
           (wk - tile * walks_per_tile) * kRunsMmaWalk;
  };
  int groups_after_cell = 0;  // row copies committed since the last cell copy
  // cp.async of cell `key`'s 4 corner rows, walk wk, into buffer b: [corner][64 outputs]
  const auto copy_cell = [&](int wk, int key, int b) {
    const int corner = lane / 8, part = lane % 8;
    const float* src = a.packed + walk_slice(wk) +
                       int64_t(key + (corner & 1) + (corner >> 1) * side) * width + 8 * part;
    const unsigned dst =
        smem_u32(cell_rows + b * kCellFloats + corner * kRunsMmaWalk + 8 * part);
    cp_async16_hinted(dst, src, pol_stream);
    cp_async16_hinted(dst + 16, src + 4, pol_stream);
    cp_async_commit();
    groups_after_cell = 0;
  };
  copy_cell(0, runs[0], 0);
  int visit = 0;  // cells visited so far (all walks): the buffer of the current one is visit & 1

  const __nv_bfloat16* gy_chunk = static_cast<const __nv_bfloat16*>(a.gyt) + a.b0 * a.ld;
  // The grad_y rows of samples t .. t + 15 (64 outputs of a walk from gyw) into row buffer b:
  // row r's 16-byte chunk c at chunk c ^ (r % 8), so that the 8 rows an ldmatrix reads at
  // one chunk fall in 8 different bank quads. Lane l copies half a row.
  const unsigned ring = smem_u32(row_ring);
  const auto stage_rows = [&](const __nv_bfloat16* gyw, int t, int b) {
    const int r = lane >> 1, c0 = (lane & 1) * 4;
    const __nv_bfloat16* src = gyw + seg_entries[t + r].x + 8 * c0;
    const unsigned dst = ring + b * kGroupRowFloats * 4 + r * 128;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      cp_async16_hinted(dst + (((c0 + i) ^ (r & 7)) << 4), src + 8 * i, pol_rows);
    cp_async_commit();
    ++groups_after_cell;
  };
  // this lane's ldmatrix row address of k-tile 0 (+ 32 bytes per k-tile): matrix m = lane / 8
  // is rows (samples) 8 (m % 2) .., chunk m / 2
  const int lm_row = (lane & 7) + 8 * ((lane >> 3) & 1), lm_chunk = lane >> 4;
  stage_rows(gy_chunk, 0, 0);
  int group_count = 0;  // groups started (all walks): the buffer of the current one
  for (int wk = 0; wk < walks; ++wk) {
    float* wsp = a.ws + walk_slice(wk) + 2 * q;  // this lane's first output of dP row 0
    const __nv_bfloat16* gy = gy_chunk + wk * kRunsMmaWalk;
    // the first group of the next walk, copied during this walk's last group
    const __nv_bfloat16* gy_next = wk + 1 < walks ? gy + kRunsMmaWalk : nullptr;

    float acc[4][2][4];  // dP of the current cell: [k-tile][half][fragment]
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][h][i] = 0.f;
    unsigned tb[4][2][2];  // dx B fragments of the current cell: [k-tile][MMA][b0, b1]
    float ih1 = 0.f, ih2 = 0.f;
    int cur = -1, run = 0;  // the current cell, and its place in runs[]

    // The cell's dx B fragments (group g holds column g of the two MMAs: top of the file)
    // from its rows, copied ahead; then the copy of the next cell visited starts.
    const auto load_cell = [&](int key) {
      if (groups_after_cell > 0) {  // the row copy committed after it may stay in flight
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncwarp();  // every lane's copies of this buffer, and the reads of the other done
      const float* rows = cell_rows + (visit & 1) * kCellFloats + 2 * q;
      const int which = g / 2;  // 0: E1, 1: E2, 2: F, 3: none
      const bool odd = g & 1;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        // outputs 16j + 2q, + 1 (b0) and 16j + 8 + 2q, + 1 (b1) of each corner
        float a00[4], a01[4], a10[4], a11[4];
        const auto corner_values = [&](int corner, float (&v)[4]) {
          const float* c = rows + corner * kRunsMmaWalk + 16 * j;
          const float2 lo = *reinterpret_cast<const float2*>(c);
          const float2 hi = *reinterpret_cast<const float2*>(c + 8);
          v[0] = lo.x; v[1] = lo.y; v[2] = hi.x; v[3] = hi.y;
        };
        corner_values(0, a00);
        corner_values(1, a01);
        corner_values(2, a10);
        corner_values(3, a11);
        float top[4], bottom[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float e1 = a10[i] - a00[i], e2 = a01[i] - a00[i];
          const float f = (a11[i] - a01[i]) - e1;
          const Terms t = split3(which == 0 ? e1 : which == 1 ? e2 : which == 2 ? f : 0.f);
          top[i] = odd ? t.mid : t.hi;
          bottom[i] = odd ? 0.f : t.lo;
        }
        tb[j][0][0] = pack_bf16x2(top[0], top[1]);
        tb[j][0][1] = pack_bf16x2(top[2], top[3]);
        tb[j][1][0] = pack_bf16x2(bottom[0], bottom[1]);
        tb[j][1][1] = pack_bf16x2(bottom[2], bottom[3]);
      }
      const int i1 = key / side, i2 = key - i1 * side;
      ih1 = 1.f / (s_borders[i1 + 1] - s_borders[i1]);
      ih2 = 1.f / (s_borders[i2 + 1] - s_borders[i2]);
      ++run;
      if (run < n_runs) {
        copy_cell(wk, runs[run], (visit + 1) & 1);
      } else if (wk + 1 < walks) {
        copy_cell(wk + 1, runs[0], (visit + 1) & 1);
      }
      ++visit;
    };
    // hi + mid + lo of each corner, added into dP: lanes 0-15, corner g, outputs 16j + 8h + 2q
    auto flush = [&]() {
      float out[16];
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float v0 = acc[j][h][0] + acc[j][h][2], v1 = acc[j][h][1] + acc[j][h][3];
          v0 += __shfl_down_sync(0xffffffffu, v0, 16);  // group g + 4: the mid rows
          v1 += __shfl_down_sync(0xffffffffu, v1, 16);
          out[4 * j + 2 * h] = v0;
          out[4 * j + 2 * h + 1] = v1;
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[j][h][i] = 0.f;
        }
      if (lane < 16) {
        float* dst = wsp + int64_t(cur + (g & 1) + (g >> 1) * side) * width;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          red_k_hinted<2>(dst + 16 * j, {out[4 * j], out[4 * j + 1]}, pol_stream);
          red_k_hinted<2>(dst + 16 * j + 8, {out[4 * j + 2], out[4 * j + 3]}, pol_stream);
        }
      }
    };
    // One pass of the group at t over cell c (masked: only its samples of cell c count).
    auto pass = [&](int t, unsigned rows_addr, bool masked, int c) {
      // weights of corner g % 4 for samples t + 2q, + 1, + 8, + 9 (A rows g and g + 8)
      const int corner = g & 3;
      float top[4], bottom[4];
      unsigned keep0 = 0xffffffffu, keep8 = 0xffffffffu;  // transposed grad_y of cell c
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int4 e = seg_entries[t + 2 * q + (u & 1) + 8 * (u >> 1)];
        const float d1 = __int_as_float(e.z), d2 = __int_as_float(e.w);
        const float w = ((corner & 2) ? d1 : 1.f - d1) * ((corner & 1) ? d2 : 1.f - d2);
        const bool in = !masked || e.y == c;
        const Terms s = split3(in ? w : 0.f);
        top[u] = g < 4 ? s.hi : s.mid;
        bottom[u] = g < 4 ? s.lo : 0.f;
        if (!in) {
          const unsigned half = (u & 1) ? 0x0000ffffu : 0xffff0000u;
          if (u < 2) keep0 &= half; else keep8 &= half;
        }
      }
      const unsigned aw[4] = {pack_bf16x2(top[0], top[1]), pack_bf16x2(bottom[0], bottom[1]),
                              pack_bf16x2(top[2], top[3]), pack_bf16x2(bottom[2], bottom[3])};
      float dx_a[4] = {0.f, 0.f, 0.f, 0.f}, dx_b[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        // the same four 8x8 blocks (samples 0-7 / 8-15 x outputs 16j .. / 16j + 8 ..): as
        // they are, the dx A fragment; transposed, the dP B fragments of both halves
        const unsigned addr = rows_addr + ((((2 * j + lm_chunk) ^ (lm_row & 7))) << 4);
        unsigned ag[4], bt[4];
        ldmatrix_x4(ag, addr);
        ldmatrix_x4_trans(bt, addr);
        mma_bf16(dx_a, ag, tb[j][0][0], tb[j][0][1]);
        mma_bf16(dx_b, ag, tb[j][1][0], tb[j][1][1]);
        mma_bf16(acc[j][0], aw, bt[0] & keep0, bt[1] & keep8);
        mma_bf16(acc[j][1], aw, bt[2] & keep0, bt[3] & keep8);
      }
      // rows g and g + 8: place q holds E1 (0), E2 (1), F (2) summed over the outputs
      const float s0 = (dx_a[0] + dx_a[1]) + (dx_b[0] + dx_b[1]);
      const float s8 = (dx_a[2] + dx_a[3]) + (dx_b[2] + dx_b[3]);
      const int at_f = (lane & ~3) | 2;
      const float f0 = __shfl_sync(0xffffffffu, s0, at_f), f8 = __shfl_sync(0xffffffffu, s8, at_f);
      if (q < 2) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int s = t + g + 8 * r;
          const int4 e = seg_entries[s];
          if (!masked || e.y == c) {
            const float d = __int_as_float(q == 0 ? e.w : e.z);  // dx1: d2; dx2: d1
            const float sum = (r == 0 ? s0 : s8) + d * (r == 0 ? f0 : f8);
            dxacc[2 * s + q] += sum * (q == 0 ? ih1 : ih2);
          }
        }
      }
    };
    const auto group = [&](int t) {
      const int b = group_count & 1;
      ++group_count;
      cp_async_wait<0>();
      __syncwarp();  // this group's rows (and a cell copied ahead) landed for every lane
      if (t + kGroup < groups_end) {
        stage_rows(gy, t + kGroup, b ^ 1);
      } else if (gy_next != nullptr) {
        stage_rows(gy_next, 0, b ^ 1);
      }
      const unsigned rows_addr = ring + b * kGroupRowFloats * 4 + lm_row * 128;
      const int first = seg_entries[t].y, last = seg_entries[t + kGroup - 1].y;
      if (first == cur && last == cur) {
        pass(t, rows_addr, false, cur);
        return;
      }
      int c = first;
      while (c != kPadCell) {  // the group's cells in order (warp-uniform)
        if (c != cur) {
          if (cur >= 0) flush();
          load_cell(c);
          cur = c;
        }
        pass(t, rows_addr, true, c);
        const int mine = seg_entries[t + (lane & (kGroup - 1))].y;
        const unsigned later = __ballot_sync(0xffffffffu, mine > c) & 0xffffu;
        if (later == 0u) break;
        c = __shfl_sync(0xffffffffu, mine, __ffs(later) - 1);
      }
    };
    for (int t = 0; t < groups_end; t += kGroup) group(t);
    if (cur >= 0) flush();
  }
  __syncwarp();  // every lane's dxacc
  store_segment_dx<kImages>(a, dx_images, seg, seg_entries, dxacc, lane);
}

}  // namespace

void launch_runs_mma(const RunsArgs& a, const SampleOffsets& dx_images, bool images,
                     int64_t items, cudaStream_t stream) {
  const auto kernel = images ? &runs_mma_kernel<true> : &runs_mma_kernel<false>;
  const int64_t smem = runs_mma_smem_bytes(a.num_grids);
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  kernel<<<static_cast<unsigned>((items + kRunsMmaWarps - 1) / kRunsMmaWarps), kRunsMmaWarps * 32,
           smem, stream>>>(a, dx_images);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmkan2d
}  // namespace lmkan
