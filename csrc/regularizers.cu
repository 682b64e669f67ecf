// Smoothness regularisers of the lookup tables (docs/spec.md sections 3 and 4), value and
// gradient, without host synchronisation and without atomics.
//
//   hessian2d(params [S, S, N_out, N_in/2], borders [S]) -> R (0-dim)
//   hessian2d_backward(grad_r (0-dim, on the device), params, borders) -> dR/dparams * grad_r
//   second_diff1d(params [S, N_out, N_in], borders [S]) -> R (0-dim)
//   second_diff1d_backward(grad_r, params, borders) -> dR/dparams * grad_r
// with S = G + 1 nodes per axis.
//
// Layout: the last two dims of params flatten to M functions m = (o, p), contiguous, so
// every stencil neighbour of element (a, b, m) lies M elements away along b, S*M along a.
// One thread owns one function m and a chunk of at most W columns b (the chunks partition
// the columns, so every value and every gradient entry is computed by exactly one thread);
// a warp's loads and stores are 32 consecutive m: fully coalesced. The 2D kernels slide a
// window of three parameter rows down the a axis through a shared-memory ring (RowRing,
// filled two rows ahead by cp.async) and, in the gradient, three gradient rows in
// registers, so each parameter is read once from DRAM (the chunk halos, two
// columns, are re-read from L2 by the neighbouring chunk's block, which runs at the same
// time: the chunk is the fastest-varying block index). In 2D the value and the gradient
// share one chunking and one "window" of W columns per thread, whose position relative to
// the table edges (its kind) is resolved at compile time: no per-column edge tests in the
// row loops (see Window below).
//
// The value is reduced deterministically in two stages: each block writes its partial sum
// (double) to a buffer, and one small kernel adds the partials in a fixed order and writes
// R. The gradient kernels read dL/dR from device memory. Per-node coefficients are computed
// from `borders` in double by every block into shared memory.
//
// Their autograd is registered in C++ (csrc/layer_autograd.cpp), so a Python call is one op
// call.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "checks.h"
#include "cp_async.cuh"

namespace lmkan {
namespace {

constexpr int kThreads = 128;        // threads per block of the main kernels (functions m)
constexpr int kFinishThreads = 256;  // threads of the final reduction kernel
// S <= kMaxNodes: 1D: 3 * S floats (< 48 KiB); 2D: S float4 and a 45 KiB row ring (up to
// 110 080 B, opted in above 48 KiB).
constexpr int kMaxNodes = 4000;

// Column-chunk widths (1D: registers hold W + 4 rows; 2D: the ring holds 5 rows of W + 4
// slots per thread, and the gradient's registers three gradient rows of W). For num_grids up
// to 26 these give two chunks per function in 2D.
constexpr int kW2d = 14;  // window columns per thread, 2D value and gradient
constexpr int kW1d = 16;  // rows per thread, 1D value and gradient
// 2D kernels: at most 128 registers, so 4 blocks (16 warps) fit on an SM and the
// 256x256, G=26 case (2 chunks x 256 blocks) runs in one wave on 132 SMs.
constexpr int kBlocksPerSM2d = 4;

// Per-node coefficients of the second differences, for the inner nodes k = 1..S-2:
//   f''(k) = kp[k] * (P[k+1] - P[k]) - km[k] * (P[k] - P[k-1]),
//   kp = 2 / (hs * hp), km = 2 / (hs * hm), ihs = 1 / hs, hs = hm + hp,
// as docs/spec.md writes 2/(hm+hp) * ((P[k+1]-P[k])/hp - (P[k]-P[k-1])/hm). Computed in double
// from the float32 borders, rounded once. Entries 0 and S-1 are zero (no second difference
// at the end nodes). coef: shared memory [3 * S] = km[S], kp[S], ihs[S].
__device__ void fill_coefficients(const float* __restrict__ borders, int S, float* coef) {
  for (int k = threadIdx.x; k < S; k += blockDim.x) {
    float km = 0.f, kp = 0.f, ihs = 0.f;
    if (k >= 1 && k <= S - 2) {
      const double hm = static_cast<double>(borders[k]) - static_cast<double>(borders[k - 1]);
      const double hp = static_cast<double>(borders[k + 1]) - static_cast<double>(borders[k]);
      const double hs = hm + hp;
      km = static_cast<float>(2.0 / (hs * hm));
      kp = static_cast<float>(2.0 / (hs * hp));
      ihs = static_cast<float>(1.0 / hs);
    }
    coef[k] = km;
    coef[S + k] = kp;
    coef[2 * S + k] = ihs;
  }
}

// Sum of v over the block, valid in thread 0. red: shared [32]. Fixed order: deterministic.
__device__ double block_sum(double v, double* red) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  const int num_warps = (blockDim.x + 31) >> 5;
  if (warp == 0) {
    v = lane < num_warps ? red[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Loads n <= N values of one row, columns col0 .. col0+n-1, from a column-strided table;
// columns outside [0, S) and slots >= n read as 0.
// row: pointer to column 0 of the row at function m; M: column stride.
template <int N>
__device__ __forceinline__ void load_row(float (&dst)[N], const float* __restrict__ row, int col0,
                                         int n, int S, int64_t M) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const int col = col0 + j;
    dst[j] = (j < n && col >= 0 && col < S) ? __ldg(row + static_cast<int64_t>(col) * M) : 0.f;
  }
}

// Per-node coefficients of the 2D stencil, one 16-byte entry per node (one LDS.128):
// {km, kp, -(km + kp), ihs^2} with km, kp, ihs as in fill_coefficients (zero at the end
// nodes). coef: shared memory [S].
__device__ void fill_stencil_coefficients(const float* __restrict__ borders, int S, float4* coef) {
  for (int k = threadIdx.x; k < S; k += blockDim.x) {
    float4 c = make_float4(0.f, 0.f, 0.f, 0.f);
    if (k >= 1 && k <= S - 2) {
      const double hm = static_cast<double>(borders[k]) - static_cast<double>(borders[k - 1]);
      const double hp = static_cast<double>(borders[k + 1]) - static_cast<double>(borders[k]);
      const double hs = hm + hp;
      const double km = 2.0 / (hs * hm), kp = 2.0 / (hs * hp);
      c = make_float4(static_cast<float>(km), static_cast<float>(kp), static_cast<float>(-(km + kp)),
                      static_cast<float>(1.0 / (hs * hs)));
    }
    coef[k] = c;
  }
}

// Where a thread's window of W gradient columns lies in the table, which decides which
// stencil positions (inner nodes) it holds. Positions i = 0 .. W+1 are columns
// bs-1 .. bs+W; a position is an inner node when its column is in [1, S-2].
enum WindowKind : int {
  kInteriorWindow = 0,  // bs >= 2 and bs + W <= S-2: every position is an inner node
  kLeftWindow = 1,      // bs == 0 and W <= S-2: positions 0, 1 (columns -1, 0) are not
  kRightWindow = 2,     // bs == S-W >= 2: positions W, W+1 (columns S-1, S) are not
  kGenericWindow = 3,   // anything else (small S): tested per position at run time
};

// Whether position i holds an inner node, for the kinds where that is known at compile time.
template <int W, int kKind>
__device__ __forceinline__ constexpr bool position_is_inner(int i) {
  return kKind == kInteriorWindow || (kKind == kLeftWindow && i >= 2) ||
         (kKind == kRightWindow && i <= W - 1);
}

// Column offset from bs of parameter slot s (column bs-2+s), clamped into the table. For
// the compile-time kinds the clamp is a constant (left: bs = 0; right: bs + W = S), so the
// address is the row pointer plus a constant multiple of M; the slots that only out-of-table
// positions use are never read (dead code).
template <int W, int kKind>
__device__ __forceinline__ int slot_offset(int s, int bs, int S) {
  if (kKind == kLeftWindow) return s < 2 ? 0 : s - 2;
  if (kKind == kRightWindow) return s > W + 1 ? W - 1 : s - 2;
  if (kKind == kInteriorWindow) return s - 2;
  return min(max(bs - 2 + s, 0), S - 1) - bs;
}

// Whether parameter slot s is read by any position the window computes (left windows skip
// positions 0, 1, i.e. slots 0, 1; right windows skip positions W, W+1, i.e. slots W+2, W+3).
template <int W, int kKind>
__device__ __forceinline__ constexpr bool slot_is_read(int s) {
  return !((kKind == kLeftWindow && s < 2) || (kKind == kRightWindow && s > W + 1));
}

// The parameter rows of one thread's window live in a ring of shared memory, filled by
// cp.async (4 bytes per slot) two rows ahead of use. Each thread copies and later reads
// only its own column, so cp.async.wait_group alone orders copy and use: no barrier.
// Before, a thread loaded row a+1 into registers only when row a's stencil was done, and
// with 4 warps per scheduler the DRAM latency was exposed once per row (the gradient kernel
// ran at 1.6x its copy floor); reading rows a-1, a, a+1 from shared memory also frees the
// 54 registers of the three row windows.
// Layout: ring [kRingRows][W + 4][kThreads] (slot-major, thread fastest: conflict-free copies
// and reads); row r lives in ring row r % kRingRows. At row a of the stencil, rows a-1, a,
// a+1 are read and rows a+2, a+3 are in flight; row a+4 is issued when row a is done,
// into the ring row of a-1. Groups: {0, 1, 2}, {3}, {4}, then one per row (possibly
// empty), so before row a the newest two groups are rows a+2, a+3 and wait_group 2 means
// "row a+1 has landed".
constexpr int kRingRows = 5;
constexpr int kRowsInFlight = 2;

// One row of the ring seen by one thread: slot s at row[s * kThreads].
struct RingRow {
  const float* row;
  __device__ __forceinline__ float operator[](int s) const { return row[s * kThreads]; }
};

template <int W, int kKind>
struct RowRing {
  float* ring;            // this thread's column of the ring: ring base + threadIdx.x
  const float* row0;      // row 0 of this thread's window (column bs, function m)
  int64_t row_stride, M;  // S * M, M
  int bs, S;

  __device__ __forceinline__ float* ring_row(int a) const {
    return ring + (a % kRingRows) * (W + 4) * kThreads;
  }

  // Starts copying row a (if it exists) into its ring row; does not commit.
  __device__ __forceinline__ void copy(int a) const {
    if (a >= S) return;
    float* dst = ring_row(a);
    // The column step is made opaque per row, so that the slot addresses are a chain of
    // pointer increments rather than W + 4 hoisted 64-bit offsets (registers: spills).
    int64_t step = M;
    asm volatile("" : "+l"(step));
    const float* src = row0 + static_cast<int64_t>(a) * row_stride +
                       static_cast<int64_t>(slot_offset<W, kKind>(0, bs, S)) * step;
#pragma unroll
    for (int s = 0; s < W + 4; ++s) {
      if (s > 0) src += (slot_offset<W, kKind>(s, bs, S) - slot_offset<W, kKind>(s - 1, bs, S)) * step;
      if (slot_is_read<W, kKind>(s)) cp_async4(dst + s * kThreads, src);
    }
  }

  // Rows 0 .. 2 + kRowsInFlight in flight, grouped as described above.
  __device__ __forceinline__ void start() const {
    copy(0);
    copy(1);
    copy(2);
    cp_async_commit();
#pragma unroll
    for (int r = 3; r < 3 + kRowsInFlight; ++r) {
      copy(r);
      cp_async_commit();
    }
  }

  // Before the stencil of row a: waits until rows a-1, a, a+1 have landed.
  __device__ __forceinline__ void wait_rows() const { cp_async_wait<kRowsInFlight>(); }

  // After the stencil of row a: row a + 2 + kRowsInFlight goes into the ring row of a-1.
  __device__ __forceinline__ void advance(int a) const {
    copy(a + 2 + kRowsInFlight);
    cp_async_commit();
  }

  __device__ __forceinline__ RingRow row(int a) const { return RingRow{ring_row(a)}; }
};

// Shared-memory bytes of the 2D kernels: the stencil coefficients (float4 [S]) and the
// ring of RowRing.
size_t hessian2d_shared_bytes(int S) {
  return static_cast<size_t>(S) * sizeof(float4) +
         static_cast<size_t>(kRingRows) * (kW2d + 4) * kThreads * sizeof(float);
}

// Stores the owned columns j in [skip, skip + nb) of one finished gradient row, scaled.
// Left and interior windows start at their first owned column (skip = 0), a right window
// ends at the last (skip + nb = W): only the other bound is tested.
template <int W, int kKind>
__device__ __forceinline__ void store_window_row(float* __restrict__ grow, const float (&g)[W],
                                                 float scale, int skip, int nb, int64_t M) {
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const bool owned = (kKind == kLeftWindow || kKind == kInteriorWindow) ? j < nb
                       : kKind == kRightWindow                            ? j >= skip
                                                                          : (j >= skip && j < skip + nb);
    if (owned) grow[static_cast<int64_t>(j) * M] = g[j] * scale;
  }
}

// One thread's window: owned columns b0 .. b0+nb-1 of chunk `chunk` (balanced chunks of
// chunk_width <= W columns), window columns bs .. bs+W-1 containing them (bs = b0, except
// that the last chunk's window is pulled left to end at column S-1), skip = b0 - bs.
struct Window {
  int bs, skip, nb, kind;
};

template <int W>
__device__ __forceinline__ Window chunk_window(int chunk, int chunk_width, int S) {
  Window w;
  const int b0 = chunk * chunk_width;
  w.nb = min(chunk_width, S - b0);
  w.bs = S >= W ? min(b0, S - W) : 0;
  w.skip = b0 - w.bs;
  if (w.bs >= 2 && w.bs + W <= S - 2) {
    w.kind = kInteriorWindow;
  } else if (w.bs == 0 && W <= S - 2) {
    w.kind = kLeftWindow;
  } else if (w.bs == S - W && w.bs >= 2) {
    w.kind = kRightWindow;
  } else {
    w.kind = kGenericWindow;
  }
  return w;
}

// Calls body(std::integral_constant<int, kind>) for the window's kind: one compiled
// variant per kind, chosen per block (the kind is uniform in a block).
template <typename Body>
__device__ __forceinline__ void with_window_kind(int kind, Body&& body) {
  switch (kind) {
    case kInteriorWindow: body(std::integral_constant<int, kInteriorWindow>()); break;
    case kLeftWindow: body(std::integral_constant<int, kLeftWindow>()); break;
    case kRightWindow: body(std::integral_constant<int, kRightWindow>()); break;
    default: body(std::integral_constant<int, kGenericWindow>()); break;
  }
}

// ccol[i]: coefficients of position i (column bs-1+i). Called once per row: the empty asm
// makes the offset opaque, so the 16 per-position LDS.128 stay in the row loop instead of
// being hoisted out of it into 48+ registers (which spills at the 128-register cap).
__device__ __forceinline__ const float4* column_coefficients(const float4* coef, int bs) {
  int offset = bs - 1;
  asm volatile("" : "+r"(offset));
  return coef + offset;
}

// Stencil terms of position i (column bs-1+i) in row a, unscaled:
//   fxx, fyy (second differences), dxy = (P[a+1,b+1] - P[a+1,b-1]) - (P[a-1,b+1] - P[a-1,b-1]),
//   exy = dxy * 2 ihs_a^2 ihs_b^2, so that 2 fxy^2 = dxy * exy and d(2 fxy^2)/d dxy = 2 exy;
// and the column's coefficients cb. inner: whether the position is an inner node (only
// meaningful for the generic kind; the other kinds call this for inner positions only).
struct PositionTerms {
  float fxx, fyy, dxy, exy;
  float4 cb;
  bool inner;
};

template <int W, int kKind, typename Row>
__device__ __forceinline__ PositionTerms position_terms(
    int i, const Row& pm, const Row& p0, const Row& pp,
    float4 ra, float r2, const float4* __restrict__ ccol, int first_inner, int last_inner) {
  PositionTerms t;
  const int c = i + 1;  // centre slot of position i
  t.inner = kKind != kGenericWindow || (i >= first_inner && i <= last_inner);
  t.cb = ccol[kKind == kGenericWindow ? min(max(i, first_inner), last_inner) : i];
  t.fxx = fmaf(ra.y, pp[c] - p0[c], -ra.x * (p0[c] - pm[c]));
  t.fyy = fmaf(t.cb.y, p0[c + 1] - p0[c], -t.cb.x * (p0[c] - p0[c - 1]));
  t.dxy = (pp[c + 1] - pm[c + 1]) - (pp[c - 1] - pm[c - 1]);
  t.exy = t.dxy * (r2 * t.cb.w);
  return t;
}

// dR/dP of one function m over one window of W columns, all rows (see hessian2d_grad_kernel).
// Gather form: with per-position terms (fxx, fyy, exy) of the current row a, the owned
// column j (position j+1) finishes
//   row a-1: gm[j] += fxx_{j+1} km_a - T_j
//   row a:   g0[j] += fxx_{j+1} nk_a + fyy_{j+1} nk_b(j+1) + fyy_{j+2} km_b(j+2) + fyy_j kp_b(j)
//   row a+1: gp[j]  = fxx_{j+1} kp_a + T_j          (first contribution to row a+1)
// with T_j = exy_j - exy_{j+2}, exy = 2 fxy ihs_a ihs_b, nk = -(km + kp). Terms of
// positions that are not inner nodes are zero (a select, never a multiplication by zero,
// so NaN parameters reach only the gradients that depend on them). Unscaled; each row is
// scaled by grad_r * 2 / (S-2)^2 when stored.
template <int W, int kKind>
__device__ __forceinline__ void hessian2d_grad_window(
    const float* __restrict__ row0, float* __restrict__ grow0, const float4* __restrict__ coef,
    int S, int64_t M, Window win, float scale, float* ring) {
  const int64_t row_stride = static_cast<int64_t>(S) * M;
  const int bs = win.bs, skip = win.skip, nb = win.nb;
  // Position validity for the generic kind, fixed for the whole thread.
  const int first_inner = 1 - (bs - 1), last_inner = (S - 2) - (bs - 1);
  float gm[W], g0[W], gp[W];  // gradient rows a-1, a, a+1 (owned columns)
  const RowRing<W, kKind> rows{ring, row0, row_stride, M, bs, S};
  rows.start();
#pragma unroll
  for (int j = 0; j < W; ++j) gm[j] = g0[j] = 0.f;

#pragma unroll 1
  for (int a = 1; a <= S - 2; ++a) {
    rows.wait_rows();
    const RingRow pm = rows.row(a - 1), p0 = rows.row(a), pp = rows.row(a + 1);  // slots
    const float4 ra = coef[a];  // {km_a, kp_a, -(km_a + kp_a), ihs_a^2}
    const float r2 = 2.f * ra.w;
    const float4* ccol = column_coefficients(coef, bs);
    // Position terms, produced in order i = 0 .. W+1; column j = i-2 is finished as soon as
    // position i exists (streaming keeps only three positions' terms live).
    float fxx[W + 2], fyy[W + 2], exy[W + 2], ckm[W + 2], ckp[W + 2], cnk[W + 2];
#pragma unroll
    for (int i = 0; i < W + 2; ++i) {
      fxx[i] = fyy[i] = exy[i] = ckm[i] = ckp[i] = cnk[i] = 0.f;
      if (kKind == kGenericWindow || position_is_inner<W, kKind>(i)) {
        const PositionTerms t =
            position_terms<W, kKind>(i, pm, p0, pp, ra, r2, ccol, first_inner, last_inner);
        fxx[i] = t.inner ? t.fxx : 0.f;
        fyy[i] = t.inner ? t.fyy : 0.f;
        exy[i] = t.inner ? t.exy : 0.f;
        ckm[i] = t.cb.x;
        ckp[i] = t.cb.y;
        cnk[i] = t.cb.z;
      }
      if (i >= 2) {
        const int j = i - 2;
        const float t = exy[j] - exy[j + 2];
        gm[j] = fmaf(fxx[j + 1], ra.x, gm[j]) - t;
        float v = fmaf(fxx[j + 1], ra.z, g0[j]);
        v = fmaf(fyy[j + 1], cnk[j + 1], v);
        v = fmaf(fyy[j + 2], ckm[j + 2], v);
        g0[j] = fmaf(fyy[j], ckp[j], v);
        gp[j] = fmaf(fxx[j + 1], ra.y, t);
      }
    }
    // Row a-1 has all its contributions (from positions in rows a-2, a-1, a).
    store_window_row<W, kKind>(grow0 + (a - 1) * row_stride, gm, scale, skip, nb, M);
    rows.advance(a);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      gm[j] = g0[j];
      g0[j] = gp[j];
    }
  }
  // Rows S-2 and S-1.
  store_window_row<W, kKind>(grow0 + (S - 2) * row_stride, gm, scale, skip, nb, M);
  store_window_row<W, kKind>(grow0 + (S - 1) * row_stride, g0, scale, skip, nb, M);
}

// Sum over rows of (fxx^2 + 2 fxy^2 + fyy^2) at the inner positions whose column the
// thread owns (i - 1 in [skip, skip + nb)): the chunks partition the columns, so every
// inner node is counted by exactly one thread. Same windows and terms as the gradient.
template <int W, int kKind>
__device__ __forceinline__ double hessian2d_value_window(const float* __restrict__ row0,
                                                         const float4* __restrict__ coef, int S,
                                                         int64_t M, Window win, float* ring) {
  const int64_t row_stride = static_cast<int64_t>(S) * M;
  const int bs = win.bs, skip = win.skip, nb = win.nb;
  const int first_inner = 1 - (bs - 1), last_inner = (S - 2) - (bs - 1);
  const RowRing<W, kKind> rows{ring, row0, row_stride, M, bs, S};
  rows.start();
  double total = 0.0;
#pragma unroll 1
  for (int a = 1; a <= S - 2; ++a) {
    rows.wait_rows();
    const RingRow pm = rows.row(a - 1), p0 = rows.row(a), pp = rows.row(a + 1);  // slots
    const float4 ra = coef[a];
    const float r2 = 2.f * ra.w;
    const float4* ccol = column_coefficients(coef, bs);
    float acc = 0.f;  // this row's terms (at most W + 2): float; rows add up in double
#pragma unroll
    for (int i = 0; i < W + 2; ++i) {
      if (kKind == kGenericWindow || position_is_inner<W, kKind>(i)) {
        const PositionTerms t =
            position_terms<W, kKind>(i, pm, p0, pp, ra, r2, ccol, first_inner, last_inner);
        // Left and interior windows start at their first owned column, right ones end at
        // their last: test only the other bound.
        const bool owned = kKind == kRightWindow ? i - 1 >= skip
                           : kKind == kGenericWindow ? (i - 1 >= skip && i - 1 < skip + nb)
                                                     : (i >= 1 && i - 1 < nb);
        const float v = fmaf(t.fxx, t.fxx, fmaf(t.fyy, t.fyy, t.dxy * t.exy));
        acc += (owned && t.inner) ? v : 0.f;
      }
    }
    total += static_cast<double>(acc);
    rows.advance(a);
  }
  return total;
}

// R partial sums, 2D. params: [S, S, M]; borders: [S]; partials: [gridDim.x] (double).
// Block b covers chunk (b % num_chunks) of functions (b / num_chunks) * kThreads + tid, with
// the gradient kernel's chunks and windows (hessian2d_grad_kernel).
template <int W>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM2d) hessian2d_value_kernel(
    const float* __restrict__ params, const float* __restrict__ borders,
    double* __restrict__ partials, int S, int64_t M, int num_chunks, int chunk_width) {
  extern __shared__ float4 coef4[];  // [S], then the RowRing ring
  float* ring = reinterpret_cast<float*>(coef4 + S) + threadIdx.x;
  __shared__ double red[32];
  fill_stencil_coefficients(borders, S, coef4);
  __syncthreads();

  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int64_t m = static_cast<int64_t>(blockIdx.x / num_chunks) * kThreads + threadIdx.x;
  double total = 0.0;
  if (m < M) {  // every thread reaches block_sum
    const Window win = chunk_window<W>(chunk, chunk_width, S);
    const float* row0 = params + m + static_cast<int64_t>(win.bs) * M;
    with_window_kind(win.kind, [&](auto kind) {
      total = hessian2d_value_window<W, decltype(kind)::value>(row0, coef4, S, M, win, ring);
    });
  }
  total = block_sum(total, red);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// dR/dP * grad_r, 2D. grad_r: [1]; params, grad: [S, S, M]; borders: [S].
// One block: kThreads functions x one chunk of gradient columns b0 .. b0+nb-1 (balanced
// chunks of at most W columns partition the S columns). A thread computes the stencil
// over a window of W columns bs .. bs+W-1 (bs = b0, except that the last chunk's window
// is pulled left to end at column S-1 so that the table edge sits at a fixed place in
// it) and stores the nb columns it owns. The window's kind (uniform per block) selects a
// variant whose edge handling is resolved at compile time. With balanced chunks every
// middle chunk's window is interior up to S ~ 12 W; beyond, some are generic (slower).
template <int W>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM2d) hessian2d_grad_kernel(
    const float* __restrict__ grad_r, const float* __restrict__ params,
    const float* __restrict__ borders, float* __restrict__ grad, int S, int64_t M,
    int num_chunks, int chunk_width) {
  extern __shared__ float4 coef4[];  // [S], then the RowRing ring
  float* ring = reinterpret_cast<float*>(coef4 + S) + threadIdx.x;
  fill_stencil_coefficients(borders, S, coef4);
  __syncthreads();

  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int64_t m = static_cast<int64_t>(blockIdx.x / num_chunks) * kThreads + threadIdx.x;
  if (m >= M) return;  // no block-wide synchronisation below
  const Window win = chunk_window<W>(chunk, chunk_width, S);
  // d/dP of grad_r * mean_(a,b) (fxx^2 + 2 fxy^2 + fyy^2): f^2 -> scale * f * df/dP.
  const float inner = static_cast<float>(S - 2);
  const float scale = __ldg(grad_r) * (2.f / (inner * inner));
  const float* row0 = params + m + static_cast<int64_t>(win.bs) * M;
  float* grow0 = grad + m + static_cast<int64_t>(win.bs) * M;
  with_window_kind(win.kind, [&](auto kind) {
    hessian2d_grad_window<W, decltype(kind)::value>(row0, grow0, coef4, S, M, win, scale, ring);
  });
}

// R partial sums, 1D. One block: kThreads functions x one chunk of inner rows.
// params: [S, M]; borders: [S]; partials: [gridDim.x] (double).
template <int W>
__global__ void __launch_bounds__(kThreads) second_diff1d_value_kernel(
    const float* __restrict__ params, const float* __restrict__ borders,
    double* __restrict__ partials, int S, int64_t M, int num_chunks, int chunk_width) {
  extern __shared__ float coef[];  // [3 * S]
  __shared__ double red[32];
  fill_coefficients(borders, S, coef);
  __syncthreads();
  const float* km = coef;
  const float* kp = coef + S;

  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int64_t m = static_cast<int64_t>(blockIdx.x / num_chunks) * kThreads + threadIdx.x;
  const int a0 = 1 + chunk * chunk_width;       // first inner row of the chunk
  const int na = min(chunk_width, S - 1 - a0);  // inner rows a0 .. a0+na-1

  float acc = 0.f;  // at most W terms
  if (m < M) {
    float p[W + 2];  // rows a0-1 .. a0+na
    load_row(p, params + m, a0 - 1, na + 2, S, M);
#pragma unroll
    for (int j = 1; j <= W; ++j) {
      if (j <= na) {
        const int a = a0 - 1 + j;
        const float f = kp[a] * (p[j + 1] - p[j]) - km[a] * (p[j] - p[j - 1]);
        acc = fmaf(f, f, acc);
      }
    }
  }
  const double total = block_sum(static_cast<double>(acc), red);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// dR/dP * grad_r, 1D. One block: kThreads functions x one chunk of rows (all S rows
// partitioned). grad_r: [1]; params, grad: [S, M]; borders: [S].
template <int W>
__global__ void __launch_bounds__(kThreads) second_diff1d_grad_kernel(
    const float* __restrict__ grad_r, const float* __restrict__ params,
    const float* __restrict__ borders, float* __restrict__ grad, int S, int64_t M,
    int num_chunks, int chunk_width) {
  extern __shared__ float coef[];  // [3 * S]
  fill_coefficients(borders, S, coef);
  __syncthreads();
  const float* km = coef;
  const float* kp = coef + S;

  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int64_t m = static_cast<int64_t>(blockIdx.x / num_chunks) * kThreads + threadIdx.x;
  if (m >= M) return;
  const int a0 = chunk * chunk_width;      // first row of the chunk
  const int na = min(chunk_width, S - a0);  // rows a0 .. a0+na-1
  const float inner = static_cast<float>(S - 2);
  const float scale = __ldg(grad_r) * (2.f / inner);

  float p[W + 4];  // rows a0-2 .. a0+na+1 (index j <-> a0-2+j)
  float g[W];      // rows a0 .. a0+na-1
  load_row(p, params + m, a0 - 2, na + 4, S, M);
#pragma unroll
  for (int j = 0; j < W; ++j) g[j] = 0.f;
  // f at row a = a0-1+i (i = 0 .. na+1), centre index i+1; it adds to rows a-1, a, a+1,
  // gradient indices i-2, i-1, i.
#pragma unroll
  for (int i = 0; i <= W + 1; ++i) {
    const int a = a0 - 1 + i;
    if (i <= na + 1 && a >= 1 && a <= S - 2) {
      const int c = i + 1;
      const float rkm = km[a], rkp = kp[a];
      const float e = scale * (rkp * (p[c + 1] - p[c]) - rkm * (p[c] - p[c - 1]));
      if (i - 2 >= 0 && i - 2 < W) g[i - 2] = fmaf(e, rkm, g[i - 2]);
      if (i - 1 >= 0 && i - 1 < W) g[i - 1] -= e * (rkm + rkp);
      if (i < W) g[i] = fmaf(e, rkp, g[i]);
    }
  }
  float* out = grad + m;
#pragma unroll
  for (int j = 0; j < W; ++j)
    if (j < na) out[static_cast<int64_t>(a0 + j) * M] = g[j];
}

// out[0] = scale * sum(partials), summed in a fixed order. partials: [n]; out: 0-dim.
__global__ void __launch_bounds__(kFinishThreads) finish_sum_kernel(
    const double* __restrict__ partials, int64_t n, double scale, float* __restrict__ out) {
  __shared__ double red[32];
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += partials[i];
  v = block_sum(v, red);
  if (threadIdx.x == 0) out[0] = static_cast<float>(v * scale);
}

// ---------------------------------------------------------------------------------------
// Host side.

struct Chunks {
  int count;  // chunks per function
  int width;  // columns (rows in 1D) per chunk, the last one may have fewer
};

// Splits n columns into as few chunks of at most max_width as possible, of near-equal width.
Chunks split(int n, int max_width) {
  Chunks c;
  c.count = (n + max_width - 1) / max_width;
  c.width = (n + c.count - 1) / c.count;
  return c;
}

// Checks shared by the four ops; returns S (nodes per axis) and sets M (functions).
int check_table(const at::Tensor& params, const at::Tensor& borders, int64_t table_dims,
                const char* shape, int64_t* M) {
  check_cuda_float(params, "params");
  check_cuda_float(borders, "borders");
  check_same_device(params, "params", borders, "borders");
  TORCH_CHECK_VALUE(params.dim() == table_dims, "params must have shape ", shape, ", got shape ",
                    params.sizes());
  check_dim(borders, 1, "borders");
  const int64_t S = borders.size(0);
  TORCH_CHECK_VALUE(S >= 3 && S <= kMaxNodes, "borders must hold G+1 nodes with 3 <= G+1 <= ",
                    kMaxNodes, ", got ", S);
  for (int64_t d = 0; d < table_dims - 2; ++d) {
    TORCH_CHECK_VALUE(params.size(d) == S, "params must have shape ", shape,
                      " with G+1 = borders.size(0) = ", S, ", got shape ", params.sizes());
  }
  *M = params.size(table_dims - 2) * params.size(table_dims - 1);
  return static_cast<int>(S);
}

void check_grad_r(const at::Tensor& grad_r, const at::Tensor& params) {
  check_cuda_float(grad_r, "grad_r");
  check_same_device(grad_r, "grad_r", params, "params");
  TORCH_CHECK_VALUE(grad_r.numel() == 1, "grad_r must be a 0-dim tensor (one element), got shape ",
                    grad_r.sizes());
}

int64_t num_blocks(int64_t M, int num_chunks) {
  const int64_t blocks = (M + kThreads - 1) / kThreads * num_chunks;
  TORCH_CHECK_VALUE(blocks <= 0x7fffffff, "params has too many functions (N_out * N_in = ", M,
                    ") for one launch");
  return blocks;
}

size_t coef_bytes(int S) { return static_cast<size_t>(3 * S) * sizeof(float); }

// Lets `kernel` take more than the default 48 KiB of dynamic shared memory (large S only).
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, size_t shared_bytes) {
  if (shared_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
  }
}

// Launches the value kernel `kernel` (`shared_bytes` of dynamic shared memory) on the
// given chunks, then the final reduction; returns R = scale * sum.
template <typename Kernel>
at::Tensor reduce_value(Kernel kernel, size_t shared_bytes, const at::Tensor& params,
                        const at::Tensor& borders, int S, int64_t M, Chunks chunks, double scale) {
  at::Tensor out = at::empty({}, params.options());  // 0-dim R
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = M == 0 ? 0 : num_blocks(M, chunks.count);
  // partials: [blocks] double (at least one element so the final kernel writes R = 0).
  at::Tensor partials = at::empty({std::max<int64_t>(blocks, 1)}, params.options().dtype(at::kDouble));
  if (blocks > 0) {
    allow_shared_bytes(kernel, shared_bytes);
    kernel<<<static_cast<unsigned>(blocks), kThreads, shared_bytes, stream>>>(
        params.data_ptr<float>(), borders.data_ptr<float>(), partials.data_ptr<double>(), S, M,
        chunks.count, chunks.width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  finish_sum_kernel<<<1, kFinishThreads, 0, stream>>>(partials.data_ptr<double>(), blocks, scale,
                                                      out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Launches the gradient kernel `kernel` with `shared_bytes` of dynamic shared memory on
// num_chunks chunks per block of functions and returns dR/dparams * grad_r.
// chunk_args: the kernel's arguments after num_chunks.
template <typename Kernel, typename... ChunkArgs>
at::Tensor launch_grad(Kernel kernel, size_t shared_bytes, const at::Tensor& grad_r,
                       const at::Tensor& params, const at::Tensor& borders, int S, int64_t M,
                       int num_chunks, ChunkArgs... chunk_args) {
  at::Tensor grad = at::empty_like(params, at::MemoryFormat::Contiguous);  // params' shape
  if (M == 0) return grad;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = num_blocks(M, num_chunks);
  allow_shared_bytes(kernel, shared_bytes);
  kernel<<<static_cast<unsigned>(blocks), kThreads, shared_bytes, stream>>>(
      grad_r.data_ptr<float>(), params.data_ptr<float>(), borders.data_ptr<float>(),
      grad.data_ptr<float>(), S, M, num_chunks, chunk_args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

constexpr const char* kShape2d = "[G+1, G+1, N_out, N_in/2]";
constexpr const char* kShape1d = "[G+1, N_out, N_in]";

// params: [S, S, N_out, N_in/2]; borders: [S]. Returns R, 0-dim float32.
at::Tensor hessian2d_cuda(const at::Tensor& params_in, const at::Tensor& borders_in) {
  int64_t M = 0;
  const int S = check_table(params_in, borders_in, 4, kShape2d, &M);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const at::Tensor params = params_in.contiguous();
  const at::Tensor borders = borders_in.contiguous();
  const double inner = static_cast<double>(S - 2);
  return reduce_value(hessian2d_value_kernel<kW2d>, hessian2d_shared_bytes(S), params, borders, S, M,
                      split(S, kW2d), 1.0 / (inner * inner));
}

// grad_r: 0-dim; params: [S, S, N_out, N_in/2]; borders: [S]. Returns [S, S, N_out, N_in/2].
at::Tensor hessian2d_backward_cuda(const at::Tensor& grad_r_in, const at::Tensor& params_in,
                                   const at::Tensor& borders_in) {
  int64_t M = 0;
  const int S = check_table(params_in, borders_in, 4, kShape2d, &M);
  check_grad_r(grad_r_in, params_in);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const at::Tensor grad_r = grad_r_in.contiguous();
  const at::Tensor params = params_in.contiguous();
  const at::Tensor borders = borders_in.contiguous();
  const Chunks chunks = split(S, kW2d);
  return launch_grad(hessian2d_grad_kernel<kW2d>, hessian2d_shared_bytes(S), grad_r, params, borders, S, M,
                     chunks.count, chunks.width);
}

// params: [S, N_out, N_in]; borders: [S]. Returns R, 0-dim float32.
at::Tensor second_diff1d_cuda(const at::Tensor& params_in, const at::Tensor& borders_in) {
  int64_t M = 0;
  const int S = check_table(params_in, borders_in, 3, kShape1d, &M);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const at::Tensor params = params_in.contiguous();
  const at::Tensor borders = borders_in.contiguous();
  return reduce_value(second_diff1d_value_kernel<kW1d>, coef_bytes(S), params, borders, S, M,
                      split(S - 2, kW1d), 1.0 / static_cast<double>(S - 2));
}

// grad_r: 0-dim; params: [S, N_out, N_in]; borders: [S]. Returns [S, N_out, N_in].
at::Tensor second_diff1d_backward_cuda(const at::Tensor& grad_r_in, const at::Tensor& params_in,
                                       const at::Tensor& borders_in) {
  int64_t M = 0;
  const int S = check_table(params_in, borders_in, 3, kShape1d, &M);
  check_grad_r(grad_r_in, params_in);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const at::Tensor grad_r = grad_r_in.contiguous();
  const at::Tensor params = params_in.contiguous();
  const at::Tensor borders = borders_in.contiguous();
  const Chunks chunks = split(S, kW1d);
  return launch_grad(second_diff1d_grad_kernel<kW1d>, coef_bytes(S), grad_r, params, borders, S,
                     M, chunks.count, chunks.width);
}

}  // namespace
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("hessian2d", &lmkan::hessian2d_cuda);
  m.impl("hessian2d_backward", &lmkan::hessian2d_backward_cuda);
  m.impl("second_diff1d", &lmkan::second_diff1d_cuda);
  m.impl("second_diff1d_backward", &lmkan::second_diff1d_backward_cuda);
}
