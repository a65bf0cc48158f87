// yolov12_fast._C: schemas of the compiled kernels and the Python module stub.
//
// The public ops (yolov12_fast::area_attention_fwd, ...) are defined in Python (yolov12_fast/ops) so that
// they exist without this extension; they call the `*_cxx` ops below for backend="cpp" (CPU) and
// backend="cuda" (CUDA C++). Implementations register per dispatch key: csrc/cpu/*.cpp for CPU,
// csrc/cuda/*.cpp (glue around torch-free .cu kernels) for CUDA. Fake kernels live in yolov12_fast/ops/cxx.py.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <atomic>

TORCH_LIBRARY_FRAGMENT(yolov12_fast, m) {
  // q, k, v: (B, heads, head_dim, N) any strides; returns (out contiguous (B, heads, head_dim, N), lse (B, heads, N) fp32)
  m.def("area_attention_fwd_cxx(Tensor q, Tensor k, Tensor v, int area, float scale, Tensor? residual) -> (Tensor, Tensor)");
  // gradients w.r.t. q, k, v, each contiguous (B, heads, head_dim, N); `out` includes `residual` when given
  m.def("area_attention_bwd_cxx(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor? residual, Tensor lse, int area, float scale) -> (Tensor, Tensor, Tensor)");
  // out = x + depthwise_conv2d(v, weight, bias, padding=k//2) over the (H, W) map; v, x: (B, heads, head_dim, N=H*W)
  // any strides, weight (heads*head_dim, 1, k, k); returns contiguous (B, heads, head_dim, N)
  m.def("pe_add_cxx(Tensor v, Tensor weight, Tensor? bias, Tensor? x, int H, int W) -> Tensor");
  // pe_add's weight and bias gradients: (dw (heads*head_dim, 1, k, k), db (heads*head_dim,)) in v's dtype, for dout and
  // v (B, heads, head_dim, N=H*W) of any strides (CPU; the input gradient is pe_add_cxx on dout, kernel flipped)
  m.def("pe_add_wgrad_cxx(Tensor dout, Tensor v, int k, int H, int W) -> (Tensor, Tensor)");
  // a conv's epilogue: out = silu(y + bias[c]) (or y + bias[c]) for (B, C, H, W) y and out of one shape and dtype,
  // bias (C,). The patched blocks call it in eager inference only, also with out = y (in place).
  m.def("bias_act_cxx(Tensor y, Tensor bias, bool silu, Tensor(a!) out) -> ()");
}

#define YF_STR2(x) #x
#define YF_STR(x) YF_STR2(x)

namespace yolov12_fast {
namespace cpu_isa {
const char* attention_isa();  // csrc/cpu/area_attention_cpu.cpp
}
}  // namespace yolov12_fast

// set_flush_denormal_all_threads(on) -> int | None: torch.set_flush_denormal(on) for the calling thread *and* each
// thread of torch's intra-op pool (torch's own call sets the calling thread's MXCSR only, and a pool thread keeps the
// floating-point mode it was created with). One at::parallel_for chunk per pool thread sets that thread's mode.
// Returns how many threads were set, or None where the CPU has no flush-to-zero mode (not x86 with SSE3).
static PyObject* set_flush_denormal_all_threads(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  std::atomic<int> set{0}, unsupported{0};
  Py_BEGIN_ALLOW_THREADS;
  const int64_t n = at::get_num_threads();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) (at::globalContext().setFlushDenormal(on != 0) ? set : unsupported)++;
  });
  // the calling thread too (with OpenMP it ran chunk 0 itself; a native thread pool may have run every chunk)
  if (!at::globalContext().setFlushDenormal(on != 0)) unsupported++;
  Py_END_ALLOW_THREADS;
  if (unsupported.load() > 0) Py_RETURN_NONE;
  return PyLong_FromLong(set.load());
}

static PyMethodDef yolov12_fast_C_methods[] = {
    {"set_flush_denormal_all_threads", set_flush_denormal_all_threads, METH_O,
     "set_flush_denormal_all_threads(on) -> int | None: flush denormal floats to zero (on=True) or keep them, on the "
     "calling thread and every thread of torch's intra-op pool; the number of threads set, None if the CPU cannot."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef yolov12_fast_C_module = {PyModuleDef_HEAD_INIT, "_C", "yolov12_fast compiled kernels", -1,
                                                    yolov12_fast_C_methods};

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
#ifdef YOLOV12_FAST_NO_CUDA_WHY
  // why setup.py built without the CUDA kernels, as one identifier (yolov12_fast._archs.no_cuda_reason says it)
  PyModule_AddStringConstant(m, "NO_CUDA_WHY", YF_STR(YOLOV12_FAST_NO_CUDA_WHY));
#endif
#endif
  // the build of the C++ CPU attention cores this process runs: "avx512", "avx2" or "baseline"
  // (YOLOV12_FAST_CPU_CAPABILITY=avx2 / default narrows it; read once, at import)
  PyModule_AddStringConstant(m, "CPU_ATTENTION_ISA", yolov12_fast::cpu_isa::attention_isa());
  return m;
}
