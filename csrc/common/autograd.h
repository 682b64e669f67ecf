// The ops' autograd, in C++ (each family's autograd.cpp), in host-only files: the .cu files
// then skip the autograd headers, most of their host compile time. A
// torch.library.register_autograd wrapper runs Python on every forward and backward, which
// dominated a small training step (G=26 128->128 B=1024: ~0.15 ms of GPU work in a
// ~0.35-0.45 ms eager step, R37's profile). Both directions go through the dispatcher (the
// forward below autograd), so torch.compile and opcheck trace the registered fake
// implementations (lmKAN/ops.py) as they would any op. Registered for every backend
// (TORCH_LIBRARY_IMPL(lmkan, Autograd, m)): a CPU or meta tensor reaches the same Function,
// and the dispatcher then finds (or reports missing) that backend's kernel.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

namespace lmkan {

// The typed handle of a registered op (looked up once per call site: function-local statics,
// the schemas exist by then, being declared in this library).
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace lmkan
