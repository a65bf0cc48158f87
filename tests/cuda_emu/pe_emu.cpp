// csrc/cuda/pe_add.cu compiled for the CPU emulator (cuda_emu.h), behind a C entry point that tests/test_cuda_emu.py
// calls through ctypes with the data pointers and strides of CPU tensors. The kernel source, its host launcher
// (tiling plan, limits) and its launch are the ones the CUDA build runs; only the CUDA runtime is emulated.
#include "pe_add.cu"
#include "emu_args.h"

extern "C" {

// out = x + depthwise_conv2d(v, weight, bias): the arguments of yolov12_fast::cuda::PeAddArgs (strides as arrays of
// 4: b, h, d, n). Returns the launcher's cudaError_t (0: success).
int yf_emu_pe_add(const void* v, const void* weight, const void* bias, const void* x, void* out, const int64_t* sv,
                  const int64_t* sx, int64_t w_c, int64_t w_y, int64_t w_x, int64_t bias_c, int64_t batch,
                  int64_t heads, int64_t head_dim, int64_t H, int64_t W, int ksize, int dtype) {
  namespace kc = yolov12_fast::cuda;
  kc::PeAddArgs a{};
  yf_emu_args::set_pe_plane(a, v, sv, batch, heads, head_dim, H, W, ksize, dtype);
  a.weight = weight;
  a.bias = bias;
  a.x = x;
  a.out = out;
  a.sx = yf_emu_args::strides(sx);
  a.w_c = w_c;
  a.w_y = w_y;
  a.w_x = w_x;
  a.bias_c = bias_c;
  return static_cast<int>(kc::pe_add(a, nullptr));
}

// partial (batch * tiles, heads * head_dim, k * k + 1) fp32 = the PE weight / bias gradient sums per (image, tile):
// the arguments of yolov12_fast::cuda::PeWgradArgs. Returns the launcher's cudaError_t.
int yf_emu_pe_wgrad(const void* dout, const void* v, float* partial, const int64_t* sd, const int64_t* sv,
                    int64_t batch, int64_t heads, int64_t head_dim, int64_t H, int64_t W, int ksize, int dtype) {
  namespace kc = yolov12_fast::cuda;
  kc::PeWgradArgs a{};
  yf_emu_args::set_pe_plane(a, v, sv, batch, heads, head_dim, H, W, ksize, dtype);
  a.dout = dout;
  a.partial = partial;
  a.sdout = yf_emu_args::strides(sd);
  return static_cast<int>(kc::pe_wgrad(a, nullptr));
}

int64_t yf_emu_pe_wgrad_tiles(int64_t H, int64_t W, int ksize) { return yolov12_fast::cuda::pe_wgrad_tiles(H, W, ksize); }

// The launch plan for an H x W plane and a k x k kernel: pairs, groups, tiles_w, tiles_h, threads, halo_w, halo_h,
// smem_bytes, written to out[0..8).
void yf_emu_pe_plan(int64_t H, int64_t W, int k, int* out) {
  const auto p = yolov12_fast::cuda::detail::pe_plan(H, W, k);
  const int vals[8] = {p.pairs, p.groups, p.tiles_w, p.tiles_h, p.threads, p.halo_w, p.halo_h, p.smem_bytes};
  for (int i = 0; i < 8; ++i) out[i] = vals[i];
}

}  // extern "C"
