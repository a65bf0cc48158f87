// fp32 <-> the kernels' element types (float, __half, __nv_bfloat16), one rounding to nearest even on the way back.
// Shared by the elementwise-style kernels (pe_add.cu, bias_act.cu); the attention kernels move raw 16-bit words
// (attention_common.cuh's Elem).
#pragma once

#include "device.h"

namespace yolov12_fast {
namespace cuda {
namespace detail {

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float f);
template <>
__device__ __forceinline__ float from_f32<float>(float f) { return f; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float f) { return __float2half_rn(f); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }

}  // namespace detail
}  // namespace cuda
}  // namespace yolov12_fast
