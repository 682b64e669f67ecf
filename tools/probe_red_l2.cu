// A probe, not part of the package: how fast the L2 takes coalesced float reductions, for the
// fewer-bytes lead of the tensor-core runs (docs/performance.md: a sample block's grad_y rows
// in shared memory for every pair, with dP and grad_x flushed by reductions, ~453 M
// `red.global.add.v4.f32` at G=8 512->512 B=2^18). Each warp instruction adds 512 bytes to one
// 512-byte chunk of an L2-resident 5.3 MB region (81 nodes x 64 outputs x 256 pairs floats:
// one walk's dP), chunks drawn by a hash; timed beside the same bytes as scalar reductions and
// as 16-byte loads (CUDA events, two rounds; the second is the figure, the first warms up).
//
//     nvcc -O3 -arch=sm_90 tools/probe_red_l2.cu -o /tmp/probe_red_l2 && /tmp/probe_red_l2
//     bash tools/arch_round.sh redprobe     # the same on the GPU machine
//
// Needs sm_90 or later (the 16-byte reduction, `red.global.add.v4.f32`).
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CHECK(call)                                                              \
  do {                                                                           \
    cudaError_t err_ = (call);                                                   \
    if (err_ != cudaSuccess) {                                                   \
      fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(err_));       \
      exit(1);                                                                   \
    }                                                                            \
  } while (0)

constexpr int kN = 81 * 64 * 256;           // floats in the region
constexpr int kChunks = kN / 128;          // 512-byte chunks (one warp's v4 instruction)

__device__ __forceinline__ unsigned chunk_of(unsigned long long i) {
  unsigned long long h = i * 0x9E3779B97F4A7C15ull;
  return (unsigned)((h >> 32) % kChunks);
}
enum class Op { kRedV4, kRedScalar, kLoadV4 };
constexpr const char* kOpNames[] = {"red.global.add.v4.f32", "red.global.add.f32 (x4)",
                                    "ld.global.cg.v4 (same bytes)"};

// Grid-stride over warp operations; operation i touches the 512-byte chunk chunk_of(i), each
// lane 16 bytes of it (the scalar form: 4 coalesced 128-byte reductions of the same bytes).
template <Op kOp>
__global__ void chunk_ops(float* buf, long long warp_ops, float* sink) {
  const long long first = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
  const long long stride = (gridDim.x * (long long)blockDim.x) >> 5;
  const int lane = threadIdx.x & 31;
  float acc = 0.f;
  for (long long i = first; i < warp_ops; i += stride) {
    float* chunk = buf + chunk_of(i) * 128;
    if constexpr (kOp == Op::kRedV4) {
      asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(chunk + lane * 4),
                   "f"(1.f), "f"(1.f), "f"(1.f), "f"(1.f) : "memory");
    } else if constexpr (kOp == Op::kRedScalar) {
#pragma unroll
      for (int k = 0; k < 4; ++k) atomicAdd(chunk + k * 32 + lane, 1.f);  // result unused: RED
    } else {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(chunk) + lane);
      acc += v.x + v.y + v.z + v.w;
    }
  }
  if (kOp == Op::kLoadV4 && acc == 12345.f) sink[0] = acc;  // keeps the loads
}

int main() {
  float *buf, *sink;
  CHECK(cudaMalloc(&buf, kN * sizeof(float)));
  CHECK(cudaMalloc(&sink, 4));
  CHECK(cudaMemset(buf, 0, kN * sizeof(float)));
  const long long warp_ops = 453000000LL / 32;  // 453 M v4 reductions, the lead's estimate
  const double bytes = warp_ops * 512.0;
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  for (int round = 0; round < 2; ++round) {  // the first round includes the warm-up
    for (int k = 0; k < 3; ++k) {
      CHECK(cudaEventRecord(a));
      if (k == 0) chunk_ops<Op::kRedV4><<<sms * 8, 256>>>(buf, warp_ops, sink);
      if (k == 1) chunk_ops<Op::kRedScalar><<<sms * 8, 256>>>(buf, warp_ops, sink);
      if (k == 2) chunk_ops<Op::kLoadV4><<<sms * 8, 256>>>(buf, warp_ops, sink);
      CHECK(cudaGetLastError());
      CHECK(cudaEventRecord(b));
      CHECK(cudaEventSynchronize(b));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      printf("round %d  %-30s %.3f GB in %8.3f ms: %.2f TB/s\n", round + 1, kOpNames[k],
             bytes / 1e9, ms, bytes / ms / 1e9);
    }
  }
  return 0;
}
