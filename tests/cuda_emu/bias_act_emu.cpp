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
  kc::BiasActArgs a{};
  a.y = y;
  a.out = out;
  a.bias = bias;
  a.B = B;
  a.C = C;
  a.HW = HW;
  a.y_sb = ys[0];
  a.y_sc = ys[1];
  a.y_st = ys[2];
  a.o_sb = os[0];
  a.o_sc = os[1];
  a.o_st = os[2];
  a.bias_c = bias_c;
  a.layout = static_cast<kc::BiasActLayout>(layout);
  a.silu = silu != 0;
  a.dtype = static_cast<kc::DType>(dtype);
  return static_cast<int>(kc::bias_act(a, nullptr));
}

}  // extern "C"
