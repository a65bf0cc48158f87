// fp32 <-> the kernels' element types (float, __half, __nv_bfloat16), one rounding to nearest even on the way back.
// Shared by the elementwise-style kernels (pe_add.cu, bias_act.cu); the attention kernels move raw 16-bit words
// (attention_common.cuh's Elem).
#pragma once

#include "device.h"

namespace yolov12_fast {
namespace cuda {
namespace detail {

// Both directions for one element type, in one place per type.
template <typename T>
struct F32Convert;
template <>
struct F32Convert<float> {
  static __device__ __forceinline__ float to(float v) { return v; }
  static __device__ __forceinline__ float from(float f) { return f; }
};
template <>
struct F32Convert<__half> {
  static __device__ __forceinline__ float to(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from(float f) { return __float2half_rn(f); }
};
template <>
struct F32Convert<__nv_bfloat16> {
  static __device__ __forceinline__ float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from(float f) { return __float2bfloat16_rn(f); }
};

template <typename T>
__device__ __forceinline__ float to_f32(T v) { return F32Convert<T>::to(v); }
template <typename T>
__device__ __forceinline__ T from_f32(float f) { return F32Convert<T>::from(f); }

}  // namespace detail
}  // namespace cuda
}  // namespace yolov12_fast
