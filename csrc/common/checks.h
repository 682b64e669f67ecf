// Host-side argument checks shared by the CUDA ops. Messages name the argument, what was
// expected and what was received. TORCH_CHECK_VALUE raises ValueError in Python.
#pragma once
#include <optional>

#include <torch/library.h>
#include <ATen/core/Tensor.h>

namespace lmkan {

inline void check_cuda_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, " must be float32, got ",
                   t.scalar_type());
}

// A CUDA tensor of float32, or of float16 / bfloat16 where `sixteen_bit` (the layers'
// parameters; lmkan2d_backward's grad_y, a 16-bit y's gradient as under autocast).
inline void check_cuda_float_or_16bit(const at::Tensor& t, const char* name, bool sixteen_bit) {
  if (!sixteen_bit) return check_cuda_float(t, name);
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf ||
                       t.scalar_type() == at::kBFloat16,
                   name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const char* name_a, const at::Tensor& b,
                              const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), name_a, " is on ", a.device(), " but ", name_b,
                    " is on ", b.device());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ",
                    t.sizes());
}

// The three tensors every layer op takes: CUDA tensors on one device, x 2-D ([N_in, B] or
// [B, N_in]; with `images` also 3-D: [N, N_in, L] images, batch_last, common/images.h),
// params of `params_dims` dimensions, borders 1-D; all float32, except params, which may be
// float16 or bfloat16 where `params_16bit` (the layers' ops).
inline void check_layer_tensors(const at::Tensor& x, const at::Tensor& params,
                                const at::Tensor& borders, int64_t params_dims,
                                bool params_16bit = false, bool images = false) {
  check_cuda_float(x, "x");
  check_cuda_float_or_16bit(params, "params", params_16bit);
  check_cuda_float(borders, "borders");
  check_same_device(x, "x", params, "params");
  check_same_device(x, "x", borders, "borders");
  if (images) {
    TORCH_CHECK_VALUE(x.dim() == 2 || x.dim() == 3, "x must have 2 dimensions ([N_in, B] or "
                      "[B, N_in]) or 3 ([N, N_in, L]: images, batch_last), got shape ", x.sizes());
  } else {
    check_dim(x, 2, "x");
  }
  check_dim(params, params_dims, "params");
  check_dim(borders, 1, "borders");
}

// grad_y of a layer op's backward: float32 on x's device, [N_out, B] (batch_last) or
// [B, N_out]; for images x [N, N_in, L] (common/images.h), [N, N_out, L].
// sixteen_bit: float16 and bfloat16 are accepted too (lmkan2d_backward: a 16-bit y's
// gradient, as under autocast).
inline void check_grad_y(const at::Tensor& gy, const at::Tensor& x, int64_t n_out, int64_t batch,
                         bool batch_last, const char* op, bool sixteen_bit = false) {
  check_cuda_float_or_16bit(gy, "grad_y", sixteen_bit);
  check_same_device(x, "x", gy, "grad_y");
  if (x.dim() == 3) {
    TORCH_CHECK_VALUE(gy.dim() == 3 && gy.size(0) == x.size(0) && gy.size(1) == n_out &&
                          gy.size(2) == x.size(2),
                      op, ": grad_y of images x ", x.sizes(), " must have shape [N, N_out, L] = [",
                      x.size(0), ", ", n_out, ", ", x.size(2), "], got ", gy.sizes());
    return;
  }
  check_dim(gy, 2, "grad_y");
  const int64_t rows = batch_last ? n_out : batch, cols = batch_last ? batch : n_out;
  TORCH_CHECK_VALUE(gy.size(0) == rows && gy.size(1) == cols, op, ": grad_y must have shape ",
                    batch_last ? "[N_out, B] = [" : "[B, N_out] = [", rows, ", ", cols,
                    "], got ", gy.sizes());
}

// A tensor laid out like x (the second-derivative ops' weights): float32, x's device and shape.
inline void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* name,
                         const char* op) {
  check_cuda_float(t, name);
  check_same_device(x, "x", t, name);
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(),
                    ", got ", t.sizes());
}

// The dtype a call's table is rounded to (both layers' ops): `table_dtype` where given, else
// the parameters' own; TypeError unless float32, float16 or bfloat16.
inline at::ScalarType resolve_table_dtype(const std::optional<at::ScalarType>& table_dtype,
                                          const at::Tensor& params, const char* op) {
  const at::ScalarType t = table_dtype.value_or(params.scalar_type());
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
                   ": table_dtype must be float32, float16 or bfloat16, got ", t);
  return t;
}

}  // namespace lmkan
