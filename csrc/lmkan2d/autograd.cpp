// Autograd of lmkan2d_forward (common/autograd.h says why in C++). The backward saves x,
// params and borders (no copies) and calls lmkan2d_backward with the configuration arguments
// the forward op was given; borders get no gradient (a fixed grid).
#include <torch/library.h>

#include "common/autograd.h"

namespace lmkan {
namespace lmkan2d {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Lmkan2dForwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                                    int64_t, int64_t, int64_t, int64_t, bool, bool);
using Lmkan2dBackwardOp = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, int64_t,
    int64_t, bool, bool);

struct Lmkan2dFunction : public torch::autograd::Function<Lmkan2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& params,
                            const at::Tensor& borders, bool batch_last, int64_t tile_size,
                            int64_t block_size, int64_t backward_tile_size,
                            int64_t backward_block_size, bool backward_fast_mode,
                            bool deterministic) {
    static const auto op = find_op<Lmkan2dForwardOp>("lmkan::lmkan2d_forward");
    ctx->save_for_backward({x, params, borders});
    ctx->saved_data["batch_last"] = batch_last;
    ctx->saved_data["tile"] = backward_tile_size;
    ctx->saved_data["block"] = backward_block_size;
    ctx->saved_data["fast"] = backward_fast_mode;
    ctx->saved_data["deterministic"] = deterministic;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, params, borders, batch_last, tile_size, block_size, backward_tile_size,
                   backward_block_size, backward_fast_mode, deterministic);
  }

  // grad_outputs: {dL/dy}. Returns dL/dx, dL/dparams and none for the other 8 arguments.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = find_op<Lmkan2dBackwardOp>("lmkan::lmkan2d_backward");
    const auto saved = ctx->get_saved_variables();
    auto [grad_x, grad_p] =
        op.call(grad_outputs[0].contiguous(), saved[0], saved[1], saved[2],
                ctx->saved_data["batch_last"].toBool(), ctx->saved_data["tile"].toInt(),
                ctx->saved_data["block"].toInt(), ctx->saved_data["fast"].toBool(),
                ctx->saved_data["deterministic"].toBool());
    return {grad_x, grad_p, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor lmkan2d_forward_autograd(const at::Tensor& x, const at::Tensor& params,
                                    const at::Tensor& borders, bool batch_last, int64_t tile_size,
                                    int64_t block_size, int64_t backward_tile_size,
                                    int64_t backward_block_size, bool backward_fast_mode,
                                    bool deterministic) {
  return Lmkan2dFunction::apply(x, params, borders, batch_last, tile_size, block_size,
                                backward_tile_size, backward_block_size, backward_fast_mode,
                                deterministic);
}

}  // namespace
}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, Autograd, m) {
  m.impl("lmkan2d_forward", &lmkan::lmkan2d::lmkan2d_forward_autograd);
}
