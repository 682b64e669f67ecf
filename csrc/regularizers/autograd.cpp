// Autograd of hessian2d and second_diff1d (common/autograd.h says why in C++).
#include <torch/library.h>

#include "common/autograd.h"

namespace lmkan {
namespace regularizers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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
    refuse_double_backward(kValueName);
    static const auto backward_op = find_op<RegulariserBackwardOp>(kBackwardName);
    const auto saved = ctx->get_saved_variables();
    return {backward_op.call(grad_outputs[0], saved[0], saved[1]), at::Tensor()};
  }
};

// R = hessian2d_sum(params list, borders list, weight): weight times the sum of hessian2d
// over the tables, one autograd node for all of them. Its backward returns one gradient per
// table, then none for each border and for the weight.
struct Hessian2dSumFunction : public torch::autograd::Function<Hessian2dSumFunction> {
  using ValueOp = at::Tensor(at::TensorList, at::TensorList, double);
  using BackwardOp = std::vector<at::Tensor>(const at::Tensor&, at::TensorList, at::TensorList,
                                             double);

  static at::Tensor forward(AutogradContext* ctx, at::TensorList params, at::TensorList borders,
                            double weight) {
    static const auto value_op = find_op<ValueOp>("lmkan::hessian2d_sum");
    std::vector<at::Tensor> saved(params.begin(), params.end());
    saved.insert(saved.end(), borders.begin(), borders.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["tables"] = static_cast<int64_t>(params.size());
    ctx->saved_data["weight"] = weight;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return value_op.call(params, borders, weight);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward("lmkan::hessian2d_sum");
    static const auto backward_op = find_op<BackwardOp>("lmkan::hessian2d_sum_backward");
    const auto saved = ctx->get_saved_variables();
    const int64_t n = ctx->saved_data["tables"].toInt();
    const std::vector<at::Tensor> params(saved.begin(), saved.begin() + n);
    const std::vector<at::Tensor> borders(saved.begin() + n, saved.end());
    variable_list grads =
        backward_op.call(grad_outputs[0], params, borders, ctx->saved_data["weight"].toDouble());
    grads.resize(2 * n + 1);  // borders and the weight: none
    return grads;
  }
};

at::Tensor hessian2d_sum_autograd(at::TensorList params, at::TensorList borders, double weight) {
  return Hessian2dSumFunction::apply(params, borders, weight);
}

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
}  // namespace regularizers
}  // namespace lmkan

TORCH_LIBRARY_IMPL(lmkan, Autograd, m) {
  m.impl("hessian2d", &lmkan::regularizers::hessian2d_autograd);
  m.impl("second_diff1d", &lmkan::regularizers::second_diff1d_autograd);
  m.impl("hessian2d_sum", &lmkan::regularizers::hessian2d_sum_autograd);
}
