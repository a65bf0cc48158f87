// Torch glue of the CUDA kernels: argument checks with messages that say what to do, device guard, current
// stream, output allocation, and the CUDA implementations of the yolov12_fast::*_cxx ops declared in
// csrc/ops.cpp. The kernels themselves are torch-free (csrc/cuda/*.cu, interface in kernels.h). No host syncs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>

#include "kernels.h"

namespace {

namespace kc = yolov12_fast::cuda;

kc::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return kc::DType::kFloat16;
    case at::kBFloat16: return kc::DType::kBFloat16;
    default: return kc::DType::kFloat32;
  }
}

kc::Strides4 strides4(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

kc::DeviceInfo device_info(const at::Tensor& t) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(t.get_device());  // cached by torch
  kc::DeviceInfo d{};
  d.sm_count = prop->multiProcessorCount;
  d.cc_major = prop->major;
  d.cc_minor = prop->minor;
  d.smem_per_block_optin = static_cast<int>(prop->sharedMemPerBlockOptin);
  d.smem_per_sm = static_cast<int>(prop->sharedMemPerMultiprocessor);
  return d;
}

// The arguments both attention launchers take from q, k, v: pointers, strides, sizes, area, scale, dtype.
template <typename Args>
void set_qkv(Args& a, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t area, double scale) {
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.sq = strides4(q);
  a.sk = strides4(k);
  a.sv = strides4(v);
  a.batch = q.size(0);
  a.heads = q.size(1);
  a.head_dim = q.size(2);
  a.tokens = q.size(3);
  a.area = area;
  a.scale = static_cast<float>(scale);
  a.dtype = kernel_dtype(q.scalar_type());
}

// The checks both attention ops make on q, k, v and area (readable errors before any kernel is involved).
void check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t area) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), op, ": q, k, v must be CUDA tensors, got ", q.device(),
              ", ", k.device(), ", ", v.device());
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), op, ": q, k, v must be on one device, got ",
              q.device(), ", ", k.device(), ", ", v.device());
  TORCH_CHECK(q.dim() == 4, op, ": q, k, v must be 4-D (B, heads, head_dim, N), got shape ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op, ": q, k, v must have the same shape, got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype != at::kFloat, op, ": the tensor-core kernel takes float16 or bfloat16; for float32 inputs use "
              "backend='triton' (GPU) or convert q, k, v to float16/bfloat16");
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, op, ": dtype ", dtype,
              " is not supported; use float16 or bfloat16");
  const int64_t B = q.size(0), heads = q.size(1), D = q.size(2), N = q.size(3);
  TORCH_CHECK(kc::area_attention_fwd_supports_head_dim(D), op, ": head_dim ", D,
              " is not supported by the CUDA C++ kernel (it is specialised for head_dim 32 and 64); use "
              "backend='triton'");
  TORCH_CHECK(area >= 1, op, ": area must be >= 1, got ", area);
  TORCH_CHECK(N % area == 0, op, ": N = H*W = ", N, " tokens is not divisible by area = ", area,
              "; pad the feature map (ultralytics pads inputs to multiples of 32)");
  TORCH_CHECK(N < (int64_t(1) << 31) && B * heads * area < (int64_t(1) << 31), op, ": too many tokens or sequences (N = ",
              N, ", B*heads*area = ", B * heads * area, ")");
}

// The checks on the GPU (arch, and the code this build runs on it for the dtype); q's device must be current.
kc::DeviceInfo check_device(const char* op, const at::Tensor& q) {
  const auto dtype = q.scalar_type();
  const kc::DeviceInfo dev = device_info(q);
  TORCH_CHECK(dev.cc_major * 10 + dev.cc_minor >= 75, op, ": needs compute capability 7.5 (Turing) or newer; this GPU is ",
              dev.cc_major, ".", dev.cc_minor);
  TORCH_CHECK(dtype != at::kBFloat16 || dev.cc_major >= 8, op,
              ": bfloat16 tensor-core MMA needs compute capability 8.0 (Ampere) or newer; this GPU is ", dev.cc_major,
              ".", dev.cc_minor, ": use float16 (or backend='triton')");
  if (q.numel() == 0) return dev;
  const int code_arch = kc::area_attention_fwd_code_arch(kernel_dtype(dtype), q.size(2));
  const int needed = kc::area_attention_fwd_required_arch(kernel_dtype(dtype));
  TORCH_CHECK(code_arch <= 0 || code_arch >= needed, op, ": this build of yolov12_fast._C has no ", dtype,
              " kernel for this GPU (", dev.cc_major, ".", dev.cc_minor, "): it runs code compiled for compute_",
              code_arch, ", which lacks the tensor-core instructions (", dtype, " needs compute_", needed,
              "). Rebuild with 8.0 in TORCH_CUDA_ARCH_LIST (the default \"7.5;8.0+PTX;9.0a\" has it), or use ",
              "backend='triton'");
  return dev;
}

// Warps per CTA of the forward kernel: $YOLOV12_FAST_CUDA_FWD_WARPS when set (a tuning knob: benchmarks/fwd_warps.py
// times each count on the GPU it runs on), else 0 (the kernel's default). Read at each call (a getenv: ~0.1 us).
int fwd_warps(const char* op, int64_t head_dim, kc::DType dtype, int key_block) {
  const char* env = std::getenv("YOLOV12_FAST_CUDA_FWD_WARPS");
  if (env == nullptr || *env == '\0') return 0;
  char* end = nullptr;
  const long w = std::strtol(env, &end, 10);
  const int most =
      kc::area_attention_fwd_max_warps(head_dim, kc::area_attention_fwd_code_arch(dtype, head_dim), key_block);
  TORCH_CHECK(end != env && *end == '\0' && w >= 0 && w <= most, op, ": YOLOV12_FAST_CUDA_FWD_WARPS=", env,
              " is not a warp count the head_dim ", head_dim, " kernel", key_block ? " with 32-key steps" : "",
              " takes (0 = default, 1..", most, "); unset it or set it to one of those");
  return (int)w;
}

// Keys per online-softmax step of the forward kernel: $YOLOV12_FAST_CUDA_FWD_KEYS = "32" runs the head_dim-32
// kernel's 32-key variant (80 registers: 3 CTAs of 8 warps per SM), "64" or unset the default; an A/B knob for
// benchmarks/fwd_warps.py, read at each call like the warps. Results differ from the default's by rounding only
// (the running max is taken over other key blocks).
int fwd_key_block(const char* op, int64_t head_dim) {
  const char* env = std::getenv("YOLOV12_FAST_CUDA_FWD_KEYS");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "64") == 0) return 0;
  TORCH_CHECK(std::strcmp(env, "32") == 0, op, ": YOLOV12_FAST_CUDA_FWD_KEYS=", env,
              " is not a key-block size (\"64\", the default, or \"32\"); unset it or set it to one of those");
  TORCH_CHECK(kc::area_attention_fwd_supports_key_block(head_dim, 32), op,
              ": YOLOV12_FAST_CUDA_FWD_KEYS=32 is for head_dim 32, got head_dim ", head_dim, "; unset it");
  return 32;
}

// How the attention kernels stage K / V into shared memory: $YOLOV12_FAST_CUDA_STAGING = "registers" keeps the
// register path where cp.async is compiled (sm_80+), "async" or unset the default (cp.async); an A/B knob for
// benchmarks/fwd_warps.py, read at each call like the warps.
bool register_staging(const char* op) {
  const char* env = std::getenv("YOLOV12_FAST_CUDA_STAGING");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "async") == 0) return false;
  TORCH_CHECK(std::strcmp(env, "registers") == 0, op, ": YOLOV12_FAST_CUDA_STAGING=", env,
              " is not a staging mode (\"async\", the default, or \"registers\"); unset it or set it to one of those");
  return true;
}

std::tuple<at::Tensor, at::Tensor> area_attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, int64_t area, double scale,
                                                            const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "area_attention_fwd_cxx (CUDA)";
  check_qkv(op, q, k, v, area);
  const auto dtype = q.scalar_type();
  const int64_t B = q.size(0), heads = q.size(1), D = q.size(2), N = q.size(3);
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK(r.sizes() == q.sizes(), op, ": residual must have the shape of q ", q.sizes(), ", got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == dtype, op, ": residual dtype ", r.scalar_type(), " differs from q's ", dtype);
    TORCH_CHECK(r.device() == q.device(), op, ": residual is on ", r.device(), ", q on ", q.device());
  }

  c10::cuda::CUDAGuard guard(q.device());
  const kc::DeviceInfo dev = check_device(op, q);
  at::Tensor out = at::empty(q.sizes(), q.options());  // contiguous (B, heads, D, N)
  at::Tensor lse = at::empty({B, heads, N}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};  // before the plan: no tokens is no launch, not "does not fit"

  const int key_block = fwd_key_block(op, D);
  const int warps = fwd_warps(op, D, kernel_dtype(dtype), key_block);
  const kc::AreaAttnFwdPlan plan = kc::area_attention_fwd_plan(N / area, D, dev, warps, key_block);
  TORCH_CHECK(plan.supported, op, ": head_dim ", D, " does not fit this GPU's shared memory (",
              dev.smem_per_block_optin, " bytes per block); use backend='triton'");

  kc::AreaAttnFwdArgs a{};
  set_qkv(a, q, k, v, area, scale);
  a.warps = warps;
  a.key_block = key_block;
  a.register_staging = register_staging(op);
  a.residual = residual.has_value() ? residual->data_ptr() : nullptr;
  a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  a.sr = residual.has_value() ? strides4(*residual) : kc::Strides4{0, 0, 0, 0};
  C10_CUDA_CHECK(kc::area_attention_fwd(a, dev, at::cuda::getCurrentCUDAStream()));
  return {out, lse};
}

// dq, dk, dv (contiguous); the kernels compute delta = rowsum(dout * (out - residual)) into a scratch buffer, then the
// gradients, recomputing the probabilities from lse.
std::tuple<at::Tensor, at::Tensor, at::Tensor> area_attention_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const std::optional<at::Tensor>& residual, const at::Tensor& lse, int64_t area, double scale) {
  constexpr const char* op = "area_attention_bwd_cxx (CUDA)";
  check_qkv(op, q, k, v, area);
  const auto dtype = q.scalar_type();
  const int64_t B = q.size(0), heads = q.size(1), D = q.size(2), N = q.size(3);
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(), op, ": dout and out must have q's shape ",
              q.sizes(), ", got ", dout.sizes(), " and ", out.sizes());
  TORCH_CHECK(dout.scalar_type() == dtype && out.scalar_type() == dtype, op, ": dout and out must have q's dtype ",
              dtype, " (cast dout with .to(q.dtype))");
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == B && lse.size(1) == heads && lse.size(2) == N &&
              lse.scalar_type() == at::kFloat, op, ": lse must be float32 (B, heads, N), got ", lse.sizes(), " ",
              lse.scalar_type());
  TORCH_CHECK(dout.device() == q.device() && out.device() == q.device() && lse.device() == q.device(), op,
              ": dout, out and lse must be on q's device ", q.device());
  if (residual.has_value())
    TORCH_CHECK(residual->sizes() == q.sizes() && residual->device() == q.device() && residual->scalar_type() == dtype,
                op, ": residual must have q's shape, dtype and device");
  TORCH_CHECK(B * heads <= 65535, op, ": batch * heads must be <= 65535, got ", B * heads);

  c10::cuda::CUDAGuard guard(q.device());
  const kc::DeviceInfo dev = check_device(op, q);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  if (q.numel() == 0) return {dq, dk, dv};
  const kc::AreaAttnFwdPlan plan = kc::area_attention_bwd_plan(N / area, D, dev);
  TORCH_CHECK(plan.supported, op, ": head_dim ", D, " does not fit this GPU's shared memory (",
              dev.smem_per_block_optin, " bytes per block); use backend='triton'");
  at::Tensor delta = at::empty({B, heads, N}, q.options().dtype(at::kFloat));
  const at::Tensor lse_c = lse.contiguous();

  kc::AreaAttnBwdArgs a{};
  set_qkv(a, q, k, v, area, scale);
  a.dout = dout.data_ptr();
  a.out = out.data_ptr();
  a.residual = residual.has_value() ? residual->data_ptr() : nullptr;
  a.lse = lse_c.data_ptr<float>();
  a.delta = delta.data_ptr<float>();
  a.dq = dq.data_ptr();
  a.dk = dk.data_ptr();
  a.dv = dv.data_ptr();
  a.sdout = strides4(dout);
  a.sout = strides4(out);
  a.sres = residual.has_value() ? strides4(*residual) : kc::Strides4{0, 0, 0, 0};
  a.register_staging = register_staging(op);
  C10_CUDA_CHECK(kc::area_attention_bwd(a, dev, at::cuda::getCurrentCUDAStream()));
  return {dq, dk, dv};
}

// The checks both PE ops make of v and its plane (B, heads, head_dim, N = H * W), and the launch fields they share.
void check_pe_plane(const char* op, const at::Tensor& v, int64_t H, int64_t W) {
  TORCH_CHECK(v.is_cuda(), op, ": v must be a CUDA tensor, got ", v.device());
  TORCH_CHECK(v.dim() == 4, op, ": v must be 4-D (B, heads, head_dim, N = H*W), got shape ", v.sizes());
  const auto dtype = v.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat, op, ": v has dtype ", dtype,
              "; use float16, bfloat16 or float32");
  const int64_t B = v.size(0), C = v.size(1) * v.size(2), N = v.size(3);
  TORCH_CHECK(H >= 0 && W >= 0 && H * W == N, op, ": H*W = ", H, "*", W, " must equal the token count N = ", N);
  TORCH_CHECK(B <= 65535 && C <= 65535, op, ": batch and channels must be <= 65535, got ", B, " and ", C);
  TORCH_CHECK(H < (int64_t(1) << 30) && W < (int64_t(1) << 30), op, ": H and W must each be < 2**30, got ", H, " x ",
              W, "; use backend='reference'");
}

void check_pe_ksize(const char* op, int64_t ks) {
  TORCH_CHECK(kc::pe_add_supports_ksize(static_cast<int>(ks)), op, ": kernel size ", ks,
              " is not supported by the CUDA kernel (3, 5 and 7 are); use backend='reference'");
}

void set_pe_plane(kc::PePlane& a, const at::Tensor& v, int64_t H, int64_t W, int64_t ks) {
  a.v = v.data_ptr();
  a.sv = strides4(v);
  a.batch = v.size(0);
  a.heads = v.size(1);
  a.head_dim = v.size(2);
  a.H = H;
  a.W = W;
  a.ksize = static_cast<int>(ks);
  a.dtype = kernel_dtype(v.scalar_type());
}

at::Tensor pe_add_cuda(const at::Tensor& v, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& x, int64_t H, int64_t W) {
  constexpr const char* op = "pe_add_cxx (CUDA)";
  check_pe_plane(op, v, H, W);
  const auto dtype = v.scalar_type();
  const int64_t C = v.size(1) * v.size(2);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == weight.size(3),
              op, ": weight must be a depthwise (", C, ", 1, k, k) kernel, got ", weight.sizes());
  const int64_t ks = weight.size(2);
  check_pe_ksize(op, ks);
  TORCH_CHECK(weight.scalar_type() == dtype && weight.device() == v.device(), op,
              ": weight must match v's dtype and device (", dtype, ", ", v.device(), "), got ", weight.scalar_type(),
              ", ", weight.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == C && bias->scalar_type() == dtype && bias->device() == v.device(),
                op, ": bias must be (", C, ",) with v's dtype and device, got ", bias->sizes(), " ",
                bias->scalar_type(), " ", bias->device());
  }
  if (x.has_value()) {
    TORCH_CHECK(x->sizes() == v.sizes() && x->scalar_type() == dtype && x->device() == v.device(), op,
                ": x must have v's shape, dtype and device, got ", x->sizes(), " ", x->scalar_type(), " ", x->device());
  }

  c10::cuda::CUDAGuard guard(v.device());
  at::Tensor out = at::empty(v.sizes(), v.options());  // contiguous (B, heads, D, N)
  if (out.numel() == 0) return out;

  kc::PeAddArgs a{};
  set_pe_plane(a, v, H, W, ks);
  a.weight = weight.data_ptr();
  a.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  a.x = x.has_value() ? x->data_ptr() : nullptr;
  a.out = out.data_ptr();
  a.sx = x.has_value() ? strides4(*x) : kc::Strides4{0, 0, 0, 0};
  a.w_c = weight.stride(0);
  a.w_y = weight.stride(2);
  a.w_x = weight.stride(3);
  a.bias_c = bias.has_value() ? bias->stride(0) : 0;
  C10_CUDA_CHECK(kc::pe_add(a, at::cuda::getCurrentCUDAStream()));
  return out;
}

// pe_add's weight and bias gradients on CUDA: the kernel's fp32 sums per (image, tile), summed over images and tiles
// by at::sum (a fixed order: deterministic), rounded once to v's dtype. Same contract as the CPU kernel.
std::tuple<at::Tensor, at::Tensor> pe_add_wgrad_cuda(const at::Tensor& dout, const at::Tensor& v, int64_t k, int64_t H,
                                                     int64_t W) {
  constexpr const char* op = "pe_add_wgrad_cxx (CUDA)";
  TORCH_CHECK(v.dim() == 4 && dout.dim() == 4, op, ": v and dout must be 4-D (B, heads, head_dim, N = H*W), got ",
              v.sizes(), " and ", dout.sizes());
  TORCH_CHECK(dout.sizes() == v.sizes(), op, ": dout must have v's shape ", v.sizes(), ", got ", dout.sizes());
  TORCH_CHECK(v.is_cuda() && dout.device() == v.device(), op, ": v and dout must be on one CUDA device, got ",
              v.device(), " and ", dout.device());
  check_pe_plane(op, v, H, W);
  const auto dtype = v.scalar_type();
  TORCH_CHECK(dout.scalar_type() == dtype, op, ": dout dtype ", dout.scalar_type(), " differs from v's ", dtype,
              " (cast dout with .to(v.dtype))");
  TORCH_CHECK(k >= 1 && k % 2 == 1, op, ": the kernel size k must be odd and positive, got ", k);
  check_pe_ksize(op, k);

  const int64_t B = v.size(0), C = v.size(1) * v.size(2), N = v.size(3);
  c10::cuda::CUDAGuard guard(v.device());
  if (B == 0 || C == 0 || N == 0) return {at::zeros({C, 1, k, k}, v.options()), at::zeros({C}, v.options())};
  const int64_t tiles = kc::pe_wgrad_tiles(H, W, static_cast<int>(k));
  at::Tensor partial = at::empty({B * tiles, C, k * k + 1}, v.options().dtype(at::kFloat));
  kc::PeWgradArgs a{};
  set_pe_plane(a, v, H, W, k);
  a.dout = dout.data_ptr();
  a.partial = partial.data_ptr<float>();
  a.sdout = strides4(dout);
  C10_CUDA_CHECK(kc::pe_wgrad(a, at::cuda::getCurrentCUDAStream()));
  const at::Tensor sums = partial.sum(0);  // (C, k * k + 1)
  return {sums.narrow(1, 0, k * k).reshape({C, 1, k, k}).to(dtype), sums.select(1, k * k).to(dtype)};
}

}  // namespace

// How a (B, C, H, W) tensor lies for bias_act: planes (each (image, channel)'s H*W elements consecutive), tokens (each
// (image, token)'s C channels consecutive, tokens `step` apart), or neither. (b, c, t) element strides into `s`.
int bias_act_layout(const at::Tensor& t, int64_t s[3]) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  s[0] = t.stride(0);
  s[1] = t.stride(1);
  s[2] = 1;
  if ((W == 1 || t.stride(3) == 1) && (H == 1 || t.stride(2) == (W == 1 ? 1 : W))) return 0;
  if (C == 1 || t.stride(1) == 1) {
    const int64_t step = W > 1 ? t.stride(3) : (H > 1 ? t.stride(2) : C);
    if ((H == 1 || W == 1 || t.stride(2) == W * step) && (H * W == 1 || step >= C)) {
      s[1] = 1;
      s[2] = step;
      return 1;
    }
  }
  return -1;
}

void bias_act_cuda(const at::Tensor& y, const at::Tensor& bias, bool silu, const at::Tensor& out) {
  constexpr const char* op = "bias_act_cxx (CUDA)";
  TORCH_CHECK(y.dim() == 4, op, ": y must be 4-D (B, C, H, W), got ", y.sizes());
  TORCH_CHECK(y.is_cuda() && out.device() == y.device() && bias.device() == y.device(), op,
              ": y, bias and out must be on one CUDA device, got ", y.device(), ", ", bias.device(), ", ", out.device());
  TORCH_CHECK(out.sizes() == y.sizes() && out.scalar_type() == y.scalar_type(), op,
              ": out must have y's shape and dtype (", y.sizes(), ", ", y.scalar_type(), "), got ", out.sizes(), ", ",
              out.scalar_type());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == y.size(1) && bias.scalar_type() == y.scalar_type(), op,
              ": bias must be (", y.size(1), ",) with y's dtype, got ", bias.sizes(), " ", bias.scalar_type());
  TORCH_CHECK(y.scalar_type() == at::kHalf || y.scalar_type() == at::kBFloat16 || y.scalar_type() == at::kFloat, op,
              ": y has dtype ", y.scalar_type(), "; use float16, bfloat16 or float32");
  const auto dtype = kernel_dtype(y.scalar_type());
  int64_t ys[3], os[3];
  const int ly = bias_act_layout(y, ys), lo = bias_act_layout(out, os);
  TORCH_CHECK(ly >= 0 && ly == lo, op, ": y and out must both be NCHW-like (each channel's H*W map contiguous) or "
              "both channels_last-like (each pixel's channels contiguous), got strides ", y.strides(), " and ",
              out.strides(), " (make them .contiguous() in one memory format)");
  c10::cuda::CUDAGuard guard(y.device());
  kc::BiasActArgs a{};
  a.y = y.data_ptr();
  a.out = out.data_ptr();
  a.bias = bias.data_ptr();
  a.B = y.size(0);
  a.C = y.size(1);
  a.HW = y.size(2) * y.size(3);
  a.y_sb = ys[0], a.y_sc = ys[1], a.y_st = ys[2];
  a.o_sb = os[0], a.o_sc = os[1], a.o_st = os[2];
  a.bias_c = bias.stride(0);
  a.layout = ly == 0 ? kc::BiasActLayout::kPlanes : kc::BiasActLayout::kTokens;
  a.silu = silu;
  a.dtype = dtype;
  C10_CUDA_CHECK(kc::bias_act(a, at::cuda::getCurrentCUDAStream()));
}

TORCH_LIBRARY_IMPL(yolov12_fast, CUDA, m) {
  m.impl("bias_act_cxx", &bias_act_cuda);
  m.impl("area_attention_fwd_cxx", &area_attention_fwd_cuda);
  m.impl("area_attention_bwd_cxx", &area_attention_bwd_cuda);
  m.impl("pe_add_cxx", &pe_add_cuda);
  m.impl("pe_add_wgrad_cxx", &pe_add_wgrad_cuda);
}
