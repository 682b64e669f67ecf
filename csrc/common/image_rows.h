// Images [N, F, L] (common/images.h) as one batch-last matrix [F, N * L], and back: copies
// for the kernels that index samples with one stride. Host code only (ATen views and one
// copy each way). The layer ops take images in every grad mode; the backward kernels that
// do not read them in place, and the slope ops of the second derivatives, run on these
// copies (differentiable ATen ops: a further derivative sees them).
#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

namespace lmkan {

inline at::Tensor images_as_rows(const at::Tensor& t) {
  return t.transpose(0, 1).reshape({t.size(1), t.size(0) * t.size(2)});
}

inline at::Tensor rows_as_images(const at::Tensor& rows, int64_t n, int64_t len) {
  return rows.view({rows.size(0), n, len}).transpose(0, 1).contiguous();
}

}  // namespace lmkan
