// The differentiable layer op lmkan2d: its autograd (common/autograd.h says why in C++) and
// its implementation below autograd. The forward runs lmkan2d_forward and saves x, params
// and borders (no copies) with the backward's settings, which only the backward kernels
// take; the backward runs lmkan2d_backward, which has an autograd of its own (second
// derivatives). borders get no gradient (a fixed grid).
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
    int64_t, bool, bool, std::optional<at::ScalarType>, bool);
using Lmkan2dSlopeForwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, bool, std::optional<at::ScalarType>);
using Lmkan2dSlopeGradXOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, const at::Tensor&, bool,
                                       std::optional<at::ScalarType>);
using Lmkan2dSlopeGradParamsOp = at::Tensor(const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, bool, bool);

// y in the layer op's out_dtype (None: float32, the forward kernels' output). A 16-bit y
// (float16, bfloat16: the output under autocast) makes the engine hand lmkan2d_backward a
// 16-bit grad_y, which the sorted backward reads as such (half its L2 traffic).
at::Tensor as_out_dtype(const at::Tensor& y, std::optional<at::ScalarType> out_dtype) {
  if (!out_dtype.has_value() || *out_dtype == at::kFloat) return y;
  TORCH_CHECK_TYPE(*out_dtype == at::kHalf || *out_dtype == at::kBFloat16,
                   "lmkan2d: out_dtype must be None, float32, float16 or bfloat16, got ",
                   *out_dtype);
  return y.to(*out_dtype);
}

struct Lmkan2dFunction : public torch::autograd::Function<Lmkan2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& params,
                            const at::Tensor& borders, bool batch_last, int64_t tile_size,
                            int64_t block_size, int64_t backward_tile_size,
                            int64_t backward_block_size, bool backward_fast_mode,
                            bool deterministic, std::optional<at::ScalarType> table_dtype,
                            std::optional<at::ScalarType> out_dtype) {
    static const auto op = find_op<Lmkan2dForwardOp>("lmkan::lmkan2d_forward");
    ctx->save_for_backward({x, params, borders});
    ctx->saved_data["batch_last"] = batch_last;
    ctx->saved_data["tile"] = backward_tile_size;
    ctx->saved_data["block"] = backward_block_size;
    ctx->saved_data["fast"] = backward_fast_mode;
    ctx->saved_data["deterministic"] = deterministic;
    ctx->saved_data["table_dtype"] = table_dtype;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return as_out_dtype(op.call(x, params, borders, batch_last, tile_size, block_size, table_dtype),
                        out_dtype);
  }

  // grad_outputs: {dL/dy}, in y's dtype. Returns dL/dx, dL/dparams and none for the other 10
  // arguments.
  // With create_graph=True the engine runs this in grad mode: lmkan2d_backward then records
  // its own node (Lmkan2dBackwardFunction), so second derivatives work. dL/dparams only where
  // the engine needs it (not for autograd.grad(E, x), the first backward of a force loss).
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = find_op<Lmkan2dBackwardOp>("lmkan::lmkan2d_backward");
    const auto saved = ctx->get_saved_variables();
    const bool want_grad_params = ctx->needs_input_grad(1);
    auto [grad_x, grad_p] =
        op.call(grad_outputs[0].contiguous(), saved[0], saved[1], saved[2],
                ctx->saved_data["batch_last"].toBool(), ctx->saved_data["tile"].toInt(),
                ctx->saved_data["block"].toInt(), ctx->saved_data["fast"].toBool(),
                ctx->saved_data["deterministic"].toBool(),
                ctx->saved_data["table_dtype"].toOptional<at::ScalarType>(), want_grad_params);
    if (!want_grad_params) grad_p = at::Tensor();
    return {grad_x, grad_p, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// lmkan2d_backward's autograd: its derivatives (docs/spec.md, "Second derivatives"). Given
// the upstream ggx (like grad_x) and ggp (like grad_params):
//   d/d grad_y = forward(x, ggp) + slope_forward(x, ggx, params)
//   d/d x      = grad_x of the forward on the table ggp with grad_y
//                + slope_grad_x(grad_y, x, ggx, params)  (the pairs' mixed derivatives)
//   d/d params = slope_grad_params(grad_y, x, ggx)
// The lookups of ggp run with the call's backward tile and block; the 16-bit table of a call
// enters through params (rounded as the backward's).
struct Lmkan2dBackwardFunction : public torch::autograd::Function<Lmkan2dBackwardFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& x,
                               const at::Tensor& params, const at::Tensor& borders,
                               bool batch_last, int64_t tile_size, int64_t block_size,
                               bool fast_mode, bool deterministic,
                               std::optional<at::ScalarType> table_dtype, bool want_grad_params) {
    static const auto op = find_op<Lmkan2dBackwardOp>("lmkan::lmkan2d_backward");
    ctx->save_for_backward({grad_y, x, params, borders});
    // An output that the loss does not use (grad_params in force training, whose loss reads
    // grad_x only) reaches backward undefined, not as zeros: the terms of ggp (a forward and
    // a whole backward on a table of zeros) and of ggx are then skipped.
    ctx->set_materialize_grads(false);
    ctx->saved_data["batch_last"] = batch_last;
    ctx->saved_data["tile"] = tile_size;
    ctx->saved_data["block"] = block_size;
    ctx->saved_data["fast"] = fast_mode;
    ctx->saved_data["deterministic"] = deterministic;
    ctx->saved_data["table_dtype"] = table_dtype;
    ctx->saved_data["grad_params"] = want_grad_params;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_x, grad_p] = op.call(grad_y, x, params, borders, batch_last, tile_size,
                                    block_size, fast_mode, deterministic, table_dtype,
                                    want_grad_params);
    return {grad_x, grad_p};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward("lmkan::lmkan2d_backward", "third derivatives");
    static const auto forward_op = find_op<Lmkan2dForwardOp>("lmkan::lmkan2d_forward");
    static const auto backward_op = find_op<Lmkan2dBackwardOp>("lmkan::lmkan2d_backward");
    static const auto slope_forward_op =
        find_op<Lmkan2dSlopeForwardOp>("lmkan::lmkan2d_slope_forward");
    static const auto slope_grad_x_op = find_op<Lmkan2dSlopeGradXOp>("lmkan::lmkan2d_slope_grad_x");
    static const auto slope_grad_params_op =
        find_op<Lmkan2dSlopeGradParamsOp>("lmkan::lmkan2d_slope_grad_params");
    const auto saved = ctx->get_saved_variables();
    // images [N, N_in, L] (batch-last): the slope ops take 2-D tensors, so every term is
    // formed on batch-last copies [N_in, N * L] and its result turned back into images
    const ImageLayout layout(saved[1]);
    // a 16-bit grad_y (a 16-bit y's gradient): the slope ops take float32 (its values are
    // exact there), and d/d grad_y goes back in grad_y's dtype
    const at::ScalarType grad_y_dtype = saved[0].scalar_type();
    const at::Tensor grad_y = layout.rows(saved[0]).to(at::kFloat), x = layout.rows(saved[1]);
    const at::Tensor &params = saved[2], &borders = saved[3];
    const bool batch_last = ctx->saved_data["batch_last"].toBool();
    const int64_t tile = ctx->saved_data["tile"].toInt();
    const int64_t block = ctx->saved_data["block"].toInt();
    const bool fast = ctx->saved_data["fast"].toBool();
    const bool deterministic = ctx->saved_data["deterministic"].toBool();
    const auto table = ctx->saved_data["table_dtype"].toOptional<at::ScalarType>();
    const at::Tensor ggx = layout.rows(grad_outputs[0]);
    // ggp of an empty grad_params output (grad_params=False) is no upstream term
    const at::Tensor& ggp = grad_outputs[1];
    at::Tensor d_grad_y, d_x, d_params;
    if (ggp.defined() && ctx->saved_data["grad_params"].toBool()) {
      const at::Tensor table_ggp = ggp.contiguous();
      if (ctx->needs_input_grad(0))
        d_grad_y = forward_op.call(x, table_ggp, borders, batch_last, tile, block,
                                   std::optional<at::ScalarType>());
      if (ctx->needs_input_grad(1))
        d_x = std::get<0>(backward_op.call(grad_y, x, table_ggp, borders, batch_last, tile, block,
                                           fast, deterministic, std::optional<at::ScalarType>(),
                                           false));
    }
    if (ggx.defined()) {
      const at::Tensor weights = ggx.contiguous();
      if (ctx->needs_input_grad(0)) {
        const at::Tensor part =
            slope_forward_op.call(x, weights, params, borders, batch_last, table);
        d_grad_y = d_grad_y.defined() ? d_grad_y.add(part) : part;
      }
      if (ctx->needs_input_grad(1)) {
        const at::Tensor part =
            slope_grad_x_op.call(grad_y, x, weights, params, borders, batch_last, table);
        d_x = d_x.defined() ? d_x.add(part) : part;
      }
      if (ctx->needs_input_grad(2))
        d_params = slope_grad_params_op.call(grad_y, x, weights, params, borders, batch_last,
                                             deterministic);
    }
    if (d_grad_y.defined()) d_grad_y = d_grad_y.to(grad_y_dtype);
    return {layout.images(d_grad_y), layout.images(d_x), d_params, at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> lmkan2d_backward_autograd(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& params,
    const at::Tensor& borders, bool batch_last, int64_t tile_size, int64_t block_size,
    bool fast_mode, bool deterministic, std::optional<at::ScalarType> table_dtype,
    bool want_grad_params) {
  if (!at::GradMode::is_enabled() ||
      !(grad_y.requires_grad() || x.requires_grad() || params.requires_grad())) {
    static const auto op = find_op<Lmkan2dBackwardOp>("lmkan::lmkan2d_backward");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(grad_y, x, params, borders, batch_last, tile_size, block_size, fast_mode,
                   deterministic, table_dtype, want_grad_params);
  }
  const auto out = Lmkan2dBackwardFunction::apply(grad_y, x, params, borders, batch_last,
                                                  tile_size, block_size, fast_mode,
                                                  deterministic, table_dtype, want_grad_params);
  return {out[0], out[1]};
}

at::Tensor lmkan2d_autograd(const at::Tensor& x, const at::Tensor& params,
                                    const at::Tensor& borders, bool batch_last, int64_t tile_size,
                                    int64_t block_size, int64_t backward_tile_size,
                                    int64_t backward_block_size, bool backward_fast_mode,
                                    bool deterministic, std::optional<at::ScalarType> table_dtype,
                                    std::optional<at::ScalarType> out_dtype) {
  if (!records_graph(x, params)) {
    static const auto op = find_op<Lmkan2dForwardOp>("lmkan::lmkan2d_forward");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return as_out_dtype(op.call(x, params, borders, batch_last, tile_size, block_size, table_dtype),
                        out_dtype);
  }
  return Lmkan2dFunction::apply(x, params, borders, batch_last, tile_size, block_size,
                                backward_tile_size, backward_block_size, backward_fast_mode,
                                deterministic, table_dtype, out_dtype);
}

// Below autograd (inference mode, or a caller already below it): the forward alone.
at::Tensor lmkan2d_no_autograd(const at::Tensor& x, const at::Tensor& params,
                               const at::Tensor& borders, bool batch_last, int64_t tile_size,
                               int64_t block_size, int64_t, int64_t, bool, bool,
                               std::optional<at::ScalarType> table_dtype,
                               std::optional<at::ScalarType> out_dtype) {
  static const auto op = find_op<Lmkan2dForwardOp>("lmkan::lmkan2d_forward");
  return as_out_dtype(op.call(x, params, borders, batch_last, tile_size, block_size, table_dtype),
                      out_dtype);
}

}  // namespace
}  // namespace lmkan2d
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, Autograd, m) {
  m.impl("lmkan2d", &lmkan::lmkan2d::lmkan2d_autograd);
  m.impl("lmkan2d_backward", &lmkan::lmkan2d::lmkan2d_backward_autograd);
}

TORCH_LIBRARY_IMPL(lmkan, CompositeExplicitAutograd, m) {
  m.impl("lmkan2d", &lmkan::lmkan2d::lmkan2d_no_autograd);
}
