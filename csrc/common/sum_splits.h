// Partial sums of a split launch added in a fixed order (deterministic): the 2D forward's
// pair splits and the 1D forward's input splits (csrc/common/sum_splits.cu).
#pragma once

#include <ATen/core/Tensor.h>

namespace lmkan {

// y = the sum over the first dim of parts [splits, *y.shape], s = 0, 1, ... in order (both
// contiguous, float32). One launch, no ATen reduction on the host path.
void sum_splits(const at::Tensor& parts, at::Tensor& y);

}  // namespace lmkan
