// Autograd of the layer ops (lmkan2d_forward, lmkan1d_forward) and of the regularisers
// (hessian2d, second_diff1d), in C++, in a host-only file (the .cu files then skip the
// autograd headers, most of their host compile time): a torch.library.register_autograd
// wrapper runs Python
// on every forward and backward, which dominated a small training step (G=26 128->128
// B=1024: ~0.15 ms of GPU work in a ~0.35-0.45 ms eager step, R37's profile). Both directions
// go through the dispatcher (the forward below autograd), so torch.compile and opcheck
// trace the registered fake implementations (lmKAN/ops.py) as they would any op.
//
// The backward saves x, params and borders (no copies) and calls the backward op with the
// configuration arguments the forward op was given; borders get no gradient (a fixed grid).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace lmkan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// ---- 2D layer ---------------------------------------------------------------------------
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

// ---- 1D layer ---------------------------------------------------------------------------
using Lmkan1dForwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                                    bool, bool);
using Lmkan1dBackwardOp = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool, bool);

struct Lmkan1dFunction : public torch::autograd::Function<Lmkan1dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& params,
                            const at::Tensor& borders, bool uniform_grid, bool batch_last,
                            bool deterministic) {
    static const auto op = find_op<Lmkan1dForwardOp>("lmkan::lmkan1d_forward");
    ctx->save_for_backward({x, params, borders});
    ctx->saved_data["uniform_grid"] = uniform_grid;
    ctx->saved_data["batch_last"] = batch_last;
    ctx->saved_data["deterministic"] = deterministic;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, params, borders, uniform_grid, batch_last, deterministic);
  }

  // grad_outputs: {dL/dy}. Returns dL/dx, dL/dparams and none for the other 4 arguments.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = find_op<Lmkan1dBackwardOp>("lmkan::lmkan1d_backward");
    const auto saved = ctx->get_saved_variables();
    auto [grad_x, grad_p] =
        op.call(grad_outputs[0].contiguous(), saved[0], saved[1], saved[2],
                ctx->saved_data["uniform_grid"].toBool(), ctx->saved_data["batch_last"].toBool(),
                ctx->saved_data["deterministic"].toBool());
    return {grad_x, grad_p, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor lmkan1d_forward_autograd(const at::Tensor& x, const at::Tensor& params,
                                    const at::Tensor& borders, bool uniform_grid, bool batch_last,
                                    bool deterministic) {
  return Lmkan1dFunction::apply(x, params, borders, uniform_grid, batch_last, deterministic);
}

// ---- Regularisers ------------------------------------------------------------------------
// A regulariser is called once per layer per training step and its kernels take ~0.1 ms, so
// a Python autograd wrapper (~0.2 ms of host time per forward+backward) would cost more than
// the GPU work.
using RegulariserOp = at::Tensor(const at::Tensor&, const at::Tensor&);
using RegulariserBackwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);

// R = op(params, borders), differentiable in params (borders are a fixed grid). The op
// handles are looked up once (function-local statics: the schemas exist by then, being
// declared in this library).
template <const char* kValueName, const char* kBackwardName>
struct RegulariserFunction : public torch::autograd::Function<RegulariserFunction<kValueName, kBackwardName>> {
  // params: [S, S, N_out, N_in/2] or [S, N_out, N_in]; borders: [S]. Returns R, 0-dim.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& params,
                            const at::Tensor& borders) {
    static const auto value_op = find_op<RegulariserOp>(kValueName);
    ctx->save_for_backward({params, borders});
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return value_op.call(params, borders);
  }

  // grad_outputs: {dL/dR} (0-dim, materialised by autograd when unused). Returns
  // {dL/dparams, none for borders}.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    static const auto backward_op = find_op<RegulariserBackwardOp>(kBackwardName);
    const auto saved = ctx->get_saved_variables();
    return {backward_op.call(grad_outputs[0], saved[0], saved[1]), at::Tensor()};
  }
};

constexpr char kHessian2dName[] = "lmkan::hessian2d";
constexpr char kHessian2dBackwardName[] = "lmkan::hessian2d_backward";
constexpr char kSecondDiff1dName[] = "lmkan::second_diff1d";
constexpr char kSecondDiff1dBackwardName[] = "lmkan::second_diff1d_backward";

at::Tensor hessian2d_autograd(const at::Tensor& params, const at::Tensor& borders) {
  return RegulariserFunction<kHessian2dName, kHessian2dBackwardName>::apply(params, borders);
}

at::Tensor second_diff1d_autograd(const at::Tensor& params, const at::Tensor& borders) {
  return RegulariserFunction<kSecondDiff1dName, kSecondDiff1dBackwardName>::apply(params, borders);
}

}  // namespace
}  // namespace lmkan

// Autograd for every backend: a CPU or meta tensor reaches the same Function, and the
// dispatcher then finds (or reports missing) that backend's kernel.
TORCH_LIBRARY_IMPL(lmkan, Autograd, m) {
  m.impl("lmkan2d_forward", &lmkan::lmkan2d_forward_autograd);
  m.impl("lmkan1d_forward", &lmkan::lmkan1d_forward_autograd);
  m.impl("hessian2d", &lmkan::hessian2d_autograd);
  m.impl("second_diff1d", &lmkan::second_diff1d_autograd);
}
