// A CPU emulator for the plain CUDA kernels of csrc/cuda (tests only): csrc/cuda/device.h includes it instead of
// the CUDA runtime when YOLOV12_FAST_CUDA_EMU is defined, and the kernel source compiles with a host C++20
// compiler.
//
// What it does: a launch runs its CTAs one after another (the race check runs several at once: ctas_at_once); a CTA
// runs as blockDim.x * y * z std::threads that share the CTA's dynamic shared memory and meet at a barrier in
// __syncthreads(). So code that forgets a barrier races here as on a GPU, code that returns early before a barrier
// other threads still reach does not deadlock (an exiting thread drops out of the barrier, as a GPU thread does),
// and every index, halo and mask computation runs exactly as written. Warp collectives run through a per-warp barrier and exchange buffer (double-buffered:
// one barrier per collective; every lane of a warp must make the same collective calls, as mma.sync and the
// *_sync intrinsics require): __syncwarp, __shfl_xor_sync, and the kernels' tensor-core wrappers (mma m16n8k16,
// ldmatrix x4 and x4.trans with the PTX ISA's fragment layouts, fp32 accumulation). cp.async is deferred to the issuing thread's wait (see cp_async). Not
// emulated: other inline PTX, atomics, streams (a launch is synchronous), timing. Half and bfloat16 are CUDA's own host-side types
// (cuda_fp16.h / cuda_bf16.h). The host API the launchers call (device, attributes, occupancy) answers as one GPU
// with whatever DeviceInfo the caller passes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <barrier>
#include <condition_variable>
#include <mutex>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

namespace yf_emu {

struct Index {
  unsigned x = 0, y = 0, z = 0;
};

#ifdef YF_EMU_RACE_CHECK
// The race check's barrier for `count` threads (a mutex and a condition variable), with std::barrier's
// arrive_and_wait and arrive_and_drop. Not std::barrier: libstdc++ waits through a process-wide table of atomics
// shared by unrelated barriers, which ThreadSanitizer takes for synchronisation between threads that never met
// (CTAs that never share a barrier then look ordered, and races between them go unreported); a mutex of its own
// orders only its own users. Slower than std::barrier (the numerics tests keep that).
class Barrier {
 public:
  explicit Barrier(int count) : expected_(count) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned long gen = generation_;
    if (++arrived_ == expected_) {
      next_phase();
    } else {
      cv_.wait(lock, [&] { return generation_ != gen; });
    }
  }
  void arrive_and_drop() {
    std::unique_lock<std::mutex> lock(mutex_);
    --expected_;
    if (arrived_ == expected_ && expected_ > 0) next_phase();
  }

 private:
  void next_phase() {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  int expected_, arrived_ = 0;
  unsigned long generation_ = 0;
};
#else
using Barrier = std::barrier<>;
#endif

inline thread_local Index thread_idx, block_idx;
inline Index block_dim{1, 1, 1}, grid_dim{1, 1, 1};
inline thread_local Barrier* cta_barrier = nullptr;  // this thread's CTA's
inline thread_local unsigned char* dynamic_smem = nullptr;

// Knobs for the race check (tests/cuda_emu/race_check.cpp; the defaults are the plain emulator):
// ctas_at_once: how many CTAs of a launch run at the same time, each with its own shared memory and barrier (1: one
//   after another). More than one lets ThreadSanitizer see races between CTAs through global memory.
// skip_syncthreads / skip_syncwarp: k > 0 makes every thread skip its k-th __syncthreads() / __syncwarp() (a barrier
//   missing from the kernel: the planted bug the race check must catch).
// alias_block_y: every CTA sees blockIdx.y = 0 (CTAs that should split the work all do the same part: planted
//   write-write races between CTAs).
// smem_shortfall: each CTA's shared memory is allocated that many bytes short of what the launch asked for (a plan
//   that under-sizes shared memory: the planted bug the AddressSanitizer check must catch).
inline unsigned ctas_at_once = 1;
inline size_t smem_shortfall = 0;
inline int skip_syncthreads = 0, skip_syncwarp = 0;
inline bool alias_block_y = false;
inline thread_local int syncthreads_seen = 0, syncwarp_seen = 0;

inline void syncthreads() {
  if (++syncthreads_seen != skip_syncthreads) cta_barrier->arrive_and_wait();
}

template <typename T>
inline T ldg(const T* p) {
  return *p;
}

// One warp of the running CTA: its barrier and two exchange buffers of 16 words per lane.
struct Warp {
  explicit Warp(int lanes) : bar(lanes) {}
  Barrier bar;
  uint32_t slots[2][32][16] = {};
};
inline thread_local Warp* warp = nullptr;
inline thread_local int lane = 0;
inline thread_local int parity = 0;

// Every lane publishes `words` words; after the warp's barrier, `read` sees all lanes' words (slot[lane][word]).
template <typename F>
inline void exchange(const uint32_t* mine, int words, F&& read) {
  parity ^= 1;
  uint32_t(*slot)[16] = warp->slots[parity];
  std::memcpy(slot[lane], mine, sizeof(uint32_t) * words);
  warp->bar.arrive_and_wait();
  read(slot);
}

inline float bits_to_float(uint32_t w) {
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t w;
  std::memcpy(&w, &f, 4);
  return w;
}

inline float shfl_xor(float v, int mask) {
  const uint32_t w = float_to_bits(v);
  float out = 0.f;
  exchange(&w, 1, [&](uint32_t(*slot)[16]) { out = bits_to_float(slot[(lane ^ mask) & 31][0]); });
  return out;
}

inline void syncwarp() {
  if (++syncwarp_seen != skip_syncwarp) warp->bar.arrive_and_wait();
}

template <typename T>
inline float b16_to_float(uint16_t b);
template <>
inline float b16_to_float<__half>(uint16_t b) { return __half2float(__ushort_as_half(b)); }
template <>
inline float b16_to_float<__nv_bfloat16>(uint16_t b) { return __bfloat162float(__ushort_as_bfloat16(b)); }

inline uint16_t half_of(uint32_t w, int hi) { return static_cast<uint16_t>(hi ? w >> 16 : w & 0xffffu); }

// This lane's C fragment (C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]) += A B over K products, given element
// readers A(row, k) and B(k, col) of the whole warp's fragments.
template <int K, typename FA, typename FB>
inline void accumulate(float (&c)[4], FA&& A, FB&& B) {
  const int g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int r = g + (e >> 1) * 8, n = 2 * t + (e & 1);
    float acc = c[e];
    for (int k = 0; k < K; ++k) acc += A(r, k) * B(k, n);
    c[e] = acc;
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: c (16x8) += a (16x16) b (16x8). Fragments (PTX ISA, g = lane/4,
// t = lane%4): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][8+2t, +1], a[3] = A[g+8][8+2t, +1];
// b0 = B[2t, 2t+1][g], b1 = B[8+2t, +1][g]; c = C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]. Products exact in
// fp32, summed in k order.
template <typename T>
inline void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  exchange(mine, 6, [&](uint32_t(*slot)[16]) {
    auto A = [&](int r, int k) {  // A[r][k]
      const int owner = (r % 8) * 4 + (k % 8) / 2, reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
      return b16_to_float<T>(half_of(slot[owner][reg], k & 1));
    };
    auto B = [&](int k, int n) {  // B[k][n]
      const int owner = n * 4 + (k % 8) / 2;
      return b16_to_float<T>(half_of(slot[owner][k >= 8 ? 5 : 4], k & 1));
    };
    accumulate<16>(c, A, B);
  });
}

// mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 (Turing's): c (16x8) += a (16x8) b (8x8); a0 = A[g][2t, 2t+1],
// a1 = A[g+8][2t, 2t+1], b = B[2t, 2t+1][g], c as for m16n8k16.
inline void mma_1688_f16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t b) {
  const uint32_t mine[3] = {a0, a1, b};
  exchange(mine, 3, [&](uint32_t(*slot)[16]) {
    auto A = [&](int r, int k) { return b16_to_float<__half>(half_of(slot[(r % 8) * 4 + k / 2][r >= 8], k & 1)); };
    auto B = [&](int k, int n) { return b16_to_float<__half>(half_of(slot[n * 4 + k / 2][2], k & 1)); };
    accumulate<8>(c, A, B);
  });
}

inline uint16_t smem_b16(uint32_t byte_addr) {
  uint16_t v;
  std::memcpy(&v, dynamic_smem + byte_addr, 2);
  return v;
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8m..8m+7 give the row addresses of matrix m. Without
// .trans lane i receives row i/4, columns 2(i%4), 2(i%4)+1 of each matrix; with .trans rows 2(i%4), 2(i%4)+1 of
// column i/4.
//
// Bank conflicts: the hardware reads each 8x8 matrix (8 rows of 16 bytes) in one shared-memory wavefront when the
// rows fall in 8 different 16-byte bank quads ((address / 16) % 8), and in one more wavefront for each further
// distinct row sharing a quad. ldmatrix_matrices counts the matrices loaded, ldmatrix_extra_wavefronts those extra
// wavefronts (0: conflict-free).
inline std::atomic<long long> ldmatrix_matrices{0}, ldmatrix_extra_wavefronts{0};

inline void count_ldmatrix_conflicts(uint32_t (*slot)[16]) {
  long long extra = 0;
  for (int m = 0; m < 4; ++m) {
    uint32_t rows[8];
    int distinct = 0, per_quad[8] = {};
    for (int j = 0; j < 8; ++j) {
      const uint32_t seg = slot[8 * m + j][0] >> 4;
      if (std::find(rows, rows + distinct, seg) == rows + distinct) {
        rows[distinct++] = seg;
        ++per_quad[seg & 7];
      }
    }
    extra += *std::max_element(per_quad, per_quad + 8) - 1;
  }
  ldmatrix_matrices.fetch_add(4, std::memory_order_relaxed);
  ldmatrix_extra_wavefronts.fetch_add(extra, std::memory_order_relaxed);
}

inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, bool trans) {
  exchange(&addr, 1, [&](uint32_t(*slot)[16]) {
    const int i = lane;
    if (i == 0) count_ldmatrix_conflicts(slot);
    for (int m = 0; m < 4; ++m) {
      uint16_t lo, hi;
      if (!trans) {
        const uint32_t row = slot[8 * m + i / 4][0];
        lo = smem_b16(row + 2 * (2 * (i % 4)));
        hi = smem_b16(row + 2 * (2 * (i % 4) + 1));
      } else {
        lo = smem_b16(slot[8 * m + 2 * (i % 4)][0] + 2 * (i / 4));
        hi = smem_b16(slot[8 * m + 2 * (i % 4) + 1][0] + 2 * (i / 4));
      }
      r[m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  });
}

// cp.async.{ca,cg}.shared.global with src-size `valid ? bytes : 0`: queued per thread and carried out at the thread's
// cp.async.wait_all (cp_async_wait_all), not before, so shared memory read between the copy and the wait still holds
// what it held (the launch's NaN fill); the source is read at the wait, as late as a GPU may read it. Copies still
// queued when a thread exits never land and are counted in cp_async_unwaited (0 for a correct kernel).
struct PendingCopy {
  void* dst;
  const void* src;
  int bytes;
  bool valid;
};
inline thread_local std::vector<PendingCopy> pending_copies;
inline std::atomic<long long> cp_async_copies{0}, cp_async_unwaited{0};

inline void cp_async(void* dst, const void* src, int bytes, bool valid) {
  pending_copies.push_back({dst, src, bytes, valid});
  cp_async_copies.fetch_add(1, std::memory_order_relaxed);
}

inline void cp_async_wait_all() {
  for (const PendingCopy& c : pending_copies) {
    if (c.valid) std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
    else std::memset(c.dst, 0, static_cast<size_t>(c.bytes));
  }
  pending_copies.clear();
}

inline void drop_pending_copies() {
  cp_async_unwaited.fetch_add(static_cast<long long>(pending_copies.size()), std::memory_order_relaxed);
  pending_copies.clear();
}

// ex2.approx.ftz.f32: 2^x with denormal results flushed to +0.
inline float ex2_approx_ftz(float x) {
  const float y = std::exp2(x);
  return y < FLT_MIN ? 0.f : y;
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
#undef __noinline__
#define __noinline__ __attribute__((noinline))
#define __syncthreads() (yf_emu::syncthreads())
#define __syncwarp(...) (yf_emu::syncwarp())
#define __shfl_xor_sync(mask, v, lane_mask) (yf_emu::shfl_xor((v), (lane_mask)))
#define __ldg(p) (yf_emu::ldg(p))
#define __trap() std::abort()
#define __log2f(x) std::log2(x)
#define YF_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(yf_emu::dynamic_smem)

// device-side integer min / max (CUDA declares them for device code)
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// the generic -> shared address conversion: a byte offset into the CTA's dynamic shared memory
inline size_t __cvta_generic_to_shared(const void* p) {
  return static_cast<size_t>(static_cast<const unsigned char*>(p) - yf_emu::dynamic_smem);
}

// The runtime calls the launchers make, answering as device 0 (whose properties the caller passed as DeviceInfo).
extern "C" inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
extern "C" inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
template <typename K>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, K*) {
  *attr = cudaFuncAttributes{};
#ifdef YF_EMU_SM75
  attr->ptxVersion = 75;  // the Turing branch's build answers as Turing code
  attr->binaryVersion = 75;
#else
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
#endif
  return cudaSuccess;
}
template <typename K>
inline cudaError_t cudaFuncSetAttribute(K*, cudaFuncAttribute, int) {
  return cudaSuccess;
}
template <typename K>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, K*, int, size_t) {
  *blocks = 1;
  return cudaSuccess;
}

namespace yolov12_fast {
namespace cuda {

// The emulated kernel<<<grid, block, smem, stream>>>(args...): synchronous. CTAs run ctas_at_once at a time (one
// after another by default), each CTA's threads as std::threads. Each CTA's shared memory is its own allocation of
// exactly `smem` bytes (AddressSanitizer sees an access past it), filled with a NaN pattern first, so a kernel that
// reads a cell it never wrote gets NaN in its output.
template <typename... Params, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                                 Args&&... args) {
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || smem > 227 * 1024)
    return cudaErrorInvalidConfiguration;
  yf_emu::block_dim = {block.x, block.y, block.z};
  yf_emu::grid_dim = {grid.x, grid.y, grid.z};
  const float nan = std::nanf("");
  struct Cta {
    yf_emu::Index idx;
    std::unique_ptr<unsigned char[]> smem;
    std::unique_ptr<yf_emu::Barrier> bar;
    std::vector<std::unique_ptr<yf_emu::Warp>> warps;
  };
  const unsigned total = grid.x * grid.y * grid.z, wave = std::max(1u, yf_emu::ctas_at_once);
  for (unsigned first = 0; first < total; first += wave) {
    std::vector<Cta> ctas(std::min(wave, total - first));
    std::vector<std::thread> pool;
    pool.reserve(ctas.size() * threads);
    for (unsigned c = 0; c < ctas.size(); ++c) {
      Cta& cta = ctas[c];
      const unsigned lin = first + c;
      cta.idx = {lin % grid.x, (lin / grid.x) % grid.y, lin / (grid.x * grid.y)};
      const size_t bytes = smem > yf_emu::smem_shortfall ? smem - yf_emu::smem_shortfall : 1;
      cta.smem.reset(new unsigned char[bytes]);
      for (size_t b = 0; b + sizeof(float) <= bytes; b += sizeof(float)) std::memcpy(cta.smem.get() + b, &nan, 4);
      cta.bar = std::make_unique<yf_emu::Barrier>(threads);
      for (unsigned w = 0; w < (threads + 31) / 32; ++w)
        cta.warps.push_back(std::make_unique<yf_emu::Warp>((int)std::min(32u, threads - 32 * w)));
    }
    for (Cta& cta : ctas)
      for (unsigned tz = 0; tz < block.z; ++tz)
        for (unsigned ty = 0; ty < block.y; ++ty)
          for (unsigned tx = 0; tx < block.x; ++tx)
            pool.emplace_back([&, tx, ty, tz] {
              yf_emu::thread_idx = {tx, ty, tz};
              yf_emu::block_idx = cta.idx;
              if (yf_emu::alias_block_y) yf_emu::block_idx.y = 0;
              yf_emu::dynamic_smem = cta.smem.get();
              yf_emu::cta_barrier = cta.bar.get();
              const unsigned linear = tx + block.x * (ty + block.y * tz);
              yf_emu::warp = cta.warps[linear / 32].get();
              yf_emu::lane = (int)(linear % 32);
              yf_emu::parity = 0;
              yf_emu::syncthreads_seen = yf_emu::syncwarp_seen = 0;
              kernel(args...);
              yf_emu::drop_pending_copies();
              yf_emu::warp->bar.arrive_and_drop();
              cta.bar->arrive_and_drop();
            });
    for (auto& t : pool) t.join();
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace yolov12_fast
