// The differentiable layer op lmkan2d: its autograd (common/autograd.h says why in C++) and
// its implementation below autograd. The forward runs lmkan2d_forward and saves x, params
// and borders (no copies) with the backward's settings, which only the backward kernels
// take; the backward runs lmkan2d_backward. borders get no gradient (a fixed grid).
#include <torch/library.h>

#include "common/autograd.h"

namespace lmkan {
namespace lmkan2d {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Lmkan2dForwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                                    int64_t, int64_t, std::optional<at::ScalarType>);
using Lmkan2dBackwardOp = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, int64_t,
    int64_t, bool, bool, std::optional<at::ScalarType>);

struct Lmkan2dFunction : public torch::autograd::Function<Lmkan2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& params,
                            const at::Tensor& borders, bool batch_last, int64_t tile_size,
                            int64_t block_size, int64_t backward_tile_size,
                            int64_t backward_block_size, bool backward_fast_mode,
                            bool deterministic, std::optional<at::ScalarType> table_dtype) {
    static const auto op = find_op<Lmkan2dForwardOp>("lmkan::lmkan2d_forward");
    ctx->save_for_backward({x, params, borders});
    ctx->saved_data["batch_last"] = batch_last;
    ctx->saved_data["tile"] = backward_tile_size;
    ctx->saved_data["block"] = backward_block_size;
    ctx->saved_data["fast"] = backward_fast_mode;
    ctx->saved_data["deterministic"] = deterministic;
    ctx->saved_data["table_dtype"] = table_dtype;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, params, borders, batch_last, tile_size, block_size, table_dtype);
  }

  // grad_outputs: {dL/dy}. Returns dL/dx, dL/dparams and none for the other 9 arguments.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward("lmkan::lmkan2d");
    static const auto op = find_op<Lmkan2dBackwardOp>("lmkan::lmkan2d_backward");
    const auto saved = ctx->get_saved_variables();
    auto [grad_x, grad_p] =
        op.call(grad_outputs[0].contiguous(), saved[0], saved[1], saved[2],
                ctx->saved_data["batch_last"].toBool(), ctx->saved_data["tile"].toInt(),
                ctx->saved_data["block"].toInt(), ctx->saved_data["fast"].toBool(),
                ctx->saved_data["deterministic"].toBool(),
                ctx->saved_data["table_dtype"].toOptional<at::ScalarType>());
    return {grad_x, grad_p, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor lmkan2d_autograd(const at::Tensor& x, const at::Tensor& params,
                                    const at::Tensor& borders, bool batch_last, int64_t tile_size,
                                    int64_t block_size, int64_t backward_tile_size,
                                    int64_t backward_block_size, bool backward_fast_mode,
                                    bool deterministic, std::optional<at::ScalarType> table_dtype) {
  if (!records_graph(x, params)) {
    static const auto op = find_op<Lmkan2dForwardOp>("lmkan::lmkan2d_forward");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, params, borders, batch_last, tile_size, block_size, table_dtype);
  }
  return Lmkan2dFunction::apply(x, params, borders, batch_last, tile_size, block_size,
                                backward_tile_size, backward_block_size, backward_fast_mode,
                                deterministic, table_dtype);
}

// Below autograd (inference mode, or a caller already below it): the forward alone.
at::Tensor lmkan2d_no_autograd(const at::Tensor& x, const at::Tensor& params,
                               const at::Tensor& borders, bool batch_last, int64_t tile_size,
                               int64_t block_size, int64_t, int64_t, bool, bool,
                               std::optional<at::ScalarType> table_dtype) {
  static const auto op = find_op<Lmkan2dForwardOp>("lmkan::lmkan2d_forward");
  return op.call(x, params, borders, batch_last, tile_size, block_size, table_dtype);
}

}  // namespace
}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, Autograd, m) {
  m.impl("lmkan2d", &lmkan::lmkan2d::lmkan2d_autograd);
}

TORCH_LIBRARY_IMPL(lmkan, CompositeExplicitAutograd, m) {
  m.impl("lmkan2d", &lmkan::lmkan2d::lmkan2d_no_autograd);
}
