// Images in the batch-last layout: the forward ops (lmkan2d_forward, lmkan1d_forward) also
// take x as [N, F, L], an NCHW tensor viewed with L = H * W, and return y as [N, N_out, L]
// (docs/spec.md, "Layouts"). Image n is then a batch-last [F, L] matrix: of the N * L
// samples, sample s = n L + l sits at n F L + f L + l. This is how a 1x1 convolution reads
// NCHW memory in place (lmKAN/conv.py).
//
// A kernel that supports images gets, for each tensor it indexes by sample, the step between
// neighbouring samples of one image (1 batch-last, the row length batch-first), the samples
// per image and the stride between images. A plain 2-D tensor is one image of every sample
// (len = batch), so its offsets need no division; an image tensor divides once where an
// offset is formed (once per thread in the 2D sample-lanes forward, once per warp in the 1D
// tiles), in 32 bits: a 64-bit division is a called subroutine whose registers spilled in
// the 2D forward's hot loop (sm_90 SASS), so the kernels read images of at most
// kMaxImageSamples samples in all (the ops copy larger ones to a plain tensor).
//
// Host-compilable on its own (tests/test_images_offsets.py compiles it with the system C++
// compiler and checks the offsets against numpy's).
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LMKAN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LMKAN_HOST_DEVICE inline
#endif

namespace lmkan {

// Samples of image tensors, in all: sample indices up to this (and the 1D tiles' warps past
// the batch, up to 255 further: kImageSampleSlack) stay in 32 bits.
constexpr int64_t kImageSampleSlack = 256;
constexpr int64_t kMaxImageSamples = int64_t(UINT32_MAX) - kImageSampleSlack;

struct SampleOffsets {
  int64_t step;          // between samples s and s + 1 of one image
  int64_t len;           // samples per image (plain tensors: the batch)
  int64_t image_stride;  // elements between images (unused for plain tensors)

  LMKAN_HOST_DEVICE int64_t operator()(int64_t s) const {
    if (s < len) return s * step;
    const uint32_t n = uint32_t(s) / uint32_t(len), l = uint32_t(s) - n * uint32_t(len);
    return int64_t(n) * image_stride + int64_t(l) * step;
  }
};

// A plain tensor's offsets: sample s at s * step.
inline SampleOffsets plain_offsets(int64_t step, int64_t batch) {
  return SampleOffsets{step, batch > 0 ? batch : 1, 0};
}

// The offsets of contiguous images [N, features, len]: neighbouring samples of an image are
// neighbours in memory, images features * len apart.
inline SampleOffsets image_offsets(int64_t features, int64_t len) {
  return SampleOffsets{1, len > 0 ? len : 1, features * len};
}

}  // namespace lmkan
