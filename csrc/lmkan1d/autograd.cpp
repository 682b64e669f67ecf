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
    TableDtype);

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
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward("lmkan::lmkan1d");
    static const auto op = find_op<Lmkan1dBackwardOp>("lmkan::lmkan1d_backward");
    const auto saved = ctx->get_saved_variables();
    auto [grad_x, grad_p] =
        op.call(grad_outputs[0].contiguous(), saved[0], saved[1], saved[2],
                ctx->saved_data["uniform_grid"].toBool(), ctx->saved_data["batch_last"].toBool(),
                ctx->saved_data["deterministic"].toBool(),
                ctx->saved_data["table_dtype"].toOptional<at::ScalarType>());
    return {grad_x, grad_p, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

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
}

TORCH_LIBRARY_IMPL(lmkan, CompositeExplicitAutograd, m) {
  m.impl("lmkan1d", &lmkan::lmkan1d::lmkan1d_no_autograd);
}
