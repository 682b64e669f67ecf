// The 2D Hessian stencil kernels (value and gradient) and their launchers (launch.h has the
// scheme); the ops' host code, which groups a call's tables into TableSets, is
// hessian2d_ops.cpp.
#include <algorithm>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/device_limits.h"

#include "common/cp_async.cuh"
#include "regularizers/device.cuh"

namespace lmkan {
namespace regularizers {
namespace {

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
// scaled when stored by grad_r times the table's grad_scale (2 w / (S-2)^2, w the sum's weight).
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

// Table t of block of work b in a TableSet, and b's index within that table's blocks.
struct TableOf {
  int t;
  unsigned local;
};
// kMulti = false: a set of one table, whose fields are then read at constant offsets of the
// parameter space as separate arguments were (indexed by a run-time t, they took registers
// for the whole kernel: the gradient kernel spilled 64 bytes instead of 8 at G = 26).
template <bool kMulti>
__device__ __forceinline__ TableOf table_of(const TableSet& set, unsigned b) {
  if (!kMulti) return {0, b};
  int t = 0;
  while (t + 1 < set.count && b >= set.block_end[t]) ++t;  // the same on every thread
  return {t, t == 0 ? b : b - set.block_end[t - 1]};
}

// R, 2D (ValueOut: partial sums or, in a one-block launch, R itself), of every table of the
// set: R = sum over tables of scale[t] * (the table's stencil sum). params: [S, S, M];
// borders: [S]. Block of work b covers chunk (local % num_chunks) of functions
// (local / num_chunks) * kThreads + tid of its table (table_of), with the gradient kernel's
// chunks and windows (hessian2d_grad_kernel). A thread's ring column is its own (RowRing),
// and every copy into it has landed when a window ends, so the one-block launch reuses it
// without a barrier; the coefficients are refilled (between two barriers) when its blocks
// of work pass to another table. kMulti = false (one table): the table's scale is applied
// by the final sum (o.scale), as the single-table op always did.
template <int W, bool kOneBlock, bool kMulti>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM2d) hessian2d_value_kernel(
    const __grid_constant__ TableSet set, ValueOut o) {
  extern __shared__ float4 coef4[];  // [max_nodes], then the RowRing ring
  float* ring = reinterpret_cast<float*>(coef4 + set.max_nodes) + threadIdx.x;
  __shared__ double red[32];
  int filled = 0;  // the table whose coefficients coef4 holds
  if (kMulti) {
    filled = -1;
  } else {
    fill_stencil_coefficients(set.borders[0], set.S[0], coef4);
    __syncthreads();
  }

  const double total = sum_over_work<kOneBlock>(o, [&](unsigned b) {
    const TableOf at = table_of<kMulti>(set, b);
    if (kMulti && at.t != filled) {  // uniform: every thread of the block reaches the barriers
      if (filled >= 0) __syncthreads();  // the previous table's coefficients are read
      fill_stencil_coefficients(set.borders[at.t], set.S[at.t], coef4);
      __syncthreads();
      filled = at.t;
    }
    const int S = set.S[at.t], num_chunks = set.num_chunks[at.t];
    const int64_t M = set.M[at.t];
    const int chunk = static_cast<int>(at.local % num_chunks);
    const int64_t m = static_cast<int64_t>(at.local / num_chunks) * kThreads + threadIdx.x;
    double sum = 0.0;
    if (m < M) {  // every thread reaches write_value
      const Window win = chunk_window<W>(chunk, set.chunk_width[at.t], S);
      const float* row0 = set.params[at.t] + m + static_cast<int64_t>(win.bs) * M;
      with_window_kind(win.kind, [&](auto kind) {
        sum = hessian2d_value_window<W, decltype(kind)::value>(row0, coef4, S, M, win, ring);
      });
    }
    return kMulti ? sum * set.scale[at.t] : sum;
  });
  write_value<kOneBlock>(total, red, o);
}

// dR/dP * grad_r, 2D, of every table of the set. grad_r: [1]; params, grad: [S, S, M];
// borders: [S]. One block: kThreads functions x one chunk of gradient columns b0 .. b0+nb-1
// of one table (balanced chunks of at most W columns partition the S columns). A thread
// computes the stencil over a window of W columns bs .. bs+W-1 (bs = b0, except that the
// last chunk's window is pulled left to end at column S-1 so that the table edge sits at a
// fixed place in it) and stores the nb columns it owns. The window's kind (uniform per
// block) selects a variant whose edge handling is resolved at compile time. With balanced
// chunks every middle chunk's window is interior up to S ~ 12 W; beyond, some are generic
// (slower).
template <int W, bool kMulti>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM2d) hessian2d_grad_kernel(
    const float* __restrict__ grad_r, const __grid_constant__ TableSet set) {
  extern __shared__ float4 coef4[];  // [max_nodes], then the RowRing ring
  float* ring = reinterpret_cast<float*>(coef4 + set.max_nodes) + threadIdx.x;
  const TableOf at = table_of<kMulti>(set, blockIdx.x);
  const int S = set.S[at.t], num_chunks = set.num_chunks[at.t];
  const int64_t M = set.M[at.t];
  fill_stencil_coefficients(set.borders[at.t], S, coef4);
  __syncthreads();

  const int chunk = static_cast<int>(at.local % num_chunks);
  const int64_t m = static_cast<int64_t>(at.local / num_chunks) * kThreads + threadIdx.x;
  if (m >= M) return;  // no block-wide synchronisation below
  const Window win = chunk_window<W>(chunk, set.chunk_width[at.t], S);
  // d/dP of grad_r * weight * mean_(a,b) (fxx^2 + 2 fxy^2 + fyy^2): f^2 -> scale f df/dP,
  // scale = grad_r * 2 weight / (S-2)^2 (grad_scale: the host's)
  const float scale = __ldg(grad_r) * set.grad_scale[at.t];
  const float* row0 = set.params[at.t] + m + static_cast<int64_t>(win.bs) * M;
  float* grow0 = set.grad[at.t] + m + static_cast<int64_t>(win.bs) * M;
  with_window_kind(win.kind, [&](auto kind) {
    hessian2d_grad_window<W, decltype(kind)::value>(row0, grow0, coef4, S, M, win, scale, ring);
  });
}

}  // namespace

void launch_hessian2d_value(const TableSet& set, const ValueOut& part, int64_t blocks, bool multi) {
  const bool one_block = part.partials == nullptr;
  const auto kernel = multi ? (one_block ? hessian2d_value_kernel<kW2d, true, true>
                                         : hessian2d_value_kernel<kW2d, false, true>)
                            : (one_block ? hessian2d_value_kernel<kW2d, true, false>
                                         : hessian2d_value_kernel<kW2d, false, false>);
  const size_t shared = hessian2d_shared_bytes(set.max_nodes);
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), shared);
  kernel<<<one_block ? 1u : static_cast<unsigned>(blocks), kThreads, shared,
           c10::cuda::getCurrentCUDAStream()>>>(set, part);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_hessian2d_grad(const TableSet& set, const float* grad_r, int64_t blocks, bool multi) {
  const auto kernel = multi ? hessian2d_grad_kernel<kW2d, true> : hessian2d_grad_kernel<kW2d, false>;
  const size_t shared = hessian2d_shared_bytes(set.max_nodes);
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), shared);
  kernel<<<static_cast<unsigned>(blocks), kThreads, shared, c10::cuda::getCurrentCUDAStream()>>>(
      grad_r, set);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace regularizers
}  // namespace lmkan
