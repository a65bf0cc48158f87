// CPU kernel of yolov12_fast::pe_add_cxx (schema in csrc/ops.cpp):
//   out = x + depthwise_conv2d(v as (B, heads*D, H, W), weight (heads*D, 1, k, k), bias, padding k // 2)
// with v, x (B, heads, D, N = H*W) of any strides and out contiguous (B, heads, D, N). This is AAttn's `pe`
// branch (7x7 in ultralytics / v1.0, 5x5 in turbo) plus the add that follows it, in one pass.
//
// Per (batch, channel) plane: the plane is copied (converted to fp32) into a zero-bordered per-thread buffer,
// so the border needs no branches, then each tile of 4 rows x 2 vectors keeps 8 vector accumulators in
// registers over the k*k taps (8 independent FMA chains hide the FMA latency; one load per FMA, from L1).
// SIMD (common.h): GCC vector extensions templated on the width, built 8-wide inside a target("avx2,fma")
// function chosen at run time and 4-wide as baseline code.
//
// And of yolov12_fast::pe_add_wgrad_cxx, the backward's weight and bias gradients (the input gradient is this
// same forward kernel run on dout with the kernel flipped: a stride-1, same-padded correlation's transpose):
//   dw[c, 0, i, j] = sum_b sum_{y,x} dout[b, c, y, x] * v[b, c, y + i - k/2, x + j - k/2]  (zero outside the map)
//   db[c]          = sum_b sum_{y,x} dout[b, c, y, x]
// One channel per task, images summed in order (deterministic, independent of the thread count). Each image's v
// plane goes into the forward's zero-bordered buffer, dout into rows zero-padded to whole vectors; each tap row i
// and group of 4 tap columns keeps 4 vector accumulators over the plane (5 loads per 4 FMAs, all from L1).
// For a P4 h2 map (64 x 40 x 40, 7 x 7, 1 thread, Xeon): ATen's CPU depthwise convolution backward 4.7 ms for
// all three gradients; this kernel 0.24 ms for dw and db, the flipped forward 0.23 ms for dv.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.h"

namespace yolov12_fast {
namespace {

using namespace simd;

constexpr int RB = 4;       // output rows per tile
constexpr int XB_MAX = 16;  // output columns per tile: 2 vectors (of 8 lanes at most)

// Geometry of the zero-bordered plane buffer: the image sits at (pad, pad); rows and columns are rounded up
// so that whole tiles can be computed (the extra outputs are discarded).
struct PlaneGeometry {
  int64_t H, W, k, pad, rows, stride;
  PlaneGeometry(int64_t H_, int64_t W_, int64_t k_)
      : H(H_), W(W_), k(k_), pad(k_ / 2),
        rows((H_ + RB - 1) / RB * RB + 2 * (k_ / 2)), stride((W_ + XB_MAX - 1) / XB_MAX * XB_MAX + 2 * (k_ / 2)) {}
};

// One tile of RB rows x NV vectors at (y0, x0): RB x NV accumulators over the k*k taps; stores the valid outputs.
template <int NV, class V>
Y12_INLINE void dwconv_tile(const PlaneGeometry& G, const float* buf, const float* w, float bias, int64_t y0,
                            int64_t x0, float* out) {
  constexpr int L = kLanes<V>;
  const int64_t k = G.k, S = G.stride;
  V c[RB][NV] = {};
  for (int64_t i = 0; i < k; ++i) {
    const float* base = buf + (y0 + i) * S + x0;
    for (int64_t j = 0; j < k; ++j) {
      const V wv = vset<V>(w[i * k + j]);
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r)
#pragma GCC unroll 2
        for (int e = 0; e < NV; ++e) c[r][e] += wv * vload<V>(base + r * S + j + e * L);
    }
  }
  float tile[RB][NV * L];
  for (int r = 0; r < RB; ++r)
    for (int e = 0; e < NV; ++e) vstore(tile[r] + e * L, c[r][e] + vset<V>(bias));
  const int64_t ny = std::min<int64_t>(RB, G.H - y0), nx = std::min<int64_t>(NV * L, G.W - x0);
  for (int64_t r = 0; r < ny; ++r) std::memcpy(out + (y0 + r) * G.W + x0, tile[r], sizeof(float) * nx);
}

// out[y][x] (y < H, x < W, row stride W) = bias + sum_{i,j} w[i][j] * buf[y + i][x + j]. Columns go in tiles of
// 2 vectors and, where at most one vector remains, a 1-vector tile (a 20-wide map computes 24 columns, not 32).
// The buffer's rows are padded to a multiple of 16 columns, so any tile reads inside it.
template <class V>
Y12_INLINE void dwconv_plane(const PlaneGeometry& G, const float* buf, const float* w, float bias, float* out) {
  constexpr int L = kLanes<V>;
  for (int64_t y0 = 0; y0 < G.H; y0 += RB) {
    int64_t x0 = 0;
    for (; x0 + L < G.W; x0 += 2 * L) dwconv_tile<2, V>(G, buf, w, bias, y0, x0, out);
    if (x0 < G.W) dwconv_tile<1, V>(G, buf, w, bias, y0, x0, out);
  }
}

// The builds of a plane core NAME<V> and the run-time choice: NAME_base (4 lanes: SSE2 / NEON), on x86-64 GCC also
// NAME_avx2 (8 lanes, target avx2 + fma); NAME_kernel() returns the one this CPU runs, plane_lanes() its width.
#ifdef Y12_HAVE_AVX2_BUILD
#define Y12_PLANE_CORE(NAME, PARAMS, ARGS)             \
  void NAME##_base PARAMS { NAME<vf4> ARGS; }          \
  Y12_AVX2 void NAME##_avx2 PARAMS { NAME<vf8> ARGS; } \
  auto NAME##_kernel() { return cpu_isa::use_avx2() ? &NAME##_avx2 : &NAME##_base; }
#else
#define Y12_PLANE_CORE(NAME, PARAMS, ARGS)    \
  void NAME##_base PARAMS { NAME<vf4> ARGS; } \
  auto NAME##_kernel() { return &NAME##_base; }
#endif
int64_t plane_lanes() { return cpu_isa::use_avx2() ? kLanes<vf8> : kLanes<vf4>; }

Y12_PLANE_CORE(dwconv_plane, (const PlaneGeometry& G, const float* buf, const float* w, float bias, float* out),
               (G, buf, w, bias, out))

bool is_float_type(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// ---------------------------------------------------------------------------------------------------------
// backward: weight and bias gradients

constexpr int TJ = 4;  // tap columns per accumulator group

// dw[i * k + j] += sum_{y < H, x} d[y][x] * vbuf[y + i][x + j] (d: H rows of `dstride` floats, zero beyond W;
// vbuf: the zero-bordered plane). The last group of tap columns computes up to TJ - 1 unused taps, which read
// past the row end (the buffer has slack for them) and are dropped.
template <class V>
Y12_INLINE void wgrad_plane(const PlaneGeometry& G, const float* vbuf, const float* d, int64_t dstride, float* dw) {
  constexpr int L = kLanes<V>;
  const int64_t k = G.k, S = G.stride;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j0 = 0; j0 < k; j0 += TJ) {
      V acc[TJ] = {};
      for (int64_t y = 0; y < G.H; ++y) {
        const float* dr = d + y * dstride;
        const float* vr = vbuf + (y + i) * S + j0;
        for (int64_t x0 = 0; x0 < dstride; x0 += L) {
          const V dv = vload<V>(dr + x0);
#pragma GCC unroll 4
          for (int j = 0; j < TJ; ++j) acc[j] += dv * vload<V>(vr + x0 + j);
        }
      }
      for (int j = 0; j < TJ && j0 + j < k; ++j) {
        float sum = 0.f;
        for (int e = 0; e < L; ++e) sum += acc[j][e];
        dw[i * k + j0 + j] += sum;
      }
    }
}

Y12_PLANE_CORE(wgrad_plane, (const PlaneGeometry& G, const float* vbuf, const float* d, int64_t ds, float* dw),
               (G, vbuf, d, ds, dw))
#undef Y12_PLANE_CORE

// A (B, heads, D, N) tensor of any strides, plane by plane.
template <typename T>
struct Planes {
  const T* p = nullptr;
  int64_t sb = 0, sh = 0, sd = 0, st = 0, D = 1;
  explicit Planes(const at::Tensor& t)
      : p(t.const_data_ptr<T>()), sb(t.stride(0)), sh(t.stride(1)), sd(t.stride(2)), st(t.stride(3)), D(t.size(2)) {}
  const T* plane(int64_t b, int64_t c) const { return p + b * sb + (c / D) * sh + (c % D) * sd; }
};

template <typename T>
void wgrad_channels(const Planes<T>& dout, const Planes<T>& v, int64_t B, const PlaneGeometry& G, T* dw, T* db,
                    int64_t c0, int64_t c1) {
  const auto fn = wgrad_plane_kernel();
  const int64_t L = plane_lanes();
  const int64_t k = G.k, dstride = (G.W + L - 1) / L * L;
  std::vector<float> vbuf(G.rows * G.stride + 2 * TJ, 0.f), dbuf(G.H * dstride, 0.f), acc(k * k);
  for (int64_t c = c0; c < c1; ++c) {
    std::fill(acc.begin(), acc.end(), 0.f);
    double bias_grad = 0.0;  // sums B*H*W values: accumulated in double, rounded once
    for (int64_t b = 0; b < B; ++b) {
      const T* vs = v.plane(b, c);
      const T* ds = dout.plane(b, c);
      for (int64_t y = 0; y < G.H; ++y) {
        load_row(vs + y * G.W * v.st, v.st, G.W, vbuf.data() + (y + G.pad) * G.stride + G.pad);
        float* drow = dbuf.data() + y * dstride;
        load_row(ds + y * G.W * dout.st, dout.st, G.W, drow);
        float rs = 0.f;
        for (int64_t x = 0; x < G.W; ++x) rs += drow[x];
        bias_grad += rs;
      }
      fn(G, vbuf.data(), dbuf.data(), dstride, acc.data());
    }
    for (int64_t t = 0; t < k * k; ++t) dw[c * k * k + t] = static_cast<T>(acc[t]);
    db[c] = static_cast<T>(bias_grad);
  }
}

std::tuple<at::Tensor, at::Tensor> pe_add_wgrad_cpu(const at::Tensor& dout, const at::Tensor& v, int64_t k, int64_t H,
                                                    int64_t W) {
  const char* op = "pe_add_wgrad_cxx";
  TORCH_CHECK(v.dim() == 4 && dout.dim() == 4, op, ": v and dout must be 4-D (B, heads, head_dim, N = H*W), got ",
              v.sizes(), " and ", dout.sizes());
  TORCH_CHECK(dout.sizes() == v.sizes(), op, ": dout must have v's shape ", v.sizes(), ", got ", dout.sizes());
  TORCH_CHECK(v.device().is_cpu() && dout.device().is_cpu(), op,
              ": this is the CPU kernel; v and dout must be CPU tensors, got ", v.device(), " and ", dout.device());
  TORCH_CHECK(is_float_type(v.scalar_type()), op, ": v has dtype ", v.scalar_type(),
              "; use float32, float16 or bfloat16");
  TORCH_CHECK(dout.scalar_type() == v.scalar_type(), op, ": dout dtype ", dout.scalar_type(), " differs from v's ",
              v.scalar_type(), " (cast dout with .to(v.dtype))");
  TORCH_CHECK(k >= 1 && k % 2 == 1, op, ": the kernel size k must be odd and positive, got ", k);
  const int64_t B = v.size(0), heads = v.size(1), D = v.size(2), N = v.size(3), C = heads * D;
  TORCH_CHECK(H >= 0 && W >= 0 && H * W == N, op, ": H * W = ", H, " * ", W, " must equal the token count N = ", N,
              " of v (B, heads, head_dim, N)");
  at::Tensor dw = at::zeros({C, 1, k, k}, v.options());
  at::Tensor db = at::zeros({C}, v.options());
  if (B == 0 || C == 0 || N == 0) return {dw, db};
  const PlaneGeometry G(H, W, k);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const Planes<T> dp(dout), vp(v);
    T* dwp = dw.data_ptr<T>();
    T* dbp = db.data_ptr<T>();
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) { wgrad_channels<T>(dp, vp, B, G, dwp, dbp, c0, c1); });
  };
  switch (v.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(at::Half{}); break;
    default: run(at::BFloat16{}); break;
  }
  return {dw, db};
}

template <typename T>
struct PeArgs {
  const T* v = nullptr;
  int64_t v_sb = 0, v_sh = 0, v_sd = 0, v_st = 0;
  const T* x = nullptr;
  int64_t x_sb = 0, x_sh = 0, x_sd = 0, x_st = 0;
  T* out = nullptr;  // contiguous (B, heads, D, N)
  int64_t heads = 0, D = 0;
};

template <typename T, typename W>
void pe_planes(const PeArgs<T>& A, const PlaneGeometry& G, const W* weight, const int64_t* wstr, const W* bias,
               int64_t bias_stride, int64_t begin, int64_t end) {
  const int64_t C = A.heads * A.D, N = G.H * G.W, k = G.k;
  const auto conv = dwconv_plane_kernel();
  std::vector<float> buf(G.rows * G.stride, 0.f), res(std::is_same_v<T, float> ? 0 : N), w(k * k);
  for (int64_t plane = begin; plane < end; ++plane) {
    const int64_t b = plane / C, c = plane % C, h = c / A.D, d = c % A.D;
    // the plane, converted to fp32, inside its zero border (the border is never written, so it stays zero)
    const T* src = A.v + b * A.v_sb + h * A.v_sh + d * A.v_sd;
    for (int64_t y = 0; y < G.H; ++y) {
      float* row = buf.data() + (y + G.pad) * G.stride + G.pad;
      load_row(src + y * G.W * A.v_st, A.v_st, G.W, row);
    }
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) w[i * k + j] = static_cast<float>(weight[c * wstr[0] + i * wstr[2] + j * wstr[3]]);
    const float bv = bias != nullptr ? static_cast<float>(bias[c * bias_stride]) : 0.f;
    T* dst = A.out + plane * N;  // (b * C + c) * N: out is contiguous
    float* acc = std::is_same_v<T, float> ? reinterpret_cast<float*>(dst) : res.data();
    conv(G, buf.data(), w.data(), bv, acc);
    if (A.x != nullptr) {
      const T* xs = A.x + b * A.x_sb + h * A.x_sh + d * A.x_sd;
      for (int64_t t = 0; t < N; ++t) acc[t] += static_cast<float>(xs[t * A.x_st]);
    }
    if constexpr (!std::is_same_v<T, float>)
      for (int64_t t = 0; t < N; ++t) dst[t] = static_cast<T>(acc[t]);
  }
}

at::Tensor pe_add_cpu(const at::Tensor& v, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& x, int64_t H, int64_t W) {
  const char* op = "pe_add_cxx";
  TORCH_CHECK(v.dim() == 4, op, ": v must be 4-D (B, heads, head_dim, N = H*W), got shape ", v.sizes());
  TORCH_CHECK(v.device().is_cpu() && weight.device().is_cpu(), op,
              ": this is the CPU kernel; v and weight must be CPU tensors, got ", v.device(), " and ", weight.device());
  TORCH_CHECK(is_float_type(v.scalar_type()), op, ": v has dtype ", v.scalar_type(),
              "; use float32, float16 or bfloat16");
  const int64_t B = v.size(0), heads = v.size(1), D = v.size(2), N = v.size(3), C = heads * D;
  TORCH_CHECK(H >= 0 && W >= 0 && H * W == N, op, ": H * W = ", H, " * ", W, " must equal the token count N = ", N,
              " of v (B, heads, head_dim, N)");
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == weight.size(3) &&
                  weight.size(2) % 2 == 1,
              op, ": weight must be a depthwise kernel (heads*head_dim, 1, k, k) = (", C, ", 1, k, k) with odd k, got ",
              weight.sizes(), " (pass the pe conv's weight, BatchNorm folded in)");
  TORCH_CHECK(is_float_type(weight.scalar_type()), op, ": weight has dtype ", weight.scalar_type(),
              "; use float32, float16 or bfloat16");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == C, op, ": bias must have shape (", C, ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type(), op, ": bias dtype ", bias->scalar_type(),
                " differs from weight's ", weight.scalar_type());
    TORCH_CHECK(bias->device().is_cpu(), op, ": bias must be a CPU tensor, got ", bias->device());
  }
  if (x.has_value()) {
    TORCH_CHECK(x->sizes() == v.sizes(), op, ": x must have the shape of v ", v.sizes(), ", got ", x->sizes());
    TORCH_CHECK(x->scalar_type() == v.scalar_type(), op, ": x dtype ", x->scalar_type(), " differs from v's ",
                v.scalar_type());
    TORCH_CHECK(x->device().is_cpu(), op, ": x must be a CPU tensor, got ", x->device());
  }
  at::Tensor out = at::empty({B, heads, D, N}, v.options());
  if (out.numel() == 0) return out;
  const PlaneGeometry G(H, W, weight.size(2));
  const int64_t wstr[4] = {weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3)};

  auto run = [&](auto vtag, auto wtag) {
    using T = decltype(vtag);
    using Wt = decltype(wtag);
    PeArgs<T> A;
    A.v = v.const_data_ptr<T>(), A.v_sb = v.stride(0), A.v_sh = v.stride(1), A.v_sd = v.stride(2), A.v_st = v.stride(3);
    if (x.has_value())
      A.x = x->const_data_ptr<T>(), A.x_sb = x->stride(0), A.x_sh = x->stride(1), A.x_sd = x->stride(2),
      A.x_st = x->stride(3);
    A.out = out.data_ptr<T>(), A.heads = heads, A.D = D;
    const Wt* wp = weight.const_data_ptr<Wt>();
    const Wt* bp = bias.has_value() ? bias->const_data_ptr<Wt>() : nullptr;
    const int64_t bs = bias.has_value() ? bias->stride(0) : 0;
    at::parallel_for(0, B * C, 1, [&](int64_t p0, int64_t p1) { pe_planes<T, Wt>(A, G, wp, wstr, bp, bs, p0, p1); });
  };
  auto with_weight = [&](auto vtag) {
    switch (weight.scalar_type()) {
      case at::kFloat: run(vtag, float{}); break;
      case at::kHalf: run(vtag, at::Half{}); break;
      default: run(vtag, at::BFloat16{}); break;
    }
  };
  switch (v.scalar_type()) {
    case at::kFloat: with_weight(float{}); break;
    case at::kHalf: with_weight(at::Half{}); break;
    default: with_weight(at::BFloat16{}); break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(yolov12_fast, CPU, m) {
  m.impl("pe_add_cxx", &pe_add_cpu);
  m.impl("pe_add_wgrad_cxx", &pe_add_wgrad_cpu);
}

}  // namespace yolov12_fast
