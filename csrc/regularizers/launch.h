// Smoothness regularisers of the lookup tables (docs/spec.md sections 3 and 4), value and
// gradient, without host synchronisation and without atomics.
//
//   hessian2d(params [S, S, N_out, N_in/2], borders [S]) -> R (0-dim)
//   hessian2d_backward(grad_r (0-dim, on the device), params, borders) -> dR/dparams * grad_r
//   second_diff1d(params [S, N_out, N_in], borders [S]) -> R (0-dim)
//   second_diff1d_backward(grad_r, params, borders) -> dR/dparams * grad_r
//   hessian2d_sum(params list, borders list, weight) -> weight times the sum of hessian2d
//   hessian2d_sum_backward(grad_r, params list, borders list, weight) -> one gradient per
//       table, each dR/dparams * weight * grad_r
// with S = G + 1 nodes per axis (per table: the 2D kernels take a TableSet, below).
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
// row loops (see Window in hessian2d.cu).
//
// The value is reduced deterministically in two stages: each block writes its partial sum
// (double) to a buffer, and one small kernel adds the partials in a fixed order and writes
// R; a small table (at most kOneBlockMaxBlocks blocks of work) is summed by one block in a
// single launch (ValueOut). The gradient kernels read dL/dR from device memory. Per-node
// coefficients are computed from `borders` in double by every block into shared memory.
//
// Files: launch.h (limits, chunking, the launchers), device.cuh (helpers of both families),
// common.cu (checks, launches, the fixed-order final sum), hessian2d.cu (the 2D kernels),
// hessian2d_ops.cpp (the 2D ops' host code), second_diff1d.cu, autograd.cpp (their
// autograd, registered in C++ so that a Python call is one op call).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

#include <ATen/core/Tensor.h>

namespace lmkan {
namespace regularizers {

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

struct Chunks {
  int count;  // chunks per function
  int width;  // columns (rows in 1D) per chunk, the last one may have fewer
};

// Splits n columns into as few chunks of at most max_width as possible, of near-equal width.
inline Chunks split(int n, int max_width) {
  Chunks c;
  c.count = (n + max_width - 1) / max_width;
  c.width = (n + c.count - 1) / c.count;
  return c;
}

// Checks shared by the four ops; returns S (nodes per axis) and sets M (functions).
int check_table(const at::Tensor& params, const at::Tensor& borders, int64_t table_dims,
                const char* shape, int64_t* M);
void check_grad_r(const at::Tensor& grad_r, const at::Tensor& params);

inline size_t coef_bytes(int S) { return static_cast<size_t>(3 * S) * sizeof(float); }

// Where a value kernel's sum goes. A block of work is kThreads functions x one chunk.
// Multi-block launches: block b does block of work b and writes partials[b], which
// finish_sum_kernel adds in a fixed order. One-block launches, for tables of at most
// kOneBlockMaxBlocks blocks of work: the one block does them all in turn and writes
// R = scale * sum itself. One launch and one allocation less per call: a small training step
// is bound by its launches on the host (docs/decisions.md, "Per-call cost"). The block does
// the blocks of work one after the other, each bound by the latency of its S row loads (a
// limit of 8 blocks gave 28.7 us per call on the H200 for tables of 8 and 2 blocks at S = 11,
// docs/decisions.md), so only the smallest tables take it.
struct ValueOut {
  double* partials;  // [blocks], multi-block launches
  float* out;        // R (0-dim), one-block launches
  double scale;      // R = scale * sum, one-block launches
  int64_t blocks;    // blocks of work
};
constexpr int64_t kOneBlockMaxBlocks = 2;

// The value kernels, each in its multi-block and one-block instance, and the gradient kernels.
using ValueKernel = void (*)(const float*, const float*, ValueOut, int, int64_t, int, int);
struct ValueKernels {
  ValueKernel multi_block, one_block;
};
using GradKernel = void (*)(const float*, const float*, const float*, float*, int, int64_t, int,
                            int);

// The value of `blocks` blocks of work: launch(o) runs the value kernel, one block when
// o.partials is null (blocks <= kOneBlockMaxBlocks and one_block_allowed: R = o.scale * sum,
// written by the kernel), else one block per block of work writing o.partials, then the
// final reduction adds them in order; returns R, 0-dim float32 (`options`' device).
at::Tensor reduce_value_blocks(int64_t blocks, double scale, bool one_block_allowed,
                               const at::TensorOptions& options,
                               const std::function<void(const ValueOut&)>& launch);
// Launches a value kernel (`shared_bytes` of dynamic shared memory) on the given chunks, one
// block or many then the final reduction (ValueOut); returns R = scale * sum.
at::Tensor reduce_value(ValueKernels kernels, size_t shared_bytes, const at::Tensor& params,
                        const at::Tensor& borders, int S, int64_t M, Chunks chunks, double scale);
// Blocks of work of a table of M functions in chunks of `num_chunks` (checked to fit an int).
int64_t num_blocks(int64_t M, int num_chunks);

// The 2D tables of one launch of the Hessian kernels (hessian2d.cu): a model's 2D layers
// in one launch (hessian2d_sum; the single-table ops pass one). Block of work b belongs to
// table t with block_end[t-1] <= b < block_end[t] (block_end[-1] = 0). Passed by value as a
// __grid_constant__ kernel argument, so a table's fields are read in place, indexed by t.
constexpr int kMaxTables = 8;
struct TableSet {
  const float* params[kMaxTables];  // [S, S, M] contiguous
  const float* borders[kMaxTables];  // [S]
  float* grad[kMaxTables];           // gradient kernels: [S, S, M]
  int64_t M[kMaxTables];
  double scale[kMaxTables];          // value kernels: R_t = scale[t] * its sum
  float grad_scale[kMaxTables];      // gradient kernels: dR/dparams = grad_r * grad_scale[t] *
                                     // (the stencil's f df/dP), 2 weight / (S-2)^2
  int S[kMaxTables], num_chunks[kMaxTables], chunk_width[kMaxTables];
  unsigned block_end[kMaxTables];
  int count;
  int max_nodes;  // the largest S: the coefficients' shared-memory slots before the ring
};
// The 2D kernels on one TableSet (hessian2d.cu), on the current stream: the value kernel over
// `blocks` blocks of work (one block when part.partials is null; R = part.scale * sum),
// and the gradient kernel, one block per block of work. multi: the set may hold several
// tables (else its one table's fields are read at constant offsets).
void launch_hessian2d_value(const TableSet& set, const ValueOut& part, int64_t blocks, bool multi);
void launch_hessian2d_grad(const TableSet& set, const float* grad_r, int64_t blocks, bool multi);
// Launches the gradient kernel `kernel` with `shared_bytes` of dynamic shared memory on
// `chunks` per block of functions and returns dR/dparams * grad_r.
at::Tensor launch_grad(GradKernel kernel, size_t shared_bytes, const at::Tensor& grad_r,
                       const at::Tensor& params, const at::Tensor& borders, int S, int64_t M,
                       Chunks chunks);

}  // namespace regularizers
}  // namespace lmkan
