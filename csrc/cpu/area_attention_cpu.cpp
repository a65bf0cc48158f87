// CPU kernels of yolov12_fast::area_attention_fwd_cxx / area_attention_bwd_cxx (schemas in csrc/ops.cpp).
//
// Layout: q, k, v are (B, heads, D, N) with arbitrary strides (views of the qkv conv output are read in place,
// through 64-bit offsets); area j owns tokens [j*n, (j+1)*n), n = N / area. Outputs are contiguous.
//
// Algorithm (forward), per (batch, head, area) and per block of BQ = NV vectors of queries: NV = 3 in the 4- and
// 8-lane builds (12 or 24 queries: 16 registers hold the 4 x 3 tile), 4 or 5 with AVX-512 (64 or 80 queries in 32
// registers, whichever pads the area's queries less: 400 = 5 x 80, 300 = 5 x 64):
//   1. pack the area's K and V once into small per-thread panels (fp32, dtype conversion happens here), and
//      the query block as Qp[d][t] pre-multiplied by scale * log2(e), so scores are in the log2 domain;
//   2. for each key chunk of at most KC_MAX keys: S^T[s][t] = K[:, s] . Qp[:, t] and its column max
//      (register tile: 4 keys x NV vectors), online softmax down each column t (running max m and sum l;
//      rescaling only happens when there is more than one chunk), then O[d][t] += V[d, s] P^T[s][t]
//      (register tile: 4 head-dim rows x NV vectors);
//   3. out[d][t] = O[d][t] / l[t] (+ residual), lse[t] = (m[t] + log2 l[t]) * ln 2.
// Scores are kept transposed (keys x queries) so that every step, softmax included, is vectorised along the
// query index and the output row out[d][t0:t0+BQ] is written contiguously. No n x n buffer exists: the
// per-thread scratch is K, V (n x D each) plus KC_MAX x BQ scores.
//
// Backward (flash-attention style, recomputing P from lse), per (batch, head, area) in one task so that dK
// and dV accumulate without atomics: for each query block, S and dP = V^T dO are recomputed with the
// forward's score tile, dS = P (dP - Delta), then dV += P dO^T, dK += dS Q^T (4 keys, 8 with AVX-512, x 2
// vectors of head dims, contraction over the query block) and dQ = dS^T K (the forward's P V tile). The query
// blocks are the forward's.
//
// SIMD (common.h): the compute cores are written once with GCC vector extensions and compiled three times:
// 16 x fp32 for AVX-512 (the backward from head_dim 32 on), 8 x fp32 for AVX2+FMA and 4 x fp32 as baseline code
// (SSE2 on x86-64, NEON on aarch64), whose 16 registers hold the same 4 x 3 tile. One 8-wide build for both would
// spill the tile out of SSE's 16 xmm registers (measured 25x slower than AVX2). Only the cores are ISA-specific:
// packing, dtype conversion and the epilogues are plain baseline code.
//
// Threads: the forward splits the flat list of (sequence, query block) pairs into one contiguous range per
// thread, so the threads get equal work even where there are fewer sequences than threads (P5: area 1, few
// heads); a thread packs a sequence's K and V once per range it touches. Every output element is computed by
// one thread in one order, independent of the thread count (results are bitwise equal across thread counts).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "common.h"

#ifdef Y12_HAVE_AVX2_BUILD
#include <immintrin.h>
#endif

namespace yolov12_fast {

namespace cpu_isa {
bool use_avx2() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  static const bool ok = [] {
    const char* cap = std::getenv("YOLOV12_FAST_CPU_CAPABILITY");
    if (cap != nullptr && std::strcmp(cap, "default") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

// the forward's build (the backward at head_dim 16 stays 8-wide on AVX-512 CPUs)
const char* attention_isa() { return use_avx512() ? "avx512" : use_avx2() ? "avx2" : "baseline"; }

bool use_avx512() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  static const bool ok = [] {
    const char* cap = std::getenv("YOLOV12_FAST_CPU_CAPABILITY");
    if (cap != nullptr && (std::strcmp(cap, "default") == 0 || std::strcmp(cap, "avx2") == 0)) return false;
    return use_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
  }();
  return ok;
#else
  return false;
#endif
}
}  // namespace cpu_isa

namespace {

using namespace simd;

// 2^x for x <= 0 (scores minus their running max); |relative error| < 2e-8 on the polynomial. This is the
// portable form (4-lane baseline build); the AVX2 and AVX-512 builds have their own below, the same polynomial with
// fewer instructions (test_softmax_probabilities_are_accurate checks each build's). Inputs below
// -125 give exactly 0 (a denormal or 2^-125 would be invisible next to a sum >= 1, but -inf must give 0: a key
// scored -inf has probability 0 and must contribute 0 * x = NaN, not 2^-125 * inf, where x is infinite, as in torch).
// The comparisons are false for NaN, which therefore passes through (NaN inputs give NaN, as in torch).
// 2^f on [-0.5, 0.5], degree-6 fit (relative error 1.6e-8), highest power first; every build evaluates it by Horner.
constexpr float kExp2Poly[7] = {1.5337585e-4f, 1.3399870e-3f, 9.6185198e-3f, 5.5503290e-2f,
                                2.4022646e-1f, 6.9314718e-1f, 1.0f};

template <class V> Y12_INLINE V vexp2(V x) {
  using VI = typename IntVec<V>::type;
  const auto underflow = x < vset<V>(-125.f);
  x = underflow ? vset<V>(-125.f) : x;
  x = x > vset<V>(127.f) ? vset<V>(127.f) : x;
  const V magic = vset<V>(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
  const V t = x + magic;
  const V f = x - (t - magic);          // in [-0.5, 0.5]
  V p = vset<V>(kExp2Poly[0]);
#pragma GCC unroll 6
  for (int i = 1; i < 7; ++i) p = p * f + vset<V>(kExp2Poly[i]);
  const VI e = ((VI)t - (VI)magic) << 23;  // the integer part, moved into the exponent field
  return underflow ? V{} : (V)((VI)p + e);
}

#ifdef Y12_HAVE_AVX2_BUILD
// Intrinsic forms of vexp2 for the AVX2 and AVX-512 builds. The vector-extension form above compiles to 20
// instructions per vector there (selects through mask registers, integer exponent arithmetic); the exponentials
// were 22 % of the AVX-512 forward (P4 h2, 1 thread). These functions carry their ISA's target attribute, so they
// cannot be always_inline into the ISA-neutral templates: the per-ISA wrappers of the cores below are `flatten`,
// which inlines everything into them instead (measured: the forward 1.23x faster with the AVX-512 form, 1.10x
// with the AVX2 one).

// AVX2: rounding by vroundps, the underflow to exactly 0 by one AND with the compare mask (NaN inputs fail the
// compare as unordered and pass through).
Y12_AVX2 inline vf8 vexp2(vf8 xv) {
  const __m256 x = _mm256_min_ps(_mm256_set1_ps(127.f), (__m256)xv);  // (min returns its second operand, a NaN x)
  const __m256 keep = _mm256_cmp_ps((__m256)xv, _mm256_set1_ps(-125.f), _CMP_NLT_UQ);
  const __m256 r = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, r);
  __m256 p = _mm256_set1_ps(kExp2Poly[0]);
#pragma GCC unroll 6
  for (int i = 1; i < 7; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Poly[i]));
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(r), 23);
  const __m256 y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  return (vf8)_mm256_and_ps(y, keep);
}

// AVX-512: the rounding (vrndscaleps), the exponent insertion (vscalefps, which needs no clamp against overflow:
// 2^128 and up give +inf) and the underflow to exactly 0 (zero-masking) take one instruction each: 11 vector
// operations. NaN inputs fail the compare and pass through as NaN.
Y12_AVX512 inline vf16 vexp2(vf16 xv) {
  const __m512 x = (__m512)xv;
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.f), _CMP_NLT_UQ);  // not (x < -125): NaN kept
  // (the merge-masked form: the plain one reads an undefined register, which GCC 12 warns of)
  const __m512 r = _mm512_mask_roundscale_ps(x, 0xFFFF, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, r);  // in [-0.5, 0.5]
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
#pragma GCC unroll 6
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  return (vf16)_mm512_maskz_scalef_ps(keep, p, r);
}
#endif

constexpr float kLog2e = 1.4426950408889634f;  // 1 / ln 2
constexpr float kLn2 = 0.6931471805599453f;

// ---------------------------------------------------------------------------------------------------------
// tiling

constexpr int MR = 4;         // keys (or head-dim rows) per register tile
constexpr int KC_MAX = 512;   // keys per online-softmax chunk (one chunk for n <= 512: no rescaling at all)
constexpr int SB = 64;        // keys per step of the P V product (64 x BQ probabilities: 20 KB at most, in L1)
template <class V, int NV = 3> constexpr int kBQ = NV * kLanes<V>;  // queries per block: NV vectors

Y12_INLINE int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// A strided (B, heads, D, N) input, read as fp32.
template <typename T>
struct View {
  const T* p = nullptr;
  int64_t sb = 0, sh = 0, sd = 0, st = 0;
  View() = default;
  explicit View(const at::Tensor& x)
      : p(x.const_data_ptr<T>()), sb(x.stride(0)), sh(x.stride(1)), sd(x.stride(2)), st(x.stride(3)) {}
  const T* at(int64_t b, int64_t h) const { return p + b * sb + h * sh; }
};

// dst[at(d, s)] = src[d, s] as fp32 for the n tokens of an area (`src` points at its token 0), everything else of
// the npad x D panel buffer zero; reads along the smaller of the two strides.
template <typename T, typename At>
Y12_INLINE void pack_panels(const T* src, int64_t sd, int64_t st, int D, int64_t n, int64_t npad, float* dst, At at) {
  std::memset(dst, 0, sizeof(float) * npad * D);
  if (st <= sd) {
    for (int d = 0; d < D; ++d)
      for (int64_t s = 0; s < n; ++s) dst[at(d, s)] = static_cast<float>(src[d * sd + s * st]);
  } else {
    for (int64_t s = 0; s < n; ++s)
      for (int d = 0; d < D; ++d) dst[at(d, s)] = static_cast<float>(src[d * sd + s * st]);
  }
}

// Key-major panels for the score tile: P[s / 4][d][s % 4], rows s >= n zero.
template <typename T>
void pack_key_panels(const T* src, int64_t sd, int64_t st, int D, int64_t n, int64_t npad, float* dst) {
  pack_panels(src, sd, st, D, n, npad, dst, [D](int d, int64_t s) { return (s / MR) * D * MR + d * MR + s % MR; });
}

// Row-major panels for the value tile: P[d / 4][s][d % 4] (npad rows per panel, rows s >= n zero).
template <typename T>
void pack_row_panels(const T* src, int64_t sd, int64_t st, int D, int64_t n, int64_t npad, float* dst) {
  pack_panels(src, sd, st, D, n, npad, dst, [npad](int d, int64_t s) { return (d / MR) * npad * MR + s * MR + d % MR; });
}

// A query block as [d][t] (t < bq, columns t >= valid zero), times `mul`.
template <typename T>
void pack_block_dt(const T* src, int64_t sd, int64_t st, int D, int bq, int valid, float mul, float* dst) {
  for (int d = 0; d < D; ++d) {
    float* row = dst + d * bq;
    for (int t = 0; t < valid; ++t) row[t] = static_cast<float>(src[d * sd + t * st]) * mul;
    for (int t = valid; t < bq; ++t) row[t] = 0.f;
  }
}

// The 4 x 3-vector register tile shared by the score and P V products: c[i][j] += sum_{k < K} a[k][i] * b[k][j]
// with a [K][MR] (4 broadcasts per step) and b [K][BQ] (3 vectors per step); 12 accumulators, 12 FMAs per 3
// loads and 4 broadcasts.
template <class V, int NV, class Int>
Y12_INLINE void mac_tile(V (&c)[MR][NV], const float* __restrict a, const float* __restrict b, Int K) {
  constexpr int W = kLanes<V>, BQ = kBQ<V, NV>;
#pragma GCC unroll 2
  for (Int k = 0; k < K; ++k) {
    V bv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) bv[j] = vload<V>(b + k * BQ + j * W);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const V x = vset<V>(a[k * MR + i]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) c[i][j] += x * bv[j];
    }
  }
}

template <class V, int NV>
Y12_INLINE void store_tile(const V (&c)[MR][NV], float* __restrict out) {
  constexpr int W = kLanes<V>, BQ = kBQ<V, NV>;
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) vstore(out + i * BQ + j * W, c[i][j]);
}

// out[i][t] = sum_d panel[d][i] * blk[d][t] for the 4 keys of one panel: 4 x BQ outputs in 12 registers.
// With a `colmax`, also colmax[t] = max(colmax[t], out[i][t]) over the first `nvalid` keys (the others pad).
template <int D, class V, int NV = 3>
Y12_INLINE void tile_panel_x_block(const float* __restrict blk, const float* __restrict panel, float* __restrict out,
                                   V* colmax = nullptr, int nvalid = MR) {
  V c[MR][NV] = {};
  mac_tile<V, NV>(c, panel, blk, D);
  store_tile<V, NV>(c, out);
  if (colmax != nullptr) {
    if (nvalid == MR) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) colmax[j] = vmax(colmax[j], vmax(vmax(c[0][j], c[1][j]), vmax(c[2][j], c[3][j])));
    } else {
      for (int i = 0; i < nvalid; ++i)
        for (int j = 0; j < NV; ++j) colmax[j] = vmax(colmax[j], c[i][j]);
    }
  }
}

// acc[i][t] (+)= sum_{s < ns} rows[s][i] * P[s][t] for 4 rows (head-dim rows of V, or of K in the backward).
// Blocked summation: the block's sum starts from zero and is added to acc once, so a long reduction (1600 keys
// at 1280x1280) accumulates rounding like a sum of n / SB block sums, not like one n-term running sum.
template <bool ACCUMULATE, class V, int NV = 3>
Y12_INLINE void tile_rows_x_p(const float* __restrict P, int64_t ns, const float* __restrict rows, float* __restrict acc) {
  constexpr int W = kLanes<V>, BQ = kBQ<V, NV>;
  V c[MR][NV] = {};
  mac_tile<V, NV>(c, rows, P, ns);
  if (ACCUMULATE) {
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) c[i][j] += vload<V>(acc + i * BQ + j * W);
  }
  store_tile<V, NV>(c, acc);
}

// acc[s][d0:d0+2W] += sum_t A[s][t] * Bt[t][d0:d0+2W] for the KR rows s of A (a [keys][BQ] block, BQ = NV vectors),
// Bt [BQ][D]: KR x 2 accumulators (8 with KR = 4 in 16 registers; 16 with KR = 8 in AVX-512's 32, 10 loads per
// 16 FMAs instead of 6 per 8).
template <int D, class V, int NV = 3, int KR = MR>
Y12_INLINE void tile_keys_x_blockT(const float* __restrict Ab, const float* __restrict Bt, float* __restrict acc) {
  constexpr int W = kLanes<V>, BQ = kBQ<V, NV>;
#pragma GCC unroll 1
  for (int d0 = 0; d0 < D; d0 += 2 * W) {
    V c[KR][2];
#pragma GCC unroll 8
    for (int i = 0; i < KR; ++i)
#pragma GCC unroll 2
      for (int j = 0; j < 2; ++j) c[i][j] = vload<V>(acc + i * D + d0 + j * W);
#pragma GCC unroll 2
    for (int t = 0; t < BQ; ++t) {
      const V b0 = vload<V>(Bt + t * D + d0), b1 = vload<V>(Bt + t * D + d0 + W);
#pragma GCC unroll 8
      for (int i = 0; i < KR; ++i) {
        const V a = vset<V>(Ab[i * BQ + t]);
        c[i][0] += a * b0;
        c[i][1] += a * b1;
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < KR; ++i)
#pragma GCC unroll 2
      for (int j = 0; j < 2; ++j) vstore(acc + i * D + d0 + j * W, c[i][j]);
  }
}

// Chunking of an area's n keys: chunks of kc keys (a multiple of the panel height), at most KC_MAX.
struct Geometry {
  int64_t n, npad, kc;
  // the backward's query columns holding real queries (the last block of an area may be partial); the others are
  // zero padding, whose scores against a key holding +-Inf are NaN (0 * Inf) and must not reach dK and dV
  int64_t valid_cols = INT64_MAX;
  explicit Geometry(int64_t n_) : n(n_), npad(round_up(n_, MR)) {
    const int64_t nchunks = (n + KC_MAX - 1) / KC_MAX;
    kc = round_up((n + nchunks - 1) / nchunks, MR);
  }
};

// ---------------------------------------------------------------------------------------------------------
// compute cores on packed fp32 data (the only ISA-specific code)

// One query block. Kp: key panels of the area, Vp: row panels of V, Qp: [D][BQ] scaled by scale*log2(e).
// On return O[d][t] = softmax(.) V (normalised) and lse[t] (natural log), for all BQ columns.
template <int D, class V, int NV>
Y12_INLINE void fwd_block(const Geometry& G, const float* Kp, const float* Vp, const float* Qp, float* St, float* O,
                          float* lse) {
  constexpr int W = kLanes<V>, BQ = kBQ<V, NV>;
  V m[NV], l[NV];
  for (int64_t c0 = 0; c0 < G.n; c0 += G.kc) {
    const int64_t ns = std::min(G.kc, G.n - c0);
    // S^T = K^T Q for the chunk, 4 keys at a time, and its column max (padding keys of the last panel are
    // computed but take no part)
    V cm[NV];
    for (int j = 0; j < NV; ++j) cm[j] = vset<V>(-INFINITY);
    for (int64_t s = 0; s < ns; s += MR)
      tile_panel_x_block<D, V, NV>(Qp, Kp + (c0 + s) * D, St + s * BQ, cm,
                                   static_cast<int>(std::min<int64_t>(MR, ns - s)));
    // rescale what earlier chunks accumulated. A query whose scores so far are all -inf (fp32 overflow of finite
    // inputs, -inf inputs) keeps m = -inf: its exponents subtract 0 instead (mu), or 2^(-inf - -inf) would make
    // NaN of keys that have probability 0; alpha is then 2^-inf = 0 on a sum and an O that are still 0.
    const V ninf = vset<V>(-INFINITY);
    V mu[NV];
    if (c0 == 0) {
      for (int j = 0; j < NV; ++j) m[j] = cm[j], l[j] = V{}, mu[j] = m[j] == ninf ? V{} : m[j];
    } else {
      V alpha[NV];
      for (int j = 0; j < NV; ++j) {
        const V mn = vmax(m[j], cm[j]);
        mu[j] = mn == ninf ? V{} : mn;
        alpha[j] = vexp2(m[j] - mu[j]);
        l[j] *= alpha[j];
        m[j] = mn;
      }
      for (int d = 0; d < D; ++d)
        for (int j = 0; j < NV; ++j) vstore(O + d * BQ + j * W, vload<V>(O + d * BQ + j * W) * alpha[j]);
    }
    // P = 2^(S - m), column sums (blocked like the P V product: SB-key partial sums, then into l)
    for (int64_t sb = 0; sb < ns; sb += SB) {
      V part[NV] = {};
      for (int64_t s = sb; s < std::min<int64_t>(sb + SB, ns); ++s)
        for (int j = 0; j < NV; ++j) {
          const V p = vexp2(vload<V>(St + s * BQ + j * W) - mu[j]);
          part[j] += p;
          vstore(St + s * BQ + j * W, p);
        }
      for (int j = 0; j < NV; ++j) l[j] += part[j];
    }
    // O += V P^T, 4 head-dim rows at a time, SB keys at a time (so that those rows of P stay in L1 while
    // every head-dim tile reads them)
    for (int64_t sb = 0; sb < ns; sb += SB) {
      const int64_t nsb = std::min<int64_t>(SB, ns - sb);
      for (int d = 0; d < D; d += MR) {
        const float* rows = Vp + d * G.npad + (c0 + sb) * MR;  // panel d / 4, from key c0 + sb on
        if (c0 == 0 && sb == 0) tile_rows_x_p<false, V, NV>(St + sb * BQ, nsb, rows, O + d * BQ);
        else tile_rows_x_p<true, V, NV>(St + sb * BQ, nsb, rows, O + d * BQ);
      }
    }
  }
  V inv[NV];
  for (int j = 0; j < NV; ++j) {
    inv[j] = vset<V>(1.f) / l[j];
    V lg;  // log2 of the sum, lane by lane (once per query: not worth a vector log)
    for (int e = 0; e < W; ++e) lg[e] = std::log2(l[j][e]);
    vstore(lse + j * W, (m[j] + lg) * kLn2);
  }
  for (int d = 0; d < D; ++d)
    for (int j = 0; j < NV; ++j) vstore(O + d * BQ + j * W, vload<V>(O + d * BQ + j * W) * inv[j]);
}

// One query block of the backward. Kp, Vp: key panels of K and V; Kd: row panels of K; Qp: [D][BQ] scaled by
// scale*log2(e); Qt: [BQ][D] unscaled; dOp [D][BQ], dOt [BQ][D]; Op [D][BQ] the forward's output (minus any
// residual); lse2 [BQ] (lse in log2 units).
// Accumulates dK += dS Q^T and dV += P dO^T into [npad][D] scratch; writes dQ[D][BQ] = dS K (all unscaled).
template <int D, class V, int NV = 3, int KR = MR>
Y12_INLINE void bwd_block(const Geometry& G, const float* Kp, const float* Vp, const float* Kd, const float* Qp,
                          const float* Qt, const float* dOp, const float* dOt, const float* lse2, const float* Op,
                          float* St, float* dPt, float* dK, float* dV, float* dQ) {
  constexpr int W = kLanes<V>, BQ = kBQ<V, NV>;
  using VI = typename IntVec<V>::type;
  V vl[NV], vd[NV];
  for (int j = 0; j < NV; ++j) vl[j] = vload<V>(lse2 + j * W), vd[j] = V{};
  // Delta = sum_d dO O, summed in the order and with the contraction of the dP tile's sums (dP = sum_d V dO), so
  // that dP - Delta cancels exactly where it does in exact arithmetic: a 1-token area has P = 1, O = V, dS = 0
  for (int d = 0; d < D; ++d)
    for (int j = 0; j < NV; ++j) vd[j] += vload<V>(dOp + d * BQ + j * W) * vload<V>(Op + d * BQ + j * W);
  // padding columns (a partial last block): P and dS are set to 0 there by an AND with a lane mask, which a NaN
  // cannot survive. (Not a vector select: GCC lowered `mask ? V{} : x` lane by lane in the AVX-512 build, which made
  // that loop 7x slower there.)
  int32_t col_bits[BQ];
  for (int t = 0; t < BQ; ++t) col_bits[t] = t < G.valid_cols ? -1 : 0;
  VI keep[NV];
  for (int j = 0; j < NV; ++j) std::memcpy(&keep[j], col_bits + j * W, sizeof(VI));
  for (int64_t c0 = 0; c0 < G.n; c0 += G.kc) {
    const int64_t ns = std::min(G.kc, G.n - c0), nsp = round_up(ns, MR);
    for (int64_t s = 0; s < ns; s += MR) {
      tile_panel_x_block<D, V, NV>(Qp, Kp + (c0 + s) * D, St + s * BQ);
      tile_panel_x_block<D, V, NV>(dOp, Vp + (c0 + s) * D, dPt + s * BQ);
    }
    for (int64_t s = 0; s < nsp; ++s)
      for (int j = 0; j < NV; ++j) {
        const V p = (V)((VI)vexp2(vload<V>(St + s * BQ + j * W) - vl[j]) & keep[j]);
        const V ds = p * (vload<V>(dPt + s * BQ + j * W) - vd[j]);
        vstore(St + s * BQ + j * W, p);
        vstore(dPt + s * BQ + j * W, (V)((VI)ds & keep[j]));
      }
    int64_t s = 0;
    for (; s + KR <= nsp; s += KR) {
      tile_keys_x_blockT<D, V, NV, KR>(St + s * BQ, dOt, dV + (c0 + s) * D);  // dV += P dO^T
      tile_keys_x_blockT<D, V, NV, KR>(dPt + s * BQ, Qt, dK + (c0 + s) * D);  // dK += dS Q^T
    }
    for (; s < nsp; s += MR) {
      tile_keys_x_blockT<D, V, NV, MR>(St + s * BQ, dOt, dV + (c0 + s) * D);
      tile_keys_x_blockT<D, V, NV, MR>(dPt + s * BQ, Qt, dK + (c0 + s) * D);
    }
    for (int d = 0; d < D; d += MR) {  // dQ += K dS
      const float* rows = Kd + d * G.npad + c0 * MR;
      if (c0 == 0) tile_rows_x_p<false, V, NV>(dPt, ns, rows, dQ + d * BQ);
      else tile_rows_x_p<true, V, NV>(dPt, ns, rows, dQ + d * BQ);
    }
  }
}

using FwdBlockFn = void (*)(const Geometry&, const float*, const float*, const float*, float*, float*, float*);
using BwdBlockFn = void (*)(const Geometry&, const float*, const float*, const float*, const float*, const float*,
                            const float*, const float*, const float*, const float*, float*, float*, float*, float*,
                            float*);

// The builds of each core: baseline (4 lanes), AVX2+FMA (8 lanes), AVX-512 (16 lanes). Y12_FLAT inlines the
// core and its intrinsic vexp2 into each ISA's wrapper.
#define Y12_FLAT __attribute__((flatten))
#define Y12_FWD_ARGS \
  const Geometry &G, const float *Kp, const float *Vp, const float *Qp, float *St, float *O, float *lse
#define Y12_BWD_ARGS                                                                                               \
  const Geometry &G, const float *Kp, const float *Vp, const float *Kd, const float *Qp, const float *Qt,          \
      const float *dOp, const float *dOt, const float *lse2, const float *Op, float *St, float *dPt, float *dK,    \
      float *dV, float *dQ
#define Y12_BWD_PASS G, Kp, Vp, Kd, Qp, Qt, dOp, dOt, lse2, Op, St, dPt, dK, dV, dQ
template <int D> void fwd_block_base(Y12_FWD_ARGS) { fwd_block<D, vf4, 3>(G, Kp, Vp, Qp, St, O, lse); }
template <int D> void bwd_block_base(Y12_BWD_ARGS) { bwd_block<D, vf4>(Y12_BWD_PASS); }
#ifdef Y12_HAVE_AVX2_BUILD
template <int D>
Y12_AVX2 Y12_FLAT void fwd_block_avx2(Y12_FWD_ARGS) { fwd_block<D, vf8, 3>(G, Kp, Vp, Qp, St, O, lse); }
template <int D> Y12_AVX2 Y12_FLAT void bwd_block_avx2(Y12_BWD_ARGS) { bwd_block<D, vf8>(Y12_BWD_PASS); }
template <int D, int NV>
Y12_AVX512 Y12_FLAT void fwd_block_avx512(Y12_FWD_ARGS) { fwd_block<D, vf16, NV>(G, Kp, Vp, Qp, St, O, lse); }
template <int D, int NV>
Y12_AVX512 Y12_FLAT void bwd_block_avx512(Y12_BWD_ARGS) { bwd_block<D, vf16, NV, 8>(Y12_BWD_PASS); }
#endif
#undef Y12_FWD_ARGS
#undef Y12_BWD_ARGS
#undef Y12_BWD_PASS

// The core for head dim D on this CPU, and its query-block width.
struct Kernels {
  FwdBlockFn fwd;
  BwdBlockFn bwd;
  int bq;      // the backward's query block
  int fwd_bq;  // the forward's
};

template <int D>
Kernels kernels_d(int64_t n) {
  Kernels k{&fwd_block_base<D>, &bwd_block_base<D>, kBQ<vf4>, kBQ<vf4>};
#ifdef Y12_HAVE_AVX2_BUILD
  if (cpu_isa::use_avx2()) k = {&fwd_block_avx2<D>, &bwd_block_avx2<D>, kBQ<vf8>, kBQ<vf8>};
  if (cpu_isa::use_avx512()) {
    // the query block: 4 or 5 vectors (64 or 80 queries), whichever pads the area's n queries less (400 -> 5 x 80;
    // 300 -> 5 x 64; 49 -> 1 x 64); 4 on a tie, which measured faster (fewer live registers)
    const int64_t pad4 = (n + 63) / 64 * 64, pad5 = (n + 79) / 80 * 80;
    if (pad5 < pad4) k.fwd = &fwd_block_avx512<D, 5>, k.fwd_bq = kBQ<vf16, 5>;
    else k.fwd = &fwd_block_avx512<D, 4>, k.fwd_bq = kBQ<vf16, 4>;
    // the backward's dK / dV tile spans 2 vectors of head dims: 32 at 16 lanes, so head_dim 16 stays 8-wide
    if constexpr (D >= 32) {
      if (pad5 < pad4) k.bwd = &bwd_block_avx512<D, 5>, k.bq = kBQ<vf16, 5>;
      else k.bwd = &bwd_block_avx512<D, 4>, k.bq = kBQ<vf16, 4>;
    }
  }
#endif
  return k;
}

Kernels kernels_for(int64_t D, int64_t n) {
  switch (D) {
    case 16: return kernels_d<16>(n);
    case 32: return kernels_d<32>(n);
    case 64: return kernels_d<64>(n);
    default: return kernels_d<128>(n);
  }
}

// ---------------------------------------------------------------------------------------------------------
// per-dtype drivers: pack, call the core, write back

template <typename T>
struct FwdArgs {
  View<T> q, k, v, res;
  bool has_res = false;
  T* out = nullptr;      // contiguous (B, H, D, N)
  float* lse = nullptr;  // contiguous (B, H, N)
  int64_t H = 0, D = 0, N = 0, n = 0, area = 0;
  int64_t nqb = 0;       // query blocks per sequence
  float qscale = 0.f;    // scale * log2(e)
  Kernels kern{};
};

// Query blocks [begin, end) of the flat list: block i is query block i % nqb of sequence (b, h, a) = i / nqb.
// K and V are packed whenever the range enters a new sequence.
template <typename T>
void fwd_blocks(const FwdArgs<T>& A, int64_t begin, int64_t end) {
  const Geometry G(A.n);
  const int D = static_cast<int>(A.D), bq = A.kern.fwd_bq;
  const int64_t n = A.n;
  std::vector<float> kbuf(G.npad * D), vbuf(G.npad * D), qbuf(D * bq), sbuf(G.kc * bq), obuf(D * bq), lbuf(bq);
  int64_t packed = -1;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t bha = i / A.nqb, qb = i % A.nqb;
    const int64_t b = bha / (A.H * A.area), h = bha / A.area % A.H, a = bha % A.area;
    const int64_t tok0 = a * n;  // first token of the area
    if (bha != packed) {
      pack_key_panels(A.k.at(b, h) + tok0 * A.k.st, A.k.sd, A.k.st, D, n, G.npad, kbuf.data());
      pack_row_panels(A.v.at(b, h) + tok0 * A.v.st, A.v.sd, A.v.st, D, n, G.npad, vbuf.data());
      packed = bha;
    }
    const int64_t t0 = tok0 + qb * bq;  // first query token of the block
    const int valid = static_cast<int>(std::min<int64_t>(bq, tok0 + n - t0));
    pack_block_dt(A.q.at(b, h) + t0 * A.q.st, A.q.sd, A.q.st, D, bq, valid, A.qscale, qbuf.data());
    A.kern.fwd(G, kbuf.data(), vbuf.data(), qbuf.data(), sbuf.data(), obuf.data(), lbuf.data());
    std::copy(lbuf.begin(), lbuf.begin() + valid, A.lse + (b * A.H + h) * A.N + t0);
    T* out = A.out + (b * A.H + h) * D * A.N + t0;
    const T* res = A.has_res ? A.res.at(b, h) + t0 * A.res.st : nullptr;
    for (int d = 0; d < D; ++d) {
      const float* o = obuf.data() + d * bq;
      T* dst = out + d * A.N;
      if (res != nullptr) {
        const T* r = res + d * A.res.sd;
        const int64_t rs = A.res.st;
        for (int t = 0; t < valid; ++t) dst[t] = static_cast<T>(o[t] + static_cast<float>(r[t * rs]));
      } else {
        for (int t = 0; t < valid; ++t) dst[t] = static_cast<T>(o[t]);
      }
    }
  }
}

template <typename T>
struct BwdArgs {
  View<T> dout, q, k, v, out, res;
  bool has_res = false;
  const float* lse = nullptr;  // (B, H, N) with strides
  int64_t lse_sb = 0, lse_sh = 0, lse_st = 0;
  T *dq = nullptr, *dk = nullptr, *dv = nullptr;  // contiguous (B, H, D, N)
  int64_t H = 0, D = 0, N = 0, n = 0, area = 0;
  float scale = 0.f;
  Kernels kern{};
};

// One work item = one (batch, head, area): dK and dV of the area accumulate in scratch, dQ per query block.
template <typename T>
void bwd_items(const BwdArgs<T>& A, int64_t begin, int64_t end) {
  const Geometry G(A.n);
  const int D = static_cast<int>(A.D), bq = A.kern.bq;
  const int64_t n = A.n, npad = G.npad;
  const float qscale = A.scale * kLog2e;
  std::vector<float> kbuf(npad * D), vbuf(npad * D), kdbuf(npad * D), dkbuf(npad * D), dvbuf(npad * D);
  std::vector<float> qbuf(D * bq), qtbuf(bq * D), dobuf(D * bq), dotbuf(bq * D), sbuf(G.kc * bq), dpbuf(G.kc * bq),
      dqbuf(D * bq), lse2(bq), obuf(D * bq);
  float *Qp = qbuf.data(), *Qt = qtbuf.data(), *dOp = dobuf.data(), *dOt = dotbuf.data();

  for (int64_t bha = begin; bha < end; ++bha) {
    const int64_t b = bha / (A.H * A.area), h = bha / A.area % A.H, a = bha % A.area;
    const int64_t tok0 = a * n;
    pack_key_panels(A.k.at(b, h) + tok0 * A.k.st, A.k.sd, A.k.st, D, n, npad, kbuf.data());
    pack_key_panels(A.v.at(b, h) + tok0 * A.v.st, A.v.sd, A.v.st, D, n, npad, vbuf.data());
    pack_row_panels(A.k.at(b, h) + tok0 * A.k.st, A.k.sd, A.k.st, D, n, npad, kdbuf.data());
    std::fill(dkbuf.begin(), dkbuf.end(), 0.f);
    std::fill(dvbuf.begin(), dvbuf.end(), 0.f);

    for (int64_t t0 = tok0; t0 < tok0 + n; t0 += bq) {
      const int valid = static_cast<int>(std::min<int64_t>(bq, tok0 + n - t0));
      const T* qsrc = A.q.at(b, h) + t0 * A.q.st;
      pack_block_dt(qsrc, A.q.sd, A.q.st, D, bq, valid, qscale, Qp);
      pack_block_dt(A.dout.at(b, h) + t0 * A.dout.st, A.dout.sd, A.dout.st, D, bq, valid, 1.f, dOp);
      for (int t = 0; t < bq; ++t)
        for (int d = 0; d < D; ++d) {
          Qt[t * D + d] = t < valid ? static_cast<float>(qsrc[d * A.q.sd + t * A.q.st]) : 0.f;
          dOt[t * D + d] = dOp[d * bq + t];
        }
      // the forward's output without the residual, [D][bq]; lse in log2 units (padding columns: 0, they
      // contribute nothing)
      const T* osrc = A.out.at(b, h) + t0 * A.out.st;
      const T* rsrc = A.has_res ? A.res.at(b, h) + t0 * A.res.st : nullptr;
      const float* lsrc = A.lse + b * A.lse_sb + h * A.lse_sh + t0 * A.lse_st;
      for (int d = 0; d < D; ++d)
        for (int t = 0; t < bq; ++t) {
          float o = t < valid ? static_cast<float>(osrc[d * A.out.sd + t * A.out.st]) : 0.f;
          if (rsrc != nullptr && t < valid) o -= static_cast<float>(rsrc[d * A.res.sd + t * A.res.st]);
          obuf[d * bq + t] = o;
        }
      for (int t = 0; t < bq; ++t) lse2[t] = t < valid ? lsrc[t * A.lse_st] * kLog2e : 0.f;
      Geometry Gb = G;
      Gb.valid_cols = valid;
      A.kern.bwd(Gb, kbuf.data(), vbuf.data(), kdbuf.data(), Qp, Qt, dOp, dOt, lse2.data(), obuf.data(),
                 sbuf.data(), dpbuf.data(), dkbuf.data(), dvbuf.data(), dqbuf.data());
      T* dq = A.dq + (b * A.H + h) * D * A.N + t0;
      for (int d = 0; d < D; ++d)
        for (int t = 0; t < valid; ++t) dq[d * A.N + t] = static_cast<T>(dqbuf[d * bq + t] * A.scale);
    }
    T* dk = A.dk + (b * A.H + h) * D * A.N + tok0;
    T* dv = A.dv + (b * A.H + h) * D * A.N + tok0;
    for (int d = 0; d < D; ++d)
      for (int64_t s = 0; s < n; ++s) {
        dk[d * A.N + s] = static_cast<T>(dkbuf[s * D + d] * A.scale);
        dv[d * A.N + s] = static_cast<T>(dvbuf[s * D + d]);
      }
  }
}

// ---------------------------------------------------------------------------------------------------------
// host side: validation, dtype / head-dim dispatch

void check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t area,
               const std::optional<at::Tensor>& residual) {
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->dim() == 4, op, ": q, k, v must be 4-D (B, heads, head_dim, N), got shape ", t->sizes());
    TORCH_CHECK(t->device().is_cpu(), op, ": this is the CPU kernel; q, k, v must be CPU tensors, got ", t->device(),
                " (use backend='cuda' or 'triton' for CUDA tensors)");
  }
  TORCH_CHECK(q.sizes() == k.sizes() && q.sizes() == v.sizes(), op, ": q, k, v must have the same shape, got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op, ": q has dtype ", dt,
              "; use float32, float16 or bfloat16 (yolov12_fast.reference handles float64)");
  TORCH_CHECK(k.scalar_type() == dt && v.scalar_type() == dt, op, ": q, k, v must share a dtype, got ", dt, ", ",
              k.scalar_type(), ", ", v.scalar_type());
  const int64_t D = q.size(2), N = q.size(3);
  TORCH_CHECK(D == 16 || D == 32 || D == 64 || D == 128, op, ": head_dim ", D,
              " is not supported; supported head dims: 16, 32, 64, 128");
  TORCH_CHECK(area >= 1, op, ": area must be >= 1, got ", area);
  TORCH_CHECK(N % area == 0, op, ": N = H*W = ", N, " tokens is not divisible by area = ", area,
              "; pad the feature map (ultralytics pads inputs to multiples of 32)");
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK(r.sizes() == q.sizes(), op, ": residual must have the shape of q ", q.sizes(), ", got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == dt, op, ": residual dtype ", r.scalar_type(), " differs from q's ", dt);
    TORCH_CHECK(r.device().is_cpu(), op, ": residual must be a CPU tensor, got ", r.device());
  }
}

template <typename F>
void dispatch_dtype(at::ScalarType dt, F&& f) {
  if (dt == at::kFloat) f(float{});
  else if (dt == at::kHalf) f(at::Half{});
  else f(at::BFloat16{});
}

std::tuple<at::Tensor, at::Tensor> area_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                          int64_t area, double scale,
                                                          const std::optional<at::Tensor>& residual) {
  check_qkv("area_attention_fwd_cxx", q, k, v, area, residual);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), N = q.size(3);
  at::Tensor out = at::empty({B, H, D, N}, q.options());
  at::Tensor lse = at::empty({B, H, N}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  const Kernels kern = kernels_for(D, N / area);
  const int64_t n = N / area, nqb = (n + kern.fwd_bq - 1) / kern.fwd_bq, seqs = B * H * area;
  dispatch_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    FwdArgs<T> A;
    A.q = View<T>(q), A.k = View<T>(k), A.v = View<T>(v);
    if (residual.has_value()) A.res = View<T>(*residual), A.has_res = true;
    A.out = out.data_ptr<T>(), A.lse = lse.data_ptr<float>();
    A.H = H, A.D = D, A.N = N, A.n = n, A.area = area, A.nqb = nqb;
    A.qscale = static_cast<float>(scale) * kLog2e;
    A.kern = kern;
    // one contiguous range of query blocks per thread (at::parallel_for splits [0, total) evenly)
    at::parallel_for(0, seqs * nqb, 1, [&](int64_t b0, int64_t b1) { fwd_blocks<T>(A, b0, b1); });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> area_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const std::optional<at::Tensor>& residual, const at::Tensor& lse, int64_t area, double scale) {
  const char* op = "area_attention_bwd_cxx";
  check_qkv(op, q, k, v, area, residual);
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(), op, ": dout and out must have q's shape ",
              q.sizes(), ", got ", dout.sizes(), " and ", out.sizes());
  TORCH_CHECK(dout.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(), op,
              ": dout and out must have q's dtype ", q.scalar_type(), ", got ", dout.scalar_type(), " and ",
              out.scalar_type(), " (cast dout with .to(q.dtype))");
  TORCH_CHECK(dout.device().is_cpu() && out.device().is_cpu() && lse.device().is_cpu(), op,
              ": dout, out and lse must be CPU tensors");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), N = q.size(3);
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == B && lse.size(1) == H && lse.size(2) == N, op,
              ": lse must have shape (B, heads, N) = (", B, ", ", H, ", ", N, "), got ", lse.sizes(),
              " (pass the lse returned by area_attention_fwd_cxx)");
  TORCH_CHECK(lse.scalar_type() == at::kFloat, op, ": lse must be float32, got ", lse.scalar_type());
  at::Tensor dq = at::empty({B, H, D, N}, q.options());
  at::Tensor dk = at::empty({B, H, D, N}, q.options());
  at::Tensor dv = at::empty({B, H, D, N}, q.options());
  if (dq.numel() == 0) return {dq, dk, dv};
  dispatch_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    BwdArgs<T> A;
    A.dout = View<T>(dout), A.q = View<T>(q), A.k = View<T>(k), A.v = View<T>(v), A.out = View<T>(out);
    if (residual.has_value()) A.res = View<T>(*residual), A.has_res = true;
    A.lse = lse.const_data_ptr<float>(), A.lse_sb = lse.stride(0), A.lse_sh = lse.stride(1), A.lse_st = lse.stride(2);
    A.dq = dq.data_ptr<T>(), A.dk = dk.data_ptr<T>(), A.dv = dv.data_ptr<T>();
    A.H = H, A.D = D, A.N = N, A.n = N / area, A.area = area, A.scale = static_cast<float>(scale);
    A.kern = kernels_for(D, N / area);
    at::parallel_for(0, B * H * area, 1, [&](int64_t b0, int64_t b1) { bwd_items<T>(A, b0, b1); });
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(yolov12_fast, CPU, m) {
  m.impl("area_attention_fwd_cxx", &area_attention_fwd_cpu);
  m.impl("area_attention_bwd_cxx", &area_attention_bwd_cpu);
}

}  // namespace yolov12_fast
