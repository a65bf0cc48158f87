// AAttn positional encoding plus an add, fused: out = x + depthwise_conv2d(v, weight, bias, padding=k//2).
// Torch-free.
//
// v and x are (B, heads, head_dim, N = H*W) with arbitrary element strides (v is usually a view into the qkv
// conv output); channel c = h * head_dim + d is one H x W plane. The conv runs over the whole plane (it crosses
// area borders; zeros only outside the image). Output contiguous (B, heads, head_dim, N) in the input dtype.
//
// One CTA per (32 x 32 output tile, channel, image); 256 threads. The tile's input with its halo
// ((32 + k - 1)^2 values) is staged in shared memory as fp32 (zero outside the image) with loads that are
// coalesced along W when the token stride is 1; each thread then computes 4 vertically adjacent outputs of one
// column, reusing each loaded input row for all the outputs it touches. fp32 accumulation; bias and x are added
// in fp32 and the result rounded once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace yolov12_fast {
namespace cuda {
namespace detail {

constexpr int kPeTile = 32;     // output tile: kPeTile x kPeTile
constexpr int kPeRows = 4;      // outputs per thread (one column, kPeRows consecutive rows)
constexpr int kPeThreads = kPeTile * kPeTile / kPeRows;  // 256

template <typename T>
__device__ __forceinline__ float load_f32(const T* p);
template <>
__device__ __forceinline__ float load_f32<float>(const float* p) { return __ldg(p); }
template <>
__device__ __forceinline__ float load_f32<__half>(const __half* p) { return __half2float(__ldg(p)); }
template <>
__device__ __forceinline__ float load_f32<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(__ushort_as_bfloat16(__ldg(reinterpret_cast<const unsigned short*>(p))));
}

template <typename T>
__device__ __forceinline__ T from_f32(float f);
template <>
__device__ __forceinline__ float from_f32<float>(float f) { return f; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float f) { return __float2half_rn(f); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }

struct PeParams {
  const void* v;
  const void* weight;
  const void* bias;
  const void* x;
  void* out;
  Strides4 sv, sx;
  int64_t w_c, w_y, w_x, bias_c;
  int head_dim, H, W, tiles_w;
};

// (256, 2): at most 128 registers. Without the minimum ptxas aims at full occupancy and spills on sm_90.
template <typename T, int K>
__global__ void __launch_bounds__(kPeThreads, 2) pe_add_kernel(const PeParams p) {
  constexpr int P = K / 2;
  constexpr int HALO = kPeTile + K - 1;
  __shared__ float tile[HALO][HALO];
  __shared__ float w[K * K];

  const int c = blockIdx.y, b = blockIdx.z;
  const int h = c / p.head_dim, d = c - h * p.head_dim;
  const int x0 = (blockIdx.x % p.tiles_w) * kPeTile;
  const int y0 = (blockIdx.x / p.tiles_w) * kPeTile;
  const int H = p.H, W = p.W;
  const int64_t N = (int64_t)H * W;

  const T* vb = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h + d * p.sv.d;
  for (int i = threadIdx.x; i < HALO * HALO; i += kPeThreads) {
    const int hy = i / HALO, hx = i - hy * HALO;
    const int y = y0 - P + hy, x = x0 - P + hx;
    float val = 0.f;
    if (y >= 0 && y < H && x >= 0 && x < W) val = load_f32<T>(vb + ((int64_t)y * W + x) * p.sv.n);
    tile[hy][hx] = val;
  }
  if (threadIdx.x < K * K) {
    const int i = threadIdx.x / K, j = threadIdx.x - (threadIdx.x / K) * K;
    w[threadIdx.x] = load_f32<T>(static_cast<const T*>(p.weight) + c * p.w_c + i * p.w_y + j * p.w_x);
  }
  __syncthreads();

  const int tx = threadIdx.x % kPeTile;             // output column in the tile
  const int ty = (threadIdx.x / kPeTile) * kPeRows;  // first output row in the tile
  float acc[kPeRows];
#pragma unroll
  for (int o = 0; o < kPeRows; ++o) acc[o] = 0.f;
  // input row ty + r (halo coordinates) feeds output row ty + o through kernel row r - o
#pragma unroll
  for (int r = 0; r < kPeRows + K - 1; ++r) {
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const float val = tile[ty + r][tx + j];
#pragma unroll
      for (int o = 0; o < kPeRows; ++o) {
        const int i = r - o;
        if (i >= 0 && i < K) acc[o] = fmaf(w[i * K + j], val, acc[o]);
      }
    }
  }

  const int x = x0 + tx;
  if (x >= W) return;
  const float bias = p.bias ? load_f32<T>(static_cast<const T*>(p.bias) + c * p.bias_c) : 0.f;
  const T* xb = p.x ? static_cast<const T*>(p.x) + b * p.sx.b + h * p.sx.h + d * p.sx.d : nullptr;
  T* ob = static_cast<T*>(p.out) + ((int64_t)b * gridDim.y + c) * N;
#pragma unroll
  for (int o = 0; o < kPeRows; ++o) {
    const int y = y0 + ty + o;
    if (y < H) {
      const int64_t t = (int64_t)y * W + x;
      float val = acc[o] + bias;
      if (xb) val += load_f32<T>(xb + t * p.sx.n);
      ob[t] = from_f32<T>(val);
    }
  }
}

template <typename T, int K>
cudaError_t launch_pe(const PeParams& p, int64_t batch, int64_t channels, int64_t tiles, cudaStream_t stream) {
  const dim3 grid((unsigned)tiles, (unsigned)channels, (unsigned)batch);
  pe_add_kernel<T, K><<<grid, kPeThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_pe_k(int k, const PeParams& p, int64_t batch, int64_t channels, int64_t tiles,
                        cudaStream_t stream) {
  switch (k) {
    case 3: return launch_pe<T, 3>(p, batch, channels, tiles, stream);
    case 5: return launch_pe<T, 5>(p, batch, channels, tiles, stream);
    case 7: return launch_pe<T, 7>(p, batch, channels, tiles, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace detail

bool pe_add_supports_ksize(int ksize) { return ksize == 3 || ksize == 5 || ksize == 7; }

cudaError_t pe_add(const PeAddArgs& a, cudaStream_t stream) {
  using namespace detail;
  if (!pe_add_supports_ksize(a.ksize) || a.H < 0 || a.W < 0) return cudaErrorInvalidValue;
  const int64_t channels = a.heads * a.head_dim;
  if (a.batch == 0 || channels == 0 || a.H * a.W == 0) return cudaSuccess;
  const int64_t tiles_w = (a.W + kPeTile - 1) / kPeTile, tiles_h = (a.H + kPeTile - 1) / kPeTile;
  if (a.batch > 65535 || channels > 65535 || tiles_w * tiles_h >= (int64_t(1) << 31) || a.H >= (int64_t(1) << 31) ||
      a.W >= (int64_t(1) << 31))
    return cudaErrorInvalidValue;
  PeParams p{};
  p.v = a.v;
  p.weight = a.weight;
  p.bias = a.bias;
  p.x = a.x;
  p.out = a.out;
  p.sv = a.sv;
  p.sx = a.sx;
  p.w_c = a.w_c;
  p.w_y = a.w_y;
  p.w_x = a.w_x;
  p.bias_c = a.bias_c;
  p.head_dim = (int)a.head_dim;
  p.H = (int)a.H;
  p.W = (int)a.W;
  p.tiles_w = (int)tiles_w;
  const int64_t tiles = tiles_w * tiles_h;
  switch (a.dtype) {
    case DType::kFloat16: return launch_pe_k<__half>(a.ksize, p, a.batch, channels, tiles, stream);
    case DType::kBFloat16: return launch_pe_k<__nv_bfloat16>(a.ksize, p, a.batch, channels, tiles, stream);
    case DType::kFloat32: return launch_pe_k<float>(a.ksize, p, a.batch, channels, tiles, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace yolov12_fast
