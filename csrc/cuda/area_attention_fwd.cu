// Area-attention forward on tensor cores (mma.sync m16n8k16, fp16/bf16 in, fp32 accumulate). Torch-free.
//
// One CTA per (batch, head, area) [x a query split, grid.y, when there are few sequences]. YOLOv12's areas are
// short (n = 400 tokens at 640x640, 1600 at 1280), so an area's whole K and V (n x head_dim x 2 bytes each) fit in
// shared memory: the CTA stages them once and its warps then sweep all their query tiles with no further
// barrier ("resident" plan). Areas too long for the arch's shared memory stream K/V through smem in chunks, all
// warps of the CTA moving through the chunks together ("streaming" plan, FlashAttention-2 style).
//
// Layouts. q, k, v are (B, heads, D, N) with arbitrary element strides (views of the interleaved qkv conv
// output: token stride 1, d stride N, head stride 3*D*N; turbo halves; channels_last conv outputs: token
// stride C, d stride 1). K and V go to smem as [d][key] rows (the layout of an NCHW feature map, so the common
// case is a straight vectorised copy), each row chunk_keys + 8 elements long: an odd number of 16-byte units, so
// the 8 rows an ldmatrix phase reads fall in 8 different bank groups (no swizzle needed).
//   S = Q K^T : A = Q (16 queries x 16 d) in registers (loaded from global once per tile),
//               B = K^T fragments by ldmatrix.trans from the [d][key] rows.
//   O = P V   : A = P re-packed from the S accumulators (FA2's register reuse),
//               B = V fragments by ldmatrix (non-transposed) from the same [d][key] rows.
// Online softmax in base 2: scores are multiplied by scale*log2(e) in fp32 (after the fp32-accumulated QK^T,
// so nothing can overflow where fp32 would not), p = exp2(s - m). lse = (m + log2 l) * ln 2.
// Epilogue per warp: O / l (+ residual, in fp32), rounded once to the input dtype, transposed through a small
// per-warp smem buffer and stored contiguous (B, heads, D, N) with 32-byte row segments; lse (B, heads, N) fp32.
//
// Warps: 8 per CTA for D = 32 (<= 128 registers, 2 CTAs/SM by registers), 4 for D = 64; each warp owns 16 query
// rows at a time and steps through the keys 64 at a time (16 at a time for the tail; the partial tail is masked).
// sm_75 has no m16n8k16 for f16: each product is two m16n8k8. bf16 needs sm_80 (the sm_75 bf16 kernel is a trap).
// Shared memory per CTA: 2 * D * (chunk_keys + 8) * 2 bytes (K and V) + warps * D * 24 * 2 bytes (epilogue).
// D = 32: n = 400 resident takes 51 KB + 12 KB (fits sm_75's 64 KB); n = 1600 takes 201 KB + 12 KB (resident on
// sm_90 only; streamed elsewhere in chunks of 128 (sm_75) to 512 (sm_80) keys, sized for 2 CTAs per SM).
// The launch plan (area_attention_fwd_plan) is pure host code, checked per arch by tests/test_cuda_compile.py.
// On the CPU (tests/test_cuda_emu.py) the kernel runs through csrc/cuda/device.h's emulator, whose warp collectives
// stand in for the mma / ldmatrix / shfl wrappers below (their YOLOV12_FAST_CUDA_EMU branches), as sm_80+ does.
#include "device.h"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "kernels.h"

namespace yolov12_fast {
namespace cuda {
namespace detail {  // (not anonymous: helpers an arch does not use would warn "declared but never referenced")

constexpr float kLog2e = 1.4426950408889634f;  // 1 / ln(2)
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kEpiRow = 24;    // per-warp epilogue buffer row: 16 tokens + 8 pad (48 bytes: conflict-free)
constexpr int kKeyBlock = 64;  // keys per online-softmax step (the tail of an area goes 16 keys at a time)

template <int D>
struct Config {
  static_assert(D == 32 || D == 64, "head_dim 32 or 64");
  static constexpr int kWarps = D == 32 ? 8 : 4;
  static constexpr int kThreads = kWarps * 32;
  // Register budget: 8 warps x 2 CTAs at <= 128 registers for D = 32; D = 64 (more accumulators) may use up to
  // 255 so that nothing spills.
  static constexpr int kMinBlocks = D == 32 ? 2 : 1;
};

struct FwdParams {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  const uint16_t* res;  // nullptr: no residual
  uint16_t* out;
  float* lse;
  Strides4 sq, sk, sv, sr;
  int64_t N;         // tokens per image
  int heads, area;
  int n;             // tokens per area
  int chunk_keys;    // keys per smem chunk (streaming); resident: n rounded up to 16
  int smem_row;      // elements per smem row
  int resident;      // 1: stage the whole area once; 0: stream chunks
  int k_mode, v_mode;  // staging: 0 = d-fastest scalar, 1 = token-fastest scalar, 2/4/8 = token vectors
  float scale_log2;  // scale * log2(e)
};

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
// Without .trans lane i receives row i/4, columns 2(i%4), 2(i%4)+1 of each matrix; with .trans it receives
// rows 2(i%4), 2(i%4)+1 of column i/4.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
#ifdef YOLOV12_FAST_CUDA_EMU
  yf_emu::ldmatrix_x4(r, addr, false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#endif
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
#ifdef YOLOV12_FAST_CUDA_EMU
  yf_emu::ldmatrix_x4(r, addr, true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
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
  const int per_row = cpad / VW;
  const int total = D * per_row;
  for (int base = threadIdx.x; base < total; base += NT * U) {
    V val[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * NT;
      val[u] = V{};
      if (idx < total) {
        const int d = idx / per_row;
        const int key = c0 + (idx - d * per_row) * VW;
        if (key < n) val[u] = __ldg(reinterpret_cast<const V*>(src + key * sn + d * sd));
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * NT;
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
  const int total = D * cpad;
  for (int base = threadIdx.x; base < total; base += NT * U) {
    uint16_t val[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * NT;
      const int i = idx / D;
      val[u] = 0;
      if (idx < total && c0 + i < n) val[u] = __ldg(src + (int64_t)(c0 + i) * sn + (int64_t)(idx % D) * sd);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * NT;
      if (idx < total) dst[(idx % D) * row + idx / D] = val[u];
    }
  }
}

template <int D, int NT>
__device__ __noinline__ void stage(uint16_t* dst, const uint16_t* src, const Strides4& s, int mode, int c0,
                                      int cpad, int n, int row) {
  switch (mode) {
    case 8: stage_tokens<D, NT, 8>(dst, src, 1, s.d, c0, cpad, n, row); break;
    case 4: stage_tokens<D, NT, 4>(dst, src, 1, s.d, c0, cpad, n, row); break;
    case 2: stage_tokens<D, NT, 2>(dst, src, 1, s.d, c0, cpad, n, row); break;
    case 1: stage_tokens<D, NT, 1>(dst, src, s.n, s.d, c0, cpad, n, row); break;
    default: stage_dfast<D, NT>(dst, src, s.n, s.d, c0, cpad, n, row); break;
  }
}

// ------------------------------------------------------------------------------------------------------------
// one warp's 16 query rows

template <int D>
struct WarpState {
  uint32_t qa[D / 16][4];  // Q as mma A fragments, one per 16-wide slice of head_dim
  float o[D / 8][4];       // O accumulators, one per 8-wide slice of head_dim
  float m[2];              // running max (log2 domain) of rows g and g+8
  float l[2];              // running sum of this thread's columns (reduced over the quad at the end)
};

// Q rows q0 + {g, g+8} of the area (zero past n), straight from global into A fragments.
template <int D>
__device__ __forceinline__ void load_q(WarpState<D>& st, const uint16_t* __restrict__ qb, const Strides4& s, int q0,
                                       int n, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const int r0 = q0 + g, r1 = r0 + 8;
  auto ld = [&](int r, int d) -> uint32_t {
    return r < n ? (uint32_t)__ldg(qb + (int64_t)r * s.n + (int64_t)d * s.d) : 0u;
  };
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int d = ks * 16 + half * 8 + 2 * t;
      st.qa[ks][half * 2 + 0] = ld(r0, d) | (ld(r0, d + 1) << 16);
      st.qa[ks][half * 2 + 1] = ld(r1, d) | (ld(r1, d + 1) << 16);
    }
  }
#pragma unroll
  for (int i = 0; i < D / 8; ++i) st.o[i][0] = st.o[i][1] = st.o[i][2] = st.o[i][3] = 0.f;
  st.m[0] = st.m[1] = -INFINITY;
  st.l[0] = st.l[1] = 0.f;
}

// Keys [kb, kb + 16*NT16) of the smem chunk; keys >= kvalid are masked (they are zero-filled in smem).
template <typename T, int D, int NT16>
__device__ __forceinline__ void attend_block(WarpState<D>& st, uint32_t ks_base, uint32_t vs_base, int row, int kb,
                                             int kvalid, float scale_log2, int lane) {
  constexpr int NT8 = NT16 * 2;
  const int t = lane & 3;

  // S = Q K^T: per 8-key tile, one ldmatrix.trans.x4 brings K^T fragments for 32 d (lane l addresses row d = l).
  float s[NT8][4];
#pragma unroll
  for (int j = 0; j < NT8; ++j) {
    s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int dq = 0; dq < D / 32; ++dq) {
      uint32_t b[4];
      ldsm_x4_trans(b, ks_base + (uint32_t)(((dq * 32 + lane) * row + kb + j * 8) * 2));
      mma_16816<T>(s[j], st.qa[dq * 2], b[0], b[1]);
      mma_16816<T>(s[j], st.qa[dq * 2 + 1], b[2], b[3]);
    }
  }

  // online softmax (base 2)
  const bool need_mask = kb + NT8 * 8 > kvalid;
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < NT8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = s[j][e] * scale_log2;
      if (need_mask && kb + j * 8 + 2 * t + (e & 1) >= kvalid) x = -INFINITY;
      s[j][e] = x;
      mx[e >> 1] = fmaxf(mx[e >> 1], x);
    }
  }
  // A row whose scores so far are all -inf (fp32 overflow of finite inputs, -inf inputs) keeps m = -inf: its
  // exponents subtract the lowest finite float instead (mu), or 2^(-inf - -inf) would make NaN of keys that have
  // probability 0 (-inf - mu is still -inf).
  float alpha[2], mu[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float m_new = fmaxf(st.m[r], mx[r]);
    mu[r] = fmaxf(m_new, -FLT_MAX);
    alpha[r] = fast_exp2(st.m[r] - mu[r]);  // 0 while m = -inf (the first block, or all -inf so far)
    st.m[r] = m_new;
  }
  float sum[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < NT8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float p = fast_exp2(s[j][e] - mu[e >> 1]);
      s[j][e] = p;
      sum[e >> 1] += p;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) st.l[r] = st.l[r] * alpha[r] + sum[r];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
    st.o[i][0] *= alpha[0];
    st.o[i][1] *= alpha[0];
    st.o[i][2] *= alpha[1];
    st.o[i][3] *= alpha[1];
  }

  // O += P V: P re-packed as A fragments (two 8-key accumulator tiles = one 16-key A); one ldmatrix.x4 brings V
  // fragments for 16 keys x 16 d (matrices: d tile 2dp / keys 0-7, 2dp / 8-15, 2dp+1 / 0-7, 2dp+1 / 8-15).
#pragma unroll
  for (int kk = 0; kk < NT16; ++kk) {
    uint32_t a[4];
    a[0] = Elem<T>::pack2(s[2 * kk][0], s[2 * kk][1]);
    a[1] = Elem<T>::pack2(s[2 * kk][2], s[2 * kk][3]);
    a[2] = Elem<T>::pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = Elem<T>::pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      const int d = (2 * dp + (lane >> 4)) * 8 + (lane & 7);
      const int key = kb + kk * 16 + ((lane >> 3) & 1) * 8;
      uint32_t b[4];
      ldsm_x4(b, vs_base + (uint32_t)((d * row + key) * 2));
      mma_16816<T>(st.o[2 * dp], a, b[0], b[1]);
      mma_16816<T>(st.o[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// All keys [0, kend) of the smem chunk (kend a multiple of 16); keys >= kvalid masked.
template <typename T, int D>
__device__ __forceinline__ void attend_chunk(WarpState<D>& st, const uint16_t* Ks, const uint16_t* Vs, int row,
                                             int kend, int kvalid, float scale_log2, int lane) {
  const uint32_t ks_base = smem_addr(Ks), vs_base = smem_addr(Vs);
  int kb = 0;
  for (; kb + kKeyBlock <= kend; kb += kKeyBlock)
    attend_block<T, D, kKeyBlock / 16>(st, ks_base, vs_base, row, kb, kvalid, scale_log2, lane);
  for (; kb < kend; kb += 16) attend_block<T, D, 1>(st, ks_base, vs_base, row, kb, kvalid, scale_log2, lane);
}

// O / l (+ residual) -> out rows q0..q0+15 of the area (contiguous (B, heads, D, N)), lse.
template <typename T, int D>
__device__ __forceinline__ void epilogue(const WarpState<D>& st, uint16_t* __restrict__ epi,
                                         const uint16_t* __restrict__ rb, const Strides4& sr,
                                         uint16_t* __restrict__ ob, float* __restrict__ lb, int64_t N, int q0,
                                         int n, int lane) {
  const int g = lane >> 2, t = lane & 3;
  float l[2], inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = st.l[r];
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = 1.f / l[r];
  }
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int d = i * 8 + 2 * t + (e & 1);
      const int rl = g + (e >> 1) * 8;  // row within the tile
      float val = st.o[i][e] * inv[e >> 1];
      if (rb != nullptr && q0 + rl < n)
        val += Elem<T>::to_float(__ldg(rb + (int64_t)(q0 + rl) * sr.n + (int64_t)d * sr.d));
      epi[d * kEpiRow + rl] = Elem<T>::from_float(val);
    }
  }
  __syncwarp();
  // lanes 0-15 store 16 tokens of row d, lanes 16-31 of row d + 1
#pragma unroll
  for (int i = 0; i < D / 2; ++i) {
    const int d = 2 * i + (lane >> 4);
    const int tok = q0 + (lane & 15);
    if (tok < n) ob[(int64_t)d * N + tok] = epi[d * kEpiRow + (lane & 15)];
  }
  if (t == 0) {
    if (q0 + g < n) lb[q0 + g] = (st.m[0] + __log2f(l[0])) * kLn2;
    if (q0 + g + 8 < n) lb[q0 + g + 8] = (st.m[1] + __log2f(l[1])) * kLn2;
  }
  __syncwarp();  // the buffer is reused by this warp's next tile
}

// ------------------------------------------------------------------------------------------------------------
// the kernel

template <typename T, int D>
__global__ void __launch_bounds__(Config<D>::kThreads, Config<D>::kMinBlocks)
    area_attention_fwd_kernel(const FwdParams p) {
  if constexpr (!arch_has_mma<T>()) {
    __trap();
  } else {
    constexpr int NW = Config<D>::kWarps;
    constexpr int NT = Config<D>::kThreads;
    YF_DYNAMIC_SMEM(unsigned char, smem_raw);
    const int row = p.smem_row;
    uint16_t* Ks = reinterpret_cast<uint16_t*>(smem_raw);
    uint16_t* Vs = Ks + D * row;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint16_t* epi = Vs + D * row + warp * (D * kEpiRow);

    // which sequence: blockIdx.x = (b * heads + h) * area + j
    const int j = blockIdx.x % p.area;
    const int bh = blockIdx.x / p.area;
    const int h = bh % p.heads, b = bh / p.heads;
    const int64_t t0 = (int64_t)j * p.n;  // the area's first token; *g below: this sequence's global bases
    const uint16_t* qg = p.q + b * p.sq.b + h * p.sq.h + t0 * p.sq.n;
    const uint16_t* kg = p.k + b * p.sk.b + h * p.sk.h + t0 * p.sk.n;
    const uint16_t* vg = p.v + b * p.sv.b + h * p.sv.h + t0 * p.sv.n;
    const uint16_t* rg = p.res ? p.res + b * p.sr.b + h * p.sr.h + t0 * p.sr.n : nullptr;
    uint16_t* og = p.out + (int64_t)bh * D * p.N + t0;
    float* lg = p.lse + (int64_t)bh * p.N + t0;

    const int n = p.n;
    const int q_tiles = (int)(((int64_t)n + 15) / 16);  // 64-bit: n may come within 15 of INT_MAX
    const int groups = (q_tiles + NW - 1) / NW;  // NW query tiles (one per warp) per group
    const int chunks = p.resident ? 1 : (int)(((int64_t)n + p.chunk_keys - 1) / p.chunk_keys);

    // Resident: K/V are staged once (first pass below) and the warps then run with no further barrier.
    // Streaming: for each query group the CTA moves through the K/V chunks together.
    bool staged = false;
    for (int grp = blockIdx.y; grp < groups; grp += gridDim.y) {
      const int tile = grp * NW + warp;
      const bool active = tile < q_tiles;  // idle warps still help stage
      WarpState<D> st;
      if (active) load_q<D>(st, qg, p.sq, tile * 16, n, lane);
      for (int c = 0; c < chunks; ++c) {
        const int c0 = c * p.chunk_keys;
        const int cvalid = min(p.chunk_keys, n - c0);
        const int cend = (cvalid + 15) & ~15;
        if (!p.resident || !staged) {  // CTA-uniform
          __syncthreads();  // every warp is done with the previous chunk
          stage<D, NT>(Ks, kg, p.sk, p.k_mode, c0, cend, n, row);
          stage<D, NT>(Vs, vg, p.sv, p.v_mode, c0, cend, n, row);
          __syncthreads();
          staged = true;
        }
        if (active) attend_chunk<T, D>(st, Ks, Vs, row, cend, cvalid, p.scale_log2, lane);
      }
      if (active) epilogue<T, D>(st, epi, rg, p.sr, og, lg, p.N, tile * 16, n, lane);
    }
  }
}

}  // namespace detail

// ------------------------------------------------------------------------------------------------------------
// host side

namespace {
using namespace detail;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// How to stage a (B, heads, D, N) tensor: token vectors of 8/4/2 elements when the token stride is 1 and
// everything a vector touches is aligned; else scalars along the faster of the two strides.
int staging_mode(const void* ptr, const Strides4& s, int64_t batch, int64_t heads, int64_t n) {
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

// ptxVersion of the code the current device runs for area_attention_fwd_kernel<T, D>, cached per device (the
// attribute query loads the module: microseconds, as much as a batch-1 launch); -1 where the runtime cannot say
// (0, "undefined" for very old cubins, is taken as unknown too). The value is the virtual arch x10 (compute_80:
// 80), as CUB's PtxVersion reads it.
template <typename T, int D>
int code_arch() {
  static std::atomic<int> cached[64];  // 0: not asked yet; else the answer + 2
  int dev_id = 0;
  if (cudaGetDevice(&dev_id) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  if (dev_id < 64 && cached[dev_id].load() != 0) return cached[dev_id].load() - 2;
  cudaFuncAttributes fa{};
  int arch = -1;
  if (cudaFuncGetAttributes(&fa, area_attention_fwd_kernel<T, D>) == cudaSuccess)
    arch = fa.ptxVersion;
  else
    (void)cudaGetLastError();
  if (dev_id < 64) cached[dev_id].store(arch + 2);
  return arch;
}

template <typename T, int D>
cudaError_t launch(const FwdParams& p, const AreaAttnFwdPlan& plan, int64_t seqs, const DeviceInfo& dev,
                   cudaStream_t stream) {
  auto kernel = area_attention_fwd_kernel<T, D>;
  constexpr int threads = Config<D>::kThreads;
  cudaError_t err;
  // never launch a trap (compiled for an arch without the kernel's mma): it would kill the CUDA context
  const int arch = code_arch<T, D>();
  const DType dt = std::is_same<T, __nv_bfloat16>::value ? DType::kBFloat16 : DType::kFloat16;
  if (arch > 0 && arch < area_attention_fwd_required_arch(dt)) return cudaErrorNotSupported;
  if (plan.smem_bytes > 48 * 1024) {
    // opt in to the arch's full shared memory, once per device
    static std::atomic<int> configured[64];
    int dev_id = 0;
    if ((err = cudaGetDevice(&dev_id)) != cudaSuccess) return err;
    if (dev_id >= 64 || configured[dev_id].load() < plan.smem_bytes) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_per_block_optin);
      if (err != cudaSuccess) return err;
      if (dev_id < 64) configured[dev_id].store(dev.smem_per_block_optin);
    }
  }
  // query split: enough CTAs for every SM to be busy, each CTA keeping >= one query group. The occupancy query
  // costs microseconds, as much as a batch-1 launch: cached per (device, shared memory bytes)
  static std::mutex occupancy_mutex;
  static std::unordered_map<int64_t, int> occupancy;
  int device = 0;
  if ((err = cudaGetDevice(&device)) != cudaSuccess) return err;
  const int64_t key = ((int64_t)device << 32) | (int64_t)plan.smem_bytes;
  int per_sm = 0;
  {
    std::lock_guard<std::mutex> lock(occupancy_mutex);
    auto it = occupancy.find(key);
    if (it != occupancy.end()) per_sm = it->second;
  }
  if (per_sm == 0) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, plan.smem_bytes) != cudaSuccess ||
        per_sm < 1) {
      (void)cudaGetLastError();
      per_sm = 1;
    }
    std::lock_guard<std::mutex> lock(occupancy_mutex);
    occupancy[key] = per_sm;
  }
  const int64_t target = (int64_t)per_sm * std::max(dev.sm_count, 1);
  const int64_t groups = (round_up(p.n, 16) / 16 + Config<D>::kWarps - 1) / Config<D>::kWarps;
  int64_t splits = seqs >= target ? 1 : (target + seqs - 1) / seqs;
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, groups, 65535}));
  const dim3 grid((unsigned)seqs, (unsigned)splits);
  return launch_kernel(kernel, grid, dim3(threads), plan.smem_bytes, stream, p);
}

}  // namespace

bool area_attention_fwd_supports_head_dim(int64_t head_dim) { return head_dim == 32 || head_dim == 64; }

int area_attention_fwd_code_arch(DType dtype, int64_t head_dim) {
  if (dtype == DType::kFloat16) return head_dim == 32 ? code_arch<__half, 32>() : code_arch<__half, 64>();
  if (dtype == DType::kBFloat16)
    return head_dim == 32 ? code_arch<__nv_bfloat16, 32>() : code_arch<__nv_bfloat16, 64>();
  return -1;
}

AreaAttnFwdPlan area_attention_fwd_plan(int64_t n, int64_t head_dim, const DeviceInfo& dev) {
  AreaAttnFwdPlan plan{};
  if (!area_attention_fwd_supports_head_dim(head_dim) || n < 1) return plan;
  plan.warps = head_dim == 32 ? Config<32>::kWarps : Config<64>::kWarps;
  const int64_t epi = (int64_t)plan.warps * head_dim * kEpiRow * 2;
  const int64_t per_key = 2 * head_dim * 2;  // one key of K and of V, 2-byte elements
  const int64_t n16 = round_up(n, 16);
  const int64_t resident = per_key * (n16 + 8) + epi;
  if (resident <= dev.smem_per_block_optin) {
    plan.resident = true;
    plan.chunk_keys = (int)n16;
  } else {
    // Streaming: chunks of a multiple of 64 keys sized so that two CTAs share an SM (one computes while the
    // other stages; sm_80+ reserves 1 KB of shared memory per CTA), or whatever fits one CTA.
    int64_t budget = std::min<int64_t>(dev.smem_per_block_optin, dev.smem_per_sm / 2 - 1024);
    int64_t chunk = ((budget - epi) / per_key - 8) / kKeyBlock * kKeyBlock;
    if (chunk < kKeyBlock) chunk = ((dev.smem_per_block_optin - epi) / per_key - 8) / kKeyBlock * kKeyBlock;
    if (chunk < kKeyBlock) return plan;
    plan.resident = false;
    plan.chunk_keys = (int)std::min<int64_t>(chunk, n16);
  }
  plan.smem_row = plan.chunk_keys + 8;
  plan.smem_bytes = (int)(per_key * plan.smem_row + epi);
  plan.supported = true;
  return plan;
}

cudaError_t area_attention_fwd(const AreaAttnFwdArgs& a, const DeviceInfo& dev, cudaStream_t stream) {
  if (a.area < 1 || a.tokens % a.area != 0 || a.tokens >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  const int64_t seqs = a.batch * a.heads * a.area;
  if (seqs == 0 || a.tokens == 0) return cudaSuccess;
  if (seqs >= (int64_t(1) << 31) || a.heads >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  if (dev.cc_major * 10 + dev.cc_minor < 75) return cudaErrorNotSupported;
  if (a.dtype == DType::kBFloat16 && dev.cc_major < 8) return cudaErrorNotSupported;
  if (a.dtype == DType::kFloat32) return cudaErrorNotSupported;
  const int64_t n = a.tokens / a.area;
  const AreaAttnFwdPlan plan = area_attention_fwd_plan(n, a.head_dim, dev);
  if (!plan.supported) return cudaErrorNotSupported;

  FwdParams p{};
  p.q = static_cast<const uint16_t*>(a.q);
  p.k = static_cast<const uint16_t*>(a.k);
  p.v = static_cast<const uint16_t*>(a.v);
  p.res = static_cast<const uint16_t*>(a.residual);
  p.out = static_cast<uint16_t*>(a.out);
  p.lse = a.lse;
  p.sq = a.sq;
  p.sk = a.sk;
  p.sv = a.sv;
  p.sr = a.sr;
  p.N = a.tokens;
  p.heads = (int)a.heads;
  p.area = (int)a.area;
  p.n = (int)n;
  p.chunk_keys = plan.chunk_keys;
  p.smem_row = plan.smem_row;
  p.resident = plan.resident ? 1 : 0;
  p.k_mode = staging_mode(a.k, a.sk, a.batch, a.heads, n);
  p.v_mode = staging_mode(a.v, a.sv, a.batch, a.heads, n);
  p.scale_log2 = a.scale * kLog2e;

  const bool half = a.dtype == DType::kFloat16;
  if (a.head_dim == 32)
    return half ? launch<__half, 32>(p, plan, seqs, dev, stream) : launch<__nv_bfloat16, 32>(p, plan, seqs, dev, stream);
  return half ? launch<__half, 64>(p, plan, seqs, dev, stream) : launch<__nv_bfloat16, 64>(p, plan, seqs, dev, stream);
}

}  // namespace cuda
}  // namespace yolov12_fast
