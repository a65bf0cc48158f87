// Shared by the C++ CPU kernels (area_attention_cpu.cpp, pe_cpu.cpp): the SIMD vocabulary and the run-time ISA
// choice.
//
// SIMD: the compute cores are written once with GCC vector extensions, templated on the vector type V, and
// compiled per ISA: 8 x fp32 inside functions carrying Y12_AVX2 (target("avx2,fma"): ymm registers, FMA), chosen
// at run time when cpu_isa::use_avx2(), 16 x fp32 inside Y12_AVX512 functions (the attention cores, when
// cpu_isa::use_avx512()), and 4 x fp32 in baseline code (SSE2 on x86-64, NEON on aarch64). torch's
// at::vec dispatch needs ATen's per-ISA build machinery, which setuptools extensions lack; building with -mavx2
// would crash older CPUs. The helpers below are always_inline, so they take on the ISA of the core they are
// inlined into.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define Y12_HAVE_AVX2_BUILD 1
#define Y12_AVX2 __attribute__((target("avx2,fma")))
#define Y12_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
#endif
#define Y12_INLINE inline __attribute__((always_inline))

// The baseline code passes 32-byte vectors between always_inline helpers; GCC warns that such a call would have
// a different ABI without AVX, but every helper is inlined, so no such call exists.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace yolov12_fast {

namespace cpu_isa {
// AVX2 + FMA available and not vetoed: YOLOV12_FAST_CPU_CAPABILITY=default forces the baseline builds (like
// torch's ATEN_CPU_CAPABILITY; the tests use it to check them on AVX2 machines). Read once; defined in
// area_attention_cpu.cpp.
bool use_avx2();
// AVX-512F (16 x fp32, 32 zmm registers) available and not vetoed (YOLOV12_FAST_CPU_CAPABILITY=avx2 or default):
// the attention cores' widest build.
bool use_avx512();
const char* attention_isa();  // "avx512", "avx2" or "baseline": the attention cores' build in use
}  // namespace cpu_isa

namespace simd {

typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
typedef int32_t vi4 __attribute__((vector_size(16)));
template <class V> struct IntVec;
template <> struct IntVec<vf16> { using type = vi16; };
template <> struct IntVec<vf8> { using type = vi8; };
template <> struct IntVec<vf4> { using type = vi4; };
template <class V> constexpr int kLanes = sizeof(V) / sizeof(float);

template <class V> Y12_INLINE V vload(const float* p) { V r; std::memcpy(&r, p, sizeof r); return r; }
template <class V> Y12_INLINE void vstore(float* p, V x) { std::memcpy(p, &x, sizeof x); }
// Broadcast, written as a shuffle of lane 0: inside a target("avx2") function GCC 12 expands `V{x, x, ...}`
// (or `V{} + x`) into a chain of vinsertps, but this form into one vbroadcastss (from memory when x is loaded).
template <class V> Y12_INLINE V vset(float x) {
  const V a = {x};
  if constexpr (kLanes<V> == 16) return __builtin_shufflevector(a, a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  else if constexpr (kLanes<V> == 8) return __builtin_shufflevector(a, a, 0, 0, 0, 0, 0, 0, 0, 0);
  else return __builtin_shufflevector(a, a, 0, 0, 0, 0);
}
template <class V> Y12_INLINE V vmax(V a, V b) { return a > b ? a : b; }

// dst[i] = float(src[i * stride]) for i < n: a strided row of a (B, heads, D, N) input read as fp32 (unit stride,
// the common case, is a plain conversion loop the compiler vectorises).
template <typename T>
Y12_INLINE void load_row(const T* __restrict src, int64_t stride, int64_t n, float* __restrict dst) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i * stride]);
  }
}

}  // namespace simd
}  // namespace yolov12_fast
