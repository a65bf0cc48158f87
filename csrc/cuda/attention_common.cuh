// Device helpers shared by the CUDA area-attention kernels (area_attention_fwd.cu, area_attention_bwd.cu):
// element types, the tensor-core and ldmatrix wrappers (with their CPU-emulator branches), the K / V / Q / dO staging
// into shared memory rows [d][token], and A-fragment row loads. Torch-free.
#pragma once

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "device.h"
#include "kernels.h"

namespace yolov12_fast {
namespace cuda {
namespace detail {  // (not anonymous: helpers an arch does not use would warn "declared but never referenced")

constexpr float kLog2e = 1.4426950408889634f;  // 1 / ln(2)
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kEpiRow = 24;    // per-warp epilogue buffer row: 16 tokens + 8 pad (48 bytes: conflict-free)

// The kernel parameters both directions share: q, k, v with their strides, where the sequences are, and the launch
// plan's staging (FwdParams and BwdParams extend it).
struct AreaParams {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  Strides4 sq, sk, sv;
  int64_t N;     // tokens per image
  int heads, area;
  int n;         // tokens per area
  int chunk;     // keys (tokens) per staged smem chunk; resident: n rounded up to 16
  int smem_row;  // elements per staged smem row (chunk + 8)
  int resident;  // 1: stage the whole area once; 0: stream chunks
  int async_staging;  // 1: the vector staging modes copy through cp.async where compiled (sm_80+); 0: registers
};

// Fills the shared fields from a launcher's arguments (AreaAttnFwdArgs or AreaAttnBwdArgs) and the plan.
template <typename Args>
inline void set_area_params(AreaParams& p, const Args& a, const AreaAttnFwdPlan& plan, int64_t n) {
  p.q = static_cast<const uint16_t*>(a.q);
  p.k = static_cast<const uint16_t*>(a.k);
  p.v = static_cast<const uint16_t*>(a.v);
  p.sq = a.sq;
  p.sk = a.sk;
  p.sv = a.sv;
  p.N = a.tokens;
  p.heads = (int)a.heads;
  p.area = (int)a.area;
  p.n = (int)n;
  p.chunk = plan.chunk_keys;
  p.smem_row = plan.smem_row;
  p.resident = plan.resident ? 1 : 0;
  p.async_staging = a.register_staging ? 0 : 1;
}

// ------------------------------------------------------------------------------------------------------------
// element types, tensor-core and ldmatrix wrappers

template <typename T>
struct Elem;
template <>
struct Elem<__half> {
  static __device__ __forceinline__ float to_float(uint16_t b) { return __half2float(__ushort_as_half(b)); }
  static __device__ __forceinline__ uint16_t from_float(float f) { return __half_as_ushort(__float2half_rn(f)); }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);  // .x (low 16 bits) = lo
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};
template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(uint16_t b) { return __bfloat162float(__ushort_as_bfloat16(b)); }
  static __device__ __forceinline__ uint16_t from_float(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

// ldmatrix needs sm_75; bf16 mma.sync needs sm_80. Kernels compiled for an arch that lacks them become a trap
// (the launcher and the glue refuse those configurations before launching).
template <typename T>
__host__ __device__ constexpr bool arch_has_mma() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 750)
  return false;
#elif defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
  return !std::is_same<T, __nv_bfloat16>::value;
#else
  return true;
#endif
}

// c (16x8, fp32) += a (16x16, row) * b (16x8, col). Fragments as in the PTX ISA for m16n8k16: a[0] = rows g,
// cols 2t..2t+1; a[1] = rows g+8; a[2] = rows g, cols 8+2t..; a[3] = rows g+8, cols 8+2t..; b0 = k rows 2t..2t+1,
// b1 = k rows 8+2t..; c[0..1] = row g, cols 2t..2t+1, c[2..3] = row g+8 (g = lane / 4, t = lane % 4).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

// c (16x8, fp32) += a (16x8, row: a0 = rows g, cols 2t..2t+1; a1 = rows g+8) * b (8x8, col: k rows 2t..2t+1), fp16.
__device__ __forceinline__ void mma_1688_f16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t b) {
#ifdef YOLOV12_FAST_CUDA_EMU
  yf_emu::mma_1688_f16(c, a0, a1, b);
#else
  asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(b));
#endif
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if (defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)) || (defined(YOLOV12_FAST_CUDA_EMU) && !defined(YF_EMU_SM75))
#ifdef YOLOV12_FAST_CUDA_EMU
  yf_emu::mma_16816<__half>(c, a, b0, b1);
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
#elif (defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 750)) || defined(YF_EMU_SM75)
  // Turing has m16n8k8 only: the k16 product is two k8 products (k columns 0..7, then 8..15). The emulator runs
  // this branch when built with YF_EMU_SM75.
  mma_1688_f16(c, a[0], a[1], b0);
  mma_1688_f16(c, a[2], a[3], b1);
#endif
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(YOLOV12_FAST_CUDA_EMU)
  yf_emu::mma_16816<__nv_bfloat16>(c, a, b0, b1);
#endif
}

// 2^x on the SFU (ex2.approx.ftz: ~2 ulp, 2^-inf = +0), independent of --use_fast_math.
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef YOLOV12_FAST_CUDA_EMU
  return yf_emu::ex2_approx_ftz(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lanes 8m..8m+7 give the row addresses of matrix m (16 contiguous bytes each).
// Without .trans (TRANS false) lane i receives row i/4, columns 2(i%4), 2(i%4)+1 of each matrix; with .trans it
// receives rows 2(i%4), 2(i%4)+1 of column i/4.
template <bool TRANS = false>
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
#ifdef YOLOV12_FAST_CUDA_EMU
  yf_emu::ldmatrix_x4(r, addr, TRANS);
#else
#define YF_LDSM_X4(SUFFIX)                                                                   \
  asm volatile("ldmatrix.sync.aligned.m8n8.x4" SUFFIX ".shared.b16 {%0,%1,%2,%3}, [%4];\n" \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                              \
               : "r"(addr)                                                                   \
               : "memory")
  if constexpr (TRANS) YF_LDSM_X4(".trans");
  else YF_LDSM_X4("");
#undef YF_LDSM_X4
#endif
}

// ------------------------------------------------------------------------------------------------------------
// staging K or V: global (strided) -> smem rows [d][key], keys [c0, c0 + cpad) of the area, zero past n

template <int VW>
struct VecOf;
template <>
struct VecOf<8> { using type = uint4; };
template <>
struct VecOf<4> { using type = uint2; };
template <>
struct VecOf<2> { using type = unsigned int; };
template <>
struct VecOf<1> { using type = unsigned short; };

// Token-fastest: consecutive threads take consecutive token vectors of one d row (coalesced when the token
// stride is 1). VW > 1 only when the launcher checked: token stride 1, n, the other strides and the base
// address multiples of VW elements (so a vector is wholly valid or wholly past n, and aligned).
template <int D, int NT, int VW>
__device__ __forceinline__ void stage_tokens(uint16_t* __restrict__ dst, const uint16_t* __restrict__ src,
                                             int64_t sn, int64_t sd, int c0, int cpad, int n, int row) {
  using V = typename VecOf<VW>::type;
  constexpr int U = 4;  // loads in flight per thread
  const int nt = NT > 0 ? NT : (int)blockDim.x;  // NT = 0: the CTA's size is a launch parameter
  const int per_row = cpad / VW;
  const int total = D * per_row;
  for (int base = threadIdx.x; base < total; base += nt * U) {
    V val[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * nt;
      val[u] = V{};
      if (idx < total) {
        const int d = idx / per_row;
        const int key = c0 + (idx - d * per_row) * VW;
        if (key < n) val[u] = __ldg(reinterpret_cast<const V*>(src + key * sn + d * sd));
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * nt;
      if (idx < total) {
        const int d = idx / per_row;
        const int i = (idx - d * per_row) * VW;
        *reinterpret_cast<V*>(dst + d * row + i) = val[u];
      }
    }
  }
}

// d-fastest (channels_last views: d stride 1): consecutive threads take consecutive d of one token.
template <int D, int NT>
__device__ __forceinline__ void stage_dfast(uint16_t* __restrict__ dst, const uint16_t* __restrict__ src,
                                            int64_t sn, int64_t sd, int c0, int cpad, int n, int row) {
  constexpr int U = 4;
  const int nt = NT > 0 ? NT : (int)blockDim.x;  // NT = 0: the CTA's size is a launch parameter
  const int total = D * cpad;
  for (int base = threadIdx.x; base < total; base += nt * U) {
    uint16_t val[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * nt;
      const int i = idx / D;
      val[u] = 0;
      if (idx < total && c0 + i < n) val[u] = __ldg(src + (int64_t)(c0 + i) * sn + (int64_t)(idx % D) * sd);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * nt;
      if (idx < total) dst[(idx % D) * row + idx / D] = val[u];
    }
  }
}

// cp.async (sm_80+): an asynchronous BYTES-byte (4, 8 or 16) global -> shared copy that fills the destination with
// zeros instead where !valid (src-size 0: nothing is read). The copies of a thread land only after its
// cp_async_wait_all(); the barrier after that publishes them to the CTA. The emulator defers each copy to the wait, so
// a kernel that reads staged data without the wait reads the NaN fill of fresh shared memory, as it could on a GPU.
#if (defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)) || (defined(YOLOV12_FAST_CUDA_EMU) && !defined(YF_EMU_SM75))
#define YF_CP_ASYNC 1
#else
#define YF_CP_ASYNC 0
#endif

template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool valid) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#ifdef YOLOV12_FAST_CUDA_EMU
  yf_emu::cp_async(dst, src, BYTES, valid);
#elif YF_CP_ASYNC
  const uint32_t d = smem_addr(dst);
  const int src_bytes = valid ? BYTES : 0;
  if constexpr (BYTES == 16)  // .cg: through L2 only (staged once per CTA, no reuse from L1)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(d), "l"(src), "n"(BYTES), "r"(src_bytes)
                 : "memory");
#else
  (void)dst, (void)src, (void)valid;
  __trap();  // never called: stage() takes the register path where YF_CP_ASYNC is 0
#endif
}

// Waits for this thread's cp.async copies (none where YF_CP_ASYNC is 0: a no-op).
__device__ __forceinline__ void cp_async_wait_all() {
#ifdef YOLOV12_FAST_CUDA_EMU
  yf_emu::cp_async_wait_all();
#elif YF_CP_ASYNC
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// stage_tokens through cp.async: every copy of the thread in flight at once (12-13 per thread for an n = 400 area's
// K at 256 threads), where the register path has U = 4 loads in flight and waits for them before the next 4. Same
// preconditions (VW > 1: token stride 1, a vector wholly valid or wholly past n, aligned); the destination is 16-byte
// aligned for VW = 8 because each smem row is chunk + 8 elements (chunk a multiple of 16).
template <int D, int NT, int VW>
__device__ __forceinline__ void stage_tokens_async(uint16_t* __restrict__ dst, const uint16_t* __restrict__ src,
                                                   int64_t sd, int c0, int cpad, int n, int row) {
  const int nt = NT > 0 ? NT : (int)blockDim.x;
  const int per_row = cpad / VW;
  const int total = D * per_row;
  for (int idx = threadIdx.x; idx < total; idx += nt) {
    const int d = idx / per_row;
    const int i = (idx - d * per_row) * VW;
    const int key = c0 + i;
    const bool ok = key < n;
    cp_async<2 * VW>(dst + d * row + i, ok ? src + key + d * sd : src, ok);
  }
}

// One tensor's chunk -> smem rows [d][token]. The caller calls cp_async_wait_all() and then __syncthreads() before
// any thread reads the rows (the vector modes copy asynchronously on sm_80+ unless `async` is 0: the launch's
// AreaParams::async_staging, uniform over the launch).
template <int D, int NT>
__device__ __noinline__ void stage(uint16_t* dst, const uint16_t* src, const Strides4& s, int mode, int c0,
                                      int cpad, int n, int row, int async) {
#if YF_CP_ASYNC
  if (async) {
    switch (mode) {
      case 8: stage_tokens_async<D, NT, 8>(dst, src, s.d, c0, cpad, n, row); return;
      case 4: stage_tokens_async<D, NT, 4>(dst, src, s.d, c0, cpad, n, row); return;
      case 2: stage_tokens_async<D, NT, 2>(dst, src, s.d, c0, cpad, n, row); return;
      default: break;
    }
  }
#else
  (void)async;
#endif
  switch (mode) {
    case 8: stage_tokens<D, NT, 8>(dst, src, 1, s.d, c0, cpad, n, row); break;
    case 4: stage_tokens<D, NT, 4>(dst, src, 1, s.d, c0, cpad, n, row); break;
    case 2: stage_tokens<D, NT, 2>(dst, src, 1, s.d, c0, cpad, n, row); break;
    case 1: stage_tokens<D, NT, 1>(dst, src, s.n, s.d, c0, cpad, n, row); break;
    default: stage_dfast<D, NT>(dst, src, s.n, s.d, c0, cpad, n, row); break;
  }
}

// Rows r0 + {g, g+8} (g = lane / 4) of a (tokens x D) tile whose element (r, d) sits at base[r * sn + d * sd], as
// mma A fragments (16 rows x 16 d per slice), zero past n.
template <int D>
__device__ __forceinline__ void load_rows_a(uint32_t (&a)[D / 16][4], const uint16_t* __restrict__ base, int64_t sn,
                                            int64_t sd, int r0, int n, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const int ra = r0 + g, rb = ra + 8;
  auto ld = [&](int r, int d) -> uint32_t { return r < n ? (uint32_t)__ldg(base + (int64_t)r * sn + (int64_t)d * sd) : 0u; };
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int d = ks * 16 + half * 8 + 2 * t;
      a[ks][half * 2 + 0] = ld(ra, d) | (ld(ra, d + 1) << 16);
      a[ks][half * 2 + 1] = ld(rb, d) | (ld(rb, d + 1) << 16);
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// one warp's 16-row tile against staged [d][token] rows: the products every attention kernel is made of

// The warp's transpose buffer epi ([d][16 rows], rows kEpiRow apart) -> rows row0.. of a contiguous (D, N) block
// (token index fastest): lanes 0-15 store 16 tokens of row d, lanes 16-31 of row d + 1. Rows >= n are not stored.
// The caller syncs the warp before (epi written) and after (epi reused).
template <int D>
__device__ __forceinline__ void flush_rows(const uint16_t* __restrict__ epi, uint16_t* __restrict__ ob, int64_t N,
                                           int row0, int n, int lane) {
#pragma unroll
  for (int i = 0; i < D / 2; ++i) {
    const int d = 2 * i + (lane >> 4);
    const int tok = row0 + (lane & 15);
    if (tok < n) ob[(int64_t)d * N + tok] = epi[d * kEpiRow + (lane & 15)];
  }
}

// acc (16 rows x D: rows g, g+8; columns as the mma C fragments) * mul -> rows row0.. of a contiguous (D, N) block,
// through the warp's transpose buffer; rows >= n are not stored.
template <typename T, int D>
__device__ __forceinline__ void store_rows(const float (&acc)[D / 8][4], float mul, uint16_t* __restrict__ epi,
                                           uint16_t* __restrict__ ob, int64_t N, int row0, int n, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      epi[(i * 8 + 2 * t + (e & 1)) * kEpiRow + g + (e >> 1) * 8] = Elem<T>::from_float(acc[i][e] * mul);
  __syncwarp();
  flush_rows<D>(epi, ob, N, row0, n, lane);
  __syncwarp();  // the buffer is reused by this warp's next tile
}

// x (16 x 8 tiles, x NT8) = A (16 rows x D, fragments) B^T, B^T from staged rows [d][token] at tokens tb.. by
// ldmatrix.trans (lane l addresses row d = 32 dq + l): the forward's S = Q K^T.
template <typename T, int D, int NT8>
__device__ __forceinline__ void scores(float (&x)[NT8][4], const uint32_t (&a)[D / 16][4], uint32_t base, int row,
                                       int tb, int lane) {
#pragma unroll
  for (int j = 0; j < NT8; ++j) {
    x[j][0] = x[j][1] = x[j][2] = x[j][3] = 0.f;
#pragma unroll
    for (int dq = 0; dq < D / 32; ++dq) {
      uint32_t b[4];
      ldsm_x4<true>(b, base + (uint32_t)(((dq * 32 + lane) * row + tb + j * 8) * 2));
      mma_16816<T>(x[j], a[dq * 2], b[0], b[1]);
      mma_16816<T>(x[j], a[dq * 2 + 1], b[2], b[3]);
    }
  }
}

// acc (16 rows x D) += X (16 rows x 16*NT16 tokens, the fp32 accumulator tiles of scores(), re-packed as A
// fragments in T) times the staged rows [d][token] at tokens tb.. (B by ldmatrix): the forward's O += P V.
template <typename T, int D, int NT16>
__device__ __forceinline__ void accumulate_rows(float (&acc)[D / 8][4], const float (&x)[2 * NT16][4], uint32_t base,
                                                int row, int tb, int lane) {
#pragma unroll
  for (int kk = 0; kk < NT16; ++kk) {
    uint32_t a[4];
    a[0] = Elem<T>::pack2(x[2 * kk][0], x[2 * kk][1]);
    a[1] = Elem<T>::pack2(x[2 * kk][2], x[2 * kk][3]);
    a[2] = Elem<T>::pack2(x[2 * kk + 1][0], x[2 * kk + 1][1]);
    a[3] = Elem<T>::pack2(x[2 * kk + 1][2], x[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      const int d = (2 * dp + (lane >> 4)) * 8 + (lane & 7);
      const int tok = tb + kk * 16 + ((lane >> 3) & 1) * 8;
      uint32_t b[4];
      ldsm_x4(b, base + (uint32_t)((d * row + tok) * 2));
      mma_16816<T>(acc[2 * dp], a, b[0], b[1]);
      mma_16816<T>(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// host helpers

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// How to stage a (B, heads, D, N) tensor: token vectors of 8/4/2 elements when the token stride is 1 and
// everything a vector touches is aligned; else scalars along the faster of the two strides.
inline int staging_mode(const void* ptr, const Strides4& s, int64_t batch, int64_t heads, int64_t n) {
  if (s.n == 1) {
    const int64_t sb = batch > 1 ? s.b : 0, sh = heads > 1 ? s.h : 0;
    for (int vw : {8, 4, 2}) {
      if (reinterpret_cast<uintptr_t>(ptr) % (2 * vw) == 0 && s.d % vw == 0 && sb % vw == 0 && sh % vw == 0 &&
          n % vw == 0)
        return vw;
    }
    return 1;
  }
  if (s.d == 1) return 0;
  return (s.n <= s.d) ? 1 : 0;
}

// The launch conditions both attention entry points share: cudaSuccess with *seqs = 0 for nothing to do (no launch),
// cudaErrorInvalidValue / cudaErrorNotSupported for what the kernels cannot take (the glue says why first), else
// cudaSuccess with the sequence count (B * heads * area) in *seqs.
inline cudaError_t check_attention_launch(int64_t batch, int64_t heads, int64_t tokens, int64_t area, DType dtype,
                                          const DeviceInfo& dev, int64_t* seqs) {
  *seqs = 0;
  if (area < 1 || tokens % area != 0 || tokens >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  const int64_t s = batch * heads * area;
  if (s == 0 || tokens == 0) return cudaSuccess;
  if (s >= (int64_t(1) << 31) || heads >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  if (dev.cc_major * 10 + dev.cc_minor < 75) return cudaErrorNotSupported;
  if (dtype == DType::kBFloat16 && dev.cc_major < 8) return cudaErrorNotSupported;
  if (dtype == DType::kFloat32) return cudaErrorNotSupported;
  *seqs = s;
  return cudaSuccess;
}

// The (batch, head, area) a CTA of an attention kernel owns: blockIdx.x = (b * heads + h) * area + j.
struct Sequence {
  int b, h, bh;  // bh = b * heads + h
  int64_t t0;    // the area's first token
};
__device__ __forceinline__ Sequence this_sequence(int heads, int area, int n) {
  Sequence s;
  const int j = blockIdx.x % area;
  s.bh = blockIdx.x / area;
  s.h = s.bh % heads;
  s.b = s.bh / heads;
  s.t0 = (int64_t)j * n;
  return s;
}
// The sequence's first element of a (B, heads, D, N) input with element strides st.
__device__ __forceinline__ const uint16_t* seq_base(const uint16_t* base, const Strides4& st, const Sequence& s) {
  return base + s.b * st.b + s.h * st.h + s.t0 * st.n;
}

// What a kernel's launcher remembers per device: the arch of the code the device runs for it, the shared memory it
// was opted in to, and its occupancy per shared-memory size (each query costs microseconds, as much as a batch-1
// launch). One static instance per kernel.
struct LaunchCache {
  std::atomic<int> arch[64];        // 0: not asked yet; else ptxVersion + 2
  std::atomic<int> configured[64];  // dynamic shared memory opted in to
  std::mutex mutex;
  std::unordered_map<int64_t, int> occupancy;  // (device << 32 | smem bytes) -> CTAs per SM
};

// ptxVersion of the code the current device runs for `kernel`, cached per device; -1 where the runtime cannot say
// (0, "undefined" for very old cubins, is taken as unknown too). The value is the virtual arch x10 (compute_80:
// 80), as CUB's PtxVersion reads it.
template <typename K>
inline int code_arch_of(K kernel, LaunchCache& c) {
  int dev_id = 0;
  if (cudaGetDevice(&dev_id) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  if (dev_id < 64 && c.arch[dev_id].load() != 0) return c.arch[dev_id].load() - 2;
  cudaFuncAttributes fa{};
  int arch = -1;
  if (cudaFuncGetAttributes(&fa, kernel) == cudaSuccess)
    arch = fa.ptxVersion;
  else
    (void)cudaGetLastError();
  if (dev_id < 64) c.arch[dev_id].store(arch + 2);
  return arch;
}

// Launch `kernel`(p) on grid (seqs, splits): one CTA row per sequence, its 16-row tiles in groups of `warps` (one
// per warp) split over grid.y so that every SM is busy where there are few sequences, each CTA keeping >= one
// group. Never launches a trap (code compiled for an arch below `required_arch`: it would kill the CUDA context).
template <typename K, typename P>
inline cudaError_t launch_split(K kernel, LaunchCache& c, int required_arch, int threads, int warps, int smem_bytes,
                                int64_t n, int64_t seqs, const DeviceInfo& dev, cudaStream_t stream, const P& p) {
  cudaError_t err;
  const int arch = code_arch_of(kernel, c);
  if (arch > 0 && arch < required_arch) return cudaErrorNotSupported;
  int device = 0;
  if ((err = cudaGetDevice(&device)) != cudaSuccess) return err;
  if (smem_bytes > 48 * 1024 && (device >= 64 || c.configured[device].load() < smem_bytes)) {
    // opt in to the arch's full shared memory, once per device
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_per_block_optin);
    if (err != cudaSuccess) return err;
    if (device < 64) c.configured[device].store(dev.smem_per_block_optin);
  }
  const int64_t key = ((int64_t)device << 32) | (int64_t)smem_bytes;
  int per_sm = 0;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.occupancy.find(key);
    if (it != c.occupancy.end()) per_sm = it->second;
  }
  if (per_sm == 0) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes) != cudaSuccess ||
        per_sm < 1) {
      (void)cudaGetLastError();
      per_sm = 1;
    }
    std::lock_guard<std::mutex> lock(c.mutex);
    c.occupancy[key] = per_sm;
  }
  const int64_t target = (int64_t)per_sm * std::max(dev.sm_count, 1);
  const int64_t groups = (round_up(n, 16) / 16 + warps - 1) / warps;
  int64_t splits = seqs >= target ? 1 : (target + seqs - 1) / seqs;
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, groups, 65535}));
  const dim3 grid((unsigned)seqs, (unsigned)splits);
  return launch_kernel(kernel, grid, dim3(threads), smem_bytes, stream, p);
}

}  // namespace detail
}  // namespace cuda
}  // namespace yolov12_fast
