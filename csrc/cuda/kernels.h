// Torch-free interface of the CUDA kernels in csrc/cuda/*.cu.
//
// The .cu files include only CUDA headers (they compile for three archs in seconds); csrc/cuda/ops_cuda.cpp is
// the torch glue (checks, device guard, stream, output allocation, registration). Every launcher takes raw
// pointers, sizes and element strides (int64), a cudaStream_t, and returns the launch's cudaError_t
// (cudaErrorInvalidValue / cudaErrorNotSupported for a configuration the kernels do not handle; the glue
// rejects those first with a readable message).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace yolov12_fast {
namespace cuda {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

// Element strides of a (B, heads, head_dim, N) tensor.
struct Strides4 {
  int64_t b, h, d, n;
};

// What the launchers need to know about the device (the glue fills it from torch's cached cudaDeviceProp).
struct DeviceInfo {
  int sm_count;
  int cc_major, cc_minor;
  int smem_per_block_optin;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int smem_per_sm;           // cudaDevAttrMaxSharedMemoryPerMultiprocessor
};

// ---------------------------------------------------------------------------------------------------------
// Area attention forward (csrc/cuda/area_attention_fwd.cu)

struct AreaAttnFwdArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* residual;  // nullptr: no residual
  void* out;             // contiguous (B, heads, head_dim, N), input dtype
  float* lse;            // contiguous (B, heads, N), natural log
  Strides4 sq, sk, sv, sr;
  int64_t batch, heads, head_dim, tokens, area;
  float scale;
  DType dtype;
  int warps = 0;  // warps per CTA: 0 = the plan's default (8 for head_dim 32, 4 for 64); 1..max_warps(head_dim)
  bool register_staging = false;  // stage K / V through registers even where cp.async is compiled (an A/B knob)
  int key_block = 0;  // keys per online-softmax step: 0 = the default (64); 32 (head_dim 32 only: an A/B variant
                      // with 80 registers, up to 8 warps per CTA); anything else is refused (cudaErrorInvalidValue)
};

// How a launch is laid out; a pure function of (tokens per area, head_dim, device): host code, no CUDA calls.
struct AreaAttnFwdPlan {
  bool supported;      // head_dim and smem allow a launch
  bool resident;       // the whole area's K and V sit in shared memory (else streamed in chunks)
  int warps;           // warps per CTA; each warp owns 16 query rows at a time
  int chunk_keys;      // keys per shared-memory K/V chunk (resident: tokens per area rounded up to 16)
  int smem_row;        // shared-memory row length in elements (chunk_keys + 8: an odd number of 16-byte units)
  int smem_bytes;      // dynamic shared memory per CTA
};

// head_dims the CUDA kernel is compiled for.
bool area_attention_fwd_supports_head_dim(int64_t head_dim);
// warps: 0 = the default; outside [0, area_attention_fwd_max_warps(head_dim)] the plan is unsupported.
AreaAttnFwdPlan area_attention_fwd_plan(int64_t tokens_per_area, int64_t head_dim, const DeviceInfo& dev,
                                        int warps = 0, int key_block = 0);
// Whether the kernel comes with `key_block` keys per step for head_dim (0 and 64: always; 32: head_dim 32).
bool area_attention_fwd_supports_key_block(int64_t head_dim, int key_block);
// The most warps per CTA the kernel takes: 16 for head_dim 32 (8 with 32-key steps), 4 for 64 (0 for an unsupported
// head_dim or key block); code compiled for Turing (code_arch 75, area_attention_fwd_code_arch) takes only the
// default (8, 4).
int area_attention_fwd_max_warps(int64_t head_dim, int code_arch = 0, int key_block = 0);
cudaError_t area_attention_fwd(const AreaAttnFwdArgs& args, const DeviceInfo& dev, cudaStream_t stream);
// The arch (x10) whose code the current device runs for the kernel of (dtype, head_dim): the virtual arch of the
// PTX it came from (cudaFuncAttributes::ptxVersion), or <= 0 where the runtime cannot say. Below 80 for bf16 (75 for
// float16) the kernel was compiled without its tensor-core instructions and is a trap: a build whose arch list
// lacks 8.0 (TORCH_CUDA_ARCH_LIST="7.5+PTX") running on an Ampere or newer GPU. area_attention_fwd refuses it.
int area_attention_fwd_code_arch(DType dtype, int64_t head_dim);
// The arch (x10) that code must come from: 80 for bfloat16, 75 for float16.
inline int area_attention_fwd_required_arch(DType dtype) { return dtype == DType::kBFloat16 ? 80 : 75; }

// ---------------------------------------------------------------------------------------------------------
// Area attention backward (csrc/cuda/area_attention_bwd.cu): dq, dk, dv from dout, the forward's out (which includes
// the residual, if any, given to subtract) and lse (fp32 (B, heads, N), contiguous). `delta` is fp32 (B, heads, N)
// scratch the launcher fills with rowsum(dout * (out - residual)) before the gradient kernels read it.

struct AreaAttnBwdArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  const void* out;
  const void* residual;  // nullptr: none
  const float* lse;
  float* delta;
  void* dq;  // each contiguous (B, heads, head_dim, N), input dtype
  void* dk;
  void* dv;
  Strides4 sq, sk, sv, sdout, sout, sres;
  int64_t batch, heads, head_dim, tokens, area;
  float scale;
  DType dtype;
  bool register_staging = false;  // as AreaAttnFwdArgs::register_staging
};

// The backward's launch plan (one for both of its kernels; `chunk_keys` = tokens per staged chunk, `warps` per CTA).
AreaAttnFwdPlan area_attention_bwd_plan(int64_t tokens_per_area, int64_t head_dim, const DeviceInfo& dev);
cudaError_t area_attention_bwd(const AreaAttnBwdArgs& args, const DeviceInfo& dev, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------
// PE: out = x + depthwise_conv2d(v, weight, bias, padding=k//2) (csrc/cuda/pe_add.cu)

// What both PE launchers take of the plane: v (B, heads, head_dim, H*W) with element strides sv, the k x k kernel
// size and the dtype.
struct PePlane {
  const void* v;
  Strides4 sv;
  int64_t batch, heads, head_dim, H, W;
  int ksize;
  DType dtype;
};

struct PeAddArgs : PePlane {
  const void* weight;  // (heads*head_dim, 1, k, k), element strides w_c, w_y, w_x
  const void* bias;    // (heads*head_dim,) stride bias_c, or nullptr
  const void* x;       // like v (strides sx), or nullptr
  void* out;           // contiguous (B, heads, head_dim, H*W)
  Strides4 sx;
  int64_t w_c, w_y, w_x, bias_c;
};

bool pe_add_supports_ksize(int ksize);
cudaError_t pe_add(const PeAddArgs& args, cudaStream_t stream);

// PE backward, weight and bias gradients (csrc/cuda/pe_add.cu): per (image, tile of pe_add's plan) sums, fp32, into
// partial (batch * pe_wgrad_tiles(H, W, ksize), heads * head_dim, ksize * ksize + 1): columns i * k + j the weight's
// (i, j) tap, the last the bias'. dw / db = partial summed over its first dimension. (The input gradient is pe_add
// itself on dout with the kernel flipped.)
struct PeWgradArgs : PePlane {
  const void* dout;  // like v, strides sdout
  float* partial;
  Strides4 sdout;
};

int64_t pe_wgrad_tiles(int64_t H, int64_t W, int ksize);
cudaError_t pe_wgrad(const PeWgradArgs& args, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------
// A convolution's epilogue: out = act(y + bias[c]), act SiLU (silu) or none (csrc/cuda/bias_act.cu)

// How y and out, (B, C, H, W) with HW = H * W, lie in memory: kPlanes, each (image, channel) HW consecutive
// elements at b * sb + c * sc (NCHW and its slices); kTokens, each (image, token) C consecutive channels at
// b * sb + t * st (channels_last and its slices).
enum class BiasActLayout : int { kPlanes = 0, kTokens = 1 };

struct BiasActArgs {
  const void* y;
  void* out;           // may be y
  const void* bias;    // (C,), element stride bias_c
  int64_t B, C, HW;
  int64_t y_sb, y_sc, y_st;  // element strides of y (kPlanes: y_st unused; kTokens: y_sc unused)
  int64_t o_sb, o_sc, o_st;  // and of out
  int64_t bias_c;
  BiasActLayout layout;
  bool silu;
  DType dtype;
};

cudaError_t bias_act(const BiasActArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace yolov12_fast
