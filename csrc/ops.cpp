// yolov12_fast._C: schemas of the compiled kernels and the Python module stub.
//
// The public ops (yolov12_fast::area_attention_fwd, ...) are defined in Python (yolov12_fast/ops) so that
// they exist without this extension; they call the `*_cxx` ops below for backend="cpp" (CPU) and
// backend="cuda" (CUDA C++). Implementations register per dispatch key: csrc/cpu/*.cpp for CPU,
// csrc/cuda/*.cpp (glue around torch-free .cu kernels) for CUDA. Fake kernels live in yolov12_fast/ops/cxx.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(yolov12_fast, m) {
  // q, k, v: (B, heads, head_dim, N) any strides; returns (out contiguous (B, heads, head_dim, N), lse (B, heads, N) fp32)
  m.def("area_attention_fwd_cxx(Tensor q, Tensor k, Tensor v, int area, float scale, Tensor? residual) -> (Tensor, Tensor)");
  // gradients w.r.t. q, k, v, each contiguous (B, heads, head_dim, N); `out` includes `residual` when given
  m.def("area_attention_bwd_cxx(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor? residual, Tensor lse, int area, float scale) -> (Tensor, Tensor, Tensor)");
  // out = x + depthwise_conv2d(v, weight, bias, padding=k//2) over the (H, W) map; v, x: (B, heads, head_dim, N=H*W)
  // any strides, weight (heads*head_dim, 1, k, k); returns contiguous (B, heads, head_dim, N)
  m.def("pe_add_cxx(Tensor v, Tensor weight, Tensor? bias, Tensor? x, int H, int W) -> Tensor");
}

#define YF_STR2(x) #x
#define YF_STR(x) YF_STR2(x)

namespace yolov12_fast {
namespace cpu_isa {
const char* attention_isa();  // csrc/cpu/area_attention_cpu.cpp
}
}  // namespace yolov12_fast

static struct PyModuleDef yolov12_fast_C_module = {PyModuleDef_HEAD_INIT, "_C", "yolov12_fast compiled kernels", -1, nullptr};

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&yolov12_fast_C_module);
  if (m == nullptr) return nullptr;
#ifdef YOLOV12_FAST_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#ifdef YOLOV12_FAST_CUDA_ARCHS
  // setup.py's TORCH_CUDA_ARCH_LIST, encoded as one identifier (decoded by yolov12_fast._backends)
  PyModule_AddStringConstant(m, "CUDA_ARCHS", YF_STR(YOLOV12_FAST_CUDA_ARCHS));
#endif
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  // the build of the C++ CPU attention cores this process runs: "avx512", "avx2" or "baseline"
  // (YOLOV12_FAST_CPU_CAPABILITY=avx2 / default narrows it; read once, at import)
  PyModule_AddStringConstant(m, "CPU_ATTENTION_ISA", yolov12_fast::cpu_isa::attention_isa());
  return m;
}
