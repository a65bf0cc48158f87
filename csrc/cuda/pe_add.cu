// AAttn positional encoding plus an add, fused: out = x + depthwise_conv2d(v, weight, bias, padding=k//2).
// Torch-free.
//
// v and x are (B, heads, head_dim, N = H*W) with arbitrary element strides (v is usually a view into the qkv
// conv output); channel c = h * head_dim + d is one H x W plane. The conv runs over the whole plane (it crosses
// area borders; zeros only outside the image). Output contiguous (B, heads, head_dim, N) in the input dtype.
//
// One CTA per (output tile, channel, image). The tile is fitted to the plane (pe_plan): as wide as the plane up to
// 128 columns, as tall as the rest of 256 threads allows, rows split evenly between row tiles, so the maps YOLO12
// has (40x40 and 20x20 at 640; 80x80, 30x40, 15x20 elsewhere) take one tile per plane or nearly, instead of a 32x32
// tile that computed 2.56x the outputs of a 40x40 plane. Each thread computes 2 adjacent columns x kPeRows rows:
// per input row it reads k + 1 staged values (float2 loads) that feed 2 x k taps of up to kPeRows outputs.
// The tile's input with its halo is staged in shared memory as fp32 (zero outside the image), a warp per pair of
// halo rows, their loads issued before their stores (a serial load-store loop at 2 CTAs per SM was latency-bound:
// 0.50 ms at P4 h8 batch 32 on an H100 against a 26 us byte floor; the cell-by-cell batched walk that followed
// measured 135 us there, about half of its instructions index arithmetic of the staging). fp32 accumulation; bias and x are added in fp32 and the result rounded once.
#include <cstdint>

#include "device.h"
#include "kernels.h"

namespace yolov12_fast {
namespace cuda {
namespace detail {

constexpr int kPeRows = 4;          // output rows per thread
constexpr int kPeMaxThreads = 256;  // threads per CTA at most
constexpr int kPeMaxPairs = 64;     // column pairs per tile at most: tiles are at most 128 columns wide
constexpr int kPeStageRows = 2;     // halo rows a warp stages per pass (their loads in flight together)
constexpr int kPeMaxChunks = (2 * kPeMaxPairs + 7 - 1 + 31) / 32;  // 32-column chunks of the widest halo row (k <= 7)

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

// How a launch tiles the planes; a pure function of (H, W, k). Host code.
struct PePlan {
  int pairs;    // column pairs per tile (threads per row group); tile width 2 * pairs
  int groups;   // row groups per tile; tile height kPeRows * groups
  int tiles_w, tiles_h;
  int threads;  // pairs * groups rounded up to a warp
  int halo_w, halo_h;  // the staged input: halo_h rows of halo_w fp32 values (halo_w is even: float2 reads)
  int smem_bytes;      // the staged input, then the k x k weights
};

inline PePlan pe_plan(int64_t H, int64_t W, int k) {
  PePlan p{};
  const int64_t pairs_needed = (W + 1) / 2;
  p.pairs = (int)(pairs_needed < kPeMaxPairs ? pairs_needed : kPeMaxPairs);
  p.tiles_w = (int)((pairs_needed + p.pairs - 1) / p.pairs);
  p.pairs = (int)((pairs_needed + p.tiles_w - 1) / p.tiles_w);  // the same tile count, columns split evenly
  const int64_t groups_needed = (H + kPeRows - 1) / kPeRows;
  const int64_t max_groups = kPeMaxThreads / p.pairs;
  p.tiles_h = (int)((groups_needed + max_groups - 1) / max_groups);
  p.groups = (int)((groups_needed + p.tiles_h - 1) / p.tiles_h);  // rows split evenly between row tiles
  p.threads = (p.pairs * p.groups + 31) / 32 * 32;
  p.halo_w = 2 * p.pairs + k - 1;  // even: k is odd
  p.halo_h = kPeRows * p.groups + k - 1;
  p.smem_bytes = (int)sizeof(float) * (p.halo_w * p.halo_h + k * k);
  return p;
}

struct PeParams {
  const void* v;
  const void* weight;
  const void* bias;
  const void* x;
  void* out;
  Strides4 sv, sx;
  int64_t w_c, w_y, w_x, bias_c;
  int head_dim, H, W;
  int pairs, groups, tiles_w, halo_w, halo_h;
};

template <typename T, int K>
__global__ void __launch_bounds__(kPeMaxThreads, 2) pe_add_kernel(const PeParams p) {
  constexpr int P = K / 2;
  YF_DYNAMIC_SMEM(float, tile);  // halo_h x halo_w staged inputs, then the K x K weights
  float* w = tile + p.halo_h * p.halo_w;

  const int c = blockIdx.y, b = blockIdx.z;
  const int h = c / p.head_dim, d = c - h * p.head_dim;
  const int tile_h = kPeRows * p.groups;
  const int x0 = (blockIdx.x % p.tiles_w) * 2 * p.pairs;
  const int y0 = (blockIdx.x / p.tiles_w) * tile_h;
  const int H = p.H, W = p.W;

  // Stage the input: halo cell (hy, hx) holds v at (y0 - P + hy, x0 - P + hx), 0 outside the image. Each warp takes
  // kPeStageRows halo rows at a time, its lanes consecutive columns (hx = lane + 32 * chunk: coalesced loads,
  // conflict-free stores). What depends on the column (its source pointer, whether it is inside the image) is
  // computed once per thread, what depends on the row once per row: an element costs a predicate, a 64-bit add, the
  // load, a conversion and the store. (The cell-by-cell walk it replaces spent about 40 instructions per element on
  // index arithmetic and bounds: about half of the kernel's instructions.) A pass's loads are issued before its stores.
  {
    const T* plane = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h + d * p.sv.d;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int chunks = (p.halo_w + 31) >> 5;  // CTA-uniform
    const int64_t row_step = (int64_t)W * p.sv.n;
    const T* col[kPeMaxChunks];
    bool col_ok[kPeMaxChunks];
#pragma unroll
    for (int ch = 0; ch < kPeMaxChunks; ++ch) {
      const int hx = lane + 32 * ch, x = x0 - P + hx;
      col_ok[ch] = ch < chunks && hx < p.halo_w && x >= 0 && x < W;
      col[ch] = plane + (col_ok[ch] ? (int64_t)x * p.sv.n : 0);
    }
    for (int hy = warp * kPeStageRows; hy < p.halo_h; hy += nwarps * kPeStageRows) {
      float vals[kPeStageRows][kPeMaxChunks];
#pragma unroll
      for (int r = 0; r < kPeStageRows; ++r) {
        const int y = y0 - P + hy + r;
        const bool row_ok = hy + r < p.halo_h && y >= 0 && y < H;
        const int64_t off = row_ok ? (int64_t)y * row_step : 0;
#pragma unroll
        for (int ch = 0; ch < kPeMaxChunks; ++ch) {
          if (ch < chunks) vals[r][ch] = (row_ok && col_ok[ch]) ? load_f32<T>(col[ch] + off) : 0.f;
        }
      }
#pragma unroll
      for (int r = 0; r < kPeStageRows; ++r) {
        if (hy + r < p.halo_h) {
          float* dst = tile + (hy + r) * p.halo_w + lane;
#pragma unroll
          for (int ch = 0; ch < kPeMaxChunks; ++ch)
            if (ch < chunks && lane + 32 * ch < p.halo_w) dst[32 * ch] = vals[r][ch];
        }
      }
    }
  }
  for (int i = threadIdx.x; i < K * K; i += blockDim.x) {
    const int ky = i / K, kx = i - ky * K;
    w[i] = load_f32<T>(static_cast<const T*>(p.weight) + c * p.w_c + ky * p.w_y + kx * p.w_x);
  }
  __syncthreads();

  const int pair = threadIdx.x % p.pairs, group = threadIdx.x / p.pairs;
  if (group >= p.groups) return;  // the idle lanes of the last warp (after the only barrier)
  const int ty = group * kPeRows;  // first output row in the tile = halo row of its first input row
  float acc0[kPeRows], acc1[kPeRows];  // columns x, x + 1
#pragma unroll
  for (int o = 0; o < kPeRows; ++o) acc0[o] = acc1[o] = 0.f;
  // input row ty + r (halo coordinates) feeds output row ty + o through kernel row r - o; output column x reads halo
  // columns 2 * pair + j, column x + 1 reads 2 * pair + j + 1 (j < K)
  const float* rows = tile + ty * p.halo_w + 2 * pair;
#pragma unroll
  for (int r = 0; r < kPeRows + K - 1; ++r) {
    float in[K + 1];
    const float2* src = reinterpret_cast<const float2*>(rows + r * p.halo_w);  // 8-byte aligned: halo_w is even
#pragma unroll
    for (int m = 0; m < (K + 1) / 2; ++m) {
      const float2 two = src[m];
      in[2 * m] = two.x;
      in[2 * m + 1] = two.y;
    }
#pragma unroll
    for (int o = 0; o < kPeRows; ++o) {
      const int i = r - o;
      if (i >= 0 && i < K) {
#pragma unroll
        for (int j = 0; j < K; ++j) {
          const float wij = w[i * K + j];
          acc0[o] = fmaf(wij, in[j], acc0[o]);
          acc1[o] = fmaf(wij, in[j + 1], acc1[o]);
        }
      }
    }
  }

  const int x = x0 + 2 * pair;
  const float bias = p.bias ? load_f32<T>(static_cast<const T*>(p.bias) + c * p.bias_c) : 0.f;
  const T* xb = p.x ? static_cast<const T*>(p.x) + b * p.sx.b + h * p.sx.h + d * p.sx.d : nullptr;
  T* ob = static_cast<T*>(p.out) + ((int64_t)b * gridDim.y + c) * ((int64_t)H * W);
#pragma unroll
  for (int o = 0; o < kPeRows; ++o) {
    const int y = y0 + ty + o;
    if (y < H) {
      const int64_t t = (int64_t)y * W + x;
      if (x < W) {
        float val = acc0[o] + bias;
        if (xb) val += load_f32<T>(xb + t * p.sx.n);
        ob[t] = from_f32<T>(val);
      }
      if (x + 1 < W) {
        float val = acc1[o] + bias;
        if (xb) val += load_f32<T>(xb + (t + 1) * p.sx.n);
        ob[t + 1] = from_f32<T>(val);
      }
    }
  }
}

template <typename T>
cudaError_t launch_pe_k(int k, const PeParams& p, dim3 grid, const PePlan& plan, cudaStream_t stream) {
  const dim3 block((unsigned)plan.threads);
  switch (k) {
    case 3: return launch_kernel(pe_add_kernel<T, 3>, grid, block, plan.smem_bytes, stream, p);
    case 5: return launch_kernel(pe_add_kernel<T, 5>, grid, block, plan.smem_bytes, stream, p);
    case 7: return launch_kernel(pe_add_kernel<T, 7>, grid, block, plan.smem_bytes, stream, p);
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
  if (a.batch > 65535 || channels > 65535 || a.H >= (int64_t(1) << 30) || a.W >= (int64_t(1) << 30))
    return cudaErrorInvalidValue;
  const PePlan plan = pe_plan(a.H, a.W, a.ksize);
  const int64_t tiles = (int64_t)plan.tiles_w * plan.tiles_h;
  if (tiles >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
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
  p.pairs = plan.pairs;
  p.groups = plan.groups;
  p.tiles_w = plan.tiles_w;
  p.halo_w = plan.halo_w;
  p.halo_h = plan.halo_h;
  const dim3 grid((unsigned)tiles, (unsigned)channels, (unsigned)a.batch);
  switch (a.dtype) {
    case DType::kFloat16: return launch_pe_k<__half>(a.ksize, p, grid, plan, stream);
    case DType::kBFloat16: return launch_pe_k<__nv_bfloat16>(a.ksize, p, grid, plan, stream);
    case DType::kFloat32: return launch_pe_k<float>(a.ksize, p, grid, plan, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace yolov12_fast
