// The ops' autograd, in C++ (each family's autograd.cpp), in host-only files: the .cu files
// then skip the autograd headers, most of their host compile time. A
// torch.library.register_autograd wrapper runs Python on every forward and backward, which
// dominated a small training step (G=26 128->128 B=1024: ~0.15 ms of GPU work in a
// ~0.35-0.45 ms eager step, R37's profile). Both directions go through the dispatcher (the
// forward below autograd), so torch.compile and opcheck trace the registered fake
// implementations (lmKAN/_op_fakes.py) as they would any op. Registered for every backend
// (TORCH_LIBRARY_IMPL(lmkan, Autograd, m)): a CPU or meta tensor reaches the same Function,
// and the dispatcher then finds (or reports missing) that backend's kernel.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include "common/image_rows.h"

namespace lmkan {

// The typed handle of a registered op (looked up once per call site: function-local statics,
// the schemas exist by then, being declared in this library).
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Whether a layer op's call records an autograd node: grad mode on and x or the table
// requiring grad. Where it does not (no_grad, frozen inference), the layer ops run their
// forward op directly: Function::apply would still save the inputs and the backward's
// settings, host time that an inference call pays for nothing.
inline bool records_graph(const at::Tensor& x, const at::Tensor& params) {
  return at::GradMode::is_enabled() && (x.requires_grad() || params.requires_grad());
}

// Called first in a backward whose own derivatives are not built: with create_graph=True the
// engine runs backwards in grad mode, and a derivative through an op without autograd would
// come back silently wrong (issue 18, item 9), so it is refused with a clear error. The
// regularisers' backward ops (second derivatives) and the layers' backward ops' backward
// (third derivatives) call it; `order` names what is refused.
inline void refuse_double_backward(const char* op, const char* order = "second derivatives") {
  TORCH_CHECK(!at::GradMode::is_enabled(), op, ": ", order,
              " (a backward with create_graph=True through this op) are not implemented on "
              "CUDA; the layers' pure-PyTorch path has every order (run the model on the CPU, "
              "or in float64), or compute this gradient with create_graph=False");
}

}  // namespace lmkan
