// csrc/cuda/area_attention_fwd.cu and area_attention_bwd.cu compiled for the CPU emulator (cuda_emu.h), behind C
// entry points that tests/test_cuda_emu.py calls through ctypes. The kernels, their launch plans and launchers are
// the CUDA build's; the caller picks the device it answers as (shared memory limits: which plan, resident or
// streamed; SM count: whether the tile split runs).
#include "area_attention_fwd.cu"
#include "area_attention_bwd.cu"
#include "emu_args.h"

using namespace yf_emu_args;

extern "C" {

// out, lse = area attention of (B, heads, D, N) q, k, v with element strides (arrays of 4: b, h, d, n), plus
// residual (or nullptr); out contiguous (B, heads, D, N), lse (B, heads, N) float32. dtype: 0 float16, 1 bfloat16.
// device: sm_count, cc_major, cc_minor, smem_per_block_optin, smem_per_sm. Returns the cudaError_t (0: success).
// Warps per CTA of the forward launches and plans below (AreaAttnFwdArgs::warps; 0 = the kernel's default).
static int g_fwd_warps = 0;
void yf_emu_set_fwd_warps(int warps) { g_fwd_warps = warps; }
// Whether the launches below stage through registers where cp.async is compiled (Args::register_staging).
static bool g_register_staging = false;
void yf_emu_set_register_staging(int on) { g_register_staging = on != 0; }
// Keys per online-softmax step of the forward launches and plans below (AreaAttnFwdArgs::key_block; 0 = default).
static int g_fwd_key_block = 0;
void yf_emu_set_fwd_key_block(int keys) { g_fwd_key_block = keys; }

int yf_emu_attention_fwd(const void* q, const void* k, const void* v, const void* residual, void* out, float* lse,
                         const int64_t* sq, const int64_t* sk, const int64_t* sv, const int64_t* sr, int64_t batch,
                         int64_t heads, int64_t head_dim, int64_t tokens, int64_t area, float scale, int dtype,
                         const int* dev) {
  kc::AreaAttnFwdArgs a{};
  set_qkv(a, q, k, v, sq, sk, sv, batch, heads, head_dim, tokens, area, scale, dtype);
  a.residual = residual;
  a.out = out;
  a.lse = lse;
  a.sr = strides(sr);
  a.warps = g_fwd_warps;
  a.key_block = g_fwd_key_block;
  a.register_staging = g_register_staging;
  return static_cast<int>(kc::area_attention_fwd(a, device(dev), nullptr));
}

// The launch plan: supported, resident, warps, chunk_keys, smem_row, smem_bytes -> out[0..6).
void yf_emu_attention_plan(int64_t n, int64_t head_dim, const int* dev, int* out) {
  plan_out(kc::area_attention_fwd_plan(n, head_dim, device(dev), g_fwd_warps, g_fwd_key_block), out);
}

// dq, dk, dv (each contiguous (B, heads, D, N)) from dout (strides sdo), the forward's out (strides so) with its
// residual (strides sr, or nullptr), lse ((B, heads, N) float32, contiguous); delta: (B, heads, N) float32 scratch
// the launcher fills. Returns the cudaError_t.
int yf_emu_attention_bwd(const void* q, const void* k, const void* v, const void* dout, const void* out,
                         const void* residual, const float* lse, float* delta, void* dq, void* dk, void* dv,
                         const int64_t* sq, const int64_t* sk, const int64_t* sv, const int64_t* sdo,
                         const int64_t* so, const int64_t* sr, int64_t batch, int64_t heads, int64_t head_dim,
                         int64_t tokens, int64_t area, float scale, int dtype, const int* dev) {
  kc::AreaAttnBwdArgs a{};
  set_qkv(a, q, k, v, sq, sk, sv, batch, heads, head_dim, tokens, area, scale, dtype);
  a.dout = dout;
  a.out = out;
  a.residual = residual;
  a.lse = lse;
  a.delta = delta;
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  a.sdout = strides(sdo);
  a.sout = strides(so);
  a.sres = strides(sr);
  a.register_staging = g_register_staging;
  return static_cast<int>(kc::area_attention_bwd(a, device(dev), nullptr));
}

void yf_emu_attention_bwd_plan(int64_t n, int64_t head_dim, const int* dev, int* out) {
  plan_out(kc::area_attention_bwd_plan(n, head_dim, device(dev)), out);
}

// Launches from now on allocate `bytes` less shared memory than they ask for (cuda_emu.h's smem_shortfall).
void yf_emu_set_smem_shortfall(int64_t bytes) { yf_emu::smem_shortfall = static_cast<size_t>(bytes); }

// The emulated ldmatrix calls since the last reset: matrices loaded and extra shared-memory wavefronts from bank
// conflicts (cuda_emu.h) -> out[0], out[1].
void yf_emu_ldmatrix_stats(long long* out, int reset) {
  out[0] = yf_emu::ldmatrix_matrices.load();
  out[1] = yf_emu::ldmatrix_extra_wavefronts.load();
  if (reset) yf_emu::ldmatrix_matrices = yf_emu::ldmatrix_extra_wavefronts = 0;
}

// The emulated cp.async copies since the last reset -> out[0], and those a thread left unwaited at its exit -> out[1]
// (they never landed).
void yf_emu_cp_async_stats(long long* out, int reset) {
  out[0] = yf_emu::cp_async_copies.load();
  out[1] = yf_emu::cp_async_unwaited.load();
  if (reset) yf_emu::cp_async_copies = yf_emu::cp_async_unwaited = 0;
}

}  // extern "C"

namespace {
__global__ void ldmatrix_probe_kernel(uint32_t row_stride_bytes, bool trans) {
  uint32_t r[4];
  yf_emu::ldmatrix_x4(r, (threadIdx.x & 31) * row_stride_bytes, trans);
}
}  // namespace

extern "C" {
// One warp's ldmatrix.x4 of 32 rows `row_stride_bytes` apart (the counter's own check): returns the launch's error.
int yf_emu_ldmatrix_probe(unsigned row_stride_bytes, int trans) {
  return static_cast<int>(yolov12_fast::cuda::launch_kernel(ldmatrix_probe_kernel, dim3(1), dim3(32),
                                                             32 * row_stride_bytes, nullptr, row_stride_bytes,
                                                             trans != 0));
}
}  // extern "C"
