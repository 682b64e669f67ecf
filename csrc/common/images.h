// Images in the batch-last layout: the forward ops (lmkan2d_forward, lmkan1d_forward) also
// take x as [N, F, L], an NCHW tensor viewed with L = H * W, and return y as [N, N_out, L]
// (docs/spec.md, "Layouts"). Image n is then a batch-last [F, L] matrix: of the N * L
// samples, sample s = n L + l sits at n F L + f L + l. This is how a 1x1 convolution reads
// NCHW memory in place (lmKAN/conv.py).
//
// A kernel that supports images gets, for each tensor it indexes by sample, the step between
// neighbouring samples of one image (1 batch-last, the row length batch-first), the samples
// per image and the stride between images. A plain 2-D tensor is one image of every sample
// (len = batch), so its offsets need no division; an image tensor divides once per sample
// where the offset is formed (once per thread in the sample-lanes forward), in 32 bits: a
// 64-bit division is a called subroutine whose registers spilled in the forward's hot loop
// (sm_90 SASS), so image tensors hold fewer than 2^32 samples (kMaxImageSamples; the ops
// copy larger ones to a plain tensor).
#pragma once
#include <cstdint>

namespace lmkan {

constexpr int64_t kMaxImageSamples = int64_t(UINT32_MAX);

struct SampleOffsets {
  int64_t step;          // between samples s and s + 1 of one image
  int64_t len;           // samples per image (plain tensors: the batch)
  int64_t image_stride;  // elements between images (unused for plain tensors)

#ifdef __CUDACC__
  __host__ __device__ __forceinline__
#endif
  int64_t operator()(int64_t s) const {
    if (s < len) return s * step;
    const uint32_t n = uint32_t(s) / uint32_t(len), l = uint32_t(s) - n * uint32_t(len);
    return int64_t(n) * image_stride + int64_t(l) * step;
  }
};

// A plain tensor's offsets: sample s at s * step.
inline SampleOffsets plain_offsets(int64_t step, int64_t batch) {
  return SampleOffsets{step, batch > 0 ? batch : 1, 0};
}

}  // namespace lmkan
