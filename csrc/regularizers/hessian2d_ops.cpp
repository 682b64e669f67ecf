// hessian2d, hessian2d_backward, hessian2d_sum and hessian2d_sum_backward on CUDA: the
// checks, the grouping of a call's tables into TableSets of at most kMaxTables, the value's
// final sum and the weight (the kernels: hessian2d.cu; the scheme: launch.h).
#include <algorithm>
#include <vector>

#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "regularizers/launch.h"

namespace lmkan {
namespace regularizers {
namespace {

constexpr const char* kShape2d = "[G+1, G+1, N_out, N_in/2]";

// The checked, contiguous tables of a call, and their launch sets.
struct Tables {
  std::vector<at::Tensor> params, borders;
  std::vector<int> S;
  std::vector<int64_t> M, blocks;
  int64_t total_blocks = 0;
};

Tables check_tables(at::TensorList params, at::TensorList borders, const char* op) {
  TORCH_CHECK_VALUE(params.size() == borders.size() && !params.empty(), op,
                    ": params and borders must be lists of the same, non-zero length, got ",
                    params.size(), " and ", borders.size());
  Tables t;
  for (size_t i = 0; i < params.size(); ++i) {
    int64_t M = 0;
    const int S = check_table(params[i], borders[i], 4, kShape2d, &M);
    check_same_device(params[i], "params", params[0], "params[0]");
    t.params.push_back(params[i].contiguous());
    t.borders.push_back(borders[i].contiguous());
    t.S.push_back(S);
    t.M.push_back(M);
    t.blocks.push_back(M == 0 ? 0 : num_blocks(M, split(S, kW2d).count));
    t.total_blocks += t.blocks.back();
  }
  TORCH_CHECK_VALUE(t.total_blocks <= 0x7fffffff, op, ": too many functions for one launch");
  return t;
}

// The set of tables [first, last) (at most kMaxTables), grads optional.
TableSet make_set(const Tables& t, size_t first, size_t last, std::vector<at::Tensor>* grads,
                  float weight) {
  TableSet set{};
  set.count = static_cast<int>(last - first);
  unsigned end = 0;
  for (size_t i = first; i < last; ++i) {
    const int k = static_cast<int>(i - first);
    const Chunks chunks = split(t.S[i], kW2d);
    const double inner = static_cast<double>(t.S[i] - 2);
    set.params[k] = t.params[i].data_ptr<float>();
    set.borders[k] = t.borders[i].data_ptr<float>();
    set.grad[k] = grads != nullptr ? (*grads)[i].data_ptr<float>() : nullptr;
    set.M[k] = t.M[i];
    set.scale[k] = 1.0 / (inner * inner);
    set.grad_scale[k] = static_cast<float>(2.0 * weight / (inner * inner));
    set.S[k] = t.S[i];
    set.num_chunks[k] = chunks.count;
    set.chunk_width[k] = chunks.width;
    end += static_cast<unsigned>(t.blocks[i]);
    set.block_end[k] = end;
    set.max_nodes = std::max(set.max_nodes, t.S[i]);
  }
  return set;
}

// Calls launch(set, blocks, first_block) for consecutive groups of at most kMaxTables tables
// that hold blocks of work.
template <typename Launch>
void for_each_launch(const Tables& t, std::vector<at::Tensor>* grads, float weight,
                     Launch&& launch) {
  int64_t first_block = 0;
  for (size_t first = 0; first < t.params.size(); first += kMaxTables) {
    const size_t last = std::min(t.params.size(), first + kMaxTables);
    const TableSet set = make_set(t, first, last, grads, weight);
    const int64_t blocks = set.block_end[set.count - 1];
    if (blocks > 0) launch(set, blocks, first_block);
    first_block += blocks;
  }
}

// R = weight * the sum over the tables of their Hessian values: one value launch per
// kMaxTables tables (one block for at most kOneBlockMaxBlocks blocks of work), one final sum
// (which applies the weight: no multiplication op for a weighted term).
at::Tensor hessian2d_value(const Tables& t, double weight = 1.0) {
  const c10::cuda::CUDAGuard guard(t.params[0].device());
  const bool one_launch = t.params.size() <= static_cast<size_t>(kMaxTables);
  const bool multi = t.params.size() > 1;
  // one table: its scale applied at the end (kMulti = false); several: per table, in the kernel
  const double inner = static_cast<double>(t.S[0] - 2);
  const double scale = multi ? weight : weight / (inner * inner);
  return reduce_value_blocks(
      t.total_blocks, scale, one_launch, t.params[0].options(), [&](const ValueOut& o) {
        for_each_launch(t, nullptr, 1.f, [&](const TableSet& set, int64_t blocks, int64_t first) {
          ValueOut part = o;
          if (o.partials != nullptr) part.partials = o.partials + first;
          launch_hessian2d_value(set, part, blocks, multi);
        });
      });
}

// dR/dparams * grad_r * weight of every table, one launch per kMaxTables tables.
std::vector<at::Tensor> hessian2d_grads(const at::Tensor& grad_r_in, const Tables& t,
                                        double weight = 1.0) {
  check_grad_r(grad_r_in, t.params[0]);
  const c10::cuda::CUDAGuard guard(t.params[0].device());
  const at::Tensor grad_r = grad_r_in.contiguous();
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : t.params) grads.push_back(at::empty_like(p));  // contiguous
  const bool multi = t.params.size() > 1;
  for_each_launch(t, &grads, static_cast<float>(weight), [&](const TableSet& set, int64_t blocks,
                                                              int64_t) {
    launch_hessian2d_grad(set, grad_r.data_ptr<float>(), blocks, multi);
  });
  return grads;
}

// params: [S, S, N_out, N_in/2]; borders: [S]. Returns R, 0-dim float32.
at::Tensor hessian2d_cuda(const at::Tensor& params, const at::Tensor& borders) {
  return hessian2d_value(check_tables({params}, {borders}, "hessian2d"));
}

// grad_r: 0-dim; params: [S, S, N_out, N_in/2]; borders: [S]. Returns [S, S, N_out, N_in/2].
at::Tensor hessian2d_backward_cuda(const at::Tensor& grad_r, const at::Tensor& params,
                                   const at::Tensor& borders) {
  return hessian2d_grads(grad_r, check_tables({params}, {borders}, "hessian2d_backward"))[0];
}

// weight * the sum of hessian2d over lists of tables (a model's 2D layers): one value
// launch and one final sum for up to kMaxTables tables, where one call per table takes two
// or three launches and an add each, and a weight outside the op a multiplication in each
// direction (host-bound small training steps, docs/decisions.md).
at::Tensor hessian2d_sum_cuda(at::TensorList params, at::TensorList borders, double weight) {
  return hessian2d_value(check_tables(params, borders, "hessian2d_sum"), weight);
}

std::vector<at::Tensor> hessian2d_sum_backward_cuda(const at::Tensor& grad_r,
                                                    at::TensorList params,
                                                    at::TensorList borders, double weight) {
  return hessian2d_grads(grad_r, check_tables(params, borders, "hessian2d_sum_backward"), weight);
}

}  // namespace
}  // namespace regularizers
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("hessian2d", &lmkan::regularizers::hessian2d_cuda);
  m.impl("hessian2d_backward", &lmkan::regularizers::hessian2d_backward_cuda);
  m.impl("hessian2d_sum", &lmkan::regularizers::hessian2d_sum_cuda);
  m.impl("hessian2d_sum_backward", &lmkan::regularizers::hessian2d_sum_backward_cuda);
}
