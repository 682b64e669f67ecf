// The differentiable layer op lmkan1d: its autograd (common/autograd.h says why in C++) and
// its implementation below autograd. The forward runs lmkan1d_forward and saves x, params
// and borders (no copies) with `deterministic`, which only the backward kernel takes; the
// backward runs lmkan1d_backward. borders get no gradient (a fixed grid).
#include <torch/library.h>

#include "common/autograd.h"

namespace lmkan {
namespace lmkan1d {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using TableDtype = std::optional<at::ScalarType>;
using Lmkan1dForwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                                    bool, TableDtype);
using Lmkan1dBackwardOp = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool, bool,
    TableDtype, bool);
using Lmkan1dSlopeForwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, bool, bool, TableDtype);
using Lmkan1dSlopeGradParamsOp = at::Tensor(const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, bool, bool, bool);

struct Lmkan1dFunction : public torch::autograd::Function<Lmkan1dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& params,
                            const at::Tensor& borders, bool uniform_grid, bool batch_last,
                            bool deterministic, TableDtype table_dtype) {
    static const auto op = find_op<Lmkan1dForwardOp>("lmkan::lmkan1d_forward");
    ctx->save_for_backward({x, params, borders});
    ctx->saved_data["uniform_grid"] = uniform_grid;
    ctx->saved_data["batch_last"] = batch_last;
    ctx->saved_data["deterministic"] = deterministic;
    ctx->saved_data["table_dtype"] = table_dtype;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, params, borders, uniform_grid, batch_last, table_dtype);
  }

  // grad_outputs: {dL/dy}. Returns dL/dx, dL/dparams and none for the other 5 arguments.
  // With create_graph=True the engine runs this in grad mode: lmkan1d_backward then records
  // its own node (Lmkan1dBackwardFunction), so second derivatives work. dL/dparams only where
  // the engine needs it (not for autograd.grad(E, x), the first backward of a force loss).
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = find_op<Lmkan1dBackwardOp>("lmkan::lmkan1d_backward");
    const auto saved = ctx->get_saved_variables();
    const bool want_grad_params = ctx->needs_input_grad(1);
    auto [grad_x, grad_p] =
        op.call(grad_outputs[0].contiguous(), saved[0], saved[1], saved[2],
                ctx->saved_data["uniform_grid"].toBool(), ctx->saved_data["batch_last"].toBool(),
                ctx->saved_data["deterministic"].toBool(),
                ctx->saved_data["table_dtype"].toOptional<at::ScalarType>(), want_grad_params);
    return {grad_x, want_grad_params ? grad_p : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// lmkan1d_backward's autograd: its derivatives (docs/spec.md, "Second derivatives"). Given
// the upstream ggx (like grad_x) and ggp (like grad_params):
//   d/d grad_y = forward(x, ggp) + slope_forward(x, ggx, params)  (sum_i ggx slope[k])
//   d/d x      = grad_x of the forward on the table ggp with grad_y  (the weights' slope;
//                grad_x itself is piecewise constant in x)
//   d/d params = slope_grad_params(grad_y, x, ggx)  (nodes k, k+1: -+ ggx grad_y / h_k)
// The 16-bit table of a call enters through the slopes (rounded as the backward's).
struct Lmkan1dBackwardFunction : public torch::autograd::Function<Lmkan1dBackwardFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& x,
                               const at::Tensor& params, const at::Tensor& borders,
                               bool uniform_grid, bool batch_last, bool deterministic,
                               TableDtype table_dtype, bool want_grad_params) {
    static const auto op = find_op<Lmkan1dBackwardOp>("lmkan::lmkan1d_backward");
    ctx->save_for_backward({grad_y, x, params, borders});
    // An output that the loss does not use (grad_params in force training, whose loss reads
    // grad_x only) reaches backward undefined, not as zeros: the terms of ggp (a forward and
    // a whole backward on a table of zeros) and of ggx are then skipped.
    ctx->set_materialize_grads(false);
    ctx->saved_data["uniform_grid"] = uniform_grid;
    ctx->saved_data["batch_last"] = batch_last;
    ctx->saved_data["deterministic"] = deterministic;
    ctx->saved_data["table_dtype"] = table_dtype;
    ctx->saved_data["grad_params"] = want_grad_params;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_x, grad_p] = op.call(grad_y, x, params, borders, uniform_grid, batch_last,
                                    deterministic, table_dtype, want_grad_params);
    return {grad_x, grad_p};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward("lmkan::lmkan1d_backward", "third derivatives");
    static const auto forward_op = find_op<Lmkan1dForwardOp>("lmkan::lmkan1d_forward");
    static const auto backward_op = find_op<Lmkan1dBackwardOp>("lmkan::lmkan1d_backward");
    static const auto slope_forward_op =
        find_op<Lmkan1dSlopeForwardOp>("lmkan::lmkan1d_slope_forward");
    static const auto slope_grad_params_op =
        find_op<Lmkan1dSlopeGradParamsOp>("lmkan::lmkan1d_slope_grad_params");
    const auto saved = ctx->get_saved_variables();
    // images [N, N_in, L] (batch-last): the slope ops take 2-D tensors, so every term is
    // formed on batch-last copies [N_in, N * L] and its result turned back into images
    const ImageLayout layout(saved[1]);
    const at::Tensor grad_y = layout.rows(saved[0]), x = layout.rows(saved[1]);
    const at::Tensor &params = saved[2], &borders = saved[3];
    const bool uniform = ctx->saved_data["uniform_grid"].toBool();
    const bool batch_last = ctx->saved_data["batch_last"].toBool();
    const bool deterministic = ctx->saved_data["deterministic"].toBool();
    const TableDtype table = ctx->saved_data["table_dtype"].toOptional<at::ScalarType>();
    const at::Tensor ggx = layout.rows(grad_outputs[0]);
    // ggp of an empty grad_params output (grad_params=False) is no upstream term
    const at::Tensor& ggp = grad_outputs[1];
    at::Tensor d_grad_y, d_x, d_params;
    if (ggp.defined() && ctx->saved_data["grad_params"].toBool()) {
      const at::Tensor table_ggp = ggp.contiguous();
      if (ctx->needs_input_grad(0))
        d_grad_y = forward_op.call(x, table_ggp, borders, uniform, batch_last, TableDtype());
      if (ctx->needs_input_grad(1))
        d_x = std::get<0>(backward_op.call(grad_y, x, table_ggp, borders, uniform, batch_last,
                                           deterministic, TableDtype(), false));
    }
    if (ggx.defined()) {
      const at::Tensor weights = ggx.contiguous();
      if (ctx->needs_input_grad(0)) {
        const at::Tensor part =
            slope_forward_op.call(x, weights, params, borders, uniform, batch_last, table);
        d_grad_y = d_grad_y.defined() ? d_grad_y.add(part) : part;
      }
      if (ctx->needs_input_grad(2))
        d_params = slope_grad_params_op.call(grad_y, x, weights, params, borders, uniform,
                                             batch_last, deterministic);
    }
    return {layout.images(d_grad_y), layout.images(d_x), d_params, at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> lmkan1d_backward_autograd(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& params,
    const at::Tensor& borders, bool uniform_grid, bool batch_last, bool deterministic,
    TableDtype table_dtype, bool want_grad_params) {
  if (!at::GradMode::is_enabled() ||
      !(grad_y.requires_grad() || x.requires_grad() || params.requires_grad())) {
    static const auto op = find_op<Lmkan1dBackwardOp>("lmkan::lmkan1d_backward");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(grad_y, x, params, borders, uniform_grid, batch_last, deterministic,
                   table_dtype, want_grad_params);
  }
  const auto out = Lmkan1dBackwardFunction::apply(grad_y, x, params, borders, uniform_grid,
                                                  batch_last, deterministic, table_dtype,
                                                  want_grad_params);
  return {out[0], out[1]};
}

at::Tensor lmkan1d_autograd(const at::Tensor& x, const at::Tensor& params,
                                    const at::Tensor& borders, bool uniform_grid, bool batch_last,
                                    bool deterministic, TableDtype table_dtype) {
  if (!records_graph(x, params)) {
    static const auto op = find_op<Lmkan1dForwardOp>("lmkan::lmkan1d_forward");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, params, borders, uniform_grid, batch_last, table_dtype);
  }
  return Lmkan1dFunction::apply(x, params, borders, uniform_grid, batch_last, deterministic,
                                table_dtype);
}

// Below autograd (inference mode, or a caller already below it): the forward alone.
at::Tensor lmkan1d_no_autograd(const at::Tensor& x, const at::Tensor& params,
                               const at::Tensor& borders, bool uniform_grid, bool batch_last,
                               bool, TableDtype table_dtype) {
  static const auto op = find_op<Lmkan1dForwardOp>("lmkan::lmkan1d_forward");
  return op.call(x, params, borders, uniform_grid, batch_last, table_dtype);
}

}  // namespace
}  // namespace lmkan1d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, Autograd, m) {
  m.impl("lmkan1d", &lmkan::lmkan1d::lmkan1d_autograd);
  m.impl("lmkan1d_backward", &lmkan::lmkan1d::lmkan1d_backward_autograd);
}

TORCH_LIBRARY_IMPL(lmkan, CompositeExplicitAutograd, m) {
  m.impl("lmkan1d", &lmkan::lmkan1d::lmkan1d_no_autograd);
}
