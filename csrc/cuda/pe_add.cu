// AAttn positional encoding plus an add, fused: out = x + depthwise_conv2d(v, weight, bias, padding=k//2); and the
// weight / bias gradients of that conv for its backward (pe_wgrad_kernel below; the input gradient is this forward
// kernel on dout with the kernel flipped). Torch-free.
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

#include "convert.cuh"
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

// What both PE kernels need of the input v and the plan (PeParams and PeWgradParams extend it).
struct PeTiling {
  const void* v;
  Strides4 sv;
  int head_dim, H, W;
  int pairs, groups, tiles_w, tiles, halo_w, halo_h;
};

struct PeParams : PeTiling {
  const void* weight;
  const void* bias;
  const void* x;
  void* out;
  Strides4 sx;
  int64_t w_c, w_y, w_x, bias_c;
};

// The launch both PE entry points share: cudaErrorInvalidValue for what the kernels cannot take, cudaSuccess with
// grid->x == 0 for nothing to do, else the plan, the tiling fields of *t (v, sv filled) and the grid (tiles, channels,
// images).
inline cudaError_t pe_launch(const PePlane& a, PePlan* plan, PeTiling* t, dim3* grid) {
  const int64_t batch = a.batch, heads = a.heads, head_dim = a.head_dim, H = a.H, W = a.W;
  const int k = a.ksize;
  *grid = dim3(0, 0, 0);
  if (!(k == 3 || k == 5 || k == 7) || H < 0 || W < 0) return cudaErrorInvalidValue;
  const int64_t channels = heads * head_dim;
  if (batch == 0 || channels == 0 || H * W == 0) return cudaSuccess;
  if (batch > 65535 || channels > 65535 || H >= (int64_t(1) << 30) || W >= (int64_t(1) << 30))
    return cudaErrorInvalidValue;
  *plan = pe_plan(H, W, k);
  const int64_t tiles = (int64_t)plan->tiles_w * plan->tiles_h;
  if (tiles >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  t->v = a.v;
  t->sv = a.sv;
  t->head_dim = (int)head_dim;
  t->H = (int)H;
  t->W = (int)W;
  t->pairs = plan->pairs;
  t->groups = plan->groups;
  t->tiles_w = plan->tiles_w;
  t->tiles = (int)tiles;
  t->halo_w = plan->halo_w;
  t->halo_h = plan->halo_h;
  *grid = dim3((unsigned)tiles, (unsigned)channels, (unsigned)batch);
  return cudaSuccess;
}

// The K + 1 staged inputs a thread's 2 output columns read from one halo row (float2 loads: 8-byte aligned, as
// halo_w and the thread's first column are even).
template <int K>
__device__ __forceinline__ void load_halo_row(float (&in)[K + 1], const float* row) {
  const float2* src = reinterpret_cast<const float2*>(row);
#pragma unroll
  for (int m = 0; m < (K + 1) / 2; ++m) {
    const float2 two = src[m];
    in[2 * m] = two.x;
    in[2 * m + 1] = two.y;
  }
}

// The sweep both kernels make over a thread's outputs: input row ty + r of the staged tile (halo coordinates) meets
// output row ty + o through kernel row i = r - o; output column x reads halo columns 2 * pair + j, column x + 1 reads
// 2 * pair + j + 1 (j < K). f(o, i, in) is called for each (o, i) pair with the K + 1 inputs of row r (`rows`: the
// tile at halo row ty, column 2 * pair).
template <int K, typename F>
__device__ __forceinline__ void sweep_rows(const float* rows, int halo_w, F&& f) {
#pragma unroll
  for (int r = 0; r < kPeRows + K - 1; ++r) {
    float in[K + 1];
    load_halo_row<K>(in, rows + r * halo_w);
#pragma unroll
    for (int o = 0; o < kPeRows; ++o) {
      const int i = r - o;
      if (i >= 0 && i < K) f(o, i, in);
    }
  }
}

// One PE kernel family launched for a dtype and a kernel size: Ks::get<T, K>() is its instantiation (PeAddKernels,
// PeWgradKernels below), on grid with `threads` and `smem`.
template <typename Ks, typename T, typename P>
inline cudaError_t launch_for_k(int k, const P& p, dim3 grid, int threads, int smem, cudaStream_t stream) {
  const dim3 block((unsigned)threads);
  switch (k) {
    case 3: return launch_kernel(Ks::template get<T, 3>(), grid, block, smem, stream, p);
    case 5: return launch_kernel(Ks::template get<T, 5>(), grid, block, smem, stream, p);
    case 7: return launch_kernel(Ks::template get<T, 7>(), grid, block, smem, stream, p);
    default: return cudaErrorInvalidValue;
  }
}

template <typename Ks, typename P>
inline cudaError_t launch_pe(DType dtype, int k, const P& p, dim3 grid, int threads, int smem, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16: return launch_for_k<Ks, __half>(k, p, grid, threads, smem, stream);
    case DType::kBFloat16: return launch_for_k<Ks, __nv_bfloat16>(k, p, grid, threads, smem, stream);
    case DType::kFloat32: return launch_for_k<Ks, float>(k, p, grid, threads, smem, stream);
  }
  return cudaErrorInvalidValue;
}

// Stages the input tile of (image b, channel h * head_dim + d) whose outputs start at (y0, x0): halo cell (hy, hx)
// holds v at (y0 - P + hy, x0 - P + hx), 0 outside the image. Each warp takes kPeStageRows halo rows at a time, its
// lanes consecutive columns (hx = lane + 32 * chunk: coalesced loads, conflict-free stores). What depends on the
// column (its source pointer, whether it is inside the image) is computed once per thread, what depends on the row
// once per row: an element costs a predicate, a 64-bit add, the load, a conversion and the store. (The cell-by-cell
// walk it replaces spent about 40 instructions per element on index arithmetic and bounds: about half of the
// forward kernel's instructions.) A pass's loads are issued before its stores. Shared by the forward and the weight
// gradient (PeParams and PeWgradParams both carry v, sv, H, W, halo_w, halo_h).
template <typename T, int K, typename Params>
__device__ __forceinline__ void stage_halo(float* __restrict__ tile, const Params& p, int b, int h, int d, int x0,
                                           int y0) {
  constexpr int P = K / 2;
  const int H = p.H, W = p.W;
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

template <typename T, int K>
__global__ void __launch_bounds__(kPeMaxThreads, 2) pe_add_kernel(const PeParams p) {
  YF_DYNAMIC_SMEM(float, tile);  // halo_h x halo_w staged inputs, then the K x K weights
  float* w = tile + p.halo_h * p.halo_w;

  const int c = blockIdx.y, b = blockIdx.z;
  const int h = c / p.head_dim, d = c - h * p.head_dim;
  const int tile_h = kPeRows * p.groups;
  const int x0 = (blockIdx.x % p.tiles_w) * 2 * p.pairs;
  const int y0 = (blockIdx.x / p.tiles_w) * tile_h;
  const int H = p.H, W = p.W;

  stage_halo<T, K>(tile, p, b, h, d, x0, y0);
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
  sweep_rows<K>(tile + ty * p.halo_w + 2 * pair, p.halo_w, [&](int o, int i, const float (&in)[K + 1]) {
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const float wij = w[i * K + j];
      acc0[o] = fmaf(wij, in[j], acc0[o]);
      acc1[o] = fmaf(wij, in[j + 1], acc1[o]);
    }
  });

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

// ------------------------------------------------------------------------------------------------------------
// The weight and bias gradients of the PE branch, per (output tile, channel, image) of the forward's plan:
//   partial[(b * tiles + tile), c, i * K + j] = sum over the tile's outputs (y, x) of dout[b, c, y, x] * v[b, c,
//                                               y + i - K/2, x + j - K/2]   (zero outside the image)
//   partial[(b * tiles + tile), c, K * K]     = sum over the tile's outputs of dout[b, c, y, x]
// The caller sums `partial` over its first dimension (torch's sum: a fixed order, so the gradients are deterministic).
// The CTA stages v's tile with its halo as the forward does; each thread takes the forward's 2 columns x kPeRows
// rows of outputs, reads their dout values once (registers), and for each staged input row adds 2 x K products per
// (output row, kernel row) pair into K * K register accumulators: the forward's FMAs with the roles of weight and
// output swapped. The K * K + 1 sums then go through a butterfly over the warp that halves them each step (62 shuffles
// for any K <= 7) and, in warp order, through shared memory; thread t writes sums t, t + blockDim.x, ...
// Replaces ATen's NCHW depthwise backward, which on the H100 of 2026-11-27b took 132 us (weight) + 79 us (input) at
// P5 h4 batch 32, 58 % of that step's kernel time.
struct PeWgradParams : PeTiling {
  const void* dout;
  float* partial;
  Strides4 sd;
};

// One step of the warp's halving butterfly over red[0, 2 * HALF): lanes with bit HALF / 2 set keep the upper half
// (adding their partner's), the others the lower; red[0, HALF) then holds this lane's half. Template steps: every
// index is a compile-time constant, so red stays in registers.
template <int HALF>
__device__ __forceinline__ void butterfly_step(float (&red)[64], int lane) {
  constexpr int M = HALF / 2;
  const bool upper = (lane & M) != 0;
#pragma unroll
  for (int i = 0; i < HALF; ++i) {
    const float sent = __shfl_xor_sync(0xffffffffu, upper ? red[i] : red[i + HALF], M);
    red[i] = (upper ? red[i + HALF] : red[i]) + sent;
  }
}

template <typename T, int K>
__global__ void __launch_bounds__(kPeMaxThreads, 2) pe_wgrad_kernel(const PeWgradParams p) {
  constexpr int KK = K * K;
  static_assert(KK + 1 <= 64, "the warp butterfly holds at most 64 sums");
  YF_DYNAMIC_SMEM(float, tile);  // halo_h x halo_w staged inputs; then (after a barrier) the warps' sums

  const int c = blockIdx.y, b = blockIdx.z;
  const int h = c / p.head_dim, d = c - h * p.head_dim;
  const int tile_h = kPeRows * p.groups;
  const int x0 = (blockIdx.x % p.tiles_w) * 2 * p.pairs;
  const int y0 = (blockIdx.x / p.tiles_w) * tile_h;
  const int H = p.H, W = p.W;

  stage_halo<T, K>(tile, p, b, h, d, x0, y0);

  // this thread's outputs' dout values (0 past the image and for the idle lanes of the last warp)
  const int pair = threadIdx.x % p.pairs, group = threadIdx.x / p.pairs;
  const bool active = group < p.groups;
  const int ty = group * kPeRows;
  const int x = x0 + 2 * pair;
  float g0[kPeRows], g1[kPeRows];
  {
    const T* db = static_cast<const T*>(p.dout) + b * p.sd.b + h * p.sd.h + d * p.sd.d;
#pragma unroll
    for (int o = 0; o < kPeRows; ++o) {
      const int y = y0 + ty + o;
      const bool row_ok = active && y < H;
      const int64_t t = (int64_t)y * W + x;
      g0[o] = row_ok && x < W ? load_f32<T>(db + t * p.sd.n) : 0.f;
      g1[o] = row_ok && x + 1 < W ? load_f32<T>(db + (t + 1) * p.sd.n) : 0.f;
    }
  }
  __syncthreads();

  float acc[KK + 1];
#pragma unroll
  for (int i = 0; i < KK + 1; ++i) acc[i] = 0.f;
  if (active) {
    sweep_rows<K>(tile + ty * p.halo_w + 2 * pair, p.halo_w, [&](int o, int i, const float (&in)[K + 1]) {
#pragma unroll
      for (int j = 0; j < K; ++j) acc[i * K + j] = fmaf(g0[o], in[j], fmaf(g1[o], in[j + 1], acc[i * K + j]));
    });
#pragma unroll
    for (int o = 0; o < kPeRows; ++o) acc[KK] += g0[o] + g1[o];
  }

  // Over the warp, a butterfly that halves the values each step (every lane takes part: the idle ones add zeros):
  // with the sums padded to 64, lanes whose bit (mask) is set keep the upper half and send the lower, the others the
  // reverse, so 32 + 16 + 8 + 4 + 2 shuffles (not 5 per sum: 250 for K = 7) leave lane L with the warp's sums 2L and
  // 2L + 1. Then over the warps, in order.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  float red[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) red[i] = i < KK + 1 ? acc[i] : 0.f;
  butterfly_step<32>(red, lane);
  butterfly_step<16>(red, lane);
  butterfly_step<8>(red, lane);
  butterfly_step<4>(red, lane);
  butterfly_step<2>(red, lane);
  __syncthreads();  // every thread is done with the staged tile: its memory takes the warps' sums
#pragma unroll
  for (int j = 0; j < 2; ++j)
    if (2 * lane + j < KK + 1) tile[warp * (KK + 1) + 2 * lane + j] = red[j];
  __syncthreads();
  for (int i = threadIdx.x; i < KK + 1; i += blockDim.x) {  // a CTA may have fewer threads than sums (one warp)
    float sum = 0.f;
    for (int w = 0; w < nwarps; ++w) sum += tile[w * (KK + 1) + i];
    p.partial[(((int64_t)b * p.tiles + blockIdx.x) * gridDim.y + c) * (KK + 1) + i] = sum;
  }
}

struct PeAddKernels {
  template <typename T, int K>
  static auto get() { return pe_add_kernel<T, K>; }
};
struct PeWgradKernels {
  template <typename T, int K>
  static auto get() { return pe_wgrad_kernel<T, K>; }
};

// The warps' sums reuse the staged tile's memory: it must hold nwarps * (k * k + 1) floats.
inline int pe_wgrad_smem_bytes(const PePlan& plan, int k) {
  const int sums = plan.threads / 32 * (k * k + 1);
  const int staged = plan.halo_w * plan.halo_h;
  return (int)sizeof(float) * (staged > sums ? staged : sums);
}

}  // namespace detail

bool pe_add_supports_ksize(int ksize) { return ksize == 3 || ksize == 5 || ksize == 7; }

int64_t pe_wgrad_tiles(int64_t H, int64_t W, int ksize) {
  if (H <= 0 || W <= 0) return 0;
  const detail::PePlan plan = detail::pe_plan(H, W, ksize);
  return (int64_t)plan.tiles_w * plan.tiles_h;
}

cudaError_t pe_add(const PeAddArgs& a, cudaStream_t stream) {
  using namespace detail;
  PePlan plan{};
  PeParams p{};
  dim3 grid;
  const cudaError_t bad = pe_launch(a, &plan, &p, &grid);
  if (bad != cudaSuccess || grid.x == 0) return bad;
  p.weight = a.weight;
  p.bias = a.bias;
  p.x = a.x;
  p.out = a.out;
  p.sx = a.sx;
  p.w_c = a.w_c;
  p.w_y = a.w_y;
  p.w_x = a.w_x;
  p.bias_c = a.bias_c;
  return launch_pe<PeAddKernels>(a.dtype, a.ksize, p, grid, plan.threads, plan.smem_bytes, stream);
}

cudaError_t pe_wgrad(const PeWgradArgs& a, cudaStream_t stream) {
  using namespace detail;
  PePlan plan{};
  PeWgradParams p{};
  dim3 grid;
  const cudaError_t bad = pe_launch(a, &plan, &p, &grid);
  if (bad != cudaSuccess || grid.x == 0) return bad;
  p.dout = a.dout;
  p.partial = a.partial;
  p.sd = a.sdout;
  return launch_pe<PeWgradKernels>(a.dtype, a.ksize, p, grid, plan.threads, pe_wgrad_smem_bytes(plan, a.ksize),
                                   stream);
}

}  // namespace cuda
}  // namespace yolov12_fast
