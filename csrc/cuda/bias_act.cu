// A convolution's epilogue in one pass: out = act(y + bias[c]), act SiLU or none. Torch-free.
//
// PyTorch adds a cuDNN convolution's bias in a separate broadcast add (cudnn_convolution takes no bias): a generic
// elementwise kernel with index arithmetic per element, then the SiLU in another pass. The -27c H100 profile of a
// batch-32 yolo12n forward spent 2.2 ms of 7.8 on those adds. Here the patched blocks run the conv without its bias
// and this kernel adds it and applies the SiLU while the values are in registers: one read and one write of the conv
// output instead of two of each, vectorised (16-byte accesses) where the layout allows.
//
// Layouts (BiasActLayout): planes, each (image, channel) an H*W run of consecutive elements (NCHW and its channel or
// batch slices; element (b, c, t) at b*sb + c*sc + t), or tokens, each (image, token) a run of C consecutive
// channels (channels_last and its slices; element (b, c, t) at b*sb + t*st + c). out may be y itself. fp32 math,
// one rounding to the output dtype.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "convert.cuh"
#include "device.h"
#include "kernels.h"

namespace yolov12_fast {
namespace cuda {
namespace detail {

constexpr int kBiasActThreads = 256;

template <bool SILU>
__device__ __forceinline__ float ba_act(float v) {
  if constexpr (SILU) return v / (1.0f + expf(-v));
  return v;
}

// One VW-element run of y: loaded as one 16-byte access when VW > 1 (the launcher checked the alignment), the
// results packed into 32-bit words and stored the same way (the compiler then emits 128-bit loads and stores).
template <typename T, int VW>
struct BaVec {
  float f[VW];
};

template <typename T, int VW>
__device__ __forceinline__ BaVec<T, VW> ba_load(const T* p) {
  BaVec<T, VW> v;
  if constexpr (VW == 1) {
    v.f[0] = to_f32(*p);
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    T t[VW];
    memcpy(static_cast<void*>(t), &raw, sizeof(raw));
#pragma unroll
    for (int j = 0; j < VW; ++j) v.f[j] = to_f32(t[j]);
  }
  return v;
}

template <typename T, int VW>
__device__ __forceinline__ void ba_store(T* p, const BaVec<T, VW>& v) {
  if constexpr (VW == 1) {
    *p = from_f32<T>(v.f[0]);
  } else {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if constexpr (sizeof(T) == 4) {
        memcpy(&w[k], &v.f[k], 4);
      } else {
        const T pair[2] = {from_f32<T>(v.f[2 * k]), from_f32<T>(v.f[2 * k + 1])};
        memcpy(&w[k], pair, 4);
      }
    }
#ifdef YOLOV12_FAST_CUDA_EMU
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
#else
    __stwb(reinterpret_cast<uint4*>(p), make_uint4(w[0], w[1], w[2], w[3]));  // one 128-bit store (a plain
    // assignment left nvcc 12 four 32-bit stores: it scalarised the packed words back into their halves / floats)
#endif
  }
}

// planes: grid.x = B * C planes, grid.y strides over the plane's H*W elements in VW-element steps
template <typename T, bool SILU, int VW>
__global__ void __launch_bounds__(kBiasActThreads) bias_act_planes_kernel(BiasActArgs a) {
  const int64_t plane = blockIdx.x;
  const int64_t b = plane / a.C, c = plane % a.C;
  const float bias = to_f32(static_cast<const T*>(a.bias)[c * a.bias_c]);
  const T* y = static_cast<const T*>(a.y) + b * a.y_sb + c * a.y_sc;
  T* o = static_cast<T*>(a.out) + b * a.o_sb + c * a.o_sc;
  const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.x * VW;
  for (int64_t i = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VW; i < a.HW; i += step) {
    BaVec<T, VW> v = ba_load<T, VW>(y + i);
#pragma unroll
    for (int j = 0; j < VW; ++j) v.f[j] = ba_act<SILU>(v.f[j] + bias);
    ba_store<T, VW>(o + i, v);
  }
}

// tokens: one thread per VW consecutive channels of one (image, token) row, grid-strided over B * HW * C / VW
template <typename T, bool SILU, int VW>
__global__ void __launch_bounds__(kBiasActThreads) bias_act_tokens_kernel(BiasActArgs a) {
  const int64_t per_row = a.C / VW, total = a.B * a.HW * per_row;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t row = i / per_row, c0 = (i - row * per_row) * VW;
    const int64_t b = row / a.HW, t = row - b * a.HW;
    const T* y = static_cast<const T*>(a.y) + b * a.y_sb + t * a.y_st + c0;
    T* o = static_cast<T*>(a.out) + b * a.o_sb + t * a.o_st + c0;
    const T* bias = static_cast<const T*>(a.bias) + c0 * a.bias_c;  // VW == 1: c0 * bias_c
    BaVec<T, VW> v = ba_load<T, VW>(y);
    const BaVec<T, VW> bv = ba_load<T, VW>(bias);  // (VW > 1: bias_c is 1, checked)
#pragma unroll
    for (int j = 0; j < VW; ++j) v.f[j] = ba_act<SILU>(v.f[j] + bv.f[j]);
    ba_store<T, VW>(o, v);
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Whether VW-element 16-byte accesses are valid: every run starts on a 16-byte boundary and holds whole vectors
// (planes: the H*W run of each (image, channel); tokens: the C channels of each (image, token), and the bias).
inline bool vectorizable(const BiasActArgs& a, int64_t vw) {
  if (!aligned16(a.y) || !aligned16(a.out)) return false;
  if (a.layout == BiasActLayout::kPlanes)
    return a.HW % vw == 0 && a.y_sb % vw == 0 && a.y_sc % vw == 0 && a.o_sb % vw == 0 && a.o_sc % vw == 0;
  return aligned16(a.bias) && a.bias_c == 1 && a.C % vw == 0 && a.y_sb % vw == 0 && a.y_st % vw == 0 &&
         a.o_sb % vw == 0 && a.o_st % vw == 0;
}

template <typename T, bool SILU, int VW>
cudaError_t launch_bias_act(const BiasActArgs& a, cudaStream_t stream) {
  if (a.layout == BiasActLayout::kPlanes) {
    const int64_t chunks = (a.HW + int64_t{kBiasActThreads} * VW - 1) / (int64_t{kBiasActThreads} * VW);
    const dim3 grid(static_cast<unsigned>(a.B * a.C), static_cast<unsigned>(std::min<int64_t>(chunks, 65535)));
    return launch_kernel(bias_act_planes_kernel<T, SILU, VW>, grid, dim3(kBiasActThreads), 0, stream, a);
  }
  const int64_t work = a.B * a.HW * (a.C / VW);
  const int64_t blocks = std::min<int64_t>((work + kBiasActThreads - 1) / kBiasActThreads, int64_t{1} << 20);
  return launch_kernel(bias_act_tokens_kernel<T, SILU, VW>, dim3(static_cast<unsigned>(blocks)), dim3(kBiasActThreads),
                       0, stream, a);
}

template <typename T>
cudaError_t dispatch_bias_act(const BiasActArgs& a, cudaStream_t stream) {
  constexpr int kVW = 16 / static_cast<int>(sizeof(T));
  const bool vec = vectorizable(a, kVW);
  if (a.silu) return vec ? launch_bias_act<T, true, kVW>(a, stream) : launch_bias_act<T, true, 1>(a, stream);
  return vec ? launch_bias_act<T, false, kVW>(a, stream) : launch_bias_act<T, false, 1>(a, stream);
}

}  // namespace detail

cudaError_t bias_act(const BiasActArgs& a, cudaStream_t stream) {
  if (a.B < 0 || a.C < 0 || a.HW < 0 || (a.layout != BiasActLayout::kPlanes && a.layout != BiasActLayout::kTokens))
    return cudaErrorInvalidValue;
  if (a.B == 0 || a.C == 0 || a.HW == 0) return cudaSuccess;
  if (a.layout == BiasActLayout::kPlanes && a.B * a.C > 0x7fffffff) return cudaErrorInvalidValue;  // grid.x
  switch (a.dtype) {
    case DType::kFloat16: return detail::dispatch_bias_act<__half>(a, stream);
    case DType::kBFloat16: return detail::dispatch_bias_act<__nv_bfloat16>(a, stream);
    case DType::kFloat32: return detail::dispatch_bias_act<float>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace yolov12_fast
