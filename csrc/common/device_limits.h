// Per-device limits that the host code plans launches with: one cache for every op.
//
// Shared memory differs per architecture (opt-in per block: 99 KB on sm_86/89/120, 163 KB on
// sm_80, 227 KB on sm_90/100), and so do the threads per SM, so every num_grids limit, every
// choice between staging a table in shared memory and reading it through L2, and every
// occupancy estimate reads these figures, never a constant. (No host choice depends on the
// compute capability itself: the kernels' code paths differ per architecture at compile
// time, cp_async.cuh, with one shared-memory layout.)
//
// LMKAN_SMEM_BUDGET_KB=N caps the shared memory the kernels plan with at N KiB per block
// (and N + 1 KiB per SM, the 1 KiB the hardware reserves per block on every architecture
// since Ampere): on one GPU it reproduces the limits and the L2 fallbacks of a GPU with less
// shared memory (N = 99 or 163). It is read at every query, so it can change while a process
// runs; a value above the device's own limit changes nothing.
#pragma once
#include <cstdint>

namespace lmkan {

// Shared memory the hardware reserves per resident block (sm_80 and newer).
constexpr int kReservedSmemPerBlock = 1024;

struct DeviceLimits {
  int smem_optin;          // largest dynamic shared memory per block (bytes)
  int smem_per_sm;         // shared memory per SM (bytes)
  int num_sms;
  int max_threads_per_sm;  // 2048 on sm_80/90/100, 1536 on sm_86/89/120
};

// The device's limits, with LMKAN_SMEM_BUDGET_KB applied (ValueError for a malformed value).
DeviceLimits device_limits(int device_index);

// Lets `kernel` (a __global__ function's address) launch with `bytes` of dynamic shared
// memory on the current device: past the 48 KiB default a kernel must be opted in
// (cudaFuncSetAttribute). Every launcher calls this before a launch; the driver is asked only
// when a kernel needs more on a device than it was last allowed there (one driver call per
// kernel and device in a steady state, not one per launch: ~1 us of host time each).
void allow_dynamic_smem(const void* kernel, int64_t bytes);

}  // namespace lmkan
