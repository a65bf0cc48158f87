// What a kernel file of csrc/cuda needs from CUDA, in one place: the CUDA headers, a typed launcher and the
// dynamic shared-memory declaration.
//
// Built with nvcc (setup.py, the ptxas checks of tests/test_cuda_compile.py) this is plain CUDA. Built by a host
// compiler with YOLOV12_FAST_CUDA_EMU defined, the same kernel source runs on the CPU through "cuda_emu.h" (found on
// the include path; tests/cuda_emu/ has it): every CTA runs as blockDim threads sharing its shared memory and a
// barrier. That is how CI, which has no GPU, checks the numerics and the index math of the kernels: the inline PTX
// they use (mma.sync, ldmatrix, ex2, cp.async) has an emulator branch next to it (attention_common.cuh).
#pragma once

#ifdef YOLOV12_FAST_CUDA_EMU
#include "cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <utility>

// Dynamic shared memory as `type* name` (16-byte aligned).
#define YF_DYNAMIC_SMEM(type, name)                            \
  extern __shared__ __align__(16) unsigned char yf_smem_raw[]; \
  type* name = reinterpret_cast<type*>(yf_smem_raw)

namespace yolov12_fast {
namespace cuda {

// kernel<<<grid, block, smem, stream>>>(args...), then the launch's error.
template <typename... Params, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                 Args&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace yolov12_fast
#endif
