// The CUDA element type of a table dtype (the layers' 16-bit tables), as a compile-time
// switch: switch_table_type(dtype, [&](auto tag) { kernel<decltype(tag)><<<...>>>(...); }),
// and the conversions the kernels read and write table values with.
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

// A table value as float32, and a float32 rounded (to nearest even) to a table type.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Value `high` (false: bits 0-15, true: bits 16-31) of a 32-bit word holding two 16-bit
// values of type T, as float32 (exact). bfloat16 -> float32 is a 16-bit shift: the low half
// of the word moves up, the high half is masked in place.
template <typename T> __device__ __forceinline__ float word_value(unsigned u, bool high);
template <> __device__ __forceinline__ float word_value<__nv_bfloat16>(unsigned u, bool high) {
  return __uint_as_float(high ? (u & 0xffff0000u) : (u << 16));
}
template <> __device__ __forceinline__ float word_value<__half>(unsigned u, bool high) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(high ? u >> 16 : u)));
}

// Four consecutive table values (entry `idx4` of the table viewed in groups of 4) as
// float32: one 16-byte load for float, one 8-byte load for the 16-bit types.
__device__ __forceinline__ float4 load_table4(const float* table, int idx4) {
  return reinterpret_cast<const float4*>(table)[idx4];
}
__device__ __forceinline__ float4 load_table4(const __half* table, int idx4) {
  const uint2 u = reinterpret_cast<const uint2*>(table)[idx4];
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 load_table4(const __nv_bfloat16* table, int idx4) {
  const uint2 u = reinterpret_cast<const uint2*>(table)[idx4];
  using T = __nv_bfloat16;
  return make_float4(word_value<T>(u.x, false), word_value<T>(u.x, true),
                     word_value<T>(u.y, false), word_value<T>(u.y, true));
}

// Four float32 values stored as table values at `at` (4-value aligned), each rounded to
// nearest even: one 16-byte store for float, one 8-byte store for the 16-bit types.
__device__ __forceinline__ void store_table4(float* at, float4 v) {
  *reinterpret_cast<float4*>(at) = v;
}
template <typename T>
__device__ __forceinline__ void store_table4(T* at, float4 v) {
  const T h[4] = {from_float<T>(v.x), from_float<T>(v.y), from_float<T>(v.z), from_float<T>(v.w)};
  *reinterpret_cast<uint2*>(at) = *reinterpret_cast<const uint2*>(h);
}

}  // namespace lmkan
