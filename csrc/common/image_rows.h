// Images [N, F, L] (common/images.h) as one batch-last matrix [F, N * L], and back: copies
// for the kernels that index samples with one stride. Host code only (ATen views and one
// copy each way). The layer ops take images in every grad mode; the kernels that do not
// read them in place, and the slope ops of the second derivatives, run on these copies
// (differentiable ATen ops: a further derivative sees them).
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

// The layout of a call's x: `rows(t)` gives t (laid out like x or like y) as batch-last rows
// where x holds images, `images(t)` turns such rows back; both pass other tensors, and
// undefined ones, through unchanged.
class ImageLayout {
 public:
  explicit ImageLayout(const at::Tensor& x)
      : images_(x.dim() == 3), n_(images_ ? x.size(0) : 0), len_(images_ ? x.size(2) : 0) {}
  at::Tensor rows(const at::Tensor& t) const {
    return images_ && t.defined() ? images_as_rows(t) : t;
  }
  at::Tensor images(const at::Tensor& t) const {
    return images_ && t.defined() ? rows_as_images(t, n_, len_) : t;
  }

 private:
  bool images_;
  int64_t n_, len_;
};

}  // namespace lmkan
