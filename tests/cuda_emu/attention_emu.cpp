// csrc/cuda/area_attention_fwd.cu and area_attention_bwd.cu compiled for the CPU emulator (cuda_emu.h), behind C
// entry points that tests/test_cuda_emu.py calls through ctypes. The kernels, their launch plans and launchers are
// the CUDA build's; the caller picks the device it answers as (shared memory limits: which plan, resident or
// streamed; SM count: whether the tile split runs).
#include "area_attention_fwd.cu"
#include "area_attention_bwd.cu"

extern "C" {

// out, lse = area attention of (B, heads, D, N) q, k, v with element strides (arrays of 4: b, h, d, n), plus
// residual (or nullptr); out contiguous (B, heads, D, N), lse (B, heads, N) float32. dtype: 0 float16, 1 bfloat16.
// device: sm_count, cc_major, cc_minor, smem_per_block_optin, smem_per_sm. Returns the cudaError_t (0: success).
int yf_emu_attention_fwd(const void* q, const void* k, const void* v, const void* residual, void* out, float* lse,
                         const int64_t* sq, const int64_t* sk, const int64_t* sv, const int64_t* sr, int64_t batch,
                         int64_t heads, int64_t head_dim, int64_t tokens, int64_t area, float scale, int dtype,
                         const int* device) {
  namespace kc = yolov12_fast::cuda;
  kc::AreaAttnFwdArgs a{};
  a.q = q;
  a.k = k;
  a.v = v;
  a.residual = residual;
  a.out = out;
  a.lse = lse;
  a.sq = {sq[0], sq[1], sq[2], sq[3]};
  a.sk = {sk[0], sk[1], sk[2], sk[3]};
  a.sv = {sv[0], sv[1], sv[2], sv[3]};
  if (sr) a.sr = {sr[0], sr[1], sr[2], sr[3]};
  a.batch = batch;
  a.heads = heads;
  a.head_dim = head_dim;
  a.tokens = tokens;
  a.area = area;
  a.scale = scale;
  a.dtype = static_cast<kc::DType>(dtype);
  const kc::DeviceInfo dev{device[0], device[1], device[2], device[3], device[4]};
  return static_cast<int>(kc::area_attention_fwd(a, dev, nullptr));
}

// The launch plan: supported, resident, warps, chunk_keys, smem_row, smem_bytes -> out[0..6).
void yf_emu_attention_plan(int64_t n, int64_t head_dim, const int* device, int* out) {
  namespace kc = yolov12_fast::cuda;
  const kc::DeviceInfo dev{device[0], device[1], device[2], device[3], device[4]};
  const auto p = kc::area_attention_fwd_plan(n, head_dim, dev);
  const int vals[6] = {p.supported, p.resident, p.warps, p.chunk_keys, p.smem_row, p.smem_bytes};
  for (int i = 0; i < 6; ++i) out[i] = vals[i];
}

// dq, dk, dv (each contiguous (B, heads, D, N)) from dout (strides sdo), the forward's out (strides so) with its
// residual (strides sr, or nullptr), lse ((B, heads, N) float32, contiguous); delta: (B, heads, N) float32 scratch
// the launcher fills. Returns the cudaError_t.
int yf_emu_attention_bwd(const void* q, const void* k, const void* v, const void* dout, const void* out,
                         const void* residual, const float* lse, float* delta, void* dq, void* dk, void* dv,
                         const int64_t* sq, const int64_t* sk, const int64_t* sv, const int64_t* sdo,
                         const int64_t* so, const int64_t* sr, int64_t batch, int64_t heads, int64_t head_dim,
                         int64_t tokens, int64_t area, float scale, int dtype, const int* device) {
  namespace kc = yolov12_fast::cuda;
  kc::AreaAttnBwdArgs a{};
  a.q = q;
  a.k = k;
  a.v = v;
  a.dout = dout;
  a.out = out;
  a.residual = residual;
  a.lse = lse;
  a.delta = delta;
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  a.sq = {sq[0], sq[1], sq[2], sq[3]};
  a.sk = {sk[0], sk[1], sk[2], sk[3]};
  a.sv = {sv[0], sv[1], sv[2], sv[3]};
  a.sdout = {sdo[0], sdo[1], sdo[2], sdo[3]};
  a.sout = {so[0], so[1], so[2], so[3]};
  if (sr) a.sres = {sr[0], sr[1], sr[2], sr[3]};
  a.batch = batch;
  a.heads = heads;
  a.head_dim = head_dim;
  a.tokens = tokens;
  a.area = area;
  a.scale = scale;
  a.dtype = static_cast<kc::DType>(dtype);
  const kc::DeviceInfo dev{device[0], device[1], device[2], device[3], device[4]};
  return static_cast<int>(kc::area_attention_bwd(a, dev, nullptr));
}

void yf_emu_attention_bwd_plan(int64_t n, int64_t head_dim, const int* device, int* out) {
  namespace kc = yolov12_fast::cuda;
  const kc::DeviceInfo dev{device[0], device[1], device[2], device[3], device[4]};
  const auto p = kc::area_attention_bwd_plan(n, head_dim, dev);
  const int vals[6] = {p.supported, p.resident, p.warps, p.chunk_keys, p.smem_row, p.smem_bytes};
  for (int i = 0; i < 6; ++i) out[i] = vals[i];
}

}  // extern "C"
