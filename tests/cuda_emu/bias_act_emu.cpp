// csrc/cuda/bias_act.cu compiled for the CPU emulator (cuda_emu.h), behind a C entry point that tests/test_cuda_emu.py
// calls through ctypes with the data pointers and strides of CPU tensors. The kernels and their launcher (layout,
// vectorisation choice) are the ones the CUDA build runs; only the CUDA runtime is emulated.
#include "bias_act.cu"

extern "C" {

// out = act(y + bias[c]): the arguments of yolov12_fast::cuda::BiasActArgs (ys / os: element strides b, c, t of y
// and out, t the token step of the tokens layout). Returns the launcher's cudaError_t (0: success).
int yf_emu_bias_act(const void* y, void* out, const void* bias, int64_t B, int64_t C, int64_t HW, const int64_t* ys,
                    const int64_t* os, int64_t bias_c, int layout, int silu, int dtype) {
  namespace kc = yolov12_fast::cuda;
  // the fields in BiasActArgs' order: pointers, sizes, y's strides, out's strides, bias stride, layout, act, dtype
  const kc::BiasActArgs a{y, out, bias, B, C, HW, ys[0], ys[1], ys[2], os[0], os[1], os[2], bias_c,
                          static_cast<kc::BiasActLayout>(layout), silu != 0, static_cast<kc::DType>(dtype)};
  return static_cast<int>(kc::bias_act(a, nullptr));
}

}  // extern "C"
