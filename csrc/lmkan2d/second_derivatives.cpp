// The ops of lmkan2d_backward's own derivatives (its autograd: lmkan2d/autograd.cpp;
// docs/spec.md, "Second derivatives"). For weights w like x, grad_x = sum_o grad_y df_o/dx
// contracted with w is <w, grad_x>; its derivatives are
//   lmkan2d_slope_forward     d/d grad_y: y[o, b] = sum_p w . grad f_{o,p}  (forward-shaped)
//   lmkan2d_slope_grad_x      d/dx: per pair sum_o grad_y d2f/dx1dx2, times the weight of
//                             the pair's other input (d2f/dx1^2 = d2f/dx2^2 = 0 in a cell)
//   lmkan2d_slope_grad_params d/dP: grad_y times the corner weights of w . grad f
// Tables are rounded to table_dtype as the layer's backward rounds them.
#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "lmkan2d/layout.h"
#include "lmkan2d/plan.h"

namespace lmkan {
namespace lmkan2d {
namespace {

// The layer tensors and `weights` (like x); the launch settings are the ops' own.
void check_slope_args(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& params,
                      const at::Tensor& borders, bool batch_last, const char* op) {
  check_common(x, params, borders, batch_last, kSlopeTile, kSlopeBlock, op);
  check_like_x(weights, x, "weights", op);
}

int64_t batch_of(const at::Tensor& x, bool batch_last) {
  return batch_last ? x.size(1) : x.size(0);
}

at::Tensor slope_forward_cuda(const at::Tensor& x, const at::Tensor& weights,
                              const at::Tensor& params, const at::Tensor& borders,
                              bool batch_last, std::optional<at::ScalarType> table_dtype) {
  constexpr const char* op = "lmkan2d_slope_forward";
  check_slope_args(x, weights, params, borders, batch_last, op);
  const at::ScalarType table = resolve_table_dtype(table_dtype, params, op);
  const c10::cuda::CUDAGuard guard(x.device());
  return slope_forward_by_output_lanes(x.contiguous(), weights.contiguous(), params.contiguous(),
                                       borders.contiguous(), batch_last, table);
}

at::Tensor slope_grad_x_cuda(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& weights,
                             const at::Tensor& params, const at::Tensor& borders,
                             bool batch_last, std::optional<at::ScalarType> table_dtype) {
  constexpr const char* op = "lmkan2d_slope_grad_x";
  check_slope_args(x, weights, params, borders, batch_last, op);
  const int64_t batch = batch_of(x, batch_last);
  check_grad_y(gy, x, params.size(2), batch, batch_last, op);
  const at::ScalarType table = resolve_table_dtype(table_dtype, params, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  if (batch == 0) return at::empty_like(xc);
  const DeviceLimits lim = device_limits(x.device().index());
  if (sample_threads_serve(static_cast<int>(params.size(0)) - 1, params.size(2), lim, 1))
    return dx_by_sample_threads(xc, params.contiguous(), borders.contiguous(), gy.contiguous(),
                                weights.contiguous(), batch_last, lim, table);
  return slope_dx_by_sample_tiles(xc, weights.contiguous(), params.contiguous(),
                                  borders.contiguous(), gy.contiguous(), batch,
                                  static_cast<int>(params.size(2)),
                                  static_cast<int>(params.size(3)),
                                  static_cast<int>(params.size(0)) - 1, batch_last, lim, table);
}

at::Tensor slope_grad_params_cuda(const at::Tensor& gy, const at::Tensor& x,
                                  const at::Tensor& weights, const at::Tensor& params,
                                  const at::Tensor& borders, bool batch_last, bool deterministic) {
  constexpr const char* op = "lmkan2d_slope_grad_params";
  check_slope_args(x, weights, params, borders, batch_last, op);
  const int64_t batch = batch_of(x, batch_last);
  check_grad_y(gy, x, params.size(2), batch, batch_last, op);
  const c10::cuda::CUDAGuard guard(x.device());
  if (batch == 0) return at::zeros_like(params);
  const DeviceLimits lim = device_limits(x.device().index());
  const at::Tensor xc = x.contiguous(), wc = weights.contiguous(), bc = borders.contiguous(),
                   gc = gy.contiguous();
  const int num_grids = static_cast<int>(params.size(0)) - 1;
  // few outputs, not deterministic: a thread per (sample, pair), shared-memory atomics (the
  // slope dP reads no table: no table dtype)
  const at::Tensor dp =
      !deterministic && sample_threads_serve(num_grids, params.size(2), lim, 1)
          ? std::get<1>(dp_by_sample_threads(xc, params, bc, gc, wc, batch_last, lim, at::kFloat))
          : slope_dp_by_warp_accumulators(xc, wc, bc, gc, batch, static_cast<int>(params.size(2)),
                                          static_cast<int>(params.size(3)), num_grids,
                                          batch_last, deterministic, lim);
  // accumulated in float32; 16-bit parameters get theirs rounded once, here
  return params.scalar_type() == at::kFloat ? dp : dp.to(params.scalar_type());
}

}  // namespace
}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, CUDA, m) {
  m.impl("lmkan2d_slope_forward", &lmkan::lmkan2d::slope_forward_cuda);
  m.impl("lmkan2d_slope_grad_x", &lmkan::lmkan2d::slope_grad_x_cuda);
  m.impl("lmkan2d_slope_grad_params", &lmkan::lmkan2d::slope_grad_params_cuda);
}
