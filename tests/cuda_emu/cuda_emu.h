// A CPU emulator for the plain CUDA kernels of csrc/cuda (tests only): csrc/cuda/device.h includes it instead of
// the CUDA runtime when YOLOV12_FAST_CUDA_EMU is defined, and the kernel source compiles with a host C++20
// compiler.
//
// What it does: a launch runs its CTAs one after another; a CTA runs as blockDim.x * y * z std::threads that share
// the CTA's dynamic shared memory and meet at a std::barrier in __syncthreads(). So code that forgets a barrier
// races here as on a GPU, code that returns early before a barrier other threads still reach does not deadlock
// (an exiting thread drops out of the barrier, as a GPU thread does), and every index, halo and mask computation
// runs exactly as written. Not emulated: warp-level intrinsics, inline PTX, tensor cores, atomics, streams (a launch
// is synchronous), timing. Half and bfloat16 are CUDA's own host-side types (cuda_fp16.h / cuda_bf16.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

namespace yf_emu {

struct Index {
  unsigned x = 0, y = 0, z = 0;
};

inline thread_local Index thread_idx, block_idx;
inline Index block_dim{1, 1, 1}, grid_dim{1, 1, 1};
inline std::barrier<>* cta_barrier = nullptr;
inline unsigned char* dynamic_smem = nullptr;

template <typename T>
inline T ldg(const T* p) {
  return *p;
}

}  // namespace yf_emu

// CUDA's headers define the execution-space keywords as attributes a host compiler ignores with warnings: plain
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define threadIdx (yf_emu::thread_idx)
#define blockIdx (yf_emu::block_idx)
#define blockDim (yf_emu::block_dim)
#define gridDim (yf_emu::grid_dim)
#define __syncthreads() (yf_emu::cta_barrier->arrive_and_wait())
#define __ldg(p) (yf_emu::ldg(p))
#define YF_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(yf_emu::dynamic_smem)

namespace yolov12_fast {
namespace cuda {

// The emulated kernel<<<grid, block, smem, stream>>>(args...): synchronous, CTA by CTA. Shared memory is filled
// with a NaN pattern first, so a kernel that reads a cell it never wrote gets NaN in its output.
template <typename... Params, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                                 Args&&... args) {
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || smem > 227 * 1024)
    return cudaErrorInvalidConfiguration;
  yf_emu::block_dim = {block.x, block.y, block.z};
  yf_emu::grid_dim = {grid.x, grid.y, grid.z};
  std::vector<float> shared((smem + sizeof(float) - 1) / sizeof(float) + 4);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::fill(shared.begin(), shared.end(), std::nanf(""));
        yf_emu::dynamic_smem = reinterpret_cast<unsigned char*>(shared.data());
        std::barrier<> bar(threads);
        yf_emu::cta_barrier = &bar;
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx)
              pool.emplace_back([&, tx, ty, tz, bx, by, bz] {
                yf_emu::thread_idx = {tx, ty, tz};
                yf_emu::block_idx = {bx, by, bz};
                kernel(args...);
                bar.arrive_and_drop();
              });
        for (auto& t : pool) t.join();
      }
  yf_emu::cta_barrier = nullptr;
  yf_emu::dynamic_smem = nullptr;
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace yolov12_fast
