// The CUDA element type of a table dtype (the 2D layer's 16-bit tables), as a compile-time
// switch: switch_table_type(dtype, [&](auto tag) { kernel<decltype(tag)><<<...>>>(...); }).
// CUDA sources only (the half types need cuda_fp16.h / cuda_bf16.h).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

namespace lmkan {

template <typename Body>
void switch_table_type(at::ScalarType dtype, Body&& body) {
  switch (dtype) {
    case at::kFloat: return body(float{});
    case at::kHalf: return body(__half{});
    case at::kBFloat16: return body(__nv_bfloat16{});
    default: TORCH_CHECK(false, "lmkan: table dtype must be float32, float16 or bfloat16, got ", dtype);
  }
}

}  // namespace lmkan
